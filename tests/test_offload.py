"""Large translations run off the reactor thread; small ones stay inline."""

from __future__ import annotations

import threading
import time

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred

from ccproxy.errors import ProxyError, invalidRequest
from ccproxy.upstream.offload import Offload


def whichThread() -> str:
    return threading.current_thread().name


@pytest_twisted.ensureDeferred
async def test_large_work_runs_in_a_thread_and_small_work_inline() -> None:
    offload = Offload(reactor, threshold=1000)
    assert await offload.run(999, whichThread) == threading.current_thread().name
    assert await offload.run(1000, whichThread) != threading.current_thread().name


@pytest_twisted.ensureDeferred
async def test_a_refusal_in_a_thread_arrives_as_itself() -> None:
    def refuse() -> None:
        raise invalidRequest("messages: must hold at least one message")

    with pytest.raises(ProxyError) as e:
        await Offload(reactor, threshold=0).run(1, refuse)
    assert e.value.status == 400


@pytest_twisted.ensureDeferred
async def test_the_reactor_keeps_turning_while_a_thread_works() -> None:
    """What offloading is for: a timer due during the work fires before it ends."""
    fired: list[bool] = []
    stop = threading.Event()

    def work() -> bool:
        """Spins (holding the interpreter's lock but for its switch interval) until
        the reactor's timer says stop; gives up after 5 s, as it would inline."""
        give_up = time.monotonic() + 5
        while not stop.is_set() and time.monotonic() < give_up:
            pass
        return stop.is_set()

    tick: Deferred[None] = Deferred()
    reactor.callLater(0.05, lambda: (fired.append(True), stop.set(), tick.callback(None)))
    assert await Offload(reactor, threshold=0).run(1, work), "the reactor never got a turn"
    await tick
    assert fired == [True]


def test_without_a_reactor_everything_is_inline() -> None:
    d = Deferred.fromCoroutine(Offload().run(10**9, whichThread))
    assert d.result == threading.current_thread().name
