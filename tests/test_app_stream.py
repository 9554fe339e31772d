"""Streaming through the app in memory: the event stream Claude Code gets."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.fakes import completion, jsonReply, rawReply, sseReply, stallReply, toolCall
from tests.support.harness import BASE_CONFIG, Harness, fired, message, parseSSE, resultOf


def chunk(
    delta: dict[str, Any] | None = None, finish: str | None = None, **extra: Any
) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": delta or {}, "finish_reason": finish}], **extra}


TEXT_CHUNKS = [
    chunk({"role": "assistant", "content": None}),
    chunk({"content": "Hel"}),
    chunk({"content": "lo ✓"}),
    chunk(finish="stop"),
    {"choices": [], "usage": {"prompt_tokens": 20, "completion_tokens": 2}},
]

TOOL_CHUNKS = [
    chunk({"role": "assistant", "content": "Let me look."}),
    chunk(
        {
            "tool_calls": [
                {
                    "index": 0,
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "Read", "arguments": ""},
                }
            ]
        }
    ),
    chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"file_'}}]}),
    chunk({"tool_calls": [{"index": 0, "function": {"arguments": 'path": "/tmp/a"}'}}]}),
    chunk(finish="tool_calls"),
    {"choices": [], "usage": {"prompt_tokens": 30, "completion_tokens": 9}},
]


def streamed(h: Harness, *replies: Any, **extra: Any) -> tuple[Any, list[tuple[str, Any]]]:
    h.upstream.queue(*replies)
    reply = h.post(message(stream=True, **extra))
    return reply, parseSSE(reply.body) if reply.status == 200 else []


def names(frames: list[tuple[str, Any]]) -> list[str]:
    return [name for name, _ in frames]


def test_text_stream() -> None:
    h = Harness.build()
    reply, frames = streamed(h, sseReply(TEXT_CHUNKS))
    assert reply.status == 200
    assert reply.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert reply.headers["cache-control"] == "no-cache"
    assert reply.headers["x-accel-buffering"] == "no"  # nginx on the way: not buffered
    assert names(frames) == [
        "message_start",
        "content_block_start",
        "content_block_delta",  # both deltas came in one read: joined, in one delta
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    for name, data in frames:
        assert data["type"] == name  # the event line and the payload agree
    start = frames[0][1]["message"]
    assert start["model"] == "claude-sonnet-4-5"
    assert start["id"].startswith("msg_req_")
    assert "usage" in start
    assert "".join(d["delta"]["text"] for n, d in frames if n == "content_block_delta") == "Hello ✓"
    delta = frames[-2][1]
    assert delta["delta"]["stop_reason"] == "end_turn"
    assert delta["usage"]["input_tokens"] == 20
    assert delta["usage"]["output_tokens"] == 2
    sent = h.upstream.last
    assert sent["stream"] is True
    assert sent["stream_options"] == {"include_usage": True}


def test_tool_stream_fragments_arrive_as_input_json_deltas() -> None:
    h = Harness.build()
    _, frames = streamed(h, sseReply(TOOL_CHUNKS))
    starts = [d for n, d in frames if n == "content_block_start"]
    assert [s["content_block"]["type"] for s in starts] == ["text", "tool_use"]
    assert starts[1]["content_block"] == {
        "type": "tool_use",
        "id": "call_1",
        "name": "Read",
        "input": {},
    }
    fragments = [
        d["delta"]["partial_json"]
        for n, d in frames
        if n == "content_block_delta" and d["delta"]["type"] == "input_json_delta"
    ]
    assert fragments == ['{"file_path": "/tmp/a"}']  # the fragments of one read, joined
    assert frames[-2][1]["delta"]["stop_reason"] == "tool_use"


def test_stream_usage_option_can_be_turned_off() -> None:
    h = Harness.build(
        BASE_CONFIG.replace("    timeout: 30\n", "    timeout: 30\n    stream_usage: false\n")
    )
    streamed(h, sseReply(TEXT_CHUNKS))
    assert "stream_options" not in h.upstream.last
    assert h.upstream.last["stream"] is True


@pytest.mark.parametrize(
    ("reply", "status", "errorType"),
    [
        (
            jsonReply({"error": {"message": "slow down"}}, 429, {"retry-after": "3"}),
            429,
            "rate_limit_error",
        ),
        (rawReply(b"<html><title>Bad gateway</title></html>", 502, "text/html"), 502, "api_error"),
        (jsonReply({"error": {"message": "overloaded"}}, 529), 529, "overloaded_error"),
        (
            jsonReply({"error": {"message": "context length", "code": 400}}),
            400,
            "invalid_request_error",
        ),
    ],
)
def test_errors_before_the_stream_keep_their_status(
    reply: Any, status: int, errorType: str
) -> None:
    h = Harness.build()
    result, _ = streamed(h, reply)
    assert result.status == status
    assert result.headers["content-type"] == "application/json"
    assert result.json()["error"]["type"] == errorType
    if status == 429:
        assert result.headers["retry-after"] == "3"


def test_json_completion_for_a_stream_request_is_streamed() -> None:
    h = Harness.build()
    answer = completion("Hi", [toolCall("Bash", {"command": "ls"}, "c1")], "tool_calls")
    reply, frames = streamed(h, jsonReply(answer))
    assert reply.status == 200
    assert names(frames)[0] == "message_start"
    assert names(frames)[-1] == "message_stop"
    tool = [
        d
        for n, d in frames
        if n == "content_block_delta" and d["delta"]["type"] == "input_json_delta"
    ]
    assert tool[0]["delta"]["partial_json"] == '{"command":"ls"}'


@pytest.mark.parametrize(
    ("chunks", "done", "errorType", "fragment"),
    [
        (
            [chunk({"content": "Hi"}), {"error": {"message": "CUDA out of memory", "code": 500}}],
            False,
            "api_error",
            "CUDA out of memory",
        ),
        (
            [chunk({"content": "Hi"}), {"error": {"message": "busy", "code": 503}}],
            False,
            "overloaded_error",
            "busy",
        ),
        ([chunk({"content": "Hi"})], False, "api_error", "before finishing"),
        ([chunk({"content": "Hi"}), b"data: {not json\n\n"], True, "api_error", "not JSON"),
        ([chunk({"content": "Hi"}), chunk(finish="error")], True, "api_error", "error"),
    ],
)
def test_failures_after_the_stream_started_end_it_with_an_error_event(
    chunks: list[Any], done: bool, errorType: str, fragment: str
) -> None:
    h = Harness.build()
    reply, frames = streamed(h, sseReply(chunks, done=done))
    assert reply.status == 200
    assert names(frames)[0] == "message_start"
    assert "message_stop" not in names(frames)
    assert names(frames)[-1] == "error"
    error = frames[-1][1]
    assert error["type"] == "error"
    assert error["error"]["type"] == errorType
    assert fragment in error["error"]["message"]
    assert b"<html" not in reply.body.lower()
    assert b"Traceback" not in reply.body
    assert h.post(message()).status == 200  # and the next request is fine


def test_pings_fill_silence() -> None:
    h = Harness.build(BASE_CONFIG + "ping_interval: 10\n")
    h.upstream.queue(
        sseReply([chunk({"content": "a"}), chunk({"content": "b"}, finish="stop")], delay=25)
    )
    d = h.request("POST", "/v1/messages", message(stream=True))
    for _ in range(80):
        h.clock.advance(1)
        h.flush()
    frames = parseSSE(resultOf(d).body)
    # Chunks at 25 and 50 s, [DONE] at 75 s: pings at 10, 20, 35, 45, 60 and 70 s.
    assert names(frames) == [
        "message_start",
        "ping",
        "ping",
        "content_block_start",
        "content_block_delta",
        "ping",
        "ping",
        "content_block_delta",
        "ping",
        "ping",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert frames[1][1] == {"type": "ping"}


def test_silence_mid_stream_past_timeout_is_an_error_event() -> None:
    h = Harness.build()  # upstream timeout 30 s
    h.upstream.queue(
        sseReply([chunk({"content": "a"}), chunk({"content": "b"}, finish="stop")], delay=40)
    )
    d = h.request("POST", "/v1/messages", message(stream=True))
    h.flush()
    for _ in range(29):
        h.clock.advance(1)
        h.flush()
    assert not fired(d)  # headers in at 0 s, first chunk due at 40 s: silent for 29 s so far
    h.clock.advance(1)
    h.flush()
    frames = parseSSE(resultOf(d).body)
    assert names(frames)[-1] == "error"
    assert "no data for 30 s" in frames[-1][1]["error"]["message"]
    assert "message_stop" not in names(frames)
    assert h.upstream.disconnected == 1


def test_silence_before_headers_is_504() -> None:
    """With a `head_wait` past the timeout (the status is kept that long): a 504.
    With the default, the stream is committed first (tests/test_head_wait.py)."""
    h = Harness.build(
        BASE_CONFIG.replace("    retries: 0\n", "    retries: 0\n    head_wait: 60\n", 1)
    )
    h.upstream.queue(stallReply())
    d = h.request("POST", "/v1/messages", message(stream=True))
    h.clock.advance(30)
    h.flush()
    reply = resultOf(d)
    assert reply.status == 504
    assert reply.json()["error"]["type"] == "api_error"
