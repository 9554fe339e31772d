"""ccproxy's benchmark: ``python -m bench`` (or ``make bench``) from the repo root.

Starts a mock OpenAI upstream and ccproxy (twistd -n, pinned to CPU 0 when the
host has two CPUs or more; mock and load driver on CPU 1), drives the
scenarios straight at the mock (the "direct" baseline) and through ccproxy,
validates every answer, and prints a table of the figures against the targets.

  (a) lat     non-streaming, concurrency 1, N requests: latency added, CPU/request
  (b) tput    non-streaming, concurrency 64, T seconds: requests/s
  (c) stream  streaming, concurrency 1, N streams: CPU per stream, time to first byte
  (d) drip    1000 concurrent slow streams (10 chunks/s for 20 s) opened over 5 s:
              peak RSS, time to first text, full stream time vs direct
  (e) responses  streaming from an `api: responses` upstream (the mock's Responses
              API), concurrency 1, N streams: CPU per stream (ccproxy only)

Every option also reads BENCH_<NAME> from the environment (BENCH_LAT_N=500).
Exit status: 0 if every answer was valid, 1 if any failed validation, 2 if the
bench could not run. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from typing import Any

from bench import report
from bench.procs import log, save_results
from bench.runner import SCENARIOS, Bench

# name, type, full default, quick default, help
_KNOBS: list[tuple[str, type, Any, Any, str]] = [
    ("lat_n", int, 2000, 200, "(a) requests"),
    ("tput_c", int, 64, 64, "(b) concurrency"),
    ("tput_seconds", float, 20.0, 3.0, "(b) seconds"),
    ("stream_n", int, 300, 40, "(c) streams"),
    ("drip_streams", int, 1000, 100, "(d) concurrent streams"),
    ("drip_rate", float, 10.0, 10.0, "(d) chunks per second"),
    ("drip_seconds", float, 20.0, 5.0, "(d) stream length, s"),
    ("drip_ramp", float, 5.0, 1.0, "(d) seconds over which the streams are opened"),
    ("timeout", float, 60.0, 60.0, "per-request timeout, s (drip: 4x the length + 30)"),
]


def _env(name: str, default: Any = None) -> Any:
    return os.environ.get("BENCH_" + name.upper(), default)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    quick = _env("quick", "") not in ("", "0", "false", "no")
    ap.add_argument(
        "--quick",
        action="store_true",
        default=quick,
        help="smoke run under a minute: small counts and durations",
    )
    ap.add_argument(
        "--scenarios",
        default=_env("scenarios", ",".join(SCENARIOS)),
        help="comma list of lat,tput,stream,drip,pass_lat,pass_stream,responses [all]",
    )
    ap.add_argument("--no-direct", action="store_true", help="skip the direct baseline runs")
    g = ap.add_argument_group("counts and durations [full; --quick]")
    for name, kind, full, short, text in _KNOBS:
        g.add_argument(
            "--" + name.replace("_", "-"),
            type=kind,
            default=_env(name),
            help=f"{text} [{full:g}; {short:g}]",
        )
    p = ap.add_argument_group("processes")
    p.add_argument(
        "--python",
        default=_env("python", sys.executable),
        help="interpreter with ccproxy's dependencies [this one]",
    )
    p.add_argument(
        "--ccproxy-root",
        default=_env("ccproxy_root", ""),
        help="run the ccproxy of this checkout (e.g. a git worktree of an older commit) [this one]",
    )
    p.add_argument(
        "--processes",
        type=int,
        default=int(_env("processes", 1)),
        help="ccproxy processes serving one port [1]",
    )
    p.add_argument(
        "--multi-listen",
        choices=["auto", "workers", "workers_reuse_port", "reuse_port", "systemd"],
        default=_env("multi_listen", "auto"),
        help="how several processes share the port: workers (one twistd with `workers: N`, "
        "its workers sharing the socket the master bound), workers_reuse_port (the same "
        "with `reuse_port: true`: one SO_REUSEPORT socket per worker), reuse_port (N "
        "twistds, each binding the port with SO_REUSEPORT), systemd (SO_REUSEPORT sockets "
        "bound by the bench, handed over as LISTEN_FDS; listen: systemd:domain=INET:index=0), "
        "auto (workers when ccproxy has it, else reuse_port, else systemd) [auto]",
    )
    p.add_argument(
        "--backlog",
        type=int,
        default=int(_env("backlog", 0)),
        help="listen backlog of ccproxy's port [0: ccproxy's default, Twisted's 50]",
    )
    p.add_argument(
        "--proxy-cpus",
        default=_env("proxy_cpus", "0"),
        help="CPU list for ccproxy, 'none' for no pinning [0]",
    )
    p.add_argument(
        "--load-cpus",
        default=_env("load_cpus", "1"),
        help="CPU list for the mock and the driver, 'none' [1]",
    )
    p.add_argument(
        "--workdir",
        default=_env("workdir", ""),
        help="configs, logs and results.json [a new temporary directory]",
    )
    p.add_argument(
        "--ledger",
        default=_env("ledger", "sqlite"),
        help="ccproxy's ledger: sqlite (WORKDIR/ccproxy.db, as a daemon keeps it by default), "
        "off, or a ledger URL [sqlite]",
    )
    p.add_argument(
        "--routes",
        choices=["off", "on"],
        default=_env("routes", "off"),
        help="on: a routes: block of six rules the bench's requests do not match (each is "
        "tried, then the models: entry serves), to measure what rules cost [off]",
    )
    p.add_argument(
        "--state",
        choices=["none", "local", "redis"],
        default=_env("state", "none"),
        help="local or redis: the bench's key becomes a client with max_concurrent and "
        "requests_per_minute (checked on every request), counted in ccproxy (local) or in a "
        "redis-server the bench starts (redis: needs redis-server) [none: no clients]",
    )
    p.add_argument("--json", default="", help="also write results.json here")
    p.add_argument(
        "--py-spy", action="store_true", help="profile ccproxy with py-spy during each measured run"
    )
    a = ap.parse_args(argv)
    for name, _kind, full, short, _ in _KNOBS:
        if getattr(a, name) is None:
            setattr(a, name, short if a.quick else full)
    a.scenarios = [s.strip() for s in a.scenarios.split(",") if s.strip()]
    unknown = set(a.scenarios) - set(SCENARIOS)
    if unknown:
        ap.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    if a.processes < 1:
        ap.error("--processes must be 1 or more")
    return a


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    bench = Bench(args)
    status = 2

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    try:
        bench.setup()
        asyncio.run(bench.run_scenarios())
        print(report.render(bench), flush=True)
        bad = report.failures(bench.results)
        status = 1 if bad else 0
        if bad:
            log(f"FAILED: {bad} answers or upstream requests failed validation (see 'problems')")
    except KeyboardInterrupt:
        log("interrupted")
        status = 130
    finally:
        bench.procs.stop_all()
        save_results(bench.results, status, os.path.join(bench.workdir, "results.json"), args.json)
    return status


if __name__ == "__main__":
    sys.exit(main())
