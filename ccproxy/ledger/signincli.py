"""`python -m ccproxy tokens list|revoke NAME`: the admin's view of who is
signed in with `/login`, and the way to sign a client out everywhere, read and
written in the ledger's database directly (the daemon need not run).

A daemon that has verified a token recently keeps taking it for up to
`ccproxy.web.signin.CACHE_SECONDS` after `revoke`; a refresh is refused at once.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import IO, Any

from ccproxy.config.periods import isoMoment
from ccproxy.ledger.cli import commandParser, fail, readConfig
from ccproxy.ledger.signin import SignInTables
from ccproxy.ledger.sql import Database, NoLedger, SchemaTooNew


def addParser(subparsers: Any) -> None:
    parser = commandParser(
        subparsers,
        "tokens",
        "who is signed in with /login; sign a client out",
        "List the clients signed in with Claude Code's /login, or revoke every"
        " sign-in of one client, in the ledger the config names.",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    actions.add_parser("list", help="each client's live sign-ins")
    revoke = actions.add_parser("revoke", help="end every sign-in of a client")
    revoke.add_argument("name", help="the client's name (clients[].name)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace, out: IO[str] | None = None, now: float | None = None) -> int:
    """0 done; 2 a bad config or name; 1 the ledger cannot be read."""
    out = sys.stdout if out is None else out
    moment = time.time() if now is None else now
    config = readConfig(args.config, "tokens", "sign-in tokens live in the ledger")
    if isinstance(config, int):
        return config
    assert config.ledger is not None
    database = Database(config.ledger, create=False)
    tables = SignInTables(database)
    try:
        if args.action == "list":
            rows = tables.summary(moment)
            if not rows:
                out.write("nobody is signed in\n")
            for row in rows:
                out.write(
                    f"{row.client}\t{row.signIns} sign-in(s)\tlast {isoMoment(row.lastIssued)}"
                    f"\tuntil {isoMoment(row.expires)}\n"
                )
            return 0
        signedIn = {row.client for row in tables.summary(moment)}
        if config.clientNamed(args.name) is None and args.name not in signedIn:
            return _fail(f"no client named {args.name!r} in {args.config}", 2)
        count = tables.revokeClient(args.name, moment)
        out.write(f"{args.name}: {count} sign-in(s) revoked\n")
        return 0
    except (NoLedger, SchemaTooNew) as e:
        return _fail(str(e), 1)
    except Exception as e:  # the database's own errors: said in one line
        return _fail(f"cannot use the ledger {config.ledger}: {type(e).__name__}: {e}", 1)
    finally:
        database.close()


def _fail(message: str, status: int) -> int:
    return fail("tokens", message, status)
