"""The status page's data: what it shows, as plain values (the view model), built
from the access log's watch (`ccproxy.observe.watch`), the dispatcher's health,
the config and the usage read from the ledger. No HTML here (that is `render`),
and no I/O: the page computes one `StatusView` per tick for every viewer.

Nothing in it is a key or a body: the access record's fields hold neither (its
error message is redacted as the log has it), and a finished request's payloads
are shown only while `log_payloads` is on.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from attrs import frozen

from ccproxy.config.model import Client
from ccproxy.ledger.model import NONE, Tally, Usage
from ccproxy.observe.watch import HOUR, Finished, Live, UpstreamTrack, Watch
from ccproxy.upstream.dispatch import UpstreamHealth

WINDOW_MINUTES = 5
"""Per upstream, the attempts, error rate and TTFB percentiles are of this many
minutes (the current one included)."""
RECENT_SHOWN = 30
IN_FLIGHT_SHOWN = 50
"""Requests in flight listed (the oldest first): a daemon relaying a thousand
streams shows their count, not a thousand rows every tick."""


@frozen
class InFlight:
    requestId: str
    client: str
    model: str
    upstream: str
    """The upstream answering, `-` until one has."""
    stream: bool
    ageSeconds: float
    tokens: int
    """Output tokens so far: the usage when known, else upstream chunks relayed."""


@frozen
class UpstreamView:
    name: str
    breaker: str
    active: int
    queued: int
    attempts: int
    """In the last `WINDOW_MINUTES` minutes."""
    errors: int
    ttfbP50: int | None
    ttfbP95: int | None
    lastError: str | None
    lastErrorAgo: float | None
    perMinute: tuple[int, ...]
    """Attempts in each of the last `HOUR` minutes, the oldest first."""
    ttfbPerMinute: tuple[int | None, ...]
    """Median TTFB (ms) in each of the last `HOUR` minutes (None: no answer)."""

    @property
    def errorRate(self) -> float | None:
        return self.errors / self.attempts if self.attempts else None


@frozen
class ClientView:
    name: str
    admin: bool
    requests: int
    errors: int
    tokens: int
    """input + output + cache-write, as budgets count them."""
    cost: float
    budgetUsed: float | None
    """The largest share of a daily cap used (1.0: all of it); None without a daily
    cap, or when the usage is not today's."""


@frozen
class Recent:
    requestId: str
    started: float
    client: str
    model: str
    upstream: str
    status: int
    durationMs: int | None
    errorType: str | None


@frozen
class Reload:
    """The last SIGHUP's outcome."""

    ok: bool
    at: float
    message: str


@frozen
class StatusView:
    now: float
    version: str
    generation: int
    uptimeSeconds: float
    reload: Reload | None
    inFlight: tuple[InFlight, ...]
    """The `IN_FLIGHT_SHOWN` oldest requests in flight."""
    inFlightCount: int
    upstreams: tuple[UpstreamView, ...]
    clients: tuple[ClientView, ...] | None
    """None: the usage has not been read yet (or the ledger did not answer)."""
    usageToday: bool
    """Whether `clients` counts today (from the ledger) or since the start (`ledger: off`)."""
    usageNote: str | None
    currency: str
    recent: tuple[Recent, ...]


def statusView(
    now: float,
    *,
    version: str,
    generation: int,
    startedAt: float,
    reload: Reload | None,
    watch: Watch,
    health: Mapping[str, UpstreamHealth],
    clients: Sequence[Client],
    usage: Usage | None,
    usageToday: bool,
    usageNote: str | None = None,
    currency: str = "USD",
) -> StatusView:
    """The page's data at `now`."""
    live = sorted(watch.inFlight(), key=lambda live: live.record.started)
    return StatusView(
        now=now,
        version=version,
        generation=generation,
        uptimeSeconds=max(0.0, now - startedAt),
        reload=reload,
        inFlight=tuple(_inFlight(now, one) for one in live[:IN_FLIGHT_SHOWN]),
        inFlightCount=len(live),
        upstreams=tuple(
            _upstream(name, h, watch.upstreams.get(name), now) for name, h in sorted(health.items())
        ),
        clients=None if usage is None else _clients(clients, usage, usageToday),
        usageToday=usageToday,
        usageNote=usageNote,
        currency=currency,
        recent=tuple(_recent(f) for f in reversed(list(watch.recent)[-RECENT_SHOWN:])),
    )


def _inFlight(now: float, live: Live) -> InFlight:
    record = live.record
    return InFlight(
        requestId=record.requestId,
        client=record.client or "-",
        model=record.model or "-",
        upstream=record.upstream or "-",
        stream=record.stream,
        ageSeconds=max(0.0, now - record.started),
        tokens=max(record.outputTokens, live.tokensSoFar()),
    )


def _upstream(
    name: str, health: UpstreamHealth, track: UpstreamTrack | None, now: float
) -> UpstreamView:
    minute = int(now // 60)
    byMinute = {m.minute: m for m in track.minutes} if track is not None else {}
    window = [byMinute[m] for m in range(minute - WINDOW_MINUTES + 1, minute + 1) if m in byMinute]
    samples = sorted(t for m in window for t in m.ttfbMs)
    hour = [byMinute.get(m) for m in range(minute - HOUR + 1, minute + 1)]
    return UpstreamView(
        name=name,
        breaker=health.breaker,
        active=health.active,
        queued=health.queued,
        attempts=sum(m.attempts for m in window),
        errors=sum(m.errors for m in window),
        ttfbP50=percentile(samples, 0.5),
        ttfbP95=percentile(samples, 0.95),
        lastError=track.lastError if track is not None else None,
        lastErrorAgo=None
        if track is None or track.lastErrorAt is None
        else max(0.0, now - track.lastErrorAt),
        perMinute=tuple(m.attempts if m is not None else 0 for m in hour),
        ttfbPerMinute=tuple(
            percentile(sorted(m.ttfbMs), 0.5) if m is not None else None for m in hour
        ),
    )


def percentile(ordered: Sequence[int], share: float) -> int | None:
    """The nearest-rank percentile of `ordered` (sorted), None when it is empty."""
    if not ordered:
        return None
    rank = min(len(ordered), max(1, math.ceil(share * len(ordered))))
    return ordered[rank - 1]


def _clients(clients: Sequence[Client], usage: Usage, today: bool) -> tuple[ClientView, ...]:
    totals: dict[str, Tally] = {}
    for group in usage.groups:
        totals[group.client] = totals.get(group.client, NONE) + group.tally
    known = {c.name: c for c in clients}
    names = sorted(set(known) | set(totals))
    return tuple(_client(name, known.get(name), totals.get(name, NONE), today) for name in names)


def _client(name: str, client: Client | None, tally: Tally, today: bool) -> ClientView:
    used = None
    budget = client.budget if client is not None else None
    if today and budget is not None:
        shares = []
        if budget.tokensPerDay:
            shares.append(tally.tokens / budget.tokensPerDay)
        if budget.costPerDay:
            shares.append(tally.cost / budget.costPerDay)
        used = max(shares) if shares else None
    return ClientView(
        name=name,
        admin=client.admin if client is not None else False,
        requests=tally.requests,
        errors=tally.errors,
        tokens=tally.tokens,
        cost=tally.cost,
        budgetUsed=used,
    )


def _recent(finished: Finished) -> Recent:
    f = finished.fields
    duration = f.get("duration_ms")
    return Recent(
        requestId=finished.requestId,
        started=finished.started,
        client=str(f.get("client") or "-"),
        model=str(f.get("model") or "-"),
        upstream=str(f.get("upstream") or "-"),
        status=int(f.get("status") or 0),
        durationMs=duration if isinstance(duration, int) else None,
        errorType=f.get("error_type"),
    )


@frozen
class Detail:
    """One finished request's access record, for its detail view."""

    requestId: str
    started: float
    rows: tuple[tuple[str, str], ...]
    """(label, value) pairs, in the order shown."""
    attempts: tuple[str, ...]
    retries: int
    """Attempts after the first at an upstream already tried."""
    failover: bool
    """Whether more than one upstream was tried."""
    requestPayload: str | None
    responsePayload: str | None


_ROWS = (
    ("client", "client"),
    ("method", "method"),
    ("path", "path"),
    ("endpoint", "endpoint"),
    ("model", "model"),
    ("route", "route"),
    ("upstream", "upstream"),
    ("upstream model", "upstream_model"),
    ("stream", "stream"),
    ("status", "status"),
    ("upstream status", "upstream_status"),
    ("TTFB (ms)", "ttfb_ms"),
    ("duration (ms)", "duration_ms"),
    ("input tokens", "input_tokens"),
    ("output tokens", "output_tokens"),
    ("cache read tokens", "cache_read_tokens"),
    ("cache write tokens", "cache_write_tokens"),
    ("cost", "cost"),
    ("error type", "error_type"),
    ("error message", "error_message"),
)


def detail(finished: Finished, logPayloads: bool) -> Detail:
    """`finished`'s record as rows; its payloads only while `logPayloads` is on."""
    f = finished.fields
    rows = tuple((label, _text(f[key])) for label, key in _ROWS if key in f and f[key] is not None)
    attempts: Iterable[Any] = f.get("attempts") or ()
    attemptTexts = tuple(str(a) for a in attempts)
    tried = finished.tried
    return Detail(
        requestId=finished.requestId,
        started=finished.started,
        rows=rows,
        attempts=attemptTexts,
        retries=len(tried) - len(set(tried)),
        failover=len(set(tried)) > 1,
        requestPayload=finished.requestPayload if logPayloads else None,
        responsePayload=finished.responsePayload if logPayloads else None,
    )


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.6f}".rstrip("0").rstrip(".") or "0"
    return str(value)
