"""The ledger against real servers: a PostgreSQL 15 that two daemons share and that
goes down mid-test, and the default SQLite file of a real `twistd` daemon that is
restarted. Every wait is bounded; rows reach the database within the ledger's
batch second (and its retry pauses, when the database was away)."""

from __future__ import annotations

import signal
import sqlite3
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import orjson
import psycopg
import pytest
import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater

from ccproxy.config import Config
from ccproxy.daemon.service import ProxyService
from tests.support.fakes import FakeOpenAI, sseReply
from tests.support.faultkit import waitUntil, within
from tests.support.loopback import baseURL, serveFake, startProxy
from tests.support.postgres import PostgresServer, postgresFixture
from tests.support.processes import waitFor
from tests.support.realdaemon import UNREACHABLE, Daemon, daemonsFixture, startDaemon

__all__ = ["daemonsFixture", "postgresFixture"]

T = TypeVar("T")

CLIENTS = """
clients:
  - {name: alice, key: alice-key}
  - {name: bob, key: bob-key}
  - {name: root, key: root-key, admin: true}
prices:
  big-model: {input: 2, output: 10}
"""

BODY = orjson.dumps(
    {"model": "claude-sonnet-4-5", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}
)


def config(upstream: str, ledger: str) -> Config:
    return Config.fromYAML(
        f"""
listen: "tcp:0:interface=127.0.0.1"
ledger: "{ledger}"
upstreams:
  up: {{url: "{upstream}/v1", retries: 0}}
models:
  claude-*: up/big-model
"""
        + CLIENTS,
        {},
    )


async def post(base: str, key: str) -> int:
    response = await treq.post(f"{base}/v1/messages", data=BODY, headers={"x-api-key": key})
    await response.content()
    return int(response.code)


async def usage(base: str, key: str = "root-key") -> tuple[int, Any]:
    response = await treq.get(f"{base}/v1/usage", headers={"x-api-key": key})
    return int(response.code), orjson.loads(await response.content())


def requests(report: Any) -> dict[str, int]:
    return {name: c["total"]["requests"] for name, c in report["clients"].items()}


def rowCount(url: str) -> int:
    with psycopg.connect(url) as connection:
        return int(connection.execute("SELECT count(*) FROM ccproxy_ledger").fetchone()[0])


@pytest.fixture(name="upstream")
def upstreamFixture() -> Iterator[tuple[FakeOpenAI, str]]:
    fake = FakeOpenAI(clock=reactor)
    port = serveFake(fake)
    yield fake, baseURL(port)
    port.stopListening()


@pytest_twisted.ensureDeferred
async def test_two_daemons_share_one_postgresql_ledger_and_a_restart_keeps_every_row(
    postgres: PostgresServer, upstream: tuple[FakeOpenAI, str]
) -> None:
    url = postgres.createDatabase("shared")
    services: list[ProxyService] = []
    try:
        first, a = await startProxy(config(upstream[1], url))
        services.append(first)
        second, b = await startProxy(config(upstream[1], url))
        services.append(second)
        assert [await post(a, "alice-key"), await post(a, "alice-key")] == [200, 200]
        assert await post(b, "bob-key") == 200
        # Each daemon sees the other's rows once they are written (within a second).
        for base in (a, b):
            await eventually(
                lambda base=base: usage(base),
                lambda answer: requests(answer[1]) == {"alice": 2, "bob": 1},
                "both daemons' rows",
            )
        report = (await usage(b))[1]
        cost = 2 * (11 * 2 + 7 * 10) / 1e6
        assert report["clients"]["alice"]["total"]["cost"] == pytest.approx(cost)
        # A client sees its own entry, from either daemon.
        assert requests((await usage(b, "alice-key"))[1]) == {"alice": 2}
        # Restarted, the daemons find every row again.
        for service in services:
            await within(service.stopService())
        services.clear()
        assert rowCount(url) == 3
        again, c = await startProxy(config(upstream[1], url))
        services.append(again)
        assert requests((await usage(c))[1]) == {"alice": 2, "bob": 1}
    finally:
        for service in services:
            await within(service.stopService())


async def eventually(
    probe: Callable[[], Awaitable[T]], holds: Callable[[T], bool], what: str, seconds: float = 10
) -> T:
    """What `probe()` gives once `holds` of it, asked again until then (bounded)."""
    deadline = reactor.seconds() + seconds
    while True:
        value = await probe()
        if holds(value):
            return value
        if reactor.seconds() > deadline:
            raise AssertionError(f"timed out waiting for {what}: {value!r}")
        await deferLater(reactor, 0.05)


@pytest_twisted.ensureDeferred
async def test_postgresql_down_mid_test_requests_flow_rows_wait_and_stop_writes_them(
    postgres: PostgresServer, upstream: tuple[FakeOpenAI, str]
) -> None:
    url = postgres.createDatabase("outage")
    service, base = await startProxy(config(upstream[1], url))
    ledger = service.app.ledger
    assert ledger is not None
    try:
        assert await post(base, "alice-key") == 200
        await waitUntil(lambda: ledger.stats().written == 1, "the first row written")
        postgres.stop()
        try:
            codes = [await post(base, "alice-key") for _ in range(5)]
            assert codes == [200] * 5  # the requests never wait for the ledger
            await waitUntil(lambda: not ledger.stats().up, "a failed write", seconds=10)
            assert ledger.stats().pending == 5
            status, answer = await usage(base)
            assert status == 503 and answer["error"]["type"] == "api_error"
            metrics = await treq.get(f"{base}/metrics", headers={"x-api-key": "root-key"})
            text = (await metrics.content()).decode()
            assert "ccproxy_ledger_rows_pending 5.0" in text
            assert "ccproxy_ledger_up 0.0" in text
        finally:
            postgres.start()
        await waitUntil(lambda: ledger.stats().pending == 0, "the rows written", seconds=20)
        assert ledger.stats().up and ledger.stats().dropped == 0
        assert rowCount(url) == 6
        assert requests((await usage(base))[1]) == {"alice": 6}
        # Stopping (SIGTERM's drain) writes the rows still waiting.
        assert [await post(base, "bob-key") for _ in range(3)] == [200] * 3
        assert ledger.stats().pending == 3
    finally:
        await within(service.stopService())
    assert rowCount(url) == 9


class CutMidStream(Protocol):
    """A client that sends a streaming request and hangs up after the first text."""

    def __init__(self) -> None:
        self.received = b""
        self.sawText: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        body = orjson.dumps({**orjson.loads(BODY), "stream": True})
        head = b"POST /v1/messages HTTP/1.1\r\nHost: proxy\r\nx-api-key: alice-key\r\n"
        self.transport.write(head + b"Content-Length: %d\r\n\r\n" % len(body) + body)

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if b"content_block_delta" in self.received and not self.sawText.called:
            self.sawText.callback(None)


@pytest_twisted.ensureDeferred
async def test_a_stream_cut_by_its_client_leaves_its_row(
    postgres: PostgresServer, upstream: tuple[FakeOpenAI, str]
) -> None:
    fake, address = upstream
    usage = {"prompt_tokens": 40, "completion_tokens": 2}  # counted as it goes
    chunks = [
        {"choices": [{"index": 0, "delta": {"content": f"w{i} "}}], "usage": usage}
        for i in range(50)
    ]
    fake.queue(sseReply(chunks, delay=0.1))
    url = postgres.createDatabase("cut")
    service, base = await startProxy(config(address, url))
    try:
        port = int(base.rsplit(":", 1)[1])
        client = CutMidStream()
        await within(connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client))
        await within(client.sawText)
        client.transport.abortConnection()
        await waitUntil(lambda: fake.disconnected == 1, "the upstream request aborted")
    finally:
        await within(service.stopService())
    with psycopg.connect(url) as connection:
        rows = connection.execute(
            "SELECT client, stream, status, error_type, input_tokens, output_tokens "
            "FROM ccproxy_ledger"
        ).fetchall()
    assert rows == [("alice", True, 499, "cancelled", 40, 2)]


def test_a_real_daemon_keeps_its_rows_in_ccproxy_db_across_a_restart(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    """No `ledger:`: the default, `ccproxy.db` in the directory twistd starts in."""
    text = UNREACHABLE + CLIENTS

    def start() -> Daemon:
        daemon = startDaemon(tmp_path, text)
        daemons.append(daemon)
        return daemon

    def report(daemon: Daemon) -> Any:
        import urllib.request

        request = urllib.request.Request(
            daemon.base + "/v1/usage?since=2000-01-01", headers={"x-api-key": "root-key"}
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            return orjson.loads(response.read())

    daemon = start()
    for key in ("alice-key", "bob-key", "bob-key"):
        status = _post(daemon, key)
        assert status == 502  # the upstream refuses: the request reached routing all the same
    assert daemon.stop() == 0  # SIGTERM drains, and writes the rows
    with sqlite3.connect(tmp_path / "ccproxy.db") as connection:
        assert connection.execute("SELECT count(*) FROM ccproxy_ledger").fetchone() == (3,)
    daemon = start()
    assert requests(report(daemon)) == {"alice": 1, "bob": 2}
    daemon.signal(signal.SIGTERM)
    waitFor(lambda: daemon.process.poll() is not None, "the daemon to stop")


def _post(daemon: Daemon, key: str) -> int:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(
        daemon.base + "/v1/messages", data=BODY, headers={"x-api-key": key}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as e:
        e.read()
        return int(e.code)
