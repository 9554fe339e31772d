"""The ledger's own thread: database calls run there, one at a time, in order.

Why a thread of its own, and not the reactor's pool or `adbapi`: the reactor's
pool also resolves names and translates large requests (`upstream.offload`), and a
database that hangs (a host that vanished, a lock held) must take none of its
threads; `adbapi` reaches for the global reactor and keeps a pool of connections
where one writer is all a batch needs. One thread in order also means a read
queued after a write sees that write. It is a daemon thread: a call stuck in the
database never holds the daemon's exit (the rows it held are counted as lost).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.python.failure import Failure

T = TypeVar("T")


class Runner(Protocol):
    """Runs blocking calls somewhere that is not the reactor thread (or inline, in
    tests on a `Clock`)."""

    def run(self, fn: Callable[..., T], *args: Any) -> Deferred[T]: ...

    def start(self) -> None: ...

    def stop(self) -> None: ...


class Worker:
    """One daemon thread running calls in the order they were given.

    The Deferred of a call fires in the reactor thread. Cancelling it stops the
    wait at once; the call itself runs to its end, and its result is dropped.
    """

    def __init__(self, reactor: Any, name: str = "ccproxy-ledger") -> None:
        self._reactor = reactor
        self._name = name
        self._calls: queue.SimpleQueue[
            tuple[Callable[..., Any], tuple[Any, ...], Deferred[Any]] | None
        ]
        self._calls = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def run(self, fn: Callable[..., T], *args: Any) -> Deferred[T]:
        done: Deferred[T] = Deferred()
        self._calls.put((fn, args, done))
        return done

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name=self._name, daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """End the thread once it has run the calls already given (without waiting)."""
        if self._thread is not None:
            self._calls.put(None)
            self._thread = None

    def _work(self) -> None:
        while True:
            call = self._calls.get()
            if call is None:
                return
            fn, args, done = call
            try:
                result = fn(*args)
            except BaseException:
                self._reactor.callFromThread(done.errback, Failure())
            else:
                self._reactor.callFromThread(done.callback, result)


class Inline:
    """Runs each call at once, in the caller's thread: for tests on a `Clock`."""

    def run(self, fn: Callable[..., T], *args: Any) -> Deferred[T]:
        return maybeDeferred(fn, *args)

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass
