"""Anthropic Messages request -> OpenAI chat/completions request.

One pass over the client's body that validates as it translates: a wrong type
anywhere is the client's 400 naming the field (`messages.3.content.0.text: must be
a string`), never a crash and never a body the upstream has to reject.

What Claude Code sends that OpenAI cannot take is reshaped or dropped here:
system blocks and mid-list `role: "system"` messages become one leading system
message; `tool_result` blocks become `tool` messages right after the call that
asked for them, in call order; fields with no OpenAI meaning (`top_k`, `thinking`,
`cache_control`, `context_management`, …) are never forwarded.

Tool search (Claude Code's `ENABLE_TOOL_SEARCH`): a tool with `defer_loading: true`
is held back, as Anthropic holds it back from the model, until the conversation
loads it: Claude Code's own `ToolSearch` tool answers with `tool_reference` blocks
in its `tool_result`, and from then on the named tools are defined for the
upstream (so are deferred tools the history calls, and one `tool_choice` names).
A request that asks for Anthropic's server-side search instead
(`tool_search_tool_regex_*`, `…_bm25_*`) has it run by ccproxy
(`ccproxy.translate.toolsearch`): the model gets a function of that name, and the
`server_tool_use` and `tool_search_tool_result` blocks of earlier turns come back
as its call and the call's answer.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Sequence
from typing import Any

import orjson

from ccproxy.errors import invalidRequest
from ccproxy.translate.dialect import MAX_TOKENS_CEILING, Profile
from ccproxy.translate.names import PendingNames, ToolNames, addDefinedNames
from ccproxy.translate.schema import GeminiSchemas, SchemaBudget, SchemaTooComplex
from ccproxy.translate.toolsearch import ToolSearch, loadedLine, resultText, searchKind
from ccproxy.translate.values import isInt, isNumber

# OpenAI accepts at most this many stop sequences; more is a 400 there.
MAX_STOP_SEQUENCES = 4

_TOOL_CHOICES = {"auto": "auto", "any": "required", "none": "none"}
_NO_RESULT = "No result was returned for this tool call."
_NONE_OPEN: frozenset[str] = frozenset()
_NO_CALLS: tuple[str, ...] = ()
_NO_THINKING: list[dict[str, Any]] = []
"""An assistant turn's thinking blocks when it has none (shared: never added to)."""
_NO_INPUT: dict[str, Any] = {}
"""A tool call's input when its block has none (shared, only ever encoded)."""
_GEMINI_SCHEMAS = GeminiSchemas()
"""The reduced tool schemas of this process's requests (see `GeminiSchemas`)."""
THINKING_BLOCKS = "thinking_blocks"
"""Where `toOpenAI(keepThinking=True)` keeps an assistant message's thinking blocks."""


def toOpenAI(
    body: Any,
    *,
    model: str,
    profile: Profile,
    defaultMaxTokens: int,
    names: ToolNames | PendingNames | None = None,
    cacheKey: str | None = None,
    keepThinking: bool = False,
) -> dict[str, Any]:
    """Translate a Messages request body (already JSON-decoded) for an OpenAI upstream.

    `model` is the upstream's model name, chosen by the router; `names` maps tool
    names the upstream would reject (over 64 characters, or outside
    `[a-zA-Z0-9_-]`) to ones it takes, the same way in the tools, the history and
    `tool_choice` (found from the body when not given, in the walk over its
    history that translating it is: a `PendingNames` not yet filled is handed
    the names found). `cacheKey` (the client's
    session, `sessionKey`) goes as `prompt_cache_key` where the profile says the
    upstream takes it. `keepThinking`: each assistant message keeps its turn's
    thinking blocks under `THINKING_BLOCKS`, for a translator built on this one
    (`ccproxy.translate.responses`) to take out.
    """
    if not isinstance(body, dict):
        raise invalidRequest("the request body must be a JSON object")
    # Each check's helper runs only to word its refusal (a call per field and
    # request added up): so for the fields below.
    if not isinstance(body.get("model"), str):
        _require(body, "model", str, "a string")
    messages = body.get("messages")
    if not isinstance(messages, list):
        _require(body, "messages", list, "a list of messages")
    if not messages:
        raise invalidRequest("messages: must hold at least one message")

    pending = None
    if isinstance(names, PendingNames):
        pending, names = names, names.known
    writer = _MessageWriter(profile, names, keepThinking, body)
    writer.addSystem(body.get("system"), "system")
    writer.addAll(messages)
    out: dict[str, Any] = {"model": model, "messages": writer.finish()}
    names = writer.names
    if names is None:  # the history's names are all met: with the tools', the mapping
        defined = writer.historyNames()
        addDefinedNames(body, defined)
        names = writer.named(ToolNames.of(defined))
    if pending is not None:
        pending.found(names)

    maxTokens = body.get("max_tokens")
    if maxTokens is None:
        maxTokens = defaultMaxTokens
    elif not isInt(maxTokens) or maxTokens < 1:
        raise invalidRequest("max_tokens: must be a positive integer")
    # Without a cap of the upstream's own, a client's 2**63 would go upstream as is.
    cap = MAX_TOKENS_CEILING if profile.maxTokens is None else profile.maxTokens
    out[profile.maxTokensParam] = min(maxTokens, cap)

    stop = body.get("stop_sequences")
    if stop is not None:
        stop = _stopSequences(stop)
        if stop:
            out["stop"] = stop[:MAX_STOP_SEQUENCES]
    for key in ("temperature", "top_p"):
        value = body.get(key)
        if value is not None:
            if not isNumber(value):
                raise invalidRequest(f"{key}: must be a number")
            if profile.sendTemperature:
                out[key] = value
    metadata = body.get("metadata")
    if metadata is not None:
        user = _metadataUser(metadata)
        if user:
            out["user"] = user
    if cacheKey is not None and profile.promptCacheKey:
        out["prompt_cache_key"] = cacheKey

    tools, serverTools = _tools(body.get("tools"), profile, names, writer.loaded, body)
    if tools:
        out["tools"] = tools
        choice = body.get("tool_choice")
        if choice is not None:
            _toolChoice(choice, out, names)
    if serverTools and any(kind.startswith("web_search") for kind in serverTools):
        _webSearch(profile, out)
    if profile.reasoning == "reasoning_effort":
        effort = reasoningEffort(body.get("thinking"), body.get("output_config"))
        if effort is not None:
            out["reasoning_effort"] = effort

    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise invalidRequest("stream: must be true or false")
    out["stream"] = stream
    if stream and profile.streamUsage:
        out["stream_options"] = {"include_usage": True}
    if profile.extraBody:
        out.update(profile.extraBody)
    return out


def refuseSafeguards(body: dict[str, Any]) -> None:
    """A 400 naming `safeguards` when the request carries it.

    In auto mode Claude Code adds a top-level `safeguards` field (and a beta)
    asking the upstream to run auto mode's safety check on the conversation, and
    reads `safeguard_results` from the reply. No OpenAI-compatible upstream can:
    dropped like any other unknown field, the check would silently not run. Its
    gateway protocol asks for this refusal instead; Claude Code then resends the
    request without the field and runs the check itself for the rest of the session.
    """
    if "safeguards" in body:
        raise invalidRequest(
            "safeguards: this gateway's upstreams are OpenAI-compatible and cannot run"
            " auto mode's safety check; send the request without safeguards"
        )


def reasoningEffort(thinking: Any, outputConfig: Any) -> str | None:
    """OpenAI's `reasoning_effort` for Claude's thinking settings (None: send none).

    The effort Claude Code asks for (`output_config.effort`) wins; else a thinking
    budget maps by size; `disabled` sends nothing rather than a contradiction.
    """
    kind = thinking.get("type") if isinstance(thinking, dict) else None
    if kind == "disabled":
        return None
    effort = outputConfig.get("effort") if isinstance(outputConfig, dict) else None
    if isinstance(effort, str) and effort:
        return _EFFORTS.get(effort, "medium")
    if kind == "enabled":
        budget = thinking.get("budget_tokens")
        if not isInt(budget):
            return "medium"
        return "low" if budget < 4096 else "medium" if budget < 16384 else "high"
    if kind == "adaptive":
        return "medium"
    return None


_EFFORTS = {
    "minimal": "low",
    "low": "low",
    "medium": "medium",
    "high": "high",
    "xhigh": "high",
    "max": "high",
}
_BILLING_HEADER = "x-anthropic-billing-header"
_NO_VISION = "[image omitted: this model cannot see images]"
_NO_FILES = "[document omitted: this model cannot read attached files]"


def _webSearch(profile: Profile, out: dict[str, Any]) -> None:
    """Claude Code's web search, as the upstream's own search where it has one."""
    if profile.webSearch == "openai":
        out["web_search_options"] = {}
    elif profile.webSearch == "openrouter":
        out["plugins"] = [{"id": "web"}]


def stopSequences(body: dict[str, Any]) -> list[str]:
    """The client's stop sequences, for telling `stop_sequence` from `end_turn`."""
    return _stopSequences(body.get("stop_sequences"))


class _MessageWriter:
    """Builds the OpenAI message list, keeping tool messages next to their calls."""

    def __init__(
        self,
        profile: Profile,
        names: ToolNames | None,
        keepThinking: bool = False,
        body: Any = None,
    ) -> None:
        self.profile = profile
        self.names = names
        """The request's tool names; None while the walk finds them (see `named`)."""
        self.keepThinking = keepThinking
        self.body = body
        self.seen: set[str] = set()
        """The names of `tool_use` blocks in user turns (sent nowhere, but named)."""
        self.unnamed: list[dict[str, Any]] = []
        """The calls made while `names` is None, named as the client names them
        until the names are known (`named`)."""
        self.system: list[dict[str, Any]] = []
        """System texts as text parts (with their cache_control when passed through)."""
        self.out: list[dict[str, Any]] = []
        self._openCalls: Sequence[str] = _NO_CALLS
        """Ids of the tool calls the last assistant message made, in call order."""
        self._openIds: Collection[str] = _NONE_OPEN
        """The same ids, to match each tool_result in constant time: a turn may
        hold many thousands of parallel calls."""
        self.loaded: set[str] = set()
        """Tools the conversation has loaded: named by a `tool_reference` in a
        tool_result, or called in an assistant turn (deferred ones are then sent)."""

    def named(self, names: ToolNames) -> ToolNames:
        """The request's names are known: each call made without them gets its
        upstream name (a name valid as it is, Claude Code's, keeps it)."""
        self.names = names
        if not names.same:
            up = names.up
            for call in self.unnamed:
                function = call["function"]
                function["name"] = up[function["name"]]
        self.unnamed = []
        return names

    def historyNames(self) -> set[str]:
        """The names of the history's `tool_use` blocks, once the walk is over with
        `names` still None: those the assistant turns called (`loaded`: only a
        tool search adds others, and its names are found before) and the user's."""
        return self.loaded | self.seen

    def _namesNow(self) -> ToolNames:
        """The request's names for a part that needs them before the walk's end
        (ccproxy's tool search): found from the body now, as `ToolNames.fromRequest`."""
        if self.names is None:
            return self.named(ToolNames.fromRequest(self.body))
        return self.names

    def addAll(self, messages: list[Any]) -> None:
        """Add the request's messages, in one loop (not a call per message). Each
        one's path, and those of its blocks, are spelled out only when an error
        names them: formatting them for every block of every request cost a fifth
        of the translation."""
        for i, message in enumerate(messages):
            try:
                role = message.get("role")
            except AttributeError:  # no object: cheaper than an isinstance per message
                raise invalidRequest(
                    f"messages.{i}: must be an object with role and content"
                ) from None
            content = message.get("content")
            if not isinstance(content, list) and not isinstance(content, str):  # (no tuple made)
                raise invalidRequest(f"messages.{i}.content: must be a string or a list of blocks")
            if role == "assistant":
                if self._openCalls:
                    self._closeCalls(None)
                self._assistant(content, i)
            elif role == "user":
                self._user(content, i)
            elif role == "system":
                # Claude Code sends one after the first user turn; many chat templates
                # reject a system message that is not first, so it joins the leading one.
                self.addSystem(content, f"messages.{i}.content")
            else:
                raise invalidRequest(f"messages.{i}.role: must be 'user' or 'assistant'")

    def addSystem(self, system: Any, path: str) -> None:
        for part in _systemParts(system, path):
            if part["text"].startswith(_BILLING_HEADER) and not self.profile.keepBillingHeader:
                continue  # changes on every request: it would defeat prefix caching
            self.system.append(part)

    def finish(self) -> list[dict[str, Any]]:
        self._closeCalls(None)  # calls the last assistant turn left open
        if not self.out:
            raise invalidRequest("messages: nothing to send once empty text blocks are dropped")
        if self.system:
            self.out.insert(
                0, {"role": self.profile.systemRole, "content": self._content(self.system)}
            )
        return self.out

    def _content(self, parts: list[dict[str, Any]]) -> str | list[dict[str, Any]]:
        """A message's content: one string when it is all text (the form every chat
        template takes), parts when it holds more, or markers passed through."""
        if len(parts) == 1:  # most messages: no join, no scan
            only = parts[0]
            if only["type"] == "text" and not (
                self.profile.cacheControl and "cache_control" in only
            ):
                text: str = only["text"]
                return text
        if all(p["type"] == "text" for p in parts) and not (
            self.profile.cacheControl and any("cache_control" in p for p in parts)
        ):
            return "\n\n".join(p["text"] for p in parts)
        if not self.profile.cacheControl:
            parts = [{k: v for k, v in p.items() if k != "cache_control"} for p in parts]
        return parts

    def _part(self, part: dict[str, Any], block: dict[str, Any]) -> dict[str, Any]:
        """Apply the upstream's limits to a content part: no vision, no markers."""
        if part["type"] == "image_url" and not self.profile.vision:
            return _textPart(_NO_VISION)
        if part["type"] == "file" and not self.profile.vision:
            return _textPart(_NO_FILES)
        if self.profile.cacheControl and isinstance(block.get("cache_control"), dict):
            part = {**part, "cache_control": block["cache_control"]}
        return part

    def _assistant(self, content: str | list[Any], i: int) -> None:
        texts: list[str] = []
        thinking: list[dict[str, Any]] = _NO_THINKING  # a list made only for one
        calls: list[dict[str, Any]] = []
        if isinstance(content, str):
            texts.append(content)
        else:
            for j, block in enumerate(content):
                try:
                    kind = block.get("type")
                except AttributeError:  # not an object (see `_kindOf`)
                    kind = None
                if kind == "text":
                    text = block.get("text")
                    if not isinstance(text, str):
                        _blockText(block, _blockPath(i, j))
                    texts.append(text)
                elif kind == "tool_use":
                    call = _toolCall(block, i, j, self.names)
                    calls.append(call)
                    self.loaded.add(block["name"])
                    if self.names is None:  # its upstream name once all are known
                        self.unnamed.append(call)
                elif kind == "thinking" and isinstance(block.get("thinking"), str):
                    if thinking is _NO_THINKING:
                        thinking = []
                    thinking.append(block)
                elif kind == "server_tool_use" and str(block.get("name")).startswith(
                    "tool_search_tool"
                ):
                    calls.append(_toolCall(block, i, j, self._namesNow()))
                elif kind == "tool_search_tool_result":
                    # ccproxy's own tool search (or Anthropic's) answered inside the
                    # turn: the call and its answer, then the turn goes on.
                    self._assistantMessage(texts, thinking, calls)
                    texts, thinking, calls = [], _NO_THINKING, []
                    where = _blockPath(i, j)
                    callId = _require(block, "tool_use_id", str, "a string", where)
                    text, found = resultText(block, self._namesNow().toUpstream)
                    self.loaded.update(found)
                    self._closeCalls({callId: text})
                elif not isinstance(kind, str):
                    _kindOf(block, i, j)  # not a block: a 400 naming it
                # redacted_thinking and other server tool blocks: nothing OpenAI can take
        self._assistantMessage(texts, thinking, calls)

    def _assistantMessage(
        self, texts: list[str], thinking: list[dict[str, Any]], calls: list[dict[str, Any]]
    ) -> None:
        if len(texts) == 1:  # the usual turn: one text block, or none
            text = texts[0] if texts[0].strip() else ""
        else:
            text = "\n\n".join(t for t in texts if t.strip())
        message: dict[str, Any]
        if calls:  # (each message made whole: no key added or replaced after)
            content = text or self.profile.assistantEmptyContent
            message = {"role": "assistant", "content": content, "tool_calls": calls}
        elif text:
            message = {"role": "assistant", "content": text}
        else:
            return
        if thinking:
            if self.profile.reasoning == "deepseek":
                # DeepSeek's thinking mode answers 400 unless its reasoning comes back.
                message["reasoning_content"] = "".join(b["thinking"] for b in thinking)
            if self.keepThinking:
                message[THINKING_BLOCKS] = thinking
        self.out.append(message)
        if len(calls) == 1:  # the usual turn: one call, its id alone (`in` a list of one)
            self._openCalls = self._openIds = [calls[0]["id"]]
        elif calls:
            self._openCalls = [c["id"] for c in calls]
            self._openIds = set(self._openCalls)
        else:
            self._openCalls, self._openIds = _NO_CALLS, _NONE_OPEN

    def _user(self, content: str | list[Any], i: int) -> None:
        if isinstance(content, str):
            self._closeCalls(None)
            if content.strip():
                self.out.append({"role": "user", "content": content})
            return
        if len(content) == 1 and len(self._openCalls) == 1 and self._oneResult(content[0]):
            return
        results: dict[str, str] = {}
        parts: list[dict[str, Any]] = []
        resultParts: list[dict[str, Any]] = []
        for j, block in enumerate(content):
            try:
                kind = block.get("type")
            except AttributeError:  # not an object (see `_kindOf`)
                kind = None
            if kind == "tool_result":
                callId, text = block.get("tool_use_id"), block.get("content")
                isError = block.get("is_error")
                # Most results: a string, no error; else `_toolResult` reads (or refuses) it.
                # (`is`, not `in (None, False)`: a 0 must still be refused as no boolean.)
                if not (
                    isinstance(text, str)
                    and isinstance(callId, str)
                    and (isError is None or isError is False)
                ):
                    callId, text = _toolResult(
                        block, i, j, resultParts, self.profile.vision, self._reference
                    )
                if callId in self._openIds and callId not in results:
                    results[callId] = text
                else:
                    # No call of the previous turn has this id: OpenAI would reject a
                    # tool message here, so the result reaches the model as text.
                    parts.append(_textPart(f"[tool result {callId}]\n{text}"))
            elif kind == "text":
                text = block.get("text")
                if not isinstance(text, str):
                    _blockText(block, _blockPath(i, j))
                part = {"type": "text", "text": text}
                if self.profile.cacheControl and isinstance(block.get("cache_control"), dict):
                    part["cache_control"] = block["cache_control"]
                parts.append(part)
            else:
                kind = _kindOf(block, i, j)  # not a block: a 400 naming it
                if kind == "tool_use":  # the upstream gets none, but its name counts
                    name = block.get("name")
                    if isinstance(name, str):
                        self.seen.add(name)
                other = _contentPart(kind, block, _blockPath(i, j))
                if other is not None:
                    parts.append(self._part(other, block))
        self._closeCalls(results)
        # Images from tool results follow the tool messages (a tool message takes
        # only text), ahead of the user's own words.
        if resultParts:
            self._userMessage(resultParts + parts)
        elif parts:  # else results alone (most turns): no message of the user's
            self._userMessage(parts)

    def _oneResult(self, block: Any) -> bool:
        """The usual turn after one call: its one result, without error, its
        content a string or one text block, as the call's tool message (what the
        loops of `_user`, `_toolResult` and `_closeCalls` make of it, without
        their lists and dict); False for any other block."""
        try:
            if block.get("type") != "tool_result":
                return False
        except AttributeError:
            return False
        callId = self._openCalls[0]
        text, isError = block.get("content"), block.get("is_error")
        if block.get("tool_use_id") != callId:
            return False
        if not isinstance(text, str):
            if not isinstance(text, list) or len(text) != 1:
                return False
            inner = text[0]  # (Claude Code sends many results as one text block)
            try:
                if inner.get("type") != "text":
                    return False
            except AttributeError:
                return False
            text = inner.get("text")
            if not isinstance(text, str):
                return False
        if isError is not None and isError is not False:
            return False
        self.out.append({"role": "tool", "tool_call_id": callId, "content": text})
        self._openCalls = _NO_CALLS
        self._openIds = _NONE_OPEN
        return True

    def _reference(self, block: dict[str, Any], path: str) -> str:
        """A `tool_reference` (a tool search's find): that tool is loaded, and the
        model reads that it may call it, by the name the upstream knows it by."""
        name = _require(block, "tool_name", str, "a string", path)
        self.loaded.add(name)
        return loadedLine(self._namesNow().toUpstream(name))

    def _closeCalls(self, results: dict[str, str] | None) -> None:
        """Answer every open call, in call order; a missing result gets a placeholder
        because OpenAI rejects a tool call left without its tool message."""
        if not self._openCalls:
            return
        results = results or {}
        for callId in self._openCalls:
            self.out.append(
                {"role": "tool", "tool_call_id": callId, "content": results.get(callId, _NO_RESULT)}
            )
        self._openCalls = _NO_CALLS
        self._openIds = _NONE_OPEN

    def _userMessage(self, parts: list[dict[str, Any]]) -> None:
        if not parts:
            return
        parts = [p for p in parts if p["type"] != "text" or p["text"].strip()]
        if parts:
            self.out.append({"role": "user", "content": self._content(parts)})


def _contentPart(kind: str, block: dict[str, Any], path: str) -> dict[str, Any] | None:
    """A user content block as an OpenAI content part (None: nothing to send)."""
    if kind == "text":
        return _textPart(_blockText(block, path))
    if kind == "image":
        return _imagePart(block, path)
    if kind == "document":
        return _documentPart(block, path)
    return None


def _textPart(text: str) -> dict[str, Any]:
    return {"type": "text", "text": text}


def _imagePart(block: dict[str, Any], path: str) -> dict[str, Any]:
    source = block.get("source")
    if not isinstance(source, dict):
        raise invalidRequest(f"{path}.source: must be an object")
    kind = source.get("type")
    if kind == "base64":
        mediaType = _require(source, "media_type", str, "a string", f"{path}.source")
        data = _require(source, "data", str, "a string", f"{path}.source")
        url = f"data:{mediaType};base64,{data}"
    elif kind == "url":
        url = _require(source, "url", str, "a string", f"{path}.source")
    else:
        raise invalidRequest(f"{path}.source.type: must be 'base64' or 'url'")
    return {"type": "image_url", "image_url": {"url": url}}


def _documentPart(block: dict[str, Any], path: str) -> dict[str, Any] | None:
    source = block.get("source")
    if not isinstance(source, dict):
        raise invalidRequest(f"{path}.source: must be an object")
    kind = source.get("type")
    title = block.get("title") if isinstance(block.get("title"), str) else None
    if kind == "base64":
        mediaType = _require(source, "media_type", str, "a string", f"{path}.source")
        data = _require(source, "data", str, "a string", f"{path}.source")
        filename = title or "document.pdf"
        return {
            "type": "file",
            "file": {"filename": filename, "file_data": f"data:{mediaType};base64,{data}"},
        }
    if kind == "text":
        data = _require(source, "data", str, "a string", f"{path}.source")
        return _textPart(f"{title}\n\n{data}" if title else data)
    if kind == "content":
        inner = source.get("content")
        if isinstance(inner, str):
            return _textPart(inner)
        if isinstance(inner, list):
            texts = [
                _blockText(b, f"{path}.source.content.{k}")
                for k, b in enumerate(inner)
                if isinstance(b, dict) and b.get("type") == "text"
            ]
            return _textPart("\n\n".join(texts))
        raise invalidRequest(f"{path}.source.content: must be a string or a list of blocks")
    if kind == "url":
        url = _require(source, "url", str, "a string", f"{path}.source")
        return _textPart(f"[document: {url}]")
    raise invalidRequest(f"{path}.source.type: must be 'base64', 'text', 'content' or 'url'")


def _toolCall(block: dict[str, Any], i: int, j: int, names: ToolNames | None) -> dict[str, Any]:
    """`messages.{i}.content.{j}`, a tool_use block, as an OpenAI tool call (named
    as the client names it when `names` is not known yet)."""
    callId = block.get("id")
    name = block.get("name")
    if not isinstance(callId, str) or not isinstance(name, str):
        _require(block, "id", str, "a string", _blockPath(i, j))
        _require(block, "name", str, "a string", _blockPath(i, j))
    arguments = block.get("input", _NO_INPUT)
    if not isinstance(arguments, dict):
        raise invalidRequest(f"{_blockPath(i, j)}.input: must be an object")
    try:
        encoded = orjson.dumps(arguments).decode()
    except orjson.JSONEncodeError:
        raise invalidRequest(f"{_blockPath(i, j)}.input: nested too deeply to forward") from None
    if names is None:
        upstreamName = name
    else:
        upstreamName = names.up.get(name)
        if upstreamName is None:
            upstreamName = names.toUpstream(name)
    return {
        "id": callId,
        "type": "function",
        "function": {"name": upstreamName, "arguments": encoded},
    }


def _toolResult(
    block: dict[str, Any],
    i: int,
    j: int,
    images: list[dict[str, Any]],
    vision: bool = True,
    reference: Callable[[dict[str, Any], str], str] | None = None,
) -> tuple[str, str]:
    """`messages.{i}.content.{j}`, a tool_result: its call id and text; its images go
    to `images` (or, for an upstream without vision, a placeholder goes in the
    text); each `tool_reference` is read by `reference` into a line of text."""
    callId = block.get("tool_use_id")
    if not isinstance(callId, str):
        _require(block, "tool_use_id", str, "a string", _blockPath(i, j))
    content = block.get("content")
    texts: list[str] = []
    if isinstance(content, str):  # most results: their text as it is
        text = content
    elif isinstance(content, list):
        for k, inner in enumerate(content):
            kind = inner.get("type") if isinstance(inner, dict) else None
            if kind == "text":
                text = inner.get("text")
                if not isinstance(text, str):
                    _blockText(inner, f"{_blockPath(i, j)}.content.{k}")
                texts.append(text)
                continue
            where = f"{_blockPath(i, j)}.content.{k}"
            kind = _blockType(inner, where)
            if kind == "image":
                part = _imagePart(inner, where)
                if vision:
                    images.append(part)
                    texts.append("[image attached below]")
                else:
                    texts.append(_NO_VISION)
            elif kind == "document":
                part = _documentPart(inner, where)
                if part is not None and part["type"] == "text":
                    texts.append(part["text"])
                elif part is not None and vision:
                    images.append(part)
                    texts.append("[document attached below]")
                elif part is not None:
                    texts.append(_NO_FILES)
            elif kind == "tool_reference" and reference is not None:
                texts.append(reference(inner, where))
        text = texts[0] if len(texts) == 1 else "\n\n".join(t for t in texts if t)
    elif content is None:
        text = ""
    else:
        raise invalidRequest(f"{_blockPath(i, j)}.content: must be a string or a list of blocks")
    isError = block.get("is_error")
    if isError is not None and not isinstance(isError, bool):
        raise invalidRequest(f"{_blockPath(i, j)}.is_error: must be true or false")
    if isError:
        text = f"Error: {text}" if text else "Error"
    return callId, text


def _systemParts(system: Any, path: str) -> list[dict[str, Any]]:
    """System text as text parts, keeping each block's cache_control."""
    if system is None:
        return []
    if isinstance(system, str):
        return [_textPart(system)] if system.strip() else []
    if not isinstance(system, list):
        raise invalidRequest(f"{path}: must be a string or a list of text blocks")
    parts = []
    for block in system:
        try:
            kind, text = block.get("type"), block.get("text")
        except AttributeError:
            kind = text = None
        if kind != "text" or not isinstance(text, str):  # a 400, its path spelled out
            where = f"{path}.{_indexOf(system, block)}"
            if _blockType(block, where) != "text":
                raise invalidRequest(f"{where}.type: system blocks must be text")
            text = _blockText(block, where)
        if text.strip():
            part = _textPart(text)
            if isinstance(block.get("cache_control"), dict):
                part["cache_control"] = block["cache_control"]
            parts.append(part)
    return parts


def _tools(
    tools: Any, profile: Profile, names: ToolNames, loaded: set[str], body: dict[str, Any]
) -> tuple[list[dict[str, Any]], list[str]]:
    """Function tools (a deferred one only once `loaded`), and the types of the
    server tools that were left out."""
    if tools is None:
        return [], []
    if not isinstance(tools, list):
        raise invalidRequest("tools: must be a list")
    choice = body.get("tool_choice")
    chosen = _chosen(choice) if choice is not None else _NONE_OPEN
    out: list[dict[str, Any]] = []
    searching = False
    serverTools: list[str] = []
    # One budget for all the tools (the request's work is bounded), for Gemini only.
    budget = SchemaBudget() if profile.schema == "gemini" else None
    toUpstream, up = names.toUpstream, names.up
    for tool in tools:
        try:
            kind = tool.get("type")
        except AttributeError:  # no object (its place found only for the error)
            raise invalidRequest(f"tools.{_indexOf(tools, tool)}: must be an object") from None
        if kind is not None:  # Claude Code's own tools have none
            found = searchKind(tool)
            if found is not None and not searching and isinstance(tool.get("name"), str):
                # Anthropic's tool search, which ccproxy runs: the model gets a function.
                search = ToolSearch(tool["name"], found, ())
                out.append(search.function(toUpstream(search.name)))
                searching = True
                continue
            if kind != "custom":
                # A server tool (web search, code execution, …) runs at Anthropic; an
                # OpenAI upstream has no such function, so it is not offered.
                serverTools.append(str(kind))
                continue
        name = tool.get("name")
        # A name the request's names hold is a string: checked only when it is not
        # there (a subscript, not .get and a test for None).
        try:
            upstreamName = up[name]
        except (KeyError, TypeError):
            if not isinstance(name, str):
                _require(tool, "name", str, "a string", f"tools.{_indexOf(tools, tool)}")
            upstreamName = toUpstream(name)
        if tool.get("defer_loading") is True and name not in loaded and name not in chosen:
            continue  # its schema waits until a tool search finds it
        schema = tool.get("input_schema")
        if not isinstance(schema, dict):  # (one check for the usual schema, not two)
            if schema is not None:
                raise invalidRequest(
                    f"tools.{_indexOf(tools, tool)}.input_schema: must be an object"
                )
            schema = {"type": "object", "properties": {}}
        if budget is not None:
            try:
                schema = _GEMINI_SCHEMAS.reduce(schema, budget)
            except SchemaTooComplex as e:
                raise invalidRequest(f"tools: {e}") from None
        description = tool.get("description")
        if isinstance(description, str) and description:
            out.append(
                {
                    "type": "function",
                    "function": {
                        "name": upstreamName,
                        "description": description,
                        "parameters": schema,
                    },
                }
            )
        else:
            out.append(
                {"type": "function", "function": {"name": upstreamName, "parameters": schema}}
            )
    return out, serverTools


def _chosen(choice: Any) -> Collection[str]:
    """The tool `tool_choice` names, if any (it must be defined, deferred or not)."""
    if isinstance(choice, dict) and isinstance(choice.get("name"), str):
        return {choice["name"]}
    return set()


def _toolChoice(choice: Any, out: dict[str, Any], names: ToolNames) -> None:
    if choice is None:
        return
    if not isinstance(choice, dict):
        raise invalidRequest("tool_choice: must be an object")
    kind = choice.get("type")
    if kind in _TOOL_CHOICES:
        out["tool_choice"] = _TOOL_CHOICES[kind]
    elif kind == "tool":
        name = names.toUpstream(_require(choice, "name", str, "a string", "tool_choice"))
        out["tool_choice"] = {"type": "function", "function": {"name": name}}
    else:
        raise invalidRequest("tool_choice.type: must be 'auto', 'any', 'tool' or 'none'")
    disable = choice.get("disable_parallel_tool_use")
    if disable is not None and not isinstance(disable, bool):
        raise invalidRequest("tool_choice.disable_parallel_tool_use: must be true or false")
    if disable and kind != "none":
        out["parallel_tool_calls"] = False


def _stopSequences(value: Any) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        raise invalidRequest("stop_sequences: must be a list of strings")
    return [s for s in value if s]


MAX_CACHE_KEY_CHARS = 64
"""The longest session identity sent as `prompt_cache_key` (Claude Code's is a
36-character UUID); a longer one, or one with other than printable ASCII, is
not sent: it is no session of Claude Code's, and must not fail the request."""
_CACHE_KEY = re.compile(rf"[\x21-\x7e]{{1,{MAX_CACHE_KEY_CHARS}}}")
_LEGACY_SESSION = re.compile(r"_session_([0-9A-Za-z-]+)$")


def sessionKey(header: str | None, body: Any) -> str | None:
    """Claude Code's session identity, to keep one user's turns on one upstream
    prompt cache: its `X-Claude-Code-Session-Id` header, else the `session_id` in
    `metadata.user_id` (a JSON text; older releases wrote `…_session_<uuid>`).
    None when neither says (another client), never an error."""
    if header is not None and _CACHE_KEY.fullmatch(header):
        return header  # the metadata is not read: the header wins
    metadata = body.get("metadata") if isinstance(body, dict) else None
    candidate = _metadataSession(metadata)
    if candidate is not None and _CACHE_KEY.fullmatch(candidate):
        return candidate
    return None


def _metadataSession(metadata: Any) -> str | None:
    user = metadata.get("user_id") if isinstance(metadata, dict) else None
    if not isinstance(user, str):
        return None
    if user.startswith("{"):
        try:
            session = orjson.loads(user).get("session_id")
        except (orjson.JSONDecodeError, AttributeError):
            return None
        return session if isinstance(session, str) else None
    legacy = _LEGACY_SESSION.search(user)
    return legacy.group(1) if legacy else None


def _metadataUser(metadata: Any) -> str | None:
    if metadata is None:
        return None
    if not isinstance(metadata, dict):
        raise invalidRequest("metadata: must be an object")
    user = metadata.get("user_id")
    if user is not None and not isinstance(user, str):
        raise invalidRequest("metadata.user_id: must be a string")
    return user


def _blockPath(i: int, j: int) -> str:
    return f"messages.{i}.content.{j}"


def _indexOf(items: list[Any], item: Any) -> int:
    """Where `item` is in `items` (by identity), for an error naming its path.

    Only the error needs it: a tool's or system block's error depends only on
    that item, so when one object stands in the list twice, its first place is
    where the error is found, and the one named."""
    for j, other in enumerate(items):
        if other is item:
            return j
    raise ValueError("not in the list")


def _kindOf(block: Any, i: int, j: int) -> str:
    """The type of `messages.{i}.content.{j}` (see `_blockType`), its path spelled out
    only for the error."""
    kind = block.get("type") if isinstance(block, dict) else None
    if isinstance(kind, str):
        return kind
    return _blockType(block, _blockPath(i, j))


def _blockType(block: Any, path: str) -> str:
    if not isinstance(block, dict):
        raise invalidRequest(f"{path}: must be an object with a type")
    kind = block.get("type")
    if not isinstance(kind, str):
        raise invalidRequest(f"{path}.type: must be a string")
    return kind


def _blockText(block: dict[str, Any], path: str) -> str:
    return _require(block, "text", str, "a string", path)


def _require(
    container: dict[str, Any], key: str, kind: type | tuple[type, ...], what: str, path: str = ""
) -> Any:
    value = container.get(key)
    if not isinstance(value, kind):
        where = f"{path}.{key}" if path else key
        problem = f"is required ({what})" if value is None else f"must be {what}"
        raise invalidRequest(f"{where}: {problem}")
    return value
