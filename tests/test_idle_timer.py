"""`compat.QuickHeaderChannel`'s idle timer, held while a request is served rather
than cancelled and made again: a connection times out when Twisted's `HTTPChannel`
times it out, on the same timelines (a request served quickly or past the idle
time, answered at once, several on one connection, a client gone mid-request)."""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel

from tests.test_plain_head import Fast, Reference

IDLE = 10.0
LATER = b"GET /later HTTP/1.1\r\nHost: x\r\n\r\n"
NOW = b"GET /now HTTP/1.1\r\nHost: x\r\n\r\n"


def timeline(channelType: type[HTTPChannel], steps: list[tuple[float, str]]) -> list[Any]:
    """Run `steps` (at a time: "later"/"now" read, "answer" the held request,
    "lost" the connection) and note, at each step and each second after the last,
    whether the connection was let go, and the timers left at the end."""
    clock = Clock()
    channel: Any = channelType()
    channel.callLater, channel.timeOut = clock.callLater, IDLE  # as HTTPFactory does
    transport = StringTransport()
    channel.makeConnection(transport)
    seen: list[Any] = []
    for at, step in steps:
        clock.advance(at - clock.seconds())
        if step == "later":
            channel.dataReceived(LATER)
        elif step == "now":
            channel.dataReceived(NOW)
        elif step == "answer":
            channel.requests[0].answer()
        elif step == "lost":
            channel.connectionLost(Failure(ConnectionError("gone")))
        seen.append((at, step, transport.disconnecting, transport.value().count(b"200 OK")))
    for _ in range(40):
        clock.advance(1)
        seen.append((clock.seconds(), transport.disconnecting))
    if not transport.disconnecting:
        channel.connectionLost(Failure(ConnectionError("gone")))
    return [*seen, [call.getTime() for call in clock.getDelayedCalls()]]


TIMELINES = [
    [],
    [(3, "now")],
    [(3, "later"), (8, "answer")],  # answered before the idle time
    [(3, "later"), (20, "answer")],  # served past it: not cut meanwhile
    [(3, "later"), (13, "answer")],  # answered as the held timer comes due
    [(3, "later"), (12.5, "answer"), (13.5, "now"), (20, "later"), (45, "answer")],
    [(3, "later"), (5, "lost")],  # the client gone mid-request: no timer left
    [(3, "later"), (30, "lost")],
    [(3, "now"), (9, "now"), (15, "later"), (16, "answer"), (27, "now")],
]


def test_connections_time_out_when_twisted_s_do() -> None:
    for steps in TIMELINES:
        assert timeline(Fast, steps) == timeline(Reference, steps), steps


def test_the_timer_is_held_not_made_again() -> None:
    """While a request is served its connection keeps its one timer; Twisted
    cancels it and makes another for each request."""
    clock = Clock()
    channel: Any = Fast()
    channel.callLater, channel.timeOut = clock.callLater, IDLE
    channel.makeConnection(StringTransport())
    timer = channel._TimeoutMixin__timeoutCall
    for _ in range(3):
        channel.dataReceived(LATER)
        assert clock.getDelayedCalls() == [timer]
        channel.requests[0].answer()
        assert channel._TimeoutMixin__timeoutCall is timer and timer.active()
    channel.connectionLost(Failure(ConnectionError("gone")))
    assert clock.getDelayedCalls() == [] and not timer.active()
