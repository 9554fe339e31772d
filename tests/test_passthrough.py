"""`api: messages`: an upstream that speaks the Messages API gets Claude Code's
request with only its model changed, and its answer goes back as it came; in
memory (StubTreq, Clock)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone

from ccproxy.config import Config
from ccproxy.config.schema import ConfigError
from ccproxy.doctor.checks import modelsURL, upstreamChatRequest
from ccproxy.errors import ProxyError
from ccproxy.relay.sse import SSEFrames
from ccproxy.translate.passthrough import MessageStream, usageOf, wholeMessage
from ccproxy.translate.response import anthropicUsage
from ccproxy.upstream.client import anthropicHeaders, upstreamHeaders
from ccproxy.upstream.plan import Plan, messagesBody
from tests.support.fakes import jsonReply, lateReply, rawReply, sseReply
from tests.support.harness import Harness, message, parseSSE
from tests.test_app_stream import TEXT_CHUNKS
from tests.test_app_toolsearch import ask as askWithTools
from tests.test_app_toolsearch import content, searchReply, weatherReply
from tests.test_disconnect import connect, hangUp
from tests.test_head_wait import Stream

CONFIG = """
upstreams:
  native:
    url: http://native.test/v1
    api: messages
    api_key: sk-native-secret-key
    timeout: 30
    retries: 0
  chat:
    url: http://chat.test/v1
    api_key: sk-chat-secret-key
    timeout: 30
    retries: 0
models:
  claude-haiku-*: native/small-native
  mixed: [chat/gpt-x, native/native-x]
  claude-*: native
"""

BETAS = "claude-code-20250219,interleaved-thinking-2025-05-14,context-1m-2025-08-07"


def anthropicMessage(text: str = "Hello", **usage: int) -> dict[str, Any]:
    return {
        "id": "msg_up_1",
        "type": "message",
        "role": "assistant",
        "model": "small-native",
        "content": [{"type": "text", "text": text}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": usage or {"input_tokens": 12, "output_tokens": 3},
    }


def frame(event: dict[str, Any]) -> bytes:
    return b"event: " + event["type"].encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"


START = {
    "type": "message_start",
    "message": {
        **anthropicMessage(),
        "content": [],
        "stop_reason": None,
        "usage": {"input_tokens": 40, "output_tokens": 1, "cache_read_input_tokens": 30},
    },
}
TEXT_EVENTS = [
    START,
    {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    {"type": "ping"},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi ✓"}},
    {"type": "content_block_stop", "index": 0},
    {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn", "stop_sequence": None},
        "usage": {"output_tokens": 9},
    },
    {"type": "message_stop"},
]
TEXT_STREAM = [frame(e) for e in TEXT_EVENTS]


@pytest.fixture
def access() -> Iterator[list[dict[str, Any]]]:
    """The access events logged while the test runs."""
    events: list[dict[str, Any]] = []

    def observe(event: dict[str, Any]) -> None:
        if "input_tokens" in event and "request_id" in event:
            events.append(event)

    globalLogPublisher.addObserver(observe)
    yield events
    globalLogPublisher.removeObserver(observe)


def anthropicStream(frames: list[bytes], **kw: Any) -> Any:
    return sseReply(frames, done=False, **kw)


# -- config -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "api", "expected"),
    [
        ("http://h/v1", "messages", "http://h/v1/messages"),
        ("http://h/v1/", "messages", "http://h/v1/messages"),
        ("http://h/v1/messages", "messages", "http://h/v1/messages"),
        ("http://h/anthropic/v1?x=1", "messages", "http://h/anthropic/v1/messages?x=1"),
        ("http://h/v1", "chat", "http://h/v1/chat/completions"),
    ],
)
def test_the_url_is_the_api_endpoint_under_the_base(url: str, api: str, expected: str) -> None:
    config = Config.fromYAML(
        f"upstreams: {{u: {{url: '{url}', api: {api}}}}}\nmodels: {{'*': u}}\n", {}
    )
    upstream = config.upstreams["u"]
    assert (upstream.url, upstream.api) == (expected, api)
    if api == "messages":
        base, _, query = expected.partition("?")
        assert upstream.countTokensURL == base + "/count_tokens" + ("?" + query if query else "")


def test_chat_is_the_default_api() -> None:
    config = Config.fromYAML("upstreams: {u: {url: 'http://h/v1'}}\nmodels: {'*': u}\n", {})
    assert config.upstreams["u"].api == "chat"


@pytest.mark.parametrize(
    ("extra", "where"),
    [
        ("api: grpc", "upstreams.u.api: must be one of chat, messages"),
        ("betas: some", "upstreams.u.betas: must be all, none, or a list"),
        ("betas: [1]", "upstreams.u.betas: must be all, none, or a list"),
        ("auth_header: cookie", "upstreams.u.auth_header: must be one of"),
    ],
)
def test_bad_api_keys_are_refused_with_their_path(extra: str, where: str) -> None:
    with pytest.raises(ConfigError) as e:
        Config.fromYAML(f"upstreams: {{u: {{url: 'http://h/v1', {extra}}}}}\nmodels: {{'*': u}}\n")
    assert str(e.value).startswith(where)


# -- the body ---------------------------------------------------------------------------


def test_the_body_keeps_its_bytes_with_only_the_model_changed() -> None:
    raw = b'{"model":"claude-x","max_tokens":5,"messages":[{"role":"user","content":"\\u00e9 "}]}'
    body = orjson.loads(raw)
    sent = messagesBody(raw, body, "other-model")
    assert sent == raw.replace(b'"claude-x"', b'"other-model"')
    assert messagesBody(raw, body, "claude-x") is raw  # nothing to change: not copied


@pytest.mark.parametrize(
    "raw",
    [
        b'{"max_tokens":5,"model":"claude-x","messages":[]}',  # the model not first
        b'{"model":"claude-y","max_tokens":5,"model":"claude-x"}',  # twice: the last counts
        b'{"model": "claude-x","messages":[]}',  # not as Claude Code writes it
        # twice, the second spelled with escapes: the upstream reads the last one too
        b'{"model":"claude-x","max_tokens":5,"\\u006dodel":"claude-x"}',
        b'{"model":"claude-x","\\u006Dodel":"claude-y","m\\u006f\\u0064\\u0065\\u006c":"claude-x"}',
        b'{"model":"claude-x","messages":[],"mode\\u006c" :"claude-x"}',
    ],
)
def test_any_other_body_is_encoded_once_from_what_was_checked(raw: bytes) -> None:
    body = orjson.loads(raw)
    assert body["model"] == "claude-x"
    sent = orjson.loads(messagesBody(raw, body, "routed"))
    assert sent == {**body, "model": "routed"}
    assert messagesBody(raw, body, "claude-x").count(b'"model"') == 1


# -- headers ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("betas", "sent"),
    [
        ("all", BETAS),
        ("none", None),
        (("context-1m-2025-08-07", "claude-code-20250219"), BETAS.rsplit(",", 1)[0].split(",")[0]),
    ],
)
def test_betas_decide_which_anthropic_beta_values_go(betas: Any, sent: str | None) -> None:
    headers = anthropicHeaders(betas, {"anthropic-beta": BETAS, "anthropic-version": "2023-06-01"})
    assert headers["anthropic-version"] == "2023-06-01"
    if isinstance(betas, tuple):
        assert headers["anthropic-beta"] == "claude-code-20250219,context-1m-2025-08-07"
    else:
        assert headers.get("anthropic-beta") == sent


def test_a_missing_version_is_the_current_one() -> None:
    assert anthropicHeaders("all", {}) == {"anthropic-version": "2023-06-01"}


@pytest.mark.parametrize(
    ("extra", "auth"),
    [
        ("", {"x-api-key": "sk-native-secret-key"}),
        ("auth_header: authorization", {"Authorization": "Bearer sk-native-secret-key"}),
        ("preset: openrouter", {"Authorization": "Bearer sk-native-secret-key"}),
        ("preset: deepseek", {"x-api-key": "sk-native-secret-key"}),
    ],
)
def test_a_messages_upstream_gets_its_key_its_way(extra: str, auth: dict[str, str]) -> None:
    config = Config.fromYAML(
        "upstreams: {u: {url: 'http://h/v1', api: messages, api_key: sk-native-secret-key, "
        f"{extra}}}}}\nmodels: {{'*': u}}\n",
        {},
    )
    headers = upstreamHeaders(config.upstreams["u"], None, {"anthropic-beta": BETAS})
    assert {k: v for k, v in headers.items() if k in ("x-api-key", "Authorization")} == auth
    presetBetas = "none" if "deepseek" in extra else "all"
    assert ("anthropic-beta" in headers) == (presetBetas == "all")


def test_only_the_rule_s_client_headers_reach_the_upstream() -> None:
    h = Harness.build(CONFIG)
    h.upstream.queue(jsonReply(anthropicMessage()))
    h.post(
        message(model="claude-haiku-4-5"),
        headers={
            "anthropic-version": "2023-06-01",
            "anthropic-beta": BETAS,
            "x-api-key": "caller-key",
            "x-stainless-os": "Linux",
            "cookie": "a=b",
        },
    )
    received = h.upstream.received[-1]
    assert received.path == "/v1/messages"
    assert received.headers["x-api-key"] == "sk-native-secret-key"  # its own, not the caller's
    assert received.headers["anthropic-beta"] == BETAS
    assert received.headers["anthropic-version"] == "2023-06-01"
    assert "x-stainless-os" not in received.headers and "cookie" not in received.headers
    assert "authorization" not in received.headers


def test_a_chat_upstream_gets_no_anthropic_headers() -> None:
    h = Harness.build(CONFIG)
    h.post(message(model="mixed"), headers={"anthropic-beta": BETAS})
    received = h.upstream.received[-1]
    assert received.path == "/v1/chat/completions"
    assert "anthropic-beta" not in received.headers and "anthropic-version" not in received.headers


# -- whole answers ----------------------------------------------------------------------


def test_a_whole_answer_goes_back_as_it_came(access: list[dict[str, Any]]) -> None:
    h = Harness.build(CONFIG)
    answer = orjson.dumps(anthropicMessage(input_tokens=12, output_tokens=3)) + b"\n"
    h.upstream.queue(rawReply(answer, contentType="application/json"))
    sent = orjson.dumps(message(model="claude-haiku-4-5", metadata={"user_id": "u1"}, top_k=3))
    reply = h.post(sent)
    assert reply.status == 200 and reply.body == answer
    assert reply.headers["content-type"] == "application/json"
    assert h.upstream.last == {**orjson.loads(sent), "model": "small-native"}
    assert (access[-1]["input_tokens"], access[-1]["output_tokens"]) == (12, 3)
    assert access[-1]["upstream"] == "native"


def test_a_whole_answer_to_a_stream_request_is_sent_as_a_stream() -> None:
    h = Harness.build(CONFIG)
    thinking = {"type": "thinking", "thinking": "hm", "signature": "sig"}
    other = {"type": "redacted_thinking", "data": "xyz"}
    body = {**anthropicMessage(), "content": [thinking, other, {"type": "text", "text": "ok"}]}
    h.upstream.queue(jsonReply(body))
    reply = h.post(message(model="claude-haiku-4-5", stream=True))
    frames = parseSSE(reply.body)
    assert [n for n, _ in frames][-2:] == ["message_delta", "message_stop"]
    assert {"type": "content_block_start", "index": 1, "content_block": other} in [
        d for _, d in frames
    ]


@pytest.mark.parametrize(
    "answer",
    [
        {"type": "message", "content": "text"},
        {"type": "message", "content": [{"type": "text"}]},
        [1, 2],
    ],
)
def test_a_whole_answer_that_is_no_message_is_a_502(answer: Any) -> None:
    h = Harness.build(CONFIG)
    h.upstream.queue(jsonReply(answer))
    reply = h.post(message(model="claude-haiku-4-5"))
    assert reply.status == 502
    assert reply.json()["error"]["message"].startswith("native: ")


def test_an_anthropic_error_keeps_its_status_type_and_words() -> None:
    h = Harness.build(CONFIG)
    envelope = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    h.upstream.queue(jsonReply(envelope, 529, {"retry-after": "3"}))
    reply = h.post(message(model="claude-haiku-4-5"))
    assert reply.status == 529
    assert reply.json()["error"] == {"type": "overloaded_error", "message": "Overloaded"}
    assert reply.headers["retry-after"] == "3"


def test_an_anthropic_error_s_words_are_redacted() -> None:
    h = Harness.build(CONFIG)
    leak = {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": "key sk-native-secret-key bad"},
    }
    h.upstream.queue(jsonReply(leak, 400))
    reply = h.post(message(model="claude-haiku-4-5"))
    assert reply.status == 400
    assert "sk-native" not in reply.body.decode()
    assert reply.json()["error"]["type"] == "invalid_request_error"


def test_any_other_error_is_wrapped_as_for_chat() -> None:
    h = Harness.build(CONFIG)
    h.upstream.queue(rawReply(b"<html><title>Bad Gateway</title></html>", 502, "text/html"))
    reply = h.post(message(model="claude-haiku-4-5"))
    assert reply.status == 502
    assert reply.json()["error"] == {"type": "api_error", "message": "native: Bad Gateway"}


def test_a_prompt_too_long_is_what_claude_code_compacts_on() -> None:
    h = Harness.build(CONFIG)
    words = "prompt is too long: 210000 tokens > 200000 maximum"
    h.upstream.queue(
        jsonReply(
            {"type": "error", "error": {"type": "invalid_request_error", "message": words}}, 400
        )
    )
    reply = h.post(message(model="claude-haiku-4-5"))
    assert reply.status == 400
    assert reply.json()["error"]["message"].startswith("prompt is too long: 210000 tokens >")


def test_failover_from_a_chat_503_to_a_messages_upstream(access: list[dict[str, Any]]) -> None:
    h = Harness.build(CONFIG)
    h.upstream.queue(jsonReply({"error": {"message": "busy"}}, 503), anthropicStream(TEXT_STREAM))
    reply = h.post(message(model="mixed", stream=True), headers={"anthropic-beta": BETAS})
    assert reply.status == 200
    assert reply.body == b"".join(TEXT_STREAM)
    chat, native = h.upstream.received
    assert (chat.path, chat.body["model"]) == ("/v1/chat/completions", "gpt-x")
    assert (native.path, native.body["model"]) == ("/v1/messages", "native-x")
    assert native.headers["anthropic-beta"] == BETAS
    assert access[-1]["attempts"] == ["chat: 503 overloaded_error", "native: 200"]


def test_failover_from_a_chat_503_to_a_whole_messages_answer() -> None:
    h = Harness.build(CONFIG)
    h.upstream.queue(jsonReply({"error": {"message": "busy"}}, 503), jsonReply(anthropicMessage()))
    reply = h.post(message(model="mixed"))
    assert reply.status == 200 and reply.json() == anthropicMessage()


def test_safeguards_pass_to_a_route_of_messages_upstreams_only() -> None:
    h = Harness.build(CONFIG)
    h.upstream.queue(jsonReply(anthropicMessage()))
    assert h.post(message(model="claude-haiku-4-5", safeguards={"x": 1})).status == 200
    assert h.upstream.last["safeguards"] == {"x": 1}
    assert h.post(message(model="mixed", safeguards={"x": 1})).status == 400


# -- streams ----------------------------------------------------------------------------


def test_a_stream_goes_back_byte_for_byte(access: list[dict[str, Any]]) -> None:
    h = Harness.build(CONFIG)
    h.upstream.queue(anthropicStream(TEXT_STREAM))
    reply = h.post(message(model="claude-haiku-4-5", stream=True))
    assert reply.status == 200
    assert reply.headers["content-type"].startswith("text/event-stream")
    assert reply.body == b"".join(TEXT_STREAM)
    event = access[-1]
    assert (event["input_tokens"], event["output_tokens"], event["cache_read_tokens"]) == (
        40,
        9,
        30,
    )
    assert event["error_type"] is None


def test_crlf_comments_and_split_reads_still_give_the_frames() -> None:
    h = Harness.build(CONFIG)
    wire = b": hello\r\n\r\n" + b"".join(TEXT_STREAM).replace(b"\n", b"\r\n")
    pieces = [wire[i : i + 7] for i in range(0, len(wire), 7)]
    h.upstream.queue(anthropicStream(pieces))
    reply = h.post(message(model="claude-haiku-4-5", stream=True))
    assert parseSSE(reply.body) == [(e["type"], e) for e in TEXT_EVENTS]


def test_an_error_event_mid_stream_ends_it_as_a_failure(access: list[dict[str, Any]]) -> None:
    h = Harness.build(CONFIG)
    error = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    h.upstream.queue(anthropicStream([*TEXT_STREAM[:4], frame(error)]))
    reply = h.post(message(model="claude-haiku-4-5", stream=True))
    frames = parseSSE(reply.body)
    assert [n for n, _ in frames] == [e["type"] for e in TEXT_EVENTS[:4]] + ["error"]
    assert frames[-1][1] == error
    assert access[-1]["error_type"] == "overloaded_error"
    assert access[-1]["input_tokens"] == 40


def test_an_error_event_s_words_are_redacted_and_a_second_start_is_an_error() -> None:
    h = Harness.build(CONFIG)
    leak = {"type": "error", "error": {"type": "api_error", "message": "sk-native-secret-key"}}
    h.upstream.queue(anthropicStream([*TEXT_STREAM[:2], frame(leak)]))
    reply = h.post(message(model="claude-haiku-4-5", stream=True))
    assert b"sk-native" not in reply.body
    assert parseSSE(reply.body)[-1][1]["error"]["type"] == "api_error"
    h.upstream.queue(anthropicStream([*TEXT_STREAM[:2], *TEXT_STREAM]))
    frames = parseSSE(h.post(message(model="claude-haiku-4-5", stream=True)).body)
    assert [n for n, _ in frames] == ["message_start", "content_block_start", "error"]
    assert "second message_start" in frames[-1][1]["error"]["message"]


def test_a_stream_ends_for_the_client_at_message_stop(access: list[dict[str, Any]]) -> None:
    h = Harness.build(CONFIG)
    late = {"type": "error", "error": {"type": "overloaded_error", "message": "late"}}
    h.upstream.queue(anthropicStream([*TEXT_STREAM, *TEXT_STREAM[1:3], frame(late)]))
    reply = h.post(message(model="claude-haiku-4-5", stream=True))
    assert reply.body == b"".join(TEXT_STREAM)
    assert access[-1]["error_type"] is None and access[-1]["output_tokens"] == 9


def test_a_stream_cut_before_message_stop_ends_with_an_error_event(
    access: list[dict[str, Any]],
) -> None:
    h = Harness.build(CONFIG)
    h.upstream.queue(anthropicStream(TEXT_STREAM[:5]))
    reply = h.post(message(model="claude-haiku-4-5", stream=True))
    frames = parseSSE(reply.body)
    assert "message_stop" not in [n for n, _ in frames]
    assert frames[-1][0] == "error"
    assert frames[-1][1]["error"]["type"] == "api_error"
    assert "before message_stop" in frames[-1][1]["error"]["message"]
    assert access[-1]["error_type"] == "api_error"


def test_a_frame_that_is_not_json_where_it_is_read_ends_the_stream() -> None:
    h = Harness.build(CONFIG)
    h.upstream.queue(anthropicStream([TEXT_STREAM[0], b"event: message_delta\ndata: {nope\n\n"]))
    frames = parseSSE(h.post(message(model="claude-haiku-4-5", stream=True)).body)
    assert frames[-1][0] == "error" and frames[-1][1]["error"]["message"].startswith("native: ")


def test_a_stream_committed_by_head_wait_has_one_message_start() -> None:
    h = Harness.build(CONFIG)
    h.upstream.queue(lateReply(8, anthropicStream(TEXT_STREAM)))
    stream = Stream(h, message(model="claude-haiku-4-5", stream=True)).at(6)
    assert stream.status == 200 and stream.names() == ["message_start"]
    assert stream.frames()[0][1]["message"]["model"] == "claude-haiku-4-5"  # ccproxy's own
    stream.at(10)
    assert stream.ended
    assert stream.names() == [e["type"] for e in TEXT_EVENTS]
    assert b"".join(stream.pieces).endswith(b"".join(TEXT_STREAM[-1:]))
    assert b"".join(TEXT_STREAM[1:5]) in b"".join(stream.pieces)
    # ccproxy's message_start said no usage: the upstream's input counts come with
    # its message_delta, as a translated stream's do
    assert stream.frames()[-2][1] == {
        **TEXT_EVENTS[5],
        "usage": {"output_tokens": 9, "input_tokens": 40, "cache_read_input_tokens": 30},
    }


def test_a_silent_stream_gets_pings_and_times_out() -> None:
    h = Harness.build(CONFIG + "ping_interval: 10\n")
    h.upstream.queue(anthropicStream(TEXT_STREAM[:2], close=False))
    stream = Stream(h, message(model="claude-haiku-4-5", stream=True)).at(25)
    assert "ping" in stream.names()
    stream.at(45)
    assert stream.ended
    assert stream.frames()[-1][1]["error"]["message"].startswith("native: no data for 30 s")


def test_a_chat_stream_on_the_same_route_is_still_translated() -> None:
    h = Harness.build(CONFIG)
    h.upstream.queue(sseReply(TEXT_CHUNKS))
    reply = h.post(message(model="mixed", stream=True))
    assert [n for n, _ in parseSSE(reply.body)][-1] == "message_stop"


# -- count_tokens -----------------------------------------------------------------------


def test_count_tokens_is_asked_of_the_upstream() -> None:
    h = Harness.build(CONFIG)
    h.upstream.queue(rawReply(b'{"input_tokens":321}', contentType="application/json"))
    reply = h.post(
        message(model="claude-haiku-4-5"),
        path="/v1/messages/count_tokens",
        headers={"anthropic-beta": BETAS},
    )
    assert reply.status == 200 and reply.body == b'{"input_tokens":321}'
    received = h.upstream.received[-1]
    assert received.path == "/v1/messages/count_tokens"
    assert received.body["model"] == "small-native"
    assert received.headers["anthropic-beta"] == BETAS


def test_count_tokens_keeps_the_upstream_s_refusal() -> None:
    h = Harness.build(CONFIG)
    envelope = {"type": "error", "error": {"type": "not_found_error", "message": "no such model"}}
    h.upstream.queue(jsonReply(envelope, 404))
    reply = h.post(message(model="claude-haiku-4-5"), path="/v1/messages/count_tokens")
    assert reply.status == 404 and reply.json()["error"] == envelope["error"]


def test_count_tokens_false_is_estimated_here() -> None:
    h = Harness.build(
        CONFIG.replace("    api: messages\n", "    api: messages\n    count_tokens: false\n")
    )
    reply = h.post(
        message("word " * 1000, model="claude-haiku-4-5"), path="/v1/messages/count_tokens"
    )
    assert reply.status == 200 and 900 <= reply.json()["input_tokens"] <= 1300
    assert h.upstream.received == []


# -- the pure reader --------------------------------------------------------------------


def test_usage_takes_only_counts() -> None:
    assert usageOf({"input_tokens": 3, "output_tokens": True, "cache_read_input_tokens": -1}) == {
        "input_tokens": 3
    }
    assert usageOf("many") == {}


def test_usage_counts_are_bounded_as_a_chat_upstream_s() -> None:
    """An upstream's 2**64 - 1 would overflow the ledger's integers (SQLite refuses
    the row): bounded as `anthropicUsage` bounds a chat upstream's."""
    huge = (1 << 64) - 1
    usage = usageOf(orjson.loads(b'{"input_tokens":%d,"output_tokens":7}' % huge))
    assert usage == {"input_tokens": 1 << 53, "output_tokens": 7}
    assert usage["input_tokens"] == anthropicUsage({"prompt_tokens": huge})["input_tokens"]


def test_a_stream_without_event_lines_is_read_by_its_types() -> None:
    stream = MessageStream(skipStart=True)
    assert stream.keep(b"", orjson.dumps(START)) is False
    assert stream.keep(b"", b'{"type":"content_block_delta"}') is True
    assert stream.keep(b"", b'{"type":"message_stop"}') is True
    stream.finish()
    assert stream.knownUsage() == START["message"]["usage"]


@pytest.mark.parametrize("skipStart", [False, True])
def test_a_second_message_start_breaks_the_stream(skipStart: bool) -> None:
    """One message per stream: a second `message_start` (a buggy upstream, or two
    answers in one body) is not passed on, nor its usage taken over the first's."""
    stream = MessageStream(skipStart=skipStart)
    assert stream.keep(b"message_start", orjson.dumps(START)) is not skipStart
    with pytest.raises(ProxyError, match="second message_start"):
        stream.keep(b"message_start", orjson.dumps(START))
    assert stream.knownUsage() == START["message"]["usage"]


def test_what_follows_message_stop_is_not_read() -> None:
    """The answer was whole at `message_stop`: an `event: error` after it does not
    make it a failure, nor put an error event after the client's `message_stop`."""
    stream = MessageStream()
    for event in TEXT_EVENTS:
        stream.keep(event["type"].encode(), orjson.dumps(event))
    error = {"type": "error", "error": {"type": "overloaded_error", "message": "late"}}
    assert stream.keep(b"error", orjson.dumps(error)) is False
    assert stream.keep(b"message_start", orjson.dumps(START)) is False
    assert stream.keep(b"message_delta", orjson.dumps(TEXT_EVENTS[5])) is False
    assert stream.reads(b"content_block_delta") is True  # read, so as not to go on
    assert stream.keep(b"content_block_delta", orjson.dumps(TEXT_EVENTS[3])) is False
    stream.finish()
    assert stream.knownUsage() == {**START["message"]["usage"], "output_tokens": 9}


def test_a_whole_message_without_usage_counts_none() -> None:
    message = wholeMessage({"content": [], "type": "message"})
    assert message["usage"] == {} and message["stop_reason"] is None


def trickling(count: int) -> list[bytes]:
    delta = {
        "type": "content_block_delta",
        "index": 0,
        "delta": {"type": "text_delta", "text": "."},
    }
    return TEXT_STREAM[:2] + [frame(delta)] * count


def test_a_client_that_leaves_mid_stream_aborts_the_upstream(
    access: list[dict[str, Any]],
) -> None:
    h = Harness.build(CONFIG)
    h.upstream.queue(anthropicStream(trickling(10), delay=1))
    channel, transport = connect(h, message(model="claude-haiku-4-5", stream=True))
    for _ in range(4):
        h.clock.advance(1)
        h.flush()
    assert b"content_block_delta" in transport.value()
    hangUp(channel)
    h.flush()
    assert h.upstream.disconnected == 1
    h.clock.advance(1000)
    h.flush()
    assert h.clock.getDelayedCalls() == []
    assert access[-1]["input_tokens"] == 40  # from the message_start it had read


def test_max_duration_ends_a_trickling_stream() -> None:
    h = Harness.build(CONFIG + "max_duration: 100\n")
    h.upstream.queue(anthropicStream(trickling(50), delay=20))
    ended: list[bytes] = []
    h.request("POST", "/v1/messages", message(model="claude-haiku-4-5", stream=True)).addCallback(
        lambda reply: ended.append(reply.body)
    )
    for _ in range(8):
        h.clock.advance(20)
        h.flush()
    frames = parseSSE(ended[0])
    assert frames[-1][0] == "error" and "longer than 100 s" in str(frames[-1][1])
    assert h.upstream.disconnected == 1


# -- SSEFrames: frames cut anywhere ------------------------------------------------------


class Frames:
    """An SSEFrames fed a body, with what it handed on."""

    def __init__(self, maxLine: int = 1 << 20) -> None:
        self.out: list[bytes] = []
        self.read: list[tuple[bytes, bytes]] = []
        self.parser = SSEFrames(
            self._frame,
            Clock(),
            30,
            "up",
            maxLine,
            wants=MessageStream().reads,
            onUnread=self.out.append,
        )
        self.parser.makeConnection(StringTransport())

    def _frame(self, event: bytes, data: bytes, frame: bytes) -> None:
        self.read.append((event, data))
        self.out.append(frame)

    def feed(self, *pieces: bytes) -> Frames:
        for piece in pieces:
            self.parser.dataReceived(piece)
        self.parser.connectionLost(Failure(ResponseDone()))
        return self


WIRE = b"".join(TEXT_STREAM)
READ = [(b"message_start", orjson.dumps(START)), (b"message_delta", orjson.dumps(TEXT_EVENTS[5]))]
READ.append((b"message_stop", orjson.dumps(TEXT_EVENTS[6])))


@given(st.lists(st.integers(min_value=0, max_value=len(WIRE)), max_size=12))
@settings(max_examples=300, deadline=None)
def test_frames_cut_anywhere_go_on_byte_for_byte(cuts: list[int]) -> None:
    points = sorted({0, len(WIRE), *cuts})
    body = Frames().feed(*(WIRE[a:b] for a, b in itertools.pairwise(points)))
    assert b"".join(body.out) == WIRE
    # The events MessageStream reads are read (and those cut across reads: whole).
    assert [e for e in body.read if MessageStream().reads(e[0])] == READ
    if len(points) == 2:
        assert body.read == READ  # in one read: none but those


def test_comments_and_blank_lines_are_dropped_and_crlf_is_read() -> None:
    wire = b": open\n\n" + TEXT_STREAM[0] + b"\n\n" + b": keep\nevent: ping\ndata: {}\n\n"
    body = Frames().feed(wire + b"".join(TEXT_STREAM[1:]))
    assert b"".join(body.out) == b"event: ping\ndata: {}\n\n".join(
        [TEXT_STREAM[0], b""]
    ) + b"".join(TEXT_STREAM[1:])
    crlf = Frames().feed(WIRE.replace(b"\n", b"\r\n"))
    assert b"".join(crlf.out) == WIRE  # read line by line: every frame's data is read
    assert [e for e in crlf.read if MessageStream().reads(e[0])] == READ


@given(st.lists(st.integers(min_value=0, max_value=2 * len(WIRE)), max_size=6))
@settings(max_examples=200, deadline=None)
def test_a_crlf_stream_cut_anywhere_is_read_frame_by_frame(cuts: list[int]) -> None:
    """Whatever the first read holds (`event: mess`, no line end yet), a `\r\n`
    stream's frames go on as they come, each whole, not held to the stream's end."""
    crlf = WIRE.replace(b"\n", b"\r\n")
    points = sorted({0, len(crlf), *(c for c in cuts if c < len(crlf))})
    body = Frames()
    for a, b in itertools.pairwise(points):
        body.parser.dataReceived(crlf[a:b])
        # every frame whose blank line has come is handed on at once
        assert b"".join(body.out) == WIRE[: _frameEnd(b, crlf)]
    body.parser.connectionLost(Failure(ResponseDone()))
    assert b"".join(body.out) == WIRE
    assert [e for e in body.read if MessageStream().reads(e[0])] == READ


def _frameEnd(upTo: int, crlf: bytes) -> int:
    """Bytes of WIRE up to the last frame end within `crlf[:upTo]`."""
    frames = crlf[:upTo].count(b"\r\n\r\n")
    return len(b"".join(TEXT_STREAM[:frames]))


def test_a_last_frame_without_its_blank_line_still_counts() -> None:
    body = Frames().feed(WIRE[:-2])
    assert b"".join(body.out) == WIRE and body.read == READ


def test_a_frame_over_the_limit_fails_the_stream() -> None:
    body = Frames(maxLine=64)
    failures: list[Failure] = []
    body.parser.finished.addErrback(failures.append)
    body.parser.dataReceived(b"event: content_block_delta\ndata: " + b"x" * 100)
    assert "longer than 64 bytes" in str(failures[0].value)


@pytest.mark.parametrize("end", [b"\n", b"\r\n"])
def test_a_frame_of_many_short_lines_over_the_limit_fails_the_stream(end: bytes) -> None:
    """The limit bounds a frame however its lines are cut, and whichever line ends
    the stream uses (a `\r\n` stream was read line by line, its frame unbounded)."""
    body = Frames(maxLine=64)
    failures: list[Failure] = []
    body.parser.finished.addErrback(failures.append)
    body.parser.dataReceived(b"event: content_block_delta" + end)
    for _ in range(20):
        body.parser.dataReceived(b"data: xxxxxxxx" + end)
    assert failures and "longer than 64 bytes" in str(failures[0].value)
    assert body.out == [] and body.read == []


def test_the_doctor_probes_a_messages_upstream_in_its_own_api() -> None:
    config = Config.fromYAML(
        "upstreams: {u: {url: 'http://h/v1?x=1', api: messages, api_key: sk-native-secret-key}}\n"
        "models: {'*': u/m}\n",
        {},
    )
    upstream = config.upstreams["u"]
    assert modelsURL(upstream) == "http://h/v1/models?x=1"
    probe = upstreamChatRequest(upstream, None, "m")
    assert probe.url == "http://h/v1/messages?x=1"
    assert orjson.loads(probe.body) == {
        "model": "m",
        "messages": [{"role": "user", "content": "Say ok."}],
        "max_tokens": 1,
    }
    assert probe.headers["x-api-key"] == "sk-native-secret-key"


def test_the_caller_s_key_goes_as_x_api_key_to_a_keyless_messages_upstream() -> None:
    h = Harness.build(CONFIG.replace("    api_key: sk-native-secret-key\n", "", 1))
    h.upstream.queue(jsonReply(anthropicMessage()))
    h.post(message(model="claude-haiku-4-5"), headers={"authorization": "Bearer caller-own-key"})
    received = h.upstream.received[-1].headers
    assert received["x-api-key"] == "caller-own-key" and "authorization" not in received


# -- ccproxy's tool search: its rounds stay where they began ------------------------------


def test_a_tool_search_round_does_not_fail_over_to_another_api() -> None:
    """A round of ccproxy's tool search goes on with the answer the chat upstream
    began: read by its translator, so never sent to an upstream speaking another API
    (the messages upstream got the client's first body, and its events were read as
    chat chunks)."""
    h = Harness.build(CONFIG)
    busy = jsonReply({"error": {"message": "busy"}}, 503)
    reply = askWithTools(
        h, True, searchReply(True), busy, anthropicStream(TEXT_STREAM), model="mixed"
    )
    assert [r.path for r in h.upstream.received] == ["/v1/chat/completions"] * 2
    frames = parseSSE(reply.body)
    assert [n for n, _ in frames].count("message_start") == 1
    assert frames[-1][0] == "error" and "busy" in frames[-1][1]["error"]["message"]


def test_a_tool_search_round_fails_over_among_chat_upstreams() -> None:
    h = Harness.build(
        CONFIG.replace("mixed: [chat/gpt-x, native/native-x]", "mixed: [chat/gpt-x, chat/gpt-y]")
    )
    busy = jsonReply({"error": {"message": "busy"}}, 503)
    reply = askWithTools(h, True, searchReply(True), busy, weatherReply(True), model="mixed")
    assert [r.body["model"] for r in h.upstream.received] == ["gpt-x", "gpt-x", "gpt-y"]
    blocks, stop, _ = content(reply, True)
    assert stop == "tool_use" and blocks[-1]["name"] == "get_weather"


def test_a_continued_plan_keeps_the_targets_that_can_go_on() -> None:
    config = Config.fromYAML(
        "upstreams:\n"
        + "".join(
            f"  {name}: {{url: 'http://{name}.test/v1', api: {api}}}\n"
            for name, api in [
                ("c1", "chat"),
                ("c2", "chat"),
                ("r1", "responses"),
                ("r2", "responses"),
                ("m", "messages"),
            ]
        )
        + "models: {'*': [c1, r1, m, c2, r2]}\n",
        {},
    )
    body = message(model="x")
    plan = Plan.forRequest(
        body,
        "x",
        "msg_1",
        targets=config.router.resolve("x").targets,
        upstreams=config.upstreams,
        defaultMaxTokens=100,
        maxResponseBytes=1 << 20,
    )

    def after(began: str) -> list[str]:
        return [t.upstream for t in plan.continued([], began).targets]

    assert after("c2") == ["c1", "c2"]  # chat goes on in chat (failover kept)
    assert after("r1") == ["r1"]  # its reasoning is signed with its name
    assert after("r2") == ["r2"]
