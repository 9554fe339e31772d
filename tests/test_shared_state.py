"""The state shared through a real Redis (started by the tests): two daemons, each
the daemon's own service (`buildService`) on loopback in this process, pointing at
one Redis, count one client's concurrency, request rate and budget together, and
share breakers. Redis killed or paused: requests keep succeeding on each
process's own counters; back: sharing resumes.

The fallback times these tests see are printed (`-s`) as `fallback: …`.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest_twisted
from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.defer import ensureDeferred
from twisted.internet.task import deferLater
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.server import Site

from ccproxy.config import Config
from ccproxy.config.policy import Policy
from ccproxy.daemon.service import ProxyService
from ccproxy.daemon.wiring import buildService
from ccproxy.state.breaker import HALF_OPEN
from ccproxy.state.local import LocalState
from ccproxy.state.model import Admitted, Ask, Limited, Used, Window
from ccproxy.state.shared import RedisLink, RedisState
from ccproxy.upstream.client import BytesProducer
from tests.support.fakes import FakeOpenAI, completion, jsonReply, sseReply
from tests.support.faultkit import waitUntil, within
from tests.support.harness import ClientReply, message, parseSSE
from tests.support.ledger import MemoryLedger
from tests.support.redisserver import RedisServer, redisServerFixture

__all__ = ["redisServerFixture"]

ALICE = {"x-api-key": "alice-key"}

CONFIG = """
listen: "tcp:0:interface=127.0.0.1"
metrics_auth: none
state: {{redis: "{redis}"}}
upstreams:
  bad: {{url: "{bad}", api_key: sk-up, retries: 0, breaker_failures: 2, breaker_cooldown: 60}}
  good: {{url: "{good}", api_key: sk-up, retries: 0}}
models:
  failover: [bad, good]
  "*": good
clients:
  - name: alice
    key: alice-key
    max_concurrent: 1
    requests_per_minute: 3
    budget: {{tokens_per_day: 100}}
  - name: bob
    key: bob-key
    requests_per_minute: 1000
"""


class Proxy:
    """One daemon's service, started, and a client for it."""

    def __init__(self, service: ProxyService, port: int) -> None:
        self.service = service
        self.base = f"http://127.0.0.1:{port}"
        self.http = HTTPClient(
            Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)),
            data_to_body_producer=BytesProducer,
        )

    @property
    def state(self) -> Any:
        return self.service.state

    async def post(self, body: dict[str, Any], headers: dict[str, str] = ALICE) -> ClientReply:
        response = await within(
            self.http.post(self.base + "/v1/messages", data=orjson.dumps(body), headers=headers)
        )
        raw = await within(response.content())
        found = {k.decode().lower(): v[-1].decode() for k, v in response.headers.getAllRawHeaders()}
        return ClientReply(response.code, found, raw)

    async def metric(self, name: str) -> str:
        response = await within(self.http.get(self.base + "/metrics"))
        text = (await within(response.content())).decode()
        return next(line for line in text.splitlines() if line.startswith(name + " "))


class Cluster:
    """Two daemons sharing one Redis, in front of two fake upstreams."""

    def __init__(self, redis: RedisServer) -> None:
        self.redis = redis
        self.bad = FakeOpenAI(clock=reactor, otherwise=jsonReply({"error": "down"}, status=500))
        self.good = FakeOpenAI(clock=reactor)
        self.ports = [
            reactor.listenTCP(0, Site(f.resource()), interface="127.0.0.1")
            for f in (self.bad, self.good)
        ]
        self.ledger = MemoryLedger()
        self.proxies: list[Proxy] = []

    def config(self) -> Config:
        bad, good = (f"http://127.0.0.1:{p.getHost().port}/v1" for p in self.ports)
        return Config.fromYAML(CONFIG.format(redis=self.redis.url, bad=bad, good=good), {})

    async def start(self) -> list[Proxy]:
        for _ in range(2):
            service = buildService(self.config(), reactor, ledger=self.ledger)
            service.startService()
            port = await within(service.listeningPort())
            self.proxies.append(Proxy(service, port.getHost().port))
        return self.proxies

    async def stop(self) -> None:
        for proxy in self.proxies:
            await within(proxy.service.stopService())
        for port in self.ports:
            await within(port.stopListening())


@pytest_twisted.async_yield_fixture(name="cluster")
async def clusterFixture(redisServer: RedisServer) -> AsyncIterator[Cluster]:
    cluster = Cluster(redisServer)
    try:
        yield cluster
    finally:
        await cluster.stop()


@pytest_twisted.ensureDeferred
async def test_max_concurrent_counts_across_both_daemons(cluster: Cluster) -> None:
    one, two = await cluster.start()
    chunks = [{"choices": [{"index": 0, "delta": {"content": f"{i} "}}]} for i in range(5)]
    cluster.good.queue(sseReply(chunks, delay=0.2))
    streaming = ensureDeferred(one.post(message(stream=True)))
    await waitUntil(lambda: len(cluster.good.received) == 1, "the stream to start upstream")
    refused = await two.post(message())
    assert refused.status == 429
    assert refused.json()["error"]["type"] == "rate_limit_error"
    assert "1 requests in flight" in refused.json()["error"]["message"]
    stream = await streaming
    assert stream.status == 200
    assert parseSSE(stream.body)[-1][0] == "message_stop"
    await waitUntil(
        lambda: cluster.redis.command("ZCARD", "ccproxy:{alice}:leases") == "0",
        "the place to be given back",
    )
    assert (await two.post(message())).status == 200


@pytest_twisted.ensureDeferred
async def test_requests_per_minute_counts_across_both_daemons(cluster: Cluster) -> None:
    one, two = await cluster.start()
    statuses = []
    for proxy in (one, two, one, two):
        statuses.append((await proxy.post(message())).status)
    assert statuses == [200, 200, 200, 429]
    refused = await one.post(message())
    assert refused.status == 429
    assert int(refused.headers["retry-after"]) in range(55, 61)


@pytest_twisted.ensureDeferred
async def test_breakers_are_shared(cluster: Cluster) -> None:
    one, two = await cluster.start()
    for _ in range(2):  # two failures open bad's breaker; good serves each
        assert (await one.post(message(model="failover"))).status == 200
    assert len(cluster.bad.received) == 2
    assert cluster.redis.command("HGET", "ccproxy:breaker:{bad}", "state") == "open"
    assert (await two.post(message(model="failover"))).status == 200
    assert len(cluster.bad.received) == 2  # the other daemon skipped it
    assert len(cluster.good.received) == 3


@pytest_twisted.ensureDeferred
async def test_a_budget_is_counted_across_both_daemons(cluster: Cluster) -> None:
    today = _today()
    cluster.ledger.spend("alice", time=today, tokens=40)
    one, two = await cluster.start()
    cluster.good.queue(
        jsonReply(completion("hi", usage={"prompt_tokens": 50, "completion_tokens": 20}))
    )
    first = await one.post(message())
    assert first.status == 200
    assert first.headers["anthropic-ratelimit-unified-overage-utilization"] == "0.40"
    await waitUntil(
        lambda: cluster.redis.command("HGET", _budgetKey(), "tokens") == "110",
        "the charge to reach Redis",
    )
    refused = await two.post(message())
    assert refused.status == 429
    assert refused.json()["error"]["type"] == "billing_error"
    assert refused.headers["x-should-retry"] == "false"
    assert "110 of 100 tokens" in refused.json()["error"]["message"]
    assert len(cluster.ledger.asked) == 1  # one seed for both daemons
    cluster.ledger.spend("alice", time=today, tokens=70)  # as the real ledger has it
    cluster.redis.command("FLUSHALL")  # a Redis that lost its counters: seeded again
    assert (await two.post(message())).status == 429
    assert len(cluster.ledger.asked) == 2


def _today() -> float:
    now = time.time()
    return now - now % 86400


def _budgetKey() -> str:
    return f"ccproxy:{{alice}}:budget:day:{int(_today())}"


@pytest_twisted.ensureDeferred
async def test_redis_killed_then_back(cluster: Cluster) -> None:
    one, two = await cluster.start()
    bob = {"x-api-key": "bob-key"}
    assert (await one.post(message(), bob)).status == 200
    assert await one.metric("ccproxy_state_backend_up") == "ccproxy_state_backend_up 1.0"
    cluster.redis.kill()
    started = time.monotonic()
    assert (await one.post(message(), bob)).status == 200
    took = time.monotonic() - started
    assert not one.state.up
    print(
        f"fallback: Redis killed: the first request took {took * 1000:.1f} ms in all, "
        f"{one.state.lastFallback * 1000:.1f} ms of it waiting for Redis"
    )
    assert await one.metric("ccproxy_state_backend_up") == "ccproxy_state_backend_up 0.0"
    for proxy in (one, two, one, two):  # each on its own counters
        assert (await proxy.post(message(), bob)).status == 200
    # Alice: at most 3 a minute, counted by each process alone while Redis is away.
    statuses = [(await one.post(message())).status for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    cluster.redis.start()
    await waitUntil(lambda: one.state.up and two.state.up, "both daemons to see Redis back")
    assert await one.metric("ccproxy_state_backend_up") == "ccproxy_state_backend_up 1.0"
    # Shared again: alice's rate window starts over in the new Redis, and counts both.
    statuses = []
    for proxy in (two, one, two, one):
        statuses.append((await proxy.post(message())).status)
    assert statuses == [200, 200, 200, 429]
    assert one.state.outages == two.state.outages == 1


@pytest_twisted.ensureDeferred
async def test_redis_that_does_not_answer_falls_back_within_250_ms(cluster: Cluster) -> None:
    one, _ = await cluster.start()
    bob = {"x-api-key": "bob-key"}
    assert (await one.post(message(), bob)).status == 200
    cluster.redis.pause()
    try:
        started = time.monotonic()
        assert (await one.post(message(), bob)).status == 200
        took = time.monotonic() - started
        print(
            f"fallback: Redis paused: the first request took {took * 1000:.1f} ms in all, "
            f"{one.state.lastFallback * 1000:.1f} ms of it waiting for Redis"
        )
        assert one.state.lastFallback >= 0.24  # it waited for Redis, then decided alone
        assert (await one.post(message(), bob)).status == 200
        assert one.state.outages == 1  # one outage, logged once
    finally:
        cluster.redis.resume()
    await waitUntil(lambda: one.state.up, "the daemon to see Redis answer again")


# -- the backend on its own --------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_the_places_of_a_process_that_died_come_free_after_the_lease(
    redisServer: RedisServer,
) -> None:
    """A process that dies holding places cannot give them back: they expire
    `leaseTTL` seconds after its last renewal, while a live process's are renewed."""
    config = Config.fromYAML(
        f'upstreams: {{up: {{url: "http://u.test/v1"}}}}\nmodels: {{"*": up}}\n'
        f'state: {{redis: "{redisServer.url}"}}\n',
        {},
    )
    assert config.redis is not None
    states = [RedisState(RedisLink(config.redis, reactor), reactor, leaseTTL=1.2) for _ in range(3)]
    for state in states:
        state.start()
    dying, living, other = states
    ask = Ask("alice", maxConcurrent=2)
    try:
        held = [await dying.admit(ask, 0), await living.admit(ask, 0)]
        assert all(isinstance(d, Admitted) for d in held)
        assert isinstance(await other.admit(ask, 0), Limited)
        await dying.stop()  # dies: no renewal, no release
        assert isinstance(await other.admit(ask, 0), Limited)
        started = time.monotonic()
        admitted = None
        while not isinstance(admitted, Admitted):
            assert time.monotonic() - started < 10, "the dead process's place never came free"
            await deferLater(reactor, 0.1)
            admitted = await other.admit(ask, 0)
        assert time.monotonic() - started > 0.5  # it expired; nobody gave it back
        assert isinstance(await other.admit(ask, 0), Limited)  # the live one's is renewed
        other.release(admitted.lease)
        assert isinstance(await other.admit(ask, 0), Admitted)
    finally:
        for state in (living, other):
            await state.stop()


@pytest_twisted.ensureDeferred
async def test_a_refused_request_holds_no_place_in_redis(redisServer: RedisServer) -> None:
    config = Config.fromYAML(
        f'upstreams: {{up: {{url: "http://u.test/v1"}}}}\nmodels: {{"*": up}}\n'
        f'state: {{redis: "{redisServer.url}"}}\n',
        {},
    )
    assert config.redis is not None
    state = RedisState(RedisLink(config.redis, reactor), reactor, LocalState(reactor))
    state.start()
    window = Window("day", 0.0, 4e9, 100, None)
    ask = Ask("alice", maxConcurrent=1, perMinute=5, windows=(window,))
    try:
        await state.seed("alice", window, Used(0, 0.0))
        first = await state.admit(ask, 0)
        assert isinstance(first, Admitted)
        for _ in range(3):
            assert isinstance(await state.admit(ask, 0), Limited)
        assert redisServer.command("ZCARD", "ccproxy:{alice}:rate") == "1"
        state.release(first.lease)
        await waitUntil(
            lambda: redisServer.command("ZCARD", "ccproxy:{alice}:leases") == "0",
            "the release to reach Redis",
        )
        assert state.local.limits["alice"].active == 0
    finally:
        await state.stop()


@pytest_twisted.ensureDeferred
async def test_a_half_open_breaker_lets_one_trial_through_for_all_processes(
    redisServer: RedisServer,
) -> None:
    config = Config.fromYAML(
        f'upstreams: {{up: {{url: "http://u.test/v1"}}}}\nmodels: {{"*": up}}\n'
        f'state: {{redis: "{redisServer.url}"}}\n',
        {},
    )
    assert config.redis is not None
    policy = Policy(breakerFailures=2, breakerCooldown=0.5)
    states = [RedisState(RedisLink(config.redis, reactor), reactor) for _ in range(2)]
    for state in states:
        state.start()
    one, two = (state.breaker("up", policy) for state in states)
    try:
        assert await one.allow() and await two.allow()
        assert not await one.failed()
        assert await two.failed()  # the second failure, from another process, opens it
        assert (await one.allow(), await two.allow()) == (False, False)
        await deferLater(reactor, 0.6)  # the cooldown
        assert (await one.allow(), await two.allow()) == (True, False)  # one trial for both
        assert two.state == HALF_OPEN
        one.succeeded()
        await waitUntil(
            lambda: redisServer.command("HGET", "ccproxy:breaker:{up}", "state") == "closed",
            "the trial's success to close it",
        )
        assert (await one.allow(), await two.allow()) == (True, True)
    finally:
        for state in states:
            await state.stop()


def test_after_stop_a_failing_write_starts_no_probe_and_a_closed_link_fails_calls() -> None:
    """A write that fails as the link closes (the daemon stopping) used to start the
    probe again, whose ping on the closed link raised an unhandled error. Stopped,
    the state probes no more; a call on a closed link fails as a lost connection."""
    import txredisapi
    from twisted.internet.defer import fail
    from twisted.internet.task import Clock

    config = Config.fromYAML(
        'upstreams: {up: {url: "http://u.test/v1"}}\nmodels: {"*": up}\n'
        'state: {redis: "redis://127.0.0.1:1/0"}\n',
        {},
    )
    assert config.redis is not None
    clock = Clock()
    link = RedisLink(config.redis, clock)
    state = RedisState(link, clock, LocalState(clock))
    stopped = ensureDeferred(state.stop())
    assert stopped.called
    state._fire(fail(txredisapi.ConnectionError("the connection to Redis is lost")))
    assert not state.up
    assert not state._probe.running
    clock.advance(60)
    failures: list[Any] = []
    link.ping().addErrback(failures.append)
    assert failures and failures[0].check(txredisapi.ConnectionError)
