"""Defects found reviewing `/login` (issue 16) that need the real PostgreSQL the
tests start: two processes deciding one code at once."""

from __future__ import annotations

import threading
import time

from ccproxy.config.ledger import LedgerURL
from ccproxy.ledger.signin import SignInTables
from ccproxy.ledger.sql import DEVICE_TABLE, Database
from tests.support.postgres import PostgresServer, postgresFixture

__all__ = ["postgresFixture"]


def test_two_approvals_racing_for_one_code_do_not_both_say_done(
    postgres: PostgresServer,
) -> None:
    """Two daemons on one database approve the same code for two clients at once:
    the second's UPDATE finds the code no longer pending and changes nothing, so
    it must not tell its person that Claude Code is signed in as them."""
    url = LedgerURL("postgresql", postgres.createDatabase("decide"))
    first, second = Database(url), Database(url)
    try:
        tables = SignInTables(first)
        tables.newDevice("d" * 64, "BCDF-GHJK", None, 1000.0, 1600.0)
        with second.using() as other:
            with other.transaction():  # bob's approval, not committed yet
                other.execute(
                    f"UPDATE {DEVICE_TABLE} SET state = 'approved', client = 'bob' "
                    "WHERE user_code = 'BCDF-GHJK'"
                )
                outcome: list[str] = []
                racing = threading.Thread(
                    target=lambda: outcome.append(tables.decide("BCDF-GHJK", "alice", 1001.0))
                )
                racing.start()
                _waitForLockWait(other, racing)
            racing.join(30)
        assert outcome == ["decided"]
        with second.using() as other:
            row = other.execute(
                f"SELECT client FROM {DEVICE_TABLE} WHERE user_code = 'BCDF-GHJK'"
            ).fetchone()
        assert row[0] == "bob"
    finally:
        first.close()
        second.close()


def _waitForLockWait(connection: object, racing: threading.Thread) -> None:
    """Until the racing approval waits on bob's row lock (a condition, not a time:
    bounded only so that a broken test ends)."""
    from ccproxy.ledger.sql import connect

    watcher = connect(LedgerURL("postgresql", _urlOf(connection)), 5.0)
    try:
        for _ in range(3000):
            waiting = watcher.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
            ).fetchone()[0]
            if waiting or not racing.is_alive():
                return
            time.sleep(0.01)
    finally:
        watcher.close()


def _urlOf(connection: object) -> str:
    info = connection.info  # type: ignore[attr-defined]
    return f"postgresql://{info.user}@{info.host}:{info.port}/{info.dbname}"
