"""Admission limits: per-upstream concurrency with a bounded queue, and per-client
concurrency and request rate.

A gateway that allows N requests at once gets at most N from the whole team; the
rest wait in line (bounded, and not forever). A single client cannot crowd out the
others: past its own limits it gets 429 with `retry-after`.
"""

from __future__ import annotations

import math
from collections import deque

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

from ccproxy.errors import ProxyError


class Slots:
    """At most `limit` holders at once; up to `queueSize` more wait in order."""

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self.active = 0
        self._waiting: deque[Deferred[None]] = deque()

    @property
    def queued(self) -> int:
        return len(self._waiting)

    async def acquire(
        self, limit: int | None, queueSize: int, timeout: float, upstream: str
    ) -> None:
        """Take a slot, waiting up to `timeout` seconds in the queue; 529 when the
        queue is full or the wait is over. Cancelling the wait leaves the queue."""
        if limit is None or (self.active < limit and not self._waiting):
            self.active += 1
            return
        if len(self._waiting) >= queueSize:
            raise _overloaded(upstream, "its queue is full")
        waiter: Deferred[None] = Deferred(lambda d: self._forget(d))
        self._waiting.append(waiter)
        timer = self._clock.callLater(timeout, self._expire, waiter, upstream)
        try:
            await waiter
        finally:
            if timer.active():
                timer.cancel()

    def release(self) -> None:
        """Give a slot back: to the first in line, or to the pool."""
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.called:
                waiter.callback(None)  # the slot passes on; `active` is unchanged
                return
        self.active -= 1

    def _forget(self, waiter: Deferred[None]) -> None:
        if waiter in self._waiting:
            self._waiting.remove(waiter)

    def _expire(self, waiter: Deferred[None], upstream: str) -> None:
        self._forget(waiter)
        if not waiter.called:
            waiter.errback(_overloaded(upstream, "no slot came free in time"))


def _overloaded(upstream: str, why: str) -> ProxyError:
    return ProxyError(529, f"{upstream}: too many requests in flight ({why})", "overloaded_error")


class ClientLimits:
    """Concurrency and requests-per-minute of one client (a sliding one-minute window)."""

    def __init__(self) -> None:
        self.active = 0
        self._recent: deque[float] = deque()

    def admit(
        self, now: float, maxConcurrent: int | None, perMinute: int | None, name: str
    ) -> None:
        """Count a new request in, or refuse it with 429 and a `retry-after`."""
        if maxConcurrent is not None and self.active >= maxConcurrent:
            raise ProxyError(
                429,
                f"client {name!r} already has {self.active} requests in flight "
                f"(limit {maxConcurrent})",
                "rate_limit_error",
                {"retry-after": "1"},
            )
        if perMinute is not None:
            while self._recent and self._recent[0] <= now - 60:
                self._recent.popleft()
            if len(self._recent) >= perMinute:
                wait = math.ceil(self._recent[0] + 60 - now)
                raise ProxyError(
                    429,
                    f"client {name!r} is over its limit of {perMinute} requests per minute",
                    "rate_limit_error",
                    {"retry-after": str(max(wait, 1))},
                )
            self._recent.append(now)
        self.active += 1

    def done(self) -> None:
        self.active -= 1
