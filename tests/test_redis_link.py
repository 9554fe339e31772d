"""What `RedisLink` relies on in txredisapi and Twisted to make a Redis call cheap,
pinned against a real Redis (started by the tests): a call's bytes leave at once,
without the reactor asked to watch the socket for room; hiredis reads the replies
and packs the commands (as txredisapi would); a script runs by its hash once the
connection ran it, by its text again when Redis forgot it; a call sets no timer of
its own; a cancelled call keeps its place in txredisapi's reply queue.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import pytest_twisted
import txredisapi
from twisted.internet import reactor
from twisted.internet.defer import CancelledError

from ccproxy.config import Config
from ccproxy.state.shared import RedisLink, Script
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


@contextmanager
def _asked(method: str) -> Iterator[list[Any]]:
    """What the global reactor's `method` (`addWriter`, `removeReader`) is asked
    for within the block, each still passed on."""
    seen: list[Any] = []
    real = getattr(reactor, method)

    def recording(selectable: Any) -> None:
        seen.append(selectable)
        real(selectable)

    setattr(reactor, method, recording)
    try:
        yield seen
    finally:
        delattr(reactor, method)


@pytest_twisted.ensureDeferred
async def test_a_call_leaves_at_once_and_the_reactor_never_watches_for_room(
    link: RedisLink,
) -> None:
    transport = _connection(link).transport
    assert type(transport.reactor) is type(reactor)  # a plain TCP connection, not held
    with _asked("addWriter") as watched:
        calls = [link.ping(), link.run(Script.of("return ARGV[1]"), [], ["x"])]
        assert not (transport._tempDataBuffer or transport.dataBuffer)  # sent already
    assert transport not in watched
    assert transport not in reactor.getWriters()
    assert type(transport.reactor) is type(reactor)  # given back
    assert [await within(d) for d in calls] == ["PONG", "x"]


@pytest_twisted.ensureDeferred
async def test_replies_are_read_by_hiredis_in_one_go(link: RedisLink) -> None:
    """txredisapi reads replies with hiredis when it is installed (a dependency of
    ccproxy's): its own Python reader stops reading the socket and waits a reactor
    turn after each bulk string that more bytes follow, twice a breaker's answer."""
    assert txredisapi.RedisFactory.protocol is txredisapi.HiredisProtocol
    connection = _connection(link)
    assert isinstance(connection, txredisapi.HiredisProtocol)
    transport = connection.transport
    with _asked("removeReader") as paused:
        reply = await within(link.run(Script.of("return {1, 'closed', '0', '2'}"), [], []))
    assert reply == [1, "closed", "0", "2"]
    assert transport not in paused


@pytest_twisted.ensureDeferred
async def test_a_script_runs_by_its_hash_once_run_and_by_its_text_when_forgotten(
    link: RedisLink, redisServer: RedisServer
) -> None:
    script = Script.of("return 'ran ' .. ARGV[1]")
    connection = _connection(link)
    sent: list[bytes] = []
    real = connection.transport.write

    def write(data: bytes) -> None:
        sent.append(data)
        real(data)

    connection.transport.write = write
    try:
        assert await within(link.run(script, [], ["1"])) == "ran 1"
        assert script.sha in connection.script_hashes
        assert await within(link.run(script, [], ["2"])) == "ran 2"
        assert redisServer.command("SCRIPT", "FLUSH") == "OK"  # Redis forgets it
        assert await within(link.run(script, [], ["3"])) == "ran 3"
        assert await within(link.run(script, [], ["4"])) == "ran 4"
    finally:
        del connection.transport.write
    commands = [data.split(b"\r\n")[2] for data in sent]
    assert commands == [b"EVAL", b"EVALSHA", b"EVALSHA", b"EVAL", b"EVALSHA"]
    assert script.text in sent[0] and script.sha.encode() in sent[1]
    # Another script's error is the caller's, not a retry by text.
    broken = Script.of("return redis.call('NOSUCHCOMMAND')")
    with pytest.raises(txredisapi.ResponseError):
        await within(link.run(broken, [], []))


@pytest_twisted.ensureDeferred
async def test_a_call_sets_no_timer_of_its_own(link: RedisLink) -> None:
    """txredisapi's reply timer (`replyTimeout`) is made and cancelled per command;
    the state bounds its calls itself (`RedisState.timeout`, shorter), so the link's
    scripts and ZREM are sent without it."""
    script = Script.of("return 1")
    assert await within(link.run(script, [], [])) == 1  # known by its hash from now on
    before = len(reactor.getDelayedCalls())
    calls = [link.run(script, [], []), link.zrem("ccproxy:{x}:leases", "lease")]
    assert len(reactor.getDelayedCalls()) == before
    assert [await within(d) for d in calls] == [1, 0]


@pytest.mark.parametrize(
    "parts",
    [
        ("EVALSHA", "0" * 40, 2, "ccproxy:{alice}:leases", "ccproxy:{alice}:rate", "p:1", "30.0"),
        ("EVAL", b"return 1", 0),
        ("EVALSHA", "0" * 40, 1, "ccproxy:{b\u00e9atrice \u2603}:budget:day", 100, "", "0.25"),
        ("ZREM", "ccproxy:{x}:leases", "abc:12"),
        ("EVALSHA", "0" * 40, 1, "k", -3, 0, 2**40, "succeeded"),
        ("PING",),
    ],
)
def test_hiredis_packs_a_command_as_txredisapi_does(parts: tuple[Any, ...]) -> None:
    """`RedisLink._command` writes hiredis's `pack_command` where txredisapi wrote
    its own `_build_command`: the same bytes for the str, bytes and int parts the
    state sends (it sends no float: txredisapi writes those with six decimals)."""
    from hiredis import pack_command

    assert pack_command(parts) == txredisapi.BaseRedisProtocol()._build_command(*parts)


@pytest_twisted.ensureDeferred
async def test_a_cancelled_call_keeps_its_place_for_its_reply(link: RedisLink) -> None:
    """A call given up (the caller left, or Redis was slow) still has a reply to
    come: the next call gets its own reply, not that one."""
    slow = link.run(Script.of("return 'first'"), [], [])
    slow.addErrback(lambda f: f.trap(CancelledError))
    slow.cancel()
    assert await within(link.run(Script.of("return 'second'"), [], [])) == "second"
    assert await within(link.zrem("ccproxy:{x}:leases", "y")) == 0
    assert await within(link.ping()) == "PONG"
