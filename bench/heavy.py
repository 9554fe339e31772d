"""Heavy bodies beside small requests: the worst wait of a small request while
another client sends ~30 MiB bodies to the same ccproxy.

    python -m bench.heavy [--seconds 60] [--body-mib 30] [--ccproxy-root DIR]

From the repository root, with an interpreter that has ccproxy's dependencies
(`--python` picks another one for ccproxy; `--ccproxy-root` runs the ccproxy of
another checkout, e.g. a `git worktree` of an older commit, with this bench).
Linux only (/proc). Everything listens on 127.0.0.1.

It starts two mock upstreams (bench/mock.py), one for the small requests (which
checks a sample of what ccproxy sends, as in `python -m bench`) and one for the
heavy ones (which checks nothing: parsing a 30 MiB body would cost the load side's
core half a second), so that the mock's own work on a large body never holds up a
small answer, and one ccproxy (`twistd -n ccproxy`), routing `claude-heavy-*` to
the second mock. ccproxy is pinned to CPU 0, the mocks and both clients to CPU 1
(`--proxy-cpus`, `--load-cpus`, as in `python -m bench`). Then, phase by phase
(`--phases`), the small client sends the bench's Claude Code bodies (36-60 KB,
not streamed, every answer validated) at concurrency 1, back to back, for
--seconds, and times each one:

- `alone`: nothing else is sent;
- `messages`: a second client, in its own process, sends a ~30 MiB Claude-Code-
  shaped body (some 16,000 tool_use/tool_result pairs) to `/v1/messages`, one
  after the other, for as long;
- `count_tokens`: the same, with the count_tokens fields, to
  `/v1/messages/count_tokens`.

The default order, alone, messages, count_tokens, alone, ends where it began, so
that the two quiet phases show the noise of the host. Per phase it prints the
small requests' count, latency p50/p90/p99/max and how many took over 100 ms and
over 1 s, the heavy requests answered (and their median time), ccproxy's CPU, its
peak RSS, and how long it waited for a CPU (another process on its core). The
results also go to WORKDIR/heavy.json (`--json FILE` copies them).

Exit status: 0 when every answer was valid, 1 when any failed validation (small or
heavy, or a request ccproxy sent to a mock), 2 when the bench could not run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from typing import Any

from bench import client, corpus, payloads, procs, procstat, validate
from bench.procs import log
from bench.runner import PROXY_MODEL, PROXY_PATH, proxy_headers, twistd_command

HEAVY_MODEL = "claude-heavy-sonnet-4-5"
COUNT_TOKENS_PATH = "/v1/messages/count_tokens?beta=true"
PHASES = ("alone", "messages", "count_tokens")
SLOW_MS = (100, 1000)


class TokenCount(validate.Validator):
    """A count_tokens answer: `{"input_tokens": N}`, N a positive integer."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def feed(self, data: bytes, t: float) -> None:
        self.parts.append(data)

    def finish(self) -> list[str]:
        try:
            answer = json.loads(b"".join(self.parts))
        except ValueError:
            return ["body_not_json"]
        tokens = answer.get("input_tokens") if isinstance(answer, dict) else None
        return [] if isinstance(tokens, int) and tokens > 0 else ["no_input_tokens"]


def target(port: int, kind: str, bodies: list[bytes]) -> client.Target:
    """Requests of `kind` (small, messages or count_tokens) to ccproxy on `port`."""
    model = PROXY_MODEL if kind == "small" else HEAVY_MODEL
    expect = payloads.Expect(payloads.FAST_TEXT_DELTAS, model=model)

    def validator() -> validate.Validator:
        return TokenCount() if kind == "count_tokens" else validate.make(False, False, expect)

    path = COUNT_TOKENS_PATH if kind == "count_tokens" else PROXY_PATH
    return client.Target("127.0.0.1", port, path, proxy_headers(), bodies, validator, False)


# -- the heavy client (its own process) --------------------------------------------------


def heavy_client(a: argparse.Namespace) -> int:
    """Sends the body in a.body to ccproxy, one request after the other, for
    a.seconds; writes the exchanges' summary to a.out."""
    with open(a.body, "rb") as f:
        body = f.read()
    heavy = target(a.port, a.heavy_client, [body])
    del body
    results, elapsed = asyncio.run(client.run(heavy, 1, duration=a.seconds, timeout=a.timeout))
    out = client.summarize(results, elapsed)
    out["times_s"] = [round(r.t_done or 0, 3) for r in results]
    with open(a.out, "w") as f:
        json.dump(out, f)
    return 0


# -- the run -----------------------------------------------------------------------------


class Heavy:
    def __init__(self, a: argparse.Namespace) -> None:
        self.a = a
        self.procs = procs.Procs()
        self.workdir = a.workdir or tempfile.mkdtemp(prefix="ccproxy-heavy-")
        os.makedirs(self.workdir, exist_ok=True)
        self.results: dict[str, Any] = {"args": vars(a), "phases": []}
        self.mock_ports: list[int] = []
        self.mock_pids: list[int] = []
        self.port = 0
        self.pid = 0

    def setup(self) -> None:
        a = self.a
        self.nofile = procs.raise_nofile()
        self.proxy_cpus, self.load_cpus = procs.cpu_list(a.proxy_cpus), procs.cpu_list(a.load_cpus)
        procs.pin_self(self.load_cpus)
        pinned = self.proxy_cpus and self.load_cpus
        self.results["pinning"] = (
            f"ccproxy on CPU {self.proxy_cpus}, mocks and clients on CPU {self.load_cpus}"
            if pinned
            else "none"
        )
        for name, check in (("mock", []), ("mock-heavy", ["--no-check"])):
            port, logpath = procs.free_port(), os.path.join(self.workdir, f"{name}.log")
            cmd = [sys.executable, "-m", "bench.mock", "--port", str(port), *check]
            p = self.procs.start(cmd, self.load_cpus, self.nofile, logpath)
            procs.wait_http(port, "/__stats", p, logpath, "the mock upstream")
            self.mock_ports.append(port)
            self.mock_pids.append(p.pid)
        self.port = procs.free_port()
        cfg = procs.proxy_config(
            self.mock_ports[0], f"tcp:{self.port}:interface=127.0.0.1", 10, 20, False
        )
        heavy_url = f"http://127.0.0.1:{self.mock_ports[1]}/v1"
        cfg["upstreams"]["heavy"] = {**cfg["upstreams"]["mock"], "url": heavy_url}
        cfg["models"] = {"claude-heavy-*": f"heavy/{payloads.MODEL}", **cfg["models"]}
        ledger = procs.ledger_setting(a.ledger, self.workdir, a.python, a.ccproxy_root)
        if ledger is not None:  # an older ccproxy has none
            cfg["ledger"] = ledger
        self.results["ledger"] = ledger or "none (this ccproxy has no ledger)"
        cfg_path = os.path.join(self.workdir, "ccproxy.yaml")
        with open(cfg_path, "w") as f:
            json.dump(cfg, f, indent=1)  # JSON is YAML
        logpath = os.path.join(self.workdir, "ccproxy.log")
        cmd = twistd_command(a.python, cfg_path, logpath, a.ccproxy_root)
        p = self.procs.start(cmd, self.proxy_cpus, self.nofile, logpath + ".out")
        procs.wait_http(self.port, "/healthz", p, logpath + ".out", "ccproxy")
        self.pid = p.pid
        self.results["ccproxy"] = ccproxy_source(a.python, a.ccproxy_root)
        log(f"ccproxy {self.results['ccproxy']} on :{self.port} (pid {p.pid}), {cfg_path}")
        self.bodies: dict[str, str] = {}
        for kind in ("messages", "count_tokens"):
            path = os.path.join(self.workdir, f"heavy-{kind}.json")
            body = corpus.large_body(a.body_mib * 2**20, HEAVY_MODEL, kind == "count_tokens")
            with open(path, "wb") as f:
                f.write(body)
            self.bodies[kind] = path
            log(f"{kind} body: {len(body) / 2**20:.1f} MiB, {path}")

    def start_heavy(self, kind: str, out: str) -> subprocess.Popen[bytes]:
        cmd = [sys.executable, "-m", "bench.heavy", "--heavy-client", kind, "--out", out]
        cmd += ["--port", str(self.port), "--body", self.bodies[kind]]
        cmd += ["--seconds", str(self.a.seconds), "--timeout", str(self.a.timeout)]
        logpath = os.path.join(self.workdir, "heavy-client.log")
        return self.procs.start(cmd, self.load_cpus, self.nofile, logpath)

    def mock_problems(self) -> Counter[str]:
        problems: Counter[str] = Counter()
        for port in self.mock_ports:
            with contextlib.suppress(OSError, ValueError):
                problems.update(json.loads(procs.http_get(port, "/__stats")[1])["request_problems"])
        return problems

    async def phase(self, name: str, small: client.Target) -> dict[str, Any]:
        a, pids = self.a, [self.pid]
        settled = await procstat.settle([*pids, *self.mock_pids])
        problems0 = self.mock_problems()
        cpu0, wait0 = procstat.cpu_seconds(pids), procstat.runqueue_wait_seconds(pids)
        load0 = procstat.runqueue_wait_seconds([os.getpid(), *self.mock_pids])
        sampler = procstat.Sampler(pids, 0.1)
        sampler.start()
        heavy = None
        out = os.path.join(self.workdir, f"heavy-{len(self.results['phases'])}-{name}.json")
        if name != "alone":
            heavy = self.start_heavy(name, out)
        results, elapsed = await client.run(small, 1, duration=a.seconds, timeout=a.timeout)
        if heavy is not None:
            await asyncio.to_thread(heavy.wait, a.timeout + 60)
        await sampler.stop()
        per_s = 1 / elapsed
        ok = [r.t_done for r in results if r.ok and r.t_done is not None]
        upstream = self.mock_problems()
        upstream.subtract(problems0)
        row: dict[str, Any] = {
            "phase": name,
            "settled": settled,
            "small": client.summarize(results, elapsed),
            "small_over_ms": {ms: sum(t * 1000 > ms for t in ok) for ms in SLOW_MS},
            "proxy_cpu_util": (procstat.cpu_seconds(pids) - cpu0) * per_s,
            "proxy_runqueue_wait": (procstat.runqueue_wait_seconds(pids) - wait0) * per_s,
            "load_runqueue_wait": (
                procstat.runqueue_wait_seconds([os.getpid(), *self.mock_pids]) - load0
            )
            * per_s,
            "rss_peak_mib": sampler.peak_rss / 2**20,
            "rss_after_mib": procstat.rss_bytes(pids) / 2**20,
            "fds_peak": sampler.peak_fds,
            "upstream_request_problems": {k: v for k, v in upstream.items() if v > 0},
        }
        if heavy is not None:
            try:
                with open(out) as f:
                    row["heavy"] = json.load(f)
            except (OSError, ValueError):
                row["heavy"] = {"requests": 0, "ok": 0, "failed": 1, "problems": {"no_report": 1}}
        log(line(row))
        return row

    async def run(self) -> None:
        small = target(self.port, "small", corpus.bodies(stream=False, model=PROXY_MODEL))
        warm, _ = await client.run(small, 1, total=self.a.warmup, timeout=self.a.timeout)
        self.results["warmup_failed"] = sum(not r.ok for r in warm)
        for name in self.a.phases:
            self.results["phases"].append(await self.phase(name, small))


def ccproxy_source(python: str, root: str) -> str:
    """Which ccproxy runs: the checkout's directory and its commit."""
    where = os.path.abspath(root) if root else os.path.dirname(os.path.dirname(__file__))
    code = f"import sys; sys.path.insert(0, {where!r}); import ccproxy; print(ccproxy.__file__)"
    found = subprocess.run([python, "-c", code], capture_output=True, text=True, check=False)
    commit = subprocess.run(
        ["git", "-C", where, "log", "-1", "--format=%h %s"], capture_output=True, text=True
    ).stdout.strip()
    return f"{os.path.dirname(os.path.dirname(found.stdout.strip()))} @ {commit or '?'}"


def ms(v: float | None) -> str:
    return "-" if v is None else f"{v * 1000:.1f}"


def line(row: dict[str, Any]) -> str:
    s = row["small"]
    text = (
        f"{row['phase']}: {s['ok']}/{s['requests']} small ok, p50 {ms(s['t_done_p50'])} "
        f"p99 {ms(s['t_done_p99'])} max {ms(s['t_done_max'])} ms"
    )
    heavy = row.get("heavy")
    if heavy:
        text += (
            f"; heavy {heavy['ok']}/{heavy['requests']} ok, p50 {heavy['t_done_p50'] or 0:.2f} s"
        )
    return text


def table(results: dict[str, Any]) -> str:
    rows = [
        f"ccproxy: {results['ccproxy']}; ledger: {results['ledger']}; "
        f"pinning: {results['pinning']}; "
        f"{results['args']['seconds']:g} s a phase; heavy bodies "
        f"{results['args']['body_mib']:g} MiB",
        "",
        "| phase | small ok | p50 ms | p90 ms | p99 ms | max ms | >100 ms | >1 s "
        "| heavy ok (p50 s) | ccproxy CPU | ccproxy waited for CPU | load side waited "
        "| peak RSS MiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in results["phases"]:
        s, heavy = row["small"], row.get("heavy")
        done = (
            f"{heavy['ok']}/{heavy['requests']} ({heavy['t_done_p50'] or 0:.2f})" if heavy else "-"
        )
        rows.append(
            f"| {row['phase']} | {s['ok']}/{s['requests']} | {ms(s['t_done_p50'])} "
            f"| {ms(s['t_done_p90'])} | {ms(s['t_done_p99'])} | {ms(s['t_done_max'])} "
            f"| {row['small_over_ms'][100]} | {row['small_over_ms'][1000]} | {done} "
            f"| {row['proxy_cpu_util']:.0%} | {row['proxy_runqueue_wait']:.1%} "
            f"| {row['load_runqueue_wait']:.1%} | {row['rss_peak_mib']:.0f} |"
        )
    for row in results["phases"]:
        bad = {**row["small"]["problems"], **(row.get("heavy") or {}).get("problems", {})}
        if bad or row["upstream_request_problems"]:
            rows.append(
                f"- {row['phase']}: problems {bad}, upstream {row['upstream_request_problems']}"
            )
    return "\n".join(rows)


def failures(results: dict[str, Any]) -> int:
    bad = results.get("warmup_failed", 0)
    for row in results["phases"]:
        bad += row["small"]["failed"] + sum(row["upstream_request_problems"].values())
        bad += row.get("heavy", {}).get("failed", 0)
    return bad


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = procs.argument_parser("python -m bench.heavy", __doc__)
    ap.add_argument("--seconds", type=float, default=60.0, help="length of a phase [60]")
    ap.add_argument("--body-mib", type=float, default=30.0, help="heavy body size, MiB [30]")
    ap.add_argument(
        "--phases",
        default="alone,messages,count_tokens,alone",
        help="comma list of alone, messages, count_tokens [alone,messages,count_tokens,alone]",
    )
    ap.add_argument("--warmup", type=int, default=100, help="small requests before [100]")
    ap.add_argument("--timeout", type=float, default=120.0, help="per-request timeout, s [120]")
    ap.add_argument("--python", default=sys.executable, help="interpreter for ccproxy [this one]")
    ap.add_argument("--ccproxy-root", default="", help="run the ccproxy of this checkout")
    ap.add_argument(
        "--ledger",
        default="sqlite",
        help="ccproxy's ledger: sqlite (WORKDIR/ccproxy.db, a daemon's default), off, a URL "
        "(ignored for a ccproxy without one) [sqlite]",
    )
    ap.add_argument("--proxy-cpus", default="0", help="CPU list for ccproxy, 'none' [0]")
    ap.add_argument("--load-cpus", default="1", help="CPU list for mocks and clients [1]")
    ap.add_argument("--workdir", default="", help="configs, logs, bodies, heavy.json [a new one]")
    ap.add_argument("--json", default="", help="also write heavy.json here")
    internal = ap.add_argument_group("internal: the heavy client process")
    internal.add_argument("--heavy-client", choices=PHASES[1:], help=argparse.SUPPRESS)
    internal.add_argument("--port", type=int, help=argparse.SUPPRESS)
    internal.add_argument("--body", help=argparse.SUPPRESS)
    internal.add_argument("--out", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    a.phases = [p.strip() for p in a.phases.split(",") if p.strip()]
    unknown = set(a.phases) - set(PHASES)
    if unknown:
        ap.error(f"unknown phases: {', '.join(sorted(unknown))}")
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    if a.heavy_client:
        return heavy_client(a)
    if not sys.platform.startswith("linux"):
        log("bench.heavy: Linux only (/proc)")
        return 2
    bench = Heavy(a)
    status = 2
    try:
        bench.setup()
        started = time.time()
        asyncio.run(bench.run())
        bench.results["started"] = time.strftime("%Y-%m-%d %H:%M", time.localtime(started))
        print(table(bench.results), flush=True)
        bad = failures(bench.results)
        status = 1 if bad else 0
        if bad:
            log(f"FAILED: {bad} answers or upstream requests failed validation")
    except KeyboardInterrupt:
        log("interrupted")
        status = 130
    finally:
        bench.procs.stop_all()
        procs.save_results(bench.results, status, os.path.join(bench.workdir, "heavy.json"), a.json)
        log(f"workdir {bench.workdir}")
    return status


if __name__ == "__main__":
    sys.exit(main())
