"""Anthropic's server-side tool search, done by ccproxy for upstreams that have none.

A client that offers `tool_search_tool_regex_20251119` or `tool_search_tool_bm25_20251119`
expects the server to hold back the tools it marked `defer_loading: true`, let the
model search them, and load what the search finds. A chat upstream has no such
thing, so ccproxy offers the model a function of the search tool's own name (a
request's tool names are unique, so it clashes with none of the client's), runs
the search itself when the model calls it, and asks the upstream again with the
found tools defined. This module is the pure part: which search the request asks
for, the search over the deferred tools' names, descriptions and argument names
and descriptions (a regular expression run by RE2, or BM25, as the tool's type
says), and the
blocks the client gets, shaped as the Messages API shapes them:

    {"type": "server_tool_use", "id": "srvtoolu_…", "name": …, "input": {"query": …}}
    {"type": "tool_search_tool_result", "tool_use_id": "srvtoolu_…",
     "content": {"type": "tool_search_tool_search_result",
                 "tool_references": [{"type": "tool_reference", "tool_name": …}]}}

(or `content: {"type": "tool_search_tool_result_error", "error_code": …}`).

The pattern is the model's, and the search runs on the reactor: RE2 matches in time
linear in the text (Python's `re` backtracks, and `a*a*a*x` over one 4,000-character
description takes minutes), and refuses what only a backtracking engine can do
(lookaround, backreferences) as `invalid_pattern`.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Collection, Sequence
from typing import Any

import orjson
import re2
from attrs import frozen

SEARCH_TYPES = {"tool_search_tool_regex": "regex", "tool_search_tool_bm25": "bm25"}
"""The server tool types (less their date) ccproxy runs, and the search each means."""
MAX_RESULTS = 5
"""Tools a search returns at most (Anthropic's returns 3 to 5)."""
MAX_PATTERN = 200
"""Characters of a regex pattern at most, as at Anthropic."""
MAX_ROUNDS = 3
"""Times one answer goes on after a search, at most (so at most four upstream calls
make it); a search past them ends the answer with `pause_turn`, and the client,
sending the answer back, lets the model go on."""
_FIELD_CHARS = 4000
"""Characters of one tool's searchable text at most, so that a search costs little."""

_DESCRIPTIONS = {
    "regex": (
        "Search the catalog of tools that are not loaded yet, by a regular expression"
        " (Python re syntax without lookaround or backreferences, case-sensitive;"
        " (?i) for any case) searched for in"
        " each tool's name, description and argument names and descriptions. The"
        " tools found become available to call."
    ),
    "bm25": (
        "Search the catalog of tools that are not loaded yet, in natural language"
        " (a few words saying what the tool does), over each tool's name, description"
        " and argument names and descriptions. The tools found become available to call."
    ),
}
_QUERY = {"regex": "A regular expression, at most 200 characters.", "bm25": "What to find."}


@frozen
class Entry:
    """One deferred tool, as the search sees it."""

    name: str
    text: str
    """Name, description and arguments, one per line."""


@frozen
class ToolSearch:
    """The tool search a request asks for, over its deferred tools."""

    name: str
    """The client's name for the search tool, used for the model's function too."""
    kind: str
    """"regex" or "bm25"."""
    catalog: tuple[Entry, ...]

    @classmethod
    def fromRequest(cls, body: Any) -> ToolSearch | None:
        """The request's tool search tool (None: it offers none)."""
        tools = body.get("tools") if isinstance(body, dict) else None
        if not isinstance(tools, list):
            return None
        found = None
        for tool in tools:
            # (try: a JSON value that is no object has no .get; cheaper than an
            # isinstance per tool, every request: this is a walk of all its tools.)
            try:
                if tool.get("type") is None:
                    continue  # Claude Code's own tools, every request: no search
            except AttributeError:
                continue  # no object: the translation refuses it
            kind = searchKind(tool)
            if kind is not None and found is None and isinstance(tool.get("name"), str):
                found = (tool["name"], kind)
        if found is None:
            return None
        catalog = tuple(
            _entry(tool)
            for tool in tools
            if isinstance(tool, dict)
            and tool.get("defer_loading") is True
            and isinstance(tool.get("name"), str)
        )
        return cls(found[0], found[1], catalog)

    def function(self, upstreamName: str) -> dict[str, Any]:
        """The OpenAI function the model calls to search."""
        return {
            "type": "function",
            "function": {
                "name": upstreamName,
                "description": _DESCRIPTIONS[self.kind],
                "parameters": {
                    "type": "object",
                    "properties": {"query": {"type": "string", "description": _QUERY[self.kind]}},
                    "required": ["query"],
                },
            },
        }

    def search(self, query: Any) -> list[str] | str:
        """The names found for the model's `query` (best first), or an error code."""
        if not isinstance(query, str) or not query.strip():
            return "invalid_tool_input"
        if self.kind == "regex":
            return regexSearch(query, self.catalog)
        return bm25Search(query, self.catalog)

    def result(self, callId: str, arguments: Any) -> dict[str, Any]:
        """The `tool_search_tool_result` block for a call with `arguments`."""
        query = arguments.get("query") if isinstance(arguments, dict) else None
        if query is None and isinstance(arguments, dict):
            query = arguments.get("pattern")  # a model's guess at the regex's name
        found = self.search(query)
        if isinstance(found, str):
            content: dict[str, Any] = {
                "type": "tool_search_tool_result_error",
                "error_code": found,
                "error_message": _ERRORS.get(found),
            }
        else:
            content = {
                "type": "tool_search_tool_search_result",
                "tool_references": [{"type": "tool_reference", "tool_name": n} for n in found],
            }
        return {"type": "tool_search_tool_result", "tool_use_id": callId, "content": content}


_ERRORS = {
    "invalid_tool_input": "the query must be a non-empty string",
    "invalid_pattern": "the pattern is not a regular expression ccproxy runs",
    "pattern_too_long": f"the pattern is longer than {MAX_PATTERN} characters",
}


def searchKind(tool: Any) -> str | None:
    """ "regex" or "bm25" for a tool search server tool, else None."""
    kind = tool.get("type") if isinstance(tool, dict) else None
    if not isinstance(kind, str):
        return None
    return SEARCH_TYPES.get(kind.rsplit("_", 1)[0]) if kind[-8:].isdigit() else None


def serverCallId(callId: str, taken: Collection[str] = ()) -> str:
    """The id of a `server_tool_use` block for the upstream's call id, unlike the
    `taken` ones (an upstream may number its calls alike in each answer)."""
    made = callId if callId.startswith("srvtoolu_") else f"srvtoolu_{callId}"
    n = 1
    while made in taken:
        n += 1
        made = f"srvtoolu_{callId}_{n}"
    return made


def resultText(block: dict[str, Any], upstreamName: Any) -> tuple[str, list[str]]:
    """A `tool_search_tool_result` as the text of a tool message, and the names it
    loads. `upstreamName` maps a tool's name to the one the upstream knows."""
    content = block.get("content")
    if not isinstance(content, dict):
        return "No tools were found.", []
    if content.get("type") == "tool_search_tool_result_error":
        return f"Error: the tool search failed ({content.get('error_code')}).", []
    names = [
        ref["tool_name"]
        for ref in content.get("tool_references") or []
        if isinstance(ref, dict) and isinstance(ref.get("tool_name"), str)
    ]
    if not names:
        return "No tools were found.", []
    return "\n".join(loadedLine(upstreamName(n)) for n in names), names


def loadedLine(upstreamName: str) -> str:
    """What the model reads for a tool a search loaded."""
    return f"Tool {upstreamName} is now available to call."


# -- an answer of several rounds ---------------------------------------------------


def runSearches(
    content: Sequence[dict[str, Any]], search: ToolSearch, taken: set[str]
) -> tuple[list[dict[str, Any]], int]:
    """A whole answer's blocks with each call of the search run: a `server_tool_use`
    and its `tool_search_tool_result` in its place; and how many were run. The ids
    made are added to `taken`."""
    out: list[dict[str, Any]] = []
    runs = 0
    for block in content:
        if block.get("type") == "tool_use" and block.get("name") == search.name:
            callId = serverCallId(str(block.get("id")), taken)
            taken.add(callId)
            arguments = block.get("input")
            out.append(
                {"type": "server_tool_use", "id": callId, "name": search.name, "input": arguments}
            )
            out.append(search.result(callId, arguments))
            runs += 1
        else:
            out.append(block)
    return out, runs


def continued(body: dict[str, Any], prefix: list[dict[str, Any]]) -> dict[str, Any]:
    """The request that has the upstream go on with an answer begun with `prefix`
    (its searches run): the client's, and the answer so far as an assistant turn."""
    return {**body, "messages": [*body["messages"], {"role": "assistant", "content": prefix}]}


class Blocks:
    """An answer's content blocks, rebuilt from the events streamed to the client,
    so that the request continuing it can carry them. A block's text, thinking and
    tool input are kept as pieces and joined once, at its `content_block_stop`: a long
    answer in small deltas costs linear time."""

    def __init__(self) -> None:
        self.content: list[dict[str, Any]] = []
        self._pieces: dict[tuple[int, str], list[str]] = {}

    def add(self, events: Sequence[dict[str, Any]]) -> None:
        for event in events:
            kind = event.get("type")
            if kind == "content_block_start":
                self.content.append(dict(event["content_block"]))
            elif kind == "content_block_delta":
                self._delta(event["index"], event["delta"])
            elif kind == "content_block_stop":
                self._join(event["index"])

    def _delta(self, index: int, delta: dict[str, Any]) -> None:
        kind = delta.get("type")
        if kind == "signature_delta":
            self.content[index]["signature"] = delta["signature"]
            return
        key = _DELTA_FIELDS.get(kind)  # type: ignore[arg-type]
        if key is not None:
            self._pieces.setdefault((index, key[0]), []).append(delta[key[1]])

    def _join(self, index: int) -> None:
        block = self.content[index]
        for name in ("text", "thinking"):
            pieces = self._pieces.pop((index, name), None)
            if pieces is not None:
                block[name] = block.get(name, "") + "".join(pieces)
        pieces = self._pieces.pop((index, "input"), None)
        if block.get("type") in ("tool_use", "server_tool_use"):
            block["input"] = parsedInput("".join(pieces or ()))


# A delta's type: the block's field it adds to, and the delta's field that holds it.
_DELTA_FIELDS = {
    "text_delta": ("text", "text"),
    "thinking_delta": ("thinking", "thinking"),
    "input_json_delta": ("input", "partial_json"),
}


def parsedInput(text: str) -> Any:
    try:
        value = orjson.loads(text) if text.strip() else {}
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


# -- the searches -----------------------------------------------------------------


def _entry(tool: dict[str, Any]) -> Entry:
    lines = [tool["name"]]
    if isinstance(tool.get("description"), str):
        lines.append(tool["description"])
    schema = tool.get("input_schema")
    properties = schema.get("properties") if isinstance(schema, dict) else None
    if isinstance(properties, dict):
        for key, value in properties.items():
            described = value.get("description") if isinstance(value, dict) else None
            lines.append(f"{key}: {described}" if isinstance(described, str) else str(key))
    return Entry(tool["name"], "\n".join(lines)[:_FIELD_CHARS])


def regexSearch(pattern: str, catalog: Sequence[Entry]) -> list[str] | str:
    """Tools whose text `pattern` is found in (anywhere, as `re.search` would): those
    matched by name first, in catalog order."""
    if len(pattern) > MAX_PATTERN:
        return "pattern_too_long"
    try:
        compiled = re2.compile(pattern, _RE2)
    except re2.error:
        return "invalid_pattern"
    byName = [e.name for e in catalog if compiled.search(e.name)]
    named = set(byName)
    rest = [e.name for e in catalog if e.name not in named and compiled.search(e.text)]
    return (byName + rest)[:MAX_RESULTS]


_RE2 = re2.Options()
_RE2.log_errors = False  # a model's bad pattern is its answer, not the daemon's stderr


_WORD = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|\d+")
_STOP = frozenset("a an and by for from in is it of on or the to with".split())
"""Words too common to tell tools apart (a query is a phrase: "post to slack")."""
K1, B = 1.2, 0.75


def words(text: str) -> list[str]:
    """Lower-case words, camelCase and snake_case split: `getUserID_v2` -> get, user, id, v, 2."""
    return [w.lower() for w in _WORD.findall(text)]


def bm25Search(query: str, catalog: Sequence[Entry]) -> list[str]:
    """The best matches for `query` by Okapi BM25 (k1 1.2, b 0.75), a tool's name
    words counting twice; ties keep catalog order; no match, no result."""
    terms = set(words(query)) - _STOP
    if not terms or not catalog:
        return []
    documents = [Counter(words(e.text) + words(e.name)) for e in catalog]
    lengths = [sum(d.values()) for d in documents]
    average = sum(lengths) / len(lengths) or 1.0
    # Each document meets only the query's terms it holds: the query is the model's
    # and may be long, so the work is the catalog's words, not terms x tools.
    shared = [terms & document.keys() for document in documents]
    frequency = Counter(term for found in shared for term in found)
    count = len(documents)
    scored = []
    for position, (document, length) in enumerate(zip(documents, lengths, strict=True)):
        score = 0.0
        for term in shared[position]:
            tf = document[term]
            idf = math.log(1 + (count - frequency[term] + 0.5) / (frequency[term] + 0.5))
            score += idf * tf * (K1 + 1) / (tf + K1 * (1 - B + B * length / average))
        if score > 0:
            scored.append((-score, position))
    scored.sort()
    return [catalog[position].name for _, position in scored[:MAX_RESULTS]]
