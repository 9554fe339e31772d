"""A real daemon to count what one request costs: the bench's mock and `twistd -n
ccproxy` on free ports, driven at concurrency 1 with the bench's corpus.

Shared by `bench.syscalls` (strace) and `bench.instructions` (valgrind), whose
counts, unlike times, do not move with the host's load. ccproxy runs on CPU 0 and
the mock (and Redis) on CPU 1, as in `python -m bench`; the daemon keeps a SQLite
ledger in a temp dir, as a daemon keeps one by default. `arguments` gives the
options `python -m bench` measures with a feature on and off (`--ledger`,
`--routes`, `--state`), the same config blocks.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

from bench import client, corpus, payloads, validate
from bench.procs import (
    add_features,
    free_port,
    ledger_setting,
    proxy_config,
    redis_command,
    wait_http,
    wait_redis,
)
from bench.runner import CLIENT_KEY, PROXY_MODEL, PROXY_PATH, proxy_headers, twistd_command


def _pinned(cpu: int) -> list[str]:
    """This Python, on CPU `cpu` when the host has two (as the bench pins ccproxy to
    one core and its mock to the other: two threads of one process on two cores
    hand the GIL over with futex calls that one core does not make)."""
    if (os.cpu_count() or 1) < 2:
        return [sys.executable]
    return [sys.executable, "-m", "bench.launch", "--cpus", str(cpu), "--", sys.executable]


class Daemon:
    """A started mock and ccproxy: `run` sends requests, `pid` is ccproxy's."""

    def __init__(self, work: str, pid: int, target: client.Target) -> None:
        self.work = work
        self.pid = pid
        self._target = target

    def run(self, n: int) -> int:
        """Send n requests at concurrency 1; how many answers were invalid."""
        results, _ = asyncio.run(client.run(self._target, 1, total=n))
        return sum(1 for r in results if r.problems)


def arguments(prog: str, doc: str | None, count: int) -> argparse.ArgumentParser:
    """A counting bench's options: the kind of request, how many are counted
    (`count` by default), another checkout, and the feature switches, as `python
    -m bench` names them."""
    parser = argparse.ArgumentParser(prog=prog, description=doc)
    parser.add_argument("kind", nargs="?", choices=("lat", "stream"), default="lat")
    parser.add_argument("-n", type=int, default=count, help=f"requests counted [{count}]")
    parser.add_argument("--ccproxy-root", default="", help="another checkout's ccproxy")
    parser.add_argument("--ledger", choices=("sqlite", "off"), default="sqlite")
    parser.add_argument("--routes", choices=("off", "on"), default="off")
    parser.add_argument("--state", choices=("none", "local", "redis"), default="none")
    return parser


@contextmanager
def daemon(
    kind: str,
    args: argparse.Namespace,
    wrap: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
    startSeconds: float = 30,
) -> Iterator[Daemon]:
    """The mock and ccproxy (its Python run under `wrap`, e.g. valgrind), for `lat`
    (non-streaming) or `stream` requests, with `args`' features (`arguments`) and
    `ccproxy_root`; all stopped on leaving."""
    work = tempfile.mkdtemp(prefix=f"ccproxy-bench-{kind}-")
    mockPort, proxyPort = free_port(), free_port()
    with open(os.path.join(work, "mock.out"), "w") as mockOut:
        mock = subprocess.Popen(
            [*_pinned(1), "-m", "bench.mock", "--port", str(mockPort)],
            stdout=mockOut,
            stderr=subprocess.STDOUT,
        )
    helpers = [mock]
    config = proxy_config(mockPort, f"tcp:{proxyPort}:interface=127.0.0.1", 10, 20, False)
    ledger = ledger_setting(args.ledger, work, sys.executable, args.ccproxy_root)
    if ledger is not None:
        config["ledger"] = ledger
    redisURL = ""
    if args.state == "redis":
        redisPort = free_port()
        with open(os.path.join(work, "redis.log"), "w") as redisOut:
            redis = subprocess.Popen(
                [*_pinned(1)[:-1], *redis_command(redisPort, work)],
                stdout=redisOut,
                stderr=subprocess.STDOUT,
            )
        helpers.append(redis)
        wait_redis(redisPort, redis, os.path.join(work, "redis.log"))
        redisURL = f"redis://127.0.0.1:{redisPort}/0"
    add_features(config, args.routes, args.state, redisURL, CLIENT_KEY)
    path = os.path.join(work, "ccproxy.yaml")
    with open(path, "w") as f:
        json.dump(config, f)  # JSON is YAML
    out = os.path.join(work, "ccproxy.out")
    command = twistd_command(
        sys.executable, path, os.path.join(work, "ccproxy.log"), args.ccproxy_root
    )
    pinned = _pinned(0)
    command = [*pinned[:-1], *wrap, pinned[-1], *command[1:]]
    with open(out, "w") as proxyOut:
        proxy = subprocess.Popen(
            command, stdout=proxyOut, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
        )
    try:
        wait_http(mockPort, "/__stats", mock, os.path.join(work, "mock.out"), "the mock upstream")
        wait_http(proxyPort, "/healthz", proxy, out, "ccproxy", startSeconds)
        stream = kind == "stream"
        expect = payloads.Expect(payloads.FAST_TEXT_DELTAS, model=PROXY_MODEL)
        target = client.Target(
            "127.0.0.1",
            proxyPort,
            PROXY_PATH,
            proxy_headers(),
            corpus.bodies(stream=stream, model=PROXY_MODEL),
            lambda: validate.make(False, stream, expect),
            stream,
        )
        yield Daemon(work, proxy.pid, target)
    finally:
        proxy.send_signal(signal.SIGTERM)
        for helper in helpers:
            helper.terminate()
        proxy.wait(60)
        for helper in helpers:
            helper.wait(10)
