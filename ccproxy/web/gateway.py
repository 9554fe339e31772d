"""What a signed-in Claude Code reads from its gateway beside Messages: its
managed settings (`/managed/settings`), its standing against its budget in
cents and percents (`/api/oauth/usage`), and where its telemetry goes
(`/v1/metrics`, `/v1/logs`, `/v1/traces`: forwarded to a collector, or dropped).

The usage answer describes the same budget window as the usage-limit headers
on each Messages answer (`ccproxy.web.admission.Standing.headers`: the fullest
one), with the same reset instant, since Claude Code pairs the dollars with the
percent only when the two agree to the second.
"""

from __future__ import annotations

import math
import uuid
from datetime import UTC, datetime
from typing import Any, ClassVar

import treq
from attrs import define
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from ccproxy.config.periods import MONTH, periodStart, weekStart
from ccproxy.config.signin import TelemetrySettings, settingsChecksum, settingsFor
from ccproxy.errors import ProxyError
from ccproxy.ledger.model import Ledger
from ccproxy.ledger.store import LedgerUnavailable
from ccproxy.state.model import WARNING_THRESHOLDS, Used, Window, periodWord, windowsFor
from ccproxy.web.call import JSON, Call, jsonReply, releaseBody

SETTINGS_NAMESPACE = uuid.UUID("6f1c1f3e-5d0a-4c57-9a51-8b0c2f1e7c11")
"""Names each settings document's `uuid` (by its checksum: the same policy, the same id)."""
PROTOBUF = b"application/x-protobuf"


def quotedValues(header: str) -> list[str]:
    """The entity tags of an `If-None-Match` header, unquoted (weak ones too)."""
    tags = []
    for part in header.split(","):
        tag = part.strip()
        if tag.startswith("W/"):
            tag = tag[2:]
        tags.append(tag.strip('"'))
    return tags


def cents(amount: float) -> int:
    return round(amount * 100)


def isoInstant(moment: float) -> str:
    """`2026-10-01T00:00:00.000Z`, as claude.ai writes `resets_at`."""
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


@define
class Gateway:
    clock: IReactorTime
    ledger: Ledger | None = None
    http: Any = None
    """A treq `HTTPClient` for forwarding telemetry (`telemetry.forward`); None: dropped."""
    forwarding: int = 0
    """Telemetry exports being forwarded now."""
    dropped: int = 0
    """Exports dropped because `telemetry.max_in_flight` were being forwarded."""

    log: ClassVar[Logger] = Logger()

    # -- managed settings ----------------------------------------------------------

    def managedSettings(self, call: Call) -> bytes:
        """`{uuid, checksum, settings}` with the checksum as a quoted `ETag`; 304 to
        an `If-None-Match` naming it (and only then); 404 without a policy."""
        request, config, client = call.request, call.config, call.client
        settings = settingsFor(
            config.managedSettings,
            config.managedDefault,
            config.router,
            None if client is None else client.managedSettings,
        )
        if settings is None:
            raise ProxyError(404, "no managed settings for this client", "not_found_error")
        checksum = settingsChecksum(settings)
        request.setHeader(b"etag", f'"{checksum}"'.encode())
        request.setHeader(b"cache-control", b"private, no-cache")
        asked = request.getHeader(b"if-none-match")
        if asked and checksum in quotedValues(asked.decode("latin-1")):
            call.record.status = 304
            request.setResponseCode(304)
            return b""
        call.record.status = 200
        return jsonReply(
            request,
            {
                "uuid": str(uuid.uuid5(SETTINGS_NAMESPACE, checksum)),
                "checksum": checksum,
                "settings": settings,
            },
        )

    # -- usage -----------------------------------------------------------------------

    async def usage(self, call: Call) -> bytes:
        """claude.ai's usage shape for the caller's own budget (`cache-control: no-store`)."""
        client = call.client
        if client is None or self.ledger is None:
            raise ProxyError(
                404, "usage per client needs clients and the ledger", "not_found_error"
            )
        now = self.clock.seconds()
        currency = call.config.prices.currency
        try:
            windows = windowsFor(client, now)
            if windows:
                used = [await self._used(client.name, w.start) for w in windows]
                answer = _capped(windows, used, currency)
            else:
                month = await self._used(client.name, periodStart(now, MONTH))
                day = await self._used(client.name, periodStart(now, "day"))
                week = await self._used(client.name, weekStart(now))
                answer = _uncapped(month, day, week, currency)
        except LedgerUnavailable as e:
            raise ProxyError(503, str(e), "api_error") from None
        call.record.status = 200
        call.request.setHeader(b"cache-control", b"no-store")
        return jsonReply(call.request, answer)

    async def _used(self, client: str, since: float) -> Used:
        assert self.ledger is not None
        spend = await self.ledger.spent(client, since)
        return Used(spend.tokens, spend.cost)

    # -- telemetry -------------------------------------------------------------------

    def telemetry(self, call: Call, signal: str) -> bytes:
        """OTLP/HTTP export, answered as a collector would (an empty
        `Export…ServiceResponse`, in the request's encoding): forwarded to
        `telemetry.forward` (without the caller's bearer), or dropped."""
        request = call.request
        body = request.content.read()  # bounded by the site's max_body_bytes
        releaseBody(call)
        call.record.status = 200
        contentType = request.getHeader(b"content-type") or b"application/x-protobuf"
        settings = call.config.telemetry
        if settings.forward is not None and self.http is not None:
            self._forward(settings, signal, body, contentType)
        kind = contentType.split(b";")[0].strip().lower()
        if kind == PROTOBUF:
            request.setHeader(b"content-type", PROTOBUF)
            request.setHeader(b"content-length", b"0")
            return b""
        request.setHeader(b"content-type", JSON)
        return b"{}"

    def _forward(
        self, settings: TelemetrySettings, signal: str, body: bytes, contentType: bytes
    ) -> None:
        """Post the export to the collector, at most `max_in_flight` at once (more
        are dropped, counted), each within `timeout`; the client has its 200."""
        if self.forwarding >= settings.maxInFlight:
            if self.dropped == 0:
                self.log.warn(
                    "telemetry: {bound} exports are being forwarded; more are dropped",
                    bound=settings.maxInFlight,
                )
            self.dropped += 1
            return
        self.forwarding += 1
        url = f"{settings.forward}/v1/{signal}"
        d = self.http.post(url, data=body, headers={b"content-type": [contentType]})
        d.addCallback(treq.content)  # read to the end: the connection goes back to the pool
        d.addTimeout(settings.timeout, self.clock)
        d.addErrback(
            lambda failure: self.log.warn(
                "telemetry: forwarding to {url} failed: {why}",
                url=url,
                why=failure.getErrorMessage(),
            )
        )
        d.addBoth(self._forwarded)

    def _forwarded(self, _: object) -> None:
        self.forwarding -= 1


def _percent(window: Window, used: Used) -> int:
    return math.floor(window.utilization(used) * 100 + 1e-9)


def _capped(windows: tuple[Window, ...], used: list[Used], currency: str) -> dict[str, Any]:
    """One `limits` row per budget window; `extra_usage` for the fullest one (the
    window the usage-limit headers describe)."""
    pairs = list(zip(windows, used, strict=True))
    fullest = max(pairs, key=lambda pair: pair[0].utilization(pair[1]))
    window, spent = fullest
    limits = []
    for w, u in pairs:
        percent = _percent(w, u)
        severity = "normal"
        if any(percent >= t * 100 for t in WARNING_THRESHOLDS):
            severity = "warning"
        limits.append(
            {
                "kind": "spend",
                "group": periodWord(w.period),
                "percent": percent,
                "resets_at": isoInstant(w.end),
                "severity": severity,
                "is_active": (w, u) == fullest,
            }
        )
    return {
        "extra_usage": {
            "is_enabled": True,
            "monthly_limit": None if window.cost is None else cents(window.cost),
            "used_credits": cents(spent.cost),
            "utilization": _percent(window, spent),
            "currency": currency,
        },
        "limits": limits,
    }


def _uncapped(month: Used, day: Used, week: Used, currency: str) -> dict[str, Any]:
    """No budget: the spend of the UTC month, day and week from Monday, no limits."""
    return {
        "extra_usage": {
            "is_enabled": True,
            "monthly_limit": None,
            "used_credits": cents(month.cost),
            "utilization": None,
            "currency": currency,
            "daily": {"limit": None, "used_credits": cents(day.cost), "utilization": None},
            "weekly": {"limit": None, "used_credits": cents(week.cost), "utilization": None},
        },
        "limits": [],
    }
