"""The client side of a stream: SSE frames written as they come, pings in silence.

Once the first frame is out, the HTTP status is spent: every later failure must be
an `event: error` frame written here, never an exception reaching twisted.web
(which would splice an HTML error page into the stream).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.web.iweb import IRequest

from ccproxy.errors import ProxyError


def encodeEvent(event: dict[str, Any]) -> bytes:
    """One Anthropic SSE frame, with the `event:` line Claude Code requires."""
    return b"event: " + event["type"].encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"


PING = encodeEvent({"type": "ping"})


def startStream(request: IRequest) -> None:
    """Commit to a 200 event stream (headers go out with the first write)."""
    request.setResponseCode(200)
    request.setHeader(b"content-type", b"text/event-stream; charset=utf-8")
    request.setHeader(b"cache-control", b"no-cache")
    request.setHeader(b"x-accel-buffering", b"no")


class EventWriter:
    """Writes Anthropic events to one client, and a ping after each `pingInterval`
    seconds in which nothing was written, so idle timers on the way never fire."""

    def __init__(
        self, request: IRequest, clock: IReactorTime, pingInterval: float, capture: int = 0
    ) -> None:
        self._request = request
        self._clock = clock
        self._interval = pingInterval
        self._timer: IDelayedCall = clock.callLater(pingInterval, self._ping)
        self._capture = capture
        self._captured = 0
        self._copy: list[bytes] = []
        self._pending: list[bytes] = []

    @property
    def copy(self) -> bytes | None:
        """The first `capture` bytes written, for payload logging (None when off)."""
        return b"".join(self._copy) if self._capture else None

    def add(self, events: Iterable[dict[str, Any]]) -> None:
        """Queue events; they go out at the next `flush`. A burst of upstream chunks
        read at once becomes one write (and one HTTP chunk), not one per event."""
        for event in events:
            self._pending.append(encodeEvent(event))

    def write(self, events: Iterable[dict[str, Any]]) -> None:
        """Queue events and send everything queued."""
        self.add(events)
        self.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        frames = self._pending[0] if len(self._pending) == 1 else b"".join(self._pending)
        self._pending = []
        self._request.write(frames)
        if self._timer.active():
            self._timer.reset(self._interval)
        if self._captured < self._capture:
            piece = frames[: self._capture - self._captured]
            self._copy.append(piece)
            self._captured += len(piece)

    def writeError(self, error: ProxyError) -> None:
        """End a started stream with an error Claude Code reads (and retries on)."""
        errorType = "overloaded_error" if error.errorType == "overloaded_error" else "api_error"
        self.write([{"type": "error", "error": {"type": errorType, "message": error.message}}])

    def stop(self) -> None:
        if self._timer.active():
            self._timer.cancel()

    def _ping(self) -> None:
        self._request.write(PING)
        self._timer = self._clock.callLater(self._interval, self._ping)
