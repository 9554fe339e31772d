"""The bench's run: start mock and ccproxy, drive each scenario direct and through
ccproxy, and record what was measured in `Bench.results`."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import sys
import tempfile
import time
from collections import Counter
from typing import Any

from bench import client, corpus, payloads, procstat, validate
from bench.procs import (
    LISTEN_BACKLOG,
    UPSTREAM_KEY,
    Procs,
    PySpy,
    add_features,
    ccproxy_accepts_reuse_port,
    ccproxy_accepts_workers,
    cpu_list,
    free_port,
    http_get,
    ledger_setting,
    log,
    pin_self,
    proxy_config,
    raise_nofile,
    redis_command,
    reuseport_sockets,
    wait_http,
    wait_redis,
)

PROXY_MODEL = "claude-sonnet-4-5-20250929"
DRIP_MODEL = "claude-drip-sonnet-4-5"  # routed to the dripping upstream
CLIENT_KEY = "sk-ant-bench-0000000000000000"
DEFAULT_PER_ADDRESS = 1024
"""ccproxy's default `max_connections_per_address`."""
RESPONSES_MODEL = "claude-responses-sonnet-4-5"  # routed to the mock's Responses API
SCENARIOS = ("lat", "tput", "stream", "drip", "pass_lat", "pass_stream", "responses")
PROXY_ONLY = ("responses",)
"""Scenarios without a direct run: the load driver speaks only chat to the mock."""
PROXY_PATH = "/v1/messages?beta=true"
_TWISTD = "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"


def twistd_command(python: str, cfg_path: str, logpath: str, ccproxy_root: str = "") -> list[str]:
    """`twistd -n ccproxy --config cfg_path`, logging to logpath; with `ccproxy_root`,
    the ccproxy package (and its twistd plugin) of that checkout is imported first."""
    code = _TWISTD
    if ccproxy_root:
        # Its package first on sys.path, and its plugin first among twisted.plugins'
        # directories: else the installed ccproxy's plugin would import the
        # installed ccproxy's module layout.
        root = os.path.abspath(ccproxy_root)
        plugins = os.path.join(root, "twisted", "plugins")
        code = (
            f"import sys; sys.path.insert(0, {root!r}); import twisted.plugins; "
            f"twisted.plugins.__path__.insert(0, {plugins!r}); " + code
        )
    cmd = [python, "-c", code, "-n", "--pidfile=", "--logfile", logpath]
    return [*cmd, "ccproxy", "--config", cfg_path]


def proxy_headers(key: str = CLIENT_KEY) -> dict[str, str]:
    """Claude Code's headers, with its key sent both ways."""
    return {**corpus.HEADERS, "X-Api-Key": key, "Authorization": f"Bearer {key}"}


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.a = args
        self.procs = Procs()
        self.workdir = args.workdir or tempfile.mkdtemp(prefix="ccproxy-bench-")
        os.makedirs(self.workdir, exist_ok=True)
        self.results: dict[str, Any] = {"scenarios": {}, "notes": [], "args": vars(args)}
        self.proxy_pids: list[int] = []
        self.proxy_port = 0
        self.mock_pid = 0
        self.mock_port = 0
        self.profiles: list[str] = []
        self.skipped = ""
        self.py_spy = ""
        self.bodies: dict[tuple[bool, bool | str], list[bytes]] = {}
        self.responses_bodies: list[bytes] = []

    # ------------------------------------------------------------ set-up
    def setup(self) -> None:
        a = self.a
        self.nofile = raise_nofile()
        if "drip" in a.scenarios and self.nofile < a.drip_streams + 200:
            log(f"warning: fd limit {self.nofile} is low for {a.drip_streams} streams (ulimit -n)")
        multi = a.processes > 1
        self.proxy_cpus = "" if multi else cpu_list(a.proxy_cpus)
        self.load_cpus = "" if multi else cpu_list(a.load_cpus)
        pin_self(self.load_cpus)
        if self.proxy_cpus and self.load_cpus:
            how = "taskset" if shutil.which("taskset") else "sched_setaffinity"
            note = (
                f"ccproxy pinned to CPU {self.proxy_cpus}, mock and driver to CPU "
                f"{self.load_cpus} ({how})"
            )
        else:
            why = "several processes" if multi else "fewer than 2 CPUs, or pinning off"
            note = f"no pinning ({why}; {os.cpu_count()} CPUs)"
        self.results["notes"].append(note)
        log(note)
        self.mock_port = free_port()
        mock_log = os.path.join(self.workdir, "mock.log")
        cmd = [sys.executable, "-m", "bench.mock", "--port", str(self.mock_port)]
        p = self.procs.start(cmd, self.load_cpus, self.nofile, mock_log)
        wait_http(self.mock_port, "/__stats", p, mock_log, "the mock upstream")
        self.mock_pid = p.pid
        log(f"mock upstream on 127.0.0.1:{self.mock_port} (pid {p.pid})")
        self.start_proxies()

    def listen_mode(self) -> str:
        """tcp (one process), workers or workers_reuse_port (one twistd, `workers: N`),
        reuse_port or systemd (N twistds); '' when the runs must be skipped."""
        a = self.a
        if a.processes == 1 and a.multi_listen == "auto":
            return "tcp"
        if a.multi_listen == "systemd":
            return "systemd"
        if a.multi_listen in ("auto", "workers", "workers_reuse_port"):
            ok, why = ccproxy_accepts_workers(a.python, a.ccproxy_root)
            if ok:
                return "workers" if a.multi_listen == "auto" else a.multi_listen
            if a.multi_listen != "auto":
                self.skipped = (
                    "SKIPPED the ccproxy runs: this ccproxy has no `workers` config key "
                    f"(its config check says: {why or 'refused'})"
                )
                log(self.skipped)
                return ""
        ok, why = ccproxy_accepts_reuse_port(a.python, a.ccproxy_root)
        if ok:
            return "reuse_port"
        if a.multi_listen == "reuse_port":
            self.skipped = (
                "SKIPPED the ccproxy runs: this ccproxy has no `reuse_port` config key yet "
                f"(its config check says: {why or 'refused'}); see bench/README.md, "
                "'Several processes'. `--multi-listen systemd` works without it."
            )
            log(self.skipped)
            return ""
        note = (
            "ccproxy has no `reuse_port` key yet: its processes share the port through "
            "SO_REUSEPORT sockets that the bench binds and hands over "
            "(listen: systemd:domain=INET:index=0)"
        )
        self.results["notes"].append(note)
        log(note)
        return "systemd"

    def start_proxies(self) -> None:
        a = self.a
        mode = self.listen_mode()
        if not mode:
            return
        socks: list[socket.socket] = []
        if mode == "systemd":
            self.proxy_port, socks = reuseport_sockets(a.processes, a.backlog or LISTEN_BACKLOG)
            listen = "systemd:domain=INET:index=0"
        else:
            self.proxy_port = free_port()
            listen = f"tcp:{self.proxy_port}:interface=127.0.0.1"
            if a.backlog:
                listen += f":backlog={a.backlog}"
        self.results["proxy"] = {
            "processes": a.processes,
            "listen_mode": mode,
            "listen": listen,
            "ledger": a.ledger,
            "routes": a.routes,
            "state": a.state,
        }
        redis_url = ""
        if a.state == "redis":
            if not shutil.which("redis-server"):
                raise SystemExit(
                    "bench: --state redis needs redis-server (apt-get install redis-server)"
                )
            redis_port = free_port()
            redis_log = os.path.join(self.workdir, "redis.log")
            rp = self.procs.start(
                redis_command(redis_port, self.workdir), self.load_cpus, self.nofile, redis_log
            )
            wait_redis(redis_port, rp, redis_log)
            redis_url = f"redis://127.0.0.1:{redis_port}/0"
            log(f"redis-server on 127.0.0.1:{redis_port} (pid {rp.pid})")
        ledger = ledger_setting(a.ledger, self.workdir, a.python, a.ccproxy_root)
        if ledger is None:
            self.results["notes"].append("this ccproxy has no ledger: --ledger is ignored")
        started = []
        workers = mode.startswith("workers")
        for i in range(1 if workers else a.processes):
            cfg = proxy_config(
                self.mock_port,
                listen,
                a.drip_rate,
                a.drip_seconds,
                mode.endswith("reuse_port"),
                responses="responses" in a.scenarios,
            )
            if workers:
                cfg["workers"] = a.processes
            if ledger is not None:
                cfg["ledger"] = ledger
            add_features(cfg, a.routes, a.state, redis_url, CLIENT_KEY)
            if "drip" in a.scenarios and a.drip_streams > DEFAULT_PER_ADDRESS:
                # Every stream of the bench comes from 127.0.0.1: the per-address
                # cap (a hardening default) would turn the rest away.
                cfg["max_connections_per_address"] = a.drip_streams + 64
            cfg_path = os.path.join(self.workdir, f"ccproxy-{i}.yaml")
            with open(cfg_path, "w") as f:
                json.dump(cfg, f, indent=1)  # JSON is YAML
            logpath = os.path.join(self.workdir, f"ccproxy-{i}.log")
            cmd = twistd_command(a.python, cfg_path, logpath, a.ccproxy_root)
            fd = socks[i].fileno() if socks else -1
            p = self.procs.start(cmd, self.proxy_cpus, self.nofile, logpath + ".out", fd)
            started.append((p, logpath + ".out"))
        for s in socks:
            s.close()  # the children hold them now
        for p, out in started:
            wait_http(self.proxy_port, "/healthz", p, out, "ccproxy")
        for p, out in started:  # /healthz reached one; the others must be alive too
            if p.poll() is not None:
                raise SystemExit(f"bench: a ccproxy process exited ({p.returncode}); see {out}")
        self.proxy_pids = [p.pid for p, _ in started]
        if workers:  # the master and its workers, once each worker has answered
            self.proxy_pids += self.wait_workers(started[0][0].pid, logpath)
        log(
            f"ccproxy x{a.processes} on 127.0.0.1:{self.proxy_port} ({mode}), "
            f"pids {self.proxy_pids}"
        )
        if a.py_spy:
            exe = shutil.which("py-spy") or os.path.join(os.path.dirname(a.python), "py-spy")
            if os.access(exe, os.X_OK):
                self.py_spy = exe
            else:
                log("--py-spy: py-spy not found (pip install py-spy); no profile")

    def wait_workers(self, master: int, logpath: str) -> list[int]:
        """The pids of the master's `--processes` workers, once each has logged that
        it serves (the master writes their lines to its log)."""
        end = time.monotonic() + 60
        while time.monotonic() < end:
            pids = procstat.children(master)
            try:
                with open(logpath, "rb") as f:
                    serving = f.read().count(b"ccproxy serving on")
            except OSError:
                serving = 0
            if len(pids) == self.a.processes and serving >= self.a.processes:
                return pids
            time.sleep(0.1)
        raise SystemExit(f"bench: the workers did not all come up; see {logpath}")

    # ------------------------------------------------------------ runs
    def mock_stats(self) -> dict[str, Any]:
        try:
            return json.loads(http_get(self.mock_port, "/__stats")[1])
        except (OSError, ValueError):
            return {}

    def target(
        self,
        direct: bool,
        stream: bool,
        drip: bool,
        passthrough: bool = False,
        responses: bool = False,
    ) -> client.Target:
        a = self.a
        model = RESPONSES_MODEL if responses else DRIP_MODEL if drip else PROXY_MODEL
        if passthrough:  # an `api: messages` upstream: Anthropic on both sides
            model = payloads.PASS_MODEL
            path, port = PROXY_PATH, self.proxy_port
            headers = proxy_headers()
            if direct:
                path, port = "/direct/v1/messages", self.mock_port
            return client.Target(
                "127.0.0.1",
                port,
                path,
                headers,
                self.bodies[(stream, "pass")],
                lambda: validate.make(False, stream, payloads.Expect(model=model)),
                stream,
            )
        if direct:
            prefix = f"/direct/drip/{a.drip_rate:g}/{a.drip_seconds:g}" if drip else "/direct"
            path, port = prefix + "/v1/chat/completions", self.mock_port
            headers = {
                "Content-Type": "application/json",
                "Accept": "application/json",
                "Authorization": f"Bearer {UPSTREAM_KEY}",
            }
        else:
            path, port, headers = PROXY_PATH, self.proxy_port, proxy_headers()
        if drip:
            n_text = payloads.drip_text_deltas(a.drip_rate, a.drip_seconds)
        else:
            n_text = payloads.FAST_TEXT_DELTAS
        expect = payloads.Expect(n_text, model="" if direct else model)
        return client.Target(
            "127.0.0.1",
            port,
            path,
            headers,
            self.responses_bodies if responses else self.bodies[(stream, drip)],
            lambda: validate.make(direct, stream, expect),
            stream,
        )

    async def measure(
        self,
        name: str,
        direct: bool,
        *,
        stream: bool,
        drip: bool,
        concurrency: int,
        passthrough: bool = False,
        total: int | None,
        duration: float | None,
        warmup: int,
        ramp: float = 0.0,
        timeout: float | None = None,
        responses: bool = False,
    ) -> dict[str, Any]:
        target = self.target(direct, stream, drip, passthrough, responses)
        pids = [] if direct else self.proxy_pids
        timeout = timeout or self.a.timeout
        warm_problems: Counter[str] = Counter()
        warm_failed = 0
        if warmup:
            res, _ = await client.run(target, min(concurrency, 8), total=warmup, timeout=timeout)
            for r in res:
                warm_problems.update(set(r.problems))
                warm_failed += not r.ok
        settled = await procstat.settle([*pids, self.mock_pid])
        load_pids = [os.getpid(), self.mock_pid]
        mock0 = self.mock_stats()
        rss0 = procstat.rss_bytes(pids)
        cpu0_each = [procstat.cpu_seconds([p]) for p in pids]
        fds0 = procstat.fd_count(pids) if pids else 0
        cpu0, mock_cpu0, me0 = (
            procstat.cpu_seconds(pids),
            procstat.cpu_seconds([self.mock_pid]),
            procstat.self_cpu(),
        )
        wait0, load_wait0 = (
            procstat.runqueue_wait_seconds(pids),
            procstat.runqueue_wait_seconds(load_pids),
        )
        ovf0 = procstat.listen_overflows()
        sampler = procstat.Sampler(pids, 0.1 if drip else 0.25)
        sampler.start()
        spy = None
        if self.py_spy and not direct:
            path = os.path.join(self.workdir, f"profile-{name}.txt")
            spy = PySpy(self.py_spy, pids[0], path, self.load_cpus)
            self.profiles.append(path)
        results, elapsed = await client.run(
            target, concurrency, total=total, duration=duration, timeout=timeout, ramp=ramp
        )
        await sampler.stop()
        cpu1, mock_cpu1, me1 = (
            procstat.cpu_seconds(pids),
            procstat.cpu_seconds([self.mock_pid]),
            procstat.self_cpu(),
        )
        wait1, load_wait1 = (
            procstat.runqueue_wait_seconds(pids),
            procstat.runqueue_wait_seconds(load_pids),
        )
        ovf1 = procstat.listen_overflows()
        if spy is not None:
            spy.stop()
        mock1 = self.mock_stats()
        out = client.summarize(results, elapsed)
        n = max(1, len(results))
        per_s = 1 / elapsed if elapsed else 0.0
        out.update(
            {
                "concurrency": concurrency,
                "stream": stream,
                "settled": settled,
                "warmup_requests": warmup,
                "warmup_failed": warm_failed,
                "warmup_problems": dict(warm_problems),
                "driver_cpu_util": (me1 - me0) * per_s,
                "mock_cpu_util": (mock_cpu1 - mock_cpu0) * per_s,
                "mock_cpu_ms_per_req": (mock_cpu1 - mock_cpu0) * 1000 / n,
                "load_runqueue_wait": (load_wait1 - load_wait0) * per_s,
                "listen_overflows": ovf1 - ovf0 if ovf0 is not None and ovf1 is not None else None,
            }
        )
        upstream = Counter(mock1.get("request_problems") or {})
        upstream.subtract(mock0.get("request_problems") or {})
        upstream_problems = {k: v for k, v in upstream.items() if v > 0}
        if upstream_problems:
            out["upstream_request_problems"] = upstream_problems
        if len(pids) > 1:  # the balance between processes (a master uses ~0)
            out["proxy_cpu_s_by_process"] = [
                round(procstat.cpu_seconds([p]) - c, 3)
                for p, c in zip(pids, cpu0_each, strict=True)
            ]
        if pids:
            fds1 = procstat.fd_count(pids)
            if drip:  # once the streams' connections are closed: none may be left
                await procstat.settle(pids)
                await asyncio.sleep(1.0)
                fds1 = procstat.fd_count(pids)
            out.update(
                {
                    "proxy_cpu_s": cpu1 - cpu0,
                    "proxy_cpu_ms_per_req": (cpu1 - cpu0) * 1000 / n,
                    "proxy_cpu_util": (cpu1 - cpu0) * per_s,
                    "proxy_runqueue_wait": (wait1 - wait0) * per_s,
                    "rss_before_mb": rss0 / 2**20,
                    "rss_peak_mb": sampler.peak_rss / 2**20,
                    "rss_after_mb": procstat.rss_bytes(pids) / 2**20,
                    "fds_peak": sampler.peak_fds,
                    "fds_before": fds0,
                    "fds_after": fds1,
                }
            )
        self._log_run(name, direct, out, elapsed, upstream_problems)
        return out

    def _log_run(
        self, name: str, direct: bool, out: dict[str, Any], elapsed: float, upstream: dict[str, int]
    ) -> None:
        p50 = out["t_done_p50"]
        msg = (
            f"{name} {'direct' if direct else 'ccproxy'}: {out['ok']}/{out['requests']} valid "
            f"in {elapsed:.1f}s ({out['ok_per_s'] or 0:.0f}/s), "
            f"p50 {'-' if p50 is None else f'{p50 * 1000:.2f} ms'}"
        )
        if "proxy_cpu_ms_per_req" in out:
            msg += f", CPU {out['proxy_cpu_ms_per_req']:.2f} ms/req"
        msg += "; problems: " + (
            ", ".join(f"{k}={v}" for k, v in out["problems"].items()) or "none"
        )
        if upstream:
            msg += f"; upstream request problems: {upstream}"
        log(msg)

    async def run_scenarios(self) -> None:
        a = self.a
        self.bodies = {
            (False, False): corpus.bodies(stream=False, model=PROXY_MODEL),
            (True, False): corpus.bodies(stream=True, model=PROXY_MODEL),
            (True, True): corpus.bodies(stream=True, model=DRIP_MODEL),
            (False, "pass"): corpus.bodies(stream=False, model=payloads.PASS_MODEL),
            (True, "pass"): corpus.bodies(stream=True, model=payloads.PASS_MODEL),
        }
        self.responses_bodies = corpus.bodies(stream=True, model=RESPONSES_MODEL)
        sizes = [len(b) for b in self.bodies[(False, False)]]
        self.results["corpus_bytes"] = sizes
        log(f"corpus: {len(sizes)} bodies of {min(sizes)}-{max(sizes)} bytes")
        who = [] if a.no_direct else [True]
        if self.proxy_pids:
            who.append(False)
        plans: dict[str, dict[str, Any]] = {
            "lat": {"stream": False, "drip": False, "concurrency": 1, "total": a.lat_n,
                    "duration": None, "warmup": 20 if a.quick else 50},
            "tput": {"stream": False, "drip": False, "concurrency": a.tput_c, "total": None,
                     "duration": a.tput_seconds, "warmup": 2 * a.tput_c},
            "stream": {"stream": True, "drip": False, "concurrency": 1, "total": a.stream_n,
                       "duration": None, "warmup": 10},
            "drip": {"stream": True, "drip": True, "concurrency": a.drip_streams,
                     "total": a.drip_streams, "duration": None, "warmup": 0,
                     "ramp": a.drip_ramp, "timeout": a.drip_seconds * 4 + 30},
            # (a) and (c) again, through an `api: messages` upstream (passed through)
            "pass_lat": {"stream": False, "drip": False, "concurrency": 1, "total": a.lat_n,
                         "duration": None, "warmup": 20 if a.quick else 50,
                         "passthrough": True},
            "pass_stream": {"stream": True, "drip": False, "concurrency": 1,
                            "total": a.stream_n, "duration": None, "warmup": 10,
                            "passthrough": True},
            "responses": {"stream": True, "drip": False, "concurrency": 1, "total": a.stream_n,
                          "duration": None, "warmup": 10, "responses": True},
        }  # fmt: skip
        for name in SCENARIOS:
            if name in a.scenarios:
                res = {}
                for direct in who:
                    if direct and name in PROXY_ONLY:
                        continue
                    key = "direct" if direct else "ccproxy"
                    res[key] = await self.measure(name, direct, **plans[name])
                self.results["scenarios"][name] = res
