"""Starting and stopping the processes under test: the mock, ccproxy, py-spy."""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from typing import Any

from bench import payloads

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UPSTREAM_KEY = "sk-bench-upstream-0000"
LISTEN_BACKLOG = 50  # Twisted's default for tcp: endpoints; used for handed-over sockets too


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def argument_parser(prog: str, doc: str | None) -> argparse.ArgumentParser:
    """A bench command's parser, with its module's docstring as the help."""
    return argparse.ArgumentParser(
        prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )


def save_results(results: dict[str, Any], status: int, *paths: str) -> None:
    """`results`, with the exit status, as JSON to each of `paths` ('' is skipped)."""
    results["exit_status"] = status
    for path in paths:
        if path:
            with contextlib.suppress(OSError), open(path, "w") as f:
                json.dump(results, f, indent=1, default=str)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(port: int, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request("GET", path)
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


def raise_nofile() -> int:
    """Raise this process's soft fd limit to the hard one; return the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft < want:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def cpu_list(spec: str) -> str:
    """The CPU list if pinning to it is on and possible here (2+ CPUs), else ''."""
    if spec in ("", "none"):
        return ""
    try:
        avail = os.sched_getaffinity(0)
    except AttributeError:
        return ""
    cpus = {int(c) for c in spec.split(",")}
    return spec if cpus <= avail and len(avail) >= 2 else ""


def pin_self(cpus: str) -> None:
    if cpus:
        os.sched_setaffinity(0, {int(c) for c in cpus.split(",")})


class Procs:
    """The child processes this bench started (and only those), stopped at exit."""

    def __init__(self) -> None:
        self.children: list[subprocess.Popen[bytes]] = []

    def start(
        self, cmd: list[str], cpus: str, nofile: int, logpath: str, listen_fd: int = -1
    ) -> subprocess.Popen[bytes]:
        """Run cmd through bench.launch (fd limit, affinity, socket hand-over), pid kept."""
        launch = [sys.executable, "-m", "bench.launch", "--nofile", str(nofile)]
        prefix: list[str] = []
        if cpus:
            if shutil.which("taskset"):
                prefix = ["taskset", "-c", cpus]
            else:
                launch += ["--cpus", cpus]
        if listen_fd >= 0:
            launch += ["--listen-fd", str(listen_fd)]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO, env.get("PYTHONPATH")) if p)
        with open(logpath, "ab") as out:
            p = subprocess.Popen(
                [*prefix, *launch, "--", *cmd],
                cwd=REPO,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                pass_fds=(listen_fd,) if listen_fd >= 0 else (),
            )
        self.children.append(p)
        return p

    def stop_all(self) -> None:
        for p in self.children:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for p in self.children:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.children.clear()


def wait_http(
    port: int,
    path: str,
    proc: subprocess.Popen[bytes],
    logpath: str,
    what: str,
    seconds: float = 30,
) -> None:
    """Wait until GET path answers 200; exit with the log's tail if it never does."""
    end = time.monotonic() + seconds
    while time.monotonic() < end and proc.poll() is None:
        with contextlib.suppress(OSError):
            if http_get(port, path, 1.0)[0] == 200:
                return
        time.sleep(0.1)
    tail = ""
    with contextlib.suppress(OSError), open(logpath, "rb") as f:
        tail = f.read()[-3000:].decode("utf-8", "replace")
    why = f"exited {proc.returncode}" if proc.poll() is not None else "timeout"
    raise SystemExit(f"bench: {what} did not come up on port {port} ({why}); {logpath}:\n{tail}")


def proxy_config(
    mock_port: int,
    listen: str,
    rate: float,
    seconds: float,
    reuse_port: bool,
    responses: bool = False,
) -> dict[str, Any]:
    """ccproxy's config: claude-drip-* to the dripping upstream, the rest to the fast one;
    with `responses`, claude-responses-* to the mock's Responses API (`api: responses`)."""
    base = f"http://127.0.0.1:{mock_port}"
    cfg: dict[str, Any] = {
        "listen": listen,
        "upstreams": {
            "mock": {"url": f"{base}/v1", "api_key": UPSTREAM_KEY, "timeout": 120},
            "drip": {
                "url": f"{base}/drip/{rate:g}/{seconds:g}/v1",
                "api_key": UPSTREAM_KEY,
                "timeout": 120,
            },
            # The passthrough runs: the same mock, in the Messages API's own words.
            "native": {
                "url": f"{base}/v1",
                "api": "messages",
                "api_key": UPSTREAM_KEY,
                "timeout": 120,
            },
        },
        "models": {
            "claude-drip-*": f"drip/{payloads.MODEL}",
            "claude-pass-*": "native",
            "*": f"mock/{payloads.MODEL}",
        },
    }
    if responses:
        cfg["upstreams"]["responses"] = {
            "api": "responses",
            "url": f"{base}/v1",
            "api_key": UPSTREAM_KEY,
            "timeout": 120,
        }
        cfg["models"] = {RESPONSES_ROUTE: f"responses/{payloads.MODEL}", **cfg["models"]}
    if reuse_port:
        cfg["reuse_port"] = True
    return cfg


RESPONSES_ROUTE = "claude-responses-*"

BENCH_ROUTES: list[dict[str, Any]] = [
    # bench.routing's six rules on the bench's upstreams (its rule on named clients,
    # which needs clients, made a rule on a model); none matches the bench's requests
    # (no images, thinking or search tools, a long conversation, not haiku), so
    # each is tried, the long one estimating tokens as the daemon does, and the
    # models: entry serves.
    {"name": "background", "when": {"background": True}, "target": "mock/mini"},
    {"name": "vision", "when": {"model": "claude-*", "images": True}, "target": "mock/vl"},
    {
        "name": "long",
        "when": {"model": "claude-*", "input_tokens_over": 120000},
        "target": "mock/long",
    },
    {"name": "think", "when": {"thinking": True, "model": "claude-opus-*"}, "target": "mock/o4"},
    {"name": "search", "when": {"tools": ["web_search*", "mcp__search__*"]}, "target": "mock/s"},
    {"name": "haiku", "when": {"model": "claude-haiku-*"}, "target": "mock/small"},
]


def add_features(cfg: dict[str, Any], routes: str, state: str, redis_url: str, key: str) -> None:
    """The optional features a run measures (`--routes`, `--state`): a routes: block
    the requests go through, and a client whose limits are checked on every request,
    counted here (local) or in Redis."""
    if routes == "on":
        cfg["routes"] = BENCH_ROUTES
    if state in ("local", "redis"):
        cfg["clients"] = [
            {"name": "bench", "key": key, "max_concurrent": 100000, "requests_per_minute": 10**8}
        ]
    if state == "redis":
        cfg["state"] = {"redis": redis_url}


def redis_command(port: int, workdir: str) -> list[str]:
    """A throwaway redis-server on 127.0.0.1:port, nothing persisted (as tests/support)."""
    return [
        "redis-server",
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        workdir,
    ]


def wait_redis(port: int, proc: subprocess.Popen[bytes], logpath: str) -> None:
    """Until redis-server answers PING on `port`."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        try:
            with socket.create_connection(("127.0.0.1", port), 1) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"bench: redis-server did not come up on port {port}; {logpath}")


_CONFIG_CHECK = """
import json, sys
from ccproxy.config import Config, ConfigError
try:
    Config.fromMapping(json.loads(sys.argv[1]))
except ConfigError as e:
    print(e)
    sys.exit(1)
"""


def ccproxy_accepts_workers(python: str, root: str = "") -> tuple[bool, str]:
    """Whether this ccproxy's config knows `workers` (one master, N workers)."""
    return ccproxy_knows(python, "workers", 2, root)


def ccproxy_accepts_reuse_port(python: str, root: str = "") -> tuple[bool, str]:
    """Whether this ccproxy's config knows `reuse_port` (asked of its own parser)."""
    return ccproxy_knows(python, "reuse_port", True, root)


def ccproxy_knows(python: str, key: str, value: Any, root: str = "") -> tuple[bool, str]:
    """Whether the config of the ccproxy under `root` (else this checkout's) takes
    `key: value` (asked of its own parser), and what the parser said."""
    cfg = proxy_config(1, "tcp:0:interface=127.0.0.1", 10, 20, False)
    cfg[key] = value
    where = os.path.abspath(root) if root else REPO
    exe = os.path.abspath(python) if os.sep in python else python
    r = subprocess.run(  # `-c` puts the working directory first on sys.path
        [exe, "-c", _CONFIG_CHECK, json.dumps(cfg)],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=where),
        cwd=where,
        timeout=60,
    )
    return r.returncode == 0, (r.stdout + r.stderr).strip()


def ledger_setting(choice: str, workdir: str, python: str, root: str = "") -> str | None:
    """ccproxy's `ledger` for the bench's --ledger choice: `sqlite` is WORKDIR/ccproxy.db,
    never the default (ccproxy.db in the working directory: the repository); None for
    a ccproxy (an older checkout) that has no ledger."""
    if root and not ccproxy_knows(python, "ledger", "off", root)[0]:
        return None
    return {"sqlite": f"sqlite:///{os.path.abspath(workdir)}/ccproxy.db"}.get(choice, choice)


def reuseport_sockets(n: int, backlog: int) -> tuple[int, list[socket.socket]]:
    """n listening sockets on one loopback port, each with SO_REUSEPORT."""
    socks: list[socket.socket] = []
    port = 0
    for _ in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        s.bind(("127.0.0.1", port))
        port = s.getsockname()[1]
        s.listen(backlog)
        socks.append(s)
    return port, socks


class PySpy:
    """py-spy record on one pid, raw (collapsed stacks) output, until stopped."""

    def __init__(self, exe: str, pid: int, out: str, cpus: str) -> None:
        cmd = [exe, "record", "--pid", str(pid), "--rate", "250", "--nonblocking"]
        cmd += ["--format", "raw", "--output", out]
        if cpus and shutil.which("taskset"):
            cmd = ["taskset", "-c", cpus, *cmd]
        self.p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(self) -> None:
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        try:
            self.p.wait(20)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()


_IDLE_LEAVES = ("EPollReactor.doPoll", "Condition.wait", "Thread.wait", "select", "poll")


def hot_spots(
    path: str, top: int = 10
) -> tuple[int, list[tuple[str, float]], list[tuple[str, float]]]:
    """From one py-spy raw file: the busy samples (idle reactor and thread waits
    left out), the top functions by self share, and ccproxy's by inclusive share."""
    self_c: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    busy = 0
    with contextlib.suppress(OSError), open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            stack, _, n = line.rstrip("\n").rpartition(" ")
            if not stack or not n.isdigit():
                continue
            frames = [_frame(fr) for fr in stack.split(";")]
            if frames[-1].rsplit(":", 1)[-1] in _IDLE_LEAVES:
                continue
            count = int(n)
            busy += count
            self_c[frames[-1]] += count
            for fr in set(frames):
                incl[fr] += count
    if not busy:
        return 0, [], []
    selfs = [(k, v / busy) for k, v in self_c.most_common(top)]
    ccp = [(k, v / busy) for k, v in incl.most_common() if k.startswith("ccproxy/")]
    return busy, selfs, ccp[:top]


def _frame(fr: str) -> str:
    """'function (path/to/file.py:123)' -> 'file.py:function' (ccproxy/ paths kept)."""
    name, _, where = fr.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    if "ccproxy/" in path:
        path = "ccproxy/" + path.split("ccproxy/", 1)[1]
    elif "site-packages/" in path:
        path = path.split("site-packages/", 1)[1]
    else:
        path = os.path.basename(path) if path else "?"
    return f"{path}:{name}"
