"""Token estimate for count_tokens (ccproxy.translate.tokens).

The estimate is taken over the translated OpenAI body, so most tests translate an
Anthropic body first, exactly as `/v1/messages/count_tokens` does.
"""

from __future__ import annotations

import sys
from typing import Any

import orjson
import pytest

from ccproxy.errors import ProxyError
from ccproxy.translate.dialect import Profile
from ccproxy.translate.request import toOpenAI
from ccproxy.translate.tokens import estimateTokens, textTokens
from tests.support.fixtures import requestBodies, requestBody

SCHEMA = {
    "type": "object",
    "properties": {"command": {"type": "string", "description": "The command to run"}},
    "required": ["command"],
}
BASH = {"name": "Bash", "description": "Run a shell command", "input_schema": SCHEMA}
READ = {
    "name": "Read",
    "description": "Read a file",
    "input_schema": {"type": "object", "properties": {"file_path": {"type": "string"}}},
}
PNG = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}}


def estimate(body: dict[str, Any]) -> int:
    full = {"model": "claude-sonnet-5-5", **body}
    return estimateTokens(toOpenAI(full, model="m", profile=Profile(), defaultMaxTokens=1000))


def userSays(text: Any) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


TOOL_TURN = [
    {"role": "user", "content": "list files"},
    {
        "role": "assistant",
        "content": [{"type": "tool_use", "id": "t1", "name": "Bash", "input": {"command": "ls"}}],
    },
    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "a b"}]},
]

GROWTH_CASES = [
    pytest.param(
        {"messages": userSays("hello")},
        {"messages": userSays("hello there, how are you doing today?")},
        id="longer-text",
    ),
    pytest.param(
        {"messages": userSays("word " * 10)},
        {"messages": userSays("word " * 1000)},
        id="much-longer-text",
    ),
    pytest.param(
        {"messages": userSays("hi")},
        {"messages": [*userSays("hi"), {"role": "assistant", "content": "yo"}, *userSays("ok")]},
        id="more-messages",
    ),
    pytest.param(
        {"messages": userSays("hi")},
        {"messages": userSays("hi"), "system": "You are a careful coding assistant."},
        id="system-prompt",
    ),
    pytest.param(
        {"messages": userSays("hi")},
        {"messages": userSays("hi"), "tools": [BASH]},
        id="one-tool",
    ),
    pytest.param(
        {"messages": userSays("hi"), "tools": [BASH]},
        {"messages": userSays("hi"), "tools": [BASH, READ]},
        id="second-tool",
    ),
    pytest.param(
        {"messages": userSays("hi"), "tools": [{"name": "Bash"}]},
        {"messages": userSays("hi"), "tools": [BASH]},
        id="tool-schema-and-description",
    ),
    pytest.param(
        {"messages": userSays("list files")},
        {"messages": TOOL_TURN},
        id="tool-call-and-result",
    ),
    pytest.param(
        {"messages": userSays([{"type": "text", "text": "what is this"}])},
        {"messages": userSays([{"type": "text", "text": "what is this"}, PNG])},
        id="image",
    ),
    pytest.param(
        {"messages": userSays("12")},
        {"messages": userSays("1234567890123")},
        id="longer-number",
    ),
]


@pytest.mark.parametrize(("smaller", "larger"), GROWTH_CASES)
def test_estimate_grows_with_content(smaller: dict[str, Any], larger: dict[str, Any]) -> None:
    assert estimate(larger) > estimate(smaller) >= 1


def test_image_counts_a_fixed_amount() -> None:
    without = estimate({"messages": userSays([{"type": "text", "text": "what is this"}])})
    withImage = estimate({"messages": userSays([{"type": "text", "text": "what is this"}, PNG])})
    withTwo = estimate({"messages": userSays([{"type": "text", "text": "what is this"}, PNG, PNG])})
    assert withImage - without == 1000
    assert withTwo - withImage == 1000


def test_tool_counts_overhead_plus_its_json() -> None:
    request = {"messages": [{"role": "user", "content": "hi"}]}
    base = estimateTokens(request)
    function = {"name": "Bash", "parameters": {"type": "object"}}
    withTool = estimateTokens({**request, "tools": [{"type": "function", "function": function}]})
    assert withTool - base == 100 + 8 + textTokens(orjson.dumps(function).decode())
    twoTools = estimateTokens(
        {**request, "tools": [{"type": "function", "function": function}] * 2}
    )
    assert twoTools - withTool == 8 + textTokens(orjson.dumps(function).decode())


def test_tool_call_counts_overhead_name_and_arguments() -> None:
    plain = {"messages": [{"role": "assistant", "content": ""}]}
    call = {"id": "c", "type": "function", "function": {"name": "Bash", "arguments": '{"a":1}'}}
    withCall = {"messages": [{"role": "assistant", "content": "", "tool_calls": [call]}]}
    assert estimateTokens(withCall) - estimateTokens(plain) == (
        8 + textTokens("Bash") + textTokens('{"a":1}')
    )


def test_each_message_adds_overhead() -> None:
    one = {"messages": [{"role": "user", "content": "hello"}]}
    two = {"messages": [{"role": "user", "content": "hello"}, {"role": "user", "content": "hello"}]}
    assert estimateTokens(one) == 3 + 4 + textTokens("hello")
    assert estimateTokens(two) == estimateTokens(one) + 4 + textTokens("hello")


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"messages": userSays("hi")}, id="hi"),
        pytest.param({"messages": userSays("."), "tools": []}, id="dot-empty-tools"),
    ],
)
def test_empty_ish_request_counts_at_least_one(body: dict[str, Any]) -> None:
    assert estimate(body) >= 1


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"messages": userSays("   ")}, id="whitespace-only-message"),
        pytest.param({"messages": userSays([{"type": "text", "text": ""}])}, id="empty-block"),
    ],
)
def test_nothing_to_count_is_the_clients_400(body: dict[str, Any]) -> None:
    # As Anthropic does: text blocks must hold non-whitespace text.
    with pytest.raises(ProxyError) as raised:
        estimate(body)
    assert raised.value.status == 400
    assert "nothing to send" in raised.value.message


@pytest.mark.parametrize(
    "request_",
    [
        pytest.param({}, id="no-keys"),
        pytest.param({"messages": []}, id="no-messages"),
        pytest.param({"messages": [], "tools": []}, id="nothing-at-all"),
        pytest.param({"messages": [{"role": "user", "content": None}]}, id="null-content"),
    ],
)
def test_raw_estimate_is_at_least_one(request_: dict[str, Any]) -> None:
    assert estimateTokens(request_) >= 1


@pytest.mark.parametrize(
    ("key", "value"),
    [
        pytest.param("thinking", {"type": "enabled", "budget_tokens": 31999}, id="thinking"),
        pytest.param("metadata", {"user_id": "x" * 500}, id="metadata"),
        pytest.param("output_config", {"effort": "high"}, id="output_config"),
        pytest.param("context_management", {"edits": [{"type": "x" * 100}]}, id="context"),
    ],
)
def test_fields_not_sent_upstream_do_not_count(key: str, value: Any) -> None:
    body = {"messages": userSays("hello"), "tools": [BASH]}
    assert estimate({**body, key: value}) == estimate(body)


TEXT_CASES = [
    pytest.param("", 0, id="empty"),
    pytest.param("hello", 1, id="short-word"),
    pytest.param("abcdef", 1, id="six-letters"),
    pytest.param("abcdefg", 1, id="seven-letters"),
    pytest.param("internationalization", 3, id="long-word"),
    pytest.param("123", 3, id="three-digits"),
    pytest.param("1234567", 7, id="digit-groups-of-three"),
    pytest.param("Привет", 2, id="cyrillic-word"),
    pytest.param("日本語", 3, id="ideographs-one-each"),
    pytest.param("a,b", 3, id="punctuation"),
    pytest.param('{"a":1}', 5, id="json"),
    pytest.param("日本語", 3, id="non-latin-one-each"),
    pytest.param("a\n\nb", 3, id="whitespace-run"),
]


@pytest.mark.parametrize(("text", "expected"), TEXT_CASES)
def test_text_tokens(text: str, expected: int) -> None:
    assert textTokens(text) == expected


# -- realistic sizes -------------------------------------------------------------------------


FIXTURE_BODIES = requestBodies()
# The Python SDK's one-word prompts are mostly JSON envelope; the band below is for
# real Claude Code requests (system prompt, tools, history: several KB each).
LARGE_FIXTURES = [p for p in FIXTURE_BODIES if len(orjson.dumps(p.values[0])) >= 2000]


def test_fixtures_found() -> None:
    assert len(FIXTURE_BODIES) >= 30
    assert len(LARGE_FIXTURES) >= 30


@pytest.mark.parametrize("body", LARGE_FIXTURES)
def test_fixture_estimate_is_plausible(body: dict[str, Any]) -> None:
    """BPE tokenizers average about 4 characters per token on English prose and 2-3 on
    JSON and code (every brace and quote tends to be its own token). So a fair estimate of
    what is sent lies between 1 token per 6 characters and 1 per 1.5 characters; an
    estimate outside that band is off by a factor that would mislead /context. Images
    (1000 each) are taken out first: their size in the body says nothing about tokens."""
    sent = toOpenAI(body, model="m", profile=Profile(), defaultMaxTokens=32000)
    tokens = estimateTokens(sent)
    images = 0
    for message in sent["messages"]:
        if isinstance(message["content"], list):
            kept = []
            for part in message["content"]:
                if part["type"] == "text":
                    kept.append(part)
                else:
                    images += 1
            message["content"] = kept
    chars = len(orjson.dumps({k: sent[k] for k in ("messages", "tools") if k in sent}))
    textTokens_ = tokens - 1000 * images
    assert chars / 6 <= textTokens_ <= chars / 1.5 + 20


def test_tool_heavy_fixture_magnitude() -> None:
    """027 is /context's count_tokens for the 12 Claude Code tools and a one-word prompt:
    about 8 KB of JSON schemas and (sanitized) descriptions, so a few thousand tokens.
    1500-6000 is 1.4-5.6 characters per token over that JSON."""
    body = requestBody("027")
    assert len(body["tools"]) == 12
    tokens = estimate(body)
    assert 1500 <= tokens <= 6000
    withoutTools = estimate({**body, "tools": []})
    assert withoutTools < 20
    assert tokens - withoutTools >= 12 * 8


def test_past_a_mib_of_text_the_rest_is_counted_at_the_rate_of_the_first() -> None:
    """A 30 MiB body cost 3.7 s of counting: only the first EXACT_CHARS characters
    are counted piece by piece, the rest at their rate, whatever the request's size."""
    from ccproxy.translate import tokens

    prose = 'The parser reads a line, 12 fields; café ✓ then {"key": [1, 2]}\n' * 50
    code = "def f(x):\n    return x * 2  # twice\n" * 80
    request = {"messages": [{"role": "user", "content": (prose, code)[i % 2]} for i in range(3000)]}
    counted: list[int] = []
    real = tokens.textTokens

    def spy(text: str) -> int:
        counted.append(len(text))
        return real(text)

    exact = sum(real(m["content"]) for m in request["messages"]) + 3 + 4 * 3000
    tokens.textTokens = spy  # type: ignore[assignment]
    remembered, tokens.MEMO_CHARS = tokens.MEMO_CHARS, sys.maxsize  # each text counted
    try:
        estimate = tokens.estimateTokens(request)
    finally:
        tokens.textTokens = real  # type: ignore[assignment]
        tokens.MEMO_CHARS = remembered
    assert sum(counted) == tokens.EXACT_CHARS  # the work is bounded, not the text
    assert abs(estimate - exact) / exact < 0.02  # and the count barely moves


def test_a_request_within_the_budget_is_counted_exactly() -> None:
    from ccproxy.translate import tokens

    request = {"messages": [{"role": "user", "content": "hello world " * 1000}] * 10}
    expected = 3 + 10 * (4 + tokens.textTokens("hello world " * 1000))
    assert tokens.estimateTokens(request) == expected


def test_a_text_sent_again_is_not_counted_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """A conversation sends its earlier turns on every request: their texts are
    counted once per process, and the estimate is the same."""
    from ccproxy.translate import tokens

    counted: list[str] = []
    real = tokens.textTokens

    def spy(text: str) -> int:
        counted.append(text)
        return real(text)

    monkeypatch.setattr(tokens, "_memo", {})
    monkeypatch.setattr(tokens, "textTokens", spy)
    turn = "The parser reads a line of 12 fields and says which one is wrong. " * 40
    earlier = {"messages": [{"role": "user", "content": turn}]}
    later = {"messages": [*earlier["messages"], {"role": "user", "content": turn + " And?"}]}
    first = tokens.estimateTokens(earlier)
    assert tokens.estimateTokens(later) == first + 4 + real(turn + " And?")
    assert counted == [turn, turn + " And?"]  # the first turn's text once
    assert tokens.estimateTokens(later) == first + 4 + real(turn + " And?")
    assert len(counted) == 2
    short = {"messages": [{"role": "user", "content": "hi"}]}
    tokens.estimateTokens(short)
    tokens.estimateTokens(short)
    assert counted[2:] == ["hi", "hi"]  # a short text costs less to count than to look up
    monkeypatch.setattr(tokens, "MEMO_ENTRIES", 2)
    tokens.estimateTokens({"messages": [{"role": "user", "content": "x" * 40 + "!"}]})
    assert len(tokens._memo) == 1  # full, it started over: bounded
