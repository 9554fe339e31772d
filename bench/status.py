"""What the status page costs the reactor: ``python -m bench.status``.

The page computes one snapshot per tick (2 s) for every viewer: the view model
(``statusView``), its HTML sections (``fragments``) and their JSON. This times
one such tick, in-process, with N requests in flight, the recent ring full, and U
upstreams each with a full hour of per-minute counts and TTFB samples, at N and
10N requests in flight; and the watch's own work per finished request (what the
access log adds to every request, viewers or not).

Times are CPU seconds of this process (``time.process_time``), the best of
``--runs`` runs. Exit status: 0.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import orjson

from ccproxy.observe.accesslog import AccessRecord, Attempt
from ccproxy.observe.watch import HOUR, RECENT, TTFB_SAMPLES, Watch
from ccproxy.upstream.dispatch import UpstreamHealth
from ccproxy.web.status.render import fragments
from ccproxy.web.status.view import statusView

NOW = 1_780_000_020.0


def finished(rid: int, upstream: str, started: float) -> AccessRecord:
    record = AccessRecord(f"req_{rid}", "POST", "/v1/messages", started, client="alice")
    record.model, record.upstream, record.status = "claude-sonnet-4-5", upstream, 200
    record.firstByte = started + 0.2
    record.attempts = [Attempt(upstream, 200)]
    return record


def filled(inFlight: int, upstreams: int) -> Watch:
    """A watch as a busy hour leaves it."""
    watch = Watch()
    rid = 0
    for minute in range(HOUR):
        for u in range(upstreams):
            for _ in range(TTFB_SAMPLES):
                rid += 1
                r = finished(rid, f"up{u}", NOW - (HOUR - minute) * 60)
                watch.end(r, r.started + 1, r.fields(r.started + 1))
    for i in range(RECENT):
        r = finished(rid + i, "up0", NOW - 1)
        watch.end(r, NOW, r.fields(NOW))
    for i in range(inFlight):
        live = AccessRecord(f"live_{i}", "POST", "/v1/messages", NOW - i % 300, client="bob")
        live.model, live.upstream, live.stream = "claude-opus-4-1", "up0", True
        watch.begin(live, lambda: 42)
    return watch


def best(runs: int, work: Callable[[], object]) -> float:
    times = []
    for _ in range(runs):
        start = time.process_time()
        work()
        times.append(time.process_time() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--in-flight", type=int, default=100)
    parser.add_argument("--upstreams", type=int, default=8)
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    health = {f"up{u}": UpstreamHealth("closed", 3, 0) for u in range(args.upstreams)}

    print(f"one tick, {args.upstreams} upstreams with a full hour, {RECENT} recent requests")
    print(f"{'in flight':>10} {'view ms':>9} {'html+json ms':>13} {'total ms':>9} {'bytes':>9}")
    for n in (args.in_flight, args.in_flight * 10):
        watch = filled(n, args.upstreams)

        def view(watch: Watch = watch) -> object:
            return statusView(
                NOW,
                version="0",
                generation=1,
                startedAt=NOW - 3600,
                reload=None,
                watch=watch,
                health=health,
                clients=(),
                usage=None,
                usageToday=True,
            )

        built = view()
        data = orjson.dumps({"sections": fragments(built)})  # type: ignore[arg-type]
        viewTime = best(args.runs, view)
        renderTime = best(
            args.runs,
            lambda built=built: orjson.dumps({"sections": fragments(built)}),  # type: ignore[arg-type]
        )
        print(
            f"{n:>10} {viewTime * 1000:>9.2f} {renderTime * 1000:>13.2f} "
            f"{(viewTime + renderTime) * 1000:>9.2f} {len(data):>9,}"
        )

    watch = Watch()
    records = [finished(i, f"up{i % args.upstreams}", NOW) for i in range(10_000)]
    fields = [r.fields(NOW + 1) for r in records]

    def feed() -> None:
        for r, f in zip(records, fields, strict=True):
            watch.begin(r, lambda: 0)
            watch.end(r, NOW + 1, f)

    perRequest = best(max(1, args.runs // 4), feed) / len(records)
    print(f"watch: begin + end per finished request: {perRequest * 1e6:.2f} µs")


if __name__ == "__main__":
    main()
