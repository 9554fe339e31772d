"""The Messages API: `/v1/messages` and `/v1/messages/count_tokens`.

One request goes one way down: its body read, its model checked against the
client's `models`, admitted within the client's limits and budgets
(`ccproxy.web.admission`), routed, a `Plan` made (`ccproxy.upstream.plan`),
dispatched along the route (`ccproxy.upstream.dispatch`), and the `Answer`
either sent whole or handed to a `StreamRelay` (`ccproxy.relay.relay`), whose
`Verdict` goes back to the answer (for the breaker) and into the access record;
its usage goes to the client's budgets.

A stream request's relay is made before the dispatch: when no upstream has
answered within the route's `head_wait`, the client gets `200`, `message_start`
and pings, so that a gateway that withholds its headers until the model's first
token does not look dead. From then on the dispatch carries on as before (retries
and failover included: `message_start` names only the client's id and model, so
any upstream's answer may follow it), and a refusal reaches the client as the
`event: error` its status would have meant.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from functools import partial
from typing import Any

import orjson
from attrs import define, field
from twisted.internet.defer import CancelledError
from twisted.internet.interfaces import IReactorTime
from twisted.web.iweb import IRequest

from ccproxy.config.model import Config, Upstream
from ccproxy.config.routing import NEEDS_TOKENS, Route, Target, notRouted
from ccproxy.errors import ProxyError, badGateway, notSupported
from ccproxy.relay.relay import StreamRelay, TurnEnd, Verdict, nestedTooDeepAnswer
from ccproxy.translate.dialect import Profile
from ccproxy.translate.facts import RequestFacts
from ccproxy.translate.request import sessionKey
from ccproxy.translate.tokens import requestTokens
from ccproxy.upstream.client import (
    FORWARDED_HEADERS,
    MAX_ERROR_BYTES,
    responseHeaders,
)
from ccproxy.upstream.dispatch import Answer, Dispatcher
from ccproxy.upstream.offload import Offload
from ccproxy.upstream.plan import Plan, apiOf, messagesBody, nestedTooDeep
from ccproxy.web.admission import Admission, Standing, mayUse
from ccproxy.web.call import (
    JSON,
    Call,
    forgetHeaders,
    jsonReply,
    modelName,
    overTime,
    parseJSON,
    readRaw,
    releaseBody,
)
from ccproxy.web.searching import SearchRounds

_NO_ROUNDS = nullcontext()
"""The context of an answer without tool search rounds (stateless: shared)."""

ESTIMATE_WEIGHT = 16
"""How much heavier a byte is to count tokens in than to translate: the offload's
threshold, set for translating, is reached 16 times sooner by a count."""


@define
class MessagesAPI:
    """Answers the Messages endpoints through the dispatcher."""

    dispatcher: Dispatcher
    clock: IReactorTime
    admission: Admission
    offload: Offload = field(factory=Offload)
    streamsInFlight: int = 0
    turnEnd: TurnEnd = field(init=False)
    """Every stream's end-of-turn flush, on one timer (`ccproxy.relay.relay.TurnEnd`)."""

    def __attrs_post_init__(self) -> None:
        self.turnEnd = TurnEnd(self.clock)

    async def create(self, call: Call) -> bytes | None:
        """`POST /v1/messages`: one answer, whole (JSON) or streamed (SSE)."""
        config, record = call.config, call.record
        raw = readRaw(call)
        body = parseJSON(raw)
        model = record.model = modelName(body)
        mayUse(call.client, model)
        entry = self.admission.enter(call.client, config)
        if type(entry) is not tuple:  # a state that answers later (Redis)
            entry = await entry
        lease, standing = entry
        try:  # (not `async with admission.admitted`: see `Admission.enter`)
            route, _ = await self._route(call, body, model)
            if route is None:
                raise notRouted(model)
            record.stream = body.get("stream") is True
            passes = _passesThrough(config, route.targets)
            plan = Plan.forRequest(
                body,
                model,
                f"msg_{record.requestId}",
                targets=route.targets,
                upstreams=config.upstreams,
                defaultMaxTokens=config.defaultMaxTokens,
                maxResponseBytes=config.maxResponseBytes,
                size=call.bodySize,
                cacheKey=sessionKey(_header(call.request, b"x-claude-code-session-id"), body),
                raw=raw if passes else None,
                clientHeaders=forwardedHeaders(call.request) if passes else {},
            )
            del body, raw
            relay = None
            if record.stream:
                relay = self._streamRelay(call, standing)
                headWait = config.upstreams[route.targets[0].upstream].policy.headWait
                relay.holdHead(headWait, plan.rendering.start())
            try:
                key = call.forwardedKey
                until = deadline(call.request, record.started, config)
                async with self.dispatcher.send(plan, key, until, record.attempts) as answer:
                    # The request is not kept for a long stream, unless ccproxy's tool
                    # search may have to send it again.
                    rounds = (
                        SearchRounds.forPlan(self.dispatcher, plan, key, until, record.attempts)
                        if answer.searches
                        else None
                    )
                    del plan
                    if rounds is None:  # else its room is held until the request ends
                        releaseBody(call)
                        forgetHeaders(call)
                    async with rounds or _NO_ROUNDS:
                        if rounds is not None and answer.message is not None:
                            answer.message = await rounds.whole(answer)
                        self._answered(call, answer, model, standing)
                        if relay is None:
                            return self._whole(call, answer)
                        return await self._relay(call, answer, standing, relay, rounds)
            except ProxyError as e:
                if e.upstream is not None and record.upstream is None:
                    record.upstream, record.upstreamStatus = e.upstream, e.upstreamStatus
                    record.upstreamModel = _modelAt(route.targets, e.upstream, model)
                if relay is not None and relay.committed:
                    return self._refused(call, relay, e)
                raise
            except CancelledError:
                if relay is not None and relay.committed and call.expired:
                    return self._refused(call, relay, overTime(config), timeout=True)
                raise
            finally:
                if relay is not None:
                    relay.close()
                if standing is not None:
                    self.admission.charge(config, standing, record.upstreamModel)
        finally:
            self.admission.leave(lease)

    async def countTokens(self, call: Call) -> bytes:
        """`POST /v1/messages/count_tokens`: estimated on the request as the route's
        first upstream would receive it; 501 `not_supported` where that upstream
        has `count_tokens: false`. An upstream speaking the Messages API counts
        itself (or, with `count_tokens: false`, is estimated for here)."""
        config, record = call.config, call.record
        raw = readRaw(call)
        body = parseJSON(raw)
        model = record.model = modelName(body)
        mayUse(call.client, model)
        async with self.admission.admitted(call.client, config, budgets=False):
            route, estimate = await self._route(call, body, model)
            profile = Profile()
            upstreamModel = model
            if route is not None:
                target = route.targets[0]
                upstream = config.upstreams[target.upstream]
                if upstream.api == "messages" and upstream.countTokens:
                    return await self._countUpstream(call, upstream, target, raw, body)
                if not upstream.countTokens and apiOf(upstream).translates:
                    raise notSupported(
                        f"count_tokens is not available for {model} (its upstream"
                        f" {upstream.name} has count_tokens: false): count locally"
                    )
                profile = upstream.profile
                upstreamModel = record.upstreamModel = target.modelFor(model)
                record.upstream = target.upstream
            if estimate is None or profile != Profile():  # else counted already, as here
                estimate = await self._estimate(call, body, upstreamModel, profile)
            record.status = 200
            return jsonReply(call.request, {"input_tokens": estimate})

    async def _route(
        self, call: Call, body: dict[str, Any], model: str
    ) -> tuple[Route | None, int | None]:
        """The route for the request (None: none serves it) and the token estimate
        when a rule needed it. `routes:` rules first, each reading what the request
        holds (`RequestFacts`, computed once); the estimate only when a rule's
        threshold is under what the body could hold (`tokensAtMost`)."""
        config, record = call.config, call.record
        router = config.router
        route = entry = router.find(model)
        facts = None
        if router.rules:
            facts = RequestFacts(body, call.bodySize)
            client = call.client.name if call.client is not None else None
            route = router.choose(model, facts, client)
            if route is NEEDS_TOKENS:
                facts.inputTokens = await self._estimate(call, body, model, Profile())
                route = router.choose(model, facts, client)
        record.modelRoute = entry.pattern if entry is not None else None
        record.route = route.pattern if route is not None else None
        return route, facts.inputTokens if facts is not None else None

    async def _estimate(
        self, call: Call, body: dict[str, Any], model: str, profile: Profile
    ) -> int:
        """count_tokens' estimate of the request, off the reactor when the body is
        large (counting a byte costs some 20 times translating it)."""
        return await self.offload.run(
            call.bodySize * ESTIMATE_WEIGHT,
            estimateInputTokens,
            body,
            model,
            profile,
            call.config.defaultMaxTokens,
        )

    async def _countUpstream(
        self, call: Call, upstream: Upstream, target: Target, raw: bytes, body: dict[str, Any]
    ) -> bytes:
        """`count_tokens` asked of an upstream that speaks the Messages API: its
        answer as it came, its refusal as any of its errors."""
        record, client = call.record, self.dispatcher.client
        model = record.upstreamModel = target.modelFor(body["model"])
        record.upstream = upstream.name
        sent = await self.offload.run(len(raw), messagesBody, raw, body, model)
        response = await client.post(
            upstream,
            sent,
            call.forwardedKey,
            forwardedHeaders(call.request),
            url=upstream.countTokensURL,
        )
        record.upstreamStatus = response.code
        if not 200 <= response.code < 300:
            error = await client.readBody(upstream, response, MAX_ERROR_BYTES, truncate=True)
            raise apiOf(upstream).error(
                upstream.name, response.code, error, responseHeaders(response)
            )
        answer = await client.readBody(upstream, response, MAX_ERROR_BYTES)
        try:
            counted = orjson.loads(answer)
        except orjson.JSONDecodeError:
            counted = None
        if not isinstance(counted, dict) or not isinstance(counted.get("input_tokens"), int):
            raise badGateway(upstream.name, f"count_tokens answered {answer[:200]!r}")
        record.status = 200
        call.request.setHeader(b"content-type", JSON)
        call.request.setHeader(b"content-length", b"%d" % len(answer))
        return answer

    def _answered(self, call: Call, answer: Answer, model: str, standing: Standing | None) -> None:
        """An upstream answered 2xx: recorded, and the client's budget standing set
        on a whole answer's head (a stream's goes with its own, `_streamRelay`)."""
        record = call.record
        if record.firstByte is None:  # else the stream was committed earlier
            record.firstByte = self.clock.seconds()
        record.upstream = answer.upstream.name
        record.upstreamModel = answer.target.modelFor(model)
        record.upstreamStatus = answer.response.code
        if answer.message is not None:
            record.countUsage(answer.message["usage"])
        if standing is not None:
            if not record.stream:  # a stream's go out with its head (`_streamRelay`)
                standing.show(call.request)
            if answer.message is not None:
                standing.usage = answer.message["usage"]

    def _whole(self, call: Call, answer: Answer) -> bytes:
        """A non-streaming answer: one translated message."""
        assert answer.message is not None, "a request without a stream is read whole"
        call.record.status = 200
        if answer.raw is not None:  # passed through: the upstream's own bytes
            reply = answer.raw
            call.request.setHeader(b"content-type", JSON)
            call.request.setHeader(b"content-length", b"%d" % len(reply))
        else:
            try:
                reply = jsonReply(call.request, answer.message)
            except orjson.JSONEncodeError:
                raise nestedTooDeepAnswer(answer.upstream.name) from None
        if call.config.logPayloads:
            call.record.responsePayload = reply
        return reply

    def _streamRelay(self, call: Call, standing: Standing | None) -> StreamRelay:
        """The relay of a stream request's answer, made before it is asked for; its
        head carries the client's usage-limit headers, and `firstByte` is when it
        went out."""
        config = call.config
        return StreamRelay(
            call.request,
            self.clock,
            config.pingInterval,
            config.maxLineBytes,
            config.logPayloadMaxChars if config.logPayloads else 0,
            call.redact,
            onCommit=partial(self._committed, call, standing),
            turnEnd=self.turnEnd,
        )

    def _committed(self, call: Call, standing: Standing | None) -> None:
        """A stream's head is being made: `firstByte` is now, and its head carries
        the client's usage-limit headers."""
        call.record.firstByte = self.clock.seconds()
        if standing is not None:
            standing.show(call.request)

    def _refused(
        self, call: Call, relay: StreamRelay, error: ProxyError, timeout: bool = False
    ) -> None:
        """The answer failed after the client's stream was committed: the stream ends
        with an `event: error` (the status is spent), recorded as such."""
        _record(call, relay.refuse(error, timeout))

    async def _relay(
        self,
        call: Call,
        answer: Answer,
        standing: Standing | None,
        relay: StreamRelay,
        rounds: SearchRounds | None = None,
    ) -> None:
        """A streamed answer, relayed by its `StreamRelay` until it ends (with more
        upstream answers when ccproxy's tool search continues it)."""
        call.relay = relay
        self.streamsInFlight += 1
        try:
            await relay.relay(answer, rounds)
        finally:
            self.streamsInFlight -= 1
            call.relay = None
            if relay.verdict is not None:
                _record(call, relay.verdict)
                if rounds is not None:
                    rounds.settle(answer, relay.verdict.ok)
                else:
                    answer.settle(relay.verdict.ok)
                if standing is not None and relay.verdict.usage is not None:
                    standing.usage = relay.verdict.usage
        return None


def estimateInputTokens(
    body: dict[str, Any], model: str, profile: Profile, defaultMaxTokens: int
) -> int:
    """`requestTokens`, a body nested too deeply the client's 400 (pure, so it can
    run in a thread)."""
    try:
        return requestTokens(body, model, profile, defaultMaxTokens)
    except orjson.JSONEncodeError:
        raise nestedTooDeep() from None


def _record(call: Call, verdict: Verdict) -> None:
    record = call.record
    record.status = 200
    if verdict.errorType is not None:
        record.fail(record.status, verdict.errorType, verdict.errorMessage or "")
    if verdict.usage is not None:
        record.countUsage(verdict.usage)
    if verdict.copy is not None:
        record.responsePayload = verdict.copy


def _passesThrough(config: Config, targets: Sequence[Target]) -> bool:
    """Whether some target of the route passes the client's body through (a loop,
    not `any` over a generator made per request)."""
    for target in targets:
        if not apiOf(config.upstreams[target.upstream]).translates:
            return True
    return False


def forwardedHeaders(request: IRequest) -> dict[str, str]:
    """The client's headers an upstream may get (`FORWARDED_HEADERS`), as sent."""
    found = {}
    for name in FORWARDED_HEADERS:
        value = _header(request, name.encode())
        if value is not None:
            found[name] = value
    return found


def _modelAt(targets: Sequence[Target], upstream: str, model: str) -> str | None:
    """The model name `upstream` was (or would have been) sent on this route."""
    for target in targets:
        if target.upstream == upstream:
            return target.modelFor(model)
    return None


def _header(request: IRequest, name: bytes) -> str | None:
    value = request.getHeader(name)
    return value.decode("latin-1") if value is not None else None


def deadline(request: IRequest, started: float, config: Config) -> float | None:
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
