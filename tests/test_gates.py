"""The shared state objects on their own, on a Clock: `Breaker`, `Slots` and
`ClientLimits`, each holding its own policy."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock

from ccproxy.config.model import Client
from ccproxy.config.policy import Policy
from ccproxy.errors import ProxyError
from ccproxy.state.breaker import CLOSED, HALF_OPEN, OPEN, Breaker
from ccproxy.state.local import ClientLimits
from ccproxy.upstream.slots import Slots
from tests.support.harness import fired, resultOf

# -- Breaker -----------------------------------------------------------------------

POLICY = Policy(breakerFailures=3, breakerCooldown=30.0)


def play(breaker: Breaker, clock: Clock, steps: str) -> list[Any]:
    """Runs `steps` (space-separated: f failed, s succeeded, r released, a allow,
    +N advance N s) and returns what each `a` answered."""
    answers: list[Any] = []
    for step in steps.split():
        if step == "f":
            breaker.failed()
        elif step == "s":
            breaker.succeeded()
        elif step == "r":
            breaker.released()
        elif step == "a":
            answers.append(breaker.allow())
        else:
            clock.advance(float(step[1:]))
    return answers


@pytest.mark.parametrize(
    ("steps", "answers", "state"),
    [
        ("a", [True], CLOSED),
        ("f f a", [True], CLOSED),
        ("f f f a", [False], OPEN),
        ("f s f f a", [True], CLOSED),  # a success starts the count over
        ("f f f +29 a", [False], OPEN),
        ("f f f +30 a a", [True, False], HALF_OPEN),  # one trial at a time
        ("f f f +30 a s a", [True, True], CLOSED),
        ("f f f +30 a f a", [True, False], OPEN),  # a failed trial opens it again
        ("f f f +30 a f +30 a", [True, True], HALF_OPEN),
        ("f f f +30 a r a", [True, True], HALF_OPEN),  # a trial with no verdict frees it
    ],
)
def test_breaker(steps: str, answers: list[bool], state: str) -> None:
    clock = Clock()
    breaker = Breaker(clock.seconds, POLICY)
    assert play(breaker, clock, steps) == answers
    assert breaker.state == state


def test_breaker_retry_in_counts_down_the_cooldown() -> None:
    clock = Clock()
    breaker = Breaker(clock.seconds, POLICY)
    play(breaker, clock, "f f f +12")
    assert breaker.retryIn() == 18.0


def test_breaker_takes_a_reloaded_policy() -> None:
    clock = Clock()
    breaker = Breaker(clock.seconds, POLICY)
    play(breaker, clock, "f")
    breaker.policy = Policy(breakerFailures=2, breakerCooldown=5.0)
    assert play(breaker, clock, "f a +5 a") == [False, True]


# -- Slots --------------------------------------------------------------------------


def slots(clock: Clock, limit: int | None = 1, queue: int = 1, timeout: float = 5.0) -> Slots:
    return Slots(clock, Policy(maxConcurrent=limit, queueSize=queue, queueTimeout=timeout), "up")


def take(s: Slots) -> Deferred[None]:
    return Deferred.fromCoroutine(s.acquire())


def test_slots_without_a_limit_never_wait() -> None:
    s = slots(Clock(), limit=None)
    assert all(fired(take(s)) for _ in range(50))
    assert s.active == 50


def test_slots_queue_then_refuse_when_the_queue_is_full() -> None:
    s = slots(Clock())
    first, second = take(s), take(s)
    assert fired(first) and not fired(second)
    assert (s.active, s.queued) == (1, 1)
    with pytest.raises(ProxyError) as e:
        resultOf(take(s))
    assert (e.value.status, e.value.errorType) == (529, "overloaded_error")
    assert "queue is full" in e.value.message
    s.release()  # the slot passes to the one in line
    assert fired(second)
    assert (s.active, s.queued) == (1, 0)
    s.release()
    assert s.active == 0


def test_a_wait_past_the_queue_timeout_is_529() -> None:
    clock = Clock()
    s = slots(clock)
    take(s)
    waiting = take(s)
    clock.advance(5.0)
    with pytest.raises(ProxyError) as e:
        resultOf(waiting)
    assert "no slot came free in time" in e.value.message
    assert (s.active, s.queued) == (1, 0)


def test_a_cancelled_wait_leaves_the_queue() -> None:
    clock = Clock()
    s = slots(clock)
    take(s)
    waiting = take(s)
    waiting.cancel()
    with pytest.raises(CancelledError):
        resultOf(waiting)
    assert s.queued == 0
    s.release()
    assert s.active == 0
    assert clock.getDelayedCalls() == []


def test_a_reload_that_raises_the_limit_lets_waiters_in() -> None:
    s = slots(Clock(), queue=5)
    take(s)
    waiting = [take(s), take(s)]
    s.reconfigure(Policy(maxConcurrent=3, queueSize=5))
    assert all(fired(d) for d in waiting)
    assert (s.active, s.queued) == (3, 0)


# -- ClientLimits -------------------------------------------------------------------


def client(concurrent: int | None = None, perMinute: int | None = None) -> Client:
    return Client("alice", "k", maxConcurrent=concurrent, requestsPerMinute=perMinute)


def refused(limits: ClientLimits, now: float, who: Client) -> ProxyError | None:
    try:
        with limits.admitted(now, who):
            return None
    except ProxyError as e:
        return e


def test_a_refused_request_holds_no_place() -> None:
    """The bypass: a refused request used to give back a place it never took, so a
    client limited to 2 got 3, 4, … at once in later rounds."""
    limits = ClientLimits()
    alice = client(concurrent=2)
    held = [limits.admitted(0, alice) for _ in range(2)]
    for h in held:
        h.__enter__()
    for _ in range(5):
        e = refused(limits, 0, alice)
        assert e is not None and e.status == 429 and e.headers == {"retry-after": "1"}
    assert limits.active == 2
    held[0].__exit__(None, None, None)
    assert limits.active == 1
    assert refused(limits, 0, alice) is None  # one place came free, and only one
    held[1].__exit__(None, None, None)
    assert limits.active == 0


@pytest.mark.parametrize(
    ("times", "expected"),
    [
        ([0, 1, 2], [None, None, None]),
        ([0, 1, 2, 3], [None, None, None, 57]),  # retry-after: until the oldest leaves
        ([0, 1, 2, 60], [None, None, None, None]),  # a sliding window
        ([0, 1, 2, 3, 3], [None, None, None, 57, 57]),  # refused ones do not count
    ],
)
def test_requests_per_minute(times: list[float], expected: list[int | None]) -> None:
    limits = ClientLimits()
    alice = client(perMinute=3)
    got = []
    for now in times:
        e = refused(limits, now, alice)
        got.append(None if e is None else int(e.headers["retry-after"]))
    assert got == expected
