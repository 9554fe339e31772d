"""Syscalls per request or per stream of a running ccproxy, counted by strace.

    python -m bench.syscalls [lat|stream] [-n N] [--ccproxy-root DIR]
        [--ledger sqlite|off] [--routes off|on] [--state none|local|redis]

Starts the bench's mock and `twistd -n ccproxy` (`bench.counting`), warms up with
300 requests, then attaches `strace -f -c` (both threads: the reactor's and the
ledger's) for N requests at concurrency 1 and the ledger's next batch, and prints
each syscall made at least once per 20 requests, per request. Counts, not times:
they do not move with the host's load, which makes them the figure to compare two
checkouts by (`--ccproxy-root` for the other one). Needs `strace` (`apt-get
install strace`) and the right to trace a child (root, or ptrace_scope 0).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time

from bench.counting import arguments, daemon

_LINE = re.compile(r"\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(\w+)$")
"""A row of `strace -c`'s table: its calls and its syscall's name."""


def main(argv: list[str] | None = None) -> int:
    args = arguments("python -m bench.syscalls", __doc__, 1000).parse_args(argv)
    if shutil.which("strace") is None:
        print("bench.syscalls: strace is not installed", file=sys.stderr)
        return 2
    with daemon(args.kind, args) as proxy:
        invalid = proxy.run(300)
        time.sleep(1.5)  # the warm-up's last ledger batch
        counts = os.path.join(proxy.work, "strace.txt")
        strace = subprocess.Popen(
            ["strace", "-f", "-c", "-o", counts, "-p", str(proxy.pid)], stderr=subprocess.DEVNULL
        )
        time.sleep(1.0)  # attached to both threads
        invalid += proxy.run(args.n)
        time.sleep(1.5)  # the ledger's batch of these rows
        strace.send_signal(signal.SIGINT)
        strace.wait(30)
        print(f"syscalls per {args.kind}, {args.n} at concurrency 1 ({invalid} invalid answers):")
        with open(counts) as f:
            for line in f:
                match = _LINE.match(line)
                if match and int(match.group(1)) * 20 >= args.n:
                    print(f"  {match.group(2):<14} {int(match.group(1)) / args.n:6.2f}")
        print(f"(workdir {proxy.work})")
        return 1 if invalid else 0


if __name__ == "__main__":
    raise SystemExit(main())
