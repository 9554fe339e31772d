"""What the status page (`ccproxy.web.status`) reads of the traffic: the requests in
flight, the last finished ones, and per upstream a minute-by-minute hour of
attempts, errors and TTFB, with its last error.

Everything here is bounded whatever the traffic: the recent requests are a ring,
each upstream keeps `HOUR` minutes of counts with at most `TTFB_SAMPLES` TTFB
samples a minute, and at most `MAX_UPSTREAMS` upstreams are followed (their names
come from the config, but a reload may rename them). The requests in flight are
those the daemon is serving, which its connection cap bounds. Fed by the access
log as each request begins and ends, in the reactor, in constant time a request.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from attrs import define, field, frozen

if TYPE_CHECKING:  # the access log feeds the watch: it imports this module
    from ccproxy.observe.accesslog import AccessRecord

HOUR = 60
"""Minutes of history kept per upstream (the chart's width)."""
RECENT = 100
"""Finished requests kept for the recent list and their detail view."""
TTFB_SAMPLES = 256
"""TTFB samples kept per upstream and minute (the first ones: the percentiles of a
busy minute are those of its first `TTFB_SAMPLES` answers)."""
MAX_UPSTREAMS = 64


@frozen(slots=False)  # made once a request: attrs then fills its dict, not slot by slot
class Finished:
    """One finished request as the status page shows it: the access record's fields
    (its error message already redacted), never a key, and its payloads only when
    `log_payloads` is on (then redacted and cut as the payload log has them)."""

    fields: dict[str, Any] = field(eq=False)
    """`AccessRecord.fields`, plus `cost` when the request left a ledger row."""
    started: float
    tried: tuple[str, ...] = ()
    """The upstream of each attempt really made, in order (a retry repeats one)."""
    requestPayload: str | None = None
    responsePayload: str | None = None

    @property
    def requestId(self) -> str:
        return str(self.fields["request_id"])


@define
class Minute:
    """One upstream's attempts in one minute."""

    minute: int
    """Unix seconds // 60."""
    attempts: int = 0
    errors: int = 0
    ttfbMs: list[int] = field(factory=list)


@define
class Live:
    """A request being served: its record (filled in as it goes) and how many
    tokens its answer has so far."""

    record: AccessRecord
    tokensSoFar: Callable[[], int]


@define
class UpstreamTrack:
    """One upstream's last hour, a minute at a time, and its last error."""

    minutes: deque[Minute] = field(factory=lambda: deque(maxlen=HOUR))
    lastError: str | None = None
    lastErrorAt: float | None = None

    def at(self, minute: int) -> Minute:
        """The counts of `minute` (the latest one kept, if a clock stepped back)."""
        if not self.minutes or self.minutes[-1].minute < minute:
            self.minutes.append(Minute(minute))
        return self.minutes[-1]


@define
class Watch:
    """The traffic as the status page sees it (one per app, in the reactor)."""

    live: dict[str, Live] = field(factory=dict)
    recent: deque[Finished] = field(factory=lambda: deque(maxlen=RECENT))
    upstreams: dict[str, UpstreamTrack] = field(factory=dict)

    def begin(self, record: AccessRecord, tokensSoFar: Callable[[], int]) -> None:
        """A request is being served from now on."""
        self.live[record.requestId] = Live(record, tokensSoFar)

    def end(
        self,
        record: AccessRecord,
        now: float,
        fields: dict[str, Any],
        payloads: tuple[str, str] | None = None,
    ) -> None:
        """`record`'s request is over (`fields`: its access event's, kept as given:
        the caller hands them over)."""
        self.live.pop(record.requestId, None)
        request, response = payloads if payloads is not None else (None, None)
        tried = []
        minute = int(now // 60)
        answered = None  # the answering upstream's minute, when an attempt found it
        for attempt in record.attempts:
            if attempt.status is None and attempt.errorType is None:
                continue  # skipped (its circuit open), not tried
            tried.append(attempt.upstream)
            track = self._track(attempt.upstream)
            if track is None:
                continue
            counts = track.at(minute)
            if attempt.upstream == record.upstream:
                answered = counts
            counts.attempts += 1
            if attempt.errorType:
                counts.errors += 1
                track.lastErrorAt = now
                if attempt.upstream == record.upstream and record.errorMessage:
                    track.lastError = record.errorMessage
                else:
                    track.lastError = str(attempt)
        self.recent.append(Finished(fields, record.started, tuple(tried), request, response))
        ttfb = fields.get("ttfb_ms")
        if record.upstream is not None and type(ttfb) is int:
            if answered is None:
                track = self._track(record.upstream)
                if track is not None:
                    answered = track.at(minute)
            if answered is not None and len(answered.ttfbMs) < TTFB_SAMPLES:
                answered.ttfbMs.append(ttfb)

    def find(self, requestId: str) -> Finished | None:
        """A recent request by its id (None once it has left the ring)."""
        for finished in self.recent:
            if finished.requestId == requestId:
                return finished
        return None

    def inFlight(self) -> Iterable[Live]:
        return list(self.live.values())

    def _track(self, upstream: str) -> UpstreamTrack | None:
        track = self.upstreams.get(upstream)
        if track is None and len(self.upstreams) < MAX_UPSTREAMS:
            track = self.upstreams[upstream] = UpstreamTrack()
        return track
