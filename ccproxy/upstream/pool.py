"""The upstream connection pool: persistent connections, and a replay when a
kept-alive connection turns out to be dead.

Gateways (llama-server among them) close idle kept-alive connections without
saying so; the next request on such a connection fails before any answer. Twisted
replays only idempotent requests in that case. Our POST bodies are in memory and
nothing was answered, so the request is replayed once, at once, on a new connection.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from functools import partial
from typing import Any

from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    wrapClientTLS,
)
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.python.failure import Failure
from twisted.web.client import (
    URI,
    BrowserLikePolicyForHTTPS,
    RequestNotSent,
    RequestTransmissionFailed,
    ResponseNeverReceived,
)
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

from ccproxy import compat


class _ReplayOnStale:
    """A cached connection that replays its request on a new connection if the old
    one fails before any answer (and not because the client cancelled): what
    `UpstreamPool.getConnection` hands Twisted's `Agent` (the telemetry client)."""

    def __init__(self, connection: Any, newConnection: Callable[[], Deferred[Any]]) -> None:
        self._connection = connection
        self._newConnection = newConnection

    def request(self, request: Any) -> Deferred[Any]:
        d: Deferred[Any] = self._connection.request(request)
        return d.addErrback(_replayed, self._newConnection, request)


def _replayed(reason: Failure, newConnection: Callable[[], Deferred[Any]], request: Any) -> Any:
    """`request` sent again on `newConnection()` when `reason` says the cached
    connection failed before any answer, and not because the request was cancelled;
    else `reason` as it is."""
    error = reason.value
    if not isinstance(error, RequestNotSent | RequestTransmissionFailed | ResponseNeverReceived):
        return reason
    if any(r.check(CancelledError) for r in getattr(error, "reasons", ())):
        return reason
    return newConnection().addCallback(lambda fresh: fresh.request(request))


class UpstreamPool(compat.ConnectionPool):
    """Persistent connections to the upstreams, replaying on a stale one."""

    retryAutomatically = False  # our replay covers POST; Twisted's only GET and friends

    def __init__(self, reactor: Any, maxPerHost: int) -> None:
        super().__init__(reactor, persistent=True)
        self.maxPersistentPerHost = maxPerHost

    def getConnection(self, key: Hashable, endpoint: IStreamClientEndpoint) -> Deferred[Any]:
        cached = self.takeIdleConnection(key)
        if cached is None:
            return self.newConnection(key, endpoint)
        return succeed(_ReplayOnStale(cached, partial(self.newConnection, key, endpoint)))

    def sendOnIdle(
        self,
        connection: Any,
        key: Hashable,
        endpoint: IStreamClientEndpoint,
        request: Any,
        answered: Callable[[Any], Any] | None = None,
    ) -> Deferred[Any]:
        """`request` on a cached connection, replayed on a new one if that one
        turns out dead (`_replayed`); the answer, replayed or not, through
        `answered`. One pair of callbacks (each added callback costs a request
        some 6,000 instructions), the replay's connection made only for a replay."""
        d: Deferred[Any] = connection.request(request)
        return d.addCallbacks(
            answered or _same,
            _replayedOnNew,
            errbackArgs=(self, key, endpoint, request, answered),
        )


def _same(response: Any) -> Any:
    return response


def _replayedOnNew(
    reason: Failure,
    pool: UpstreamPool,
    key: Hashable,
    endpoint: IStreamClientEndpoint,
    request: Any,
    answered: Callable[[Any], Any] | None,
) -> Any:
    """`_replayed` on a new connection of `pool`, its answer through `answered`."""
    replayed = _replayed(reason, partial(pool.newConnection, key, endpoint), request)
    if answered is None or replayed is reason:
        return replayed
    return replayed.addCallback(answered)


@implementer(IAgentEndpointFactory)
class UpstreamEndpoints:
    """Endpoints for upstream URLs. An IP address is connected to directly:
    Twisted's default would still send it through getaddrinfo in a thread, once per
    new connection, which a burst of new streams queues up behind."""

    def __init__(self, reactor: Any, connectTimeout: float) -> None:
        self._reactor = reactor
        self._timeout = connectTimeout
        self._tls = BrowserLikePolicyForHTTPS()

    def endpointForURI(self, uri: URI) -> IStreamClientEndpoint:
        host = uri.host.decode("ascii")
        endpoint: IStreamClientEndpoint
        if isIPv6Address(host):
            endpoint = TCP6ClientEndpoint(self._reactor, host, uri.port, timeout=self._timeout)
        elif isIPAddress(host):
            endpoint = TCP4ClientEndpoint(self._reactor, host, uri.port, timeout=self._timeout)
        else:
            endpoint = HostnameEndpoint(self._reactor, uri.host, uri.port, timeout=self._timeout)
        if uri.scheme == b"https":
            creator = self._tls.creatorForNetloc(uri.host, uri.port)
            endpoint = wrapClientTLS(creator, endpoint)
        return endpoint
