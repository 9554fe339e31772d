"""Admission of a client's request, driven directly on a Clock: the place it holds
is given back on every way out of its block (an answer, an error, a cancel), a
refused request holds none, a backend that answers later is awaited (and a cancel
while it decides leaves nothing held), budget windows are seeded with exactly the
backend questions they took before.

Through the whole app: test_resilience (limits), test_budgets (budgets, headers)."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock

from ccproxy.config.model import Config
from ccproxy.errors import ProxyError
from ccproxy.state.local import LocalState
from ccproxy.state.model import Admitted, Ask, Decision, Lease, Used, Window
from ccproxy.web.admission import Admission, Standing

CONFIG = """
upstreams:
  up: {url: "http://upstream.test/v1", api_key: sk-up}
models:
  "*": up
prices:
  up: {input: 3, output: 15}
clients:
  - {name: alice, key: alice-key, max_concurrent: 1, requests_per_minute: 5}
  - {name: bob, key: bob-key, budget: {tokens_per_day: 100, cost_per_month: 2}}
  - {name: carol, key: carol-key}
"""


def setup() -> tuple[Config, Clock, LocalState, Admission]:
    config = Config.fromYAML(CONFIG, {})
    clock = Clock()
    clock.advance(10 * 3600)
    state = LocalState(clock)
    return config, clock, state, Admission(state, clock)


def client(config: Config, name: str) -> Any:
    found = config.clientNamed(name)
    assert found is not None
    return found


def run(coroutine: Any) -> Deferred[Any]:
    return Deferred.fromCoroutine(coroutine)


def test_a_place_is_held_for_the_block_and_given_back_after_it() -> None:
    config, _clock, state, admission = setup()
    alice = client(config, "alice")
    seen: list[Any] = []

    async def once() -> None:
        async with admission.admitted(alice, config) as standing:
            seen.append((standing, state.limits["alice"].active))

    run(once())
    assert seen == [(None, 1)]  # no budget: nothing to show or charge
    assert state.limits["alice"].active == 0


def test_a_second_request_over_max_concurrent_is_429_and_holds_nothing() -> None:
    config, _clock, state, admission = setup()
    alice = client(config, "alice")
    gate: Deferred[None] = Deferred()

    async def holding() -> None:
        async with admission.admitted(alice, config):
            await gate

    async def second() -> None:
        async with admission.admitted(alice, config):
            raise AssertionError("let in past max_concurrent")

    first = run(holding())
    refused = run(second())
    failure = refused.result
    refused.addErrback(lambda _: None)
    assert isinstance(failure.value, ProxyError)
    assert failure.value.status == 429
    assert failure.value.errorType == "rate_limit_error"
    assert failure.value.headers == {"retry-after": "1"}
    assert state.limits["alice"].active == 1  # the first one's only
    gate.callback(None)
    assert first.called
    assert state.limits["alice"].active == 0


def test_the_place_is_given_back_when_the_block_fails() -> None:
    config, _clock, state, admission = setup()
    alice = client(config, "alice")

    async def failing() -> None:
        async with admission.admitted(alice, config):
            raise ProxyError(502, "upstream broke", "api_error")

    d = run(failing())
    failure = d.result
    d.addErrback(lambda _: None)
    assert isinstance(failure.value, ProxyError) and failure.value.status == 502
    assert state.limits["alice"].active == 0


def test_the_place_is_given_back_when_the_request_is_cancelled() -> None:
    config, _clock, state, admission = setup()
    alice = client(config, "alice")
    upstream: Deferred[None] = Deferred()

    async def waiting() -> None:
        async with admission.admitted(alice, config):
            await upstream

    d = run(waiting())
    assert state.limits["alice"].active == 1
    d.cancel()
    assert isinstance(d.result.value, CancelledError)
    d.addErrback(lambda _: None)
    assert state.limits["alice"].active == 0


def test_requests_per_minute_counts_only_those_let_in() -> None:
    config, clock, _state, admission = setup()
    alice = client(config, "alice")

    async def once() -> None:
        async with admission.admitted(alice, config):
            pass

    for _ in range(5):
        run(once())
        clock.advance(1)
    refused = run(once())
    assert refused.result.value.status == 429
    assert refused.result.value.headers == {"retry-after": "55"}
    refused.addErrback(lambda _: None)
    clock.advance(55)
    assert run(once()).result is None


class Waiting:
    """A backend that answers later (as Redis does), its questions kept."""

    def __init__(self, state: LocalState) -> None:
        self.local = state
        self.asked: list[Ask] = []
        self.pending: list[Deferred[Decision]] = []
        self.released: list[Lease] = []

    def admit(self, ask: Ask, now: float) -> Deferred[Decision]:
        self.asked.append(ask)
        d: Deferred[Decision] = Deferred()
        self.pending.append(d)
        return d

    def release(self, lease: Lease) -> None:
        self.released.append(lease)
        self.local.release(lease)


def test_a_backend_that_answers_later_is_awaited() -> None:
    config, clock, local, _ = setup()
    backend = Waiting(local)
    admission = Admission(backend, clock)  # type: ignore[arg-type]
    carol = client(config, "carol")
    seen: list[Any] = []

    async def once() -> None:
        async with admission.admitted(carol, config) as standing:
            seen.append(standing)

    d = run(once())
    assert not d.called and seen == []
    backend.pending[0].callback(local.decide(backend.asked[0], clock.seconds()))
    assert d.called and seen == [None]
    assert [lease.client for lease in backend.released] == ["carol"]


def test_a_cancel_while_the_backend_decides_holds_no_place() -> None:
    config, clock, local, _ = setup()
    backend = Waiting(local)
    admission = Admission(backend, clock)  # type: ignore[arg-type]
    carol = client(config, "carol")

    async def once() -> None:
        async with admission.admitted(carol, config):
            raise AssertionError("entered after a cancel")

    d = run(once())
    d.cancel()
    assert isinstance(d.result.value, CancelledError)
    d.addErrback(lambda _: None)
    assert backend.released == []


class Counting:
    """This process's state, its `admit` questions counted."""

    def __init__(self, state: LocalState) -> None:
        self.state = state
        self.asked: list[tuple[Window, ...]] = []

    def admit(self, ask: Ask, now: float) -> Decision:
        self.asked.append(ask.windows)
        return self.state.admit(ask, now)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.state, name)


class Ledger:
    def __init__(self, answer: Any) -> None:
        self.answer = answer

    async def spent(self, client: str, since: float) -> Any:
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


class Spend:
    tokens = 30
    cost = 0.5


def test_budget_windows_are_seeded_one_by_one_then_admitted() -> None:
    config, clock, local, _ = setup()
    counting = Counting(local)
    admission = Admission(counting, clock, Ledger(Spend()))  # type: ignore[arg-type]
    bob = client(config, "bob")
    seen: list[Any] = []

    async def once() -> None:
        async with admission.admitted(bob, config) as standing:
            seen.append(standing)

    run(once())
    # Two windows unseeded: two answers `Unseeded`, then the one that admits.
    assert [len(w) for w in counting.asked] == [2, 2, 2]
    [standing] = seen
    assert isinstance(standing, Standing)
    assert standing.used == (Used(30, 0.5), Used(30, 0.5))
    assert standing.headers()["anthropic-ratelimit-unified-status"] == "allowed"
    assert local.limits["bob"].active == 0
    counting.asked.clear()
    run(once())
    assert [len(w) for w in counting.asked] == [2]  # seeded now: one question


def test_a_ledger_that_fails_leaves_the_budget_unchecked_but_the_windows_kept() -> None:
    config, clock, local, _ = setup()
    counting = Counting(local)
    admission = Admission(counting, clock, Ledger(OSError("down")))  # type: ignore[arg-type]
    bob = client(config, "bob")
    seen: list[Any] = []

    async def once() -> None:
        async with admission.admitted(bob, config) as standing:
            seen.append(standing)

    run(once())
    assert [len(w) for w in counting.asked] == [2, 0]
    [standing] = seen
    assert isinstance(standing, Standing)
    assert len(standing.windows) == 2 and standing.used == ()  # charged, no headers
    assert standing.headers() == {}


def test_over_budget_is_the_billing_error_and_holds_nothing() -> None:
    config, _clock, local, admission = setup()
    bob = client(config, "bob")

    async def once() -> None:
        async with admission.admitted(bob, config) as standing:
            assert standing is not None
            standing.usage = {"input_tokens": 150}
            admission.charge(config, standing, None)

    run(once())
    refused = run(once())
    error = refused.result.value
    refused.addErrback(lambda _: None)
    assert error.status == 429 and error.errorType == "billing_error"
    assert error.headers["x-should-retry"] == "false"
    assert error.headers["anthropic-ratelimit-unified-status"] == "rejected"
    assert local.limits["bob"].active == 0


def test_this_process_s_state_answers_at_once() -> None:
    """No Deferred per request: the admission takes the plain decision."""
    _config, clock, local, _ = setup()
    decision = local.admit(Ask("carol"), clock.seconds())
    assert isinstance(decision, Admitted)
    local.release(decision.lease)
    assert local.limits["carol"].active == 0
    local.release(decision.lease)  # once only
    assert local.limits["carol"].active == 0
