"""`ccproxy.compat`, the one door to Twisted's private API: each use pinned against
the real Twisted (and treq) objects, with a message naming the Twisted change when a
new release breaks it, so an upgrade fails here instead of the proxy misbehaving."""

from __future__ import annotations

import ast
import gc
import inspect
import socket
import struct
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest_twisted
from attrs import define
from treq.client import HTTPClient
from treq.testing import RequestTraversalAgent
from twisted.application.internet import StreamServerEndpointService
from twisted.internet import reactor
from twisted.internet.abstract import FileDescriptor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IStreamServerEndpoint, IWriteDescriptor
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import Logger, LogLevel
from twisted.web import client as webclient
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.http import HTTPChannel, Request
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site
from zope.interface import implementer

from ccproxy import compat
from ccproxy.upstream.client import BytesProducer
from ccproxy.upstream.pool import UpstreamPool
from tests.support.faultkit import waitUntil, within
from tests.support.harness import resultOf
from tests.test_pooled_client import Collect

ROOT = Path(__file__).resolve().parent.parent

# -- the connection pool -----------------------------------------------------------


def test_the_pool_builds_connections_with_the_factory_compat_quiets() -> None:
    factory = getattr(webclient, "_HTTP11ClientFactory", None)
    assert factory is not None, (
        "Twisted removed twisted.web.client._HTTP11ClientFactory: "
        "ccproxy.compat.QuietClientFactory must follow its replacement"
    )
    assert HTTPConnectionPool._factory is factory, (  # type: ignore[attr-defined]
        "Twisted's HTTPConnectionPool no longer builds connections with its `_factory` "
        "class attribute: ccproxy.compat.ConnectionPool's quiet factory is not used"
    )
    assert list(inspect.signature(factory).parameters) == ["quiescentCallback", "metadata"], (
        "Twisted changed _HTTP11ClientFactory(quiescentCallback, metadata)"
    )
    assert compat.QuietClientFactory(lambda p: None, "m").noisy is False
    built = compat.QuietClientFactory(lambda p: None, "m").buildProtocol(None)
    assert type(built) is compat.ClientProtocol
    assert isinstance(built, compat.HeadSplitClientProtocol)


_BIG = b"data: " + b"x" * 200 + b"\n\n"
_BIG = _BIG * (6000 // len(_BIG))
_GARBAGE = b"z" * 5000
ANSWERS = {
    "length": b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Type: text/event-stream\r\n"
    b'Content-Length: %d\r\nConnection: keep-alive\r\nETag: "1"\r\n\r\n%s' % (len(_BIG), _BIG),
    "chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n"
    % (len(_BIG), _BIG),
    "close": b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s"
    % (len(_BIG), _BIG),
    "no-length": b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n" + _BIG,
    "more-than-its-length": b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n" + _BIG,
    "204-then-bytes": b"HTTP/1.1 204 No Content\r\nServer: x\r\n\r\n" + _GARBAGE,
    "empty-then-bytes": b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n" + _GARBAGE,
    "100-continue": b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s"
    % (len(_BIG), _BIG),
    "bare-lf-head": b"HTTP/1.1 200 OK\nContent-Length: %d\n\n%s\r\n\r\n%s"
    % (len(_BIG) + 4 + len(_GARBAGE), _BIG, _GARBAGE),
    "folded-header": b"HTTP/1.1 200 OK\r\nX-Long: a\r\n b\r\nContent-Length: %d\r\n\r\n%s"
    % (len(_BIG), _BIG),
    "bad-status": b"HTTP/1.1 abc OK\r\nContent-Length: %d\r\n\r\n%s" % (len(_BIG), _BIG),
    "bad-header-name": b"HTTP/1.1 200 OK\r\nBad Name: 1\r\nContent-Length: %d\r\n\r\n%s"
    % (len(_BIG), _BIG),
    "small": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}",
}
"""Answers as an upstream may send them in one read, most over `compat.SPLIT_FROM`."""


def test_an_answer_read_with_its_body_is_read_as_twisted_reads_it() -> None:
    """`HeadSplitClientProtocol` reads each answer as `HTTP11ClientProtocol` reads it
    in one read: the same status, headers, body and its end, the same state after,
    the connection given back to the pool or closed alike, broken answers alike."""
    from twisted.internet.protocol import Protocol
    from twisted.web._newclient import HTTP11ClientProtocol
    from twisted.web._newclient import Request as ClientRequest
    from twisted.web.http_headers import Headers

    class Body(Protocol):
        def __init__(self) -> None:
            self.parts: list[bytes] = []
            self.end: Any = None

        def dataReceived(self, data: bytes) -> None:
            self.parts.append(data)

        def connectionLost(self, reason: Any) -> None:
            self.end = reason.type.__name__

    def outcome(kind: type[HTTP11ClientProtocol], raw: bytes, persistent: bool = True) -> Any:
        quiescent: list[Any] = []
        protocol = kind(quiescent.append)
        transport = StringTransport()
        protocol.makeConnection(transport)
        got: list[Any] = []
        body = Body()

        def answered(response: Any) -> None:
            got.append((response.code, list(response.headers.getAllRawHeaders())))
            response.deliverBody(body)

        headers = Headers({b"host": [b"u"]})
        sent = ClientRequest(b"POST", b"/v1/chat/completions", headers, None, persistent)
        protocol.request(sent).addCallbacks(answered, lambda f: got.append(f.type.__name__))
        protocol.dataReceived(raw)
        return (
            got,
            b"".join(body.parts),
            body.end,
            protocol._state,
            protocol._parser is None,
            len(quiescent),
            transport.disconnecting,
        )

    for name, raw in ANSWERS.items():
        for persistent in (True, False):  # as the pool sends, and as one request alone
            expected = outcome(HTTP11ClientProtocol, raw, persistent)
            assert outcome(compat.HeadSplitClientProtocol, raw, persistent) == expected, name
            assert outcome(compat.ClientProtocol, raw, persistent) == expected, name
    assert outcome(HTTP11ClientProtocol, ANSWERS["length"])[1] == _BIG
    assert outcome(HTTP11ClientProtocol, ANSWERS["empty-then-bytes"])[5] == 1  # to the pool


@implementer(IStreamServerEndpoint)
class _Upstream:
    """An upstream host reached in memory: each connection is a StringTransport."""

    def __init__(self) -> None:
        self.factories: list[Any] = []
        self.protocols: list[Any] = []

    def connect(self, factory: Any) -> Deferred[Any]:
        self.factories.append(factory)
        protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 80))
        protocol.makeConnection(StringTransport())
        self.protocols.append(protocol)
        return succeed(protocol)

    def endpointForURI(self, uri: Any) -> _Upstream:
        return self

    def answer(self, protocol: Any) -> None:
        protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")


class _RecordingPool(UpstreamPool):
    """Notes the keys Agent asks for (their shape is Agent's business)."""

    keys: list[Any]

    def getConnection(self, key: Any, endpoint: Any) -> Deferred[Any]:
        self.keys = [*getattr(self, "keys", []), key]
        return super().getConnection(key, endpoint)


def test_an_idle_connection_is_taken_from_twisteds_own_cache() -> None:
    """One real request through Agent and the pool; the second reuses its connection.

    This goes through everything `compat.ConnectionPool` relies on: `_factory`,
    `_newConnection`, the pool caching a connection that turned quiescent in
    `_connections` with an idle timeout in `_timeouts`, and its `state`.
    """
    clock = Clock()
    upstream = _Upstream()
    pool = _RecordingPool(clock, 4)
    agent = Agent.usingEndpointFactory(clock, upstream, pool=pool)
    first = agent.request(b"GET", b"http://u.test/")
    assert isinstance(upstream.factories[0], compat.QuietClientFactory), (
        "HTTPConnectionPool._newConnection no longer builds the connection with `_factory`"
    )
    upstream.answer(upstream.protocols[0])
    assert resultOf(first).code == 200
    assert len(clock.getDelayedCalls()) == 1, (
        "Twisted no longer caches a quiescent connection with an idle timeout: "
        "check HTTPConnectionPool._putConnection, _connections and _timeouts"
    )
    cached = pool.takeIdleConnection(pool.keys[0])
    assert cached is upstream.protocols[0], (
        "HTTPConnectionPool._connections no longer maps a key to its cached "
        "connections, or their `state` is no longer QUIESCENT when idle"
    )
    assert clock.getDelayedCalls() == [], "taking a connection must cancel its idle timeout"


def test_the_pool_hands_out_a_cached_connection_wrapped_for_replay() -> None:
    clock = Clock()
    upstream = _Upstream()
    agent = Agent.usingEndpointFactory(clock, upstream, pool=UpstreamPool(clock, 4))
    first = agent.request(b"GET", b"http://u.test/")
    upstream.answer(upstream.protocols[0])
    resultOf(first)
    second = agent.request(b"GET", b"http://u.test/")
    assert len(upstream.protocols) == 1, "the idle connection was not reused"
    upstream.answer(upstream.protocols[0])
    assert resultOf(second).code == 200


def test_a_new_connection_is_cached_by_the_pool_it_came_from() -> None:
    clock = Clock()
    upstream = _Upstream()
    pool = UpstreamPool(clock, 4)
    protocol = resultOf(pool.newConnection("key", upstream))
    assert protocol is upstream.protocols[0]
    assert protocol.state == "QUIESCENT", "Twisted renamed HTTP11ClientProtocol's idle state"
    assert pool.takeIdleConnection("key") is None


# -- the listening port ------------------------------------------------------------


@implementer(IStreamServerEndpoint)
class _Endpoint:
    def __init__(self, result: Deferred[Any]) -> None:
        self.result = result

    def listen(self, factory: Any) -> Deferred[Any]:
        return self.result


def test_a_port_that_cannot_be_bound_fails_the_start() -> None:
    error = CannotListenError("127.0.0.1", 8000, OSError("in use"))
    service = StreamServerEndpointService(_Endpoint(fail(error)), Factory())
    compat.raiseListenErrorsAtStart(service)
    try:
        service.privilegedStartService()
    except CannotListenError:
        pass
    else:
        raise AssertionError(
            "StreamServerEndpointService._raiseSynchronously no longer makes "
            "privilegedStartService raise a listen error: a busy port would only be logged"
        )


def test_the_bound_port_is_known_once_listening() -> None:
    port = object()
    service = StreamServerEndpointService(_Endpoint(succeed(port)), Factory())
    service.privilegedStartService()
    waiting = compat.whenListening(service)
    assert isinstance(waiting, Deferred), (
        "StreamServerEndpointService._waitingForPort is no longer the Deferred of "
        "endpoint.listen: ProxyService.listeningPort cannot say where it listens"
    )
    assert resultOf(waiting) is port


# -- the client connection and the sent request ----------------------------------


class _Socket(FileDescriptor):
    """Twisted's own file-descriptor transport, with the socket replaced by a list."""

    def __init__(self, reactor: Any) -> None:
        super().__init__(reactor)
        self.connected = 1
        self.sent: list[bytes] = []

    def writeSomeData(self, data: bytes) -> int:
        self.sent.append(bytes(data))
        return len(data)

    def getHost(self) -> IPv4Address:
        return IPv4Address("TCP", "127.0.0.1", 8000)

    def getPeer(self) -> IPv4Address:
        return IPv4Address("TCP", "127.0.0.1", 50000)


class _Head(Resource):
    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.sentAtOnce: list[bytes] = []

    def render_GET(self, request: Any) -> Any:
        transport = request.channel.transport
        with compat.SendTogether.of(request):  # not plain TCP: flushed as flushNow does
            request.write(b"event: message_start\n\n")
            assert transport.sent == [], "Twisted wrote before the reactor's turn"
        self.sentAtOnce = list(transport.sent)
        return NOT_DONE_YET


def test_what_a_request_wrote_goes_out_at_once() -> None:
    assert IWriteDescriptor.implementedBy(FileDescriptor), (
        "Twisted's FileDescriptor (under TCP and TLS transports) no longer provides "
        "IWriteDescriptor: compat.SendTogether cannot flush a stream's head"
    )
    reactor = MemoryReactorClock()
    resource = _Head()
    channel = Site(resource, reactor=reactor).buildProtocol(None)
    socket = _Socket(reactor)
    channel.makeConnection(socket)
    channel.dataReceived(b"GET /v1/messages HTTP/1.1\r\nHost: proxy.test\r\n\r\n")
    sent = b"".join(resource.sentAtOnce)
    assert sent.startswith(b"HTTP/1.1 200 OK\r\n"), (
        "request.channel.transport.doWrite() no longer sends what the request wrote: "
        "check twisted.web.http.Request.channel and FileDescriptor.doWrite"
    )
    assert b"event: message_start" in sent
    socket.connectionLost(None)


def test_SendTogether_leaves_a_request_without_a_connection_alone() -> None:
    class Request:
        channel = None

    with compat.SendTogether.of(Request()):  # type: ignore[arg-type]  # a client already gone
        pass


def test_flushNow_sends_what_a_transport_holds_at_once() -> None:
    socket = _Socket(MemoryReactorClock())
    socket.write(b"POST /v1/chat/completions HTTP/1.1\r\n")
    socket.write(b"{}")
    assert socket.sent == []
    compat.flushNow(socket)
    assert b"".join(socket.sent) == b"POST /v1/chat/completions HTTP/1.1\r\n{}", (
        "FileDescriptor.doWrite no longer sends what write buffered: compat.flushNow "
        "leaves every request and answer a reactor turn late"
    )


def test_flushNow_leaves_a_closing_transport_to_the_reactor() -> None:
    """Only the reactor may finish a close (from what doWrite returns): a flush of a
    closing connection would send its last bytes and leave it open for good."""
    socket = _Socket(MemoryReactorClock())
    socket.write(b"the last answer")
    socket.loseConnection()
    compat.flushNow(socket)
    assert socket.sent == []
    assert socket.disconnecting


def test_flushNow_without_a_file_descriptor_or_anything_buffered_does_nothing() -> None:
    compat.flushNow(None)
    compat.flushNow(StringTransport())
    socket = _Socket(MemoryReactorClock())
    compat.flushNow(socket)
    assert socket.sent == []


def test_an_upstream_requests_head_and_body_leave_together_at_once() -> None:
    from twisted.web._newclient import HTTP11ClientProtocol, Request
    from twisted.web.http_headers import Headers

    socket = _Socket(MemoryReactorClock())
    protocol = HTTP11ClientProtocol()
    protocol.makeConnection(socket)
    body = b'{"model":"m","messages":[]}'
    protocol.request(
        Request(b"POST", b"/v1/chat/completions", Headers({b"host": [b"up"]}), BytesProducer(body))
    )
    assert len(socket.sent) == 1, (
        "the request's head and body did not leave in one send within request(): "
        "LengthEnforcingConsumer no longer holds the transport as _consumer "
        "(compat.flushConsumer)"
    )
    assert socket.sent[0].startswith(b"POST /v1/chat/completions HTTP/1.1\r\n")
    assert socket.sent[0].endswith(body)


class _Answer(Resource):
    isLeaf = True

    def render_POST(self, request: Any) -> Any:
        from ccproxy.web.app import _answer

        _answer(b'{"type":"message"}', request, [])
        self.sent = list(request.transport.sent)
        return NOT_DONE_YET


def _sentAtOnce(resource: _Answer | _Events) -> bytes:
    """What `resource`, answering an empty POST, had sent when its render returned."""
    channel = Site(resource, reactor=MemoryReactorClock()).buildProtocol(None)
    socket = _Socket(MemoryReactorClock())
    channel.makeConnection(socket)
    channel.dataReceived(_EMPTY_POST)
    socket.connectionLost(None)
    return b"".join(resource.sent)


def test_a_whole_answer_leaves_at_once() -> None:
    sent = _sentAtOnce(_Answer())
    assert sent.startswith(b"HTTP/1.1 200 OK\r\n"), "the answer waited for the reactor's turn"
    assert b'{"type":"message"}' in sent
    assert sent.endswith(b"0\r\n\r\n")


class _Events(Resource):
    isLeaf = True

    def render_POST(self, request: Any) -> Any:
        from ccproxy.relay.relay import EventWriter

        writer = EventWriter(request, Clock(), 10.0)
        writer.write([{"type": "ping"}])
        self.sent = list(request.transport.sent)
        return NOT_DONE_YET


_EMPTY_POST = b"POST /v1/messages HTTP/1.1\r\nHost: proxy.test\r\nContent-Length: 0\r\n\r\n"


def test_a_streams_events_leave_at_once() -> None:
    sent = _sentAtOnce(_Events())
    assert b"event: ping" in sent, "the events waited for the reactor's turn"


class _Echo(Resource):
    isLeaf = True

    def render_POST(self, request: Any) -> bytes:
        return request.content.read()  # type: ignore[no-any-return]


def test_the_body_producer_of_a_real_treq_request_is_found() -> None:
    agent = RequestTraversalAgent(_Echo())
    http = HTTPClient(agent, data_to_body_producer=BytesProducer)
    requested = http.request("POST", "http://upstream.test/v1", data=b"x" * 1000, unbuffered=True)
    agent.flush()
    response = resultOf(requested)
    producer = compat.sentBodyProducer(response)
    assert isinstance(producer, BytesProducer), (
        "response.request.original.bodyProducer no longer leads to the request's body "
        "producer (Twisted's _ClientRequestProxy or treq's response wrapper changed): "
        "UpstreamClient.post cannot release a sent body"
    )


def test_sentBodyProducer_of_a_response_without_a_request_is_none() -> None:
    class Response:
        pass

    assert compat.sentBodyProducer(Response()) is None  # type: ignore[arg-type]


# -- the request line before the body --------------------------------------------


def test_the_request_line_is_known_when_the_headers_are_in() -> None:
    from twisted.web.http import HTTPChannel, Request

    seen: list[tuple[bytes, bytes]] = []

    class Peek(Request):
        def gotLength(self, length: Any) -> None:
            seen.append(compat.pendingRequestLine(self.channel))
            super().gotLength(length)

    channel = HTTPChannel()
    channel.requestFactory = Peek  # type: ignore[assignment]
    channel.makeConnection(StringTransport())
    channel.dataReceived(b"POST /v1/messages?x=1 HTTP/1.1\r\nContent-Length: 5\r\n\r\n")
    assert seen == [(b"POST", b"/v1/messages?x=1")], (
        "HTTPChannel no longer keeps the request line as _command/_path while the "
        "headers and body are read: the site's early refusals cannot name the request"
    )


# -- the drain ---------------------------------------------------------------------


def test_twistd_exits_with_the_signal_the_reactor_kept() -> None:
    from twisted.application.app import ApplicationRunner
    from twisted.internet import reactor

    assert getattr(reactor, "_exitSignal", "missing") is None, (
        "the reactor no longer keeps `_exitSignal`: compat.exitNormallyAfter cannot "
        "make a drained SIGTERM exit 0"
    )
    assert "reactor._exitSignal" in inspect.getsource(ApplicationRunner.startReactor), (
        "twistd no longer reads reactor._exitSignal to exit with the signal"
    )

    class Stopped:
        _exitSignal: int | None = 15

    stopped = Stopped()
    compat.exitNormallyAfter(stopped, 2)  # another signal (SIGINT) keeps its status
    assert stopped._exitSignal == 15
    compat.exitNormallyAfter(stopped, 15)
    assert stopped._exitSignal is None
    compat.exitNormallyAfter(Clock(), 15)  # no such attribute: nothing to do


# -- the rule ----------------------------------------------------------------------


def test_no_module_but_compat_imports_a_private_twisted_name() -> None:
    found = []
    for path in sorted((ROOT / "ccproxy").rglob("*.py")):
        if path.name == "compat.py" and path.parent.name == "ccproxy":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("twisted"):
                names = [node.module or "", *(alias.name for alias in node.names)]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names if alias.name.startswith("twisted")]
            else:
                continue
            if any(part.startswith("_") for name in names for part in name.split(".")):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert found == [], "private Twisted imports outside ccproxy/compat.py"


# -- log events --------------------------------------------------------------------


def test_an_emitted_event_is_the_one_logger_emit_makes() -> None:
    """`emitEvent` hands the logger's observer the event `Logger.emit` would: the
    same keys and values (but the time), so every observer and every log reader
    sees an access line as before."""
    made: list[dict[str, Any]] = []

    class Source:
        log = Logger(namespace="ccproxy.test", observer=made.append)

    logger = Source().log  # with a source, as a class's logger has
    for level in (LogLevel.info, LogLevel.warn):
        logger.emit(level, "{a} {b}", a=1, b="two")
        compat.emitEvent(logger, level, "{a} {b}", {"a": 1, "b": "two"})
        twisted, ours = made[-2:]
        assert abs(twisted.pop("log_time") - ours.pop("log_time")) < 5
        assert twisted == ours, "twisted.logger's Logger.emit builds another event"
        assert ours["log_source"] is not None and ours["log_level"] is level


# -- header lines ------------------------------------------------------------------

HEADER_LINES = [
    b"Host: proxy",
    b"content-type:application/json",
    b"X-Api-Key:  \t key \t ",
    b"x-API-key: second",
    b"Content-MD5: abc",
    b"Anthropic-Beta: a,b, c",
    b"Empty:",
    b"Colons: a:b:c",
    b"no colon at all",
    b": no name",
    b"Bad Name: x",
    b"Bad\x00Name: x",
    b"N\xe9me: x",
    b"Value: a\x00b",
    b"Value: a\rb",
    b"Value: a\x0bb\x0cc\x1c",
    b"Value: \x0b\x0cv\x0c \x1c",
    b"Value: caf\xc3\xa9",
    b"Content-Length: 12",
    b"Content-Length: 12",
    b"Content-Length: -1",
    b"Content-Length: 1 2",
    b"Content-Length: \xd9\xa1",
    b"Transfer-Encoding: chunked",
    b"Transfer-Encoding: identity",
    b"Transfer-Encoding: gzip, chunked",
    b"transfer-encoding: CHUNKED",
]


def test_header_lines_are_kept_as_twisted_keeps_them() -> None:
    """`QuickHeaderChannel.headerReceived` agrees with `HTTPChannel`'s on every line:
    the same verdict, the same 400, the same headers kept, the same body framing,
    and the same cap on the number of headers."""

    def outcome(channelType: type[HTTPChannel], lines: list[bytes], cap: int = 500) -> Any:
        channel = channelType()
        channel.makeConnection(StringTransport())
        channel.maxHeaders = cap
        refused: list[bool] = []
        channel._respondToBadRequestAndDisconnect = lambda: refused.append(True)  # type: ignore[method-assign]
        channel.requests = [Request(channel)]
        channel._receivedHeaderCount = 0
        verdicts = [channel.headerReceived(line) for line in lines]
        decoder = channel._transferDecoder
        return (
            verdicts,
            refused,
            list(channel.requests[-1].requestHeaders.getAllRawHeaders()),
            channel.length,
            type(decoder),
            getattr(decoder, "length", None),
            channel._receivedHeaderCount,
        )

    cases = [[line] for line in HEADER_LINES]
    cases += [HEADER_LINES[:8], HEADER_LINES[17:19], HEADER_LINES[17:], HEADER_LINES[22:]]
    cases += [[b"Content-Length: 5", b"Transfer-Encoding: chunked"]]
    for lines in cases:
        assert outcome(compat.QuickHeaderChannel, lines) == outcome(HTTPChannel, lines), lines
    many = [b"X-N: %d" % i for i in range(6)]
    assert outcome(compat.QuickHeaderChannel, many, 4) == outcome(HTTPChannel, many, 4)
    assert outcome(HTTPChannel, many, 4)[1] == [True, True]


# -- a request on the pool without Agent --------------------------------------------


def test_poolRequest_sends_as_agent_does_on_the_pools_connection() -> None:
    """`poolRequest` over the real pool and `HTTP11ClientProtocol`: the request line
    from the URI's origin form, the headers given, the connection cached when done."""
    from twisted.web.http_headers import Headers

    clock = Clock()
    upstream = _Upstream()
    pool = UpstreamPool(clock, 4)
    uri = compat.requestURI(b" http://u.test:8080/v1/chat?x=1 ")
    headers = Headers({b"Host": [b"u.test:8080"]})
    sent = compat.poolRequest(
        pool, ("k",), upstream, b"POST", uri, uri.originForm, headers, BytesProducer(b"{}")
    )
    written = upstream.protocols[0].transport.value()
    assert written.startswith(b"POST /v1/chat?x=1 HTTP/1.1\r\n"), (
        "Twisted changed Request._construct(method, path, headers, body, persistent, "
        "parsedURI) or HTTP11ClientProtocol.request"
    )
    assert b"Host: u.test:8080\r\n" in written and written.endswith(b"\r\n\r\n{}")
    upstream.answer(upstream.protocols[0])
    response = resultOf(sent)
    assert response.code == 200
    assert compat.sentBodyProducer(response) is not None
    assert pool.takeIdleConnection(("k",)) is upstream.protocols[0]


def test_requestURI_refuses_what_agent_refuses() -> None:
    import pytest

    with pytest.raises(ValueError):
        compat.requestURI(b"http://u.test/\r\nX: 1")


def test_decoded_unwraps_gzip_as_contentdecoderagent_does() -> None:
    from twisted.web.client import GzipDecoder
    from twisted.web.http_headers import Headers

    class Response:
        def __init__(self, headers: dict[bytes, list[bytes]]) -> None:
            self.headers = Headers(headers)
            self.length = 10

    plain = Response({b"content-type": [b"application/json"]})
    assert compat.decoded(plain) is plain  # type: ignore[arg-type]
    zipped = compat.decoded(Response({b"content-encoding": [b"gzip"]}))  # type: ignore[arg-type]
    assert isinstance(zipped, GzipDecoder), "ContentDecoderAgent._handleResponse changed"
    assert not zipped.headers.hasHeader(b"content-encoding")


# -- response headers ccproxy makes itself -------------------------------------------


def test_an_own_header_is_set_as_request_setHeader_sets_it() -> None:
    """`setOwnHeader` leaves a response's headers as `Request.setHeader` does: the
    same name (canonical), value, and order on the wire; a later set replaces."""

    def written(setting: Any) -> tuple[list[Any], bytes]:
        channel = HTTPChannel()
        channel.makeConnection(StringTransport())
        request = Request(channel)
        request.setHeader(b"x-first", b"1")
        setting(request, b"content-type", b"text/plain")
        setting(request, b"content-length", b"2")
        setting(request, b"request-id", b"req_0")
        setting(request, b"content-type", b"application/json")
        headers = list(request.responseHeaders.getAllRawHeaders())
        request.write(b"{}")  # the head goes out
        return headers, channel.transport.value().split(b"\r\n\r\n")[0]

    def own(request: Request, name: bytes, value: bytes) -> None:
        compat.setOwnHeader(name)(request, value)

    expected = written(lambda request, name, value: request.setHeader(name, value))
    assert written(own) == expected
    assert b"Content-Type: application/json" in expected[1].split(b"\r\n")


# -- writes sent at once without the reactor watching the socket (SendTogether) ----


class _Held(Protocol):
    """The server side of a real loopback connection, kept for the test."""

    lost: Deferred[None]

    def connectionMade(self) -> None:
        self.lost = Deferred()
        self.factory.made.callback(self)

    def connectionLost(self, reason: Any = None) -> None:
        self.lost.callback(None)


@define
class _Loopback:
    """A real TCP connection on the global reactor."""

    transport: Any
    """The server's side (a `tcp.Server`)."""
    peer: socket.socket
    """The client's side, a blocking socket that reads only when told."""
    lost: Deferred[None]
    """Fires when the server's side is lost."""


@pytest_twisted.async_yield_fixture()
async def loopback() -> AsyncIterator[_Loopback]:
    factory = Factory.forProtocol(_Held)
    factory.made = Deferred()  # type: ignore[attr-defined]
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    peer = socket.create_connection(("127.0.0.1", port.getHost().port))
    try:
        protocol = await within(factory.made)  # type: ignore[attr-defined]
        yield _Loopback(protocol.transport, peer, protocol.lost)
        peer.close()
        await within(protocol.lost)
    finally:
        peer.close()
        await port.stopListening()


async def _readAll(peer: socket.socket, size: int) -> bytes:
    """What the peer reads until `size` bytes or the end, the reactor sending meanwhile."""
    peer.setblocking(False)
    got = bytearray()

    def more() -> bool:
        while len(got) < size:
            try:
                data = peer.recv(1 << 20)
            except BlockingIOError:
                return False
            if not data:
                return True
            got.extend(data)
        return True

    await waitUntil(more, f"{size} bytes at the peer")
    return bytes(got)


def _watched(transport: Any) -> bool:
    return transport in reactor.getWriters()


@pytest_twisted.ensureDeferred
async def test_what_a_block_writes_leaves_in_one_send_with_the_socket_never_watched(
    loopback: _Loopback,
) -> None:
    transport = loopback.transport
    transport.write(b"<")  # Twisted's own way first: what it adds to the connection
    compat.flushNow(transport)
    attributes = set(vars(transport))
    sends: list[int] = []
    send = transport.writeSomeData
    transport.writeSomeData = lambda data: sends.append(len(data)) or send(data)
    with compat.SendTogether(transport):
        transport.write(b"HTTP/1.1 200 OK\r\n")
        transport.writeSequence([b"Content-Length: 2\r\n", b"\r\n"])
        assert not _watched(transport), (
            "FileDescriptor.write no longer registers through startWriting: "
            "compat.SendTogether does not keep the socket unwatched"
        )
        transport.write(b"ok")
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    assert sends == [len(answer)], "the block's writes did not leave in one doWrite at its end"
    assert not _watched(transport)
    assert transport.reactor is reactor
    # No attribute added, even for the block: CPython 3.11 would then read every
    # attribute of the connection a third slower, for as long as it lives.
    assert set(vars(transport)) == attributes | {"writeSomeData"}
    assert await _readAll(loopback.peer, len(answer) + 1) == b"<" + answer


@pytest_twisted.ensureDeferred
async def test_what_a_full_socket_did_not_take_goes_to_the_reactor_in_order(
    loopback: _Loopback,
) -> None:
    transport = loopback.transport
    transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    loopback.peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    pattern = b"".join(b"%07d\n" % i for i in range(50_000))  # 400 KB, lines numbered
    with compat.SendTogether(transport):
        transport.write(pattern[:300_000])
    assert _watched(transport), "the rest was not handed to the reactor"
    assert transport.dataBuffer or transport._tempDataBuffer
    with compat.SendTogether(transport):  # more while the rest waits: after it
        transport.write(pattern[300_000:])
    assert await _readAll(loopback.peer, len(pattern)) == pattern
    await waitUntil(lambda: not _watched(transport), "the reactor to stop watching")


@pytest_twisted.ensureDeferred
async def test_a_close_asked_within_a_block_closes_once_everything_is_sent(
    loopback: _Loopback,
) -> None:
    transport = loopback.transport
    with compat.SendTogether(transport):
        transport.write(b"the last answer")
        transport.loseConnection()
    assert _watched(transport), "only the reactor may finish a close"
    assert await _readAll(loopback.peer, 100) == b"the last answer"  # then the end
    await within(loopback.lost)


@pytest_twisted.ensureDeferred
async def test_a_write_to_a_peer_that_reset_the_connection_loses_it_cleanly(
    loopback: _Loopback,
) -> None:
    transport = loopback.transport
    loopback.peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    loopback.peer.close()  # a reset
    for _ in range(3):  # the first send may still be taken before the reset is seen
        if not transport.connected:
            break
        with compat.SendTogether(transport):
            transport.write(b"x" * 100_000)
        await deferLater(reactor, 0.05)
    await within(loopback.lost)
    assert not transport.connected


def test_a_transport_that_is_not_plain_tcp_is_flushed_as_flushNow_does() -> None:
    socket_ = _Socket(MemoryReactorClock())
    with compat.SendTogether(socket_):
        socket_.write(b"over TLS, or a test's")
        assert socket_.sent == []
    assert socket_.sent == [b"over TLS, or a test's"]
    assert isinstance(socket_.reactor, MemoryReactorClock)
    with compat.SendTogether(None), compat.SendTogether(StringTransport()):
        pass


# -- the upstream connection (ClientProtocol) ----------------------------------------


class _Recording(StringTransport):
    """A connection noting the pauses and resumes asked of it."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def pauseProducing(self) -> None:
        self.calls.append("pause")
        super().pauseProducing()

    def resumeProducing(self) -> None:
        self.calls.append("resume")
        super().resumeProducing()


def _clientRequest() -> tuple[compat.ClientProtocol, _Recording, Deferred[Any]]:
    from twisted.web._newclient import Request
    from twisted.web.http_headers import Headers

    protocol = compat.QuietClientFactory(lambda p: None, None).buildProtocol(None)
    assert isinstance(protocol, compat.ClientProtocol), (
        "_HTTP11ClientFactory.buildProtocol is no longer what the pool calls"
    )
    transport = _Recording()
    protocol.makeConnection(transport)
    body = BytesProducer(b"{}")
    requested = protocol.request(Request(b"POST", b"/v1", Headers({b"host": [b"up"]}), body))
    assert isinstance(protocol._transportProxy._producer, compat._PauseOnNextRead), (
        "HTTP11ClientProtocol.request no longer makes _transportProxy, a "
        "TransportProxyProducer proxying the transport as _producer"
    )
    return protocol, transport, requested


_HEAD = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n"


def test_a_body_read_in_the_heads_turn_costs_the_connection_no_pause() -> None:
    protocol, transport, requested = _clientRequest()
    body = Collect()
    requested.addCallback(lambda response: response.deliverBody(body))
    protocol.dataReceived(_HEAD + b"01234")
    protocol.dataReceived(b"56789")
    assert b"".join(body.parts) == b"0123456789"
    assert body.done.called
    assert transport.calls == [], (
        "the head's pause reached the connection although the body's reader came "
        "in the same turn: HTTPClientParser.allHeadersReceived or "
        "Response.deliverBody changed how they pause and resume"
    )


def test_more_of_a_body_before_its_reader_pauses_the_connection_first() -> None:
    protocol, transport, requested = _clientRequest()
    protocol.dataReceived(_HEAD + b"012")
    assert transport.calls == []
    protocol.dataReceived(b"345")  # nobody reads the body yet: pause, keep this
    assert transport.calls == ["pause"]
    body = Collect()
    resultOf(requested).deliverBody(body)
    assert transport.calls == ["pause", "resume"]
    protocol.dataReceived(b"6789")
    assert b"".join(body.parts) == b"0123456789"


def test_a_request_refused_by_a_busy_connection_leaves_its_answer_be() -> None:
    """A second request on a connection still reading an answer is refused; more of
    that answer, not yet read, still pauses the connection."""
    from twisted.web._newclient import Request, RequestNotSent
    from twisted.web.http_headers import Headers

    protocol, transport, requested = _clientRequest()
    protocol.dataReceived(_HEAD + b"012")
    refused = protocol.request(Request(b"GET", b"/", Headers({b"host": [b"up"]}), None))
    assert isinstance(refused.result.value, RequestNotSent)
    refused.addErrback(lambda _: None)
    protocol.dataReceived(b"345")
    assert transport.calls == ["pause"]
    body = Collect()
    resultOf(requested).deliverBody(body)
    protocol.dataReceived(b"6789")
    assert b"".join(body.parts) == b"0123456789"


def test_an_idle_connection_is_not_paused_for_a_response_nobody_read() -> None:
    """A response whole in the head's read goes back to the pool read or not; bytes
    arriving on the idle connection then are Twisted's to refuse, not a pause's."""
    protocol, transport, requested = _clientRequest()
    protocol.dataReceived(_HEAD + b"0123456789")
    assert protocol.state == "QUIESCENT"
    protocol.dataReceived(b"HTTP/1.1 200 OK\r\n")  # unasked: the connection is dropped
    assert "pause" not in transport.calls
    assert transport.disconnecting
    resultOf(requested)


def test_a_body_readers_own_pause_reaches_the_connection_at_once() -> None:
    protocol, transport, requested = _clientRequest()
    body = Collect()
    requested.addCallback(lambda response: response.deliverBody(body))
    protocol.dataReceived(_HEAD + b"012")
    body.transport.pauseProducing()  # backpressure from a slow client
    assert transport.calls == ["pause"]
    body.transport.resumeProducing()
    assert transport.calls == ["pause", "resume"]


@pytest_twisted.ensureDeferred
async def test_an_upstream_request_leaves_without_the_socket_watched() -> None:
    from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
    from twisted.web._newclient import Request
    from twisted.web.http_headers import Headers

    listening = socket.create_server(("127.0.0.1", 0))
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", listening.getsockname()[1])
    protocol = compat.ClientProtocol(lambda p: None)
    await within(connectProtocol(endpoint, protocol))
    upstream, _ = listening.accept()
    try:
        body = b'{"model":"m"}' * 1000
        requested = protocol.request(
            Request(b"POST", b"/v1", Headers({b"host": [b"up"]}), BytesProducer(body))
        )
        assert not _watched(protocol.transport)
        sent = await _readAll(upstream, 1)
        sent += await _readAll(upstream, len(body) - len(sent.partition(b"\r\n\r\n")[2]))
        assert sent.startswith(b"POST /v1 HTTP/1.1\r\n") and sent.endswith(body)
        upstream.setblocking(True)
        upstream.sendall(_HEAD + b"0123456789")
        response = await within(requested)
        answer = Collect()
        response.deliverBody(answer)
        await within(answer.done)
        assert b"".join(answer.parts) == b"0123456789"
    finally:
        upstream.close()
        listening.close()
        protocol.transport.loseConnection()


# -- a request's processing (ccproxy.web.site.LimitedRequest) ---------------------------


def test_a_request_is_processed_as_twisteds_site_request_processes_it() -> None:
    """`QuickProcessRequest.process` does what `twisted.web.server.Request.process`
    does: the same Server and Date headers (in the same order, on the wire too),
    prepath and postpath, the same resource rendered, `*` answered, an encoding
    resource's encoder taken, and a resource that raises answered as a failure."""
    from twisted.web.resource import EncodingResourceWrapper
    from twisted.web.server import GzipEncoderFactory
    from twisted.web.server import Request as SiteRequest

    class Leaf(Resource):
        isLeaf = True

        def render(self, request: Any) -> bytes:
            request.setHeader(b"content-type", b"text/plain")
            return b"leaf " + b"/".join(request.postpath)

    class Broken(Resource):
        isLeaf = True

        def render(self, request: Any) -> bytes:
            raise RuntimeError("a bug")

    root = Resource()
    root.putChild(b"v1", Leaf())
    root.putChild(b"gz", EncodingResourceWrapper(Leaf(), [GzipEncoderFactory()]))
    root.putChild(b"broken", Broken())
    site = Site(root)

    def outcome(kind: type[SiteRequest], method: bytes, path: bytes) -> Any:
        channel = HTTPChannel()
        channel.site = site
        channel.makeConnection(StringTransport())
        request = kind(channel)
        channel.requests.append(request)
        request.method, request.uri, request.path = method, path, path.split(b"?")[0]
        request.clientproto = b"HTTP/1.1"
        request.requestHeaders.setRawHeaders(b"accept-encoding", [b"gzip"])
        logged: list[Any] = []
        request._log = Logger(observer=logged.append)
        request.process()
        return (
            request.site is site,
            list(request.responseHeaders.getAllRawHeaders()),
            request.prepath,
            request.postpath,
            request.code,
            type(request._encoder).__name__,
            channel.transport.value(),
            len(logged),
        )

    for method, path in [
        (b"POST", b"/v1/messages"),
        (b"GET", b"/v1/a%20b/c%2Fd/"),
        (b"GET", b"//v1//%/x%"),
        (b"GET", b"/"),
        (b"GET", b"/gz/x"),
        (b"GET", b"/broken"),
        (b"GET", b"/missing"),
        (b"OPTIONS", b"*"),
    ]:
        expected = outcome(SiteRequest, method, path)
        assert outcome(compat.QuickProcessRequest, method, path) == expected, (
            "twisted.web.server.Request.process changed its steps",
            method,
            path,
        )


def test_the_date_header_is_twisteds_of_the_current_second() -> None:
    """The Date header, made once a second, is `datetimeToString` of that second."""
    from time import time

    from twisted.web.http import datetimeToString

    before = int(time())
    made = compat._httpDate()
    assert made in {datetimeToString(before), datetimeToString(int(time()))}
    assert compat._httpDate() is made or compat._httpDate() == datetimeToString(int(time()))


def test_keep_only_headers_keeps_the_named_ones_whatever_their_case() -> None:
    from twisted.web.http_headers import Headers

    headers = Headers()
    for name, value in [(b"x-api-key", b"k"), (b"Connection", b"close"), (b"user-agent", b"cc")]:
        headers.addRawHeader(name, value)
    headers.addRawHeader(b"Connection", b"keep-alive")
    compat.keepOnlyHeaders(headers, (b"connection", b"X-API-KEY", b"authorization"))
    assert dict(headers.getAllRawHeaders()) == {
        b"X-Api-Key": [b"k"],
        b"Connection": [b"close", b"keep-alive"],
    }
    assert headers.getRawHeaders(b"x-api-key") == [b"k"]
    assert not headers.hasHeader(b"user-agent")


# -- instance dicts of the objects a live stream holds -------------------------------


def _ownDict(obj: object, name: str) -> bool:
    """Whether `obj` keeps its attributes in a dict of its own (one naming `name`),
    not as values beside its class's shared keys."""
    return any(type(r) is dict and name in r for r in gc.get_referents(obj))


def test_shared_instance_keys_keep_late_attributes_out_of_a_dict_of_their_own() -> None:
    """A thousand objects made at once, each setting its attributes later (as
    streams come), keep them beside their class's shared keys once the names
    are shared first (`shareInstanceKeys`)."""

    class Late:
        pass

    names = [f"late{i}" for i in range(20)]
    compat.shareInstanceKeys(Late, names)
    made = [Late() for _ in range(1000)]
    for obj in made:
        for name in names:
            setattr(obj, name, 1)
    assert not any(_ownDict(obj, "late0") for obj in made)


def test_the_shared_names_are_what_twisted_sets_on_a_request_and_its_parser() -> None:
    """What twisted.web sets on a request from its start to its answer's end, and on
    the upstream answer's parser, is within the names shared at import
    (`compat.REQUEST_ATTRIBUTES`, `CLIENT_PARSER_ATTRIBUTES`): else a Twisted
    upgrade gave each live stream's objects dicts of their own again. (The
    channel's: `tests/test_site.py`.)"""
    from twisted.web._newclient import HTTPClientParser
    from twisted.web._newclient import Request as ClientRequest
    from twisted.web.test.requesthelper import DummyChannel

    from ccproxy.web.site import LimitedRequest

    request = Request(DummyChannel())
    request.setResponseCode(200)
    request.registerProducer(StringTransport(), True)
    request.write(b"x")
    ended = set(vars(request))
    assert ended - {"finished", "_disconnected"} <= set(compat.REQUEST_ATTRIBUTES)
    assert len(compat.REQUEST_ATTRIBUTES) <= 29  # CPython shares at most 30 names
    assert not set(LimitedRequest.__slots__) & set(compat.REQUEST_ATTRIBUTES)

    sent = ClientRequest(b"POST", b"/", Headers(), None)
    parser = HTTPClientParser(sent, lambda rest: None)
    parser.makeConnection(StringTransport())
    parser.dataReceived(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
    parser.response._bodyDataReceived = lambda data: None  # type: ignore[method-assign]
    parser.dataReceived(b"0\r\n\r\n")
    assert set(vars(parser)) <= set(compat.CLIENT_PARSER_ATTRIBUTES)


def test_bound_timer_methods_are_shared_by_every_timer_and_timers_still_work() -> None:
    """`bindTimerMethods`: each `DelayedCall` holds the reactor's canceller, resetter
    and clock; bound once, every timer shares the same three objects (else three
    made per timer), and timers still fire, move and cancel as before."""
    from twisted.internet.base import ReactorBase

    class Bare(ReactorBase):  # a reactor's timers, without its file descriptors
        def installWaker(self) -> None:
            pass

    reactor = Bare()
    compat.bindTimerMethods(reactor)
    fired: list[str] = []
    a = reactor.callLater(10, fired.append, "a")
    b = reactor.callLater(20, fired.append, "b")
    c = reactor.callLater(30, fired.append, "c")
    assert a.canceller is b.canceller and a.resetter is b.resetter and a.seconds is b.seconds
    assert a.canceller == reactor._cancelCallLater  # what Twisted hands a timer
    b.reset(0)  # sooner: the resetter moves it up
    a.cancel()
    reactor.runUntilCurrent()
    assert fired == ["b"] and c.active() and not a.active()
    clock = Clock()
    compat.bindTimerMethods(clock)  # not a ReactorBase: left alone
    assert "callLater" not in vars(clock)
