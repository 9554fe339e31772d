"""Admission of a client's request, driven directly on a Clock: the place it holds
is given back on every way out of its block (an answer, an error, a cancel), a
refused request holds none, a backend that answers later is awaited (and a cancel
while it decides leaves nothing held), budget windows are seeded with exactly the
backend questions they took before.

Through the whole app: test_resilience (limits), test_budgets (budgets, headers)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock

from ccproxy.config.model import Config
from ccproxy.errors import ProxyError
from ccproxy.state.local import LocalState
from ccproxy.state.model import Admitted, Ask, Decision, Lease, Used, Window
from ccproxy.web.admission import Admission, Standing
from ccproxy.web.site import ProxySite
from tests.support.fakes import completion, jsonReply, stallReply
from tests.support.harness import Harness, message
from tests.test_site import Conn, _oneRead

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


def forAlice() -> tuple[Config, LocalState, Admission, Any]:
    """`setup`'s, for alice (`max_concurrent: 1`, five requests a minute, no budget)."""
    config, _clock, state, admission = setup()
    return config, state, admission, client(config, "alice")


def client(config: Config, name: str) -> Any:
    found = config.clientNamed(name)
    assert found is not None
    return found


def run(coroutine: Any) -> Deferred[Any]:
    return Deferred.fromCoroutine(coroutine)


def failed(d: Deferred[Any]) -> Any:
    """The exception `d` failed with (handled)."""
    failure = d.result
    d.addErrback(lambda _: None)
    return failure.value


async def block(admission: Admission, who: Any, config: Config, inside: Any = None) -> None:
    """A request's block within `admission.admitted`: `inside` awaited there (a
    Deferred), or raised (an exception)."""
    async with admission.admitted(who, config):
        if isinstance(inside, BaseException):
            raise inside
        if inside is not None:
            await inside


def test_a_place_is_held_for_the_block_and_given_back_after_it() -> None:
    config, state, admission, alice = forAlice()
    seen: list[Any] = []

    async def once() -> None:
        async with admission.admitted(alice, config) as standing:
            seen.append((standing, state.limits["alice"].active))

    run(once())
    assert seen == [(None, 1)]  # no budget: nothing to show or charge
    assert state.limits["alice"].active == 0


def test_a_second_request_over_max_concurrent_is_429_and_holds_nothing() -> None:
    config, state, admission, alice = forAlice()
    gate: Deferred[None] = Deferred()
    first = run(block(admission, alice, config, gate))
    error = failed(run(block(admission, alice, config, AssertionError("let in past the limit"))))
    assert isinstance(error, ProxyError)
    assert error.status == 429
    assert error.errorType == "rate_limit_error"
    assert error.headers == {"retry-after": "1"}
    assert state.limits["alice"].active == 1  # the first one's only
    gate.callback(None)
    assert first.called
    assert state.limits["alice"].active == 0


def test_the_place_is_given_back_when_the_block_fails() -> None:
    config, state, admission, alice = forAlice()
    error = failed(run(block(admission, alice, config, ProxyError(502, "broke", "api_error"))))
    assert isinstance(error, ProxyError) and error.status == 502
    assert state.limits["alice"].active == 0


def test_the_place_is_given_back_when_the_request_is_cancelled() -> None:
    config, state, admission, alice = forAlice()
    upstream: Deferred[None] = Deferred()
    d = run(block(admission, alice, config, upstream))
    assert state.limits["alice"].active == 1
    d.cancel()
    assert isinstance(failed(d), CancelledError)
    assert state.limits["alice"].active == 0


def test_requests_per_minute_counts_only_those_let_in() -> None:
    config, clock, _state, admission = setup()
    alice = client(config, "alice")
    for _ in range(5):
        run(block(admission, alice, config))
        clock.advance(1)
    refused = failed(run(block(admission, alice, config)))
    assert refused.status == 429
    assert refused.headers == {"retry-after": "55"}
    clock.advance(55)
    assert run(block(admission, alice, config)).result is None


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
    assert isinstance(failed(d), CancelledError)
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


def forBob(spent: Any) -> tuple[Counting, LocalState, list[Any], Any]:
    """Bob's request (two budget windows), admitted with a ledger that answers
    `spent`, through a state that keeps its questions: what `once` saw."""
    config, clock, local, _ = setup()
    counting = Counting(local)
    admission = Admission(counting, clock, Ledger(spent))  # type: ignore[arg-type]
    bob = client(config, "bob")
    seen: list[Any] = []

    async def once() -> None:
        async with admission.admitted(bob, config) as standing:
            seen.append(standing)

    return counting, local, seen, once


def test_budget_windows_are_seeded_one_by_one_then_admitted() -> None:
    counting, local, seen, once = forBob(Spend())
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
    counting, _local, seen, once = forBob(OSError("down"))
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
    error = failed(run(once()))
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


# -- through the site and the app: the place comes back however the request ends ----------

APP = """
upstreams:
  up: {url: "http://upstream.test/v1", api_key: sk-up, retries: 0}
models:
  "*": up
max_duration: 30
clients:
  - {name: alice, key: alice-key, max_concurrent: 1}
"""


def _app() -> tuple[Harness, ProxySite, LocalState]:
    h = Harness.build(APP)
    state = h.app.messagesAPI.admission.state
    assert isinstance(state, LocalState)
    return h, ProxySite.serving(h.app, h.clock, maxConnections=5), state


@pytest.mark.parametrize("stream", [False, True])
def test_a_client_that_leaves_gives_its_place_back(stream: bool) -> None:
    h, site, state = _app()
    h.upstream.queue(stallReply(), jsonReply(completion("hi")))
    conn = Conn(site).send(_oneRead(orjson.dumps(message(stream=stream))))
    h.flush()
    assert state.limits["alice"].active == 1
    conn.close()
    h.flush()
    assert state.limits["alice"].active == 0
    again = Conn(site).send(_oneRead(orjson.dumps(message())))
    h.flush()
    assert again.status() == 200
    assert state.limits["alice"].active == 0


@pytest.mark.parametrize("stream", [False, True])
def test_a_request_over_its_max_duration_gives_its_place_back(stream: bool) -> None:
    h, site, state = _app()
    h.upstream.queue(stallReply())
    conn = Conn(site).send(_oneRead(orjson.dumps(message(stream=stream))))
    h.flush()
    assert state.limits["alice"].active == 1
    h.clock.advance(30)
    h.flush()
    assert conn.status() == 504 if not stream else conn.status() == 200
    assert state.limits["alice"].active == 0


@pytest.mark.parametrize("stream", [False, True])
def test_a_failed_answer_gives_its_place_back(stream: bool) -> None:
    h, site, state = _app()
    h.upstream.queue(jsonReply({"error": {"message": "down"}}, status=500))
    conn = Conn(site).send(_oneRead(orjson.dumps(message(stream=stream))))
    h.flush()
    assert conn.status() >= 500
    assert state.limits["alice"].active == 0


def test_an_answer_gives_its_place_back_and_a_second_one_waits_for_it() -> None:
    h, site, state = _app()
    h.upstream.queue(stallReply())
    first = Conn(site).send(_oneRead(orjson.dumps(message())))
    h.flush()
    second = Conn(site, port=40001).send(_oneRead(orjson.dumps(message())))
    h.flush()
    assert second.status() == 429
    assert b"retry-after: 1" in second.written.lower()
    assert state.limits["alice"].active == 1
    first.close()
    h.flush()
    h.upstream.queue(jsonReply(completion("hi")))
    third = Conn(site, port=40002).send(_oneRead(orjson.dumps(message())))
    h.flush()
    assert third.status() == 200
    assert state.limits["alice"].active == 0


def test_a_client_without_a_budget_asks_what_a_fresh_ask_holds() -> None:
    """`Admission._ask` keeps the `Ask` of a client without a budget for its config:
    equal to a fresh one at any time, made afresh under a reloaded config."""
    config, clock, _state, admission = setup()
    alice = client(config, "alice")
    kept = admission._ask(alice, config, clock.seconds(), True)
    for now, budgets in [(0.0, True), (86400.0 * 40, True), (5.0, False)]:
        assert admission._ask(alice, config, now, budgets) is kept
        assert kept == Ask.of(alice, now, budgets)
    reloaded = Config.fromYAML(CONFIG.replace("max_concurrent: 1,", "max_concurrent: 3,"), {})
    fresh = admission._ask(client(reloaded, "alice"), reloaded, clock.seconds(), True)
    assert fresh.maxConcurrent == 3 and fresh == Ask.of(client(reloaded, "alice"), 0.0)
    assert admission._asks == {"alice": fresh}  # the old config's are gone
    bob = client(config, "bob")  # a budget: its windows are the day's and month's
    day1 = admission._ask(bob, config, 10 * 3600, True)
    day2 = admission._ask(bob, config, 86400 + 10 * 3600, True)
    assert day1 == Ask.of(bob, 10 * 3600) and day2 == Ask.of(bob, 86400 + 10 * 3600)
    assert day1.windows != day2.windows
