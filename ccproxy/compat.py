"""Every use of Twisted's private API in ccproxy, behind one door.

Each function or class here reaches past Twisted's public interfaces because the
public ones cannot do what the proxy needs; each docstring says what it relies on
and why. A Twisted upgrade that changes one of these shapes breaks here, and
`tests/test_compat.py` names the change, instead of the proxy misbehaving quietly.
The rule for the rest of ccproxy: no `twisted` name that starts with `_` is
imported, and no `_attribute` of a Twisted object is touched, outside this module.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Sequence
from time import time
from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.internet import tcp
from twisted.internet.base import ReactorBase
from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IListeningPort, IStreamClientEndpoint, IWriteDescriptor
from twisted.logger import Logger, LogLevel
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure
from twisted.web._newclient import HEADER as _HEADER
from twisted.web._newclient import STATUS as _STATUS
from twisted.web._newclient import (
    BadHeaders,
    HTTP11ClientProtocol,
    HTTPClientParser,
    RequestGenerationFailed,
    TransportProxyProducer,
    _ensureValidURI,
)
from twisted.web._newclient import Request as _ClientRequest
from twisted.web._newclient import _moduleLog as _newclientLog
from twisted.web.client import (
    URI,
    ContentDecoderAgent,
    GzipDecoder,
    HTTPConnectionPool,
    _HTTP11ClientFactory,
)
from twisted.web.http import NO_BODY_CODES, HTTPChannel, datetimeToString, toChunk, unquote
from twisted.web.http_headers import Headers, _nameEncoder
from twisted.web.iweb import IBodyProducer, IRequest, IResponse
from twisted.web.resource import _IEncodingResource
from twisted.web.server import Request as _SiteRequest
from twisted.web.server import version as _serverVersion

SPLIT_FROM = 4096
"""Bytes of a read from which the head and the body it holds are handed to Twisted's
line reader apart, a client's request (`ccproxy.web.site.ProxyChannel`) or an
upstream's answer (`HeadSplitClientProtocol`); a smaller read costs less whole."""


class HeadSplitClientProtocol(HTTP11ClientProtocol):
    """`HTTP11ClientProtocol` that reads a response's head whole when one read holds
    it (`readHead`), then hands what follows to the response parser as a read of
    its own, as TCP may deliver it.

    Relies on: the connection's `_parser`, the `HTTPClientParser` of the request
    in flight (None once its response is over), in state `STATUS` until its
    status line is read, with an empty line buffer (`_buffer`) and not inside its
    own `dataReceived` (`_busyReceiving`) before a head has begun; a failure
    while reading handed to `_giveUp`, as `HTTP11ClientProtocol.dataReceived`
    does; and `_finishResponse` ignoring the bytes after a response that ended
    with its head (its `rest`), which this drops the same way. Why: the parser's
    `LineReceiver` splits the rest of its buffer off at every head line, copying
    all of the body each time (nginx's ten header lines sent with a 57 KB event
    stream in one read cost 70-110 us to read, 31 us read as two), and each line
    goes through four calls and a `Headers.addRawHeader` (a nine-line head:
    17 us, 5 us read whole).
    """

    def dataReceived(self, bytes: bytes) -> None:
        parser = self._parser
        if (
            parser is not None
            and parser.state == _STATUS
            and not parser._buffer
            and not parser._busyReceiving
        ):
            end = bytes.find(b"\r\n\r\n")
            if end != -1:
                head = bytes[:end]
                if _plainHead(head, parser):
                    try:
                        readHead(parser, head)
                    except BaseException:
                        self._giveUp(Failure())
                        return
                elif len(bytes) > SPLIT_FROM:
                    HTTP11ClientProtocol.dataReceived(self, bytes[: end + 4])
                else:
                    HTTP11ClientProtocol.dataReceived(self, bytes)
                    return
                if self._parser is not parser:
                    return  # the answer ended with its head: what follows is dropped
                bytes = bytes[end + 4 :]
                if not bytes:
                    return
        HTTP11ClientProtocol.dataReceived(self, bytes)


def _plainHead(head: bytes, parser: HTTPClientParser) -> bool:
    """Whether `readHead` reads `head` as the parser would: lines ended by CR LF
    alone (no bare CR or LF, no line folded onto the one before), none past the
    parser's line limit, not the answer to a HEAD request (whose Content-Length is
    not a framing header)."""
    return (
        len(head) <= parser.MAX_LENGTH and crlfLinesOnly(head) and parser.request.method != b"HEAD"
    )


def crlfLinesOnly(head: bytes) -> bool:
    """Whether every line of `head` ends with CR LF (no bare CR or LF inside it)
    and none is folded onto the one before (begins with a space or a tab): a head
    that Twisted's line readers take line by line as `head.split(b"\\r\\n")` cuts it."""
    crlf = head.count(b"\r\n")
    return (
        head.count(b"\n") == crlf
        and head.count(b"\r") == crlf
        and b"\r\n " not in head
        and b"\r\n\t" not in head
    )


def readHead(parser: HTTPClientParser, head: bytes) -> None:
    """Hand `head` (a response's status and header lines, CR LF between them, no
    empty line) to `parser` as its `dataReceived` would, line by line.

    Relies on: `HTTPClientParser.dataReceived` noting that data came
    (`_everReceivedData`); `HTTPParser.lineReceived` calling `statusReceived` with
    the first line and moving to `HEADER`, then, for each header line, splitting
    it at its first colon (a ValueError without one), stripping the value and
    calling `headerReceived`, which lower-cases the name and adds it with
    `Headers.addRawHeader` to `connHeaders` when it is one of
    `CONNECTION_CONTROL_HEADERS`, else to `headers` (a value cannot hold a line
    break here: `addRawHeader`'s cleaning leaves it as it is); the last header
    line kept as `_partialHeader`; then `allHeadersReceived`. A name is
    canonicalized by `_nameEncoder.encode`, whose `_canonicalHeaderCache` (the
    names it has seen, checked then) is read here first, a call fewer per header
    line. Why: see `HeadSplitClientProtocol`."""
    lines = head.split(b"\r\n")
    parser._everReceivedData = True
    parser.statusReceived(lines[0])
    parser.state = _HEADER
    if len(lines) > 1:
        headers = parser.headers._rawHeaders
        connection = parser.connHeaders._rawHeaders
        control = parser.CONNECTION_CONTROL_HEADERS
        encode = _nameEncoder.encode
        known = _nameEncoder._canonicalHeaderCache
        for line in lines[1:]:
            name, value = line.split(b":", 1)
            name = name.lower()
            kept = connection if name in control else headers
            kept.setdefault(known.get(name) or encode(name), []).append(value.strip())
        parser._partialHeader = [lines[-1]]
    parser.allHeadersReceived()


class _PauseOnNextRead:
    """The producer a response's `TransportProxyProducer` forwards to (`ClientProtocol`):
    the connection, whose first pause (the response parser's, once the head is in)
    waits for the next read instead of being made at once.

    A pause and a resume within one turn cost the reactor two `epoll_ctl` calls
    (the socket dropped from the poll set and added back); the body's reader is
    nearly always given in the turn the head arrives."""

    __slots__ = ("_armed", "_transport", "pending")

    def __init__(self, transport: Any) -> None:
        self._transport = transport
        self._armed = True
        self.pending = False

    def pauseProducing(self) -> None:
        if self._armed:  # the head is in and nobody reads the body yet
            self._armed = False
            self.pending = True
        else:  # a body reader's own pause (backpressure): now
            self._transport.pauseProducing()

    def resumeProducing(self) -> None:
        self._armed = False
        if self.pending:  # the body has its reader before any more was read
            self.pending = False
        else:
            self._transport.resumeProducing()

    def pauseNow(self) -> None:
        """More of the body arrived before its reader: pause as Twisted would have."""
        self.pending = False
        self._transport.pauseProducing()

    def stopProducing(self) -> None:
        self._transport.stopProducing()

    def loseConnection(self) -> None:
        self._transport.loseConnection()


class ClientProtocol(HeadSplitClientProtocol):
    """Twisted's HTTP/1.1 client connection, a request written without the reactor
    watching the socket for room, no pause and resume of the connection between a
    response's head and its body's reader, and a response's head read apart from
    its body (`HeadSplitClientProtocol`).

    Relies on: `HTTP11ClientProtocol.request` writing the request to `transport`
    within the call (`Request.writeTo`; `BytesProducer` writes its body at once),
    then making `_transportProxy`, a `TransportProxyProducer` whose `_producer` is
    the transport, the transport of the response parser and of the response's
    body reader; `HTTPClientParser.allHeadersReceived` pausing that proxy when the
    head is in (the first pause it gets), and `Response.deliverBody` resuming it;
    bytes read while nobody reads the body being kept by the `Response`. Why: per
    upstream request, `SendTogether` saves the `epoll_ctl` pair of the request's
    send, and `_PauseOnNextRead` the pair of the head's pause: the reader, given in
    the same turn, resumes a pause never made. If more of the body arrives first,
    the connection is paused before that read goes on (`dataReceived`), and those
    bytes wait in the `Response` as they would have in the socket.
    """

    _pauses: _PauseOnNextRead | None = None

    def request(self, request: Any) -> Deferred[IResponse]:
        if self._state == "QUIESCENT" and type(request) is WrittenWhole:
            try:
                lines = request.wholeLines()
            except BaseException:
                lines = None  # Twisted's own `request` fails it as it does
            if lines is not None:
                return self._sendWhole(request, lines)
        before = self._transportProxy
        with SendTogether(self.transport):
            requested: Deferred[IResponse] = super().request(request)
        proxy = self._transportProxy
        if proxy is not before and proxy is not None and proxy._producer is self.transport:
            self._pauses = proxy._producer = _PauseOnNextRead(self.transport)
        return requested  # (refused, `RequestNotSent`: the answer being read is left be)

    def _sendWhole(self, request: WrittenWhole, lines: list[bytes]) -> Deferred[IResponse]:
        """`request`, written whole (`lines`), sent as `HTTP11ClientProtocol.request`
        sends it, its answer's Deferred the response parser's own.

        Relies on: what `request` does for a request written within `writeTo`:
        `_state` "TRANSMITTING" while writing (a write that raises: "GENERATION_FAILED",
        the connection aborted, `RequestGenerationFailed`), then "WAITING";
        `_finishedRequest`, whose canceller (the state no longer "TRANSMITTING")
        aborts the connection and disconnects the parser with a `CancelledError`;
        `_currentRequest`; `_transportProxy` (here over `_PauseOnNextRead`, as
        `request` above sets it); `_parser`, an `HTTPClientParser(request,
        _finishResponse)` connected to that proxy, firing or failing its
        `_responseDeferred` once (`allHeadersReceived`, `connectionLost`) and
        dropping it, which `request` chains to `_finishedRequest` and keeps as
        `_responseDeferred`; both forgotten by `_disconnectParser`. Why: for a
        request written within the call, Twisted makes a fired Deferred for the
        write, three closures, and a second Deferred the parser's fires through
        (`chainDeferred`): here the parser fires the request's Deferred itself,
        one Deferred and one run of callbacks fewer per request."""
        transport = self.transport
        self._state = "TRANSMITTING"
        try:
            with SendTogether(transport):
                transport.writeSequence(lines)
        except BaseException:
            self._state = "GENERATION_FAILED"
            transport.abortConnection()
            return fail(RequestGenerationFailed([Failure()]))
        self._state = "WAITING"
        finished: Deferred[IResponse] = Deferred(self._cancelWaiting)
        self._finishedRequest = self._responseDeferred = finished
        self._currentRequest = request
        self._pauses = pauses = _PauseOnNextRead(transport)
        proxy = self._transportProxy = TransportProxyProducer(pauses)
        parser = self._parser = _parserFor(request, self._finishResponse, finished)
        parser.makeConnection(proxy)
        return finished

    def _cancelWaiting(self, finished: Deferred[IResponse]) -> None:
        """A request written whole (`_sendWhole`) cancelled before its answer's head:
        as Twisted's canceller does once the request is written."""
        self.transport.abortConnection()
        self._disconnectParser(Failure(CancelledError()))

    def _finishResponse_WAITING(self, rest: bytes) -> None:
        """A response read whole on a kept-alive connection: the connection made
        quiescent, resumed and handed to the pool, then the parser let go.

        Relies on: `HTTP11ClientProtocol._finishResponse_WAITING`'s steps for a
        request written whole (`_state` "WAITING"), persistent, answered without
        `Connection: close` (the parser's `connHeaders`, read in its
        `_rawHeaders` by the name `_nameEncoder` makes of it): `_state` made
        "QUIESCENT", the transport resumed, `_quiescentCallback(self)` called (an
        exception from it logged on `_newclient`'s logger, the connection then
        closed), and `_disconnectParser` given a synthetic `ConnectionDone`. Why:
        without its `failuresHandled` context manager (1.1-1.4 us a request). Every
        other case is Twisted's own: an answer before the request was written, a
        parser already let go, a connection that closes."""
        parser = self._parser
        if (
            self._state != "WAITING"
            or parser is None
            or not self._currentRequest.persistent
            # `getRawHeaders(b"Connection", ())`, read where it keeps it (`keepOnlyHeaders`)
            or b"close" in parser.connHeaders._rawHeaders.get(b"Connection", ())
        ):
            HTTP11ClientProtocol._finishResponse_WAITING(self, rest)
            return
        self._state = "QUIESCENT"
        self.transport.resumeProducing()
        try:
            self._quiescentCallback(self)
        except BaseException:
            _newclientLog.failure("while invoking quiescent callback:")
            self.transport.loseConnection()
        self._disconnectParser(ConnectionDone("synthetic!"))

    def dataReceived(self, bytes: bytes) -> None:
        pauses = self._pauses
        if pauses is not None and pauses.pending:
            if self._transportProxy is not None:  # (None: that response is over)
                pauses.pauseNow()
            self._pauses = None
        super().dataReceived(bytes)


def _parserFor(
    request: Any, finisher: Callable[[bytes], None], answered: Deferred[IResponse]
) -> HTTPClientParser:
    """`HTTPClientParser(request, finisher)` whose `_responseDeferred` is `answered`.

    Relies on: `HTTPClientParser.__init__` setting `request`, `finisher`,
    `_responseDeferred` (a new Deferred) and `_everReceivedData` (False), and
    nothing else (tests/test_client_whole.py compares the two). Why: the Deferred
    it makes would be dropped at once for `answered` (`ClientProtocol._sendWhole`):
    a Deferred made for nothing costs some 3,000 instructions."""
    parser: HTTPClientParser = HTTPClientParser.__new__(HTTPClientParser)
    parser.request = request
    parser.finisher = finisher
    parser._responseDeferred = answered
    parser._everReceivedData = False
    return parser


class QuietClientFactory(_HTTP11ClientFactory):
    """`HTTPConnectionPool`'s connection factory, without a log line per connection,
    building `ClientProtocol`s.

    Relies on: `twisted.web.client._HTTP11ClientFactory`, built by the pool as
    `_factory(quiescentCallback, metadata)`, its `buildProtocol` giving each
    connection the `_quiescentCallback`. Why: a factory logs "Starting factory"
    for every upstream connection; a busy proxy opens thousands.
    """

    noisy = False

    def buildProtocol(self, addr: Any) -> ClientProtocol:
        return ClientProtocol(self._quiescentCallback)


class ConnectionPool(HTTPConnectionPool):
    """Twisted's connection pool, quiet, with names for the two private steps of its
    `getConnection`, so that a subclass can wrap the connection it hands out.

    Relies on: the `_factory` class attribute (see `QuietClientFactory`),
    `_connections` (key -> list of cached `HTTP11ClientProtocol`s), `_timeouts`
    (protocol -> the `IDelayedCall` that closes it when idle too long),
    `_newConnection(key, endpoint)`, and a protocol's `state` being "QUIESCENT"
    while reusable, all as `HTTPConnectionPool.getConnection` itself uses them.
    Why: Twisted replays a request on a dead kept-alive connection only for
    idempotent methods; `ccproxy.upstream.pool` replays POSTs too.
    """

    _factory = QuietClientFactory

    def takeIdleConnection(self, key: Hashable) -> Any | None:
        """Take the first cached connection for `key` that is still idle, or None;
        dead ones met on the way are dropped, as Twisted does."""
        connections = self._connections.get(key)
        while connections:
            connection = connections.pop(0)
            self._timeouts.pop(connection).cancel()
            if connection.state == "QUIESCENT":
                return connection
        return None

    def newConnection(self, key: Hashable, endpoint: IStreamClientEndpoint) -> Deferred[Any]:
        """A new connection for `key`, cached by the pool when its request is done."""
        return self._newConnection(key, endpoint)

    def request(
        self,
        key: Hashable,
        endpoint: IStreamClientEndpoint,
        request: Any,
        answered: Callable[[IResponse], IResponse] | None = None,
    ) -> Deferred[IResponse]:
        """`request` sent on an idle connection for `key` (`sendOnIdle`), else on a
        new one: what `getConnection(key, endpoint)` and the connection's `request`
        do, without a Deferred made and chained for a connection already at hand.
        `answered`: what the answer goes through before the caller has it."""
        idle = self.takeIdleConnection(key)
        if idle is not None:
            return self.sendOnIdle(idle, key, endpoint, request, answered)
        sent = self.newConnection(key, endpoint).addCallback(_send, request)
        return sent if answered is None else sent.addCallback(answered)

    def sendOnIdle(
        self,
        connection: Any,
        key: Hashable,
        endpoint: IStreamClientEndpoint,
        request: Any,
        answered: Callable[[IResponse], IResponse] | None = None,
    ) -> Deferred[IResponse]:
        """`request` on `connection`, a cached one taken for it."""
        sent: Deferred[IResponse] = connection.request(request)
        return sent if answered is None else sent.addCallback(answered)


def _send(connection: Any, request: Any) -> Deferred[IResponse]:
    return connection.request(request)  # type: ignore[no-any-return]


def raiseListenErrorsAtStart(service: StreamServerEndpointService) -> None:
    """Make `service.privilegedStartService()` raise when the port cannot be bound.

    Relies on: `StreamServerEndpointService._raiseSynchronously`, which
    `twisted.application.strports.service` sets for the same reason. Why: without
    it a port already in use is only logged, and twistd runs on serving nothing.
    """
    service._raiseSynchronously = True


def whenListening(service: StreamServerEndpointService) -> Deferred[IListeningPort]:
    """The port `service` listens on, once bound (None before its start).

    Relies on: `StreamServerEndpointService._waitingForPort`, the Deferred its
    `privilegedStartService` gets from `endpoint.listen`. Why: with `listen` on
    port 0 (tests, several instances) only the bound port says where it is.
    """
    return service._waitingForPort  # type: ignore[no-any-return]


def flushNow(transport: Any) -> None:
    """Send what `transport` has buffered now, not at the reactor's next turn.

    Relies on: a TCP or TLS connection providing `IWriteDescriptor`, whose `doWrite`
    the reactor calls when the socket can take data and which sends what `write`
    buffered; its `connected`, `disconnecting` and `_writeDisconnecting` flags. Why: Twisted's
    `write` only buffers and asks the reactor to say when the socket is writable,
    so each write costs a whole reactor turn (epoll, dispatch, logging context)
    before it leaves: a stream's head would wait while a burst of upstream events
    is translated in the same turn, and every request paid that turn twice (its
    request upstream, its answer back). Left alone: a transport that is not a file
    descriptor (a test's, or a client already gone), one with nothing buffered, and
    one that is closing — only the reactor may finish a close, from what `doWrite`
    returns. A full socket keeps the rest for the reactor, as usual.
    """
    if (
        IWriteDescriptor.providedBy(transport)
        and getattr(transport, "connected", False)
        and not getattr(transport, "disconnecting", True)
        and not getattr(transport, "_writeDisconnecting", False)
        and (getattr(transport, "_tempDataBuffer", None) or getattr(transport, "dataBuffer", None))
    ):
        transport.doWrite()


_PLAIN_TCP = (tcp.Server, tcp.Client)


class _Unwatched:
    """The reactor as a held connection sees it (`SendTogether`): asked to watch the
    socket for room, it does nothing; everything else is the reactor's."""

    __slots__ = ("_reactor",)

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor

    def addWriter(self, writer: Any) -> None:
        pass

    def removeWriter(self, writer: Any) -> None:
        self._reactor.removeWriter(writer)

    def addReader(self, reader: Any) -> None:
        self._reactor.addReader(reader)

    def removeReader(self, reader: Any) -> None:
        self._reactor.removeReader(reader)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reactor, name)


class SendTogether:
    """`with SendTogether(transport): ...`: what the block writes leaves in one send
    at its end, without the reactor asked to watch the socket for room.

    Relies on: a plain TCP connection (`twisted.internet.tcp.Server` or `Client`,
    no TLS started on it) whose `write` and `writeSequence` append to
    `_tempDataBuffer` and call `startWriting`, which asks its `reactor` attribute
    to `addWriter` (an `epoll_ctl` asking to be told when the socket has room);
    whose `doWrite` sends what is buffered and, once it is all sent, calls
    `stopWriting` (`removeWriter`, a second `epoll_ctl`); its `connected`,
    `disconnecting`, `_writeDisconnecting`, `dataBuffer` flags and buffers, as
    `flushNow` reads them. Why: a write that leaves at once (`flushNow`) made the
    reactor watch the socket and stop watching it, two syscalls and Twisted's
    bookkeeping for nothing, twice a request (its request upstream, its answer
    back). Within the block the connection's `reactor` is `_Unwatched`, which
    ignores `addWriter` and passes all else on (an existing attribute given
    another value: a new one, such as a shadowed method, would slow every later
    attribute of the connection by a third in CPython 3.11). At its end the
    buffer is sent (`doWrite`), and what the socket did not take, a close asked
    meanwhile, or a failed send is handed to the reactor as Twisted would have:
    its writer is registered. Any other transport (TLS, a test's, none) is
    flushed at the end as `flushNow` does.
    """

    __slots__ = ("_reactor", "_transport")

    def __init__(self, transport: Any) -> None:
        self._transport = transport
        self._reactor: Any = None

    @classmethod
    def of(cls, request: IRequest) -> SendTogether:
        """Held writes on the connection of `request` (a twisted.web request)."""
        return cls(getattr(getattr(request, "channel", None), "transport", None))

    def __enter__(self) -> SendTogether:
        transport = self._transport
        if (
            type(transport) in _PLAIN_TCP
            and transport.connected
            and not transport.disconnecting
            and not transport.TLS
            and type(transport.reactor) is not _Unwatched  # not held already
        ):
            self._reactor = transport.reactor
            transport.reactor = _Unwatched(self._reactor)
        return self

    def __exit__(self, *exc: object) -> None:
        transport = self._transport
        reactor, self._reactor = self._reactor, None
        if reactor is None:
            flushNow(transport)
            return
        transport.reactor = reactor
        if not transport.connected:
            return  # lost within the block: nothing to send or watch
        if (
            (transport._tempDataBuffer or transport.dataBuffer)
            and not transport.disconnecting
            and not transport._writeDisconnecting
            and transport.doWrite() is None
            and not (transport._tempDataBuffer or transport.dataBuffer)
        ):
            return  # all sent
        if (
            transport._tempDataBuffer
            or transport.dataBuffer
            or transport.disconnecting
            or transport._writeDisconnecting
        ):
            transport.startWriting()  # the rest, a close, a failure: the reactor's


def flushConsumer(consumer: Any) -> None:
    """`flushNow` on the connection a request body is written to.

    Relies on: `twisted.web._newclient.LengthEnforcingConsumer`, the consumer
    `Request.writeTo` hands a body producer of known length, holding the
    transport as `_consumer`. Why: an upstream request's head and body, written
    together, should leave together, not a reactor turn later (`flushNow`).
    """
    flushNow(getattr(consumer, "_consumer", consumer))


def sentBodyProducer(response: IResponse) -> IBodyProducer | None:
    """The body producer of the request that `response` answers (None if unknown).

    Relies on: `IResponse.request` (public, an `IClientRequest`) being the
    `proxyForInterface` wrapper that `twisted.web._newclient.Response` makes,
    whose `original` is the `Request` holding `bodyProducer`; treq's response
    passes `request` through. Why: once an answer has begun no replay can need the
    body, and a long stream should not keep its request's body in memory.
    """
    sent = getattr(response, "request", None)
    sent = getattr(sent, "original", sent)
    return getattr(sent, "bodyProducer", None)


def sentRequestHeaders(response: IResponse) -> Headers | None:
    """The headers of the request that `response` answers (None if unknown).

    Relies on: what `sentBodyProducer` relies on, the `Request`'s `headers`. Why:
    they are written by the time an answer begins, and a long stream should not
    keep them (`keepOnlyHeaders(…, ())` empties them)."""
    sent = getattr(response, "request", None)
    sent = getattr(sent, "original", sent)
    headers = getattr(sent, "headers", None)
    return headers if isinstance(headers, Headers) else None


def pendingRequestLine(channel: Any) -> tuple[bytes, bytes]:
    """The method and path of the request whose headers `channel` has just read
    (before its body), or empty bytes when unknown.

    Relies on: `HTTPChannel` keeping the parsed request line as `_command` and
    `_path` from the request line until `allContentReceived`. Why: a request
    refused as soon as its headers are in (no key, too large) leaves an access
    record naming what was asked, and `Request.method`/`path` are set only once
    the whole body has arrived.
    """
    return getattr(channel, "_command", b""), getattr(channel, "_path", b"")


def exitNormallyAfter(reactor: Any, number: int) -> None:
    """Let twistd (or twist) exit 0 although signal `number` stopped the reactor.

    Relies on: `reactor._exitSignal` (`_ISupportsExitSignalCapturing`), which the
    reactor's SIGINT/SIGTERM handler sets and twistd reads once the reactor has
    stopped, to kill itself with that signal again (status 143 for SIGTERM). Why:
    SIGTERM is how a daemon is asked to stop; once it has drained cleanly, its
    supervisor should see a clean exit, 0, as the README promises.
    """
    if getattr(reactor, "_exitSignal", None) == number:
        reactor._exitSignal = None


def emitEvent(logger: Logger, level: LogLevel, format: str, event: dict[str, Any]) -> None:
    """`logger.emit(level, format, **event)` for an event of many fields (the access
    line's thirty), with `event` itself made the event (a dict the caller hands over).

    Relies on: the event `Logger.emit` builds, the caller's fields and the six
    `log_` keys below, going to `logger.observer` (the global publisher, whose
    observers are the log's), with `level` one of `LogLevel`'s. Why: `emit` copies
    the fields through `**` twice (`info`, then `emit`) and checks the level by
    sorting `LogLevel`'s constants, 4.5 us of an access line's 15. `log_trace`
    (Twisted's debugging aid) is not followed.
    """
    # Set one by one (in `emit`'s order), not through `update`'s keyword dict.
    event["log_logger"] = logger
    event["log_level"] = level
    event["log_namespace"] = logger.namespace
    event["log_source"] = logger.source
    event["log_format"] = format
    event["log_time"] = time()
    logger.observer(event)


_FRAMING = (b"Content-Length", b"Transfer-Encoding")


class QuickHeaderChannel(HTTPChannel):
    """`HTTPChannel` that reads a request's head whole when one read holds it
    (`readPlainHead`), and whose `headerReceived` keeps each header as Twisted's
    does, at half the cost: a request's twenty header lines were a tenth of its CPU.

    Relies on: `HTTPChannel.headerReceived`'s steps, each kept: the line split at
    its first `:` (none: 400), the name canonicalized by `http_headers._nameEncoder`
    (its `_canonicalHeaderCache` first; not a token: 400), the value stripped of
    spaces and tabs and refused with a NUL, CR or LF (400; none can be in a head
    `readPlainHead` reads without a NUL byte), a `Content-Length` or
    `Transfer-Encoding` judged by
    `_maybeChooseTransferDecoder`, and more than `maxHeaders` refused
    (`_receivedHeaderCount`, `_respondToBadRequestAndDisconnect`). Why: the value
    goes into the request's `Headers` (`_rawHeaders`) as `addRawHeader` would put
    it, without canonicalizing the name a second time or sanitizing a value
    already known to hold no line break, and only the two framing headers go
    through the transfer decoder's choice (it returns at once for the others).
    """

    __slots__ = ("_holdTimer",)

    def __init__(self) -> None:
        self._holdTimer = False
        super().__init__()

    def allContentReceived(self) -> None:
        """Twisted's, the idle timer held while the request is served (`setTimeout`).

        Relies on: `HTTPChannel.allContentReceived` pausing the idle timer with
        `setTimeout(None)` first, when `timeOut` is set, and `requestDone` setting it
        back with `setTimeout(_savedTimeOut)` (TimeoutMixin: a pending call `reset`,
        else a new one from `callLater`); `resetTimeout` doing nothing while
        `timeOut` is None; the timer's call (`__timedOut`) forgetting it and calling
        `timeoutConnection`. Why: Twisted cancels the connection's timer as each
        request is read and makes another as it ends; held, it is pushed later once
        (`reset`), and a held timer that comes due while the request is served is
        ignored, as a cancelled one would have been. A timer paused any other way
        (`connectionLost`) is cancelled as Twisted cancels it."""
        if self.timeOut:
            self._holdTimer = True
        HTTPChannel.allContentReceived(self)

    def setTimeout(self, period: float | None) -> float | None:
        if self._holdTimer:
            self._holdTimer = False
            if period is None and self._TimeoutMixin__timeoutCall is not None:
                held, self.timeOut = self.timeOut, None
                return held  # type: ignore[no-any-return]
        return HTTPChannel.setTimeout(self, period)  # type: ignore[no-any-return]

    def timeoutConnection(self) -> None:
        if self.timeOut is None:
            return  # a held timer, due while a request is served (`allContentReceived`)
        HTTPChannel.timeoutConnection(self)

    def headerReceived(self, line: bytes) -> bool:
        return self._headersReceived((line,), 0, False) == 1

    def _headersReceived(self, lines: Sequence[bytes], first: int, clean: bool) -> int:
        """`headerReceived` of each of `lines` from `first` on, until one is
        refused: its index (with its 400 sent), or `len(lines)`. `clean`: no line
        holds a NUL, CR or LF (no value is looked at for them)."""
        headers = self.requests[-1].requestHeaders._rawHeaders
        known = _nameEncoder._canonicalHeaderCache
        encode = _nameEncoder.encode
        count = self._receivedHeaderCount
        most = self.maxHeaders
        try:
            for at in range(first, len(lines)):
                try:
                    name, value = lines[at].split(b":", 1)
                    name = known.get(name) or encode(name)  # (encode's first step, inline)
                except ValueError:  # no colon, or a name that is no token (InvalidHeaderName)
                    self._respondToBadRequestAndDisconnect()
                    return at
                value = value.strip(b" \t")
                if not clean and len(value.translate(None, b"\x00\r\n")) != len(value):
                    self._respondToBadRequestAndDisconnect()
                    return at
                if name in _FRAMING and not self._maybeChooseTransferDecoder(name, value):
                    return at
                kept = headers.get(name)
                if kept is None:
                    headers[name] = [value]
                else:
                    kept.append(value)
                count += 1
                if count > most:
                    self._respondToBadRequestAndDisconnect()
                    return at
            return len(lines)
        finally:
            self._receivedHeaderCount = count

    def readPlainHead(self, data: bytes, end: int) -> bool:
        """Read `data` as `dataReceived` would, when it begins a request and holds its
        head whole (`end`: where its blank line's CR LF CR LF begins) in plain CR LF
        lines within every limit: the request line and the blank line through
        `lineReceived`, the header lines from one `split` through `headerReceived`'s
        steps, what follows as the rest of the read. False (nothing done): a read
        `dataReceived` must take (any other head, or in the middle of one).

        Relies on: `LineReceiver.dataReceived` taking each line off its `_buffer` (the
        rest of the read, to which a read arriving meanwhile is added) while
        `_busyReceiving`, in line mode (`line_mode`), not `paused`, calling
        `lineReceived` with it and stopping once the transport is `disconnecting`
        (the rest kept in `_buffer`), then taking the rest in the mode the head left
        (`setLineMode`/`setRawMode`) on the same loop; a line over `MAX_LENGTH` handed
        to `lineLengthExceeded`. `HTTPChannel.dataReceived` calling `resetTimeout`
        first, and `HTTPChannel.lineReceived` counting every line's length in
        `_receivedHeaderSize` (over `totalHeadersSize`: 400), making the request from
        the first line while `__first_line` is 1 (2 after an empty line first), 0
        then; joining a line that begins with a space or a tab to the header line
        before it; keeping a header line in `__header` until the next line comes,
        then handing it to `headerReceived` (a refusal there stops nothing but by
        the transport's `disconnecting`, unless it was the last one); and, at the
        blank line, `allHeadersReceived` then `allContentReceived` or `setRawMode`.
        Why: `LineReceiver` splits each line off the rest of its buffer, and each
        line costs a `lineReceived` and a `headerReceived` call: read whole, a
        Claude Code request's twenty-one lines cost 96,000 instructions fewer
        (`bench.serverside request`, 2.85 -> 2.76 million). A step raising an
        exception leaves `_buffer` unlike Twisted's (the reactor then drops the
        connection, and nothing reads it).
        """
        transport = self.transport
        if (
            end <= 0
            or not self.line_mode
            or self._buffer
            or self._busyReceiving
            or self.paused
            or self._HTTPChannel__first_line != 1
            or not self.persistent
            or transport is None
            or transport.disconnecting
            or end > self.MAX_LENGTH
            or self._receivedHeaderSize + end > self.totalHeadersSize
        ):
            return False
        head = data[:end]
        if not crlfLinesOnly(head):
            return False
        lines = head.split(b"\r\n")
        if not lines[0] or self._receivedHeaderCount + len(lines) - 1 > self.maxHeaders:
            return False
        self.resetTimeout()
        self._busyReceiving = True
        self._buffer = data[end + 4 :]
        try:
            goOn = self._readLines(data, head, lines)
        finally:
            self._busyReceiving = False
        if goOn:
            LineReceiver.dataReceived(self, b"")  # the rest of the read, in the head's mode
        return True

    def _readLines(self, data: bytes, head: bytes, lines: list[bytes]) -> bool:
        """The lines of `head`, which `data` begins with (no limit reached, none
        folded), as `LineReceiver` hands them to `lineReceived`; whether its loop
        goes on with what `_buffer` holds."""
        self.lineReceived(lines[0])
        if not hasattr(self, "_command") or self.transport.disconnecting:
            # Refused (a bad request line: 400): what follows is Twisted's to read.
            self._buffer = data[len(lines[0]) + 2 :]
            return not (self.transport and self.transport.disconnecting)
        refused = self._headersReceived(lines, 1, b"\x00" not in head)
        if refused < len(lines):
            # As Twisted leaves it: the refused line was taken when the next one came.
            after = refused + 2
            self._receivedHeaderSize += sum(map(len, lines[1:after]))
            self._buffer = data[sum(map(len, lines[:after])) + 2 * after :]
            if after <= len(lines):
                self._HTTPChannel__header = lines[after - 1]
            else:  # the last one: the head does not end
                self._HTTPChannel__header = lines[refused]
            return not (self.transport and self.transport.disconnecting)
        self._receivedHeaderSize += len(head) - 2 * (len(lines) - 1) - len(lines[0])
        self.lineReceived(b"")  # the head's end: allHeadersReceived, and on
        return not (self.transport and self.transport.disconnecting)


class QuickProcessRequest(_SiteRequest):
    """`twisted.web.server.Request` whose `process` sets its two default headers
    directly, the date made once a second.

    Relies on: `Request.process`'s steps, each kept in order: `site` taken from
    the channel; `Server` set to `twisted.web.server.version` and `Date` to
    `http.datetimeToString()` (now, to the second), as `setHeader` sets them (the
    canonical name, one value, replacing any); `prepath` empty and `postpath` the
    path's segments unquoted (`http.unquote`, `urllib.parse.unquote_to_bytes`,
    which returns a segment without `%` as it is); a path of `*` to `_handleStar`;
    the resource from `site.getResourceFor`, its encoder taken when it provides
    `resource._IEncodingResource`; then `render`, and any exception to
    `processingFailed`. Why: `setHeader` canonicalizes the name and sanitizes the
    value of both constant headers, and `datetimeToString` formats the time
    anew, on every request (2.0 us; 0.3 us here).
    """

    def process(self) -> None:
        self.site = self.channel.site
        headers = self.responseHeaders._rawHeaders
        headers[b"Server"] = [_serverVersion]
        headers[b"Date"] = [_httpDate()]
        self.prepath = []
        segments = self.path[1:].split(b"/")
        # `unquote` returns a segment without a `%` as it is: not called for each
        self.postpath = list(map(unquote, segments)) if b"%" in self.path else segments
        if self.path == b"*":
            self._handleStar()
            return
        try:
            resrc = self.site.getResourceFor(self)
            if _IEncodingResource.providedBy(resrc):
                encoder = resrc.getEncoder(self)
                if encoder is not None:
                    self._encoder = encoder
            self.render(resrc)
        except BaseException:
            self.processingFailed(Failure())

    def write(self, data: bytes) -> None:
        """`server.Request.write`, a plain answer's writes made here: its head and
        first bytes handed to the channel in one `writeSequence`.

        Relies on: `server.Request.write` giving the answer a `Content-Type` of
        `defaultContentType` on its first write when it has none (not for a 204
        or 304, nor with a `Content-Length` of 0), then, unless `_inFakeHead`,
        encoding the bytes with `_encoder` and calling `http.Request.write`; that
        refusing a write after `finished` (RuntimeError) and dropping one after
        `_disconnected`, and on the first (`startedWriting`) choosing chunked
        framing for an HTTP/1.1 answer without `Content-Length` (`chunked`, a
        `Transfer-Encoding: chunked` header), adding `Last-Modified`, `ETag` and
        `Set-Cookie` headers, writing the head with the channel's `writeHeaders`
        (the status line, then each value of `responseHeaders` in order) and
        writing nothing more for a HEAD request or a 204 or 304 answer; then
        adding to `sentLength` and writing the bytes (`toChunk`'s pieces when
        chunked) with the channel's `write` or `writeSequence`, which pass them to
        the transport as they are. Every other case (an encoder, a HEAD request, a
        204 or 304, a date, an etag, cookies, a finished or lost request) is
        Twisted's own. Why: three calls, five header lookups and two transport
        writes for a head and its body that go out together.
        """
        if self._encoder is not None or self._inFakeHead or self.finished or self._disconnected:
            _SiteRequest.write(self, data)
            return
        if self.startedWriting:
            self.sentLength = self.sentLength + len(data)
            if data:
                if self.chunked:
                    self.channel.writeSequence(toChunk(data))
                else:
                    self.channel.write(data)
            return
        code = self.code
        if (
            code in NO_BODY_CODES
            or self.method == b"HEAD"
            or self.lastModified is not None
            or self.etag is not None
            or self.cookies
        ):
            _SiteRequest.write(self, data)
            return
        headers = self.responseHeaders._rawHeaders
        length = headers.get(b"Content-Length")
        if b"Content-Type" not in headers and self.defaultContentType is not None:
            if not (length and length[0] == b"0"):
                self.responseHeaders.setRawHeaders(b"Content-Type", [self.defaultContentType])
        self.startedWriting = 1
        version = self.clientproto
        if version == b"HTTP/1.1" and length is None:
            headers[b"Transfer-Encoding"] = [b"chunked"]
            self.chunked = 1
        lines = [version, b" ", b"%d" % (code,), b" ", self.code_message, b"\r\n"]
        for name, values in headers.items():
            for value in values:
                lines.extend((name, b": ", value, b"\r\n"))
        lines.append(b"\r\n")
        self.sentLength = self.sentLength + len(data)
        if data:
            if self.chunked:
                lines.extend(toChunk(data))
            else:
                lines.append(data)
        self.channel.writeSequence(lines)


_dated: list[Any] = [None, b""]
"""The second `_httpDate` last formatted, and its text."""


def _httpDate() -> bytes:
    """`http.datetimeToString()`, formatted once per second of the clock."""
    second = int(time())
    if second != _dated[0]:
        _dated[1] = datetimeToString(second)
        _dated[0] = second
    date: bytes = _dated[1]
    return date


# -- instance dicts of the objects a live stream holds --------------------------------

REQUEST_ATTRIBUTES = (
    "notifications", "channel", "client", "host", "requestHeaders", "received_cookies",
    "responseHeaders", "cookies", "transport", "queued", "_parsePOSTFormSubmission",
    "_adapterCache", "content", "args", "method", "uri", "clientproto", "path", "site",
    "prepath", "postpath", "sitepath", "code", "code_message", "startedWriting", "chunked",
    "sentLength", "streamingProducer", "producer",
)  # fmt: skip
"""What twisted.web's `Request` sets on itself from its `__init__` to a stream's
first bytes and its producer (`finished`, set at its end, would be the 30th)."""

CHANNEL_ATTRIBUTES = (
    "requests", "_handlingRequest", "_dataBuffer", "_transferDecoder", "factory",
    "callLater", "timeOut", "requestFactory", "site", "connected", "transport",
    "_TimeoutMixin__timeoutCall", "_networkProducer", "_busyReceiving", "_buffer",
    "_receivedHeaderSize", "_HTTPChannel__first_line", "_command", "_path", "_version",
    "_HTTPChannel__header", "_receivedHeaderCount", "length", "persistent", "line_mode",
    "_savedTimeOut", "_requestProducer", "_requestProducerStreaming",
)  # fmt: skip
"""What twisted.web's `HTTPChannel` (and its `LineReceiver`, `TimeoutMixin`) sets
on itself while it serves a request."""

CONNECTION_ATTRIBUTES = (
    "reactor", "_tempDataBuffer", "_tempDataLen", "socket", "fileno", "protocol",
    "connected", "logstr", "producer", "streamingProducer", "dataBuffer", "offset",
    "disconnecting", "disconnected",
)  # fmt: skip
"""What `twisted.internet.tcp.Connection` sets on itself (server and client side)."""

SERVER_ATTRIBUTES = (*CONNECTION_ATTRIBUTES, "server", "client", "sessionno", "hostname", "repstr")
CLIENT_ATTRIBUTES = (
    *CONNECTION_ATTRIBUTES, "connector", "addr", "_requiresResolution", "realAddress",
    "doWrite", "doRead",
)  # fmt: skip

CLIENT_PARSER_ATTRIBUTES = (
    "request", "finisher", "_responseDeferred", "_everReceivedData", "connected",
    "transport", "headers", "connHeaders", "state", "_partialHeader", "_busyReceiving",
    "_buffer", "response", "bodyDecoder", "line_mode",
)  # fmt: skip
"""What `twisted.web._newclient.HTTPClientParser` sets on itself reading an answer."""


def shareInstanceKeys(cls: type, names: Iterable[str]) -> None:
    """Make `names` keys that `cls`'s instances share (CPython 3.11+).

    Relies on: CPython keeping a class's instance attributes as values beside
    keys the class's instances share (at most 30 names), and taking a name
    into those keys only while few instances have been made (each new instance
    lowers the room left). Why: Twisted's objects set many attributes late in
    their life (a request's `code_message` as its answer begins): made a
    thousand at a time, as streams come, they found no room left, and each got
    a dict of its own, 0.5-1.3 KB more per object for as long as it lives (a
    stream: minutes). One throwaway instance setting every name first, at
    import, puts them all in the shared keys. Without the effect (another
    interpreter), nothing changes but memory."""
    probe = cls.__new__(cls)
    for name in names:
        if hasattr(getattr(cls, name, None), "__set__"):
            continue  # a slot or property: not a key of the instance dict
        object.__setattr__(probe, name, None)


REACTOR_TIMER_METHODS = ("callLater", "seconds", "_cancelCallLater", "_moveCallLaterSooner")
"""What `ReactorBase.callLater` hands each `DelayedCall` (and `HTTPFactory` each
channel): bound methods of the reactor, made anew at each reading."""


def bindTimerMethods(reactor: Any) -> None:
    """Bind the reactor's timer methods once (`REACTOR_TIMER_METHODS`), as
    instance attributes that every later reading returns.

    Relies on: `twisted.internet.base.ReactorBase.callLater` building each
    `DelayedCall` with `self._cancelCallLater`, `self._moveCallLaterSooner` and
    `seconds=self.seconds`, and `HTTPFactory.buildProtocol` giving each channel
    `self.reactor.callLater`. Why: each reading made a bound method (64 bytes)
    that the timer or channel kept: three per timer, some five timers per live
    stream (cancelled ones wait in the reactor's queue until due). The same
    methods, bound once: nothing else changes. A reactor of another kind (a
    test's `Clock`) is left alone."""
    if not isinstance(reactor, ReactorBase):
        return
    for name in REACTOR_TIMER_METHODS:
        setattr(reactor, name, getattr(reactor, name))


def shareTwistedKeys() -> None:
    """`shareInstanceKeys` for the Twisted objects every stream holds: its client
    and upstream TCP connections, and the upstream answer's parser."""
    shareInstanceKeys(tcp.Server, SERVER_ATTRIBUTES)
    shareInstanceKeys(tcp.Client, CLIENT_ATTRIBUTES)
    shareInstanceKeys(HTTPClientParser, CLIENT_PARSER_ATTRIBUTES)


def keepOnlyHeaders(headers: Headers, names: Iterable[bytes]) -> None:
    """Drop every header of `headers` but `names`. Why here: it replaces the
    `Headers`' dict (`_rawHeaders`, keyed by the name as `_nameEncoder`
    canonicalizes it) with one of the kept names alone, where removing the others
    one by one would leave a dict sized for all of them."""
    raw = headers._rawHeaders
    kept = {}
    for name in names:
        name = _nameEncoder.encode(name)
        if name in raw:
            kept[name] = raw[name]
    headers._rawHeaders = kept


# -- an upstream request without Agent (ccproxy.upstream.client.PooledClient) -------


_GZIP = ContentDecoderAgent(None, [(b"gzip", GzipDecoder)])


def requestURI(url: bytes) -> URI:
    """`url` checked and parsed as `Agent.request` does (a ValueError for a URL that
    cannot go on a request line).

    Relies on: `twisted.web._newclient._ensureValidURI`, Agent's own check. Why:
    `PooledClient` parses each upstream URL once, not once per request."""
    return URI.fromBytes(_ensureValidURI(url.strip()))


class WrittenWhole(_ClientRequest):
    """Twisted's client `Request` whose body, already in memory, is written with its
    head in one `writeSequence` within `writeTo`.

    Relies on: `Request.writeTo(transport)` returning a Deferred that fires once the
    request is written (or fails: `HTTP11ClientProtocol.request` also takes an
    exception raised by it as a failure to generate the request), and on the head
    `_writeHeaders` writes: exactly one Host header (else `BadHeaders`), the request
    line, `Connection: close` for a request that is not persistent, the framing
    header, then each value of `headers` on a line of its own (names and values
    already checked and cleaned by `Headers`). A body producer with `content`
    (`ccproxy.upstream.client.BytesProducer`) holds the body; any other producer is
    written by Twisted's own `writeTo`. Why: for a body of known length Twisted
    registers the producer with the transport, wraps the transport in a
    `LengthEnforcingConsumer`, and makes four closures and three Deferreds to learn
    when the producer's writes end, for a body written whole within the call. The
    request is flushed at once (`flushNow`) as `BytesProducer` flushes it.
    """

    def writeTo(self, transport: Any) -> Deferred[None]:
        lines = self.wholeLines()
        if lines is None:
            return super().writeTo(transport)  # type: ignore[no-any-return]
        transport.writeSequence(lines)
        flushNow(transport)
        return succeed(None)

    def wholeLines(self) -> list[bytes] | None:
        """The request's head and body as `writeTo` writes them, or None for a
        body it leaves to Twisted's own `writeTo` (`BadHeaders` without exactly
        one Host header)."""
        content = getattr(self.bodyProducer, "content", None)
        if type(content) is not bytes or len(content) != self.bodyProducer.length:
            return None
        if len(self.headers._rawHeaders.get(b"Host", ())) != 1:
            raise BadHeaders("Exactly one Host header required")
        lines = [b"%b %b HTTP/1.1\r\n" % (self.method, self.uri)]
        if not self.persistent:
            lines.append(b"Connection: close\r\n")
        lines.append(b"Content-Length: %d\r\n" % len(content))
        for name, values in self.headers._rawHeaders.items():
            for value in values:
                lines.append(b"%b: %b\r\n" % (name, value))
        lines.append(b"\r\n")
        lines.append(content)
        return lines


def poolRequest(
    pool: HTTPConnectionPool,
    key: Hashable,
    endpoint: IStreamClientEndpoint,
    method: bytes,
    uri: URI,
    path: bytes,
    headers: Headers,
    body: IBodyProducer | None,
    answered: Callable[[IResponse], IResponse] | None = None,
) -> Deferred[IResponse]:
    """`method` `uri` on a connection of `pool` (`key`, reached through `endpoint`),
    `path` its `originForm` (a property that formats it anew at each reading),
    the way `Agent` issues a request once it has parsed its URL: the connection's
    Deferred (cancelling it while connecting fails it with
    `ConnectingCancelledError`) chained to the connection's `request` (cancelling
    it then aborts the connection). `headers` must hold the Host header.

    Relies on: `Agent._requestWithEndpoint`'s two steps, `pool.getConnection(key,
    endpoint)` handing out an `HTTP11ClientProtocol` (or what `UpstreamPool` wraps
    it in) and `twisted.web._newclient.Request._construct(method, path, headers,
    bodyProducer, persistent, parsedURI)` (here `WrittenWhole`'s). Why:
    `Agent.request` parses the URL, builds an endpoint and copies the headers on
    every request (a tenth of a non-streaming request's CPU with
    `ContentDecoderAgent`), for an upstream whose URL, endpoint and pool key never
    change between reloads. `answered`: what the answer goes through before the
    caller has it (`decoded`), in the callbacks the pool adds anyway."""

    request = WrittenWhole._construct(
        method, path, headers, body, persistent=pool.persistent, parsedURI=uri
    )
    if isinstance(pool, ConnectionPool):
        return pool.request(key, endpoint, request, answered)
    sent = pool.getConnection(key, endpoint).addCallback(_send, request)
    return sent if answered is None else sent.addCallback(answered)


def decoded(response: IResponse) -> IResponse:
    """`response`, its body gzip-decoded when its Content-Encoding says gzip (the
    header then dropped), as `ContentDecoderAgent` hands it out.

    Relies on: `ContentDecoderAgent._handleResponse(response)`, the step that
    wraps the answer. Why: without `ContentDecoderAgent.request`'s copy of the
    request's headers; most answers have no Content-Encoding and are not looked at
    twice."""
    if not response.headers.hasHeader(b"content-encoding"):
        return response
    return _GZIP._handleResponse(response)  # type: ignore[no-any-return]


# -- response headers ccproxy makes itself (ccproxy.web.call) ---------------------------


def setOwnHeader(name: bytes) -> Callable[[IRequest, bytes], None]:
    """`request.setHeader(name, value)` for one header name, for values ccproxy
    makes itself (a content type, a length, a request id: never a client's or an
    upstream's words), at a fifth of the cost.

    Relies on: `Headers._rawHeaders`, a dict from the name as
    `http_headers._nameEncoder` canonicalizes it to the list of its values, which
    `Request.setHeader` -> `Headers.setRawHeaders` fills. Why: that canonicalizes
    the name and sanitizes the value on every call (about a microsecond a
    header, three or four headers a request); here the name is canonicalized
    once, and the value is checked once for line breaks only where it is made."""
    canonical = _nameEncoder.encode(name)

    def setHeader(request: IRequest, value: bytes) -> None:
        request.responseHeaders._rawHeaders[canonical] = [value]

    return setHeader
