"""The Klein application: Claude Code's endpoints, served from the current config.

Handlers are `async def`; Klein cancels a handler's Deferred when its client goes
away, and that cancellation reaches the upstream request it is waiting on. Every
failure before the response starts is an Anthropic error envelope with its status;
after a stream has started, it is an `event: error` frame.
"""

from __future__ import annotations

import hmac
import time
import uuid
from collections.abc import Callable
from io import BytesIO
from typing import Any, ClassVar

import orjson
from attrs import define, field, frozen
from klein import Klein
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.interfaces import IReactorTime, IWriteDescriptor
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from werkzeug.exceptions import MethodNotAllowed, NotFound

from ccproxy.config import Client, Config, Upstream, keyDigest
from ccproxy.config.routing import Target
from ccproxy.errors import ProxyError, errorBody, invalidRequest, statusInBody, upstreamError
from ccproxy.observe.accesslog import AccessLog, AccessRecord
from ccproxy.observe.metrics import Metrics
from ccproxy.observe.usage import UsageBook
from ccproxy.relay.sse import SSEParser
from ccproxy.relay.writer import EventWriter, encodeEvent, startStream
from ccproxy.translate.dialect import Profile
from ccproxy.translate.names import ToolNames
from ccproxy.translate.request import stopSequences, toOpenAI
from ccproxy.translate.response import anthropicUsage, fromOpenAI
from ccproxy.translate.stream import StreamTranslator, eventsForMessage
from ccproxy.translate.tokens import estimateTokens
from ccproxy.upstream.dispatch import Dispatcher, Sent
from ccproxy.web.admission import ClientLimits

JSON = b"application/json"
METRICS_TYPE = b"text/plain; version=0.0.4; charset=utf-8"


def newId() -> str:
    return uuid.uuid4().hex[:24]


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@frozen
class Exchange:
    """One request once an upstream has answered 2xx: what relaying its answer needs."""

    config: Config
    record: AccessRecord
    stops: list[str]
    """The client's stop sequences (to tell `stop_sequence` from `end_turn`)."""
    names: ToolNames
    sent: Sent


@define
class ProxyApp:
    """Claude Code's Anthropic endpoints, answered by OpenAI-compatible upstreams."""

    config: Config
    """The current configuration; a reload swaps it, requests keep the one they began with."""
    dispatcher: Dispatcher
    clock: IReactorTime
    metrics: Metrics = field(factory=Metrics)
    makeId: Callable[[], str] = newId
    startedAt: str = field(factory=_now)
    usage: UsageBook = field(init=False)
    accessLog: AccessLog = field(init=False)
    generation: int = 1
    inFlight: int = 0
    streamsInFlight: int = 0
    clientLimits: dict[str, ClientLimits] = field(factory=dict)
    _idle: list[Deferred[None]] = field(factory=list)

    router: ClassVar[Klein] = Klein()
    log: ClassVar[Logger] = Logger()

    def __attrs_post_init__(self) -> None:
        self.usage = UsageBook(self.startedAt)
        self.accessLog = AccessLog(self.metrics, self.usage)
        self.metrics.generation.set(self.generation)
        self.metrics.watchBreakers(
            lambda: [(name, b.state) for name, b in sorted(self.dispatcher.state.breakers.items())]
        )

    def resource(self) -> Any:
        return self.router.resource()

    def reconfigure(self, config: Config) -> None:
        """Serve new requests from `config`; requests in flight keep their own."""
        self.config = config
        self.generation += 1
        self.metrics.generation.set(self.generation)

    def whenIdle(self) -> Deferred[None]:
        """Fires once no request is in flight (for draining on shutdown)."""
        if self.inFlight == 0:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._idle.append(waiter)
        return waiter

    # -- service endpoints ---------------------------------------------------------

    @router.route("/", methods=["GET", "HEAD"])
    def root(self, request: IRequest) -> bytes:
        return _json(request, {"service": "ccproxy", "status": "ok"})

    @router.route("/healthz", methods=["GET", "HEAD"])
    def healthz(self, request: IRequest) -> bytes:
        breakers = self.dispatcher.state.breakers
        return _json(
            request,
            {
                "status": "ok",
                "generation": self.generation,
                "in_flight": self.inFlight,
                "streams_in_flight": self.streamsInFlight,
                "upstreams": {
                    name: {"breaker": breakers[name].state if name in breakers else "closed"}
                    for name in sorted(self.config.upstreams)
                },
            },
        )

    @router.route("/metrics", methods=["GET"])
    def metricsPage(self, request: IRequest) -> bytes:
        self.metrics.inFlight.set(self.inFlight)
        self.metrics.streamsInFlight.set(self.streamsInFlight)
        request.setHeader(b"content-type", METRICS_TYPE)
        return self.metrics.render()

    @router.route("/v1/usage", methods=["GET"])
    def usageReport(self, request: IRequest) -> bytes:
        client = self._authenticate(request, self.config)
        if client is None or not client.admin:
            raise ProxyError(403, "usage totals are for the admin's key only", "permission_error")
        return _json(request, self.usage.report())

    # -- models -------------------------------------------------------------------

    @router.route("/v1/models", methods=["GET"])
    def listModels(self, request: IRequest) -> bytes:
        self._authenticate(request, self.config)
        names = self.config.router.exactNames()
        limit = _queryInt(request, b"limit", 20, 1, 1000)
        after = _queryText(request, b"after_id")
        before = _queryText(request, b"before_id")
        if after is not None and after in names:
            names = names[names.index(after) + 1 :]
        if before is not None and before in names:
            names = names[: names.index(before)]
            page = names[-limit:]
        else:
            page = names[:limit]
        return _json(
            request,
            {
                "data": [self._modelInfo(name) for name in page],
                "has_more": len(names) > limit,
                "first_id": page[0] if page else None,
                "last_id": page[-1] if page else None,
            },
        )

    @router.route("/v1/models/<path:modelId>", methods=["GET"])
    def getModel(self, request: IRequest, modelId: str) -> bytes:
        self._authenticate(request, self.config)
        self.config.router.resolve(modelId)
        return _json(request, self._modelInfo(modelId))

    def _modelInfo(self, name: str) -> dict[str, Any]:
        return {"type": "model", "id": name, "display_name": name, "created_at": self.startedAt}

    # -- messages -----------------------------------------------------------------

    @router.route("/v1/messages/count_tokens", methods=["POST"])
    def countTokens(self, request: IRequest) -> bytes:
        config = self.config
        self._authenticate(request, config)
        body = _readJSON(request, config)
        model = _modelName(body)
        route = config.router.find(model)
        profile = Profile()
        upstreamModel = model
        if route is not None:
            target = route.targets[0]
            profile = config.upstreams[target.upstream].profile
            upstreamModel = target.modelFor(model)
        translated = toOpenAI(
            body, model=upstreamModel, profile=profile, defaultMaxTokens=config.defaultMaxTokens
        )
        try:
            tokens = estimateTokens(translated)
        except orjson.JSONEncodeError:
            raise _tooDeep() from None
        return _json(request, {"input_tokens": tokens})

    @router.route("/v1/messages", methods=["POST"])
    async def messages(self, request: IRequest) -> bytes | None:
        config = self.config
        record = AccessRecord(
            requestId=_startRequest(request, self.makeId),
            method="POST",
            path="/v1/messages",
            started=self.clock.seconds(),
        )
        self.inFlight += 1
        work = Deferred.fromCoroutine(self._messages(request, config, record))
        expiry = None
        if config.maxDuration is not None:
            expiry = self.clock.callLater(config.maxDuration, self._expire, work, record)
        try:
            return await work
        finally:
            if expiry is not None and expiry.active():
                expiry.cancel()
            self.inFlight -= 1
            self.accessLog.write(
                record,
                self.clock.seconds(),
                config.logPayloadMaxChars if config.logPayloads else None,
            )
            if self.inFlight == 0:
                waiters, self._idle = self._idle, []
                for waiter in waiters:
                    waiter.callback(None)

    def _expire(self, work: Deferred[Any], record: AccessRecord) -> None:
        """`max_duration` is over: stop the request wherever it is."""
        record.expired = True
        work.cancel()

    async def _messages(
        self, request: IRequest, config: Config, record: AccessRecord
    ) -> bytes | None:
        limits: ClientLimits | None = None
        try:
            client = self._authenticate(request, config)
            if client is not None:
                record.client = client.name
                limits = self.clientLimits.setdefault(client.name, ClientLimits())
                limits.admit(
                    self.clock.seconds(),
                    client.maxConcurrent,
                    client.requestsPerMinute,
                    client.name,
                )
            body = _readJSON(request, config, record)
            model = record.model = _modelName(body)
            route = config.router.resolve(model)
            record.routed = True
            stops = stopSequences(body)
            names = ToolNames.fromRequest(body)
            build = _builder(body, model, config, record, names)
            # A 50 KB request is some 100 KB of objects: not kept for a long stream.
            del body

            async def prepare(sent: Sent) -> dict[str, Any] | None:
                # A JSON answer (asked for, or to a stream) is read whole before the
                # client gets a byte, so a failure reading it still fails over.
                if record.stream and _isEventStream(sent.response):
                    return None
                return await self._translateBody(Exchange(config, record, stops, names, sent))

            sent = await self.dispatcher.send(
                config,
                route.targets,
                build,
                _callerKey(request),
                _deadline(request, record.started, config),
                record.attempts,
                prepare,
            )
            del build
            record.firstByte = self.clock.seconds()
            record.upstream = sent.upstream.name
            record.upstreamModel = sent.target.modelFor(model)
            record.upstreamStatus = sent.response.code
            exchange = Exchange(config, record, stops, names, sent)
            if record.stream:
                return await self._stream(request, exchange)
            return await self._complete(request, exchange)
        except ProxyError as e:
            if e.upstream is not None and record.upstream is None:
                record.upstream, record.upstreamStatus = e.upstream, e.upstreamStatus
            record.fail(e.status, e.errorType, e.message)
            return _errorResponse(request, e)
        except CancelledError:
            if record.expired:
                error = ProxyError(
                    504, f"the request took longer than {config.maxDuration:g} s", "api_error"
                )
                record.fail(error.status, error.errorType, error.message)
                return _errorResponse(request, error)
            record.fail(499, "cancelled", "the client went away")
            raise
        finally:
            if limits is not None:
                limits.done()

    async def _complete(self, request: IRequest, exchange: Exchange) -> bytes:
        """A non-streaming answer: one upstream body, one translated message."""
        message = self._preparedMessage(exchange)
        exchange.record.status = 200
        try:
            answer = _json(request, message)
        except orjson.JSONEncodeError:
            raise _upstreamTooDeep(exchange.sent.upstream) from None
        if exchange.config.logPayloads:
            exchange.record.responsePayload = answer
        return answer

    def _preparedMessage(self, exchange: Exchange) -> dict[str, Any]:
        """The whole JSON answer, read and translated during dispatch; the
        upstream's part is then over."""
        exchange.sent.done(True)
        message: dict[str, Any] = exchange.sent.prepared
        return message

    async def _translateBody(self, exchange: Exchange) -> dict[str, Any]:
        """Read a JSON answer whole and translate it (during dispatch, see `prepare`)."""
        upstream = exchange.sent.upstream
        raw = await self.dispatcher.client.readBody(
            upstream, exchange.sent.response, exchange.config.maxResponseBytes
        )
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise ProxyError(
                502, f"{upstream.name}: the answer is not JSON: {raw[:200]!r}", "api_error"
            ) from None
        if isinstance(data, dict) and "error" in data and not data.get("choices"):
            raise errorInBody(upstream.name, raw, data)
        message = fromOpenAI(
            data,
            messageId=f"msg_{exchange.record.requestId}",
            model=exchange.record.model or "",
            stopSequences=exchange.stops,
            thinkTags=upstream.profile.thinkTags,
            toolName=exchange.names.fromUpstream,
        )
        exchange.record.countUsage(message["usage"])
        return message

    async def _stream(self, request: IRequest, exchange: Exchange) -> None:
        """Relay the upstream's stream as Anthropic events, as they arrive.

        Status and headers go out only now that the upstream has answered 2xx; from
        here on a failure is an `event: error` frame, and no `message_stop`, so
        Claude Code retries rather than trusting half an answer.
        """
        config, record, sent = exchange.config, exchange.record, exchange.sent
        if not _isEventStream(sent.response):
            # A JSON body where a stream was asked for: an error (most servers fail
            # this way before streaming), or a server that ignores `stream: true`.
            message = self._preparedMessage(exchange)
            try:
                frames = b"".join(encodeEvent(e) for e in eventsForMessage(message))
            except orjson.JSONEncodeError:
                raise _upstreamTooDeep(sent.upstream) from None
            startStream(request)
            record.status = 200
            request.write(frames)
            return None
        upstream = sent.upstream
        translator = StreamTranslator(
            f"msg_{record.requestId}",
            record.model or "",
            exchange.stops,
            thinkTags=upstream.profile.thinkTags,
            toolName=exchange.names.fromUpstream,
        )
        startStream(request)
        record.status = 200
        writer = EventWriter(
            request,
            self.clock,
            config.pingInterval,
            config.logPayloadMaxChars if config.logPayloads else 0,
        )
        writer.write(translator.start())

        def onData(data: bytes) -> None:
            try:
                chunk = orjson.loads(data)
            except orjson.JSONDecodeError:
                raise ProxyError(
                    502,
                    f"{upstream.name}: the stream holds a line that is not JSON: {data[:200]!r}",
                    "api_error",
                ) from None
            try:
                writer.add(translator.feed(chunk))
            except ProxyError as e:  # the upstream's own error, said inside the stream
                raise ProxyError(e.status, f"{upstream.name}: {e.message}", e.errorType) from None

        parser = SSEParser(
            onData,
            self.clock,
            upstream.timeout,
            upstream.name,
            config.maxLineBytes,
            onBatch=writer.flush,
        )
        self.streamsInFlight += 1
        ok: bool | None = None
        try:
            # The head goes out before the body is read, which may have arrived whole.
            sendNow(request)
            sent.response.deliverBody(parser)
            # A slow reader pauses the upstream instead of making us buffer its stream.
            request.registerProducer(parser.transport, True)
            await parser.finished
            writer.write(translator.finish(parser.sawDone))
            ok = True
        except ProxyError as e:
            ok = False
            writer.writeError(e)
            record.fail(record.status, e.errorType, e.message)
        except CancelledError:
            if not record.expired:
                raise
            error = ProxyError(504, f"the request took longer than {config.maxDuration:g} s")
            writer.writeError(error)
            record.fail(record.status, "timeout", error.message)
        finally:
            self.streamsInFlight -= 1
            sent.done(ok)
            writer.stop()
            if request.channel is not None:  # None once the client has gone
                request.unregisterProducer()
            if translator.usage is not None:
                record.countUsage(anthropicUsage(translator.usage))
            record.responsePayload = writer.copy
        return None

    # -- shared steps -------------------------------------------------------------

    def _authenticate(self, request: IRequest, config: Config) -> Client | None:
        """The calling client, when `clients` is set; compared in constant time."""
        if not config.clients:
            return None
        key = _callerKey(request)
        if not key:
            raise ProxyError(401, "no API key: send it as x-api-key or Authorization: Bearer")
        digest = keyDigest(key)
        found = None
        for client in config.clients:  # no early exit: the time must not tell which matched
            if hmac.compare_digest(digest, client.digest):
                found = client
        if found is None:
            raise ProxyError(401, "invalid API key")
        return found

    # -- errors outside the handlers ---------------------------------------------

    @router.handle_errors(ProxyError)
    def proxyError(self, request: IRequest, failure: Failure) -> bytes:
        return _errorResponse(request, failure.value)

    @router.handle_errors(NotFound)
    def notFound(self, request: IRequest, failure: Failure) -> bytes:
        path = request.path.decode("utf-8", "replace")
        return _errorResponse(request, ProxyError(404, f"no such endpoint: {path}"))

    @router.handle_errors(MethodNotAllowed)
    def methodNotAllowed(self, request: IRequest, failure: Failure) -> bytes:
        allowed = ", ".join(failure.value.valid_methods or ())
        method = request.method.decode("ascii", "replace")
        request.setHeader(b"allow", allowed.encode())
        return _errorResponse(
            request,
            ProxyError(
                405,
                f"method {method} is not allowed here (allowed: {allowed})",
                "invalid_request_error",
            ),
        )

    @router.handle_errors(Exception)
    def unexpected(self, request: IRequest, failure: Failure) -> bytes | None:
        if failure.check(CancelledError):
            return None
        self.log.failure("Unexpected error answering {path}", failure, path=request.path)
        return _errorResponse(request, ProxyError(500, "internal error in ccproxy", "api_error"))


def sendNow(request: IRequest) -> None:
    """Send what the response holds now (status, headers, `message_start`) instead of
    when the reactor next gets to it.

    Twisted buffers writes until the reactor's next turn; by then a stream that
    arrived whole (a fast or bursty upstream) has been decoded and translated, and
    the client's first byte waits for all of it. `doWrite` is the transport's
    `IWriteDescriptor` method for "the socket can take data"; a full socket just
    keeps the rest for the reactor, as before.
    """
    transport = getattr(request.channel, "transport", None)
    if IWriteDescriptor.providedBy(transport):
        transport.doWrite()


def _isEventStream(response: Any) -> bool:
    contentType = response.headers.getRawHeaders(b"content-type", [b""])[0]
    return b"event-stream" in contentType


def _builder(
    body: dict[str, Any], model: str, config: Config, record: AccessRecord, names: ToolNames
) -> Callable[[Upstream, Target], bytes]:
    """Makes the request body for each upstream tried (each has its own dialect)."""

    def build(upstream: Upstream, target: Target) -> bytes:
        translated = toOpenAI(
            body,
            model=target.modelFor(model),
            profile=upstream.profile,
            defaultMaxTokens=config.defaultMaxTokens,
            names=names,
        )
        record.stream = translated["stream"]
        try:
            return orjson.dumps(translated)
        except orjson.JSONEncodeError:
            raise _tooDeep() from None

    return build


def errorInBody(upstream: str, raw: bytes, data: dict[str, Any]) -> ProxyError:
    """A 2xx answer that is an error object: its own `code` when it is an HTTP status."""
    return upstreamError(upstream, statusInBody(data), raw)


def _deadline(request: IRequest, started: float, config: Config) -> float | None:
    """When the client stops waiting: its `X-Stainless-Timeout` (Claude Code and the
    SDKs send it), or `max_duration`, whichever is sooner. No retry starts past it."""
    limits = []
    header = request.getHeader(b"x-stainless-timeout")
    if header:
        try:
            limits.append(float(header))
        except ValueError:
            pass
    if config.maxDuration is not None:
        limits.append(config.maxDuration)
    return started + min(limits) if limits else None


def _startRequest(request: IRequest, makeId: Callable[[], str] = newId) -> str:
    """The request's id, made on first use and sent as the `request-id` header."""
    value = request.responseHeaders.getRawHeaders(b"request-id")
    if value:
        return value[0].decode()
    requestId = f"req_{makeId()}"
    request.setHeader(b"request-id", requestId.encode())
    return requestId


def _errorResponse(request: IRequest, error: ProxyError) -> bytes:
    request.setResponseCode(error.status)
    for name, value in error.headers.items():
        request.setHeader(name.encode(), value.encode())
    if error.status in (408, 429) or error.status >= 500:
        request.setHeader(b"x-should-retry", b"true")
    return _json(request, errorBody(error.errorType, error.message, _startRequest(request)))


def _json(request: IRequest, value: Any) -> bytes:
    body = orjson.dumps(value)
    request.setHeader(b"content-type", JSON)
    request.setHeader(b"content-length", b"%d" % len(body))
    return body


def _readJSON(
    request: IRequest, config: Config, record: AccessRecord | None = None
) -> dict[str, Any]:
    if getattr(request, "bodyTooLarge", False):
        raise _bodyTooLarge(config)
    raw = request.content.read()
    request.content.close()  # a temporary file when twisted.web spooled a large body
    request.content = BytesIO()  # read once: a long stream need not keep it
    if len(raw) > config.maxBodyBytes:
        raise _bodyTooLarge(config)
    if record is not None and config.logPayloads:
        record.requestPayload = raw
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise invalidRequest(f"the request body is not valid JSON ({e})") from None
    if not isinstance(body, dict):
        raise invalidRequest("the request body must be a JSON object")
    return body


# orjson reads up to 1024 levels of nesting but writes at most 254: a value nested
# deeper than that (a tool schema, a tool call's input) cannot be forwarded. Caught
# where it is encoded, so that ordinary requests pay nothing to find out.
def _tooDeep() -> ProxyError:
    return invalidRequest("the request nests values too deeply to forward (over 250 levels)")


def _upstreamTooDeep(upstream: Upstream) -> ProxyError:
    return ProxyError(
        502, f"{upstream.name}: the answer nests values too deeply (over 250 levels)", "api_error"
    )


def _bodyTooLarge(config: Config) -> ProxyError:
    return ProxyError(
        413, f"the request body is larger than {config.maxBodyBytes} bytes", "request_too_large"
    )


def _modelName(body: dict[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise invalidRequest("model: is required (a string)")
    return model


def _callerKey(request: IRequest) -> str | None:
    key = request.getHeader(b"x-api-key")
    if key:
        return key.decode("latin-1").strip()
    auth = request.getHeader(b"authorization")
    if auth:
        scheme, _, token = auth.decode("latin-1").partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    return None


def _queryText(request: IRequest, name: bytes) -> str | None:
    values = request.args.get(name)
    return values[0].decode("utf-8", "replace") if values else None


def _queryInt(request: IRequest, name: bytes, default: int, low: int, high: int) -> int:
    text = _queryText(request, name)
    if text is None:
        return default
    try:
        return max(low, min(high, int(text)))
    except ValueError:
        raise invalidRequest(f"{name.decode()}: must be an integer") from None
