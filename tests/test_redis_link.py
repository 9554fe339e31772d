"""What `RedisLink` relies on in txredisapi and Twisted to make a Redis call cheap,
pinned against a real Redis (started by the tests): a call's bytes leave at once,
without the reactor asked to watch the socket for room.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest_twisted
from twisted.internet import reactor

from ccproxy.config import Config
from ccproxy.state.shared import RedisLink
from tests.support.faultkit import waitUntil, within
from tests.support.redisserver import RedisServer, redisServerFixture

__all__ = ["redisServerFixture"]


@pytest_twisted.async_yield_fixture(name="link")
async def linkFixture(redisServer: RedisServer) -> AsyncIterator[RedisLink]:
    config = Config.fromYAML(
        'upstreams: {up: {url: "http://u.test/v1"}}\nmodels: {"*": up}\n'
        f'state: {{redis: "{redisServer.url}"}}\n',
        {},
    )
    assert config.redis is not None
    link = RedisLink(config.redis, reactor)
    link.connect()
    try:
        assert await within(link.ping()) == "PONG"  # through the handler, before a connection
        await waitUntil(lambda: link._connection() is not None, "the connection to Redis")
        yield link
    finally:
        await within(link.disconnect())


def _connection(link: RedisLink) -> Any:
    connection = link._connection()
    assert connection is not None
    return connection


@pytest_twisted.ensureDeferred
async def test_a_call_leaves_at_once_and_the_reactor_never_watches_for_room(
    link: RedisLink,
) -> None:
    transport = _connection(link).transport
    assert type(transport.reactor) is type(reactor)  # a plain TCP connection, not held
    watched: list[Any] = []
    real = reactor.addWriter

    def addWriter(writer: Any) -> None:
        watched.append(writer)
        real(writer)

    reactor.addWriter = addWriter  # type: ignore[method-assign]
    try:
        calls = [link.ping(), link.eval("return ARGV[1]", [], ["x"])]
        assert not (transport._tempDataBuffer or transport.dataBuffer)  # sent already
    finally:
        del reactor.addWriter
    assert transport not in watched
    assert transport not in reactor.getWriters()
    assert type(transport.reactor) is type(reactor)  # given back
    assert [await within(d) for d in calls] == ["PONG", "x"]


@pytest_twisted.ensureDeferred
async def test_replies_are_read_by_hiredis_in_one_go(link: RedisLink) -> None:
    """txredisapi reads replies with hiredis when it is installed (a dependency of
    ccproxy's): its own Python reader stops reading the socket and waits a reactor
    turn after each bulk string that more bytes follow, twice a breaker's answer."""
    import txredisapi

    assert txredisapi.RedisFactory.protocol is txredisapi.HiredisProtocol
    connection = _connection(link)
    assert isinstance(connection, txredisapi.HiredisProtocol)
    transport = connection.transport
    paused: list[Any] = []
    real = reactor.removeReader

    def removeReader(reader: Any) -> None:
        paused.append(reader)
        real(reader)

    reactor.removeReader = removeReader  # type: ignore[method-assign]
    try:
        reply = await within(link.eval("return {1, 'closed', '0', '2'}", [], []))
    finally:
        del reactor.removeReader
    assert reply == [1, "closed", "0", "2"]
    assert transport not in paused
