"""A real daemon to count what one request costs: the bench's mock and `twistd -n
ccproxy` on free ports, driven at concurrency 1 with the bench's corpus.

Shared by `bench.syscalls` (strace) and `bench.instructions` (valgrind), whose
counts, unlike times, do not move with the host's load. ccproxy runs on CPU 0 and
the mock on CPU 1, as in `python -m bench`; the daemon keeps a SQLite ledger in a
temp dir, as a daemon keeps one by default.
"""

from __future__ import annotations

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
from bench.procs import free_port, proxy_config, wait_http
from bench.runner import PROXY_MODEL, PROXY_PATH, proxy_headers, twistd_command


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


@contextmanager
def daemon(
    kind: str,
    ccproxyRoot: str = "",
    wrap: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
    startSeconds: float = 30,
) -> Iterator[Daemon]:
    """The mock and ccproxy (its Python run under `wrap`, e.g. valgrind), for `lat`
    (non-streaming) or `stream` requests; both stopped on leaving."""
    work = tempfile.mkdtemp(prefix=f"ccproxy-bench-{kind}-")
    mockPort, proxyPort = free_port(), free_port()
    with open(os.path.join(work, "mock.out"), "w") as mockOut:
        mock = subprocess.Popen(
            [*_pinned(1), "-m", "bench.mock", "--port", str(mockPort)],
            stdout=mockOut,
            stderr=subprocess.STDOUT,
        )
    config = proxy_config(mockPort, f"tcp:{proxyPort}:interface=127.0.0.1", 10, 20, False)
    config["ledger"] = f"sqlite:///{work}/ccproxy.db"
    path = os.path.join(work, "ccproxy.yaml")
    with open(path, "w") as f:
        json.dump(config, f)  # JSON is YAML
    out = os.path.join(work, "ccproxy.out")
    command = twistd_command(sys.executable, path, os.path.join(work, "ccproxy.log"), ccproxyRoot)
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
        mock.terminate()
        proxy.wait(60)
        mock.wait(10)
