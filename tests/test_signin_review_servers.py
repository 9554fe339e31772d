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


def _aliceSignedIn(database: Database) -> SignInTables:
    """`database`'s sign-in tables once alice's code was approved and Claude Code
    collected her tokens: access "a"*64 and refresh "r"*64, of the family "family"."""
    from ccproxy.ledger.signin import Issued

    tables = SignInTables(database)
    tables.newDevice("d" * 64, "BCDF-GHJK", None, 1000.0, 1600.0)
    assert tables.decide("BCDF-GHJK", "alice", 1001.0) == "done"
    issued = Issued("a" * 64, "r" * 64, "family")
    assert tables.poll("d" * 64, 1002.0, 5, issued, 9000.0, 90000.0).outcome == "issued"
    return tables


def _urlOf(connection: object) -> str:
    info = connection.info  # type: ignore[attr-defined]
    return f"postgresql://{info.user}@{info.host}:{info.port}/{info.dbname}"


def test_a_refresh_racing_a_revocation_issues_no_live_token(postgres: PostgresServer) -> None:
    """`tokens revoke alice` (or a sign-out) through one daemon while another
    refreshes alice's token: the refresh read the token unrevoked, waited on the
    revocation's row lock, then extended it and stored a new access token anyway,
    one that was never revoked and worked for its whole life."""
    from ccproxy.ledger.signin import REFRESH
    from ccproxy.ledger.sql import TOKENS_TABLE

    url = LedgerURL("postgresql", postgres.createDatabase("refresh"))
    first, second = Database(url), Database(url)
    try:
        tables = _aliceSignedIn(first)
        outcome: list[object] = []
        with second.using() as other:
            with other.transaction():  # the revocation, not committed yet
                other.execute(
                    f"UPDATE {TOKENS_TABLE} SET revoked = 1003 WHERE family = 'family' "
                    "AND revoked IS NULL"
                )
                racing = threading.Thread(
                    target=lambda: outcome.append(
                        tables.refresh("r" * 64, "b" * 64, 1004.0, 9000.0, 90000.0)
                    )
                )
                racing.start()
                _waitForLockWait(other, racing)
            racing.join(30)
        assert outcome == [None]
        fresh = tables.token("b" * 64)
        assert fresh is None or fresh.revoked is not None
        assert tables.token("r" * 64).kind == REFRESH  # type: ignore[union-attr]
    finally:
        first.close()
        second.close()


def test_a_revocation_racing_a_refresh_revokes_the_token_it_made(postgres: PostgresServer) -> None:
    """The other order: the refresh holds its row and has stored a new access token
    when the revocation starts. The revocation's UPDATE waits for that row, but its
    snapshot was taken before the new token was committed: it must still end it."""
    from ccproxy.ledger.sql import TOKENS_TABLE

    url = LedgerURL("postgresql", postgres.createDatabase("revoke"))
    first, second = Database(url), Database(url)
    try:
        tables = _aliceSignedIn(first)
        refresher = SignInTables(second)
        outcome: list[int] = []
        with second.using() as other:
            with other.transaction():  # a refresh under way: its row held, its token stored
                other.execute(
                    f"UPDATE {TOKENS_TABLE} SET expires = 99999 WHERE digest = %s", ("r" * 64,)
                )
                refresher._insert(
                    other.cursor(), "b" * 64, "access", "alice", "family", None, 1004.0, 9000.0
                )
                racing = threading.Thread(
                    target=lambda: outcome.append(tables.revoke("a" * 64, 1005.0))
                )
                racing.start()
                _waitForLockWait(other, racing)
            racing.join(30)
        assert outcome and outcome[0] >= 2
        fresh = tables.token("b" * 64)
        assert fresh is not None and fresh.revoked is not None
    finally:
        first.close()
        second.close()
