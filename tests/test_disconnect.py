"""A client that goes away stops its upstream request; a slow one pauses it.

The client side is a real HTTPChannel over a StringTransport, so that closing it is
what a real disconnect is; the upstream is the fake, in memory.
"""

from __future__ import annotations

from typing import Any

import orjson
from twisted.internet.address import IPv4Address
from twisted.internet.defer import succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH

from ccproxy.web.site import ProxySite
from tests.support.fakes import sseReply, stallReply
from tests.support.harness import Harness, message


def connect(h: Harness, body: dict[str, Any]) -> tuple[Any, StringTransport]:
    site = ProxySite.serving(h.app, h.clock)
    channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5555))
    transport = StringTransport()
    channel.makeConnection(transport)
    raw = orjson.dumps(body)
    channel.dataReceived(
        b"POST /v1/messages?beta=true HTTP/1.1\r\nHost: proxy\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % len(raw) + raw
    )
    return channel, transport


def hangUp(channel: Any) -> None:
    channel.connectionLost(Failure(ConnectionDone("client went away")))


def test_disconnect_before_upstream_headers_aborts_upstream() -> None:
    h = Harness.build()
    h.upstream.queue(stallReply())
    channel, _ = connect(h, message(stream=True))
    h.flush()
    assert len(h.upstream.received) == 1
    assert h.upstream.disconnected == 0
    hangUp(channel)
    h.flush()
    assert h.upstream.disconnected == 1


def test_disconnect_before_headers_non_streaming_aborts_upstream() -> None:
    h = Harness.build()
    h.upstream.queue(stallReply())
    channel, _ = connect(h, message())
    h.flush()
    hangUp(channel)
    h.flush()
    assert h.upstream.disconnected == 1


def test_disconnect_mid_stream_aborts_upstream() -> None:
    h = Harness.build()
    chunks = [{"choices": [{"index": 0, "delta": {"content": f"w{i} "}}]} for i in range(10)]
    h.upstream.queue(sseReply(chunks, delay=1))
    channel, transport = connect(h, message(stream=True))
    h.flush()
    for _ in range(3):
        h.clock.advance(1)
        h.flush()
    assert b"content_block_delta" in transport.value()
    assert h.upstream.disconnected == 0
    hangUp(channel)
    h.flush()
    assert h.upstream.disconnected == 1
    # Nothing more is scheduled on the proxy's side: no ping timer, no silence timer.
    h.clock.advance(1000)
    h.flush()
    assert h.clock.getDelayedCalls() == []


class _StreamResponse:
    """An upstream response whose body transport we hold: it records pause/resume."""

    code = 200
    phrase = b"OK"
    length = UNKNOWN_LENGTH

    def __init__(self) -> None:
        self.headers = Headers({b"content-type": [b"text/event-stream"]})
        self.transport = StringTransport()
        self.protocol: Any = None

    def deliverBody(self, protocol: Any) -> None:
        self.protocol = protocol
        protocol.makeConnection(self.transport)


class _OneResponseClient:
    def __init__(self, response: _StreamResponse) -> None:
        self.response = response

    def request(self, method: str, url: str, **kwargs: Any) -> Any:
        return succeed(self.response)


def test_slow_reader_pauses_the_upstream() -> None:
    upstream = _StreamResponse()
    h = Harness.build(http=lambda clock, stub: _OneResponseClient(upstream))
    _, transport = connect(h, message(stream=True))
    assert upstream.protocol is not None
    assert upstream.transport.producerState == "producing"
    # The client's socket buffer is full: the transport tells its producer to pause.
    transport.producer.pauseProducing()
    assert upstream.transport.producerState == "paused"
    held = len(transport.value())
    transport.producer.resumeProducing()
    assert upstream.transport.producerState == "producing"
    upstream.protocol.dataReceived(
        b'data: {"choices":[{"index":0,"delta":{"content":"more"}}]}\n\n'
    )
    h.clock.advance(0)  # a read's events go out together, at the end of the reactor's turn
    assert len(transport.value()) > held
    upstream.protocol.dataReceived(
        b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n'
    )
    upstream.protocol.connectionLost(Failure(ResponseDone()))
    assert b"message_stop" in transport.value()
    # Finished: the upstream transport is no longer the response's producer.
    transport.producer.pauseProducing()
    assert upstream.transport.producerState == "producing"


def test_the_head_is_sent_at_once_not_at_the_next_reactor_turn() -> None:
    from twisted.internet.interfaces import IWriteDescriptor
    from zope.interface import implementer

    from ccproxy.compat import SendTogether

    @implementer(IWriteDescriptor)
    class Socket:
        writes = 0
        connected = True
        disconnecting = False
        dataBuffer = b""
        _tempDataBuffer = [b"HTTP/1.1 200 OK\r\n"]  # what the request wrote

        def doWrite(self) -> None:
            self.writes += 1

    class Channel:
        transport = Socket()

    class Request:
        channel = Channel()

    with SendTogether.of(Request()):  # type: ignore[arg-type]  # not plain TCP: flushNow's way
        pass
    assert Channel.transport.writes == 1

    class Gone:
        channel = None

    with SendTogether.of(Gone()):  # type: ignore[arg-type]  # a client already gone: nothing to do
        pass
