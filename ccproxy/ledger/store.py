"""The ledger as the daemon uses it: rows taken on the reactor thread in
microseconds, written in batches on the ledger's own thread.

`record(row)` only appends to a buffer. A batch goes to the database when it holds
`batchRows` rows or `batchSeconds` after its first row, whichever comes first, one
batch at a time. When the database is slow, locked or down, rows wait in the
buffer (up to `bufferRows`) and the write is tried again with a growing pause;
past the bound, new rows are dropped, counted, and said once. Stopping writes what
is left (SIGTERM's drain waits for it).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any, ClassVar

from attrs import define, field, frozen
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from ccproxy.config.ledger import LedgerURL
from ccproxy.ledger.model import Group, Row, Spend, Tally, Usage, gather
from ccproxy.ledger.sql import Database, dayName
from ccproxy.ledger.worker import Runner, Worker

BATCH_ROWS = 200
BATCH_SECONDS = 1.0
BUFFER_ROWS = 100_000
"""Rows kept while the database is away: at 10 requests a second, almost three
hours, in some 40 MB."""
RETRY_SECONDS = (1.0, 2.0, 5.0, 10.0)
"""Pauses before each new try at a database that failed (the last one repeats)."""
READ_SECONDS = 10.0
"""How long a read (`/v1/usage`, a budget) waits for the database."""
STOP_SECONDS = 10.0
"""How long stopping waits for the last rows to be written."""


class LedgerUnavailable(Exception):
    """The ledger's database did not answer a read."""


@frozen
class LedgerStats:
    """For the metrics: what waits, what was written, what was lost."""

    pending: int
    written: int
    dropped: int
    up: bool


@define
class SQLLedger:
    """A `Ledger` on SQLite or PostgreSQL (`ccproxy.ledger.model.Ledger`).

    `clock`: the reactor (its timers); `runner`: where the database calls run (the
    ledger's `Worker` thread; `Inline` in tests)."""

    database: Database
    clock: Any
    runner: Runner
    batchRows: int = BATCH_ROWS
    batchSeconds: float = BATCH_SECONDS
    bufferRows: int = BUFFER_ROWS
    retrySeconds: tuple[float, ...] = RETRY_SECONDS
    readSeconds: float = READ_SECONDS
    written: int = field(default=0, init=False)
    dropped: int = field(default=0, init=False)
    _buffer: deque[Row] = field(factory=deque, init=False)
    _writing: list[Row] | None = field(default=None, init=False)
    """The batch being written."""
    _timer: IDelayedCall | None = field(default=None, init=False)
    _failures: int = field(default=0, init=False)
    """Writes failed in a row (0: the database is up)."""
    _opened: bool = field(default=False, init=False)
    _running: bool = field(default=False, init=False)
    _dropSaid: bool = field(default=False, init=False)
    _droppedInOutage: int = field(default=0, init=False)
    _settled: list[Deferred[None]] = field(factory=list, init=False)

    log: ClassVar[Logger] = Logger()

    @classmethod
    def at(cls, url: LedgerURL, reactor: Any) -> SQLLedger:
        """The daemon's ledger at `url`, its calls on a thread of its own (see
        `ccproxy.ledger.worker`). Nothing is opened before `start`."""
        return cls(Database(url), reactor, Worker(reactor))

    @property
    def url(self) -> LedgerURL:
        return self.database.url

    def stats(self) -> LedgerStats:
        pending = len(self._buffer) + len(self._writing or ())
        return LedgerStats(pending, self.written, self.dropped, self._failures == 0)

    # -- the service's lifecycle ---------------------------------------------------

    def start(self) -> None:
        """Start the thread and open the database (made, with its schema, on first
        start); a database that is down is tried again, and rows wait for it."""
        self._running = True
        self.runner.start()
        self._flush()

    async def stop(self, seconds: float = STOP_SECONDS) -> None:
        """Write what is left (within `seconds`), then end the thread. Rows that
        could not be written are said in the log, with how many."""
        self._running = False
        waiting = Deferred.fromCoroutine(self._writeAll())
        timer = self.clock.callLater(seconds, waiting.cancel)
        try:
            await waiting
        except CancelledError:
            pass
        finally:
            if timer.active():
                timer.cancel()
            self._cancelTimer()
        lost = len(self._buffer) + len(self._writing or ())
        if lost:
            self.log.error(
                "ledger {url}: {count} rows not written at stop (the database did not take them)",
                url=str(self.url),
                count=lost,
            )
        self._buffer.clear()
        self.runner.run(self.database.close)
        self.runner.stop()

    async def _writeAll(self) -> None:
        """Batch after batch until the buffer is empty or a write fails."""
        while self._buffer or self._writing is not None:
            if self._writing is not None:
                await self._whenSettled()
                continue
            failures = self._failures
            self._cancelTimer()
            self._flush()
            if self._writing is not None:
                await self._whenSettled()
            if self._failures > failures:
                return

    def _whenSettled(self) -> Deferred[None]:
        """Fires when the batch being written has been written, or has failed."""
        waiter: Deferred[None] = Deferred(lambda d: self._settled.remove(d))
        self._settled.append(waiter)
        return waiter

    # -- rows in ---------------------------------------------------------------------

    def record(self, row: Row) -> None:
        """Take a row; never blocks. Past `bufferRows` waiting, it is dropped."""
        if len(self._buffer) >= self.bufferRows:
            self.dropped += 1
            self._droppedInOutage += 1
            if not self._dropSaid:
                self._dropSaid = True
                self.log.error(
                    "ledger {url}: {bound} rows are waiting for the database; new rows are "
                    "dropped until it takes them (counted in ccproxy_ledger_rows_dropped_total)",
                    url=str(self.url),
                    bound=self.bufferRows,
                )
            return
        self._buffer.append(row)
        if self._writing is not None or self._failures or not self._running:
            return  # the batch in flight, or the next retry, takes it
        if len(self._buffer) >= self.batchRows:
            self._cancelTimer()
            self._flush()
        elif self._timer is None:
            self._timer = self.clock.callLater(self.batchSeconds, self._flush)

    def _cancelTimer(self) -> None:
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None

    def _flush(self) -> None:
        """Send the next batch (an empty one opens the database, the first time)."""
        self._timer = None
        if self._writing is not None or (self._opened and not self._buffer):
            return
        batch = [self._buffer.popleft() for _ in range(min(self.batchRows, len(self._buffer)))]
        self._writing = batch
        d = self.runner.run(self.database.write, batch)
        d.addCallbacks(self._written, self._failed, errbackArgs=(batch,))

    def _written(self, count: int) -> None:
        self._writing = None
        self._opened = True
        self.written += count
        if self._failures:
            self.log.info(
                "ledger {url} is back: the rows that waited are being written{dropped_note}",
                url=str(self.url),
                dropped_note=f" ({self._droppedInOutage} were dropped meanwhile)"
                if self._droppedInOutage
                else "",
            )
        self._failures = 0
        self._dropSaid = False
        self._droppedInOutage = 0
        self._settle()
        if self._buffer and self._running:
            if len(self._buffer) >= self.batchRows:
                self._flush()
            elif self._timer is None:
                self._timer = self.clock.callLater(self.batchSeconds, self._flush)

    def _failed(self, failure: Failure, batch: list[Row]) -> None:
        self._writing = None
        self._buffer.extendleft(reversed(batch))
        if self._failures == 0:
            self.log.error(
                "ledger {url} is unavailable ({problem}): rows wait in memory (up to {bound}) "
                "and are written when it is back",
                url=str(self.url),
                problem=_problem(failure),
                bound=self.bufferRows,
            )
        pause = self.retrySeconds[min(self._failures, len(self.retrySeconds) - 1)]
        self._failures += 1
        self._settle()
        if self._running:
            self._cancelTimer()
            self._timer = self.clock.callLater(pause, self._flush)

    def _settle(self) -> None:
        waiters, self._settled = self._settled, []
        for waiter in waiters:
            waiter.callback(None)

    # -- reading -------------------------------------------------------------------

    async def spent(self, client: str, since: float, until: float | None = None) -> Spend:
        """What `client` used in [since, until): the database's rows (every process
        sharing it), and this process's rows still waiting to be written."""
        tokens, cost = await self._read(self.database.spent, client, since, until)
        for row in self._buffer:
            if row.client == client and _within(row.time, since, until):
                tokens += row.budgetTokens
                cost += row.cost
        return Spend(tokens, cost)

    async def usage(
        self, since: float, until: float | None = None, client: str | None = None
    ) -> Usage:
        """Every client's (or one `client`'s) totals by model and UTC day in
        [since, until), the rows waiting to be written included."""
        stored: Usage = await self._read(self.database.usage, since, until, client)
        rows = [
            row
            for row in self._buffer
            if _within(row.time, since, until) and client in (None, row.client)
        ]
        if not rows:
            return stored
        waiting = [Group(r.client, r.route or "-", dayName(r.time), Tally.of(r)) for r in rows]
        unpriced = {row.upstreamModel for row in rows if _unpriced(row)}
        return Usage(
            gather([*stored.groups, *waiting]),
            tuple(sorted(set(stored.unpriced) | {m for m in unpriced if m is not None})),
        )

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """`fn(*args)` on the ledger's thread, as a read is (`_read`): for the
        sign-in tables (`ccproxy.ledger.signin`), which share the database."""
        return await self._read(fn, *args)

    async def _read(self, fn: Callable[..., Any], *args: Any) -> Any:
        """`fn(*args)` on the ledger's thread (after the writes before it), within
        `readSeconds`; `LedgerUnavailable` if the database does not answer."""
        d = self.runner.run(fn, *args)
        timer = self.clock.callLater(self.readSeconds, d.cancel)
        try:
            return await d
        except CancelledError:
            if timer.active():
                raise  # our caller went away
            raise LedgerUnavailable(
                f"the ledger did not answer within {self.readSeconds:g} s"
            ) from None
        except Exception as e:
            raise LedgerUnavailable(f"the ledger is unavailable ({_problem(Failure(e))})") from e
        finally:
            if timer.active():
                timer.cancel()


def _within(moment: float, since: float, until: float | None) -> bool:
    return moment >= since and (until is None or moment < until)


def _unpriced(row: Row) -> bool:
    return row.priced is False and Tally.of(row).tokens + row.cacheReadTokens > 0


def _problem(failure: Failure) -> str:
    """One line saying what went wrong (no traceback: an outage is not a bug)."""
    text = str(failure.value).strip().splitlines()
    return f"{type(failure.value).__name__}: {text[0] if text else ''}".rstrip(": ")
