"""Per-upstream concurrency with a bounded queue.

A gateway that allows N requests at once gets at most N from the whole team; the
rest wait in line (bounded, and not forever).
"""

from __future__ import annotations

from collections import deque

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

from ccproxy.config.policy import Policy
from ccproxy.errors import ProxyError


class Slots:
    """At most `policy.maxConcurrent` holders at once; up to `policy.queueSize`
    more wait in order, each for at most `policy.queueTimeout` seconds.

    The policy is given once and again on reload (`reconfigure`), so that callers
    only take and give back.
    """

    def __init__(self, clock: IReactorTime, policy: Policy, upstream: str) -> None:
        self._clock = clock
        self.policy = policy
        self._upstream = upstream
        self.active = 0
        self._waiting: deque[Deferred[None]] = deque()

    @property
    def queued(self) -> int:
        return len(self._waiting)

    def reconfigure(self, policy: Policy) -> None:
        """Take a reloaded policy; a higher limit lets waiters in at once."""
        self.policy = policy
        while self._waiting and self._hasRoom():
            waiter = self._waiting.popleft()
            if not waiter.called:
                self.active += 1
                waiter.callback(None)

    async def acquire(self) -> None:
        """Take a slot, waiting up to `queueTimeout` seconds in the queue; 529 when
        the queue is full or the wait is over. Cancelling the wait leaves the queue."""
        if self._hasRoom() and not self._waiting:
            self.active += 1
            return
        if len(self._waiting) >= self.policy.queueSize:
            raise _overloaded(self._upstream, "its queue is full")
        waiter: Deferred[None] = Deferred(lambda d: self._forget(d))
        self._waiting.append(waiter)
        timer = self._clock.callLater(self.policy.queueTimeout, self._expire, waiter)
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

    def _hasRoom(self) -> bool:
        limit = self.policy.maxConcurrent
        return limit is None or self.active < limit

    def _forget(self, waiter: Deferred[None]) -> None:
        if waiter in self._waiting:
            self._waiting.remove(waiter)

    def _expire(self, waiter: Deferred[None]) -> None:
        self._forget(waiter)
        if not waiter.called:
            waiter.errback(_overloaded(self._upstream, "no slot came free in time"))


def _overloaded(upstream: str, why: str) -> ProxyError:
    return ProxyError(529, f"{upstream}: too many requests in flight ({why})", "overloaded_error")
