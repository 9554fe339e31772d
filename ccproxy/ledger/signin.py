"""Sign-ins kept in the ledger's database: device codes waiting for approval, and
the tokens they became.

Why the ledger's database: every process and host sharing it then accepts the
same tokens, sees the same pending codes (a code approved through one daemon is
picked up by a poll that reaches another), and a restart signs nobody out.
Only the SHA-256 of a token or device code is stored; they are 256 random
bits, so the digest cannot be turned back into a value that works.

`SignInTables` is the SQL (blocking: it runs on the ledger's thread, or directly
in `python -m ccproxy tokens`); `SignInStore` is the daemon's face of it, each
call a Deferred on that thread (`SQLLedger.call`), bounded in time.

A sign-in is a *family*: the refresh token and every access token it was
refreshed into. Revoking any of them (sign-out, `tokens revoke`) ends the family.
The refresh token is not rotated: Claude Code processes of one user share one
stored credential, and a rotated token raced between them would sign the user
out; each refresh extends it instead.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from attrs import frozen

from ccproxy.ledger.sql import DEVICE_TABLE, TOKENS_TABLE, Database, transaction
from ccproxy.ledger.store import SQLLedger

T = TypeVar("T")
ACCESS, REFRESH = "access", "refresh"
PENDING, APPROVED, DENIED, USED = "pending", "approved", "denied", "used"
SLOW_FRACTION = 0.8
"""A poll sooner than this part of `interval` after the last one is told to slow down
(a little early is a timer's jitter, not a client that ignores the interval)."""
KEEP_DEVICE_CODES = 86400.0
"""Seconds an expired device code is kept (a late poll still hears `expired_token`)."""


def digestOf(secret: str) -> str:
    """How a token or device code is stored and looked up."""
    return hashlib.sha256(secret.encode("utf-8", "surrogateescape")).hexdigest()


@frozen
class TokenRow:
    """A stored token, as a lookup finds it."""

    kind: str
    client: str
    family: str
    expires: float
    revoked: float | None


@frozen
class Issued:
    """A pair of new tokens' digests, made by the caller (who keeps the values)."""

    access: str
    refresh: str
    family: str


@frozen
class Poll:
    """What a device-code poll found: `outcome` is `pending`, `slow_down`,
    `denied`, `expired`, `invalid` (unknown, or already used) or `issued` (with the
    client the code was approved for)."""

    outcome: str
    client: str | None = None
    surface: str | None = None


@frozen
class SignInSummary:
    """`python -m ccproxy tokens list`: one client's live sign-ins."""

    client: str
    signIns: int
    lastIssued: float
    expires: float


class SignInTables:
    """The sign-in SQL on one `Database` (one connection, one thread at a time)."""

    def __init__(self, database: Database) -> None:
        self.database = database
        self.p = database.dialect.param

    @contextmanager
    def _transaction(self) -> Iterator[Any]:
        with self.database.using() as connection:
            with transaction(self.database.dialect.kind, connection):
                yield connection.cursor()

    # -- device codes ----------------------------------------------------------------

    def newDevice(
        self, digest: str, userCode: str, surface: str | None, now: float, expires: float
    ) -> bool:
        """Store a pending code; False when its user code is taken (the caller draws
        another). Codes long expired are cleared on the way."""
        p = self.p
        with self._transaction() as cursor:
            cursor.execute(
                f"DELETE FROM {DEVICE_TABLE} WHERE expires < {p}", (now - KEEP_DEVICE_CODES,)
            )
            cursor.execute(f"SELECT 1 FROM {DEVICE_TABLE} WHERE user_code = {p}", (userCode,))
            if cursor.fetchone() is not None:
                return False
            cursor.execute(
                f"INSERT INTO {DEVICE_TABLE} (digest, user_code, surface, issued, expires, "
                f"last_poll, client, state) VALUES ({p}, {p}, {p}, {p}, {p}, NULL, NULL, {p})",
                (digest, userCode, surface, now, expires, PENDING),
            )
        return True

    def decide(self, userCode: str, client: str | None, now: float) -> str:
        """Approve a pending, unexpired code for `client` (None: deny it). Returns
        `done`, `unknown` (no such code, or expired) or `decided` (already)."""
        p = self.p
        with self._transaction() as cursor:
            cursor.execute(
                f"SELECT state, expires FROM {DEVICE_TABLE} WHERE user_code = {p}", (userCode,)
            )
            found = cursor.fetchone()
            if found is None or now >= found[1]:
                return "unknown"
            if found[0] != PENDING:
                return "decided"
            cursor.execute(
                f"UPDATE {DEVICE_TABLE} SET state = {p}, client = {p} "
                f"WHERE user_code = {p} AND state = {p}",
                (APPROVED if client else DENIED, client, userCode, PENDING),
            )
            if cursor.rowcount != 1:  # decided through another process meanwhile
                return "decided"
        return "done"

    def poll(
        self,
        digest: str,
        now: float,
        interval: float,
        issued: Issued,
        accessExpires: float,
        refreshExpires: float,
    ) -> Poll:
        """A token-endpoint poll for a device code. An approved code is used up
        here, in the same transaction that stores `issued`: it yields tokens once."""
        p = self.p
        with self._transaction() as cursor:
            found = _first(
                cursor,
                f"SELECT state, expires, last_poll, client, surface FROM {DEVICE_TABLE} "
                f"WHERE digest = {p}",
                digest,
            )
            if found is None or found[0] == USED:
                return Poll("invalid")
            state, expires, lastPoll, client, surface = found
            if now >= expires:
                return Poll("expired")
            if state == DENIED:
                return Poll("denied")
            if state == PENDING:
                cursor.execute(
                    f"UPDATE {DEVICE_TABLE} SET last_poll = {p} WHERE digest = {p}", (now, digest)
                )
                if lastPoll is not None and now - lastPoll < interval * SLOW_FRACTION:
                    return Poll("slow_down")
                return Poll(PENDING)
            cursor.execute(
                f"UPDATE {DEVICE_TABLE} SET state = {p} WHERE digest = {p} AND state = {p}",
                (USED, digest, APPROVED),
            )
            if cursor.rowcount != 1:
                return Poll("invalid")
            self._insert(
                cursor, issued.access, ACCESS, client, issued.family, surface, now, accessExpires
            )
            self._insert(
                cursor, issued.refresh, REFRESH, client, issued.family, surface, now, refreshExpires
            )
        return Poll("issued", client, surface)

    def _insert(
        self,
        cursor: Any,
        digest: str,
        kind: str,
        client: str,
        family: str,
        surface: str | None,
        now: float,
        expires: float,
    ) -> None:
        p = self.p
        cursor.execute(
            f"INSERT INTO {TOKENS_TABLE} (digest, kind, client, family, surface, issued, "
            f"expires, revoked) VALUES ({p}, {p}, {p}, {p}, {p}, {p}, {p}, NULL)",
            (digest, kind, client, family, surface, now, expires),
        )

    # -- tokens ----------------------------------------------------------------------

    def token(self, digest: str) -> TokenRow | None:
        with self.database.using() as connection:
            return self._token(connection.cursor(), digest)

    def _token(self, cursor: Any, digest: str) -> TokenRow | None:
        found = _first(
            cursor,
            f"SELECT kind, client, family, expires, revoked FROM {TOKENS_TABLE} "
            f"WHERE digest = {self.p}",
            digest,
        )
        return None if found is None else TokenRow(*found)

    def refresh(
        self,
        refreshDigest: str,
        accessDigest: str,
        now: float,
        accessExpires: float,
        refreshExpires: float,
    ) -> TokenRow | None:
        """A new access token in the refresh token's family, and the refresh token's
        life extended; None when it is unknown, revoked or expired."""
        p = self.p
        with self._transaction() as cursor:
            row = self._token(cursor, refreshDigest)
            if row is None:
                return None
            if row.kind != REFRESH or row.revoked is not None or now >= row.expires:
                return None
            # Still unrevoked, as the lock this takes sees it: a revocation committed
            # since the read above (another process) leaves no row to extend.
            cursor.execute(
                f"UPDATE {TOKENS_TABLE} SET expires = {p} "
                f"WHERE digest = {p} AND revoked IS NULL AND expires > {p}",
                (refreshExpires, refreshDigest, now),
            )
            if cursor.rowcount != 1:
                return None
            self._insert(
                cursor, accessDigest, ACCESS, row.client, row.family, None, now, accessExpires
            )
        return row

    def revoke(self, digest: str, now: float) -> int:
        """End the sign-in `digest` belongs to; the tokens revoked (0: unknown)."""
        p = self.p
        with self._transaction() as cursor:
            cursor.execute(f"SELECT family FROM {TOKENS_TABLE} WHERE digest = {p}", (digest,))
            found = cursor.fetchone()
            if found is None:
                return 0
            query = (
                f"UPDATE {TOKENS_TABLE} SET revoked = {p} WHERE family = {p} AND revoked IS NULL"
            )
            return _revokeAll(cursor, query, (now, found[0]))

    def revokeClient(self, client: str, now: float) -> int:
        """End every sign-in of `client`, those it approved but whose tokens were
        not yet collected too (their poll is denied); the sign-ins ended."""
        p = self.p
        with self._transaction() as cursor:
            cursor.execute(
                f"SELECT count(DISTINCT family) FROM {TOKENS_TABLE} "
                f"WHERE client = {p} AND revoked IS NULL AND expires > {p}",
                (client, now),
            )
            live = int(cursor.fetchone()[0])
            query = (
                f"UPDATE {TOKENS_TABLE} SET revoked = {p} WHERE client = {p} AND revoked IS NULL"
            )
            # The codes first: a poll collecting one in another process holds its
            # row, and the tokens it stores are then seen by the UPDATEs after.
            cursor.execute(
                f"UPDATE {DEVICE_TABLE} SET state = {p} WHERE client = {p} AND state = {p}",
                (DENIED, client, APPROVED),
            )
            _revokeAll(cursor, query, (now, client))
        return live

    def summary(self, now: float) -> list[SignInSummary]:
        """Each client's live sign-ins (refresh tokens neither revoked nor expired)."""
        p = self.p
        with self.database.using() as connection:
            cursor = connection.cursor()
            cursor.execute(
                f"SELECT client, count(*), max(issued), max(expires) FROM {TOKENS_TABLE} "
                f"WHERE kind = {p} AND revoked IS NULL AND expires > {p} "
                "GROUP BY client ORDER BY client",
                (REFRESH, now),
            )
            return [
                SignInSummary(name, int(n), float(issued), float(expires))
                for name, n, issued, expires in cursor.fetchall()
            ]


def _revokeAll(cursor: Any, query: str, args: tuple[Any, ...]) -> int:
    """Run a revoking UPDATE twice; the rows it revoked. A refresh under way in
    another process holds its refresh token's row and has stored a new access
    token: the first UPDATE waits for that row, but (PostgreSQL, read committed)
    its snapshot predates the new token, which it would leave live. The second
    statement's snapshot, taken once the refresh is committed, sees and ends it.
    (SQLite's write lock serializes the two: the second finds nothing.)"""
    cursor.execute(query, args)
    count = int(cursor.rowcount)
    cursor.execute(query, args)
    return count + int(cursor.rowcount)


def _first(cursor: Any, query: str, *args: Any) -> Any:
    """The first row `query` finds (None: none)."""
    cursor.execute(query, args)
    return cursor.fetchone()


class SignInStore:
    """The daemon's sign-in store: `SignInTables`' calls run on the ledger's
    thread (`run(store.tables.poll, …)`), each bounded by the ledger's read
    timeout (`LedgerUnavailable` past it)."""

    def __init__(self, ledger: SQLLedger) -> None:
        self.ledger = ledger
        self.tables = SignInTables(ledger.database)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        found: T = await self.ledger.call(fn, *args)
        return found
