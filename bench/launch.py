"""Exec a command with a raised fd limit, a CPU affinity and, optionally, an
inherited listening socket handed over the systemd way (LISTEN_FDS).

    python -m bench.launch [--nofile N] [--cpus 0] [--listen-fd FD] -- CMD ARGS...

The process keeps its pid through the exec, so the bench's pid for it is the
server's pid (what /proc is read for). With ``--listen-fd``, FD becomes fd 3
and LISTEN_FDS=1, LISTEN_PID=<pid>, LISTEN_FDNAMES=<name> are set: Twisted's
``systemd:domain=INET:index=0`` endpoint then adopts the socket.
"""

from __future__ import annotations

import argparse
import os
import resource


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument(
        "--nofile",
        type=int,
        default=0,
        help="raise the soft RLIMIT_NOFILE to this (capped by the hard limit)",
    )
    ap.add_argument("--cpus", default="", help="CPU list for sched_setaffinity, e.g. 0 or 0,1")
    ap.add_argument("--listen-fd", type=int, default=-1)
    ap.add_argument("--fd-name", default="ccproxy")
    ap.add_argument("cmd", nargs=argparse.REMAINDER)
    args = ap.parse_args()
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        ap.error("no command")
    if args.nofile:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        want = args.nofile if hard == resource.RLIM_INFINITY else min(args.nofile, hard)
        if want > soft:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    if args.cpus:
        os.sched_setaffinity(0, {int(c) for c in args.cpus.split(",")})
    if args.listen_fd >= 0:
        if args.listen_fd != 3:
            os.dup2(args.listen_fd, 3)
            os.close(args.listen_fd)
        os.set_inheritable(3, True)
        os.environ.update(LISTEN_FDS="1", LISTEN_PID=str(os.getpid()), LISTEN_FDNAMES=args.fd_name)
    os.execvp(cmd[0], cmd)


if __name__ == "__main__":
    main()
