"""Syscalls per request or per stream of a running ccproxy, counted by strace.

    python -m bench.syscalls [lat|stream] [-n N] [--ccproxy-root DIR]

Starts the bench's mock and `twistd -n ccproxy` (with a SQLite ledger in a temp
dir, as a daemon keeps one by default) on free ports, warms up with 300 requests,
then attaches `strace -f -c` (both threads: the reactor's and the ledger's) for N
requests at concurrency 1 and the ledger's next batch, and prints each syscall
made at least once per 20 requests, per request. Counts, not times: they do not
move with the host's load, which makes them the figure to compare two checkouts
by (`--ccproxy-root` for the other one). Needs `strace` (`apt-get install strace`)
and the right to trace a child (root, or ptrace_scope 0). ccproxy runs on CPU 0 and
the mock on CPU 1, as in `python -m bench`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from bench import client, corpus, payloads, validate
from bench.procs import free_port, proxy_config, wait_http
from bench.runner import PROXY_MODEL, PROXY_PATH, proxy_headers, twistd_command

_LINE = re.compile(r"\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(\w+)$")
"""A row of `strace -c`'s table: its calls and its syscall's name."""


def _pinned(cpu: int) -> list[str]:
    """This Python, on CPU `cpu` when the host has two (as the bench pins ccproxy to
    one core and its mock to the other: two threads of one process on two cores
    hand the GIL over with futex calls that one core does not make)."""
    if (os.cpu_count() or 1) < 2:
        return [sys.executable]
    return [sys.executable, "-m", "bench.launch", "--cpus", str(cpu), "--", sys.executable]


def _run(target: client.Target, n: int) -> int:
    """Send n requests at concurrency 1; how many answers were invalid."""
    results, _ = asyncio.run(client.run(target, 1, total=n))
    return sum(1 for r in results if r.problems)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.syscalls", description=__doc__)
    parser.add_argument("kind", nargs="?", choices=("lat", "stream"), default="lat")
    parser.add_argument("-n", type=int, default=1000, help="requests counted [1000]")
    parser.add_argument("--ccproxy-root", default="", help="another checkout's ccproxy")
    args = parser.parse_args(argv)
    if shutil.which("strace") is None:
        print("bench.syscalls: strace is not installed", file=sys.stderr)
        return 2
    work = tempfile.mkdtemp(prefix="ccproxy-bench-syscalls-")
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
    command = twistd_command(
        sys.executable, path, os.path.join(work, "ccproxy.log"), args.ccproxy_root
    )
    command = [*_pinned(0), *command[1:]]
    with open(out, "w") as proxyOut:
        proxy = subprocess.Popen(command, stdout=proxyOut, stderr=subprocess.STDOUT)
    try:
        wait_http(mockPort, "/__stats", mock, os.path.join(work, "mock.out"), "the mock upstream")
        wait_http(proxyPort, "/healthz", proxy, out, "ccproxy")
        stream = args.kind == "stream"
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
        invalid = _run(target, 300)
        time.sleep(1.5)  # the warm-up's last ledger batch
        counts = os.path.join(work, "strace.txt")
        strace = subprocess.Popen(
            ["strace", "-f", "-c", "-o", counts, "-p", str(proxy.pid)], stderr=subprocess.DEVNULL
        )
        time.sleep(1.0)  # attached to both threads
        invalid += _run(target, args.n)
        time.sleep(1.5)  # the ledger's batch of these rows
        strace.send_signal(signal.SIGINT)
        strace.wait(30)
        print(f"syscalls per {args.kind}, {args.n} at concurrency 1 ({invalid} invalid answers):")
        with open(counts) as f:
            for line in f:
                match = _LINE.match(line)
                if match and int(match.group(1)) * 20 >= args.n:
                    print(f"  {match.group(2):<14} {int(match.group(1)) / args.n:6.2f}")
        print(f"(workdir {work})")
        return 1 if invalid else 0
    finally:
        proxy.send_signal(signal.SIGTERM)
        mock.terminate()
        proxy.wait(30)
        mock.wait(10)


if __name__ == "__main__":
    raise SystemExit(main())
