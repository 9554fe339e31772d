"""The dispatcher on its own: plans sent to a fake upstream through StubTreq, on a
Clock. What an `Answer`'s lifetime does to the slot and the breaker, and what the
dispatcher keeps (and lets go of) while an answer is relayed."""

from __future__ import annotations

import gc
import weakref
from typing import Any

import pytest
from treq.testing import StubTreq
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock

from ccproxy.config.model import Config
from ccproxy.config.policy import Policy
from ccproxy.errors import ProxyError
from ccproxy.observe.accesslog import Attempt
from ccproxy.state.breaker import CLOSED, OPEN, LocalBreaker
from ccproxy.upstream.client import UpstreamClient
from ccproxy.upstream.dispatch import Answer, Dispatcher, UpstreamState
from ccproxy.upstream.plan import Plan
from tests.support.fakes import FakeOpenAI, jsonReply, sseReply
from tests.support.harness import message, resultOf

CONFIG = """
upstreams:
  main:
    url: http://main.test/v1
    retries: {retries}
    breaker_failures: 2
    max_concurrent: 1
  backup:
    url: http://backup.test/v1
models:
  solo: main
  pair: [main, backup/other-model]
"""


class Rig:
    def __init__(self, retries: int = 0) -> None:
        self.clock = Clock()
        self.config = Config.fromYAML(CONFIG.format(retries=retries), {})
        self.upstream = FakeOpenAI(clock=self.clock)
        self.stub = StubTreq(self.upstream.resource())
        self.dispatcher = Dispatcher(
            UpstreamClient(self.stub, self.clock),
            self.clock,
            UpstreamState(self.clock),
            lambda: 0.5,
        )
        self.attempts: list[Attempt] = []

    def plan(self, model: str = "solo", **body: Any) -> Plan:
        return Plan.forRequest(
            message(model=model, **body),
            model,
            "msg_1",
            targets=self.config.router.resolve(model).targets,
            upstreams=self.config.upstreams,
            defaultMaxTokens=1000,
            maxResponseBytes=1 << 20,
        )

    def flush(self) -> None:
        for _ in range(3):
            self.stub.flush()

    def health(self, name: str = "main") -> Any:
        return self.dispatcher.health([name])[name]

    def run(self, plan: Plan, inside: Any = None) -> Deferred[Any]:
        """Enters `send(plan)`, runs `inside(answer)` in the block, returns what it did."""

        async def go() -> Any:
            async with self.dispatcher.send(plan, None, None, self.attempts) as answer:
                if inside is not None:
                    return await inside(answer)
                return answer

        d = Deferred.fromCoroutine(go())
        self.flush()
        return d


def test_a_json_answer_is_read_and_translated_during_the_attempt() -> None:
    rig = Rig()
    answer = resultOf(rig.run(rig.plan()))
    assert isinstance(answer, Answer)
    assert answer.message is not None and answer.message["content"][0]["text"] == "hello"
    assert answer.upstream.name == "main"
    assert rig.attempts == [Attempt("main", 200)]
    assert rig.health().active == 0  # the block ended: the slot is back


def test_the_answer_holds_the_slot_until_the_block_ends() -> None:
    rig = Rig()
    rig.upstream.queue(sseReply([{"choices": []}]))
    gate: Deferred[None] = Deferred()
    seen: list[int] = []

    async def inside(answer: Answer) -> None:
        seen.append(rig.health().active)
        await gate

    d = rig.run(rig.plan(stream=True), inside)
    assert seen == [1]
    second = rig.run(rig.plan())  # max_concurrent 1: it waits in line
    assert rig.health().queued == 1 and not second.called
    gate.callback(None)
    resultOf(d)
    rig.flush()
    assert resultOf(second).message is not None
    assert (rig.health().active, rig.health().queued) == (0, 0)


@pytest.mark.parametrize(
    ("how", "state", "failures"),
    [
        ("settle-false", CLOSED, 1),
        ("proxy-error", CLOSED, 1),
        ("settle-none", CLOSED, 0),
        ("cancelled", CLOSED, 0),
        ("bug", CLOSED, 0),
    ],
)
def test_how_the_block_ends_is_the_breakers_verdict(how: str, state: str, failures: int) -> None:
    rig = Rig()
    rig.upstream.queue(sseReply([{"choices": []}]))

    async def inside(answer: Answer) -> None:
        if how == "settle-false":
            answer.settle(False)
        elif how == "settle-none":
            answer.settle(None)
        elif how == "proxy-error":
            raise ProxyError(502, "main: broke off")
        elif how == "cancelled":
            raise CancelledError()
        elif how == "bug":
            raise ZeroDivisionError()

    d = rig.run(rig.plan(stream=True), inside)
    d.addErrback(lambda f: None)
    breaker = rig.dispatcher.state.gate(rig.config.upstreams["main"]).breaker
    assert (breaker.state, breaker.failures) == (state, failures)
    assert rig.health().active == 0


def test_failures_open_the_breaker_and_failover_skips_it() -> None:
    rig = Rig()
    for _ in range(2):
        rig.upstream.queue(jsonReply({"error": {"message": "down"}}, 503), jsonReply({"x": 1}, 200))
        rig.upstream.replies.pop()  # keep only the 503 for main; backup gets the default
        resultOf(rig.run(rig.plan("pair")))
    assert rig.health().breaker == OPEN
    rig.attempts.clear()
    answer = resultOf(rig.run(rig.plan("pair")))
    assert answer.upstream.name == "backup"
    assert answer.target.modelFor("pair") == "other-model"
    assert rig.attempts[0] == Attempt("main", None, note="skipped, circuit open")


def test_a_retry_waits_on_the_clock() -> None:
    rig = Rig(retries=1)
    rig.upstream.queue(jsonReply({"error": {"message": "busy"}}, 429))
    d = rig.run(rig.plan())
    assert not d.called
    rig.clock.advance(0.375)  # backoff 0.5 s with the jitter at 0.5: 0.375 s
    rig.flush()
    assert resultOf(d).message is not None
    assert [a.status for a in rig.attempts] == [429, 200]


def test_a_request_error_is_not_retried_nor_held_against_the_upstream() -> None:
    rig = Rig(retries=3)
    rig.upstream.queue(jsonReply({"error": {"message": "bad"}}, 400))
    with pytest.raises(ProxyError) as e:
        resultOf(rig.run(rig.plan("pair")))
    assert e.value.status == 400
    assert len(rig.upstream.received) == 1
    assert rig.health().breaker == CLOSED


class _Body(dict[str, Any]):
    pass


def test_the_request_is_let_go_once_an_upstream_answers() -> None:
    """A long stream must not keep its request's 100 KB of objects alive."""
    rig = Rig()
    later: Deferred[None] = Deferred()

    def answerLater(request: Any, fake: FakeOpenAI) -> Any:
        return later.addCallback(lambda _: sseReply([{"choices": []}])(request, fake))

    rig.upstream.queue(answerLater)
    body = _Body(message(model="solo", stream=True))  # a dict that a weakref can watch
    plan = Plan.forRequest(
        body,
        "solo",
        "msg_1",
        targets=rig.config.router.resolve("solo").targets,
        upstreams=rig.config.upstreams,
        defaultMaxTokens=1000,
        maxResponseBytes=1 << 20,
    )
    ref = weakref.ref(body)
    del body
    plans, held = [plan], []
    del plan

    async def go() -> None:
        # The caller lets go of its plan too (as MessagesAPI.create does).
        async with rig.dispatcher.send(plans.pop(), None, None, rig.attempts):
            gc.collect()
            held.append(ref() is not None)

    d = Deferred.fromCoroutine(go())  # sent; the upstream has not answered yet
    later.callback(None)
    rig.flush()
    resultOf(d)
    assert held == [False]


def test_a_clients_mistake_is_a_400_before_any_attempt() -> None:
    rig = Rig()
    with pytest.raises(ProxyError) as e:
        resultOf(rig.run(rig.plan(messages=[])))
    assert e.value.status == 400
    assert rig.upstream.received == [] and rig.attempts == []


def test_a_retry_is_not_sent_when_the_breaker_opened_during_its_wait() -> None:
    rig = Rig(retries=1)
    rig.upstream.queue(jsonReply({"error": {"message": "busy"}}, 429))
    d = rig.run(rig.plan())
    rig.dispatcher.state.gate(rig.config.upstreams["main"]).breaker.failed()  # 2 of 2: open
    rig.clock.advance(0.375)
    rig.flush()
    with pytest.raises(ProxyError) as e:
        resultOf(d)
    assert e.value.status == 429
    assert [a.status for a in rig.attempts] == [429]


class WaitedBreaker(LocalBreaker):
    """A breaker whose `allow` answers later, as a shared backend's does."""

    def __init__(self, clock: Clock) -> None:
        super().__init__(clock.seconds, Policy())
        self.asked: list[Deferred[bool]] = []

    def allow(self) -> Deferred[bool]:  # type: ignore[override]
        self.asked.append(Deferred())
        return self.asked[-1]


@pytest.mark.parametrize("allowed", [True, False])
def test_a_breaker_answering_later_is_waited_for(allowed: bool) -> None:
    rig = Rig()
    breaker = WaitedBreaker(rig.clock)
    rig.dispatcher.state.gate(rig.config.upstreams["main"]).breaker = breaker
    d = rig.run(rig.plan("pair"))
    assert not d.called and len(breaker.asked) == 1 and rig.attempts == []
    breaker.asked[0].callback(allowed)
    rig.flush()
    answer = resultOf(d)
    assert answer.upstream.name == ("main" if allowed else "backup")
    if not allowed:
        assert rig.attempts[0] == Attempt("main", None, note="skipped, circuit open")
