"""The Klein application: Claude Code's endpoints, served from the current config.

Handlers are `async def`; Klein cancels a handler's Deferred when its client goes
away, and that cancellation reaches the upstream request it is waiting on. Every
failure before the response starts is an Anthropic error envelope with its status.
"""

from __future__ import annotations

import hmac
import time
import uuid
from collections.abc import Callable
from typing import Any, ClassVar

import orjson
from attrs import define, field
from klein import Klein
from twisted.internet.defer import CancelledError
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest, IResponse
from werkzeug.exceptions import MethodNotAllowed, NotFound

from ccproxy.accesslog import AccessRecord
from ccproxy.config import Client, Config, Upstream, keyDigest
from ccproxy.errors import ProxyError, errorBody, invalidRequest, upstreamError
from ccproxy.profile import Profile
from ccproxy.sse import SSEParser, encodeEvent
from ccproxy.streaming import EventWriter, startStream
from ccproxy.translate.request import stopSequences, toOpenAI
from ccproxy.translate.response import anthropicUsage, fromOpenAI
from ccproxy.translate.stream import StreamTranslator, eventsForMessage
from ccproxy.translate.tokens import estimateTokens
from ccproxy.upstream import MAX_ERROR_BYTES, UpstreamClient

JSON = b"application/json"


def newId() -> str:
    return uuid.uuid4().hex[:24]


@define
class ProxyApp:
    """Claude Code's Anthropic endpoints, answered by OpenAI-compatible upstreams."""

    config: Config
    """The current configuration; a reload swaps it, requests keep the one they began with."""
    upstreams: UpstreamClient
    clock: IReactorTime
    makeId: Callable[[], str] = newId
    startedAt: str = field(factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))

    router: ClassVar[Klein] = Klein()
    log: ClassVar[Logger] = Logger()

    def resource(self) -> Any:
        return self.router.resource()

    # -- service endpoints ---------------------------------------------------------

    @router.route("/", methods=["GET", "HEAD"])
    def root(self, request: IRequest) -> bytes:
        return _json(request, {"service": "ccproxy", "status": "ok"})

    @router.route("/healthz", methods=["GET", "HEAD"])
    def healthz(self, request: IRequest) -> bytes:
        return _json(request, {"status": "ok", "upstreams": sorted(self.config.upstreams)})

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
            hasMore = len(names) > limit
        else:
            page = names[:limit]
            hasMore = len(names) > limit
        return _json(
            request,
            {
                "data": [self._modelInfo(name) for name in page],
                "has_more": hasMore,
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
        return _json(request, {"input_tokens": estimateTokens(translated)})

    @router.route("/v1/messages", methods=["POST"])
    async def messages(self, request: IRequest) -> bytes | None:
        config = self.config
        requestId = _startRequest(request, self.makeId)
        record = AccessRecord(
            requestId=requestId,
            method="POST",
            path="/v1/messages",
            started=self.clock.seconds(),
        )
        try:
            client = self._authenticate(request, config)
            record.client = client.name if client else None
            body = _readJSON(request, config)
            model = record.model = _modelName(body)
            target = config.router.resolve(model).targets[0]
            upstream = config.upstreams[target.upstream]
            record.upstream, record.upstreamModel = upstream.name, target.modelFor(model)
            translated = toOpenAI(
                body,
                model=record.upstreamModel,
                profile=upstream.profile,
                defaultMaxTokens=config.defaultMaxTokens,
            )
            record.stream = translated["stream"]
            response = await self._send(request, record, translated, upstream)
            if record.stream:
                return await self._stream(request, record, body, response, upstream)
            return await self._complete(request, record, body, response, upstream)
        except ProxyError as e:
            record.fail(e.status, e.errorType, e.message)
            return _errorResponse(request, e)
        except CancelledError:
            record.fail(499, "cancelled", "the client went away")
            raise
        finally:
            record.emit(self.clock.seconds())

    async def _send(
        self,
        request: IRequest,
        record: AccessRecord,
        translated: dict[str, Any],
        upstream: Upstream,
    ) -> IResponse:
        """POST upstream; a non-2xx answer becomes the client's error, with its status."""
        response = await self.upstreams.post(
            upstream, orjson.dumps(translated), _callerKey(request)
        )
        record.firstByte = self.clock.seconds()
        record.upstreamStatus = response.code
        if not 200 <= response.code < 300:
            raw = await self.upstreams.readBody(upstream, response, MAX_ERROR_BYTES, truncate=True)
            raise upstreamError(upstream.name, response.code, raw, _headerMap(response))
        return response

    async def _complete(
        self,
        request: IRequest,
        record: AccessRecord,
        body: dict[str, Any],
        response: IResponse,
        upstream: Upstream,
    ) -> bytes:
        """A non-streaming answer: one upstream body, one translated message."""
        message = await self._readMessage(record, body, response, upstream)
        record.status = 200
        return _json(request, message)

    async def _readMessage(
        self,
        record: AccessRecord,
        body: dict[str, Any],
        response: IResponse,
        upstream: Upstream,
    ) -> dict[str, Any]:
        raw = await self.upstreams.readBody(upstream, response)
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
            messageId=f"msg_{record.requestId}",
            model=record.model or "",
            stopSequences=stopSequences(body),
        )
        record.countUsage(message["usage"])
        return message

    async def _stream(
        self,
        request: IRequest,
        record: AccessRecord,
        body: dict[str, Any],
        response: IResponse,
        upstream: Upstream,
    ) -> None:
        """Relay the upstream's stream as Anthropic events, as they arrive.

        Status and headers go out only now that the upstream has answered 2xx with a
        stream; from here on a failure is an `event: error` frame, and no
        `message_stop`, so Claude Code retries rather than trusting half an answer.
        """
        contentType = response.headers.getRawHeaders(b"content-type", [b""])[0]
        if b"event-stream" not in contentType:
            # A JSON body where a stream was asked for: an error (most servers fail
            # this way before streaming), or a server that ignores `stream: true`.
            message = await self._readMessage(record, body, response, upstream)
            startStream(request)
            request.write(b"".join(encodeEvent(e) for e in eventsForMessage(message)))
            record.status = 200
            return None
        translator = StreamTranslator(
            f"msg_{record.requestId}", record.model or "", stopSequences(body)
        )
        startStream(request)
        record.status = 200
        writer = EventWriter(request, self.clock, self.config.pingInterval)
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
            writer.write(translator.feed(chunk))

        parser = SSEParser(onData, self.clock, upstream.timeout, upstream.name)
        response.deliverBody(parser)
        # A slow reader pauses the upstream instead of making us buffer its stream.
        request.registerProducer(parser.transport, True)
        try:
            await parser.finished
            writer.write(translator.finish(parser.sawDone))
        except ProxyError as e:
            writer.writeError(e)
            record.fail(record.status, e.errorType, e.message)
        finally:
            writer.stop()
            if request.channel is not None:  # None once the client has gone
                request.unregisterProducer()
            if translator.usage is not None:
                record.countUsage(anthropicUsage(translator.usage))
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


def errorInBody(upstream: str, raw: bytes, data: dict[str, Any]) -> ProxyError:
    """A 2xx answer that is an error object: its own `code` when it is an HTTP status."""
    error = data.get("error")
    code = error.get("code") if isinstance(error, dict) else None
    if isinstance(code, str) and code.isdigit():
        code = int(code)
    status = code if isinstance(code, int) and 400 <= code <= 599 else 502
    return upstreamError(upstream, status, raw)


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
    if error.status in (429, 529, 503) or error.status >= 500:
        request.setHeader(b"x-should-retry", b"true")
    return _json(request, errorBody(error.errorType, error.message, _startRequest(request)))


def _json(request: IRequest, value: Any) -> bytes:
    body = orjson.dumps(value)
    request.setHeader(b"content-type", JSON)
    request.setHeader(b"content-length", b"%d" % len(body))
    return body


def _readJSON(request: IRequest, config: Config) -> dict[str, Any]:
    if getattr(request, "bodyTooLarge", False):
        raise _bodyTooLarge(config)
    raw = request.content.read()
    if len(raw) > config.maxBodyBytes:
        raise _bodyTooLarge(config)
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise invalidRequest(f"the request body is not valid JSON ({e})") from None
    if not isinstance(body, dict):
        raise invalidRequest("the request body must be a JSON object")
    return body


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


def _headerMap(response: Any) -> dict[str, str]:
    return {
        name.decode("latin-1").lower(): values[-1].decode("latin-1")
        for name, values in response.headers.getAllRawHeaders()
    }


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
