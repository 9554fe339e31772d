"""Instructions per request or per stream of a running ccproxy, counted by valgrind.

    python -m bench.instructions [lat|stream] [-n N] [--ccproxy-root DIR]
        [--ledger sqlite|off] [--routes off|on] [--state none|local|redis]

Starts the bench's mock and `twistd -n ccproxy` under valgrind's callgrind
(`bench.counting`; `PYTHONHASHSEED=0`), warms up with 30 requests, zeroes the
counters, sends N more at concurrency 1 (default 300) and waits for the ledger's
batch of them, then prints the instructions the whole process (the reactor's
thread and the ledger's) ran per request. Everything the daemon does in user
space is counted, sockets and timers and logging included; the kernel's side of
a syscall is not (`bench.syscalls` counts those). Two runs of one checkout
differ by up to half a percent (how many timers fire and how the ledger's rows
fall into batches follow the run's timing), where CPU time moves by a quarter
with the host's load: it is the figure to judge a change of a few percent by,
two checkouts side by side (`--ccproxy-root` for the other one), or a feature on
and off (as `python -m bench` names them). Needs valgrind (`apt-get install
valgrind`); takes about a minute (the daemon runs some 50 times slower).
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import time

from bench.counting import arguments, daemon

_WARM = 30


def _totals(path: str) -> int:
    """The instruction total of one callgrind dump."""
    with open(path) as f:
        for line in f:
            if line.startswith(("summary:", "totals:")):
                return int(line.split()[1])
    raise SystemExit(f"bench.instructions: no totals in {path}")


def _control(command: str, pid: int) -> None:
    """`callgrind_control` `command` (`-z` zero, `-d` dump) to the daemon."""
    done = subprocess.run(["callgrind_control", command, str(pid)], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"bench.instructions: callgrind_control {command}: {done.stderr}")


def main(argv: list[str] | None = None) -> int:
    args = arguments("python -m bench.instructions", __doc__, 300).parse_args(argv)
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        print("bench.instructions: valgrind is not installed", file=sys.stderr)
        return 2
    out = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"ccproxy-callgrind-{os.getpid()}")
    wrap = ("valgrind", "--tool=callgrind", f"--callgrind-out-file={out}.%p")
    with daemon(args.kind, args, wrap, {"PYTHONHASHSEED": "0"}, 300) as proxy:
        invalid = proxy.run(_WARM)
        time.sleep(3)  # the warm-up's last ledger batch (slower under valgrind)
        _control("-z", proxy.pid)
        invalid += proxy.run(args.n)
        time.sleep(3)  # the ledger's batch of these rows
        _control("-d", proxy.pid)
        dumps = glob.glob(f"{out}.{proxy.pid}.*")  # the dump after the zero, not the exit's
        if len(dumps) != 1:
            raise SystemExit(f"bench.instructions: expected one dump, found {dumps}")
        total = _totals(dumps[0])
        for path in dumps:
            os.unlink(path)
    for path in glob.glob(f"{out}.{proxy.pid}"):
        os.unlink(path)
    print(
        f"instructions per {args.kind} (whole daemon, {args.n} at concurrency 1, "
        f"{invalid} invalid answers): {total / args.n:,.0f}"
    )
    return 1 if invalid else 0


if __name__ == "__main__":
    raise SystemExit(main())
