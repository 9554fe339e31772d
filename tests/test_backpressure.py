"""A client that stops reading pauses the upstream: memory held stays bounded.

Real loopback sockets: an upstream that streams as fast as it is allowed (a push
producer honouring pause), the real service, and a client that reads nothing.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from zope.interface import implementer

from ccproxy.config import Config
from ccproxy.daemon.wiring import buildService

FRAME = b'data: {"choices":[{"index":0,"delta":{"content":"' + b"x" * 4000 + b'"}}]}\n\n'
ANTHROPIC_FRAME = (
    b"event: content_block_delta\ndata: "
    b'{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"'
    + b"x" * 4000
    + b'"}}\n\n'
)
"""The same flood from an `api: messages` upstream (passed on unread)."""
TOTAL_FRAMES = 50_000  # 200 MB if nothing pushed back


@implementer(IPushProducer)
class FloodingUpstream(Protocol):
    """Answers any request with an endless SSE stream, writing only while not paused."""

    def connectionMade(self) -> None:
        self.paused = False
        self.started = False
        self.transport.registerProducer(self, True)

    def dataReceived(self, data: bytes) -> None:
        if not self.started and b"\r\n\r\n" in data:
            self.started = True
            self.transport.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n"
            )
            self.resumeProducing()

    def pauseProducing(self) -> None:
        self.paused = True
        self.factory.pauses += 1
        if self.factory.pausedOnce is not None:
            waiter, self.factory.pausedOnce = self.factory.pausedOnce, None
            reactor.callLater(0.2, waiter.callback, None)  # let buffers settle

    def resumeProducing(self) -> None:
        self.paused = False
        while not self.paused and self.factory.sent < TOTAL_FRAMES:
            frame = self.factory.frame
            self.transport.write(b"%x\r\n%s\r\n" % (len(frame), frame))
            self.factory.sent += 1

    def stopProducing(self) -> None:
        self.paused = True


class Sleeper(Protocol):
    """Sends the request, then never reads."""

    def connectionMade(self) -> None:
        body = orjson.dumps(
            {
                "model": "m",
                "max_tokens": 5,
                "stream": True,
                "messages": [{"role": "user", "content": "go"}],
            }
        )
        self.transport.write(
            b"POST /v1/messages HTTP/1.1\r\nHost: p\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        self.transport.pauseProducing()  # stop reading from the socket


@pytest.mark.parametrize(("api", "frame"), [("chat", FRAME), ("messages", ANTHROPIC_FRAME)])
@pytest_twisted.ensureDeferred
async def test_a_client_that_stops_reading_pauses_the_upstream(api: str, frame: bytes) -> None:
    factory: Any = Factory.forProtocol(FloodingUpstream)
    factory.sent = factory.pauses = 0
    factory.frame = frame
    factory.pausedOnce = Deferred()
    upstreamPort = reactor.listenTCP(0, factory, interface="127.0.0.1")
    config = Config.fromYAML(
        f"""
listen: "tcp:0:interface=127.0.0.1"
ledger: off
upstreams:
  flood: {{url: "http://127.0.0.1:{upstreamPort.getHost().port}/v1", timeout: 60, api: {api}}}
models: {{"*": flood}}
""",
        {},
    )
    service = buildService(config, reactor)
    channels: list[Any] = []
    # The port serves the site through the drain's connection tracker.
    site = service.getServiceNamed("http").factory  # type: ignore[attr-defined]
    build = site.buildProtocol
    site.buildProtocol = lambda addr: _kept(build(addr), channels)
    service.startService()
    client = None
    try:
        port = (await service.listeningPort()).getHost().port
        connected: Deferred[Any] = Deferred()
        clientFactory = ClientFactory.forProtocol(Sleeper)
        clientFactory.buildProtocol = lambda addr: _remember(Sleeper(), connected)  # type: ignore[method-assign]
        reactor.connectTCP("127.0.0.1", port, clientFactory)
        client = await connected
        await factory.pausedOnce.addTimeout(20, reactor)
        sentBytes = factory.sent * len(frame)
        # Socket buffers on the way hold a few MB at most; the upstream was stopped
        # long before its 200 MB.
        assert factory.pauses >= 1
        assert sentBytes < 32 * 1024 * 1024, sentBytes
        held = _unsent(channels)
        assert 0 < held < 4 * 1024 * 1024, held
    finally:
        if client is not None:
            client.transport.abortConnection()
        await service.stopService()
        await upstreamPort.stopListening()


def _remember(protocol: Protocol, connected: Deferred[Any]) -> Protocol:
    original = protocol.connectionMade

    def made() -> None:
        original()
        connected.callback(protocol)

    protocol.connectionMade = made  # type: ignore[method-assign]
    return protocol


def _kept(protocol: Any, kept: list[Any]) -> Any:
    kept.append(protocol)
    return protocol


def _unsent(channels: list[Any]) -> int:
    """Bytes the proxy holds unsent towards its clients, in its transports' buffers."""
    total = 0
    for channel in channels:
        transport = channel.transport
        total += transport._tempDataLen + len(transport.dataBuffer) - transport.offset
    return total
