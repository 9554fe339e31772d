"""The Klein application: Claude Code's endpoints, served from the current config.

Routes are `async def` or plain methods; Klein cancels a handler's Deferred when
its client goes away, and that cancellation reaches the upstream request it is
waiting on. Every API route is wrapped by `api`: the caller is authenticated
before anything else, `max_duration` bounds it, and it leaves one access event
whatever becomes of it. Every failure before an answer starts is an Anthropic
error envelope with its status; after a stream has started, it is an
`event: error` frame (`ccproxy.relay.relay`).
"""

from __future__ import annotations

import functools
import hmac
import inspect
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, ClassVar, TypeVar

from attrs import define, field
from klein import Klein
from klein.resource import KleinResource
from twisted.internet.defer import CancelledError, Deferred, ensureDeferred, fail, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.server import NOT_DONE_YET
from werkzeug.exceptions import MethodNotAllowed, NotFound

from ccproxy.compat import SendTogether
from ccproxy.config.model import Config, keyDigest
from ccproxy.config.periods import MONTH, isoMoment, parseMoment, periodStart
from ccproxy.errors import ProxyError, invalidRequest
from ccproxy.ledger.model import Ledger
from ccproxy.ledger.signin import SignInStore
from ccproxy.ledger.store import LedgerUnavailable, SQLLedger
from ccproxy.observe.accesslog import AccessLog, AccessRecord
from ccproxy.observe.metrics import Metrics
from ccproxy.observe.usage import UsageBook, report
from ccproxy.upstream.dispatch import Dispatcher
from ccproxy.web.admission import Admission, mayUse
from ccproxy.web.auth import authenticate, callerKey
from ccproxy.web.call import (
    Call,
    boundedModelName,
    errorReply,
    jsonReply,
    newId,
    overTime,
    queryInt,
    queryText,
    redactFor,
    requestId,
)
from ccproxy.web.gateway import Gateway
from ccproxy.web.messages import MessagesAPI
from ccproxy.web.signin import SignIn
from ccproxy.web.status.page import StatusPage

METRICS_TYPE = b"text/plain; version=0.0.4; charset=utf-8"

Handler = TypeVar("Handler", bound=Callable[..., Any])


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def api(endpoint: str, admin: bool = False, public: bool = False) -> Callable[[Handler], Handler]:
    """Make a method an API route handler taking a `Call`: the caller is
    authenticated first (the admin's key only, with `admin`; nobody, with
    `public`: the sign-in endpoints), and the request is served by
    `ProxyApp.serve` (access record, `max_duration`, error envelope)."""

    def decorate(handler: Handler) -> Handler:
        @functools.wraps(handler)
        def route(self: ProxyApp, request: IRequest, **kwargs: Any) -> Awaitable[bytes | None]:
            # A bound method (or a partial) lives for the request's whole life,
            # lighter than a lambda and its cells.
            bound = partial(handler, self, **kwargs) if kwargs else handler.__get__(self)
            return self.serve(request, endpoint, admin, bound, public)

        return route  # type: ignore[return-value]

    return decorate


def mayObserve(request: IRequest, config: Config, admin: bool) -> bool:
    """Whether the caller may see inside the proxy: `/metrics` names every client
    with its models, statuses and tokens (`admin`: an admin client's key), and
    `/healthz`'s details name the upstreams (any client's key). The
    `metrics_token` opens both. So does `metrics_auth: none`, and so does a daemon
    with neither clients nor a token: its API already serves whoever can reach it
    (loopback, unless `allow_open`), and there are no client names to give away.

    False for a caller without a key where a bare answer will do (not `admin`);
    a `ProxyError` otherwise: 401 without a key or with a wrong one, 403 for a
    client that is not an admin.
    """
    token = config.metricsToken
    if config.metricsAuth == "none" or (not config.clients and token is None):
        return True
    key = callerKey(request)
    if not key:
        if not admin:
            return False
        raise ProxyError(
            401, "/metrics needs a key: an admin client's, or metrics_token as a bearer"
        )
    if token is not None and hmac.compare_digest(keyDigest(key), keyDigest(token)):
        return True
    client = authenticate(request, config)
    if client is None:  # a token, but no clients
        raise ProxyError(401, "invalid API key")
    if admin and not client.admin:
        raise ProxyError(
            403, "/metrics is for an admin client's key or metrics_token", "permission_error"
        )
    return True


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
    ledger: Ledger | None = None
    """Where each Messages request leaves its row, `/v1/usage` reads and budgets read
    what a client already spent (None: `ledger: off`, and usage is counted in this
    process, budgets from the start)."""
    http: Any = None
    """Outbound HTTP beside the upstreams' (a treq `HTTPClient`): telemetry forwarding."""
    usage: UsageBook = field(init=False)
    accessLog: AccessLog = field(init=False)
    messagesAPI: MessagesAPI = field(init=False)
    status: StatusPage = field(init=False)
    """`/status`, the live page for the person who runs the daemon."""
    signIn: SignIn = field(init=False)
    """`/login`'s endpoints and gateway tokens (`ccproxy.web.signin`)."""
    gateway: Gateway = field(init=False)
    generation: int = 1
    inFlight: int = 0
    _idle: list[Deferred[None]] = field(factory=list)

    router: ClassVar[Klein] = Klein()
    log: ClassVar[Logger] = Logger()

    def __attrs_post_init__(self) -> None:
        self.usage = UsageBook(self.startedAt)
        self.accessLog = AccessLog(self.metrics, self.usage, self.ledger)
        state = self.dispatcher.state.state
        self.messagesAPI = MessagesAPI(
            self.dispatcher,
            self.clock,
            Admission(state, self.clock, self.ledger),
            self.dispatcher.offload,
        )
        self.signIn = SignIn(
            SignInStore(self.ledger) if isinstance(self.ledger, SQLLedger) else None, self.clock
        )
        self.gateway = Gateway(self.clock, self.ledger, self.http)
        self.metrics.generation.set(self.generation)
        self.metrics.watchBreakers(
            lambda: [(name, h.breaker) for name, h in self._health().items()]
        )
        self.metrics.watchState(lambda: state.up)
        if isinstance(self.ledger, SQLLedger):  # a database's buffer and its health
            self.metrics.watchLedger(self.ledger.stats)
        self.status = StatusPage(
            self.clock,
            config=lambda: self.config,
            generation=lambda: self.generation,
            health=self._health,
            watch=self.accessLog.watch,
            usageBook=self.usage,
            ledger=self.ledger,
            startedAt=self.clock.seconds(),
            identify=self.signIn.identify,
        )

    @property
    def streamsInFlight(self) -> int:
        return self.messagesAPI.streamsInFlight

    def resource(self) -> Any:
        """Klein's resource, with `POST /v1/messages` found by a lookup (`HotRoute`)."""
        return HotRoute(self.router, {(b"POST", b"/v1/messages"): self.messages}, self._failed)

    def _failed(self, request: IRequest, failure: Failure) -> bytes | None:
        """What Klein's error handlers below make of a hot route's failure."""
        if failure.check(ProxyError):
            return self.proxyError(request, failure)
        return self.unexpected(request, failure)

    def reconfigure(self, config: Config) -> None:
        """Serve new requests from `config`; requests in flight keep their own."""
        self.config = config
        self.signIn.cache.clear()  # a client removed signs out now
        self.dispatcher.reconfigure(config)
        self.generation += 1
        self.metrics.generation.set(self.generation)

    def whenIdle(self) -> Deferred[None]:
        """Fires once no request is in flight (for draining on shutdown)."""
        if self.inFlight == 0:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._idle.append(waiter)
        return waiter

    def logRefused(self, record: AccessRecord) -> None:
        """A request the site refused before it reached a route (no key, too
        large, too slow) leaves its access event too (its message is ours, but
        goes through the same redaction as every other)."""
        self.accessLog.write(record, self.clock.seconds(), None, self.config.redactor.redact)

    def _health(self) -> dict[str, Any]:
        return self.dispatcher.health(sorted(self.config.upstreams))

    # -- service endpoints ---------------------------------------------------------

    @router.route("/", methods=["GET", "HEAD"])
    def root(self, request: IRequest) -> bytes:
        """That this is ccproxy, and that it answers."""
        return jsonReply(request, {"service": "ccproxy", "status": "ok"})

    @router.route("/healthz", methods=["GET", "HEAD"])
    def healthz(self, request: IRequest) -> bytes:
        """Liveness for anyone (a probe sends no key); with a key (`mayObserve`),
        the config generation, load and each upstream's breaker too."""
        if not mayObserve(request, self.config, admin=False):
            return jsonReply(request, {"status": "ok"})
        return jsonReply(
            request,
            {
                "status": "ok",
                "generation": self.generation,
                "in_flight": self.inFlight,
                "streams_in_flight": self.streamsInFlight,
                "upstreams": {
                    name: {"breaker": health.breaker} for name, health in self._health().items()
                },
            },
        )

    @router.route("/metrics", methods=["GET"])
    def metricsPage(self, request: IRequest) -> bytes:
        """Prometheus metrics, for an admin or the scrape token (`mayObserve`)."""
        mayObserve(request, self.config, admin=True)
        self.metrics.inFlight.set(self.inFlight)
        self.metrics.streamsInFlight.set(self.streamsInFlight)
        request.setHeader(b"content-type", METRICS_TYPE)
        return self.metrics.render()

    @router.route("/v1/usage", methods=["GET"])
    @api("usage")
    async def usageReport(self, call: Call) -> bytes:
        """Tokens, requests and cost per client and model in a period (`?since=`,
        `?until=`: ISO dates or datetimes, UTC; by default the current month), read
        from the ledger, so every process and host sharing it is counted. An admin
        sees every client, another client its own entry."""
        client = call.client
        if client is None:
            raise ProxyError(
                403, "usage is counted per client: the config has no clients", "permission_error"
            )
        request = call.request
        sinceText, untilText = queryText(request, b"since"), queryText(request, b"until")
        if self.ledger is None:
            if sinceText is not None or untilText is not None:
                raise invalidRequest(
                    "since and until need a ledger (ledger is off: usage is counted "
                    "in this process since it started)"
                )
            usage = self.usage.usage(None if client.admin else client.name)
            since, until = self.startedAt, None
        else:
            start, end = _period(sinceText, untilText, self.clock.seconds())
            try:
                usage = await self.ledger.usage(start, end, None if client.admin else client.name)
            except LedgerUnavailable as e:
                raise ProxyError(503, str(e), "api_error") from None
            since, until = isoMoment(start), None if end is None else isoMoment(end)
        if not client.admin:
            usage = usage.only(client.name)
        call.record.status = 200
        return jsonReply(request, report(usage, since, until, call.config.prices.currency))

    # -- the status page (ccproxy.web.status) ------------------------------------------

    @router.route("/status", methods=["GET", "HEAD"])
    async def statusPage(self, request: IRequest) -> bytes:
        """The live status page, for admin clients."""
        return await self.status.page(request)

    @router.route("/status/login", methods=["POST"])
    async def statusLogin(self, request: IRequest) -> bytes:
        return await self.status.login(request)

    @router.route("/status/logout", methods=["POST"])
    def statusLogout(self, request: IRequest) -> bytes:
        return self.status.logout(request)

    @router.route("/status/events", methods=["GET"])
    def statusEvents(self, request: IRequest) -> Deferred[None] | bytes:
        return self.status.events(request)

    @router.route("/status/snapshot", methods=["GET"])
    def statusSnapshot(self, request: IRequest) -> bytes:
        return self.status.snapshot(request)

    @router.route("/status/requests/<requestId>", methods=["GET"])
    def statusRequest(self, request: IRequest, requestId: str) -> bytes:
        return self.status.requestDetail(request, requestId)

    @router.route("/status/static/<name>", methods=["GET", "HEAD"])
    def statusAsset(self, request: IRequest, name: str) -> bytes:
        return self.status.asset(request, name)

    # -- models -------------------------------------------------------------------

    @router.route("/v1/models", methods=["GET"])
    @api("models")
    def listModels(self, call: Call) -> bytes:
        """The exact model names the config routes (those of the caller's `models`),
        paged as Anthropic pages them."""
        request = call.request
        names = [
            n
            for n in call.config.router.exactNames()
            if call.client is None or call.client.mayUse(n)
        ]
        limit = queryInt(request, b"limit", 20, 1, 1000)
        after = queryText(request, b"after_id")
        before = queryText(request, b"before_id")
        if after is not None and after in names:
            names = names[names.index(after) + 1 :]
        if before is not None and before in names:
            names = names[: names.index(before)]
            page = names[-limit:]
        else:
            page = names[:limit]
        call.record.status = 200
        return jsonReply(
            request,
            {
                "data": [self._modelInfo(name) for name in page],
                "has_more": len(names) > limit,
                "first_id": page[0] if page else None,
                "last_id": page[-1] if page else None,
            },
        )

    @router.route("/v1/models/<path:modelId>", methods=["GET"])
    @api("models")
    def getModel(self, call: Call, modelId: str) -> bytes:
        """One model, when the config routes its name (and the caller may use it)."""
        call.record.model = boundedModelName(modelId)
        mayUse(call.client, modelId)
        call.config.router.resolve(modelId)
        call.record.status = 200
        return jsonReply(call.request, self._modelInfo(modelId))

    def _modelInfo(self, name: str) -> dict[str, Any]:
        return {"type": "model", "id": name, "display_name": name, "created_at": self.startedAt}

    # -- messages -----------------------------------------------------------------

    @router.route("/v1/messages/count_tokens", methods=["POST"])
    @api("count_tokens")
    def countTokens(self, call: Call) -> Awaitable[bytes]:
        """The request's input tokens, estimated without calling an upstream."""
        return self.messagesAPI.countTokens(call)

    @router.route("/v1/messages", methods=["POST"])
    @api("messages")
    def messages(self, call: Call) -> Awaitable[bytes | None]:
        """Claude Code's main call: one answer, whole or streamed (the coroutine
        that answers, awaited by `serve`: no frame of this method's waits while a
        stream lives)."""
        return self.messagesAPI.create(call)

    # -- /login: Claude Code's gateway sign-in (ccproxy.web.signin) ------------------

    @router.route("/.well-known/oauth-authorization-server", methods=["GET"])
    @api("oauth_metadata", public=True)
    def oauthMetadata(self, call: Call) -> bytes:
        """Where Claude Code's device sign-in goes (RFC 8414)."""
        call.record.status = 200
        return self.signIn.metadata(call.request, call.config)

    @router.route("/oauth/device_authorization", methods=["POST"])
    @api("oauth_device", public=True)
    async def oauthDevice(self, call: Call) -> bytes:
        return await self.signIn.deviceAuthorization(call)

    @router.route("/oauth/token", methods=["POST"])
    @api("oauth_token", public=True)
    async def oauthToken(self, call: Call) -> bytes:
        return await self.signIn.token(call)

    @router.route("/oauth/revoke", methods=["POST"])
    @api("oauth_revoke", public=True)
    async def oauthRevoke(self, call: Call) -> bytes:
        return await self.signIn.revoke(call)

    @router.route("/device", methods=["GET"])
    @api("device_page", public=True)
    def devicePage(self, call: Call) -> bytes:
        """The verification page a person opens from Claude Code's sign-in screen."""
        call.record.status = 200
        return self.signIn.page(call.request, call.config)

    @router.route("/device", methods=["POST"])
    @api("device_page", public=True)
    async def devicePageSubmit(self, call: Call) -> bytes:
        body = await self.signIn.pageSubmit(call.request, call.config)
        call.record.status = call.request.code
        return body

    @router.route("/managed/settings", methods=["GET"])
    @api("managed_settings")
    def managedSettings(self, call: Call) -> bytes:
        """The signed-in user's Claude Code managed settings."""
        return self.gateway.managedSettings(call)

    @router.route("/api/oauth/usage", methods=["GET"])
    @api("usage_limits")
    async def usageLimits(self, call: Call) -> bytes:
        """The caller's standing against its budget, in cents and percents."""
        return await self.gateway.usage(call)

    @router.route("/v1/<any(metrics,logs,traces):signal>", methods=["POST"])
    @api("telemetry")
    def telemetry(self, call: Call, signal: str) -> bytes:
        """Claude Code's OTLP/HTTP telemetry: 200, forwarded to a collector or dropped."""
        return self.gateway.telemetry(call, signal)

    # -- serving an API request -----------------------------------------------------

    def serve(
        self,
        request: IRequest,
        endpoint: str,
        admin: bool,
        handler: Callable[[Call], bytes | Awaitable[bytes | None] | None],
        public: bool = False,
    ) -> Deferred[bytes | None]:
        """Serve one API request: authenticate (unless `public`), run `handler`
        within `max_duration`, answer failures with an envelope, and write the
        access event.

        The handler's coroutine's Deferred itself is returned, its end (`_served`)
        run by the coroutine as it ends, however it ends: an `async def` here
        would wrap it in a coroutine and a second Deferred, and a callback added
        for the end costs as much (each some 6,000 instructions). Cancelling it
        (a client that left) cancels the handler, as before."""
        try:
            config = self.config
            # The record by position (keywords cost a third of its making).
            record = AccessRecord(
                requestId(request, self.makeId),
                request.method.decode("ascii", "replace"),  # method
                request.path.decode("utf-8", "replace"),  # path
                self.clock.seconds(),  # started
                endpoint,
            )
            call = Call(request, config, record)
            self.inFlight += 1
            self.accessLog.begin(call.record, partial(_tokensSoFar, call))
        except BaseException:  # failed as the coroutine's Deferred would have
            return fail()
        expiry = _Expiry()
        work: Deferred[bytes | None] = Deferred.fromCoroutine(
            self._handle(call, admin, handler, public, expiry)
        )
        if config.maxDuration is not None and not work.called:  # (ended: nothing to stop)
            expiry.call = self.clock.callLater(config.maxDuration, self._expire, call, work)
        return work

    def _served(self, call: Call, expiry: _Expiry) -> None:
        """A request is over, however it ended: its timer stopped and its access
        event written."""
        timer = expiry.call
        if timer is not None and timer.active():
            timer.cancel()
        self.inFlight -= 1
        config = call.config
        self.accessLog.write(
            call.record,
            self.clock.seconds(),
            config.logPayloadMaxChars if config.logPayloads else None,
            call.redact,
            config.prices,
        )
        if self.inFlight == 0:
            waiters, self._idle = self._idle, []
            for waiter in waiters:
                waiter.callback(None)

    async def _handle(
        self,
        call: Call,
        admin: bool,
        handler: Callable[[Call], bytes | Awaitable[bytes | None] | None],
        public: bool,
        expiry: _Expiry,
    ) -> bytes | None:
        record = call.record
        try:
            if not public:
                call.client, call.viaToken = await self.signIn.identify(call.request, call.config)
            if call.client is not None:
                record.client = call.client.name
            if admin and (call.client is None or not call.client.admin):
                raise ProxyError(
                    403, "usage totals are for the admin's key only", "permission_error"
                )
            result = handler(call)
            if inspect.isawaitable(result):
                result = await result
            return result
        except ProxyError as e:
            record.fail(e.status, e.errorType, e.message)
            return errorReply(call.request, e, call.redact)
        except CancelledError:
            if call.expired:
                error = overTime(call.config)
                record.fail(error.status, error.errorType, error.message)
                return errorReply(call.request, error, call.redact)
            record.fail(499, "cancelled", "the client went away")
            raise
        finally:
            self._served(call, expiry)

    def _expire(self, call: Call, work: Deferred[Any]) -> None:
        """`max_duration` is over: end a stream being relayed with an error event,
        or stop the request wherever it is."""
        call.expired = True
        if call.relay is not None:
            call.relay.expire(overTime(call.config))
        else:
            work.cancel()

    # -- errors outside the handlers ---------------------------------------------

    def _errorReply(self, request: IRequest, error: ProxyError) -> bytes:
        return errorReply(request, error, redactFor(request, self.config))

    @router.handle_errors(ProxyError)
    def proxyError(self, request: IRequest, failure: Failure) -> bytes:
        """A `ProxyError` raised outside `serve`: its envelope."""
        return self._errorReply(request, failure.value)

    @router.handle_errors(NotFound)
    def notFound(self, request: IRequest, failure: Failure) -> bytes:
        """No route here: a 404 envelope naming the path."""
        path = request.path.decode("utf-8", "replace")
        return self._errorReply(request, ProxyError(404, f"no such endpoint: {path}"))

    @router.handle_errors(MethodNotAllowed)
    def methodNotAllowed(self, request: IRequest, failure: Failure) -> bytes:
        """A route that exists for other methods: 405 with `allow`."""
        allowed = ", ".join(failure.value.valid_methods or ())
        method = request.method.decode("ascii", "replace")
        request.setHeader(b"allow", allowed.encode())
        return self._errorReply(
            request,
            ProxyError(
                405,
                f"method {method} is not allowed here (allowed: {allowed})",
                "invalid_request_error",
            ),
        )

    @router.handle_errors(Exception)
    def unexpected(self, request: IRequest, failure: Failure) -> bytes | None:
        """A bug: logged with its traceback, answered 500 without one."""
        if failure.check(CancelledError):
            return None
        self.log.failure("Unexpected error answering {path}", failure, path=request.path)
        return self._errorReply(request, ProxyError(500, "internal error in ccproxy", "api_error"))


class _Expiry:
    """A request's `max_duration` timer, set by `ProxyApp.serve` once its handler
    has begun (None: no limit, or the handler ended at once)."""

    __slots__ = ("call",)

    def __init__(self) -> None:
        self.call: IDelayedCall | None = None


class HotRoute(KleinResource):
    """Klein's resource, with the route nearly every request takes found by a dict
    lookup on its method and path.

    For each request Klein binds a werkzeug map adapter, matches the path against
    every rule, adapts the request to `IKleinRequest` and runs the handler through
    three Deferreds. The hot route keeps what its handler relies on: the handler's
    Deferred is cancelled when the client goes away, its bytes are written and the
    request finished, and a failure goes where Klein's `handle_errors` would send
    it (`failed`; a `CancelledError` after the client left is dropped, as Klein
    drops it). Any other method or path (`/v1/messages/`, `GET /v1/messages`) is
    Klein's, with its 404 and 405 answers.
    """

    log: ClassVar[Logger] = Logger()

    def __init__(
        self,
        app: Klein,
        routes: dict[tuple[bytes, bytes], Callable[[IRequest], Awaitable[bytes | None]]],
        failed: Callable[[IRequest, Failure], bytes | None],
    ) -> None:
        super().__init__(app)
        self._routes = routes
        self._failed = failed

    def render(self, request: IRequest) -> Any:
        handler = self._routes.get((request.method, request.path))
        if handler is None:
            return super().render(request)
        finished: list[object] = []
        work = ensureDeferred(handler(request))
        # One notification (a Deferred and its callbacks live as long as the request:
        # a stream's minutes) both notes the end and cancels the handler on a cut.
        request.notifyFinish().addBoth(_ended, finished, work)
        work.addBoth(self._settle, request, finished)  # one callback, not a chain of three
        return NOT_DONE_YET

    def _settle(self, result: object, request: IRequest, finished: list[object]) -> None:
        """The handler's bytes, or what its failure makes (`_failure`), on the wire
        (`_answer`); an exception on the way is logged."""
        try:
            if isinstance(result, Failure):
                result = self._failure(result, request, finished)
            _answer(result, request, finished)  # type: ignore[arg-type]
        except BaseException:
            self.log.failure("Unhandled error writing an answer")

    def _failure(self, failure: Failure, request: IRequest, finished: list[object]) -> bytes | None:
        if finished:  # nobody to answer
            if not failure.check(CancelledError):
                self.log.failure("Unhandled error processing a request", failure)
            return None
        return self._failed(request, failure)


def _ended(result: object, finished: list[object], work: Deferred[Any]) -> None:
    """A hot route's request is over (`result`: None) or its client gone (a
    failure): noted in `finished`, and the handler cancelled if it was cut."""
    finished.append(result)
    if isinstance(result, Failure):
        work.cancel()


def _answer(result: bytes | None, request: IRequest, finished: list[object]) -> None:
    """A hot route's result on the wire, as Klein writes one, and sent at once, in
    one send (`SendTogether`), not a reactor turn later."""
    with SendTogether(getattr(request, "transport", None)):  # before finish lets go of it
        if isinstance(result, bytes):
            request.write(result)
        if not finished:
            request.finish()


def _tokensSoFar(call: Call) -> int:
    """Output tokens of `call`'s answer so far, for the status page: the stream's
    chunks relayed while it lasts, the usage once known."""
    relay = call.relay
    return relay.chunks if relay is not None else call.record.outputTokens


def _period(since: str | None, until: str | None, now: float) -> tuple[float, float | None]:
    """`?since=` and `?until=` as Unix seconds: since the start of the current UTC
    month, until now, by default. A date alone as `until` counts that whole day."""
    try:
        start = periodStart(now, MONTH) if since is None else parseMoment(since)
    except ValueError as e:
        raise invalidRequest(f"since: {e}") from None
    try:
        end = None if until is None else parseMoment(until, endOfDay=True)
    except ValueError as e:
        raise invalidRequest(f"until: {e}") from None
    if end is not None and end <= start:
        raise invalidRequest("until: must be after since")
    return start, end
