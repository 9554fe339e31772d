"""Talking to an upstream gateway: one POST, its headers, its body, its failures.

Every wait here is bounded by the upstream's `timeout` (silence before the headers,
or between body chunks) on the injected clock, and every Deferred can be cancelled:
a client that goes away aborts the upstream connection, so nobody pays for tokens
that no one reads. Failures come out as `ProxyError`s naming the upstream.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Protocol
from urllib.parse import urlsplit

from attrs import define, frozen
from twisted.internet.abstract import isIPv6Address
from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.error import ConnectError, ConnectingCancelledError, DNSLookupError
from twisted.internet.interfaces import (
    IConsumer,
    IDelayedCall,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Protocol as TwistedProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import (
    URI,
    HTTPConnectionPool,
    ResponseDone,
    ResponseFailed,
    SchemeNotSupported,
)
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IAgentEndpointFactory, IBodyProducer, IResponse
from zope.interface import implementer

from ccproxy import __version__
from ccproxy.compat import (
    decoded,
    flushConsumer,
    keepOnlyHeaders,
    poolRequest,
    requestURI,
    sentBodyProducer,
    sentRequestHeaders,
)
from ccproxy.config import Upstream
from ccproxy.errors import ProxyError, badGateway

USER_AGENT = f"ccproxy/{__version__}"
MAX_ERROR_BYTES = 64 * 1024


class HTTPClient(Protocol):
    """What we need of treq's `HTTPClient` (and of `treq.testing.StubTreq`)."""

    def request(self, method: str, url: str, **kwargs: Any) -> Deferred[IResponse]: ...


@implementer(IBodyProducer)
class BytesProducer:
    """A request body already in memory, written at once.

    treq's default producer for bytes goes through the global Cooperator; a JSON
    body is small enough to hand over in one write.
    """

    def __init__(self, body: bytes) -> None:
        self.content = body
        """The body (`compat.WrittenWhole` writes it with the request's head)."""
        self.length = len(body)

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        consumer.write(self.content)
        flushConsumer(consumer)  # head and body leave now, together
        return succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass

    def release(self) -> None:
        """Drop the body once an answer has begun: no replay can need it then, and a
        long stream should not hold its request's 50 KB."""
        self.content = b""


class PooledClient:
    """An `HTTPClient` straight over the connection pool, for the upstreams' requests.

    treq's `HTTPClient.request` does, for every request, what ccproxy never uses:
    parses the URL with hyperlink, builds a cookie jar from the call and merges it
    into its own, runs the request and the answer through `CookieAgent` (the
    daemon's jar accepts no cookie: one user's upstream cookies are no other
    user's business) and a `RedirectAgent` decision (ccproxy never follows one),
    and wraps the answer. Twisted's `Agent` under it then parses the URL again,
    builds an endpoint and copies the headers, on every request. Here an
    upstream's URL is parsed, its endpoint (TCP, or TLS for https, from
    `endpoints`) made and its Host header written once, the first time it is
    asked for; each request then goes on a connection of `pool` as `Agent` would
    send it (`compat.poolRequest`: the pool's reuse and limits, its replay, every
    canceller kept). What matters of treq and `ContentDecoderAgent` is kept: the
    body written at once (`BytesProducer`), gzip asked for and decoded. treq stays
    the client of the tests (`StubTreq`) and of the telemetry forwarder; this
    takes the same arguments. A reload changes URLs, not what one URL means, so
    the prepared ones stay valid; they are bounded all the same.
    """

    MAX_TARGETS = 256

    def __init__(self, pool: HTTPConnectionPool, endpoints: IAgentEndpointFactory) -> None:
        self._pool = pool
        self._endpoints = endpoints
        self._targets: dict[str, _Target] = {}

    def request(
        self,
        method: str,
        url: str,
        data: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        **_treqOnly: Any,
    ) -> Deferred[IResponse]:
        """`method` `url` with `headers` and the body `data`; the keywords only treq
        reads (`unbuffered`, `allow_redirects`, `reactor`) are what this does anyway."""
        target = self._targets.get(url)
        if target is None:
            try:
                target = self._prepare(url)
            except SchemeNotSupported:
                return fail()
        sent = Headers()
        for name, value in (headers or {}).items():
            sent.addRawHeader(name, value)
        sent.addRawHeader(b"Host", target.host)
        sent.addRawHeader(b"Accept-Encoding", b"gzip")
        body = BytesProducer(data) if data is not None else None
        return poolRequest(
            self._pool,
            target.key,
            target.endpoint,
            method.encode("ascii"),
            target.uri,
            target.path,
            sent,
            body,
            decoded,  # gzip decoded in the pool's own callbacks, not one more
        )

    def _prepare(self, url: str) -> _Target:
        uri = requestURI(url.encode("ascii"))
        target = _Target(
            uri,
            uri.originForm,
            (uri.scheme, uri.host, uri.port),
            self._endpoints.endpointForURI(uri),
            hostHeader(uri.scheme, uri.host, uri.port),
        )
        if len(self._targets) >= self.MAX_TARGETS:
            self._targets.clear()
        self._targets[url] = target
        return target


@frozen
class _Target:
    """An upstream URL as a request needs it: parsed, its request line's path, its
    pool key, its endpoint and its Host header."""

    uri: URI
    path: bytes
    """What the request line names (`URI.originForm`, formatted anew at each reading)."""
    key: tuple[bytes, bytes, int]
    endpoint: IStreamClientEndpoint
    host: bytes


def hostHeader(scheme: bytes, host: bytes, port: int) -> bytes:
    """The Host header for a URL: the port only when it is not the scheme's own, an
    IPv6 address in brackets."""
    if isIPv6Address(host.decode("ascii")):
        host = b"[" + host + b"]"
    if (scheme, port) in ((b"http", 80), (b"https", 443)):
        return host
    return b"%b:%d" % (host, port)


FORWARDED_HEADERS = ("anthropic-version", "anthropic-beta")
"""The only client headers that may reach an upstream, and only one that speaks
the Messages API (`anthropicHeaders`): nothing else a client sends goes on."""
ANTHROPIC_VERSION = "2023-06-01"
"""Sent to a `messages` upstream when the client named no version."""
_AUTH_BY_API = {"chat": "authorization", "messages": "x-api-key"}


def upstreamHeaders(
    upstream: Upstream, callerKey: str | None, client: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Only what the upstream needs: its auth, the client's Anthropic headers for a
    `messages` upstream (`anthropicHeaders`), and its configured headers (which win:
    a gateway may want its key in a header of its own). The caller's key goes
    upstream only when the upstream has none of its own. The doctor's probes send
    the same, so that they are judged as the daemon's requests would be."""
    headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT}
    key = upstream.apiKey or callerKey
    how = upstream.profile.authHeader or _AUTH_BY_API.get(upstream.api, "authorization")
    if key and how == "authorization":
        headers["Authorization"] = f"Bearer {key}"
    elif key:
        headers[how] = key  # Azure OpenAI's `api-key`, Anthropic's `x-api-key`
    if upstream.api == "messages":
        headers.update(anthropicHeaders(upstream.profile.betas, client or {}))
    headers.update(upstream.headers)
    return headers


def anthropicHeaders(betas: str | tuple[str, ...], client: Mapping[str, str]) -> dict[str, str]:
    """The client's `anthropic-version` (or the current one) and the `anthropic-beta`
    values `betas` lets through: `all`, `none`, or those listed. `client` holds
    the `FORWARDED_HEADERS` the client sent, by lower-case name."""
    headers = {"anthropic-version": client.get("anthropic-version") or ANTHROPIC_VERSION}
    sent = client.get("anthropic-beta", "")
    if betas == "none" or not sent.strip():
        return headers
    if betas != "all":
        allowed = set(betas)
        sent = ",".join(b for b in (v.strip() for v in sent.split(",")) if b in allowed)
    if sent:
        headers["anthropic-beta"] = sent
    return headers


@define
class UpstreamClient:
    """Sends translated requests to upstreams through one injected HTTP client."""

    http: HTTPClient
    clock: IReactorTime
    httpFor: Callable[[Upstream], HTTPClient] | None = None
    """When set, the client for each upstream (each has its own connect timeout)."""
    log: ClassVar[Logger] = Logger()

    def headersFor(
        self, upstream: Upstream, callerKey: str | None, client: Mapping[str, str] | None = None
    ) -> dict[str, str]:
        """The headers of a request to `upstream` (see `upstreamHeaders`)."""
        return upstreamHeaders(upstream, callerKey, client)

    async def post(
        self,
        upstream: Upstream,
        body: bytes,
        callerKey: str | None,
        client: Mapping[str, str] | None = None,
        url: str | None = None,
    ) -> IResponse:
        """POST `body` to the upstream's endpoint (or `url`); return once its status
        and headers are in. `client`: the client's `FORWARDED_HEADERS`."""
        response, timer = await self.send(upstream, body, callerKey, client, url)
        timer.cancel()
        return response

    async def send(
        self,
        upstream: Upstream,
        body: bytes,
        callerKey: str | None,
        client: Mapping[str, str] | None,
        url: str | None,
    ) -> tuple[IResponse, Silence]:
        """`post`, with its silence timer left running: the caller hands it to
        `readBody` (one timer for the head and the body, not one made and
        cancelled for each) and cancels it when done (a no-op once the body
        reader has)."""
        http = self.http if self.httpFor is None else self.httpFor(upstream)
        requested = http.request(
            "POST",
            url or upstream.url,
            data=body,
            headers=self.headersFor(upstream, callerKey, client),
            unbuffered=True,
            allow_redirects=False,
            reactor=self.clock,
        )
        timer = Silence(self.clock, upstream.timeout, requested.cancel)
        answered = False
        try:
            response = await requested
            producer = sentBodyProducer(response)
            if isinstance(producer, BytesProducer):
                producer.release()
            sentHeaders = sentRequestHeaders(response)
            if sentHeaders is not None:  # written: a stream need not keep them
                keepOnlyHeaders(sentHeaders, ())
            answered = True
            return response, timer
        except (CancelledError, ConnectingCancelledError, ResponseFailed) as e:
            # Cancelled by the silence timer or by a client that left: while
            # connecting (ConnectingCancelledError), before any byte of the answer
            # (ResponseNeverReceived) or in the middle of its headers (ResponseFailed).
            if timer.expired:
                raise silentFor(upstream.name, upstream.timeout, "before answering") from None
            reasons = e.reasons if isinstance(e, ResponseFailed) else [Failure(e)]
            if any(r.check(CancelledError, ConnectingCancelledError) for r in reasons):
                # The client went away: not an upstream failure, nothing to report.
                raise CancelledError() from None
            raise _unreachable(upstream, _reasonText(reasons)) from None
        except DNSLookupError:
            raise _unreachable(upstream, f"cannot resolve {_host(upstream)}") from None
        except ConnectError as e:
            raise _unreachable(upstream, f"cannot connect to {_host(upstream)}: {e}") from None
        except Exception as e:
            raise _unreachable(upstream, str(e) or type(e).__name__) from None
        finally:
            if not answered:
                timer.cancel()

    async def readBody(
        self,
        upstream: Upstream,
        response: IResponse,
        limit: int,
        truncate: bool = False,
        silence: Silence | None = None,
    ) -> bytes:
        """The whole body, within `limit` bytes (`max_response_bytes` for answers) and
        the silence timeout.

        `truncate` keeps the first `limit` bytes of a longer body (for error
        bodies, whose first words are enough) instead of failing. `silence`: the
        timer `send` left running, taken over by the body's reader.
        """
        if response.length is not UNKNOWN_LENGTH and response.length > limit and not truncate:
            discardBody(response)
            raise _tooLarge(upstream, limit)
        collector = _BodyCollector(self.clock, upstream, limit, truncate)
        if silence is not None:
            collector.silence = silence
        response.deliverBody(collector)
        body: bytes = await collector.finished
        return body


class Silence:
    """Calls `expire` after `seconds` without a `reset`: the silence timeout.

    Reset on every read rather than set once, as tahoe-lafs's `limited_content`
    does: a long answer that keeps arriving is fine, a gateway that stops is not.
    A reset only notes when it was heard (moving the reactor's timer cost 0.56 us
    a read, a stream's events arrive one read each); the timer, when it fires
    before `seconds` of silence, is set again for the rest of them, so `expire`
    comes exactly `seconds` after the last reset, as if each had moved it.
    """

    def __init__(self, clock: IReactorTime, seconds: float, expire: Callable[[], None]) -> None:
        self.expired = False
        self._clock = clock
        self._now = clock.seconds
        self._seconds = seconds
        self._expire = expire
        self._heard = -math.inf
        """When the last reset came (none yet: never)."""
        self._call: IDelayedCall = clock.callLater(seconds, self._fire)

    def _fire(self) -> None:
        now = self._now()
        # A reset "after now" (the wall clock stepped back) counts as heard now:
        # the wait is never stretched past `seconds` of its own.
        self._heard = heard = min(self._heard, now)
        rest = heard + self._seconds - now
        if rest > 0:
            self._call = self._clock.callLater(rest, self._fire)
            return
        self.expired = True
        self._expire()

    def reset(self) -> None:
        self._heard = self._now()

    def handTo(self, expire: Callable[[], None]) -> None:
        """From now on, `seconds` of silence call `expire` instead: the timer
        reused by a new waiter, as if it were new (reset now)."""
        self._expire = expire
        self._heard = self._now()

    def active(self) -> bool:
        """Whether it is still counting (neither expired nor cancelled)."""
        return not self.expired and self._call.active()

    def cancel(self) -> None:
        if self._call.active():
            self._call.cancel()


class BodyReader(TwistedProtocol):
    """What every reader of an upstream's body shares: `finished` fires with the
    result or fails with a `ProxyError` naming the upstream; silence past the
    upstream's timeout fails it; cancelling it (a client that left) aborts the
    upstream connection, so nobody pays for tokens that no one reads.

    Subclasses call `heard()` on each read and say what the body amounts to in
    `ended()`; `what` names the body in messages ("its answer", "the stream").
    """

    what = "its answer"
    silence: Silence | None = None
    """A running timer to take over (`UpstreamClient.send`'s) rather than make one."""

    def __init__(self, clock: IReactorTime, upstream: str, timeout: float) -> None:
        self._clock = clock
        self._name = upstream
        self._timeout = timeout
        self._silence: Silence | None = None
        self.finished: Deferred[Any] = Deferred(self._cancelled)

    def connectionMade(self) -> None:
        silence = self.silence
        if silence is not None and silence.active():
            silence.handTo(self._silent)
            self._silence = silence
        else:
            self._silence = Silence(self._clock, self._timeout, self._silent)

    def heard(self) -> None:
        """Some of the body arrived: the silence starts over."""
        if self._silence is not None:
            self._silence.reset()

    def ended(self) -> Any:
        """What the whole body amounts to, once it has all arrived."""
        raise NotImplementedError

    def connectionLost(self, reason: Failure = Failure(ResponseDone())) -> None:  # noqa: B008
        self._stopSilence()
        if self.finished.called:
            return
        # isinstance, not Failure.check: check spells out the qualified name of
        # each type it is given (reflect.qual), at the end of every answer.
        if isinstance(reason.value, (ResponseDone, PotentialDataLoss)):
            result = self.ended()
            if not self.finished.called:
                self.finished.callback(result)
        else:
            self.finished.errback(
                badGateway(self._name, f"the connection was lost in the middle of {self.what}")
            )

    def fail(self, error: Exception) -> None:
        """End the body with `error` and abort the upstream connection."""
        if not self.finished.called:
            self.finished.errback(error)
        self._abort()

    def _silent(self) -> None:
        self.fail(silentFor(self._name, self._timeout, f"in the middle of {self.what}"))

    def _stopSilence(self) -> None:
        if self._silence is not None:
            self._silence.cancel()

    def _cancelled(self, finished: Deferred[Any]) -> None:
        self._abort()  # a bound method, not a lambda and its cell: one object per body

    def _abort(self) -> None:
        self._stopSilence()
        if self.transport is not None:
            self.transport.stopProducing()


class _BodyCollector(BodyReader):
    """Collects a whole response body within a byte limit."""

    def __init__(self, clock: IReactorTime, upstream: Upstream, limit: int, truncate: bool) -> None:
        super().__init__(clock, upstream.name, upstream.timeout)
        self._upstream = upstream
        self._limit = limit
        self._truncate = truncate
        self._parts: list[bytes] = []
        self._size = 0

    def dataReceived(self, data: bytes) -> None:
        if self.finished.called:
            return
        self.heard()
        room = self._limit - self._size
        self._size += len(data)
        if len(data) <= room:
            self._parts.append(data)
            return
        if self._truncate:
            self._parts.append(data[:room])
            self.finished.callback(b"".join(self._parts))
            self._abort()
        else:
            self.fail(_tooLarge(self._upstream, self._limit))

    def ended(self) -> bytes:
        return b"".join(self._parts)


def discardBody(response: IResponse) -> None:
    """Close the connection of a response whose body nobody will read."""
    response.deliverBody(_Discard())


class _Discard(TwistedProtocol):
    """Takes a body nobody will read and closes its connection at once."""

    def connectionMade(self) -> None:
        self.transport.stopProducing()


def silentFor(upstream: str, seconds: float, when: str) -> ProxyError:
    """The upstream said nothing for its whole `timeout`: a 504."""
    return badGateway(upstream, f"no data for {seconds:g} s {when} (timeout)", 504)


def _unreachable(upstream: Upstream, cause: str) -> ProxyError:
    return badGateway(upstream.name, cause)


def _tooLarge(upstream: Upstream, limit: int) -> ProxyError:
    return badGateway(upstream.name, f"the answer is larger than the {limit}-byte limit")


def _host(upstream: Upstream) -> str:
    return urlsplit(upstream.url).netloc


def _reasonText(reasons: list[Failure]) -> str:
    for reason in reasons:
        text = reason.getErrorMessage()
        if text:
            return f"the connection failed before an answer ({text})"
    return "the connection failed before an answer"


def isEventStream(response: IResponse) -> bool:
    """Whether an answer is a server-sent event stream (by its content type)."""
    contentType = response.headers.getRawHeaders(b"content-type", [b""])[0]
    return b"event-stream" in contentType


def responseHeaders(response: IResponse) -> dict[str, str]:
    """A response's headers as a plain lower-case mapping (the last value wins)."""
    return {
        name.decode("latin-1").lower(): values[-1].decode("latin-1")
        for name, values in response.headers.getAllRawHeaders()
    }
