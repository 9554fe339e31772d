"""`python -m bench.signin [--clients N]`: what checking a caller costs, in CPU,
for a client key and for a `/login` token (verified in the last 30 s, from the
in-memory cache; or looked up in a SQLite ledger, as after the cache's seconds).

The daemon runs the lookup on the ledger's thread; here it runs inline, so its
CPU is counted. Blocks of each kind are interleaved; medians and minimums of the
microseconds per check are printed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.web.http_headers import Headers

from ccproxy.config import Config
from ccproxy.config.ledger import LedgerURL
from ccproxy.ledger.signin import Issued, SignInStore, digestOf
from ccproxy.ledger.sql import Database
from ccproxy.ledger.store import SQLLedger
from ccproxy.ledger.worker import Inline
from ccproxy.web.signin import SignIn


class Caller:
    """Just what authentication reads of a request."""

    def __init__(self, key: str) -> None:
        self.requestHeaders = Headers({b"authorization": [f"Bearer {key}".encode()]})

    def getHeader(self, name: bytes) -> bytes | None:
        values = self.requestHeaders.getRawHeaders(name)
        return values[-1] if values else None


def build(clients: int, directory: str) -> tuple[Config, SignIn, str]:
    path = os.path.join(directory, "ccproxy.db")
    listed = "".join(f"  - {{name: c{i}, key: key-{i:04d}-{'x' * 24}}}\n" for i in range(clients))
    config = Config.fromYAML(
        "upstreams: {up: {url: 'http://u/v1'}}\nmodels: {'*': up}\n"
        f"ledger: 'sqlite:///{path}'\nclients:\n{listed}"
    )
    clock = Clock()
    clock.advance(1_000_000)
    store = SignInStore(SQLLedger(Database(LedgerURL.sqlite(path)), clock, Inline()))
    now = clock.seconds()
    token = "ccpx_at_" + "t" * 43
    store.tables.newDevice(digestOf("dc"), "BCDF-GHJK", None, now, now + 600)
    store.tables.decide("BCDF-GHJK", "c7", now)
    store.tables.poll(
        digestOf("dc"), now, 5, Issued(digestOf(token), "r", "f"), now + 9e6, now + 9e6
    )
    return config, SignIn(store, clock), token


def measure(check: Any, rounds: int) -> float:
    start = time.process_time()
    for _ in range(rounds):
        check()
    return (time.process_time() - start) / rounds * 1e6


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=2000)
    parser.add_argument("--blocks", type=int, default=15)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as directory:
        config, signIn, token = build(args.clients, directory)
        key, bearer = Caller(f"key-0042-{'x' * 24}"), Caller(token)

        def identify(caller: Caller) -> None:
            Deferred.fromCoroutine(signIn.identify(caller, config)).addErrback(print)  # type: ignore[arg-type]

        def uncached() -> None:
            signIn.cache.clear()
            identify(bearer)

        kinds = {
            "client key": lambda: identify(key),
            "token, cached": lambda: identify(bearer),
            "token, SQLite lookup": uncached,
        }
        found: dict[str, list[float]] = {name: [] for name in kinds}
        for _ in range(args.blocks):
            for name, check in kinds.items():
                found[name].append(measure(check, args.rounds))
        signIn.store.ledger.database.close()  # type: ignore[union-attr]
    print(f"{args.clients} clients, {args.blocks} blocks of {args.rounds} checks (CPU µs each)")
    for name, values in found.items():
        print(f"  {name:22} median {statistics.median(values):7.1f}   min {min(values):7.1f}")


if __name__ == "__main__":
    main()
