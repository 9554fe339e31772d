"""Large translations run off the reactor thread; small ones stay inline."""

from __future__ import annotations

import sys
import threading
import time

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import deferLater

from ccproxy.errors import ProxyError, invalidRequest
from ccproxy.upstream.offload import SWITCH_INTERVAL, Offload


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


@pytest_twisted.ensureDeferred
async def test_one_job_at_a_time_and_the_turn_outlasts_a_caller_that_left() -> None:
    """A second job waits for the first; a caller that stops waiting does not give
    the turn away while its work still runs (two jobs would halve the reactor's
    share of the interpreter again). The thread switch interval is short while a
    job runs, and comes back after."""
    usual = sys.getswitchinterval()
    offload = Offload(reactor, threshold=0)
    release = threading.Event()
    started: list[str] = []

    def first() -> None:
        started.append("first")
        release.wait(5)

    def second() -> str:
        started.append("second")
        return "done"

    waiting = Deferred.fromCoroutine(offload.run(1, first))
    queued = Deferred.fromCoroutine(offload.run(1, second))
    await deferLater(reactor, 0.05)
    assert started == ["first"] and offload.busy
    assert sys.getswitchinterval() == SWITCH_INTERVAL
    waiting.cancel()  # its client left
    waiting.addErrback(lambda f: f.trap(CancelledError))
    await deferLater(reactor, 0.05)
    assert started == ["first"], "the turn went to another job while the first still ran"
    release.set()
    assert await queued == "done"
    await deferLater(reactor, 0.01)
    assert not offload.busy and sys.getswitchinterval() == usual
