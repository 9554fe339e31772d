"""Anthropic Messages request -> OpenAI chat/completions request (ccproxy.translate.request).

Each table row is one line of the README's "Request, Anthropic -> OpenAI" table, or one
way a client can get a body wrong. The last part runs every captured Claude Code
request in tests/fixtures/claude-code/requests through the translator.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from ccproxy.errors import ProxyError
from ccproxy.translate.dialect import MAX_TOKENS_CEILING, Profile
from ccproxy.translate.request import MAX_STOP_SEQUENCES, stopSequences, toOpenAI
from tests.support.fixtures import requestBodies, requestBody

DEFAULT_MAX = 32000
EPHEMERAL = {"type": "ephemeral"}

# Every key the translator may put at the top of an OpenAI body.
ALLOWED_TOP_LEVEL = {
    "model",
    "messages",
    "max_completion_tokens",
    "max_tokens",
    "stop",
    "temperature",
    "top_p",
    "user",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "stream",
    "stream_options",
}
# Anthropic-only keys that must never reach an OpenAI upstream, at any depth.
FORBIDDEN_KEYS = {
    "cache_control",
    "top_k",
    "thinking",
    "signature",
    "context_management",
    "output_config",
    "safeguards",
    "defer_loading",
    "is_error",
    "tool_use_id",
    "input_schema",
}


def translate(body: dict[str, Any], profile: Profile | None = None, **kw: Any) -> dict[str, Any]:
    return toOpenAI(
        body,
        model=kw.pop("model", "up-model"),
        profile=profile or Profile(),
        defaultMaxTokens=kw.pop("defaultMaxTokens", DEFAULT_MAX),
    )


def request(messages: list[Any] | None = None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": "claude-sonnet-5-5",
        "messages": messages if messages is not None else [{"role": "user", "content": "hi"}],
        "max_tokens": 1024,
    }
    body.update(extra)
    return body


def allKeys(value: Any) -> Iterator[str]:
    """Every dict key anywhere inside `value`."""
    if isinstance(value, dict):
        for key, inner in value.items():
            yield key
            yield from allKeys(inner)
    elif isinstance(value, list):
        for inner in value:
            yield from allKeys(inner)


def text(t: str, **extra: Any) -> dict[str, Any]:
    return {"type": "text", "text": t, **extra}


def toolUse(callId: str, name: str = "Bash", input: Any = None, **extra: Any) -> dict[str, Any]:
    block = {"type": "tool_use", "id": callId, "name": name, **extra}
    block["input"] = {"command": "ls"} if input is None else input
    return block


def toolResult(callId: str, content: Any = "ok", **extra: Any) -> dict[str, Any]:
    return {"type": "tool_result", "tool_use_id": callId, "content": content, **extra}


def call(callId: str, name: str = "Bash", arguments: str = '{"command":"ls"}') -> dict[str, Any]:
    return {"id": callId, "type": "function", "function": {"name": name, "arguments": arguments}}


def user(content: Any) -> dict[str, Any]:
    return {"role": "user", "content": content}


def assistant(content: Any) -> dict[str, Any]:
    return {"role": "assistant", "content": content}


def tool(callId: str, content: Any) -> dict[str, Any]:
    return {"role": "tool", "tool_call_id": callId, "content": content}


def image(data: str = "AAAA", mediaType: str = "image/png") -> dict[str, Any]:
    return {"type": "image", "source": {"type": "base64", "media_type": mediaType, "data": data}}


def imageURL(url: str) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": url}}


class _Placeholder:
    """Equal to the placeholder content of an unanswered call: some non-empty text."""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, str) and bool(other.strip()) and other not in RESULT_TEXTS

    def __repr__(self) -> str:
        return "<placeholder text>"


PLACEHOLDER = _Placeholder()
RESULT_TEXTS = {"ok", "out-1", "out-2", "files", "boom"}


# -- system -------------------------------------------------------------------------------

SYSTEM_CASES = [
    pytest.param(
        {"system": "You are terse."},
        [user("hi")],
        [{"role": "system", "content": "You are terse."}, user("hi")],
        id="system-string",
    ),
    pytest.param(
        {"system": [text("A", cache_control=EPHEMERAL), text("B")]},
        [user("hi")],
        [{"role": "system", "content": "A\n\nB"}, user("hi")],
        id="system-blocks-joined",
    ),
    pytest.param(
        {"system": [text(""), text("  \n"), text("A")]},
        [user("hi")],
        [{"role": "system", "content": "A"}, user("hi")],
        id="system-whitespace-blocks-dropped",
    ),
    pytest.param({"system": ""}, [user("hi")], [user("hi")], id="system-empty-string-no-message"),
    pytest.param({"system": []}, [user("hi")], [user("hi")], id="system-empty-list-no-message"),
    pytest.param(
        {"system": "A"},
        [user("hi"), {"role": "system", "content": "B"}, assistant("ok"), user("go")],
        [{"role": "system", "content": "A\n\nB"}, user("hi"), assistant("ok"), user("go")],
        id="mid-list-system-merged-into-leading",
    ),
    pytest.param(
        {},
        [user("hi"), {"role": "system", "content": "B"}],
        [{"role": "system", "content": "B"}, user("hi")],
        id="system-message-only-source-moves-first",
    ),
    pytest.param(
        {"system": [text("A")]},
        [
            {"role": "system", "content": [text("B", cache_control=EPHEMERAL), text(" ")]},
            user("hi"),
            {"role": "system", "content": "C"},
        ],
        [{"role": "system", "content": "A\n\nB\n\nC"}, user("hi")],
        id="several-system-messages-in-order",
    ),
    pytest.param(
        {},
        [user("hi"), {"role": "system", "content": "   "}],
        [user("hi")],
        id="whitespace-system-message-dropped",
    ),
]


@pytest.mark.parametrize(("extra", "messages", "expected"), SYSTEM_CASES)
def test_system(extra: dict[str, Any], messages: list[Any], expected: list[Any]) -> None:
    out = translate(request(messages, **extra))
    assert out["messages"] == expected
    assert [m["role"] for m in out["messages"][1:]].count("system") == 0


# -- text blocks ----------------------------------------------------------------------------

TEXT_CASES = [
    pytest.param([user("hello")], [user("hello")], id="user-string"),
    pytest.param(
        [user([text("a", cache_control=EPHEMERAL), text("b")])],
        [user("a\n\nb")],
        id="all-text-blocks-become-one-string",
    ),
    pytest.param(
        [user([text(""), text(" \n\t"), text("hi")])],
        [user("hi")],
        id="empty-and-whitespace-blocks-dropped",
    ),
    pytest.param(
        [user("a"), assistant([text(" ")]), user("b")],
        [user("a"), user("b")],
        id="assistant-one-whitespace-block-dropped",
    ),
    pytest.param(
        [user("a"), assistant([text("x"), text(" "), text("y")])],
        [user("a"), assistant("x\n\ny")],
        id="assistant-text-blocks-joined",
    ),
    pytest.param(
        [user([text("a")]), assistant([text("b")])],
        [user("a"), assistant("b")],
        id="one-text-block-is-a-string",
    ),
    pytest.param(
        [user("a"), assistant("b"), user([text("  ")])],
        [user("a"), assistant("b")],
        id="whitespace-only-user-message-dropped",
    ),
    pytest.param(
        [user("a"), assistant([text(""), text("answer"), text("  ")]), user("c")],
        [user("a"), assistant("answer"), user("c")],
        id="assistant-whitespace-blocks-dropped",
    ),
    pytest.param(
        [user("a"), assistant([text("one"), text("two")]), user("c")],
        [user("a"), assistant("one\n\ntwo"), user("c")],
        id="assistant-text-blocks-joined",
    ),
    pytest.param(
        [
            user("a"),
            assistant([{"type": "thinking", "thinking": "hm", "signature": "sig"}]),
            user("c"),
        ],
        [user("a"), user("c")],
        id="thinking-only-assistant-dropped",
    ),
    pytest.param(
        [
            user("a"),
            assistant(
                [
                    {"type": "redacted_thinking", "data": "xx"},
                    {"type": "thinking", "thinking": "hm", "signature": "sig"},
                    text("visible"),
                ]
            ),
            user("c"),
        ],
        [user("a"), assistant("visible"), user("c")],
        id="thinking-blocks-dropped-text-kept",
    ),
]


@pytest.mark.parametrize(("messages", "expected"), TEXT_CASES)
def test_text(messages: list[Any], expected: list[Any]) -> None:
    assert translate(request(messages))["messages"] == expected


# -- tool_use / tool_result -------------------------------------------------------------------


def _calledAndAnswered(result: str) -> list[dict[str, Any]]:
    """A question, a turn that only calls `t1`, and its result as a tool message."""
    return [
        user("q"),
        {"role": "assistant", "content": "", "tool_calls": [call("t1")]},
        tool("t1", result),
    ]


TOOL_CASES = [
    pytest.param(
        [
            user("q"),
            assistant([text("Let me look."), toolUse("t1")]),
            user([toolResult("t1", "files")]),
        ],
        [
            user("q"),
            {"role": "assistant", "content": "Let me look.", "tool_calls": [call("t1")]},
            tool("t1", "files"),
        ],
        id="call-and-result",
    ),
    pytest.param(
        [user("q"), assistant([toolUse("t1")]), user([toolResult("t1", "files")])],
        [
            user("q"),
            {"role": "assistant", "content": "", "tool_calls": [call("t1")]},
            tool("t1", "files"),
        ],
        id="call-only-turn-has-empty-string-content",
    ),
    pytest.param(
        [
            user("q"),
            assistant([{"type": "thinking", "thinking": "x", "signature": "s"}, toolUse("t1")]),
            user([toolResult("t1", "files")]),
        ],
        [
            user("q"),
            {"role": "assistant", "content": "", "tool_calls": [call("t1")]},
            tool("t1", "files"),
        ],
        id="thinking-plus-call-has-empty-string-content",
    ),
    pytest.param(
        [
            user("q"),
            assistant([toolUse("t1"), toolUse("t2", "Read", {"file_path": "/x"})]),
            user([toolResult("t2", "out-2"), toolResult("t1", "out-1", cache_control=EPHEMERAL)]),
        ],
        [
            user("q"),
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [call("t1"), call("t2", "Read", '{"file_path":"/x"}')],
            },
            tool("t1", "out-1"),
            tool("t2", "out-2"),
        ],
        id="results-in-completion-order-sent-in-call-order",
    ),
    pytest.param(
        [
            user("q"),
            assistant([toolUse("t1")]),
            user([text("also this"), toolResult("t1", "files")]),
        ],
        [
            user("q"),
            {"role": "assistant", "content": "", "tool_calls": [call("t1")]},
            tool("t1", "files"),
            user("also this"),
        ],
        id="tool-message-before-user-text-that-precedes-it",
    ),
    pytest.param(
        [
            user("q"),
            assistant([toolUse("t1")]),
            user([toolResult("t1", "files"), text("now summarize")]),
        ],
        [
            user("q"),
            {"role": "assistant", "content": "", "tool_calls": [call("t1")]},
            tool("t1", "files"),
            user("now summarize"),
        ],
        id="tool-message-then-user-text",
    ),
    pytest.param(
        [user("q"), assistant([toolUse("t1")]), user([toolResult("t1", "boom", is_error=True)])],
        [
            user("q"),
            {"role": "assistant", "content": "", "tool_calls": [call("t1")]},
            tool("t1", "Error: boom"),
        ],
        id="is-error-said-in-content",
    ),
    pytest.param(
        [user("q"), assistant([toolUse("t1")]), user([toolResult("t1", "files", is_error=False)])],
        [
            user("q"),
            {"role": "assistant", "content": "", "tool_calls": [call("t1")]},
            tool("t1", "files"),
        ],
        id="is-error-false-content-untouched",
    ),
    pytest.param(  # a plain string result, the common case, read on a short path
        [user("q"), assistant([toolUse("t1")]), user([toolResult("t1", "")])],
        _calledAndAnswered(""),
        id="empty-string-result-sent-empty",
    ),
    pytest.param(
        [user("q"), assistant([toolUse("t1")]), user([toolResult("t1", None, is_error=True)])],
        [
            user("q"),
            {"role": "assistant", "content": "", "tool_calls": [call("t1")]},
            tool("t1", "Error"),
        ],
        id="is-error-without-content",
    ),
    pytest.param(
        [
            user("q"),
            assistant([toolUse("t1")]),
            user([toolResult("t1", [text("line a"), text("line b")])]),
        ],
        [
            user("q"),
            {"role": "assistant", "content": "", "tool_calls": [call("t1")]},
            tool("t1", "line a\n\nline b"),
        ],
        id="list-content-flattened-to-text",
    ),
    pytest.param(
        [
            user("q"),
            assistant([toolUse("t1"), toolUse("t2")]),
            user([toolResult("t2", "out-2")]),
        ],
        [
            user("q"),
            {"role": "assistant", "content": "", "tool_calls": [call("t1"), call("t2")]},
            tool("t1", PLACEHOLDER),
            tool("t2", "out-2"),
        ],
        id="missing-result-gets-placeholder",
    ),
    pytest.param(
        [user("q"), assistant([toolUse("t1")]), user("never mind")],
        [
            user("q"),
            {"role": "assistant", "content": "", "tool_calls": [call("t1")]},
            tool("t1", PLACEHOLDER),
            user("never mind"),
        ],
        id="plain-user-turn-closes-open-call",
    ),
    pytest.param(
        [user("q"), assistant([toolUse("t1")]), assistant("more"), user("go")],
        [
            user("q"),
            {"role": "assistant", "content": "", "tool_calls": [call("t1")]},
            tool("t1", PLACEHOLDER),
            assistant("more"),
            user("go"),
        ],
        id="assistant-after-call-closes-it-first",
    ),
    pytest.param(
        [user("q"), assistant([toolUse("t1")])],
        [
            user("q"),
            {"role": "assistant", "content": "", "tool_calls": [call("t1")]},
            tool("t1", PLACEHOLDER),
        ],
        id="trailing-call-gets-placeholder",
    ),
    pytest.param(
        [
            user("q"),
            assistant([toolUse("t1")]),
            {"role": "system", "content": "reminder"},
            user([toolResult("t1", "files")]),
        ],
        [
            {"role": "system", "content": "reminder"},
            user("q"),
            {"role": "assistant", "content": "", "tool_calls": [call("t1")]},
            tool("t1", "files"),
        ],
        id="system-between-call-and-result",
    ),
    pytest.param(
        [
            user("q"),
            assistant([toolUse("t1", input={})]),
            user([toolResult("t1", "ok")]),
        ],
        [
            user("q"),
            {"role": "assistant", "content": "", "tool_calls": [call("t1", arguments="{}")]},
            tool("t1", "ok"),
        ],
        id="empty-input-is-empty-object-json",
    ),
    pytest.param(
        [
            user("q"),
            assistant([{"type": "tool_use", "id": "t1", "name": "Bash"}]),
            user([toolResult("t1", "ok")]),
        ],
        [
            user("q"),
            {"role": "assistant", "content": "", "tool_calls": [call("t1", arguments="{}")]},
            tool("t1", "ok"),
        ],
        id="missing-input-is-empty-object-json",
    ),
    pytest.param(
        [
            user("q"),
            assistant([toolUse("functions.Bash:0", cache_control=EPHEMERAL)]),
            user([toolResult("functions.Bash:0", "ok")]),
        ],
        [
            user("q"),
            {"role": "assistant", "content": "", "tool_calls": [call("functions.Bash:0")]},
            tool("functions.Bash:0", "ok"),
        ],
        id="provider-call-id-kept-verbatim",
    ),
]


@pytest.mark.parametrize(("messages", "expected"), TOOL_CASES)
def test_tools_in_messages(messages: list[Any], expected: list[Any]) -> None:
    assert translate(request(messages))["messages"] == expected


def test_tool_call_arguments_are_a_json_string_of_the_input() -> None:
    payload = {"path": "/tmp/ü €.txt", "lines": [1, 2, 3], "opts": {"deep": None, "x": 1.5}}
    out = translate(request([user("q"), assistant([toolUse("t1", input=payload)]), user("x")]))
    arguments = out["messages"][1]["tool_calls"][0]["function"]["arguments"]
    assert isinstance(arguments, str)
    assert json.loads(arguments) == payload


ORPHAN_CASES = [
    pytest.param(
        [user([toolResult("zzz", "out-1")])],
        "zzz",
        "out-1",
        id="result-with-no-call-at-all",
    ),
    pytest.param(
        [
            user("q"),
            assistant([toolUse("t1")]),
            user([toolResult("t1", "ok")]),
            assistant([toolUse("t2")]),
            user([toolResult("t2", "out-2"), toolResult("t1", "out-1")]),
        ],
        "t1",
        "out-1",
        id="result-for-an-older-turn",
    ),
    pytest.param(
        [
            user("q"),
            assistant([toolUse("t1")]),
            user([toolResult("t1", "ok"), toolResult("t1", "out-1")]),
        ],
        "t1",
        "out-1",
        id="second-result-for-same-id",
    ),
]


@pytest.mark.parametrize(("messages", "callId", "resultText"), ORPHAN_CASES)
def test_orphan_result_becomes_user_text(messages: list[Any], callId: str, resultText: str) -> None:
    out = translate(request(messages))["messages"]
    toolMessages = [m for m in out if m["role"] == "tool"]
    assert [m["content"] for m in toolMessages].count(resultText) == 0
    # one tool message per id, never two
    ids = [m["tool_call_id"] for m in toolMessages]
    assert len(ids) == len(set(ids))
    last = out[-1]
    assert last["role"] == "user"
    assert isinstance(last["content"], str)
    assert callId in last["content"]
    assert resultText in last["content"]


# -- images and documents ------------------------------------------------------------------

MEDIA_CASES = [
    pytest.param(
        [user([text("what is this?"), image("AAAA", "image/jpeg")])],
        [
            user(
                [
                    {"type": "text", "text": "what is this?"},
                    imageURL("data:image/jpeg;base64,AAAA"),
                ]
            )
        ],
        id="base64-image-becomes-data-url",
    ),
    pytest.param(
        [user([{"type": "image", "source": {"type": "url", "url": "https://x.test/a.png"}}])],
        [user([imageURL("https://x.test/a.png")])],
        id="url-image",
    ),
    pytest.param(
        [user([text(" "), image()])],
        [user([imageURL("data:image/png;base64,AAAA")])],
        id="whitespace-text-next-to-image-dropped",
    ),
    pytest.param(
        [
            user(
                [
                    {
                        "type": "document",
                        "source": {
                            "type": "base64",
                            "media_type": "application/pdf",
                            "data": "JVBERi0=",
                        },
                        "title": "spec.pdf",
                        "cache_control": EPHEMERAL,
                    },
                    text("summarize"),
                ]
            )
        ],
        [
            user(
                [
                    {
                        "type": "file",
                        "file": {
                            "filename": "spec.pdf",
                            "file_data": "data:application/pdf;base64,JVBERi0=",
                        },
                    },
                    {"type": "text", "text": "summarize"},
                ]
            )
        ],
        id="pdf-document-becomes-file-part",
    ),
    pytest.param(
        [
            user(
                [
                    {
                        "type": "document",
                        "source": {"type": "text", "media_type": "text/plain", "data": "body"},
                    },
                    text("summarize"),
                ]
            )
        ],
        [user("body\n\nsummarize")],
        id="text-document-becomes-text",
    ),
    pytest.param(
        [
            user(
                [
                    {
                        "type": "document",
                        "title": "Notes",
                        "source": {"type": "text", "media_type": "text/plain", "data": "body"},
                    }
                ]
            )
        ],
        [user("Notes\n\nbody")],
        id="text-document-title-kept",
    ),
    pytest.param(
        [
            user("q"),
            assistant([toolUse("t1", "Read", {"file_path": "red.png"})]),
            user([toolResult("t1", [image("AAAA")])]),
        ],
        [
            user("q"),
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [call("t1", "Read", '{"file_path":"red.png"}')],
            },
            tool("t1", "[image attached below]"),
            user([imageURL("data:image/png;base64,AAAA")]),
        ],
        id="image-in-tool-result-follows-in-user-message",
    ),
    pytest.param(
        [
            user("q"),
            assistant([toolUse("t1"), toolUse("t2")]),
            user(
                [
                    text("and what colour?"),
                    toolResult("t2", [text("shot"), image("BBBB")]),
                    toolResult("t1", "out-1"),
                ]
            ),
        ],
        [
            user("q"),
            {"role": "assistant", "content": "", "tool_calls": [call("t1"), call("t2")]},
            tool("t1", "out-1"),
            tool("t2", "shot\n\n[image attached below]"),
            user(
                [
                    imageURL("data:image/png;base64,BBBB"),
                    {"type": "text", "text": "and what colour?"},
                ]
            ),
        ],
        id="result-images-after-all-tool-messages-before-user-text",
    ),
]


@pytest.mark.parametrize(("messages", "expected"), MEDIA_CASES)
def test_images_and_documents(messages: list[Any], expected: list[Any]) -> None:
    assert translate(request(messages))["messages"] == expected


# -- tools and tool_choice -----------------------------------------------------------------

SCHEMA = {"type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]}
BASH = {"name": "Bash", "description": "Run a command", "input_schema": SCHEMA}
BASH_OUT = {
    "type": "function",
    "function": {"name": "Bash", "description": "Run a command", "parameters": SCHEMA},
}
WEB_SEARCH = {"type": "web_search_20250305", "name": "web_search", "max_uses": 5}

TOOLS_CASES = [
    pytest.param([BASH], [BASH_OUT], id="function-tool"),
    pytest.param(
        [{**BASH, "cache_control": EPHEMERAL, "defer_loading": False}],
        [BASH_OUT],
        id="cache-control-and-defer-loading-dropped",  # deferred: test_translate_toolsearch
    ),
    pytest.param(
        [{**BASH, "type": "custom"}],
        [BASH_OUT],
        id="custom-type-kept",
    ),
    pytest.param(
        [{"name": "Ping", "input_schema": {"type": "object", "properties": {}}}],
        [
            {
                "type": "function",
                "function": {"name": "Ping", "parameters": {"type": "object", "properties": {}}},
            }
        ],
        id="no-description",
    ),
    pytest.param(
        [{"name": "Ping", "description": "p"}],
        [
            {
                "type": "function",
                "function": {
                    "name": "Ping",
                    "description": "p",
                    "parameters": {"type": "object", "properties": {}},
                },
            }
        ],
        id="no-schema-gets-empty-object-schema",
    ),
    pytest.param([WEB_SEARCH, BASH], [BASH_OUT], id="server-tool-removed"),
    pytest.param(
        [
            BASH,
            {"type": "code_execution_20250522", "name": "code_execution"},
            {"type": "bash_20250124", "name": "bash"},
            {"type": "text_editor_20250429", "name": "str_replace_based_edit_tool"},
        ],
        [BASH_OUT],
        id="all-server-tool-kinds-removed",
    ),
]


@pytest.mark.parametrize(("tools", "expected"), TOOLS_CASES)
def test_tools(tools: list[Any], expected: list[Any]) -> None:
    assert translate(request(tools=tools))["tools"] == expected


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param({"tools": []}, id="empty-tools"),
        pytest.param({"tools": [], "tool_choice": {"type": "auto"}}, id="empty-tools-with-choice"),
        pytest.param({"tools": [WEB_SEARCH]}, id="only-server-tool"),
        pytest.param(
            {
                "tools": [WEB_SEARCH],
                "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
            },
            id="only-server-tool-with-choice",
        ),
    ],
)
def test_no_tools_means_no_tool_fields(extra: dict[str, Any]) -> None:
    out = translate(request(**extra))
    assert "tools" not in out
    assert "tool_choice" not in out
    assert "parallel_tool_calls" not in out


TOOL_CHOICE_CASES = [
    pytest.param({"type": "auto"}, {"tool_choice": "auto"}, id="auto"),
    pytest.param({"type": "any"}, {"tool_choice": "required"}, id="any"),
    pytest.param({"type": "none"}, {"tool_choice": "none"}, id="none"),
    pytest.param(
        {"type": "tool", "name": "Bash"},
        {"tool_choice": {"type": "function", "function": {"name": "Bash"}}},
        id="named-tool",
    ),
    pytest.param(
        {"type": "auto", "disable_parallel_tool_use": True},
        {"tool_choice": "auto", "parallel_tool_calls": False},
        id="auto-no-parallel",
    ),
    pytest.param(
        {"type": "any", "disable_parallel_tool_use": True},
        {"tool_choice": "required", "parallel_tool_calls": False},
        id="any-no-parallel",
    ),
    pytest.param(
        {"type": "tool", "name": "Bash", "disable_parallel_tool_use": True},
        {
            "tool_choice": {"type": "function", "function": {"name": "Bash"}},
            "parallel_tool_calls": False,
        },
        id="named-no-parallel",
    ),
    pytest.param(
        {"type": "auto", "disable_parallel_tool_use": False},
        {"tool_choice": "auto"},
        id="parallel-allowed-explicitly",
    ),
    pytest.param(None, {}, id="no-choice"),
]


@pytest.mark.parametrize(("choice", "expected"), TOOL_CHOICE_CASES)
def test_tool_choice(choice: Any, expected: dict[str, Any]) -> None:
    extra: dict[str, Any] = {"tools": [BASH]}
    if choice is not None:
        extra["tool_choice"] = choice
    out = translate(request(**extra))
    got = {k: out[k] for k in ("tool_choice", "parallel_tool_calls") if k in out}
    assert got == expected


# -- sampling, limits, metadata, stream -------------------------------------------------------

HUGE = 2**63
CEILING = MAX_TOKENS_CEILING


def _limit(
    sent: int | None, expected: int, name: str, default: int = DEFAULT_MAX, **profile: Any
) -> Any:
    """A row: the client's max_tokens (None: none sent), the limit sent upstream."""
    field = profile.get("maxTokensParam", "max_completion_tokens")
    return pytest.param(sent, default, Profile(**profile), {field: expected}, id=name)


MAX_TOKENS_CASES = [
    _limit(1024, 1024, "passed"),
    _limit(1024, 1024, "legacy-field", maxTokensParam="max_tokens"),
    _limit(128000, 16384, "capped", maxTokens=16384),
    _limit(1000, 1000, "under-cap", maxTokens=16384),
    _limit(128000, 8192, "capped-legacy-field", maxTokens=8192, maxTokensParam="max_tokens"),
    _limit(None, DEFAULT_MAX, "default"),
    _limit(None, 4096, "default-capped", maxTokens=4096),
    # Without a cap of the upstream's own, the ceiling: a 2**63 is never forwarded.
    _limit(HUGE, CEILING, "huge"),
    _limit(HUGE, CEILING, "huge-legacy-field", maxTokensParam="max_tokens"),
    _limit(CEILING + 1, CEILING, "just-over-the-ceiling"),
    _limit(CEILING, CEILING, "at-the-ceiling"),
    _limit(HUGE, 16384, "huge-capped", maxTokens=16384),
    # The upstream's own cap is the operator's word, even above the ceiling.
    _limit(HUGE, 1_000_000, "huge-under-a-higher-cap", maxTokens=1_000_000),
    _limit(None, CEILING, "huge-default", default=HUGE),
    _limit(None, 4096, "huge-default-capped", default=HUGE, maxTokens=4096),
]


@pytest.mark.parametrize(("maxTokens", "default", "profile", "expected"), MAX_TOKENS_CASES)
def test_max_tokens(
    maxTokens: int | None, default: int, profile: Profile, expected: dict[str, int]
) -> None:
    body = request()
    if maxTokens is None:
        del body["max_tokens"]
    else:
        body["max_tokens"] = maxTokens
    out = translate(body, profile, defaultMaxTokens=default)
    got = {k: out[k] for k in ("max_completion_tokens", "max_tokens") if k in out}
    assert got == expected


STOP_CASES = [
    pytest.param(["\n\nHuman:"], ["\n\nHuman:"], id="one"),
    pytest.param(["a", "b", "c", "d"], ["a", "b", "c", "d"], id="four"),
    pytest.param(["a", "b", "c", "d", "e", "f"], ["a", "b", "c", "d"], id="first-four-of-six"),
    pytest.param(["", "END"], ["END"], id="empty-string-dropped"),
    pytest.param([], None, id="empty-list-no-stop"),
    pytest.param(None, None, id="absent"),
]


@pytest.mark.parametrize(("sequences", "expected"), STOP_CASES)
def test_stop_sequences(sequences: list[str] | None, expected: list[str] | None) -> None:
    extra = {} if sequences is None else {"stop_sequences": sequences}
    out = translate(request(**extra))
    assert out.get("stop") == expected
    if expected is not None:
        assert len(out["stop"]) <= MAX_STOP_SEQUENCES


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        pytest.param({"stop_sequences": ["a", "b"]}, ["a", "b"], id="listed"),
        pytest.param({"stop_sequences": list("abcdef")}, list("abcdef"), id="all-kept-for-match"),
        pytest.param({}, [], id="absent"),
        pytest.param({"stop_sequences": None}, [], id="null"),
    ],
)
def test_stop_sequences_helper(body: dict[str, Any], expected: list[str]) -> None:
    assert stopSequences(body) == expected


SAMPLING_CASES = [
    pytest.param({"temperature": 0.2}, {"temperature": 0.2}, id="temperature"),
    pytest.param({"temperature": 0}, {"temperature": 0}, id="temperature-zero-kept"),
    pytest.param({"temperature": 1}, {"temperature": 1}, id="temperature-int"),
    pytest.param({"top_p": 0.9}, {"top_p": 0.9}, id="top-p"),
    pytest.param(
        {"temperature": 0.5, "top_p": 0.95}, {"temperature": 0.5, "top_p": 0.95}, id="both"
    ),
    pytest.param({"temperature": None}, {}, id="null-temperature-omitted"),
    pytest.param({"metadata": {"user_id": "user-42"}}, {"user": "user-42"}, id="metadata-user"),
    pytest.param({"metadata": {}}, {}, id="metadata-without-user"),
    pytest.param({"metadata": {"user_id": None}}, {}, id="metadata-null-user"),
]


@pytest.mark.parametrize(("extra", "expected"), SAMPLING_CASES)
def test_sampling_and_metadata(extra: dict[str, Any], expected: dict[str, Any]) -> None:
    out = translate(request(**extra))
    got = {k: out[k] for k in ("temperature", "top_p", "user") if k in out}
    assert got == expected
    assert "metadata" not in out


STREAM_CASES = [
    pytest.param(True, Profile(), True, {"include_usage": True}, id="stream-with-usage"),
    pytest.param(True, Profile(streamUsage=False), True, None, id="stream-usage-off"),
    pytest.param(False, Profile(), False, None, id="not-streaming"),
    pytest.param(None, Profile(), False, None, id="absent"),
]


@pytest.mark.parametrize(("stream", "profile", "expected", "options"), STREAM_CASES)
def test_stream(
    stream: bool | None, profile: Profile, expected: bool, options: dict[str, Any] | None
) -> None:
    extra = {} if stream is None else {"stream": stream}
    out = translate(request(**extra), profile)
    assert out["stream"] is expected
    assert out.get("stream_options") == options


def test_model_is_the_routed_upstream_name() -> None:
    out = translate(request(), model="corp/gpt-4.1")
    assert out["model"] == "corp/gpt-4.1"


DROPPED_CASES = [
    pytest.param("top_k", 40, id="top_k"),
    pytest.param("thinking", {"type": "enabled", "budget_tokens": 31999}, id="thinking"),
    pytest.param(
        "context_management",
        {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
        id="context_management",
    ),
    pytest.param("output_config", {"effort": "high"}, id="output_config"),
    pytest.param("cache_control", EPHEMERAL, id="cache_control"),
    pytest.param("safeguards", [{"type": "dangerous_tool_use"}], id="safeguards"),
    pytest.param("service_tier", "auto", id="service_tier"),
    pytest.param("mcp_servers", [{"type": "url", "url": "https://x"}], id="mcp_servers"),
    pytest.param("container", "c-1", id="container"),
    pytest.param("betas", ["x"], id="betas"),
    pytest.param("some_future_field", {"a": 1}, id="unknown-key"),
]


@pytest.mark.parametrize(("key", "value"), DROPPED_CASES)
def test_unsupported_keys_never_forwarded(key: str, value: Any) -> None:
    out = translate(request(**{key: value}))
    assert set(out) <= ALLOWED_TOP_LEVEL
    assert key not in set(allKeys(out))


def test_cache_control_everywhere_is_dropped_everywhere() -> None:
    cc = {"cache_control": EPHEMERAL}
    body = request(
        [
            user([text("q", **cc), image(), {**image(), **cc}]),
            {"role": "system", "content": [text("sys", **cc)]},
            assistant([text("calling", **cc), toolUse("t1", **cc)]),
            user([toolResult("t1", [text("r", **cc), {**image(), **cc}], **cc), text("x", **cc)]),
        ],
        system=[text("s1", **cc)],
        tools=[{**BASH, **cc}],
        tool_choice={"type": "auto"},
        cache_control=EPHEMERAL,
        stream=True,
    )
    out = translate(body)
    keys = set(allKeys(out))
    assert not keys & FORBIDDEN_KEYS
    assert set(out) <= ALLOWED_TOP_LEVEL


# -- validation ----------------------------------------------------------------------------


def _with(messages: list[Any], **extra: Any) -> dict[str, Any]:
    return request(messages, **extra)


def _answering(result: dict[str, Any]) -> dict[str, Any]:
    """A request whose third message answers a call of `t` with the block `result`."""
    return _with([user("q"), assistant([toolUse("t")]), user([result])])


INVALID_CASES = [
    pytest.param([1, 2], "", id="body-not-object"),
    pytest.param({"messages": [user("hi")]}, "model", id="model-missing"),
    pytest.param({"model": 5, "messages": [user("hi")]}, "model", id="model-not-string"),
    pytest.param({"model": "m"}, "messages", id="messages-missing"),
    pytest.param({"model": "m", "messages": {"role": "user"}}, "messages", id="messages-object"),
    pytest.param({"model": "m", "messages": []}, "messages", id="messages-empty"),
    pytest.param(_with(["hi"]), "messages.0", id="message-not-object"),
    pytest.param(_with([{"role": "user"}]), "messages.0.content", id="content-missing"),
    pytest.param(_with([user(5)]), "messages.0.content", id="content-number"),
    pytest.param(_with([user({"type": "text"})]), "messages.0.content", id="content-object"),
    pytest.param(_with([{"content": "hi"}]), "messages.0.role", id="role-missing"),
    pytest.param(_with([{"role": "tool", "content": "x"}]), "messages.0.role", id="role-tool"),
    pytest.param(_with([{"role": 1, "content": "x"}]), "messages.0.role", id="role-number"),
    pytest.param(_with([user(["hi"])]), "messages.0.content.0", id="block-not-object"),
    pytest.param(
        _with([user("a"), assistant([text("b"), "hi"])]),
        "messages.1.content.1",
        id="assistant-block-not-object",
    ),
    pytest.param(
        _with([user("a"), assistant([{"type": 3, "text": "b"}])]),
        "messages.1.content.0.type",
        id="assistant-type-number",
    ),
    pytest.param(
        _with([user("a"), assistant([{"text": "b"}])]),
        "messages.1.content.0.type",
        id="assistant-type-missing",
    ),
    pytest.param(_with([user([{"text": "hi"}])]), "messages.0.content.0.type", id="type-missing"),
    pytest.param(
        _with([user([{"type": 3, "text": "hi"}])]), "messages.0.content.0.type", id="type-number"
    ),
    pytest.param(
        _with([user([text("ok"), {"type": "text", "text": 5}])]),
        "messages.0.content.1.text",
        id="text-not-string",
    ),
    pytest.param(
        _with([user([text("ok"), {"type": "text"}])]),
        "messages.0.content.1.text",
        id="text-missing",
    ),
    pytest.param(
        _with([user("q"), assistant([text("a"), {"type": "text", "text": None}])]),
        "messages.1.content.1.text",
        id="assistant-text-null",
    ),
    pytest.param(
        _with([user("q"), assistant([{"type": "tool_use", "name": "Bash", "input": {}}])]),
        "messages.1.content.0.id",
        id="tool-use-id-missing",
    ),
    pytest.param(
        _with([user("q"), assistant([{"type": "tool_use", "id": "t", "input": {}}])]),
        "messages.1.content.0.name",
        id="tool-use-name-missing",
    ),
    pytest.param(
        _with([user("q"), assistant([toolUse("t", input="ls")])]),
        "messages.1.content.0.input",
        id="tool-use-input-string",
    ),
    pytest.param(
        _with([user("q"), assistant([toolUse("t", input=[1])])]),
        "messages.1.content.0.input",
        id="tool-use-input-list",
    ),
    pytest.param(
        _with([user([{"type": "tool_result", "content": "x"}])]),
        "messages.0.content.0.tool_use_id",
        id="tool-result-id-missing",
    ),
    pytest.param(
        _with([user([{"type": "tool_result", "tool_use_id": 7, "content": "x"}])]),
        "messages.0.content.0.tool_use_id",
        id="tool-result-id-number",
    ),
    pytest.param(
        _with([user("q"), assistant([toolUse("t")]), user([toolResult("t", 42)])]),
        "messages.2.content.0.content",
        id="tool-result-content-number",
    ),
    pytest.param(
        _with([user("q"), assistant([toolUse("t")]), user([toolResult("t", ["x"])])]),
        "messages.2.content.0.content.0",
        id="tool-result-inner-block-not-object",
    ),
    pytest.param(
        _with([user("q"), assistant([toolUse("t")]), user([toolResult("t", [{"type": "text"}])])]),
        "messages.2.content.0.content.0.text",
        id="tool-result-inner-text-missing",
    ),
    pytest.param(
        _with(
            [
                user("q"),
                assistant([toolUse("t")]),
                user([toolResult("t", [text("a"), {"type": "image", "source": "x"}])]),
            ]
        ),
        "messages.2.content.0.content.1.source",
        id="tool-result-image-source-string",
    ),
    pytest.param(
        _with([user("q"), assistant([toolUse("t")]), user([toolResult("t", "x", is_error="yes")])]),
        "messages.2.content.0.is_error",
        id="is-error-string",
    ),
    pytest.param(  # equal to False, yet no boolean: refused as ever
        _answering(toolResult("t", "x", is_error=0)),
        "messages.2.content.0.is_error",
        id="is-error-zero",
    ),
    pytest.param(
        _answering({"type": "tool_result", "tool_use_id": 7, "content": "x"}),
        "messages.2.content.0.tool_use_id",
        id="tool-result-id-not-string",
    ),
    pytest.param(
        _with([user([{"type": "image"}])]), "messages.0.content.0.source", id="image-no-source"
    ),
    pytest.param(
        _with([user([{"type": "image", "source": {"type": "file", "file_id": "f"}}])]),
        "messages.0.content.0.source.type",
        id="image-source-kind",
    ),
    pytest.param(
        _with([user([{"type": "image", "source": {"type": "base64", "media_type": "image/png"}}])]),
        "messages.0.content.0.source.data",
        id="image-data-missing",
    ),
    pytest.param(
        _with(
            [
                user(
                    [
                        {
                            "type": "image",
                            "source": {"type": "base64", "media_type": 1, "data": "AA"},
                        }
                    ]
                )
            ]
        ),
        "messages.0.content.0.source.media_type",
        id="image-media-type-number",
    ),
    pytest.param(
        _with([user([{"type": "image", "source": {"type": "url", "url": None}}])]),
        "messages.0.content.0.source.url",
        id="image-url-null",
    ),
    pytest.param(
        _with([user([{"type": "document", "source": {"type": "zip"}}])]),
        "messages.0.content.0.source.type",
        id="document-source-kind",
    ),
    pytest.param(
        _with([user([{"type": "document", "source": {"type": "text", "data": 3}}])]),
        "messages.0.content.0.source.data",
        id="document-text-data-number",
    ),
    pytest.param(
        _with([user([{"type": "document", "source": {"type": "content", "content": 3}}])]),
        "messages.0.content.0.source.content",
        id="document-content-number",
    ),
    pytest.param(_with([user("hi")], system=5), "system", id="system-number"),
    pytest.param(_with([user("hi")], system={"text": "x"}), "system", id="system-object"),
    pytest.param(_with([user("hi")], system=["x"]), "system.0", id="system-block-string"),
    pytest.param(
        _with([user("hi")], system=[text("a"), image()]), "system.1.type", id="system-block-image"
    ),
    pytest.param(
        _with([user("hi")], system=[{"type": "text", "text": 1}]),
        "system.0.text",
        id="system-block-text-number",
    ),
    pytest.param(
        _with([user("hi"), {"role": "system", "content": [image()]}]),
        "messages.1.content.0.type",
        id="system-message-image",
    ),
    pytest.param(
        _with([user("hi"), {"role": "system", "content": 5}]),
        "messages.1.content",
        id="system-message-content-number",
    ),
    pytest.param(_with([user("hi")], max_tokens=0), "max_tokens", id="max-tokens-zero"),
    pytest.param(_with([user("hi")], max_tokens=-5), "max_tokens", id="max-tokens-negative"),
    pytest.param(_with([user("hi")], max_tokens="100"), "max_tokens", id="max-tokens-string"),
    pytest.param(_with([user("hi")], max_tokens=1.5), "max_tokens", id="max-tokens-float"),
    pytest.param(_with([user("hi")], max_tokens=True), "max_tokens", id="max-tokens-bool"),
    pytest.param(_with([user("hi")], temperature="0.5"), "temperature", id="temperature-string"),
    pytest.param(_with([user("hi")], temperature=True), "temperature", id="temperature-bool"),
    pytest.param(_with([user("hi")], top_p=[0.9]), "top_p", id="top-p-list"),
    pytest.param(
        _with([user("hi")], stop_sequences="STOP"), "stop_sequences", id="stop-sequences-string"
    ),
    pytest.param(
        _with([user("hi")], stop_sequences=["a", 1]), "stop_sequences", id="stop-sequences-number"
    ),
    pytest.param(_with([user("hi")], metadata="u"), "metadata", id="metadata-string"),
    pytest.param(
        _with([user("hi")], metadata={"user_id": 5}), "metadata.user_id", id="metadata-user-number"
    ),
    pytest.param(_with([user("hi")], stream="yes"), "stream", id="stream-string"),
    pytest.param(_with([user("hi")], stream=1), "stream", id="stream-int"),
    pytest.param(_with([user("hi")], tools={"name": "Bash"}), "tools", id="tools-object"),
    pytest.param(_with([user("hi")], tools=["Bash"]), "tools.0", id="tool-not-object"),
    pytest.param(
        _with([user("hi")], tools=[BASH, {"description": "x"}]), "tools.1.name", id="tool-no-name"
    ),
    pytest.param(
        _with([user("hi")], tools=[{"name": "X", "input_schema": "{}"}]),
        "tools.0.input_schema",
        id="tool-schema-string",
    ),
    pytest.param(
        _with([user("hi")], tools=[BASH], tool_choice="auto"),
        "tool_choice",
        id="tool-choice-string",
    ),
    pytest.param(
        _with([user("hi")], tools=[BASH], tool_choice={"type": "required"}),
        "tool_choice.type",
        id="tool-choice-kind",
    ),
    pytest.param(
        _with([user("hi")], tools=[BASH], tool_choice={"type": "tool"}),
        "tool_choice.name",
        id="tool-choice-tool-without-name",
    ),
    pytest.param(
        _with(
            [user("hi")],
            tools=[BASH],
            tool_choice={"type": "auto", "disable_parallel_tool_use": "y"},
        ),
        "tool_choice.disable_parallel_tool_use",
        id="disable-parallel-string",
    ),
]


@pytest.mark.parametrize(("body", "path"), INVALID_CASES)
def test_invalid_request_names_the_field(body: Any, path: str) -> None:
    with pytest.raises(ProxyError) as caught:
        translate(body)
    error = caught.value
    assert error.status == 400
    assert error.errorType == "invalid_request_error"
    if path:
        assert error.message.startswith(f"{path}:"), error.message
    else:
        assert error.message


def _referenceTools(count: int, fanOut: int) -> list[dict[str, Any]]:
    """Tools whose schemas each use a definition `fanOut` times at each of 8 levels."""
    defs: dict[str, Any] = {
        f"D{i}": {
            "type": "object",
            "properties": {f"p{k}": {"$ref": f"#/$defs/D{i + 1}"} for k in range(fanOut)},
        }
        for i in range(8)
    }
    defs["D8"] = {"type": "string"}
    schema = {"type": "object", "properties": {"r": {"$ref": "#/$defs/D0"}}, "$defs": defs}
    return [{"name": f"T{i}", "input_schema": schema} for i in range(count)]


SCHEMA_BUDGET_CASES = [
    pytest.param(_referenceTools(1, 10), False, id="one-tool-of-10**8-nodes"),
    # ~2,000 steps each: 30 fit in one request's budget, 60 do not.
    pytest.param(_referenceTools(30, 2), True, id="thirty-tools-of-511-nodes"),
    pytest.param(_referenceTools(60, 2), False, id="sixty-tools-of-511-nodes"),
]


@pytest.mark.parametrize(("tools", "fits"), SCHEMA_BUDGET_CASES)
def test_gemini_schemas_share_one_budget_per_request(tools: list[Any], fits: bool) -> None:
    """The reducer's work is bounded for the whole request, whatever the number of tools;
    past it, a 400 says which limit and why (the same tools go whole elsewhere)."""
    body = request(tools=tools)
    assert len(translate(body)["tools"]) == len(tools)
    if fits:
        assert len(translate(body, Profile(schema="gemini"))["tools"]) == len(tools)
        return
    with pytest.raises(ProxyError) as caught:
        translate(body, Profile(schema="gemini"))
    error = caught.value
    assert (error.status, error.errorType) == (400, "invalid_request_error")
    assert error.message.startswith(
        "tools: the tool schemas are too large or complex for this upstream's schema mode (gemini)"
    )
    assert "over 100000 steps" in error.message and "MAX_SCHEMA_STEPS" in error.message


# -- captured Claude Code requests ----------------------------------------------------------


FIXTURE_BODIES = requestBodies()


def test_fixture_folder_is_present() -> None:
    # Guards the parametrized test below against silently collecting nothing.
    assert len(FIXTURE_BODIES) >= 30


@pytest.mark.parametrize("body", FIXTURE_BODIES)
@pytest.mark.parametrize(
    "profile",
    [
        pytest.param(Profile(), id="default"),
        pytest.param(
            Profile(maxTokens=8192, maxTokensParam="max_tokens", streamUsage=False), id="legacy"
        ),
    ],
)
def test_fixture_translates_cleanly(body: dict[str, Any], profile: Profile) -> None:
    out = translate(body, profile)
    messages = out["messages"]
    assert messages, "nothing to send"

    roles = [m["role"] for m in messages]
    assert "system" not in roles[1:]
    assert set(roles) <= {"system", "user", "assistant", "tool"}

    for i, message in enumerate(messages):
        if message["role"] == "assistant" and message.get("tool_calls"):
            ids = [c["id"] for c in message["tool_calls"]]
            following = []
            for later in messages[i + 1 :]:
                if later["role"] != "tool":
                    break
                following.append(later["tool_call_id"])
            assert following == ids
            assert isinstance(message["content"], str)
            for c in message["tool_calls"]:
                assert isinstance(json.loads(c["function"]["arguments"]), dict)
        if message["role"] == "tool":
            previous = messages[i - 1]
            assert previous["role"] in ("assistant", "tool")

    assert "cache_control" not in set(allKeys(out))
    assert not set(allKeys(out)) & FORBIDDEN_KEYS
    assert set(out) <= ALLOWED_TOP_LEVEL
    assert orjson.loads(orjson.dumps(out)) == out


def test_fixture_parallel_results_reordered_to_call_order() -> None:
    # Claude Code sent the Read result before the Bash one (completion order).
    body = requestBody("005")
    callOrder = [b["id"] for b in body["messages"][2]["content"] if b["type"] == "tool_use"]
    resultOrder = [b["tool_use_id"] for b in body["messages"][3]["content"]]
    assert resultOrder == callOrder[::-1]
    messages = translate(body)["messages"]
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "tool", "tool"]
    assert [m["tool_call_id"] for m in messages[3:]] == callOrder
    assert messages[2]["content"] == "I'll do that now."


def test_fixture_system_message_after_first_user_turn_merged() -> None:
    body = requestBody("001")
    assert body["messages"][1]["role"] == "system"
    messages = translate(body)["messages"]
    assert [m["role"] for m in messages] == ["system", "user"]
    inner = body["messages"][1]["content"]
    innerTexts = [inner] if isinstance(inner, str) else [b["text"] for b in inner]
    # The billing block (first, changing on every request) is dropped by default.
    assert body["system"][0]["text"].startswith("x-anthropic-billing-header")
    systemTexts = [b["text"] for b in body["system"][1:]] + innerTexts
    assert messages[0]["content"] == "\n\n".join(systemTexts)


def test_fixture_error_result_marked() -> None:
    messages = translate(requestBody("008"))["messages"]
    tools = [m for m in messages if m["role"] == "tool"]
    assert len(tools) == 2
    assert tools[0]["content"].startswith("Error")
    assert not tools[1]["content"].startswith("Error")


def test_fixture_image_result_follows_tool_message() -> None:
    messages = translate(requestBody("009"))["messages"]
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "tool", "user"]
    (part,) = messages[4]["content"]
    assert part["type"] == "image_url"
    assert part["image_url"]["url"].startswith("data:image/png;base64,iVBORw0KGgo")


def test_fixture_compact_result_then_user_text() -> None:
    messages = translate(requestBody("028"))["messages"]
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "tool", "user"]
    assert messages[2]["content"] == ""


def test_fixture_title_request_without_tools() -> None:
    out = translate(requestBody("023"))
    assert "tools" not in out
    assert "tool_choice" not in out
    assert out["max_completion_tokens"] == 128000
    assert out["stream"] is True
    assert out["stream_options"] == {"include_usage": True}


def test_fixture_metadata_user_id_forwarded() -> None:
    body = requestBody("001")
    assert translate(body)["user"] == body["metadata"]["user_id"]
