"""Requests and their hostile variants, translated for the sameness test.

`tests/test_translate_sameness.py` translates every case here, through
`Plan.forRequest` and each API's `bodyFor` under several profiles, and compares a
digest of the outcomes (the upstream body's bytes, the plan's tool names and
server tools, or the error's status and message) with the digests main's
translator gave (`tests/fixtures/translate-sameness.json`). A cut in the
translator that changes one byte of a body or one word of an error fails it.

``python -m tests.translatecases`` writes the digests anew (only from a
translator known to be right).
"""

from __future__ import annotations

import copy
import hashlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from ccproxy.config.model import Upstream
from ccproxy.config.routing import Target
from ccproxy.errors import ProxyError
from ccproxy.translate.dialect import Profile
from ccproxy.upstream.plan import Plan

FIXTURES = Path(__file__).parent / "fixtures"
GOLDEN = FIXTURES / "translate-sameness.json"

PROFILES = {
    "plain": Profile(),
    "odd": Profile(
        maxTokens=1000,
        maxTokensParam="max_tokens",
        sendTemperature=False,
        systemRole="developer",
        assistantEmptyContent=None,
        streamUsage=False,
        vision=False,
        reasoning="deepseek",
        cacheControl=True,
        keepBillingHeader=True,
        webSearch="openai",
        promptCacheKey=True,
        extraBody={"x": 1},
    ),
    "gemini": Profile(schema="gemini", reasoning="reasoning_effort", webSearch="openrouter"),
}
APIS = ("chat", "responses")


def requestBodies() -> Iterator[tuple[str, Any]]:
    """Claude Code's captured requests, then the bench's corpus bodies."""
    for path in sorted((FIXTURES / "claude-code" / "requests").glob("*.json")):
        capture = orjson.loads(path.read_bytes())
        body = capture.get("body")
        if capture.get("method") == "POST" and isinstance(body, dict) and "messages" in body:
            yield path.stem, body
    from bench.corpus import bodies

    for n, raw in enumerate(bodies(3, 36, 60)):
        yield f"corpus-{n}", orjson.loads(raw)


_DEEP: Any = {}
for _ in range(300):
    _DEEP = {"a": _DEEP}
LONG_NAME = "mcp__" + "server.with.dots__" * 4 + "tool"
TOP_LEVEL: list[tuple[str, Any]] = [
    ("model", None),
    ("model", 5),
    ("messages", None),
    ("messages", []),
    ("messages", {}),
    ("system", 5),
    ("system", "   "),
    ("system", [5]),
    ("system", [{"type": "image"}]),
    ("system", [{"type": "text", "text": 5}]),
    ("system", [{"type": "text", "text": "x-anthropic-billing-header: a"}, {"text": "b"}]),
    ("system", [{"type": "text", "text": "a", "cache_control": {"type": "ephemeral"}}]),
    ("max_tokens", 0),
    ("max_tokens", "8"),
    ("max_tokens", True),
    ("max_tokens", None),
    ("max_tokens", 2**70),
    ("stop_sequences", "x"),
    ("stop_sequences", [1]),
    ("stop_sequences", ["", "a", "b", "c", "d", "e"]),
    ("temperature", "x"),
    ("temperature", None),
    ("top_p", True),
    ("top_p", 0.5),
    ("metadata", "x"),
    ("metadata", {"user_id": 1}),
    ("metadata", {"user_id": '{"session_id": "s-1"}'}),
    ("stream", "yes"),
    ("stream", None),
    ("stream", True),
    ("tools", "x"),
    ("tools", [1]),
    ("tools", [{"name": 1}]),
    ("tools", [{"name": "A", "input_schema": "x"}]),
    ("tools", [{"name": "A", "input_schema": None, "description": ""}]),
    ("tools", [{"name": "A", "input_schema": _DEEP}]),
    ("tools", [{"type": "custom", "name": "A", "description": 5}]),
    ("tools", [{"type": "web_search_20250305", "name": "web_search"}]),
    ("tools", [{"type": "tool_search_tool_regex_20251119", "name": "tool_search_tool_regex"}]),
    ("tools", [{"name": "A", "defer_loading": True}, {"name": LONG_NAME}]),
    ("tools", [{"name": LONG_NAME}, {"name": "Ä tool"}, {"name": "ok"}]),
    ("tool_choice", "x"),
    ("tool_choice", {"type": "bad"}),
    ("tool_choice", {"type": "any", "disable_parallel_tool_use": 1}),
    ("tool_choice", {"type": "auto", "disable_parallel_tool_use": True}),
    ("tool_choice", {"type": "tool", "name": 1}),
    ("tool_choice", {"type": "tool", "name": "Bash"}),
    ("tool_choice", {"type": "none"}),
    ("thinking", {"type": "enabled", "budget_tokens": 20000}),
    ("thinking", {"type": "disabled"}),
    ("output_config", {"effort": "xhigh"}),
    ("safeguards", {}),
]
BLOCKS: list[Any] = [
    5,
    "text",
    None,
    {},
    {"type": 5},
    {"type": "weird"},
    {"type": "text"},
    {"type": "text", "text": 5},
    {"type": "text", "text": "  "},
    {"type": "text", "text": "a", "cache_control": {"type": "ephemeral"}},
    {"type": "text", "text": "a", "cache_control": 5},
    {"type": "image"},
    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AA"}},
    {"type": "image", "source": {"type": "url", "url": 5}},
    {"type": "image", "source": {"type": "ftp"}},
    {"type": "document", "source": {"type": "text", "data": "d"}, "title": "T"},
    {"type": "document", "source": {"type": "content", "content": [{"type": "text", "text": 5}]}},
    {"type": "document", "source": {"type": "content", "content": 5}},
    {"type": "document", "source": {"type": "base64", "media_type": "x/pdf", "data": "A"}},
    {"type": "document", "source": {"type": "url", "url": "http://x"}},
    {"type": "document", "source": {"type": "nope"}},
    {"type": "tool_use", "id": 5, "name": "Bash", "input": {}},
    {"type": "tool_use", "id": "t1", "name": 5, "input": {}},
    {"type": "tool_use", "id": "t1", "name": "Bash", "input": []},
    {"type": "tool_use", "id": "t1", "name": "Bash"},
    {"type": "tool_use", "id": "t1", "name": "Bash", "input": _DEEP},
    {"type": "tool_use", "id": "t1", "name": LONG_NAME, "input": {"a": 1}},
    {"type": "tool_use", "id": "t2", "name": "Read", "input": {"a": [1, "é", None]}},
    {"type": "tool_result", "tool_use_id": 5, "content": "x"},
    {"type": "tool_result", "tool_use_id": "t1", "content": 5},
    {"type": "tool_result", "tool_use_id": "t1"},
    {"type": "tool_result", "tool_use_id": "t1", "content": "x", "is_error": 0},
    {"type": "tool_result", "tool_use_id": "t1", "content": "x", "is_error": True},
    {"type": "tool_result", "tool_use_id": "t1", "content": "", "is_error": True},
    {"type": "tool_result", "tool_use_id": "t1", "content": "x", "is_error": False},
    {"type": "tool_result", "tool_use_id": "t1", "content": [5]},
    {"type": "tool_result", "tool_use_id": "t1", "content": [{"type": "text", "text": 5}]},
    {"type": "tool_result", "tool_use_id": "t1", "content": [{"type": "text", "text": "a"}] * 2},
    {
        "type": "tool_result",
        "tool_use_id": "t1",
        "content": [
            {"type": "text", "text": "a"},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "A"}},
            {"type": "document", "source": {"type": "text", "data": "d"}},
            {"type": "document", "source": {"type": "base64", "media_type": "x/y", "data": "A"}},
            {"type": "tool_reference", "tool_name": "Bash"},
            {"type": "tool_reference", "tool_name": 5},
        ],
    },
    {"type": "thinking", "thinking": "hmm", "signature": "s"},
    {"type": "thinking", "thinking": 5},
    {"type": "redacted_thinking", "data": "x"},
    {"type": "server_tool_use", "id": "srv1", "name": "tool_search_tool_regex", "input": {}},
    {"type": "server_tool_use", "id": "srv1", "name": "web_search", "input": {}},
    {
        "type": "tool_search_tool_result",
        "tool_use_id": "srv1",
        "content": {
            "type": "tool_search_tool_search_result",
            "tool_references": [{"type": "tool_reference", "tool_name": "Bash"}],
        },
    },
    {"type": "tool_search_tool_result", "tool_use_id": 5},
]
MESSAGES: list[Any] = [
    5,
    {"role": "bot", "content": "x"},
    {"role": "user", "content": 5},
    {"role": "user", "content": None},
    {"role": "user", "content": "  "},
    {"role": "user", "content": []},
    {"role": "assistant", "content": ""},
    {"role": "assistant", "content": []},
    {"role": "system", "content": "late system"},
    {"role": "system", "content": [{"type": "text", "text": 5}]},
]


def variants(body: Any) -> Iterator[tuple[str, Any]]:
    """`body`, then copies of it with one thing changed each: a top-level field, a
    message put in place of each, a block put in place of (or after) each block
    of the first and last three messages."""
    yield "as-is", body
    for key, value in TOP_LEVEL:
        changed = dict(body)
        if value is None and key in ("model", "messages"):
            changed.pop(key, None)
        else:
            changed[key] = value
        yield f"{key}={value!r:.40}", changed
    messages = body.get("messages")
    if not isinstance(messages, list):
        return
    for i, message in enumerate(messages):
        for n, other in enumerate(MESSAGES):
            yield f"messages.{i}=M{n}", _with(body, i, copy.deepcopy(other))
        content = message.get("content") if isinstance(message, dict) else None
        if 3 <= i < len(messages) - 3:
            continue  # the middle of a long conversation: its like is tried above
        if isinstance(content, str):
            content = [{"type": "text", "text": content}]
        if not isinstance(content, list):
            continue
        for j in range(len(content) + 1):
            for n, block in enumerate(BLOCKS):
                changed = [*content[:j], copy.deepcopy(block), *content[j + 1 :]]
                changedMessage = {**message, "content": changed}
                yield f"messages.{i}.content.{j}=B{n}", _with(body, i, changedMessage)


def _with(body: dict[str, Any], i: int, message: Any) -> dict[str, Any]:
    messages = list(body["messages"])
    messages[i] = message
    return {**body, "messages": messages}


def planFor(body: Any, upstream: Upstream, target: Target) -> Plan:
    """The plan every sameness case is made with: `body` for `target` on `upstream`."""
    return Plan.forRequest(
        body,
        "client-model",
        "msg_1",
        targets=(target,),
        upstreams={"u": upstream},
        defaultMaxTokens=4096,
        maxResponseBytes=1 << 20,
        cacheKey="session-1",
    )


def outcome(body: Any) -> bytes:
    """What each API and profile makes of `body`, as bytes to digest."""
    parts: list[bytes] = []
    for name, profile in PROFILES.items():
        for api in APIS:
            upstream = Upstream(
                name="u",
                url="http://127.0.0.1:9/v1",
                apiKey="k",
                timeout=60,
                api=api,
                profile=profile,
            )
            target = Target("u", "up-model")
            try:
                plan = planFor(body, upstream, target)  # (reads a body, never changes it)
                names = plan.rendering.names
                made = plan.bodyFor(upstream, target)
                mapping = sorted(names.up.items())
                parts.append(
                    made
                    + orjson.dumps([mapping, sorted(plan.rendering.serverTools), names.renamed])
                )
            except ProxyError as e:
                parts.append(b"%d %s %s" % (e.status, e.errorType.encode(), e.message.encode()))
            except RecursionError:
                parts.append(b"recursion")
            if name != "plain" and api == "responses":
                break  # responses under one profile is enough
    return b"\n".join(parts)


def digests() -> dict[str, dict[str, Any]]:
    """Per request body: how many variants, and one digest of all their outcomes."""
    found = {}
    for label, body in requestBodies():
        digest = hashlib.sha256()
        count = 0
        for variant, changed in variants(body):
            digest.update(variant.encode() + b"\0" + outcome(changed) + b"\0")
            count += 1
        found[label] = {"variants": count, "sha256": digest.hexdigest()}
    return found


if __name__ == "__main__":
    made = digests()
    GOLDEN.write_bytes(orjson.dumps(made, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))
    count = sum(d["variants"] for d in made.values())
    print(f"{len(made)} bodies, {count} variants", file=sys.stderr)
