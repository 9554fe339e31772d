"""An upstream connection's idle timer is held while it serves a request
(`compat.ConnectionPool`): pushed later when the connection is put back, never
closing a connection in use, and a connection is closed exactly
`cachedConnectionTimeout` seconds after it last became idle, as Twisted's pool
closes it."""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.web.client import Agent

from ccproxy.upstream.pool import UpstreamPool
from tests.support.harness import resultOf
from tests.test_compat import _Upstream


def _served() -> tuple[Clock, UpstreamPool, _Upstream, Agent]:
    """A pool whose one connection has served one request and is idle."""
    clock, upstream = Clock(), _Upstream()
    pool = UpstreamPool(clock, 4)
    agent = Agent.usingEndpointFactory(clock, upstream, pool=pool)
    _request(agent, upstream)
    return clock, pool, upstream, agent


def _request(agent: Agent, upstream: _Upstream) -> None:
    d = agent.request(b"GET", b"http://u.test/")
    upstream.answer(upstream.protocols[-1])
    assert resultOf(d).code == 200


def _timers(clock: Clock) -> list[Any]:
    return clock.getDelayedCalls()


def test_one_timer_serves_every_request_of_a_connection() -> None:
    clock, pool, upstream, agent = _served()
    timer = _timers(clock)[0]
    for _ in range(5):
        clock.advance(100)
        _request(agent, upstream)
        assert _timers(clock) == [timer], "the same timer, held and pushed later"
    assert len(upstream.protocols) == 1
    assert timer.getTime() == clock.seconds() + pool.cachedConnectionTimeout


def test_an_idle_connection_is_closed_its_timeout_after_it_last_became_idle() -> None:
    clock, pool, upstream, agent = _served()
    clock.advance(200)
    _request(agent, upstream)  # idle again at 200: closed at 200 + 240
    transport = upstream.protocols[0].transport
    clock.advance(pool.cachedConnectionTimeout - 0.1)
    assert not transport.disconnecting
    clock.advance(0.1)
    assert transport.disconnecting
    assert _timers(clock) == [] and pool._connections[next(iter(pool._connections))] == []
    assert pool._timeouts == {}


def test_a_connection_in_use_is_never_closed_by_its_held_timer() -> None:
    clock, pool, upstream, _agent = _served()
    key = next(iter(pool._connections))
    taken = pool.takeIdleConnection(key)
    assert taken is upstream.protocols[0]
    clock.advance(pool.cachedConnectionTimeout + 1)  # a long stream
    assert not taken.transport.disconnecting
    assert _timers(clock) == [] and pool._timeouts == {}, "the timer let go"
    pool._putConnection(key, taken)  # back, idle: a timer of its own again
    assert len(_timers(clock)) == 1
    clock.advance(pool.cachedConnectionTimeout)
    assert taken.transport.disconnecting and pool._timeouts == {}


def test_a_dead_idle_connection_is_dropped_with_its_timer() -> None:
    clock, pool, upstream, _agent = _served()
    key = next(iter(pool._connections))
    upstream.protocols[0].connectionLost(None)
    assert pool.takeIdleConnection(key) is None
    assert _timers(clock) == [] and pool._timeouts == {}


def test_a_full_pool_drops_its_oldest_connection_with_its_timer() -> None:
    clock, upstream = Clock(), _Upstream()
    pool = UpstreamPool(clock, 1)
    agent = Agent.usingEndpointFactory(clock, upstream, pool=pool)
    first = agent.request(b"GET", b"http://u.test/")
    second = agent.request(b"GET", b"http://u.test/")  # a second connection
    upstream.answer(upstream.protocols[0])
    upstream.answer(upstream.protocols[1])
    resultOf(first), resultOf(second)
    assert upstream.protocols[0].transport.disconnecting
    assert len(_timers(clock)) == 1 and list(pool._timeouts) == [upstream.protocols[1]]
    _request(agent, upstream)  # on the cached one: its held timer is pushed later
    assert len(upstream.protocols) == 2 and len(_timers(clock)) == 1


def test_closing_the_pool_cancels_every_timer_held_or_not() -> None:
    clock, pool, _upstream, _agent = _served()
    key = next(iter(pool._connections))
    pool.takeIdleConnection(key)
    pool.closeCachedConnections()
    assert _timers(clock) == [] and pool._timeouts == {}
