"""The rules of Claude Code's gateway protocol about answers it acts on, over the app
in memory: a 401 it does not retry, a 501 `not_supported` it falls back from, the
auto-mode `safeguards` refusal it recovers from, and nothing refused for being
unknown. (Its own text: /work/shared/claude-code-gateway-protocol.md, "Errors" and
"Messages"; the real client's side of the first and third: tests/test_claude_code.py.)
"""

from __future__ import annotations

import re
from typing import Any

import orjson
import pytest

from ccproxy.config import Config
from ccproxy.config.schema import ConfigError
from tests.support.fakes import completion, jsonReply, sseReply
from tests.support.harness import BASE_CONFIG, Harness, message, parseSSE

KEYS_CONFIG = (
    BASE_CONFIG
    + """
clients:
  - {name: alice, key: alice-key, admin: true}
"""
)


def envelope(reply: Any, status: int, errorType: str) -> str:
    """The error message of an Anthropic envelope with this status and type."""
    assert reply.status == status, reply.body
    body = reply.json()
    assert body["type"] == "error" and body["error"]["type"] == errorType, body
    message: str = body["error"]["message"]
    return message


# -- 401: Claude Code says so at once ------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/messages"),
        ("POST", "/v1/messages?beta=true"),
        ("POST", "/v1/messages/count_tokens?beta=true"),
        ("GET", "/v1/models"),
        ("GET", "/v1/models/claude-sonnet-4-5"),
        ("GET", "/v1/usage"),
        ("GET", "/metrics"),
    ],
)
@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="no-key"),
        pytest.param({"x-api-key": "wrong-key"}, id="api-key"),
        pytest.param({"authorization": "Bearer wrong-key"}, id="auth-token"),
    ],
)
def test_a_missing_or_wrong_key_is_401_not_to_be_retried(
    method: str, path: str, headers: dict[str, str]
) -> None:
    """Without `x-should-retry: false` Claude Code retries a 401 with backoff for
    minutes before it tells the user their key is wrong."""
    h = Harness.build(KEYS_CONFIG)
    body = message() if method == "POST" else None
    reply = h.call(method, path, body, headers=headers)
    envelope(reply, 401, "authentication_error")
    assert reply.headers["x-should-retry"] == "false"
    assert h.upstream.received == []


def test_an_upstream_that_refuses_its_key_is_401_not_to_be_retried_either() -> None:
    """The key the upstream refused (its own, or the caller's forwarded) will not
    become valid by asking again."""
    h = Harness.build()
    h.upstream.queue(jsonReply({"error": {"message": "Invalid API Key"}}, 401))
    reply = h.post(message())
    envelope(reply, 401, "authentication_error")
    assert reply.headers["x-should-retry"] == "false"


@pytest.mark.parametrize(
    ("status", "retry"),
    [(400, None), (403, None), (404, None), (429, "true"), (500, "true"), (529, "true")],
)
def test_other_errors_keep_their_retry_header(status: int, retry: str | None) -> None:
    h = Harness.build()
    h.upstream.queue(jsonReply({"error": {"message": "no"}}, status))
    reply = h.post(message())
    assert reply.status == status
    assert reply.headers.get("x-should-retry") == retry


# -- 501 not_supported: an endpoint with no backing ---------------------------------

NO_COUNT_CONFIG = """
upstreams:
  up:
    url: http://upstream.test/v1
    retries: 0
    count_tokens: false
  other:
    url: http://other.test/v1
models:
  claude-haiku-*: other/small-model
  claude-*: up/big-model
"""


def test_count_tokens_switched_off_is_501_not_supported_not_to_be_retried() -> None:
    """Claude Code asks once more without `x-should-retry: false`, then counts on
    its own; with it, at once."""
    h = Harness.build(NO_COUNT_CONFIG)
    reply = h.post(message(), path="/v1/messages/count_tokens?beta=true")
    text = envelope(reply, 501, "not_supported")
    assert "count_tokens" in text and "up" in text
    assert reply.headers["x-should-retry"] == "false"
    assert h.upstream.received == []


def test_count_tokens_is_off_only_where_the_routes_first_upstream_says_so() -> None:
    h = Harness.build(NO_COUNT_CONFIG)
    reply = h.post(message(model="claude-haiku-4-5"), path="/v1/messages/count_tokens")
    assert reply.status == 200 and reply.json()["input_tokens"] > 0
    assert Config.fromYAML(BASE_CONFIG, {}).upstreams["up"].countTokens is True


def test_count_tokens_must_be_a_boolean() -> None:
    with pytest.raises(ConfigError, match=r"upstreams\.up\.count_tokens: must be true or false"):
        Config.fromYAML(NO_COUNT_CONFIG.replace("count_tokens: false", "count_tokens: off2"), {})


def test_a_model_the_client_may_not_use_is_400_invalid_request_naming_it() -> None:
    """The protocol's "denied model": 400 `invalid_request_error`, which Claude Code
    shows as it is (no retry header: it does not retry a 400 for the model)."""
    h = Harness.build(
        BASE_CONFIG + "clients:\n  - {name: a, key: a-key, models: [claude-haiku-*]}\n"
    )
    reply = h.post(message(), headers={"x-api-key": "a-key"})
    assert "claude-sonnet-4-5" in envelope(reply, 400, "invalid_request_error")
    assert "x-should-retry" not in reply.headers


# -- auto mode's safeguards ----------------------------------------------------------

SAFEGUARDS = [{"type": "dangerous_tool_use", "classifier_context": {"transcript": []}}]
# What Claude Code 2.1.330 tests a 400's message with to learn that its safeguards
# were refused (and, the second, a refusal about a content block it must not take
# for that), as found in its binary.
CLIENT_SEES_SAFEGUARDS = re.compile(r"\bsafeguards\b")
CONTENT_BLOCK_REFUSAL = re.compile(r"^messages\.\d+\.content\.\d+(?:\.\w+)*\.safeguards\b")


@pytest.mark.parametrize("stream", [False, True])
def test_safeguards_are_refused_with_a_400_naming_them(stream: bool) -> None:
    """Dropped, the safety check auto mode asked for would silently not run."""
    h = Harness.build()
    reply = h.post(
        message(safeguards=SAFEGUARDS, stream=stream),
        path="/v1/messages?beta=true",
        headers={"anthropic-beta": "claude-code-20250219,dangerous-tool-use-2026-09-03"},
    )
    text = envelope(reply, 400, "invalid_request_error")
    assert CLIENT_SEES_SAFEGUARDS.search(text)
    assert not CONTENT_BLOCK_REFUSAL.match(text)
    assert "x-should-retry" not in reply.headers
    assert h.upstream.received == []


def test_the_request_sent_again_without_safeguards_is_served() -> None:
    h = Harness.build()
    h.upstream.queue(jsonReply(completion("checked locally")))
    headers = {"anthropic-beta": "claude-code-20250219"}
    assert h.post(message(safeguards=SAFEGUARDS), headers=headers).status == 400
    reply = h.post(message(), headers=headers)
    assert reply.status == 200 and reply.json()["content"][0]["text"] == "checked locally"


def test_count_tokens_is_not_refused_for_safeguards() -> None:
    """Counting runs no model, so there is nothing to check."""
    h = Harness.build()
    reply = h.post(message(safeguards=SAFEGUARDS), path="/v1/messages/count_tokens")
    assert reply.status == 200


# -- never reject what you don't recognize -------------------------------------------

FUTURE = "zz_future"
"""Every unknown name in the body below starts with this."""


def futureRequest(stream: bool) -> dict[str, Any]:
    """A Claude-Code-shaped request with fields that do not exist yet at every level."""
    extra = {f"{FUTURE}_field": {"nested": [1, {"deep": True}]}}
    tool = {
        "name": "Read",
        "description": "Read a file",
        "input_schema": {"type": "object", "properties": {"path": {"type": "string"}}},
        f"{FUTURE}_tool_option": "x",
        "defer_loading": False,
    }
    return {
        "model": "claude-sonnet-4-5",
        "max_tokens": 1000,
        "stream": stream,
        "system": [{"type": "text", "text": "You are terse.", f"{FUTURE}_sys": 1}],
        "messages": [
            {
                "role": "user",
                "content": [{"type": "text", "text": "read a.txt", f"{FUTURE}_block": "y"}],
                f"{FUTURE}_message": {"a": 1},
            },
            {
                "role": "assistant",
                "content": [
                    {"type": "text", "text": "reading", "citations": None, **extra},
                    {
                        "type": "tool_use",
                        "id": "toolu_1",
                        "name": "Read",
                        "input": {"path": "a.txt"},
                        f"{FUTURE}_caller": {"type": "direct"},
                    },
                ],
            },
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_1",
                        "content": [{"type": "text", "text": "hello", f"{FUTURE}_part": 2}],
                        f"{FUTURE}_result": True,
                    },
                    {"type": "text", "text": "and now?"},
                ],
            },
        ],
        "tools": [tool],
        "tool_choice": {"type": "auto", f"{FUTURE}_choice": 3},
        "metadata": {"user_id": "u-1", f"{FUTURE}_meta": "m"},
        "thinking": {"type": "adaptive", "display": "omitted", f"{FUTURE}_thinking": 1},
        "output_config": {"effort": "high", f"{FUTURE}_output": 1},
        "context_management": {"edits": [{"type": f"{FUTURE}_edit"}]},
        f"{FUTURE}_top": {"anything": ["goes"]},
        f"{FUTURE}_flag": True,
        f"{FUTURE}_number": 7,
    }


FUTURE_BETAS = {
    "anthropic-beta": f"claude-code-20250219,{FUTURE}-beta-2027-01-01,another-{FUTURE}-beta",
    "anthropic-version": "2027-01-01",
    f"x-{FUTURE}-header": "1",
}


@pytest.mark.parametrize("stream", [False, True])
def test_unknown_fields_and_betas_never_fail_a_request_and_never_go_upstream(
    stream: bool,
) -> None:
    h = Harness.build()
    chunks = [
        {"choices": [{"index": 0, "delta": {"content": "hello"}, "finish_reason": None}]},
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
    ]
    h.upstream.queue(sseReply(chunks) if stream else jsonReply(completion("hello")))
    reply = h.post(futureRequest(stream), path="/v1/messages?beta=true", headers=FUTURE_BETAS)
    assert reply.status == 200, reply.body
    if stream:
        assert [name for name, _ in parseSSE(reply.body)][-1] == "message_stop"
    else:
        assert reply.json()["content"] == [{"type": "text", "text": "hello"}]
    [sent] = h.upstream.received
    assert FUTURE.encode() not in orjson.dumps(sent.body), sent.body
    assert not [v for k, v in sent.headers.items() if FUTURE in k or FUTURE in v]
    # What was known still went: the tool, its call and its result, the text.
    roles = [m["role"] for m in sent.body["messages"]]
    assert roles == ["system", "user", "assistant", "tool", "user"], roles
    assert sent.body["tools"][0]["function"]["name"] == "Read"


def test_unknown_fields_never_fail_count_tokens() -> None:
    h = Harness.build()
    reply = h.post(futureRequest(False), path="/v1/messages/count_tokens", headers=FUTURE_BETAS)
    assert reply.status == 200 and reply.json()["input_tokens"] > 0
