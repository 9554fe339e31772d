"""`Metrics.observe` counts each request under its own label set, however many
times a label set comes back (its children are looked up once and kept)."""

from __future__ import annotations

from ccproxy.observe.accesslog import AccessRecord, Attempt
from ccproxy.observe.metrics import Metrics


def _fields(status: int, client: str = "alice", failed: bool = False) -> dict[str, object]:
    record = AccessRecord(requestId="req_1", method="POST", path="/v1/messages", started=100.0)
    record.client, record.model, record.route, record.modelRoute = client, "m", "*", "*"
    record.upstream, record.status, record.firstByte = "up", status, 100.25
    record.outputTokens = 7
    if failed:
        record.attempts = [Attempt("up", 502, "api_error"), Attempt("up", 200)]
    return record.fields(100.5)


def _value(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_each_label_set_counts_its_own_requests() -> None:
    metrics = Metrics()
    for fields in (_fields(200), _fields(200), _fields(500), _fields(200, "bob", failed=True)):
        metrics.observe(fields)
    labels = {"model": "*", "route": "*", "upstream": "up", "endpoint": "messages"}
    assert _value(metrics, "ccproxy_requests_total", client="alice", status="200", **labels) == 2
    assert _value(metrics, "ccproxy_requests_total", client="alice", status="500", **labels) == 1
    assert _value(metrics, "ccproxy_requests_total", client="bob", status="200", **labels) == 1
    tokens = {"upstream": "up", "kind": "output"}
    assert _value(metrics, "ccproxy_tokens_total", client="alice", **tokens) == 21
    assert _value(metrics, "ccproxy_tokens_total", client="bob", **tokens) == 7
    assert _value(metrics, "ccproxy_upstream_errors_total", upstream="up", type="api_error") == 1
    assert _value(metrics, "ccproxy_request_duration_seconds_count", upstream="up") == 4
    assert _value(metrics, "ccproxy_upstream_ttfb_seconds_sum", upstream="up") == 1.0


def test_a_series_appears_once_it_counts_something() -> None:
    """A label set's token, latency and TTFB children are made when first needed:
    `/metrics` shows no zero series for kinds a request never had."""
    metrics = Metrics()
    fields = _fields(200)
    fields["ttfb_ms"] = "-"  # no answer's head
    fields["output_tokens"] = 0
    metrics.observe(fields)
    page = metrics.render().decode()
    assert "ccproxy_tokens_total{" not in page
    assert "ccproxy_upstream_ttfb_seconds_count{" not in page
    assert _value(metrics, "ccproxy_request_duration_seconds_count", upstream="up") == 1
    metrics.observe(_fields(200))  # the same label set, now with tokens and a TTFB
    tokens = {"client": "alice", "upstream": "up"}
    assert _value(metrics, "ccproxy_tokens_total", kind="output", **tokens) == 7
    assert _value(metrics, "ccproxy_tokens_total", kind="input", **tokens) is None
    assert _value(metrics, "ccproxy_upstream_ttfb_seconds_count", upstream="up") == 1
