"""`python -m bench.ledger [--postgresql URL]`: what the ledger costs a request, in
CPU, without the noise of a whole run.

The end-to-end bench (`python -m bench --ledger off|sqlite|URL`) measures the
daemon with and without a ledger, but on a shared 2-core host its run-to-run
spread (some 0.2 ms a request) is far larger than the ledger's cost. This
measures the one place the ledger adds work: the access log's write of a
finished request (the row made, priced and buffered), with the rows written in
batches of 200 as the daemon writes them, inline here so their CPU is counted in
this process (the daemon writes them on its own thread, still its CPU). Ledger
off, the same write adds to the in-memory totals instead. Blocks of each kind are
interleaved; the medians and the minimums are printed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

from twisted.internet.task import Clock

from ccproxy.config.ledger import LedgerURL
from ccproxy.config.prices import Price, Prices
from ccproxy.errors import KEY_SHAPES
from ccproxy.ledger.sql import Database
from ccproxy.ledger.store import SQLLedger
from ccproxy.ledger.worker import Inline
from ccproxy.observe.accesslog import AccessLog, AccessRecord
from ccproxy.observe.metrics import Metrics
from ccproxy.observe.usage import UsageBook
from ccproxy.web.call import newId

PRICES = Prices("USD", (("gpt-4.1", Price(2, 8, 0.5, 0)),))


def record(i: int, ids: Callable[[], str] = newId) -> AccessRecord:
    """A finished streamed request, as the access log gets it, its id made as the
    daemon makes them (`ids`)."""
    start = 1.7e9 + i
    return AccessRecord(
        requestId=f"req_{ids()}",
        method="POST",
        path="/v1/messages",
        started=start,
        client="alice",
        model="claude-sonnet-4-5",
        route="claude-*",
        upstream="up",
        upstreamModel="gpt-4.1",
        stream=True,
        status=200,
        firstByte=start + 0.2,
        inputTokens=1200,
        outputTokens=300,
        cacheReadTokens=5000,
    )


def accessLog(url: LedgerURL | None) -> AccessLog:
    if url is None:
        return AccessLog(Metrics(), UsageBook("-"))
    ledger = SQLLedger(Database(url), Clock(), Inline())
    ledger.start()
    return AccessLog(Metrics(), UsageBook("-"), ledger)


def randomId() -> str:
    """A request id as ccproxy made them before time-first ids: 96 random bits, each
    row in its own page of the ledger's index."""
    return os.urandom(12).hex()


def measure(
    logs: dict[str, AccessLog], blocks: int, n: int, ids: Callable[[], str] = newId
) -> dict[str, list[float]]:
    """ms of CPU per request, per block, for each kind."""
    spent: dict[str, list[float]] = {kind: [] for kind in logs}
    made = 0
    for block in range(blocks):
        kinds = list(logs) if block % 2 == 0 else list(reversed(logs))
        for kind in kinds:
            records = [record(made + i, ids) for i in range(n)]
            made += n
            started = time.process_time()
            for r in records:
                logs[kind].write(r, r.started + 3, None, KEY_SHAPES.redact, PRICES)
            spent[kind].append((time.process_time() - started) / n * 1000)
    return spent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ledger", description=__doc__)
    parser.add_argument(
        "--postgresql", metavar="URL", help="also a PostgreSQL ledger (a scratch db)"
    )
    parser.add_argument("--blocks", type=int, default=12)
    parser.add_argument("-n", type=int, default=2000, help="requests a block")
    parser.add_argument(
        "--random-ids", action="store_true", help="ids of 96 random bits (before time-first ids)"
    )
    args = parser.parse_args(argv)
    directory = tempfile.mkdtemp(prefix="ccproxy-bench-ledger-")
    logs = {
        "off": accessLog(None),
        "sqlite": accessLog(LedgerURL.sqlite(os.path.join(directory, "ccproxy.db"))),
    }
    if args.postgresql:
        logs["postgresql"] = accessLog(LedgerURL("postgresql", args.postgresql))
    spent = measure(logs, args.blocks, args.n, randomId if args.random_ids else newId)
    median: dict[str, Any] = {kind: statistics.median(v) for kind, v in spent.items()}
    print(f"CPU of a request's access-log write, {args.blocks} blocks of {args.n} (ms/request)")
    for kind, values in spent.items():
        line = f"  {kind:<11} median {median[kind]:.4f}  min {min(values):.4f}"
        if kind != "off":
            line += f"  (ledger on: {median[kind] - median['off']:+.4f} ms)"
        print(line)
    print(f"(SQLite file in {directory})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
