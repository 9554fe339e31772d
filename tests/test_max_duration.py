"""`max_duration` bounds a request by default: a gateway that trickles a token just
often enough to beat `timeout` would otherwise hold a stream (its client, its
connection and its place in the client's limits) for ever."""

from __future__ import annotations

from typing import Any

import pytest

from ccproxy.config import Config
from tests.support.fakes import sseReply
from tests.support.harness import BASE_CONFIG, Harness, message, parseSSE


def trickle(h: Harness) -> list[bytes]:
    """Start a stream whose upstream sends a token every 20 s (under its 30 s
    timeout) for over two hours; the list gets the client's body when it ends."""
    chunks = [{"choices": [{"index": 0, "delta": {"content": "."}}]} for _ in range(400)]
    h.upstream.queue(sseReply(chunks, delay=20))
    ended: list[bytes] = []
    h.request("POST", "/v1/messages", message(stream=True)).addCallback(
        lambda reply: ended.append(reply.body)
    )
    h.flush()
    return ended


def advance(h: Harness, seconds: int) -> None:
    for _ in range(seconds // 20):
        h.clock.advance(20)
        h.flush()


def test_a_trickling_stream_ends_after_an_hour_by_default() -> None:
    h = Harness.build()
    ended = trickle(h)
    advance(h, 3580)
    assert not ended  # still streaming just before the hour
    advance(h, 40)
    frames = parseSSE(ended[0])
    assert frames[-1][0] == "error"
    assert "longer than 3600 s" in str(frames[-1][1])
    assert sum(1 for name, _ in frames if name == "content_block_delta") == 179
    assert h.upstream.disconnected == 1
    assert h.app.inFlight == 0


def test_zero_turns_it_off() -> None:
    h = Harness.build(BASE_CONFIG + "max_duration: 0\n")
    ended = trickle(h)
    advance(h, 3 * 3600)
    assert ended and parseSSE(ended[0])[-1][0] == "message_stop"  # all 400 tokens


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("", 3600.0),
        ("max_duration: ~\n", 3600.0),
        ("max_duration: 0\n", None),
        ("max_duration: 90\n", 90.0),
    ],
)
def test_the_key_reads(line: str, expected: Any) -> None:
    assert Config.fromYAML(BASE_CONFIG + line, {}).maxDuration == expected
