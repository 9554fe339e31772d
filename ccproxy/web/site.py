"""The HTTP site: twisted.web's `Site`, with what a shared daemon needs of its door.

twisted.web reads a whole request body before a handler sees it, and resets its
idle timer on every byte. Alone, that lets one caller hold memory and connections
that every other caller needs. Here:

- a request is judged as soon as its headers are in: no valid key, a body over
  `max_body_bytes`, or no room for its body among all bodies being read
  (`body_memory_bytes`) gets its error envelope at once, before a byte of its body
  is kept (and no `100 Continue`); the rest of that body is read and dropped, then
  the connection closes;
- a request's headers must all arrive within `header_timeout` of its first byte,
  and its body within `body_timeout` after them (slowloris);
- connections are capped per peer address (an IPv6 peer by its /64: `peerKey`) and
  in all (below the open-files limit);
- on SIGTERM the site drains (`beginDrain`): idle kept-alive connections close at
  once, busy ones after their answer, and a request that still arrives gets a 503
  `overloaded_error` with `Connection: close`, which Claude Code retries, rather
  than a connection closed under it. `whenClosed` fires once every connection has
  closed, which a TCP transport does only once its last bytes are written: a
  handler that has returned may still have its stream's end in the buffer.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from io import BytesIO
from typing import Any, ClassVar

import orjson
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.server import Request, Site

from ccproxy.compat import (
    CHANNEL_ATTRIBUTES,
    REQUEST_ATTRIBUTES,
    SPLIT_FROM,
    QuickHeaderChannel,
    QuickProcessRequest,
    pendingRequestLine,
    shareInstanceKeys,
    shareTwistedKeys,
)
from ccproxy.config.model import Client, Config
from ccproxy.errors import ProxyError, invalidRequest
from ccproxy.observe.accesslog import AccessRecord
from ccproxy.web.app import ProxyApp
from ccproxy.web.auth import authenticate, callerKey
from ccproxy.web.call import bodyTooLarge, errorBodyFor, errorHeaders, newId, peerKey
from ccproxy.web.signin import FORM_MAX_BYTES, OPEN_PATHS, isGatewayToken

_REASONS = {
    400: b"Bad Request",
    401: b"Unauthorized",
    408: b"Request Timeout",
    411: b"Length Required",
    413: b"Content Too Large",
    503: b"Service Unavailable",
}
_ENDPOINTS = {b"/v1/messages": "messages", b"/v1/messages/count_tokens": "count_tokens"}
LINGER = 5.0
"""Seconds a refused request's remaining body is read (and dropped) before the
connection is cut: closing with unread bytes resets the connection, and the client
might never see its error."""


def _admitKey(request: Request, config: Config) -> str | None:
    """A body is read only for a caller with a client key, or with a `/login`
    token, returned: that one is looked up in the database, without blocking,
    before the body is read (`LimitedRequest._judgeToken`)."""
    try:
        authenticate(request, config)
    except ProxyError:
        key = callerKey(request)
        if key is None or not isGatewayToken(key) or not config.signIn:
            raise
        return key
    return None


class LimitedRequest(QuickProcessRequest):
    """A request that holds memory for its body only once it has been let in.

    Its own attributes are slots: twisted.web's `Request` sets some thirty, and
    CPython shares an instance dict's keys among a class's instances for thirty
    names at most; past them each request had a dict of its own, 1.3 KB more
    for as long as it lives (a stream: minutes; issue 18)."""

    __slots__ = (
        "_bodyDue",
        "_bodyTimer",
        "_received",
        "_refused",
        "_reserved",
        "_routed",
        "_site",
        "knownCaller",
    )
    channel: ProxyChannel
    _site: ProxySite
    _refused: bool
    _routed: bool
    _reserved: int
    _received: int
    _bodyTimer: IDelayedCall | None
    _bodyDue: float | None
    knownCaller: tuple[Config, Client] | None
    """The client its key named, and in which config (`authenticate`'s)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.knownCaller = None
        self._refused = self._routed = False
        self._reserved = self._received = 0
        self._bodyTimer = self._bodyDue = None
        super().__init__(*args, **kwargs)

    def gotLength(self, length: int | None) -> None:
        """The headers are in: judge the request before its body is read."""
        self.content = BytesIO()
        site = self._site = self.channel.site  # the channel goes once the answer is out
        config = site.config()
        bodyComing = length is None or length > 0
        path = pendingRequestLine(self.channel)[1].split(b"?", 1)[0]
        token = None
        try:
            if path in OPEN_PATHS:  # a sign-in form: no key, and a few fields
                if length is None:
                    raise ProxyError(411, "a sign-in form is sent with its Content-Length")
                if length > FORM_MAX_BYTES:
                    raise ProxyError(413, f"a sign-in form is at most {FORM_MAX_BYTES} bytes")
            elif bodyComing:
                token = _admitKey(self, config)
            if length is not None and length > config.maxBodyBytes:
                raise bodyTooLarge(config)
            if length and not site.reserve(length):
                raise _noRoom()
        except ProxyError as e:
            self._refuse(e)
            return
        self._reserved = length or 0
        # The room is the body's until its request lets go of it (`releaseBody`)
        # or ends (`finish`, `connectionLost`): what a body becomes once parsed is
        # larger than its bytes.
        if bodyComing:  # its deadline runs once this read is over (`bodyStillComing`)
            self._bodyDue = config.bodyTimeout
        if token is not None:
            self._judgeToken(token, config)

    def _judgeToken(self, token: str, config: Config) -> None:
        """A `/login` token's body waits for the token's lookup: no more of it is
        read until the database has answered (a cached verdict answers at once),
        and a dead token is refused then. Else anyone could hold body memory with
        made-up tokens and bodies sent slowly."""
        check = self._site.tokenRefusal
        if check is None:
            return
        transport = self.channel.transport
        verdict = check(token, config)
        paused = not verdict.called
        if paused:
            transport.pauseProducing()

        def judged(error: ProxyError | None) -> None:
            if paused:
                transport.resumeProducing()
            if error is not None and not self._refused and not self._routed:
                self._refuse(error)  # (once routed, the route refuses it itself)

        verdict.addCallback(judged)
        verdict.addErrback(lambda failure: self._site.logger.failure("judging a token", failure))

    def handleContentChunk(self, data: bytes) -> None:
        if self._refused:
            return  # read and dropped
        self._received += len(data)
        config = self._site.config()
        if self._received > config.maxBodyBytes:
            self._refuse(bodyTooLarge(config))
            return
        if self._received > self._reserved:  # a chunked body: room as it comes
            more = self._received - self._reserved
            if not self._site.reserve(more):
                self._refuse(_noRoom())
                return
            self._reserved += more
        self.content.write(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        self._routed = True
        self._stopBodyTimer()
        if not self._refused and self._site.draining:
            self._refuse(_shuttingDown(), (command, path))
        if not self._refused and not isCanonicalPath(path):
            # Served as its decoded form, `/%76%31/usage` would slip past a front
            # proxy's rule for `/v1/usage`.
            self._refuse(invalidRequest("the path is not in canonical form"), (command, path))
        if self._refused:
            self.channel.loseConnection()  # the rest of the body is in: now close
            return
        super().requestReceived(command, path, version)

    def finish(self) -> None:
        # Not through `notifyFinish`: its Deferred and callback would live as long
        # as the request (a stream's minutes).
        super().finish()
        self._release()

    def connectionLost(self, reason: Failure) -> None:
        self._stopBodyTimer()
        self._release()
        super().connectionLost(reason)

    def _bodyLate(self) -> None:
        self._bodyTimer = None
        config = self._site.config()
        self._refuse(
            ProxyError(408, f"the request body did not arrive within {config.bodyTimeout:g} s")
        )
        self.channel.loseConnection()

    def _refuse(self, error: ProxyError, requestLine: tuple[bytes, bytes] | None = None) -> None:
        """Answer `error` now, keep nothing of the body, close once it is in."""
        self._refused = True
        self._release()
        self.content = BytesIO()
        # twisted.web answers `Expect: 100-continue` right after this: not for us.
        self.requestHeaders.removeHeader(b"expect")
        self.channel.refuse(error, requestLine or pendingRequestLine(self.channel))

    def releaseBody(self) -> None:
        """The request's handler has let go of its body (and what it made of it)."""
        self._release()

    def _release(self) -> None:
        if self._reserved:
            self._site.release(self._reserved)
            self._reserved = 0

    def bodyStillComing(self) -> None:
        """A read is over (`ProxyChannel.dataReceived`): a body not all in yet has
        `body_timeout` seconds from its headers' read to arrive. Not armed as the
        headers are read: the body nearly always comes in the same read, and a
        cancelled timer stays in the reactor's queue until it would have been due."""
        if self._bodyDue is not None and not self._routed:
            self._bodyTimer = self.channel.callLater(self._bodyDue, self._bodyLate)
        self._bodyDue = None

    def _stopBodyTimer(self) -> None:
        self._bodyDue = None
        if self._bodyTimer is not None and self._bodyTimer.active():
            self._bodyTimer.cancel()
        self._bodyTimer = None


class ProxyChannel(QuickHeaderChannel):
    """An HTTP/1.1 connection whose requests' headers must arrive in time.

    Its own attributes are slots, as `LimitedRequest`'s are: beside twisted.web's
    they made the channel's dict one of its own (CPython shares at most thirty
    names of a class's instances)."""

    __slots__ = (
        "_awaitingHeaders",
        "_closedByUs",
        "_headerTimer",
        "_hostAddress",
        "_lingerTimer",
        "_peerAddress",
        "peer",
    )
    site: ProxySite
    log: ClassVar[Logger] = Logger()
    peer: str
    _awaitingHeaders: bool
    _headerTimer: IDelayedCall | None
    _lingerTimer: IDelayedCall | None
    _closedByUs: bool
    _peerAddress: Any
    _hostAddress: Any

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.peer = ""
        self._awaitingHeaders = True
        self._headerTimer = self._lingerTimer = self._peerAddress = self._hostAddress = None
        self._closedByUs = False
        super().__init__(*args, **kwargs)

    def getPeer(self) -> Any:
        """The connection's remote address, asked of the transport once: each
        `Request` asks for it (and `getHost`, a `getsockname` syscall on TCP) and
        both are the connection's, the same for every request kept alive on it."""
        if self._peerAddress is None:
            self._peerAddress = super().getPeer()
        return self._peerAddress

    def getHost(self) -> Any:
        """The connection's local address, asked of the transport once (`getPeer`)."""
        if self._hostAddress is None:
            self._hostAddress = super().getHost()
        return self._hostAddress

    def dataReceived(self, data: bytes) -> None:
        if self._awaitingHeaders:
            end = data.find(b"\r\n\r\n")
            if end == -1:
                if self._headerTimer is None and not self._closedByUs:
                    # Only for a head not read whole: one read whole (nearly always)
                    # ends the wait in this call, and a cancelled timer stays in the
                    # reactor's queue until it would have been due (some 300 bytes a
                    # request).
                    timeout = self.site.config().headerTimeout
                    self._headerTimer = self.callLater(timeout, self._headersLate, timeout)
            elif self.readPlainHead(data, end):  # the read taken, head and rest
                if self.requests:
                    self.requests[-1].bodyStillComing()
                return
            elif len(data) > SPLIT_FROM:
                # twisted.web's line reader copies the rest of its buffer for each line
                # it takes off: a request's twenty header lines read together with its
                # 50 KB body copied the body twenty times (4-5% of a request's CPU).
                # Handed over as two reads (as TCP may deliver them), the lines are read
                # off the head alone and the body goes on whole.
                super().dataReceived(data[: end + 4])
                if self.transport is None or self.transport.disconnecting:
                    return  # as twisted.web stops reading a read on a close
                data = data[end + 4 :]
        super().dataReceived(data)
        if self.requests:
            self.requests[-1].bodyStillComing()

    def allHeadersReceived(self) -> None:
        self._awaitingHeaders = False
        self._stopHeaderTimer()
        super().allHeadersReceived()

    def requestDone(self, request: Any) -> None:
        self._awaitingHeaders = True  # before super(), which replays pipelined bytes
        super().requestDone(request)

    def refuse(self, error: ProxyError, requestLine: tuple[bytes, bytes] = (b"", b"")) -> None:
        """Write `error` as a whole answer that closes the connection, log it,
        and cut the connection if the client has not finished sending soon."""
        if self._closedByUs:
            return
        self._closedByUs = True
        requestId = f"req_{newId()}"
        path = requestLine[1].split(b"?", 1)[0]
        body = orjson.dumps(errorBodyFor(path, error, error.message, requestId))
        headers = {
            b"content-type": b"application/json",
            b"content-length": b"%d" % len(body),
            b"request-id": requestId.encode(),
            b"connection": b"close",
            **errorHeaders(error),
        }
        head = b"HTTP/1.1 %d %s\r\n" % (error.status, _REASONS.get(error.status, b"Error"))
        head += b"".join(b"%s: %s\r\n" % item for item in headers.items())
        self.transport.write(head + b"\r\n" + body)
        self._lingerTimer = self.callLater(LINGER, self._cut)
        self.site.refused(requestId, error, *requestLine)

    def _headersLate(self, timeout: float) -> None:
        self._headerTimer = None
        self.refuse(ProxyError(408, f"the request headers did not arrive within {timeout:g} s"))
        self.loseConnection()

    def _cut(self) -> None:
        self._lingerTimer = None
        self.transport.abortConnection()

    def _stopHeaderTimer(self) -> None:
        if self._headerTimer is not None and self._headerTimer.active():
            self._headerTimer.cancel()
        self._headerTimer = None

    def connectionLost(self, reason: Failure) -> None:
        self._stopHeaderTimer()
        if self._lingerTimer is not None and self._lingerTimer.active():
            self._lingerTimer.cancel()
        self.site.connectionClosed(self)
        super().connectionLost(reason)


# Before any request, channel or connection is made (see `shareInstanceKeys`).
shareInstanceKeys(LimitedRequest, REQUEST_ATTRIBUTES)
shareInstanceKeys(ProxyChannel, CHANNEL_ATTRIBUTES)
shareTwistedKeys()


TokenRefusal = Callable[[str, Config], "Deferred[ProxyError | None]"]
"""The 401 a `/login` token would get (None: let in, or the route will say)."""


class ProxySite(Site):
    """A `Site` serving the proxy's app through `ProxyChannel`s and `LimitedRequest`s.

    `config` is a callable (the app's current config), so a reload changes the
    limits; `maxConnections` is the cap on connections at once when the config
    sets none (from the open-files limit, found at start).
    """

    protocol = ProxyChannel  # type: ignore[assignment]
    requestFactory = LimitedRequest
    displayTracebacks = False
    noisy = False  # no "Starting factory" lines
    logger: ClassVar[Logger] = Logger()

    def __init__(
        self,
        resource: Any,
        config: Callable[[], Config],
        onRefused: Callable[[AccessRecord], None] = lambda record: None,
        maxConnections: int = 4096,
        tokenRefusal: TokenRefusal | None = None,
        **kwargs: Any,
    ) -> None:
        # No form parsing: bodies are JSON, and parsing each POST's Content-Type
        # with the email package cost 7-9% of a request's CPU in the profile.
        super().__init__(resource, parsePOSTFormSubmission=False, **kwargs)
        self.config = config
        self._onRefused = onRefused
        self.tokenRefusal = tokenRefusal
        """How a `/login` token is judged before its body is read (`SignIn.refusal`)."""
        self._defaultMaxConnections = maxConnections
        self.channels: set[ProxyChannel] = set()
        self.perAddress: Counter[str] = Counter()
        self.draining = False
        self._whenClosed: list[Deferred[None]] = []
        self.bodyBytes = 0
        """What the bodies being read hold now."""
        self.turnedAway = 0
        """Connections refused at the door since start (for the log and tests)."""

    @classmethod
    def serving(cls, app: ProxyApp, reactor: Any, maxConnections: int = 4096) -> ProxySite:
        """The site of `app`: its resource, its current config, its access log."""
        return cls(
            app.resource(),
            lambda: app.config,
            app.logRefused,
            maxConnections,
            app.signIn.refusal,
            reactor=reactor,
        )

    def buildProtocol(self, addr: Any) -> ProxyChannel | None:
        """A channel for a new connection, or None (closed at once) past the caps."""
        config = self.config()
        peer = peerKey(str(getattr(addr, "host", "")))
        cap = config.maxConnections or self._defaultMaxConnections
        if self.draining:
            return None
        if self.connections >= cap or self.perAddress[peer] >= config.maxConnectionsPerAddress:
            self.turnedAway += 1
            if self.turnedAway & (self.turnedAway - 1) == 0:  # 1st, 2nd, 4th, 8th, …
                self.logger.warn(
                    "turning connections away: {connections} open ({fromPeer} from {peer}); "
                    "{count} refused so far",
                    connections=self.connections,
                    fromPeer=self.perAddress[peer],
                    peer=peer,
                    count=self.turnedAway,
                )
            return None
        channel: ProxyChannel = super().buildProtocol(addr)
        channel.peer = peer
        self.channels.add(channel)
        self.perAddress[peer] += 1
        return channel

    @property
    def connections(self) -> int:
        """Client connections open now."""
        return len(self.channels)

    def connectionClosed(self, channel: ProxyChannel) -> None:
        self.channels.discard(channel)
        self.perAddress[channel.peer] -= 1
        if not self.perAddress[channel.peer]:
            del self.perAddress[channel.peer]
        if not self.channels:
            waiters, self._whenClosed = self._whenClosed, []
            for waiter in waiters:
                waiter.callback(None)

    def beginDrain(self) -> None:
        """Stop serving new requests: close the idle connections now, the busy
        ones after their answer."""
        self.draining = True
        for channel in list(self.channels):
            if not channel.requests:
                channel.loseConnection()
                continue
            channel.persistent = False
            for request in channel.requests:
                if not request.startedWriting:
                    request.setHeader(b"connection", b"close")

    def whenClosed(self) -> Deferred[None]:
        """Fires once every client connection is closed (its last bytes written)."""
        if not self.channels:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._whenClosed.append(waiter)
        return waiter

    def abortAll(self) -> None:
        """Cut the connections still open (the drain's grace is over)."""
        for channel in list(self.channels):
            channel.transport.abortConnection()

    def reserve(self, size: int) -> bool:
        """Room for `size` more bytes of request bodies, if there is any."""
        if self.bodyBytes + size > self.config().bodyMemoryBytes:
            return False
        self.bodyBytes += size
        return True

    def release(self, size: int) -> None:
        self.bodyBytes -= size

    def refused(self, requestId: str, error: ProxyError, method: bytes, path: bytes) -> None:
        """A request answered at the door: one access record, like any other."""
        record = AccessRecord(
            requestId=requestId,
            method=method.decode("ascii", "replace") or "-",
            path=path.split(b"?", 1)[0].decode("utf-8", "replace") or "-",
            started=self.reactor.seconds(),
            endpoint=_ENDPOINTS.get(path.split(b"?", 1)[0], "-"),
        )
        record.fail(error.status, error.errorType, error.message)
        self._onRefused(record)

    def log(self, request: Any) -> None:  # type: ignore[override]
        """No combined-log line: the app's access log says more, with named fields."""


_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~/")


def isCanonicalPath(target: bytes) -> bool:
    """Whether a request target's path is in the one form it is served as: no
    percent-encoded unreserved character or slash (RFC 3986 6.2.2.2), no `.` or
    `..` segment, no empty segment."""
    path = target.split(b"?", 1)[0]
    if not path.startswith(b"/"):
        return False
    segments = path.split(b"/")[1:]
    if any(seg in (b"", b".", b"..") for seg in segments[:-1]) or segments[-1] in (b".", b".."):
        return False
    at = path.find(b"%")
    while at != -1:
        code = path[at + 1 : at + 3]
        try:
            if int(code, 16) in _UNRESERVED:
                return False
        except ValueError:
            return False  # a stray "%" is no encoding at all
        at = path.find(b"%", at + 3)
    return True


def _shuttingDown() -> ProxyError:
    return ProxyError(503, "ccproxy is shutting down: try again", "overloaded_error")


def _noRoom() -> ProxyError:
    return ProxyError(
        503,
        "too many request bodies are being read at once: try again in a moment",
        "overloaded_error",
        {"retry-after": "1"},
    )
