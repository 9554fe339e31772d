"""`Watch.end` puts a request's TTFB in the minute of the upstream that answered,
found once whether or not an attempt on it counted there first, and counts each
attempt really made in its own upstream's minute."""

from __future__ import annotations

from ccproxy.observe.accesslog import AccessRecord, Attempt
from ccproxy.observe.watch import MAX_UPSTREAMS, Watch


def _end(watch: Watch, attempts: list[Attempt], upstream: str | None, ttfb: object) -> None:
    record = AccessRecord(requestId="r", method="POST", path="/v1/messages", started=600.0)
    record.upstream, record.attempts = upstream, attempts
    watch.begin(record, lambda: 0)
    watch.end(record, 630.0, {"request_id": "r", "ttfb_ms": ttfb})


def _minute(watch: Watch, upstream: str) -> tuple[int, int, list[int]]:
    minute = watch.upstreams[upstream].minutes[-1]
    assert minute.minute == 10
    return minute.attempts, minute.errors, minute.ttfbMs


def test_the_answering_upstreams_minute_has_its_ttfb() -> None:
    watch = Watch()
    _end(watch, [Attempt("up", 200)], "up", 40)
    _end(watch, [Attempt("other", 502, "api_error"), Attempt("up", 200)], "up", 50)
    _end(watch, [Attempt("up", 500, "api_error"), Attempt("up", 200)], "up", 60)
    _end(watch, [Attempt("other", None, note="skipped, circuit open")], "up", 70)
    _end(watch, [Attempt("up", 200)], "up", "-")  # no head: no sample
    assert _minute(watch, "up") == (5, 1, [40, 50, 60, 70])
    assert _minute(watch, "other") == (1, 1, [])
    assert [f.tried for f in watch.recent] == [
        ("up",),
        ("other", "up"),
        ("up", "up"),
        (),
        ("up",),
    ]
    assert watch.live == {}


def test_past_the_followed_upstreams_nothing_is_counted() -> None:
    watch = Watch()
    for n in range(MAX_UPSTREAMS):
        _end(watch, [Attempt(f"u{n}", 200)], f"u{n}", 1)
    _end(watch, [Attempt("late", 200)], "late", 1)
    assert "late" not in watch.upstreams and len(watch.upstreams) == MAX_UPSTREAMS
