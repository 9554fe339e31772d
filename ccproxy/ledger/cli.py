"""`python -m ccproxy usage`: the ledger's totals for people, read from its
database directly (the daemon need not run), by client, model or day.

A client with a budget (`clients[].budget`) also shows how much of each budget
the current UTC day or month has used.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import IO, Any

from ccproxy.config import Config, ConfigError
from ccproxy.config.periods import DAY, MONTH, isoMoment, parseMoment, periodStart
from ccproxy.ledger.report import BY, FORMATS, BudgetUse, Report
from ccproxy.ledger.sql import Database, NoLedger, SchemaTooNew

BUDGETS = (
    ("tokens_per_day", "tokensPerDay", DAY, 0),
    ("tokens_per_month", "tokensPerMonth", MONTH, 0),
    ("cost_per_day", "costPerDay", DAY, 1),
    ("cost_per_month", "costPerMonth", MONTH, 1),
)
"""A budget's key, its attribute on `clients[].budget`, its period, and what it
counts: 0 tokens (input + output + cache-write), 1 cost."""


def addParser(subparsers: Any) -> None:
    """The `usage` subcommand's options."""
    parser = commandParser(
        subparsers,
        "usage",
        "tokens, requests and cost per client, model or day, from the ledger",
        "Read the ledger the config names (ledger:) and print the totals of a"
        " period, in UTC: by default the current month.",
    )
    parser.add_argument(
        "--since", metavar="DATE", help="ISO date or datetime (default: this month's 1st)"
    )
    parser.add_argument(
        "--until", metavar="DATE", help="ISO date (counted whole) or datetime (default: now)"
    )
    parser.add_argument("--by", choices=BY, default="client", help="one line per (default client)")
    parser.add_argument("--format", choices=FORMATS, default="table", help="(default table)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace, out: IO[str] | None = None, now: float | None = None) -> int:
    """Print the report; 2 when the config or the dates are wrong, 1 when the ledger
    cannot be read."""
    out = sys.stdout if out is None else out
    moment = time.time() if now is None else now
    config = readConfig(args.config, "usage", "there is nothing to read")
    if isinstance(config, int):
        return config
    try:
        since = periodStart(moment, MONTH) if args.since is None else parseMoment(args.since)
        until = None if args.until is None else parseMoment(args.until, endOfDay=True)
    except ValueError as e:
        return _fail(f"--since/--until: {e}", 2)
    database = Database(config.ledger, create=False)
    try:
        usage = database.usage(since, until)
        budgets = _budgets(database, config, moment) if args.by == "client" else {}
    except (NoLedger, SchemaTooNew) as e:
        return _fail(str(e), 1)
    except Exception as e:  # the database's own errors: said in one line
        return _fail(f"cannot read the ledger {config.ledger}: {type(e).__name__}: {e}", 1)
    finally:
        database.close()
    report = Report(
        usage,
        args.by,
        isoMoment(since),
        None if until is None else isoMoment(until),
        config.prices.currency,
        budgets,
    )
    out.write(report.render(args.format))
    return 0


def _budgets(database: Database, config: Config, now: float) -> dict[str, list[BudgetUse]]:
    """Each client's budgets (`clients[].budget`, when the config has them), with
    what the current day or month has used."""
    found: dict[str, list[BudgetUse]] = {}
    for client in config.clients:
        budget = getattr(client, "budget", None)
        for name, attribute, period, kind in BUDGETS:
            limit = getattr(budget, attribute, None) if budget is not None else None
            if limit:
                used = database.spent(client.name, periodStart(now, period), None)[kind]
                found.setdefault(client.name, []).append(BudgetUse(name, float(limit), used))
    return found


def commandParser(subparsers: Any, name: str, help: str, description: str) -> Any:
    """A subcommand that reads the daemon's config (`--config PATH`)."""
    parser = subparsers.add_parser(name, help=help, description=description)
    parser.add_argument("--config", metavar="PATH", required=True, help="the daemon's YAML config")
    return parser


def readConfig(path: str, command: str, whyLedger: str) -> Config | int:
    """The config at `path` with a ledger, or the exit status (2) once said why not."""
    try:
        config = Config.fromPath(path)
    except ConfigError as e:
        return fail(command, f"{path}: {e}", 2)
    if config.ledger is None:
        return fail(command, f"{path}: ledger is off: {whyLedger}", 2)
    return config


def fail(command: str, message: str, status: int) -> int:
    print(f"ccproxy {command}: {message}", file=sys.stderr)
    return status


def _fail(message: str, status: int) -> int:
    return fail("usage", message, status)
