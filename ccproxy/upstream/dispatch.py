"""Getting an answer started: retries, failover across a route's targets, the
circuit breaker and the upstream's concurrency slots.

Everything here happens before any byte goes to the client, so trying again is
safe: a failed attempt is retried on the same upstream (with backoff, honouring
`retry-after`) and then on the route's next target. Errors that retrying cannot fix
(400, 401, 403, 404, 413, …) go straight back to the client.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Sequence
from email.utils import parsedate_to_datetime
from typing import Any, ClassVar

from attrs import define, field
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.web.iweb import IResponse

from ccproxy.config import Config, Upstream
from ccproxy.config.routing import Target
from ccproxy.errors import ProxyError, upstreamError
from ccproxy.observe.accesslog import Attempt
from ccproxy.upstream.breaker import OPEN, Breaker
from ccproxy.upstream.client import MAX_ERROR_BYTES, UpstreamClient, responseHeaders
from ccproxy.upstream.slots import Slots

RETRYABLE_4XX = frozenset({408, 429})


def isRetryable(error: ProxyError) -> bool:
    """Failures another attempt may fix: connection errors and timeouts (our 502 and
    504), 408, 429 and every 5xx."""
    return error.status in RETRYABLE_4XX or error.status >= 500


@define
class Sent:
    """An upstream that answered 2xx, holding a slot until the answer is relayed."""

    upstream: Upstream
    target: Target
    response: IResponse
    _release: Callable[[bool | None], None]
    prepared: Any = None
    """What `prepare` made of the answer, when it was read whole during dispatch."""

    def done(self, ok: bool | None) -> None:
        """Free the slot and tell the breaker: True, False, or None (no verdict,
        the client left)."""
        self._release(ok)


@define
class Upstreams:
    """Per-upstream state that outlives a config reload: breakers and slots."""

    clock: IReactorTime
    breakers: dict[str, Breaker] = field(factory=dict)
    slots: dict[str, Slots] = field(factory=dict)

    def breaker(self, name: str) -> Breaker:
        if name not in self.breakers:
            self.breakers[name] = Breaker(self.clock.seconds)
        return self.breakers[name]

    def slotsFor(self, name: str) -> Slots:
        if name not in self.slots:
            self.slots[name] = Slots(self.clock)
        return self.slots[name]


@define
class Dispatcher:
    """Sends one request along its route until an upstream answers 2xx."""

    client: UpstreamClient
    clock: IReactorTime
    state: Upstreams
    random: Callable[[], float] = random.random
    log: ClassVar[Logger] = Logger()

    async def send(
        self,
        config: Config,
        targets: Sequence[Target],
        build: Callable[[Upstream, Target], bytes],
        callerKey: str | None,
        deadline: float | None,
        attempts: list[Attempt],
        prepare: Callable[[Sent], Awaitable[Any]] | None = None,
    ) -> Sent:
        """The first 2xx answer along `targets`; raises the last failure otherwise.

        `build` makes the upstream's request body (each upstream has its own
        dialect and model name); `deadline` is the client's patience, past which no
        retry is started; `attempts` collects one line per attempt for the log.
        `prepare` reads a 2xx answer that is read whole before the client gets a
        byte (a JSON answer): its failure is the attempt's, retried or failed over.
        """
        lastError: ProxyError | None = None
        for target in targets:
            upstream = config.upstreams[target.upstream]
            policy = upstream.policy
            breaker = self.state.breaker(upstream.name)
            body = build(upstream, target)  # a client's mistake is a 400 before any attempt
            if not breaker.allow(policy.breakerCooldown):
                wait = max(1, round(breaker.retryIn(policy.breakerCooldown)))
                attempts.append(Attempt(upstream.name, None, note="skipped, circuit open"))
                lastError = ProxyError(
                    503,
                    f"{upstream.name}: failing, so not tried (circuit open; retry in {wait} s)",
                    "overloaded_error",
                    {"retry-after": str(wait)},
                )
                continue
            try:
                return await self._tryUpstream(
                    upstream, target, body, callerKey, deadline, attempts, prepare
                )
            except ProxyError as e:
                if not isRetryable(e):
                    raise
                lastError = e
        assert lastError is not None
        raise lastError

    async def _tryUpstream(
        self,
        upstream: Upstream,
        target: Target,
        body: bytes,
        callerKey: str | None,
        deadline: float | None,
        attempts: list[Attempt],
        prepare: Callable[[Sent], Awaitable[Any]] | None = None,
    ) -> Sent:
        policy = upstream.policy
        breaker = self.state.breaker(upstream.name)
        slots = self.state.slotsFor(upstream.name)
        tries = 0
        while True:
            try:
                await slots.acquire(
                    policy.maxConcurrent, policy.queueSize, policy.queueTimeout, upstream.name
                )
            except BaseException:
                breaker.released()
                raise
            try:
                response = await self.client.post(upstream, body, callerKey)
                if 200 <= response.code < 300:
                    sent = Sent(upstream, target, response, self._releaser(upstream))
                    if prepare is not None:
                        sent.prepared = await prepare(sent)
                    attempts.append(Attempt(upstream.name, response.code))
                    return sent
                raw = await self.client.readBody(upstream, response, MAX_ERROR_BYTES, truncate=True)
                error = upstreamError(upstream.name, response.code, raw, responseHeaders(response))
            except ProxyError as e:
                error = e
            except BaseException:  # cancelled (the client left), or a bug: no verdict
                slots.release()
                breaker.released()
                raise
            slots.release()
            attempts.append(Attempt(upstream.name, error.status, error.errorType))
            if not isRetryable(error):
                breaker.succeeded()  # it answered: the fault is in the request
                raise error
            breaker.failed(policy.breakerFailures)
            delay = self._retryDelay(error, tries, policy.maxRetryWait)
            if (
                tries >= policy.retries
                or delay is None
                or breaker.state == OPEN
                or (deadline is not None and self.clock.seconds() + delay >= deadline)
            ):
                raise error
            tries += 1
            await deferLater(self.clock, delay)
            if not breaker.allow(policy.breakerCooldown):
                raise error

    def _releaser(self, upstream: Upstream) -> Callable[[bool | None], None]:
        slots = self.state.slotsFor(upstream.name)
        breaker = self.state.breaker(upstream.name)

        def release(ok: bool | None) -> None:
            slots.release()
            if ok is None:
                breaker.released()
            elif ok:
                breaker.succeeded()
            else:
                breaker.failed(upstream.policy.breakerFailures)

        return release

    def _retryDelay(self, error: ProxyError, tries: int, cap: float) -> float | None:
        """Seconds before the next attempt: the upstream's `retry-after` when it
        gives one (None when that is longer than `cap`: do not wait here), else
        exponential backoff with jitter."""
        retryAfter = _retryAfterSeconds(error.headers.get("retry-after"), self.clock.seconds())
        if retryAfter is not None:
            return retryAfter if retryAfter <= cap else None
        backoff = min(cap, 0.5 * 2**tries)
        return backoff * (0.5 + self.random() / 2)


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
