"""The ledger's SQL, for SQLite and PostgreSQL: the schema, a batch of rows in,
spend and usage out.

Everything here blocks: it runs on the ledger's own thread (`ccproxy.ledger.worker`)
in the daemon, and directly in `python -m ccproxy usage`. One `Database` holds one
connection, opened on first use and dropped after any error, so the next call
connects again: a database that went away is found again when it returns.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from attrs import frozen

from ccproxy.config.ledger import POSTGRESQL, SQLITE, LedgerURL
from ccproxy.ledger.model import Group, Row, Tally, Usage, gather

SCHEMA_VERSION = 2
"""The version this release writes; a later release migrates from the one it finds.
2: the sign-in tables (`ccproxy.ledger.signin`)."""
TABLE = "ccproxy_ledger"
VERSION_TABLE = "ccproxy_schema"
TOKENS_TABLE = "ccproxy_tokens"
DEVICE_TABLE = "ccproxy_device_codes"
_ADVISORY_LOCK = 0x63637078  # "ccpx": two daemons starting at once make the schema once
_DAY = 86400

_COLUMNS = (
    "request_id",
    "started",
    "client",
    "model",
    "route",
    "upstream",
    "upstream_model",
    "stream",
    "status",
    "error_type",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "cost",
    "priced",
    "ttfb_ms",
    "duration_ms",
)


class SchemaTooNew(Exception):
    """The database was made by a newer ccproxy: this one does not write to it."""


class NoLedger(Exception):
    """No ledger there yet (a reader does not make one)."""


@frozen
class Dialect:
    """What the SQL says differently on each database."""

    kind: str
    param: str
    """The driver's placeholder."""
    real: str
    integer: str
    boolean: str
    day: str
    """The UTC day number of a row (Unix time has no leap seconds: a day is 86400)."""


DIALECTS = {
    SQLITE: Dialect(
        SQLITE, "?", "REAL", "INTEGER", "INTEGER", f"CAST(started / {_DAY} AS INTEGER)"
    ),
    POSTGRESQL: Dialect(
        POSTGRESQL,
        "%s",
        "DOUBLE PRECISION",
        "BIGINT",
        "BOOLEAN",
        f"CAST(floor(started / {_DAY}) AS BIGINT)",
    ),
}


def connect(url: LedgerURL, timeout: float) -> Any:
    """A connection in autocommit mode; batches are explicit transactions."""
    if url.kind == SQLITE:
        # WAL lets `python -m ccproxy usage` and a second daemon read while this
        # one writes.
        connection = sqlite3.connect(
            url.target, timeout=timeout, isolation_level=None, check_same_thread=False
        )
        connection.execute("PRAGMA journal_mode=WAL")
        return connection
    import psycopg

    # Keepalives and a user timeout bound a call to a host that vanished (a pulled
    # cable answers nothing, ever); the options written in the URL win.
    options: dict[str, Any] = {
        "connect_timeout": max(1, round(timeout)),
        "keepalives": 1,
        "keepalives_idle": 10,
        "keepalives_interval": 5,
        "keepalives_count": 3,
        "tcp_user_timeout": int(timeout * 1000),
        "application_name": "ccproxy",
    }
    options.update(parse_qsl(urlsplit(url.target).query))
    return psycopg.connect(url.target, autocommit=True, **options)


@contextmanager
def transaction(kind: str, connection: Any, schema: bool = False) -> Iterator[None]:
    """A transaction; with `schema`, one that holds the schema's lock (two daemons
    starting at once make the schema once)."""
    if kind == POSTGRESQL:
        with connection.transaction():
            if schema:
                connection.execute("SELECT pg_advisory_xact_lock(%s)", (_ADVISORY_LOCK,))
            yield
        return
    connection.execute("BEGIN IMMEDIATE")  # the write lock, at once
    try:
        yield
    except BaseException:
        connection.execute("ROLLBACK")
        raise
    connection.execute("COMMIT")


class Database:
    """One connection to the ledger's database, used from one thread at a time."""

    def __init__(self, url: LedgerURL, timeout: float = 5.0, create: bool = True) -> None:
        """`timeout`: seconds to connect (PostgreSQL), or to wait for a lock (SQLite);
        `create`: make the database and its schema when they are not there (the
        daemon), else raise `NoLedger` (a reader, `python -m ccproxy usage`)."""
        self.url = url
        self.timeout = timeout
        self.create = create
        self.dialect = DIALECTS[url.kind]
        self._connection: Any = None
        self._insert = (
            f"INSERT INTO {TABLE} ({', '.join(_COLUMNS)}) VALUES "
            f"({', '.join([self.dialect.param] * len(_COLUMNS))}) "
            "ON CONFLICT (request_id) DO NOTHING"
        )

    def open(self) -> Any:
        """The connection, made (and the schema checked, or created) if there is none."""
        if self._connection is None:
            if not self.create and self.url.kind == SQLITE and not os.path.exists(self.url.target):
                raise NoLedger(f"there is no ledger at {self.url.target} yet")
            connection = connect(self.url, self.timeout)
            try:
                self._ensureSchema(connection)
            except BaseException:
                connection.close()
                raise
            self._connection = connection
        return self._connection

    def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            try:
                connection.close()
            except Exception:  # closing a broken connection may fail too
                pass

    @contextmanager
    def _using(self) -> Iterator[Any]:
        """The connection, dropped after an error (the next call connects again)."""
        try:
            yield self.open()
        except BaseException:
            self.close()
            raise

    def _ensureSchema(self, connection: Any) -> None:
        d = self.dialect
        if not self.create:
            self._checkSchema(connection)
            return
        with transaction(d.kind, connection, schema=True):
            cursor = connection.cursor()
            cursor.execute(f"CREATE TABLE IF NOT EXISTS {VERSION_TABLE} (version {d.integer})")
            cursor.execute(f"SELECT max(version) FROM {VERSION_TABLE}")
            found = cursor.fetchone()[0]
            if found is None:
                for statement in self._schema() + self._signInSchema():
                    cursor.execute(statement)
                cursor.execute(
                    f"INSERT INTO {VERSION_TABLE} (version) VALUES ({d.param})", (SCHEMA_VERSION,)
                )
            elif found < SCHEMA_VERSION:  # 1 -> 2: the sign-in tables
                for statement in self._signInSchema():
                    cursor.execute(statement)
                cursor.execute(
                    f"INSERT INTO {VERSION_TABLE} (version) VALUES ({d.param})", (SCHEMA_VERSION,)
                )
            elif found > SCHEMA_VERSION:
                raise SchemaTooNew(
                    f"the ledger's schema is version {found}, made by a newer ccproxy "
                    f"(this one knows version {SCHEMA_VERSION}): upgrade this ccproxy"
                )

    def _checkSchema(self, connection: Any) -> None:
        """What a reader checks: a schema is there, of a version it can read."""
        cursor = connection.cursor()
        try:
            cursor.execute(f"SELECT max(version) FROM {VERSION_TABLE}")
        except Exception:
            raise NoLedger(f"there is no ledger in {self.url} yet") from None
        found = cursor.fetchone()[0]
        if found is None:
            raise NoLedger(f"there is no ledger in {self.url} yet")
        if found > SCHEMA_VERSION:
            raise SchemaTooNew(
                f"the ledger's schema is version {found}, made by a newer ccproxy: upgrade"
            )

    def _schema(self) -> list[str]:
        d = self.dialect
        return [
            f"""CREATE TABLE {TABLE} (
                request_id TEXT PRIMARY KEY,
                started {d.real} NOT NULL,
                client TEXT NOT NULL,
                model TEXT NOT NULL,
                route TEXT,
                upstream TEXT,
                upstream_model TEXT,
                stream {d.boolean} NOT NULL,
                status {d.integer} NOT NULL,
                error_type TEXT,
                input_tokens {d.integer} NOT NULL,
                output_tokens {d.integer} NOT NULL,
                cache_read_tokens {d.integer} NOT NULL,
                cache_write_tokens {d.integer} NOT NULL,
                cost {d.real} NOT NULL,
                priced {d.boolean},
                ttfb_ms {d.integer},
                duration_ms {d.integer}
            )""",
            f"CREATE INDEX {TABLE}_started ON {TABLE} (started)",
            f"CREATE INDEX {TABLE}_client_started ON {TABLE} (client, started)",
        ]

    def _signInSchema(self) -> list[str]:
        """Tokens (by the SHA-256 of their value: the value itself is never kept)
        and device codes, shared by every process and host using this database."""
        d = self.dialect
        return [
            f"""CREATE TABLE {TOKENS_TABLE} (
                digest TEXT PRIMARY KEY,
                kind TEXT NOT NULL,
                client TEXT NOT NULL,
                family TEXT NOT NULL,
                surface TEXT,
                issued {d.real} NOT NULL,
                expires {d.real} NOT NULL,
                revoked {d.real}
            )""",
            f"CREATE INDEX {TOKENS_TABLE}_family ON {TOKENS_TABLE} (family)",
            f"CREATE INDEX {TOKENS_TABLE}_client ON {TOKENS_TABLE} (client)",
            f"""CREATE TABLE {DEVICE_TABLE} (
                digest TEXT PRIMARY KEY,
                user_code TEXT NOT NULL UNIQUE,
                surface TEXT,
                issued {d.real} NOT NULL,
                expires {d.real} NOT NULL,
                last_poll {d.real},
                client TEXT,
                state TEXT NOT NULL
            )""",
        ]

    @contextmanager
    def using(self) -> Iterator[Any]:
        """The connection, for the other modules' SQL (`ccproxy.ledger.signin`)."""
        with self._using() as connection:
            yield connection

    def write(self, rows: Sequence[Row]) -> int:
        """Store `rows` in one transaction (a row already there is kept: a batch
        whose commit was not acknowledged can be sent again). Connects first if
        needed, so an empty batch checks the database and its schema."""
        with self._using() as connection:
            if rows:
                with transaction(self.dialect.kind, connection):
                    connection.cursor().executemany(self._insert, [_values(r) for r in rows])
        return len(rows)

    def spent(self, client: str, since: float, until: float | None) -> tuple[int, float]:
        """(tokens as budgets count them, cost) of `client`'s rows in [since, until)."""
        where, params = self._span(since, until)
        query = (
            "SELECT CAST(COALESCE(sum(input_tokens + output_tokens + cache_write_tokens), 0) "
            f"AS {self.dialect.integer}), COALESCE(sum(cost), 0) FROM {TABLE} "
            f"WHERE client = {self.dialect.param} AND {where}"
        )
        with self._using() as connection:
            cursor = connection.cursor()
            cursor.execute(query, (client, *params))
            tokens, cost = cursor.fetchone()
        return int(tokens), float(cost)

    def usage(self, since: float, until: float | None, client: str | None = None) -> Usage:
        """Totals by client, model (route) and UTC day of the rows in [since, until)."""
        d = self.dialect
        where, params = self._span(since, until)
        if client is not None:
            where += f" AND client = {d.param}"
            params.append(client)
        total = f"CAST(sum({{}}) AS {d.integer})"
        failed = "CASE WHEN status >= 400 OR error_type IS NOT NULL THEN 1 ELSE 0 END"
        grouped = (
            f"SELECT client, COALESCE(route, '-'), {d.day}, count(*), {total.format(failed)}, "
            f"{total.format('input_tokens')}, {total.format('output_tokens')}, "
            f"{total.format('cache_read_tokens')}, {total.format('cache_write_tokens')}, "
            f"sum(cost) FROM {TABLE} WHERE {where} GROUP BY 1, 2, 3"
        )
        unpriced = (
            f"SELECT DISTINCT upstream_model FROM {TABLE} WHERE {where} "
            f"AND priced = {d.param} AND upstream_model IS NOT NULL "
            "AND input_tokens + output_tokens + cache_read_tokens + cache_write_tokens > 0"
        )
        with self._using() as connection:
            cursor = connection.cursor()
            cursor.execute(grouped, params)
            groups = [
                Group(
                    name,
                    model,
                    dayName(int(day) * _DAY),
                    Tally(*(int(n) for n in counts), float(cost)),
                )
                for name, model, day, *counts, cost in cursor.fetchall()
            ]
            cursor.execute(unpriced, (*params, False))
            models = sorted(row[0] for row in cursor.fetchall())
        return Usage(gather(groups), tuple(models))

    def _span(self, since: float, until: float | None) -> tuple[str, list[Any]]:
        p = self.dialect.param
        if until is None:
            return f"started >= {p}", [since]
        return f"started >= {p} AND started < {p}", [since, until]


def dayName(moment: float) -> str:
    """The UTC day of Unix time `moment`, as YYYY-MM-DD."""
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%d")


def _values(row: Row) -> tuple[Any, ...]:
    return (
        row.requestId,
        row.time,
        row.client,
        row.model,
        row.route,
        row.upstream,
        row.upstreamModel,
        row.stream,
        row.status,
        row.errorType,
        row.inputTokens,
        row.outputTokens,
        row.cacheReadTokens,
        row.cacheWriteTokens,
        row.cost,
        row.priced,
        row.ttfbMs,
        row.durationMs,
    )
