"""`Metrics.observe` increments prometheus_client's values directly (`_counted`,
`_observe`): the page it renders is the one the public calls (`Counter.inc`,
`Histogram.observe`) make, bucket edges and the +Inf bucket included."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry

from ccproxy.observe.accesslog import AccessRecord, Attempt
from ccproxy.observe.metrics import _TOKEN_KINDS, Metrics


def _fields(
    status: int = 200,
    duration: float = 0.4,
    ttfb: float | None = 0.1,
    endpoint: str = "messages",
    client: str | None = "alice",
    tokens: tuple[int, int, int, int] = (30000, 250, 1200, 0),
    failed: bool = False,
) -> dict[str, Any]:
    record = AccessRecord(
        requestId="req_1", method="POST", path="/v1/messages", started=1000.0, endpoint=endpoint
    )
    record.client, record.model, record.route, record.modelRoute = client, "m", "*", "*"
    record.upstream, record.status = "up", status
    record.firstByte = None if ttfb is None else 1000.0 + ttfb
    (record.inputTokens, record.outputTokens, record.cacheReadTokens, record.cacheWriteTokens) = (
        tokens
    )
    if failed:
        record.attempts = [Attempt("up", 502, "api_error"), Attempt("up2", 200)]
    return record.fields(1000.0 + duration)


def _reference(metrics: Metrics, fields: dict[str, Any]) -> None:
    """What `observe` counts, by prometheus_client's public calls."""
    upstream = fields["upstream"] or "-"
    client, endpoint = fields["client"], fields["endpoint"]
    metrics.requests.labels(
        client, fields["model_route"], fields["route"], upstream, str(fields["status"]), endpoint
    ).inc()
    duration, ttfb = fields["duration_ms"], fields["ttfb_ms"]
    if endpoint == "messages" and type(duration) is int:
        metrics.latency.labels(upstream).observe(duration / 1000)
    if type(ttfb) is int:
        metrics.ttfb.labels(upstream).observe(ttfb / 1000)
    for kind, name in _TOKEN_KINDS:
        if fields[name]:
            metrics.tokens.labels(client, upstream, kind).inc(fields[name])
    for name, errorType in fields["failed_attempts"]:
        metrics.upstreamErrors.labels(name, errorType).inc()


REQUESTS = [
    _fields(),
    _fields(),  # the same series again
    _fields(500, failed=True),
    _fields(200, duration=0.05, ttfb=0.01),  # exactly on bucket bounds
    _fields(200, duration=0.1, ttfb=0.025),
    _fields(200, duration=601.0, ttfb=61.0),  # past the last bound: +Inf
    _fields(200, duration=0.0004, ttfb=0.0),
    _fields(200, ttfb=None, tokens=(0, 0, 0, 0)),  # no head, no tokens
    _fields(200, endpoint="count_tokens", ttfb=None, client=None),
    _fields(429, tokens=(5, 0, 0, 7), client="bob"),
    *(_fields(200, duration=i / 997, ttfb=i / 4999) for i in range(0, 3000, 37)),
]


def test_observe_renders_what_the_public_calls_render() -> None:
    fast, public = Metrics(CollectorRegistry()), Metrics(CollectorRegistry())
    for fields in REQUESTS:
        fast.observe(fields)
        _reference(public, fields)
    page = _timeless(fast.render())
    assert page == _timeless(public.render())
    assert 'le="+Inf"' in page and "ccproxy_upstream_errors_total{" in page


def _timeless(page: bytes) -> str:
    """The page without its `_created` samples (when each series was made)."""
    return "\n".join(
        line
        for line in page.decode().splitlines()
        if "_created{" not in line and "_created " not in line
    )
