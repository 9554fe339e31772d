"""SIGTERM's drain on the client side: the connections, and requests that come too late.

Waiting for requests in flight was not enough. The last stream's handler returned,
the reactor stopped in that same turn, and what it had just written (the last
delta, `message_delta`, `message_stop`, the chunked terminator) was still in the
transport's buffer, never sent. So the drain also waits for every client
connection to close, which a TCP transport does only once its buffer is written.

For that, connections must close: once the drain begins, an idle kept-alive
connection is closed at once, and one with a request in progress closes when its
answer ends. A request that still reaches the app (its bytes were on the way, or
pipelined) gets a 503 `overloaded_error` with `Connection: close`, which Claude
Code retries, rather than a connection closed under it with no answer at all.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource
from zope.interface import implementer

from ccproxy import compat
from ccproxy.errors import ProxyError
from ccproxy.web.call import errorReply, requestId

Refused = Callable[[str, ProxyError, bytes, bytes], None]
"""Told of a refused request: its id, the error, its method and path (the site's
access record for requests answered at its door, `ProxySite.refused`)."""


class Drain:
    """The client connections of one site, and whether they are being drained."""

    log: ClassVar[Logger] = Logger()

    def __init__(self, refused: Refused | None = None) -> None:
        self.draining = False
        self._refused = self._logRefused if refused is None else refused
        self._connections: set[ProtocolWrapper] = set()
        self._waiters: list[Deferred[None]] = []

    def track(self, site: Any) -> WrappingFactory:
        """The factory to listen with: `site`'s connections, known to the drain."""
        return _TrackingFactory(site, self)

    def gate(self, resource: IResource) -> IResource:
        """`resource`, refusing the requests that reach it once the drain has begun."""
        return _Gate(resource, self)

    @property
    def openConnections(self) -> int:
        return len(self._connections)

    def begin(self) -> None:
        """Close the idle connections; the busy ones close after their answer."""
        self.draining = True
        for connection in list(self._connections):
            channel = compat.httpChannel(connection.wrappedProtocol)
            if channel is None:
                continue  # not HTTP/1.x: left to the end of the grace
            if not channel.requests:
                channel.loseConnection()
                continue
            channel.persistent = False
            for request in channel.requests:
                if not request.startedWriting:
                    request.setHeader(b"connection", b"close")

    def whenClosed(self) -> Deferred[None]:
        """Fires once every connection is closed (its last bytes written)."""
        if not self._connections:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._waiters.append(waiter)
        return waiter

    def abort(self) -> None:
        """Cut the connections still open (the grace is over)."""
        for connection in list(self._connections):
            connection.transport.abortConnection()

    def _opened(self, connection: ProtocolWrapper) -> None:
        self._connections.add(connection)

    def _closed(self, connection: ProtocolWrapper) -> None:
        self._connections.discard(connection)
        if not self._connections:
            waiters, self._waiters = self._waiters, []
            for waiter in waiters:
                waiter.callback(None)

    def refuse(self, request: IRequest) -> bytes:
        """A request begun during the drain: 503, and its connection closes after."""
        request.setHeader(b"connection", b"close")
        request.channel.persistent = False  # type: ignore[attr-defined]
        error = ProxyError(503, "ccproxy is shutting down: try again", "overloaded_error")
        body = errorReply(request, error, lambda message: message)  # our words: no secret
        self._refused(requestId(request), error, request.method, request.uri)
        return body

    def _logRefused(self, requestId: str, error: ProxyError, method: bytes, path: bytes) -> None:
        self.log.info(
            "{request_id} refused {method} {path} during the drain",
            request_id=requestId,
            method=method.decode("ascii", "replace"),
            path=path.decode("utf-8", "replace"),
        )


class _Connection(ProtocolWrapper):
    """A client connection; the drain hears of its end after the HTTP channel has."""

    factory: _TrackingFactory

    def connectionLost(self, reason: Any) -> None:
        super().connectionLost(reason)
        self.factory.drain._closed(self)


class _TrackingFactory(WrappingFactory):
    """The site's factory, with each connection known to the drain."""

    protocol = _Connection
    noisy = False  # no "Starting factory" line

    def __init__(self, site: Any, drain: Drain) -> None:
        super().__init__(site)
        self.drain = drain

    def buildProtocol(self, addr: Any) -> ProtocolWrapper | None:
        """None where the site builds none (past its connection caps: closed at once)."""
        protocol = self.wrappedFactory.buildProtocol(addr)
        return None if protocol is None else self.protocol(self, protocol)

    def registerProtocol(self, p: ProtocolWrapper) -> None:
        super().registerProtocol(p)
        self.drain._opened(p)


@implementer(IResource)
class _Gate:
    """The app's resource, behind the drain: a leaf, as Klein's resource is."""

    isLeaf = True

    def __init__(self, resource: IResource, drain: Drain) -> None:
        self._resource = resource
        self._drain = drain

    def getChildWithDefault(self, name: bytes, request: IRequest) -> IResource:
        return self._resource.getChildWithDefault(name, request)

    def putChild(self, path: bytes, child: IResource) -> None:
        raise NotImplementedError("the app's routes are Klein's")

    def render(self, request: IRequest) -> Any:
        if self._drain.draining:
            return self._drain.refuse(request)
        return self._resource.render(request)
