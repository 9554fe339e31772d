"""`python -m ccproxy COMMAND`: tools beside the daemon (which itself runs under twistd)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ccproxy.daemon import approve
from ccproxy.doctor import cli as doctor
from ccproxy.doctor import route
from ccproxy.ledger import cli as usage
from ccproxy.ledger import signincli as tokens


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ccproxy",
        description="ccproxy tools; the daemon itself runs as `twistd ccproxy --config PATH`.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    doctor.addParser(subparsers)
    usage.addParser(subparsers)
    route.addParser(subparsers)
    tokens.addParser(subparsers)
    approve.addParser(subparsers)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    # Key hints hold "…"; a terminal without UTF-8 must not turn that into a traceback.
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="backslashreplace")
    return int(args.run(args))


if __name__ == "__main__":
    sys.exit(main())
