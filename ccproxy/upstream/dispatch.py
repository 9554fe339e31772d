"""Getting an answer started: retries, failover across a route's targets, the
circuit breaker and the upstream's concurrency slots.

Everything here happens before any byte of an answer goes to the client (at most a
stream's `message_start` and pings, which no upstream's answer contradicts: see
`ccproxy.web.messages`), so trying again is safe: a failed attempt is retried on the
same upstream (with backoff, honouring `retry-after`) and then on the route's next
target. Errors that retrying cannot fix (400, 401, 403, 404, 413, …) go straight
back to the client.

The attempt is owned here from start to end: `Dispatcher.send(plan, …)` is an
async context manager whose `Answer` holds the upstream's slot for as long as the
answer is being relayed, and gives the breaker its verdict when the block ends.

    async with dispatcher.send(plan, callerKey, deadline, attempts) as answer:
        ...  # relay answer.response, or send answer.message
        answer.settle(ok)  # a stream that broke mid-way: False
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Mapping
from email.utils import parsedate_to_datetime
from types import TracebackType
from typing import Any, ClassVar

import orjson
from attrs import Factory, define, field, frozen
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.web.iweb import IResponse

from ccproxy.config.model import Config, Upstream
from ccproxy.config.policy import Policy
from ccproxy.config.routing import Target
from ccproxy.errors import ProxyError, promptTooLong
from ccproxy.observe.accesslog import Attempt
from ccproxy.state.local import LocalState
from ccproxy.state.model import State, UpstreamBreaker
from ccproxy.translate.dialect import Profile
from ccproxy.translate.overflow import readOverflow
from ccproxy.translate.request import toOpenAI
from ccproxy.translate.tokens import estimateTokens
from ccproxy.upstream.client import MAX_ERROR_BYTES, UpstreamClient, isEventStream, responseHeaders
from ccproxy.upstream.offload import Offload
from ccproxy.upstream.plan import Plan, Rendering, apiOf
from ccproxy.upstream.slots import Slots

RETRYABLE_4XX = frozenset({408, 429})


CALLERS_OWN = frozenset({401, 403, 429})


def _callersOwn(hop: _Hop, error: ProxyError) -> bool:
    """A refusal of the caller's own forwarded key (the upstream has no `api_key`
    and the caller sent one): it goes back to that caller, is not retried
    elsewhere, and no breaker hears of it, so one person's rate limit is nobody
    else's outage."""
    return (
        hop.upstream.apiKey is None
        and hop.callerKey is not None
        and error.upstreamStatus in CALLERS_OWN
    )


def isRetryable(error: ProxyError) -> bool:
    """Failures another attempt may fix: connection errors and timeouts (our 502 and
    504), 408, 429 and every 5xx."""
    return error.status in RETRYABLE_4XX or error.status >= 500


class Gate:
    """One upstream's shared state: its circuit breaker (kept by the state backend:
    this process's, or Redis's for every process) and its concurrency slots, each
    holding the upstream's current `Policy`."""

    def __init__(
        self, clock: IReactorTime, name: str, policy: Policy, state: State | None = None
    ) -> None:
        """`state`: where its breaker is kept (None: in this process)."""
        self.breaker: UpstreamBreaker = (state or LocalState(clock)).breaker(name, policy)
        self.slots = Slots(clock, policy, name)

    def reconfigure(self, policy: Policy) -> None:
        self.breaker.policy = policy
        self.slots.reconfigure(policy)

    def finish(self, ok: bool | None) -> None:
        """An answer is over: free its slot and tell the breaker True, False, or
        None (no verdict: the client left, or ccproxy itself failed)."""
        self.slots.release()
        if ok is None:
            self.breaker.released()
        elif ok:
            self.breaker.succeeded()
        else:
            self.breaker.failed()


@frozen
class UpstreamHealth:
    """What `/healthz` and `/metrics` show of one upstream."""

    breaker: str
    active: int
    queued: int


@define
class UpstreamState:
    """Per-upstream state that outlives a config reload: one `Gate` per upstream,
    its breaker kept by `state` (this process's own by default)."""

    clock: IReactorTime
    state: State = field(default=Factory(lambda self: LocalState(self.clock), takes_self=True))
    gates: dict[str, Gate] = field(factory=dict)

    def gate(self, upstream: Upstream) -> Gate:
        if upstream.name not in self.gates:
            self.gates[upstream.name] = Gate(self.clock, upstream.name, upstream.policy, self.state)
        return self.gates[upstream.name]

    def reconfigure(self, upstreams: Mapping[str, Upstream]) -> None:
        """A reload: each upstream's breaker and slots take its new policy."""
        for name, gate in self.gates.items():
            if name in upstreams:
                gate.reconfigure(upstreams[name].policy)

    def health(self, names: Iterable[str]) -> dict[str, UpstreamHealth]:
        """The state of each named upstream (closed and idle until first used)."""
        found = {}
        for name in names:
            gate = self.gates.get(name)
            found[name] = (
                UpstreamHealth(gate.breaker.state, gate.slots.active, gate.slots.queued)
                if gate is not None
                else UpstreamHealth("closed", 0, 0)
            )
        return found


class Answer:
    """An upstream that answered 2xx, holding its slot until the block using it ends.

    `message` is the whole answer, already translated, when it was read during the
    attempt (a JSON answer); otherwise `response` is a stream still to be read.
    The breaker's verdict is success unless `settle` says otherwise or the block
    raises (a `ProxyError`: failure; anything else, a client that left included:
    no verdict).
    """

    def __init__(
        self,
        gate: Gate,
        upstream: Upstream,
        target: Target,
        response: IResponse,
        message: dict[str, Any] | None,
        rendering: Rendering,
    ) -> None:
        self.upstream = upstream
        self.target = target
        self.response = response
        self.message = message
        self.rendering = rendering
        self.raw: bytes | None = None
        """The whole answer's bytes, when they go to the client as they came (an
        upstream speaking the Messages API): `message` is then read only for its
        usage."""
        self.searches = False
        """Whether ccproxy runs the request's tool search in this answer."""
        self._gate: Gate | None = gate
        self._ok: bool | None = True

    def settle(self, ok: bool | None) -> None:
        """How relaying the answer went, for the breaker: True, False (it broke off
        mid-way), None (no verdict)."""
        self._ok = ok

    def close(self, error: BaseException | None) -> None:
        """Give the slot back and the breaker its verdict, once."""
        gate, self._gate = self._gate, None
        if gate is None:
            return
        if error is None:
            gate.finish(self._ok)
        elif isinstance(error, ProxyError):
            gate.finish(False)
        else:
            gate.finish(None)


@frozen
class _Hop:
    """One target of a plan, ready to try: its upstream, gate and body."""

    plan: Plan
    upstream: Upstream
    target: Target
    gate: Gate
    body: bytes = field(repr=False)
    callerKey: str | None = field(repr=False)


def _dispatched(plan: Plan) -> Any:
    raise AssertionError("a dispatch is entered once")


class _Sending:
    """`Dispatcher.send`'s context: dispatches on entry, closes the answer on exit.

    It forgets the plan as soon as an upstream has answered, so that a long stream
    does not keep the client's request alive.
    """

    def __init__(self, dispatch: Callable[[Plan], Any], plan: Plan) -> None:
        self._dispatch = dispatch
        self._plan: Plan | None = plan
        self._answer: Answer | None = None

    async def __aenter__(self) -> Answer:
        plan, self._plan = self._plan, None
        assert plan is not None, "a dispatch is entered once"
        # Nor the dispatch's closure (its key, deadline, attempts) once it has answered.
        dispatch, self._dispatch = self._dispatch, _dispatched
        self._answer = await dispatch(plan)
        return self._answer

    async def __aexit__(
        self,
        excType: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._answer is not None:
            self._answer.close(exc)


@define
class Dispatcher:
    """Sends one request along its route until an upstream answers 2xx."""

    client: UpstreamClient
    clock: IReactorTime
    state: UpstreamState
    random: Callable[[], float] = random.random
    offload: Offload = field(factory=Offload)
    """Where a large request is translated (off the reactor thread)."""
    log: ClassVar[Logger] = Logger()

    def reconfigure(self, config: Config) -> None:
        """A reload: the upstreams' breakers and slots take their new policies."""
        self.state.reconfigure(config.upstreams)

    def health(self, names: Iterable[str]) -> dict[str, UpstreamHealth]:
        """Breaker and slot state of the named upstreams."""
        return self.state.health(names)

    def send(
        self,
        plan: Plan,
        callerKey: str | None,
        deadline: float | None,
        attempts: list[Attempt],
    ) -> _Sending:
        """The first 2xx answer along the plan's targets, as the context of an
        `async with`; raises the last failure otherwise.

        `deadline` is the client's patience, past which no retry is started;
        `attempts` collects one line per attempt for the access log.
        """
        return _Sending(lambda p: self._dispatch(p, callerKey, deadline, attempts), plan)

    async def _dispatch(
        self,
        plan: Plan,
        callerKey: str | None,
        deadline: float | None,
        attempts: list[Attempt],
    ) -> Answer:
        """Each target in turn; a target whose breaker is open is skipped only while
        another may serve. When every one is open, the request still goes to the
        one that opened first ("panic routing", as Envoy does): a breaker steers
        traffic to a healthier target, it never makes an outage of its own."""
        lastError: ProxyError | None = None
        skipped: list[_Hop] = []
        for target in plan.targets:
            upstream = plan.upstreams[target.upstream]
            gate = self.state.gate(upstream)
            # A client's mistake is a 400 here, before any attempt.
            body = await self.offload.run(plan.size, plan.bodyFor, upstream, target)
            if target is plan.targets[-1]:
                plan.letGo()  # retries and the panic's try resend the bodies made
            hop = _Hop(plan, upstream, target, gate, body, callerKey)
            allowed = gate.breaker.allow()
            if not isinstance(allowed, bool):  # a shared backend's answer, to await
                allowed = await allowed
            if not allowed:
                attempts.append(Attempt(upstream.name, None, note="skipped, circuit open"))
                skipped.append(hop)
                continue
            try:
                return await self._attempt(hop, deadline, attempts)
            except ProxyError as e:
                if not isRetryable(e) or _callersOwn(hop, e):
                    raise
                lastError = e
        if lastError is None:  # every target skipped: try the longest-open one anyway
            hop = min(skipped, key=lambda h: h.gate.breaker.openedAt)
            attempts.append(Attempt(hop.upstream.name, None, note="every circuit open: tried"))
            return await self._attempt(hop, deadline, attempts, panic=True)
        raise lastError

    async def _attempt(
        self, hop: _Hop, deadline: float | None, attempts: list[Attempt], panic: bool = False
    ) -> Answer:
        """Tries one upstream, with its retries; holds a slot during each try.
        `panic`: tried although its breaker is open (no retry then)."""
        upstream, gate, policy = hop.upstream, hop.gate, hop.upstream.policy
        tries = 0
        while True:
            try:
                await gate.slots.acquire()
            except BaseException:
                gate.breaker.released()
                raise
            try:
                answer = await self._try(hop)
                attempts.append(Attempt(upstream.name, answer.response.code))
                return answer
            except ProxyError as e:
                error = e
            except BaseException:  # cancelled (the client left), or a bug: no verdict
                gate.finish(None)
                raise
            gate.slots.release()
            attempts.append(Attempt(upstream.name, error.status, error.errorType))
            if _callersOwn(hop, error):
                gate.breaker.released()  # the caller's key, the caller's trouble
                raise error
            if not isRetryable(error):
                gate.breaker.succeeded()  # it answered: the fault is in the request
                raise error
            opened = await gate.breaker.failed()
            delay = self._retryDelay(error, tries, policy.maxRetryWait)
            if (
                panic
                or tries >= policy.retries
                or delay is None
                or opened
                or (deadline is not None and self.clock.seconds() + delay >= deadline)
            ):
                raise error
            tries += 1
            await deferLater(self.clock, delay)
            allowed = gate.breaker.allow()
            if not isinstance(allowed, bool):
                allowed = await allowed
            if not allowed:
                raise error

    async def _try(self, hop: _Hop) -> Answer:
        """One request to one upstream: a 2xx `Answer` (read whole when the plan
        says so), or the failure as a `ProxyError`."""
        plan, upstream = hop.plan, hop.upstream
        api = apiOf(upstream)
        client = self.client
        response, silence = await client.send(
            upstream, hop.body, hop.callerKey, plan.clientHeaders, None
        )
        try:
            if not 200 <= response.code < 300:
                raw = await client.readBody(
                    upstream, response, MAX_ERROR_BYTES, truncate=True, silence=silence
                )
                error = api.error(upstream.name, response.code, raw, responseHeaders(response))
                raise await self._overflowOr(error, hop, raw)
            message = None
            verbatim = None
            if plan.readsWhole(isEventStream(response)):
                raw = await client.readBody(
                    upstream, response, plan.maxResponseBytes, silence=silence
                )
                try:
                    message = plan.rendering.message(upstream, raw)
                except ProxyError as e:
                    if e.upstreamStatus is None:  # ours: an answer we cannot read
                        raise
                    raise await self._overflowOr(e, hop, raw) from None  # its error object
                if not api.translates:
                    verbatim = raw
        finally:
            silence.cancel()  # a stream's reader makes its own
        answer = Answer(hop.gate, upstream, hop.target, response, message, plan.rendering)
        answer.raw = verbatim
        answer.searches = plan.searchesFor(upstream)
        return answer

    async def _overflowOr(self, error: ProxyError, hop: _Hop, raw: bytes) -> ProxyError:
        """The upstream's refusal as Claude Code compacts on when it says the prompt
        does not fit (`ccproxy.translate.overflow`), else `error` as it is. Missing
        numbers come from ccproxy's estimate of the body sent and the target's
        `context_window`."""
        overflow = readOverflow(raw.decode("utf-8", "replace"))
        if overflow is None:
            return error
        estimate = None
        if overflow.needsEstimate:
            translated = apiOf(hop.upstream).translates
            estimate = await self.offload.run(len(hop.body), _estimate, hop.body, translated)
        status = 413 if overflow.verbatim and error.status == 413 else 400
        return promptTooLong(
            overflow.message(estimate, hop.target.contextWindow),
            hop.upstream.name,
            error.upstreamStatus,
            status,
        )

    def _retryDelay(self, error: ProxyError, tries: int, cap: float) -> float | None:
        """Seconds before the next attempt: the upstream's `retry-after` when it
        gives one (None when that is longer than `cap`: do not wait here), else
        exponential backoff with jitter."""
        retryAfter = _retryAfterSeconds(error.headers.get("retry-after"), self.clock.seconds())
        if retryAfter is not None:
            return retryAfter if retryAfter <= cap else None
        backoff = min(cap, 0.5 * 2**tries)
        return backoff * (0.5 + self.random() / 2)


def _estimate(body: bytes, translated: bool = True) -> int:
    """ccproxy's count of the prompt tokens in a body sent upstream (pure, so it can
    run in a thread); an Anthropic body (`translated` False) is counted as its
    chat/completions translation would be."""
    request = orjson.loads(body)
    if not translated:
        try:
            request = toOpenAI(
                request, model=str(request.get("model")), profile=Profile(), defaultMaxTokens=1
            )
        except ProxyError:  # passed through as it came, it may hold what ccproxy refuses
            return max(len(body) // 4, 1)
    return estimateTokens(request)


def _retryAfterSeconds(value: str | None, now: float) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - now)
    except (TypeError, ValueError):
        return None
