"""OpenAI chat completion -> Anthropic message (ccproxy.translate.response).

Rows follow the README's "Response, OpenAI -> Anthropic" table and the upstream quirks
in docs/upstream-quirks.md (content null or a list of parts, arguments as objects,
missing ids, `finish_reason: "stop"` with tool calls, DeepSeek/Kimi usage shapes).
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from ccproxy.errors import ProxyError
from ccproxy.translate.response import (
    anthropicUsage,
    contentText,
    fromOpenAI,
    parseArguments,
    stopReasonFor,
    toolCallList,
)

MESSAGE_ID = "msg_0123abc"
ANTHROPIC_ID = re.compile(r"^[a-zA-Z0-9_-]+$")
ZERO_USAGE = {
    "input_tokens": 0,
    "output_tokens": 0,
    "cache_creation_input_tokens": 0,
    "cache_read_input_tokens": 0,
}


def completion(
    message: dict[str, Any] | None = None,
    finishReason: Any = "stop",
    usage: Any = None,
    **choiceExtra: Any,
) -> dict[str, Any]:
    choice: dict[str, Any] = {"index": 0, "message": message or {}, "finish_reason": finishReason}
    choice.update(choiceExtra)
    data: dict[str, Any] = {"id": "chatcmpl-1", "object": "chat.completion", "choices": [choice]}
    if usage is not None:
        data["usage"] = usage
    return data


def translate(data: Any, stopSequences: tuple[str, ...] = ()) -> dict[str, Any]:
    return fromOpenAI(
        data, messageId=MESSAGE_ID, model="claude-sonnet-5-5", stopSequences=stopSequences
    )


def fn(name: str, arguments: Any, callId: Any = "call_1", **extra: Any) -> dict[str, Any]:
    call: dict[str, Any] = {"type": "function", "function": {"name": name, "arguments": arguments}}
    if callId is not ...:
        call["id"] = callId
    call.update(extra)
    return call


def textBlock(t: str) -> dict[str, Any]:
    return {"type": "text", "text": t}


def useBlock(callId: str, name: str, input: dict[str, Any]) -> dict[str, Any]:
    return {"type": "tool_use", "id": callId, "name": name, "input": input}


# -- content blocks -------------------------------------------------------------------------

CONTENT_CASES = [
    pytest.param({"role": "assistant", "content": "Hello."}, [textBlock("Hello.")], id="text"),
    pytest.param(
        {
            "role": "assistant",
            "content": "Running both.",
            "tool_calls": [
                fn("Bash", '{"command":"ls"}', "call_a"),
                fn("Read", '{"file_path":"/x"}', "call_b"),
            ],
        },
        [
            textBlock("Running both."),
            useBlock("call_a", "Bash", {"command": "ls"}),
            useBlock("call_b", "Read", {"file_path": "/x"}),
        ],
        id="text-then-tool-calls-in-order",
    ),
    pytest.param(
        {"role": "assistant", "content": "", "tool_calls": [fn("Bash", "{}", "c1")]},
        [useBlock("c1", "Bash", {})],
        id="empty-text-no-block",
    ),
    pytest.param(
        {"role": "assistant", "content": None, "tool_calls": [fn("Bash", "{}", "c1")]},
        [useBlock("c1", "Bash", {})],
        id="null-content-with-call",
    ),
    pytest.param({"role": "assistant", "content": None}, [], id="null-content-alone"),
    pytest.param({"role": "assistant"}, [], id="content-key-missing"),
    pytest.param(
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Hello, "},
                {"type": "text", "text": "world."},
            ],
        },
        [textBlock("Hello, world.")],
        id="list-of-parts",
    ),
    pytest.param(
        {"role": "assistant", "content": [{"type": "text", "text": "a"}, "junk", {"type": "x"}]},
        [textBlock("a")],
        id="list-with-non-text-parts",
    ),
    pytest.param(
        {"role": "assistant", "content": [], "tool_calls": [fn("Bash", "{}", "c1")]},
        [useBlock("c1", "Bash", {})],
        id="empty-list-content",
    ),
    pytest.param(
        {"role": "assistant", "content": "", "tool_calls": fn("Bash", '{"a":1}', "c1")},
        [useBlock("c1", "Bash", {"a": 1})],
        id="tool-calls-as-object-tgi",
    ),
    pytest.param(
        {
            "role": "assistant",
            "content": "x",
            "tool_calls": [{"id": "bad", "function": "Bash"}, "junk", fn("Bash", "{}", "ok")],
        },
        [textBlock("x"), useBlock("ok", "Bash", {})],
        id="malformed-calls-skipped",
    ),
    pytest.param(
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [fn("Bash", '{"command":"ls"}', "functions.Bash:0")],
        },
        [useBlock("functions.Bash:0", "Bash", {"command": "ls"})],
        id="kimi-id-kept-verbatim",
    ),
]


@pytest.mark.parametrize(("message", "expected"), CONTENT_CASES)
def test_content_blocks(message: dict[str, Any], expected: list[dict[str, Any]]) -> None:
    out = translate(completion(message))
    assert out["content"] == expected
    assert all(b["text"] for b in out["content"] if b["type"] == "text")


def test_message_envelope() -> None:
    out = translate(completion({"role": "assistant", "content": "hi"}))
    assert out["id"] == MESSAGE_ID
    assert out["type"] == "message"
    assert out["role"] == "assistant"
    assert out["model"] == "claude-sonnet-5-5"
    assert out["stop_reason"] == "end_turn"
    assert out["stop_sequence"] is None
    assert out["usage"] == ZERO_USAGE


# -- stop_reason ----------------------------------------------------------------------------

CALL = [fn("Bash", "{}", "c1")]

STOP_CASES = [
    # (message, finish_reason, client stop sequences, choice extras, reason, sequence, text)
    pytest.param({"content": "ok"}, "stop", (), {}, "end_turn", None, "ok", id="stop"),
    pytest.param({"content": "ok"}, "length", (), {}, "max_tokens", None, "ok", id="length"),
    pytest.param(
        {"content": "ok"}, "content_filter", (), {}, "refusal", None, "ok", id="content-filter"
    ),
    pytest.param({"content": "ok"}, None, (), {}, "end_turn", None, "ok", id="finish-null"),
    pytest.param({"content": "ok"}, "weird", (), {}, "end_turn", None, "ok", id="finish-unknown"),
    pytest.param(
        {"content": "", "tool_calls": CALL},
        "tool_calls",
        (),
        {},
        "tool_use",
        None,
        None,
        id="tool-calls",
    ),
    pytest.param(
        {"content": "", "tool_calls": CALL},
        "stop",
        (),
        {},
        "tool_use",
        None,
        None,
        id="tool-calls-with-stop-gemini",
    ),
    pytest.param(
        {"content": "", "tool_calls": CALL},
        "length",
        (),
        {},
        "tool_use",
        None,
        None,
        id="tool-calls-with-length",
    ),
    pytest.param(
        {"content": "", "tool_calls": CALL},
        None,
        (),
        {},
        "tool_use",
        None,
        None,
        id="tool-calls-without-finish",
    ),
    pytest.param(
        {"content": "x END", "tool_calls": CALL},
        "stop",
        ("END",),
        {},
        "tool_use",
        None,
        "x END",
        id="tool-calls-beat-stop-sequence",
    ),
    pytest.param(
        {"content": "done"},
        "stop",
        ("END", "STOP"),
        {"matched_stop": "STOP"},
        "stop_sequence",
        "STOP",
        "done",
        id="matched-stop-sglang",
    ),
    pytest.param(
        {"content": "done"},
        "stop",
        ("END",),
        {"matched_stop": 151645},
        "end_turn",
        None,
        "done",
        id="matched-stop-token-id-is-not-a-sequence",
    ),
    pytest.param(
        {"content": "done"},
        "stop",
        ("END",),
        {"matched_stop": "OTHER"},
        "end_turn",
        None,
        "done",
        id="matched-stop-not-a-client-sequence",
    ),
    pytest.param(
        {"content": "answer\n\nEND"},
        "stop",
        ("END",),
        {},
        "stop_sequence",
        "END",
        "answer\n\n",
        id="text-ends-with-sequence-stripped",
    ),
    pytest.param(
        {"content": "answer</done>"},
        "stop",
        ("###", "</done>"),
        {},
        "stop_sequence",
        "</done>",
        "answer",
        id="second-sequence-matches",
    ),
    pytest.param(
        {"content": "END"},
        "stop",
        ("END",),
        {},
        "stop_sequence",
        "END",
        None,
        id="only-the-sequence-no-empty-block",
    ),
    pytest.param(
        {"content": "the END is near"},
        "stop",
        ("END",),
        {},
        "end_turn",
        None,
        "the END is near",
        id="sequence-in-the-middle-is-not-a-match",
    ),
    pytest.param(
        {"content": "answer END"},
        "length",
        ("END",),
        {},
        "max_tokens",
        None,
        "answer END",
        id="length-never-a-stop-sequence",
    ),
    pytest.param(
        {"content": "answer END"},
        "stop",
        (),
        {},
        "end_turn",
        None,
        "answer END",
        id="no-client-sequences-text-untouched",
    ),
]


@pytest.mark.parametrize(
    ("message", "finish", "sequences", "extra", "reason", "sequence", "text"), STOP_CASES
)
def test_stop_reason(
    message: dict[str, Any],
    finish: Any,
    sequences: tuple[str, ...],
    extra: dict[str, Any],
    reason: str,
    sequence: str | None,
    text: str | None,
) -> None:
    out = translate(completion({"role": "assistant", **message}, finish, **extra), sequences)
    assert out["stop_reason"] == reason
    assert out["stop_sequence"] == sequence
    texts = [b["text"] for b in out["content"] if b["type"] == "text"]
    assert texts == ([] if text is None else [text])


STOP_REASON_FOR_CASES = [
    pytest.param(("stop", False), ("end_turn", None), id="stop"),
    pytest.param(("length", False), ("max_tokens", None), id="length"),
    pytest.param(("max_tokens", False), ("max_tokens", None), id="max-tokens-alias"),
    pytest.param(("content_filter", False), ("refusal", None), id="content-filter"),
    pytest.param(("tool_calls", False), ("end_turn", None), id="tool-calls-reason-without-calls"),
    pytest.param(("stop", True), ("tool_use", None), id="calls-override-stop"),
    pytest.param(("content_filter", True), ("tool_use", None), id="calls-override-filter"),
    pytest.param((42, False), ("end_turn", None), id="non-string-reason"),
    pytest.param(("stop", False, "xEND", ("END",)), ("stop_sequence", "END"), id="text-sequence"),
    pytest.param(
        ("stop", False, "x", ("END",), "END"), ("stop_sequence", "END"), id="matched-stop"
    ),
    pytest.param(
        ("content_filter", False, "xEND", ("END",)), ("refusal", None), id="filter-not-sequence"
    ),
]


@pytest.mark.parametrize(("args", "expected"), STOP_REASON_FOR_CASES)
def test_stop_reason_for(args: tuple[Any, ...], expected: tuple[str, str | None]) -> None:
    assert stopReasonFor(*args) == expected


# -- tool call arguments and ids ------------------------------------------------------------

ARGUMENT_CASES = [
    pytest.param('{"command": "ls -la"}', {"command": "ls -la"}, id="json-string"),
    pytest.param({"command": "ls"}, {"command": "ls"}, id="object-ollama"),
    pytest.param('{"a": {"b": [1, 2]}, "c": null}', {"a": {"b": [1, 2]}, "c": None}, id="nested"),
    pytest.param("", {}, id="empty-string"),
    pytest.param("   \n", {}, id="whitespace-string"),
    pytest.param(None, {}, id="null"),
    pytest.param("{}", {}, id="empty-object"),
    pytest.param(
        '{"command": "ls', {"__unparsed_arguments": '{"command": "ls'}, id="truncated-json"
    ),
    pytest.param("not json", {"__unparsed_arguments": "not json"}, id="not-json"),
    pytest.param("[1, 2]", {"__unparsed_arguments": "[1, 2]"}, id="json-array"),
    pytest.param('"ls"', {"__unparsed_arguments": '"ls"'}, id="json-string-scalar"),
    pytest.param("null", {"__unparsed_arguments": "null"}, id="json-null-text"),
    pytest.param([1, 2], {"__unparsed_arguments": "[1,2]"}, id="list-object"),
    pytest.param('{"path": "ü €"}', {"path": "ü €"}, id="unicode"),
]


@pytest.mark.parametrize(("arguments", "expected"), ARGUMENT_CASES)
def test_parse_arguments(arguments: Any, expected: dict[str, Any]) -> None:
    assert parseArguments(arguments) == expected


@pytest.mark.parametrize(("arguments", "expected"), ARGUMENT_CASES)
def test_arguments_become_tool_use_input(arguments: Any, expected: dict[str, Any]) -> None:
    out = translate(completion({"content": None, "tool_calls": [fn("Bash", arguments, "c1")]}))
    (block,) = out["content"]
    assert block["input"] == expected
    assert isinstance(block["input"], dict)


def test_arguments_key_missing_is_empty_input() -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "Ping"}}
    out = translate(completion({"content": None, "tool_calls": [call]}))
    assert out["content"] == [useBlock("c1", "Ping", {})]


ID_CASES = [
    pytest.param([...], id="id-missing"),
    pytest.param([""], id="id-empty"),
    pytest.param([None], id="id-null"),
    pytest.param([..., ...], id="two-missing"),
    pytest.param(["", None, ...], id="three-missing"),
    pytest.param(["call_x", ...], id="one-present-one-missing"),
]


@pytest.mark.parametrize("ids", ID_CASES)
def test_missing_ids_are_made_up(ids: list[Any]) -> None:
    calls = [fn("Bash", "{}", callId) for callId in ids]
    out = translate(completion({"content": None, "tool_calls": calls}))
    got = [b["id"] for b in out["content"]]
    assert len(got) == len(ids)
    assert len(set(got)) == len(got), "tool_use ids must be distinct"
    for given, made in zip(ids, got, strict=True):
        if isinstance(given, str) and given:
            assert made == given
        else:
            assert made.startswith("toolu_")
            assert ANTHROPIC_ID.fullmatch(made)


def test_made_up_ids_are_stable_per_message() -> None:
    data = completion({"content": None, "tool_calls": [fn("Bash", "{}", ...)]})
    assert translate(data)["content"][0]["id"] == translate(data)["content"][0]["id"]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        pytest.param("Bash", "Bash", id="string"),
        pytest.param(None, "", id="null"),
        pytest.param(5, "", id="number"),
    ],
)
def test_tool_name(name: Any, expected: str) -> None:
    out = translate(completion({"content": None, "tool_calls": [fn(name, "{}", "c1")]}))
    assert out["content"][0]["name"] == expected


# -- usage ----------------------------------------------------------------------------------

USAGE_CASES = [
    pytest.param(
        {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120},
        {"input_tokens": 100, "output_tokens": 20, "cache_read_input_tokens": 0},
        id="plain",
    ),
    pytest.param(
        {
            "prompt_tokens": 1000,
            "completion_tokens": 5,
            "prompt_tokens_details": {"cached_tokens": 800},
        },
        {"input_tokens": 200, "output_tokens": 5, "cache_read_input_tokens": 800},
        id="openai-cached-tokens",
    ),
    pytest.param(
        {
            "prompt_tokens": 1000,
            "completion_tokens": 5,
            "prompt_cache_hit_tokens": 640,
            "prompt_cache_miss_tokens": 360,
        },
        {"input_tokens": 360, "output_tokens": 5, "cache_read_input_tokens": 640},
        id="deepseek-cache-hit",
    ),
    pytest.param(
        {
            "prompt_tokens": 1000,
            "completion_tokens": 5,
            "prompt_tokens_details": {"cached_tokens": 0},
            "prompt_cache_hit_tokens": 300,
        },
        {"input_tokens": 700, "output_tokens": 5, "cache_read_input_tokens": 300},
        id="zero-details-falls-back-to-deepseek",
    ),
    pytest.param(
        {"prompt_tokens": 50, "completion_tokens": 1, "prompt_tokens_details": None},
        {"input_tokens": 50, "output_tokens": 1, "cache_read_input_tokens": 0},
        id="details-null",
    ),
    pytest.param(
        {
            "prompt_tokens": 10,
            "completion_tokens": 1,
            "prompt_tokens_details": {"cached_tokens": 99},
        },
        {"input_tokens": 0, "output_tokens": 1, "cache_read_input_tokens": 10},
        id="cached-above-prompt-clamped",
    ),
    pytest.param(
        {"prompt_tokens": "100", "completion_tokens": -3},
        {"input_tokens": 0, "output_tokens": 0, "cache_read_input_tokens": 0},
        id="junk-values",
    ),
    pytest.param(
        {"prompt_tokens": 12.0, "completion_tokens": True},
        {"input_tokens": 12, "output_tokens": 0, "cache_read_input_tokens": 0},
        id="float-and-bool",
    ),
    pytest.param(
        {"prompt_tokens": 2**64 - 1, "completion_tokens": 2**53},
        {"input_tokens": 2**53, "output_tokens": 2**53, "cache_read_input_tokens": 0},
        id="huge-clamped",
    ),
    pytest.param(
        {"prompt_tokens": 0, "completion_tokens": 2**53 + 1},
        {"input_tokens": 0, "output_tokens": 2**53, "cache_read_input_tokens": 0},
        id="just-past-the-bound",
    ),
    pytest.param(
        None, {"input_tokens": 0, "output_tokens": 0, "cache_read_input_tokens": 0}, id="none"
    ),
    pytest.param(
        [], {"input_tokens": 0, "output_tokens": 0, "cache_read_input_tokens": 0}, id="list"
    ),
]


@pytest.mark.parametrize(("usage", "expected"), USAGE_CASES)
def test_anthropic_usage(usage: Any, expected: dict[str, int]) -> None:
    assert anthropicUsage(usage) == {**expected, "cache_creation_input_tokens": 0}


CACHE_WRITES = {
    "openrouter": (
        194,
        {"prompt_tokens_details": {"cached_tokens": 50, "cache_write_tokens": 100}},
    ),
    "litellm": (
        1000,
        {"cache_creation_input_tokens": 300, "prompt_tokens_details": {"cached_tokens": 600}},
    ),
    "clamped": (100, {"prompt_tokens_details": {"cached_tokens": 60, "cache_write_tokens": 90}}),
}
"""prompt_tokens, and how the upstream says what of them hit or filled the cache."""


@pytest.mark.parametrize(
    ("name", "expected"),
    [("openrouter", (44, 100, 50)), ("litellm", (100, 300, 600)), ("clamped", (0, 40, 60))],
)
def test_cache_writes_are_counted_apart(name: str, expected: tuple[int, int, int]) -> None:
    """Cache writes cost more than plain input (1.25x at Anthropic): they are part of
    prompt_tokens, and Claude Code and the ledger get them apart."""
    prompt, said = CACHE_WRITES[name]
    got = anthropicUsage({"prompt_tokens": prompt, "completion_tokens": 2, **said})
    assert (
        got["input_tokens"],
        got["cache_creation_input_tokens"],
        got["cache_read_input_tokens"],
    ) == expected


def test_usage_in_answer() -> None:
    usage = {
        "prompt_tokens": 900,
        "completion_tokens": 7,
        "prompt_tokens_details": {"cached_tokens": 512},
    }
    out = translate(completion({"content": "hi"}, usage=usage))
    assert out["usage"] == {
        "input_tokens": 388,
        "output_tokens": 7,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 512,
    }


def test_usage_inside_choice_kimi() -> None:
    data = completion({"content": "hi"}, usage={"prompt_tokens": 1})
    data["usage"] = None
    data["choices"][0]["usage"] = {"prompt_tokens": 30, "completion_tokens": 4}
    usage = translate(data)["usage"]
    assert (usage["input_tokens"], usage["output_tokens"]) == (30, 4)


# -- answers without a usable choice --------------------------------------------------------

BAD_ANSWERS = [
    pytest.param({"choices": []}, id="empty-choices"),
    pytest.param({"id": "x", "object": "chat.completion"}, id="no-choices-key"),
    pytest.param({"choices": None}, id="choices-null"),
    pytest.param({"choices": ["text"]}, id="choice-not-object"),
    pytest.param({"choices": {"0": {}}}, id="choices-object"),
    pytest.param([{"choices": []}], id="answer-is-list"),
    pytest.param("ok", id="answer-is-string"),
    pytest.param(None, id="answer-is-null"),
    pytest.param({"error": {"message": "boom"}}, id="error-object-with-200"),
]


@pytest.mark.parametrize("data", BAD_ANSWERS)
def test_answer_without_choices_is_502(data: Any) -> None:
    with pytest.raises(ProxyError) as caught:
        translate(data)
    assert caught.value.status == 502
    assert caught.value.errorType == "api_error"
    assert caught.value.message


def test_message_not_an_object_is_empty_answer() -> None:
    data = {"choices": [{"message": "hi", "finish_reason": "stop"}]}
    out = translate(data)
    assert out["content"] == []
    assert out["stop_reason"] == "end_turn"


# -- helpers --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        pytest.param("x", "x", id="string"),
        pytest.param(None, "", id="null"),
        pytest.param(
            [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}], "ab", id="parts"
        ),
        pytest.param([{"type": "text", "text": None}], "", id="part-text-null"),
        pytest.param(7, "", id="number"),
    ],
)
def test_content_text(content: Any, expected: str) -> None:
    assert contentText(content) == expected


@pytest.mark.parametrize(
    ("calls", "count"),
    [
        pytest.param(None, 0, id="null"),
        pytest.param([], 0, id="empty"),
        pytest.param({"function": {"name": "a"}}, 1, id="object"),
        pytest.param([{"function": {"name": "a"}}, {"function": None}, 3], 1, id="filtered"),
        pytest.param("calls", 0, id="string"),
    ],
)
def test_tool_call_list(calls: Any, count: int) -> None:
    assert len(toolCallList(calls)) == count
