"""Pure CPU work on a large request, off the reactor thread, one job at a time.

Translating a request costs time in proportion to its size: a 30 MiB body (the
default `max_body_bytes` is 32 MiB) takes some 0.2 s to translate. On the reactor
thread that is a freeze for every other user; in a thread, the reactor keeps
answering meanwhile. Two things keep that true, both measured with
`python -m bench.soak --hostile` (a caller sending 30 MiB bodies in a loop beside
300 normal streams):

- One job at a time. Every job holds the interpreter's lock while it runs; two
  would leave the reactor a third of it, ten a tenth. The rest wait their turn.
- While a job runs, the interpreter switches threads every 0.5 ms instead of 5 ms.
  The reactor gives the lock up at every socket call and must win it back each
  time; at 5 ms a turn, that wait dominated every request (a small request's
  round trip went from 0.04 ms to 16 ms at p99; at 0.5 ms, 2.9 ms). The usual
  interval comes back when no job runs, so a quiet daemon pays nothing.

Small work stays inline: a thread hop costs more than it saves. It lives beside
the dispatcher, its lowest user; the web layer uses it too.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, TypeVar

from attrs import define, field
from twisted.internet.defer import DeferredLock
from twisted.internet.threads import deferToThreadPool

T = TypeVar("T")

THRESHOLD = 1024 * 1024
"""Bytes of request body from which its translation goes to a thread."""
SWITCH_INTERVAL = 0.0005
"""Seconds between the interpreter's thread switches while a job runs."""


@define
class Offload:
    """Runs `fn` in the reactor's thread pool when `size` is large, inline else.

    Without a reactor (the in-memory tests), everything runs inline.
    """

    reactor: Any = None
    threshold: int = THRESHOLD
    _turn: DeferredLock = field(factory=DeferredLock, init=False)
    _usualInterval: float | None = field(default=None, init=False)

    async def run(self, size: int, fn: Callable[..., T], *args: Any) -> T:
        if self.reactor is None or size < self.threshold:
            return fn(*args)
        await self._turn.acquire()
        self._usualInterval = sys.getswitchinterval()
        sys.setswitchinterval(SWITCH_INTERVAL)
        result: T = await deferToThreadPool(
            self.reactor, self.reactor.getThreadPool(), self._job, fn, args
        )
        return result

    @property
    def busy(self) -> bool:
        """Whether a job is running (or waiting for its turn)."""
        return bool(self._turn.locked)

    def _job(self, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        """In the thread: the work, then the turn given back from the reactor. Not
        when the caller stops waiting (a client that left): the work goes on until
        it ends, and holds the turn until then."""
        try:
            return fn(*args)
        finally:
            self.reactor.callFromThread(self._release)

    def _release(self) -> None:
        if self._usualInterval is not None:
            sys.setswitchinterval(self._usualInterval)
        self._turn.release()
