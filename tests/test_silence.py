"""`Silence`, the upstream's silence timeout: a reset only notes the time, and the
timer is set again for the rest when it fires early; `expire` must still come
exactly `seconds` after the last reset, never sooner, never later, once."""

from __future__ import annotations

from twisted.internet.task import Clock

from ccproxy.upstream.client import Silence

SECONDS = 30.0


def _silence() -> tuple[Clock, Silence, list[float]]:
    clock = Clock()
    fired: list[float] = []
    return clock, Silence(clock, SECONDS, lambda: fired.append(clock.seconds())), fired


def test_expiresAfterItsSecondsWithoutReset() -> None:
    clock, silence, fired = _silence()
    clock.advance(SECONDS - 0.001)
    assert fired == [] and not silence.expired
    clock.advance(0.001)
    assert fired == [SECONDS] and silence.expired


def test_expiresExactlyItsSecondsAfterTheLastReset() -> None:
    clock, silence, fired = _silence()
    for _ in range(5):  # resets spread over more than one first timer's span
        clock.advance(10)
        silence.reset()
    last = clock.seconds()
    clock.advance(SECONDS - 0.5)
    assert fired == []
    clock.advance(0.499)
    assert fired == []
    clock.advance(0.001)
    assert fired == [last + SECONDS]
    clock.advance(10 * SECONDS)
    assert fired == [last + SECONDS]  # once
    assert clock.getDelayedCalls() == []


def test_aResetJustBeforeTheTimerKeepsItWaiting() -> None:
    clock, silence, fired = _silence()
    clock.advance(SECONDS - 1)
    silence.reset()
    clock.advance(1)  # the first timer fires: one second of silence only
    assert fired == [] and not silence.expired
    assert len(clock.getDelayedCalls()) == 1
    clock.advance(SECONDS - 1.5)
    assert fired == []
    clock.advance(0.5)
    assert fired == [2 * SECONDS - 1]


def test_resetsInEveryRound() -> None:
    """A steady trickle never expires, however many times the timer is set again."""
    clock, silence, fired = _silence()
    for _ in range(100):
        clock.advance(SECONDS / 3)
        silence.reset()
        assert len(clock.getDelayedCalls()) == 1
    assert fired == []


def test_cancelStopsItBeforeAndAfterItIsSetAgain() -> None:
    clock, silence, fired = _silence()
    silence.cancel()
    clock.advance(10 * SECONDS)
    assert fired == []
    clock, silence, fired = _silence()
    clock.advance(SECONDS - 1)
    silence.reset()
    clock.advance(1)  # set again for the rest
    silence.cancel()
    assert clock.getDelayedCalls() == []
    clock.advance(10 * SECONDS)
    assert fired == [] and not silence.expired


def test_aClockSteppedBackWaitsNoLongerThanItsSeconds() -> None:
    clock, silence, fired = _silence()
    clock.advance(SECONDS - 1)
    clock.rightNow += 1000  # the wall clock jumps ahead for the reset...
    silence.reset()
    clock.rightNow -= 1000  # ...and back
    clock.advance(1)
    clock.advance(SECONDS)
    assert fired == [2 * SECONDS]
