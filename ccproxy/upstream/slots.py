"""Per-upstream concurrency with a bounded queue.

A gateway that allows N requests at once gets at most N from the whole team; the
rest wait in line (bounded, and not forever).
"""

from __future__ import annotations

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
