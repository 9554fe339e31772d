"""`head_wait`: a stream request whose upstream keeps its headers is committed to
`200`, `message_start` and pings, in memory on a Clock.

A gateway such as LiteLLM sends no header until its model's first token; without
this, Claude Code got not one byte for as long as the model took to start.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from twisted.internet.defer import Deferred
from twisted.web.iweb import IResponse

from ccproxy.config import Config
from ccproxy.config.schema import ConfigError
from ccproxy.relay.relay import EventWriter, StreamRelay
from tests.support.fakes import jsonReply, lateReply, sseReply, stallReply
from tests.support.harness import Harness, fired, message, parseSSE, resultOf
from tests.test_app_stream import TEXT_CHUNKS
from tests.test_disconnect import connect, hangUp
from tests.test_resilience import CONFIG as RESILIENCE

CONFIG = RESILIENCE.format(retries=0) + "ping_interval: 10\n"
"""main and backup, 30 s timeouts, no retries: `claude-*` fails over from main to
backup, `solo` goes to main alone."""


def refusal(status: int, text: str = "no") -> Any:
    return jsonReply({"error": {"message": text}}, status)


class Stream:
    """A client reading a stream as it comes: the head, then each piece of body."""

    def __init__(self, h: Harness, body: dict[str, Any]) -> None:
        self.h = h
        self.response: IResponse | None = None
        self.pieces: list[bytes] = []
        self.ended = False
        d = h.client.request("POST", "http://proxy.test/v1/messages", data=orjson.dumps(body))
        d.addCallback(self._head)
        self.done: Deferred[Any] = d

    def _head(self, response: IResponse) -> Deferred[Any]:
        self.response = response
        collecting: Deferred[Any] = self.h.client.collect(response, self.pieces.append)
        return collecting.addCallback(lambda _: setattr(self, "ended", True))

    def at(self, seconds: float) -> Stream:
        """Advance the clock one second at a time until `seconds` have passed."""
        self.h.flush()
        while self.h.clock.seconds() < seconds:
            self.h.clock.advance(1)
            self.h.flush()
        return self

    @property
    def status(self) -> int | None:
        return None if self.response is None else self.response.code

    def header(self, name: str) -> str | None:
        assert self.response is not None
        values = self.response.headers.getRawHeaders(name)
        return values[-1] if values else None

    def frames(self) -> list[tuple[str, Any]]:
        return parseSSE(b"".join(self.pieces))

    def names(self) -> list[str]:
        return [name for name, _ in self.frames()]


def pending(h: Harness) -> list[str]:
    """The head waits and pings still set on the clock."""
    owned = (StreamRelay.commit, EventWriter._ping)
    return [
        call.func.__qualname__
        for call in h.clock.getDelayedCalls()
        if getattr(call.func, "__func__", None) in owned
    ]


def test_a_quick_refusal_keeps_its_status() -> None:
    h = Harness.build(CONFIG)
    h.upstream.queue(lateReply(4, refusal(400, "bad tool schema")))
    d = h.request("POST", "/v1/messages", message(model="solo", stream=True))
    for _ in range(5):
        h.clock.advance(1)
        h.flush()
    reply = resultOf(d)
    assert reply.status == 400
    assert reply.headers["content-type"] == "application/json"
    assert "bad tool schema" in reply.json()["error"]["message"]
    assert pending(h) == []


def test_a_slow_head_commits_the_stream_with_message_start_and_pings() -> None:
    h = Harness.build(CONFIG)
    h.upstream.queue(lateReply(27, sseReply(TEXT_CHUNKS)))
    stream = Stream(h, message(model="solo", stream=True)).at(4)
    assert stream.status is None  # within head_wait (5 s): nothing yet
    stream.at(5)
    assert stream.status == 200
    assert stream.header("content-type") == "text/event-stream; charset=utf-8"
    assert stream.names() == ["message_start"]
    start = stream.frames()[0][1]["message"]
    assert start["model"] == "solo"
    assert start["id"] == f"msg_{stream.header('request-id')}"
    stream.at(26)
    assert stream.names() == ["message_start", "ping", "ping"]  # at 15 and 25 s
    stream.at(28)
    assert stream.ended
    names = stream.names()
    assert names.count("message_start") == 1
    assert names[-1] == "message_stop"
    text = "".join(d["delta"]["text"] for n, d in stream.frames() if n == "content_block_delta")
    assert text == "Hello ✓"
    assert pending(h) == []


@pytest.mark.parametrize(
    ("status", "errorType"),
    [
        (500, "overloaded_error"),
        (502, "overloaded_error"),
        (503, "overloaded_error"),
        (529, "overloaded_error"),
        (429, "rate_limit_error"),
        (400, "invalid_request_error"),
        (404, "not_found_error"),
    ],
)
def test_a_refusal_after_the_commit_is_an_error_event(status: int, errorType: str) -> None:
    h = Harness.build(CONFIG)
    h.upstream.queue(lateReply(8, refusal(status, "the gateway says no")))
    stream = Stream(h, message(model="solo", stream=True)).at(9)
    assert stream.ended
    assert stream.status == 200
    assert stream.names() == ["message_start", "error"]
    error = stream.frames()[-1][1]
    assert error["error"]["type"] == errorType
    assert "main: the gateway says no" in error["error"]["message"]
    assert pending(h) == []
    assert h.post(message(model="solo")).status == 200  # the next request is fine


def test_silence_past_the_timeout_after_the_commit_is_an_error_event() -> None:
    h = Harness.build(CONFIG)
    h.upstream.queue(stallReply())
    stream = Stream(h, message(model="solo", stream=True)).at(29)
    assert stream.names() == ["message_start", "ping", "ping"]
    stream.at(30)
    assert stream.ended
    assert stream.names()[-1] == "error"
    error = stream.frames()[-1][1]["error"]
    assert error["type"] == "overloaded_error"  # a 504: Claude Code tries again
    assert "no data for 30 s" in error["message"]
    assert h.upstream.disconnected == 1
    assert pending(h) == []


def test_max_duration_after_the_commit_is_an_error_event() -> None:
    h = Harness.build(CONFIG + "max_duration: 17\n")
    h.upstream.queue(stallReply())
    stream = Stream(h, message(model="solo", stream=True)).at(17)
    assert stream.ended
    assert stream.status == 200
    assert stream.names() == ["message_start", "ping", "error"]
    assert "longer than 17 s" in stream.frames()[-1][1]["error"]["message"]
    assert h.upstream.disconnected == 1
    assert pending(h) == []


def test_failover_before_the_commit_is_unseen() -> None:
    h = Harness.build(CONFIG)
    h.upstream.queue(lateReply(2, refusal(503)), lateReply(2, sseReply(TEXT_CHUNKS)))
    stream = Stream(h, message(stream=True)).at(4)
    assert stream.ended
    assert stream.names()[0] == "message_start"
    assert stream.names()[-1] == "message_stop"
    assert [r.headers["host"] for r in h.upstream.received] == ["main.test", "backup.test"]


def test_failover_after_the_commit_continues_the_stream() -> None:
    """Nothing but `message_start` and pings went out, and `message_start` names only
    the client's id and model: the partner's answer follows it, once."""
    h = Harness.build(CONFIG)
    h.upstream.queue(
        lateReply(8, refusal(503, "main is down")), lateReply(8, sseReply(TEXT_CHUNKS))
    )
    stream = Stream(h, message(stream=True)).at(14)
    assert stream.names() == ["message_start"]  # committed at 5 s, backup asked at 8 s
    stream.at(17)
    assert stream.ended
    names = stream.names()
    assert names.count("message_start") == 1
    assert "error" not in names
    assert names[-1] == "message_stop"
    assert stream.frames()[0][1]["message"]["model"] == "claude-sonnet-4-5"
    assert [r.headers["host"] for r in h.upstream.received] == ["main.test", "backup.test"]


def test_a_json_answer_after_the_commit_follows_its_message_start() -> None:
    h = Harness.build(CONFIG)
    completion = {
        "choices": [{"message": {"content": "whole"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 1},
    }
    h.upstream.queue(lateReply(7, jsonReply(completion)))
    stream = Stream(h, message(model="solo", stream=True)).at(8)
    assert stream.ended
    names = stream.names()
    assert names.count("message_start") == 1
    assert names[-1] == "message_stop"
    usage = next(d["usage"] for n, d in stream.frames() if n == "message_delta")
    assert usage["input_tokens"] == 5


def test_a_request_without_a_stream_waits_for_the_status() -> None:
    h = Harness.build(CONFIG)
    h.upstream.queue(lateReply(20, refusal(503)))
    d = h.request("POST", "/v1/messages", message(model="solo"))
    for _ in range(19):
        h.clock.advance(1)
        h.flush()
    assert not fired(d)
    h.clock.advance(1)
    h.flush()
    assert resultOf(d).status == 503


def test_a_client_that_leaves_during_the_wait_leaves_no_timer() -> None:
    h = Harness.build(CONFIG)
    h.upstream.queue(stallReply())
    channel, transport = connect(h, message(model="solo", stream=True))
    h.flush()
    h.clock.advance(2)
    hangUp(channel)
    h.flush()
    assert pending(h) == []
    assert h.upstream.disconnected == 1
    assert transport.value() == b""


def test_a_client_that_leaves_after_the_commit_leaves_no_pings() -> None:
    h = Harness.build(CONFIG)
    h.upstream.queue(stallReply())
    channel, transport = connect(h, message(model="solo", stream=True))
    for _ in range(6):
        h.clock.advance(1)
        h.flush()
    assert b"event: message_start" in transport.value()
    hangUp(channel)
    h.flush()
    assert pending(h) == []
    assert h.upstream.disconnected == 1


def test_head_wait_is_read_per_upstream() -> None:
    h = Harness.build(CONFIG.replace("    timeout: 30\n", "    timeout: 30\n    head_wait: 0\n", 1))
    h.upstream.queue(lateReply(3, sseReply(TEXT_CHUNKS)))
    stream = Stream(h, message(model="solo", stream=True)).at(1)
    assert stream.names() == ["message_start"]  # head_wait 0: at once
    stream.at(3)
    assert stream.names()[-1] == "message_stop"


def test_head_wait_config() -> None:
    config = Config.fromYAML(CONFIG.replace("retries: 0\n", "retries: 0\n    head_wait: 2.5\n", 1))
    assert config.upstreams["main"].policy.headWait == 2.5
    assert config.upstreams["backup"].policy.headWait == 5.0
    with pytest.raises(ConfigError, match="head_wait"):
        Config.fromYAML(CONFIG.replace("retries: 0\n", "retries: 0\n    head_wait: -1\n", 1))
