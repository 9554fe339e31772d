"""Prometheus metrics, fed from the access log's fields.

One registry per app (injected, so tests read their own). The workers of one
daemon (`workers: N`) count in prometheus_client's multiprocess mode: each writes
its series to files in one directory the master made (`PROMETHEUS_MULTIPROC_DIR`,
set before prometheus_client is imported), and whichever worker answers a scrape
reads them all, so `/metrics` is the daemon's. Separately started processes are
aggregated by the scraper summing their series, never by a home-made cluster.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector

from ccproxy.ledger.store import LedgerStats

_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600)
_TTFB_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_BREAKER_STATES = {"closed": 0, "open": 1, "half_open": 2}


class Metrics:
    """The proxy's series."""

    def __init__(
        self, registry: CollectorRegistry | None = None, multiprocessDir: str | None = None
    ) -> None:
        """`multiprocessDir`: this process is one of a daemon's workers, and the
        directory is where they all count (the environment's
        `PROMETHEUS_MULTIPROC_DIR`, which made prometheus_client count there)."""
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self._exposed = r
        if multiprocessDir is not None:
            self._exposed = CollectorRegistry()
            MultiProcessCollector(self._exposed, path=multiprocessDir)
        self.requests = Counter(
            "ccproxy_requests",
            "Requests answered",
            ["client", "model", "route", "upstream", "status", "endpoint"],
            registry=r,
        )
        self.latency = Histogram(
            "ccproxy_request_duration_seconds",
            "Time from request to the last byte",
            ["upstream"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.ttfb = Histogram(
            "ccproxy_upstream_ttfb_seconds",
            "Time until the upstream's headers",
            ["upstream"],
            buckets=_TTFB_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "ccproxy_tokens", "Tokens by kind", ["client", "upstream", "kind"], registry=r
        )
        self.upstreamErrors = Counter(
            "ccproxy_upstream_errors", "Failed upstream attempts", ["upstream", "type"], registry=r
        )
        # multiprocess_mode: how the workers' values add up (ignored in one process).
        self.inFlight = Gauge(
            "ccproxy_requests_in_flight",
            "Requests being served",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.streamsInFlight = Gauge(
            "ccproxy_streams_in_flight",
            "Streams being relayed",
            registry=r,
            multiprocess_mode="livesum",
        )
        self._children: dict[tuple[Any, tuple[str, ...]], Any] = {}
        self._series: dict[tuple[Any, ...], _Series] = {}
        """Per access-log label set, its children (`observe`)."""
        self.generation = Gauge(
            "ccproxy_config_generation",
            "Config generation (1 at start, +1 per reload)",
            registry=r,
            multiprocess_mode="livemax",
        )

    def _labelled(self, metric: Any, *values: str) -> Any:
        """`metric.labels(*values)`, found once per label set: prometheus_client
        checks and converts the labels and takes a lock on every call (some 2 µs
        each, five calls a request). The children live as long as their parent."""
        key = (metric, values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*values)
        return child

    def watchState(self, up: Callable[[], bool]) -> None:
        """Export whether the state backend answers (1; always, without `state:`)
        or this process counts on its own while Redis does not (0)."""
        self._watch(_StateCollector(up))

    def watchBreakers(self, states: Callable[[], Iterable[tuple[str, str]]]) -> None:
        """Export each upstream's breaker state (0 closed, 1 open, 2 half-open)."""
        self._watch(_BreakerCollector(states))

    def watchLedger(self, stats: Callable[[], LedgerStats]) -> None:
        """Export the ledger's rows waiting, written and dropped, and whether its
        database took the last write."""
        self._watch(_LedgerCollector(stats))

    def _watch(self, collector: Collector) -> None:
        """A series read when scraped: among workers, the answering worker's view
        (the README says which are per worker)."""
        self.registry.register(collector)
        if self._exposed is not self.registry:
            self._exposed.register(collector)

    def observe(self, fields: dict[str, Any]) -> None:
        """Count one finished request from its access-log fields."""
        upstream = fields["upstream"] or "-"
        client = fields["client"]
        endpoint = fields["endpoint"]
        # The model label is the model's `models:` entry and the route label what
        # chose the upstream (a `routes:` rule, else that entry): the config's
        # names, never the name a client sent, so their number is the config's.
        key = (client, fields["model_route"], fields["route"], upstream, fields["status"], endpoint)
        series = self._series.get(key)
        if series is None:  # its children found once (`_labelled`), kept together
            requests = self._labelled(
                self.requests, client, key[1], key[2], upstream, str(key[4]), endpoint
            )
            series = self._series[key] = _Series(requests)
        series.requests.inc(1)
        duration, ttfb = fields["duration_ms"], fields["ttfb_ms"]
        if endpoint == "messages" and type(duration) is int:
            child = series.latency
            if child is None:
                child = series.latency = self._labelled(self.latency, upstream)
            _observe(child, duration / 1000)
        if type(ttfb) is int:
            child = series.ttfb
            if child is None:
                child = series.ttfb = self._labelled(self.ttfb, upstream)
            _observe(child, ttfb / 1000)
        tokens = series.tokens
        for i, (kind, name) in enumerate(_TOKEN_KINDS):
            count = fields[name]
            if count:
                value = tokens[i]
                if value is None:
                    value = tokens[i] = _counted(
                        self._labelled(self.tokens, client, upstream, kind)
                    )
                value.inc(count)
        for name, errorType in fields["failed_attempts"]:
            self._labelled(self.upstreamErrors, name, errorType).inc()

    def render(self) -> bytes:
        return generate_latest(self._exposed)


_TOKEN_KINDS = (
    ("input", "input_tokens"),
    ("output", "output_tokens"),
    ("cache_read", "cache_read_tokens"),
    ("cache_write", "cache_write_tokens"),
)


def _counted(counter: Any) -> Any:
    """A labelled counter's value, incremented as `Counter.inc` does for a count
    known to be a non-negative number without an exemplar (tokens are
    `usageOf`'s or `anthropicUsage`'s counts).

    Relies on: prometheus_client's metric child keeping its value in `_value`
    (a `MutexValue`, or in multiprocess mode a `MmapedValue`) whose `inc` takes
    the lock and adds. Why: `inc` checks the child is observable (it is: a
    labelled child) and the amount's sign in three Python calls before that,
    for each of a request's four or five counts (tests/test_metrics_fast.py
    pins the series against the public calls)."""
    return counter._value


def _observe(histogram: Any, amount: float) -> None:
    """`histogram.observe(amount)` for a labelled child, without an exemplar: its
    sum, then the first bucket whose bound is at least `amount`.

    Relies on: `Histogram`'s children keeping `_sum` and `_buckets` (values as
    in `_counted`) and `_upper_bounds` (sorted, +Inf last), and `observe`
    adding `amount` to `_sum` and 1 to the bucket of the first bound with
    `amount <= bound` (which `bisect_left` finds without a Python loop). Why:
    as `_counted`."""
    histogram._sum.inc(amount)
    histogram._buckets[bisect_left(histogram._upper_bounds, amount)].inc(1)


class _Series:
    """The children one access-log label set counts in: its request counter's
    value, and its latency and TTFB children and token counters' values once
    first needed (a child made is a series `/metrics` shows, so none is made
    before it counts something)."""

    __slots__ = ("latency", "requests", "tokens", "ttfb")

    def __init__(self, requests: Any) -> None:
        self.requests = _counted(requests)
        self.latency: Any = None
        self.ttfb: Any = None
        self.tokens: list[Any] = [None] * len(_TOKEN_KINDS)


def forgetWorker(pid: int, multiprocessDir: str) -> None:
    """A worker has ended: its live gauges (requests in flight...) leave the sums;
    its counters stay, as the daemon's totals must never go down."""
    mark_process_dead(pid, multiprocessDir)


class _StateCollector(Collector):
    def __init__(self, up: Callable[[], bool]) -> None:
        self._up = up

    def collect(self) -> Iterable[GaugeMetricFamily]:
        yield GaugeMetricFamily(
            "ccproxy_state_backend_up",
            "1 while the state backend answers (always without state:), 0 while this "
            "process counts on its own",
            value=1.0 if self._up() else 0.0,
        )


class _BreakerCollector(Collector):
    def __init__(self, states: Callable[[], Iterable[tuple[str, str]]]) -> None:
        self._states = states

    def collect(self) -> Iterable[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "ccproxy_upstream_breaker_state",
            "Circuit breaker: 0 closed, 1 open, 2 half-open",
            labels=["upstream"],
        )
        for name, state in self._states():
            family.add_metric([name], _BREAKER_STATES[state])
        yield family


class _LedgerCollector(Collector):
    def __init__(self, stats: Callable[[], LedgerStats]) -> None:
        self._stats = stats

    def collect(self) -> Iterable[GaugeMetricFamily | CounterMetricFamily]:
        stats = self._stats()
        yield GaugeMetricFamily(
            "ccproxy_ledger_rows_pending",
            "Ledger rows waiting in this process to be written",
            value=stats.pending,
        )
        yield CounterMetricFamily(
            "ccproxy_ledger_rows_written", "Ledger rows written", value=stats.written
        )
        yield CounterMetricFamily(
            "ccproxy_ledger_rows_dropped",
            "Ledger rows dropped: the database was away and the buffer full",
            value=stats.dropped,
        )
        yield GaugeMetricFamily(
            "ccproxy_ledger_up",
            "1 when the ledger's database took the last write, 0 while it fails",
            value=1 if stats.up else 0,
        )
