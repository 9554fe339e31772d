"""`PooledClient`, the upstreams' client straight over the connection pool: what
`Agent` and `ContentDecoderAgent` did per request is kept (Host, gzip, the pool's
reuse, cancellation while connecting), with each URL prepared once.

Over real loopback sockets, and in memory where a connection must never complete.
"""

from __future__ import annotations

import gzip
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectingCancelledError
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.web.client import URI, ResponseDone

from ccproxy.upstream.client import PooledClient, hostHeader
from ccproxy.upstream.pool import UpstreamEndpoints, UpstreamPool

ANSWER = b'{"choices": []}'


class Collect(Protocol):
    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.done: Deferred[bytes] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.parts.append(data)

    def connectionLost(self, reason: Any = None) -> None:
        assert reason is not None and reason.check(ResponseDone)
        self.done.callback(b"".join(self.parts))


async def readBody(response: Any) -> bytes:
    collect = Collect()
    response.deliverBody(collect)
    return await collect.done


class Gateway(Protocol):
    """Answers each request on a kept-alive connection, gzip when asked for it; keeps
    every request head it read."""

    def connectionMade(self) -> None:
        self.factory.connections += 1
        self.buffer = b""

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:
            head, _, rest = self.buffer.partition(b"\r\n\r\n")
            lines = head.split(b"\r\n")
            fields = {
                k.strip().lower(): v.strip() for k, _, v in (ln.partition(b":") for ln in lines[1:])
            }
            length = int(fields.get(b"content-length", b"0"))
            if len(rest) < length:
                return
            self.buffer = rest[length:]
            self.factory.heads.append((lines[0], fields, rest[:length]))
            body, extra = ANSWER, b""
            if b"gzip" in fields.get(b"accept-encoding", b""):
                body, extra = gzip.compress(ANSWER), b"Content-Encoding: gzip\r\n"
            self.transport.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                + extra
                + b"Content-Length: %d\r\n\r\n" % len(body)
                + body
            )


@pytest_twisted.ensureDeferred
async def test_requests_reuse_one_connection_with_host_and_gzip() -> None:
    factory: Any = Factory.forProtocol(Gateway)
    factory.connections, factory.heads = 0, []
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    pool = UpstreamPool(reactor, 4)
    client = PooledClient(pool, UpstreamEndpoints(reactor, 5))
    url = f"http://127.0.0.1:{port.getHost().port}/v1/chat/completions?x=1"
    try:
        for _ in range(2):
            response = await client.request(
                "POST", url, data=b'{"a": 1}', headers={"Authorization": "Bearer k"}
            )
            assert response.code == 200
            assert await readBody(response) == ANSWER  # gzip on the wire, decoded
            assert not response.headers.hasHeader(b"content-encoding")
        assert factory.connections == 1, "the kept-alive connection was not reused"
        line, fields, body = factory.heads[0]
        assert line == b"POST /v1/chat/completions?x=1 HTTP/1.1"
        assert fields[b"host"] == b"127.0.0.1:%d" % port.getHost().port
        assert fields[b"authorization"] == b"Bearer k"
        assert fields[b"accept-encoding"] == b"gzip"
        assert body == b'{"a": 1}'
    finally:
        await pool.closeCachedConnections()
        await port.stopListening()


def test_cancelled_while_connecting_fails_and_stops_connecting() -> None:
    memory = MemoryReactorClock()
    client = PooledClient(UpstreamPool(memory, 4), UpstreamEndpoints(memory, 5))
    requested: Deferred[Any] = client.request("POST", "http://10.0.0.1:8000/v1", data=b"{}")
    assert len(memory.tcpClients) == 1
    failures: list[Any] = []
    requested.addErrback(failures.append)
    requested.cancel()
    assert failures and failures[0].check(ConnectingCancelledError, CancelledError)
    assert memory.connectors[0].stoppedConnecting


def test_each_url_is_prepared_once_and_the_prepared_ones_are_bounded() -> None:
    memory = MemoryReactorClock()
    asked: list[bytes] = []

    class Endpoints(UpstreamEndpoints):
        def endpointForURI(self, uri: URI) -> Any:
            asked.append(uri.toBytes())
            return super().endpointForURI(uri)

    client = PooledClient(UpstreamPool(memory, 4), Endpoints(memory, 5))
    client.MAX_TARGETS = 2
    for url in ("http://a.test/v1", "http://a.test/v1", "http://b.test/v1", "http://c.test/v1"):
        client.request("POST", url, data=b"{}").addErrback(lambda f: None).cancel()
    assert asked == [b"http://a.test/v1", b"http://b.test/v1", b"http://c.test/v1"]
    assert len(client._targets) <= 2


def test_a_url_that_cannot_go_on_a_request_line_is_refused() -> None:
    client = PooledClient(UpstreamPool(MemoryReactorClock(), 4), UpstreamEndpoints(None, 5))
    with pytest.raises(ValueError):
        client.request("POST", "http://a.test/v1\r\nX-Evil: 1", data=b"{}")


@pytest.mark.parametrize(
    ("scheme", "host", "port", "expected"),
    [
        (b"http", b"gw.test", 80, b"gw.test"),
        (b"https", b"gw.test", 443, b"gw.test"),
        (b"http", b"gw.test", 443, b"gw.test:443"),
        (b"https", b"127.0.0.1", 8443, b"127.0.0.1:8443"),
        (b"http", b"::1", 8000, b"[::1]:8000"),
    ],
)
def test_host_header(scheme: bytes, host: bytes, port: int, expected: bytes) -> None:
    assert hostHeader(scheme, host, port) == expected
