"""What the state backends count, and what they answer.

A request is admitted against an `Ask` (the client's concurrency, request rate and
budget windows, as the config says now) and gets a `Decision`: `Admitted` with a
`Lease` to give back when it ends, or why not. The two backends, this process's
own (`ccproxy.state.local`) and Redis's (`ccproxy.state.shared`), answer the same
way, so the web layer never knows which one counted.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable
from datetime import UTC, datetime
from typing import Protocol

from attrs import define, frozen

from ccproxy.config.model import Client
from ccproxy.config.periods import DAY, periodEnd, periodStart
from ccproxy.config.policy import Policy
from ccproxy.errors import ProxyError

WARNING_THRESHOLDS = (0.95, 0.75)
"""Utilizations past which Claude Code shows its "you've used N%" notice."""


@frozen
class Used:
    """What a client used in one budget window: tokens (input + output +
    cache-write) and cost."""

    tokens: int = 0
    cost: float = 0.0

    def plus(self, other: Used) -> Used:
        return Used(self.tokens + other.tokens, self.cost + other.cost)


@frozen
class Window:
    """One budget period of one client as counted now: the UTC day or month that
    holds the request's start, and its caps."""

    period: str
    start: float
    end: float
    tokens: int | None
    cost: float | None

    @property
    def key(self) -> str:
        """Names the counter: the period and its start (`day:1786060800`)."""
        return f"{self.period}:{int(self.start)}"

    def reached(self, used: Used) -> bool:
        """Whether `used` is at or past either cap: the next request is refused."""
        return (self.tokens is not None and used.tokens >= self.tokens) or (
            self.cost is not None and used.cost >= self.cost
        )

    def utilization(self, used: Used) -> float:
        """The larger fraction of the two caps used (1 or more once reached)."""
        fractions = [0.0]
        if self.tokens is not None:
            fractions.append(used.tokens / self.tokens)
        if self.cost is not None:
            fractions.append(used.cost / self.cost)
        return max(fractions)


def windowsFor(client: Client, now: float) -> tuple[Window, ...]:
    """The budget windows of `client` at `now` (none without a budget)."""
    if client.budget is None:
        return ()
    return tuple(
        Window(
            cap.period,
            periodStart(now, cap.period),
            periodEnd(now, cap.period),
            cap.tokens,
            cap.cost,
        )
        for cap in client.budget.caps
    )


@frozen
class Ask:
    """What admitting one request of a client checks, from the config it began with."""

    client: str
    maxConcurrent: int | None = None
    perMinute: int | None = None
    windows: tuple[Window, ...] = ()

    @classmethod
    def of(cls, client: Client, now: float, budgets: bool = True) -> Ask:
        """The client's limits, and its budget windows when `budgets` (Messages
        only: counting tokens spends nothing)."""
        return cls(
            client.name,
            client.maxConcurrent,
            client.requestsPerMinute,
            windowsFor(client, now) if budgets and client.budget is not None else (),
        )

    @property
    def free(self) -> bool:
        """Nothing to count: no backend need be asked."""
        return self.maxConcurrent is None and self.perMinute is None and not self.windows


@define(eq=False)
class Lease:
    """One admitted request's place, until `State.release` gives it back."""

    client: str
    id: str
    held: bool
    """It counts against `max_concurrent` (the client has one)."""
    shared: bool = False
    """Redis may hold it (it was admitted there, or registered after an outage)."""
    released: bool = False


@frozen
class Admitted:
    """Let in; `used` is what each of the ask's windows had used before it."""

    lease: Lease
    used: tuple[Used, ...] = ()


@frozen
class Limited:
    """Refused by `max_concurrent` or `requests_per_minute`: `why` says which (after
    the client's name), `wait` when to try again."""

    why: str
    wait: float = 1.0

    def error(self, client: str) -> ProxyError:
        """429 `rate_limit_error`, with a `retry-after` of at least a second."""
        return ProxyError(
            429,
            f"client {client!r} {self.why}",
            "rate_limit_error",
            {"retry-after": str(max(math.ceil(self.wait), 1))},
        )


def busy(active: int, limit: int) -> Limited:
    """The client already has `active` requests in flight."""
    return Limited(f"already has {active} requests in flight (limit {limit})")


def tooFast(limit: int, wait: float) -> Limited:
    """Over `limit` requests in the last minute; the next fits in `wait` seconds."""
    return Limited(f"is over its limit of {limit} requests per minute", wait)


@frozen
class OverBudget:
    """Refused: a budget window is used up; `used` holds each window's counter."""

    used: tuple[Used, ...]


@frozen
class Unseeded:
    """No counter yet for `window`: the caller seeds it from the ledger and asks again."""

    window: Window


Decision = Admitted | Limited | OverBudget | Unseeded


class UpstreamBreaker(Protocol):
    """One upstream's circuit breaker, wherever its state is kept. The verdicts
    (`succeeded`, `failed`, `released`) never block; `allow` and `failed`'s
    answer may wait for the backend (never past its fallback time)."""

    policy: Policy
    state: str
    """As last seen (for /healthz and /metrics)."""
    openedAt: float

    def allow(self) -> bool | Awaitable[bool]:
        """Whether a request may go to this upstream now (claiming the one trial
        of a half-open breaker): this process's answer as a bool at once (no
        Deferred per request), a shared backend's to be awaited."""
        ...

    def succeeded(self) -> None: ...

    def released(self) -> None:
        """The request that held the trial ended with no verdict."""

    def failed(self) -> Awaitable[bool]:
        """Count a failure; whether the breaker is open now."""
        ...


class State(Protocol):
    """Client limits, budget counters and breakers: this process's or Redis's."""

    @property
    def up(self) -> bool:
        """Whether the backend counts as configured (False: Redis is down and this
        process counts on its own until it answers)."""
        ...

    def admit(self, ask: Ask, now: float) -> Decision | Awaitable[Decision]:
        """A place for one request within `ask`, or why not; a refused request
        takes no place and counts against no rate. This process's answer comes
        as the plain `Decision` (no Deferred per request), a shared backend's to
        be awaited."""
        ...

    def release(self, lease: Lease) -> None:
        """Give an admitted request's place back (once)."""

    def seed(self, client: str, window: Window, used: Used) -> Awaitable[None]:
        """Set a window's counter where it has none yet (from the ledger)."""
        ...

    def charge(self, client: str, windows: tuple[Window, ...], used: Used) -> None:
        """Add what a finished request used to its windows' counters."""

    def breaker(self, upstream: str, policy: Policy) -> UpstreamBreaker:
        """The breaker of `upstream`, holding its policy (reloads set it again)."""
        ...

    def start(self) -> None:
        """Begin (connect, renew leases); called when the daemon starts."""

    def stop(self) -> Awaitable[None]:
        """End (disconnect); called when the daemon stops."""
        ...


def resetText(end: float) -> str:
    """When a window ends, for a person: `Aug 8 00:00 UTC`."""
    moment = datetime.fromtimestamp(end, UTC)
    return f"{moment:%b} {moment.day} {moment:%H:%M} UTC"


def periodWord(period: str) -> str:
    """`daily` or `monthly`, as the usage-limit headers name a calendar budget."""
    return "daily" if period == DAY else "monthly"
