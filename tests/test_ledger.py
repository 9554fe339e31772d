"""The ledger on a real SQLite file: rows batched off the request path, kept while
the database is locked, bounded, flushed at stop; and `/v1/usage` read from it.

The ledger's database calls run inline here (`Inline`), so every timer is on a
`Clock`; the daemon runs them on its own thread (test_ledger_servers.py)."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent

from ccproxy.config import Config, ConfigError
from ccproxy.config.ledger import LedgerURL, defaultLedger, ledgerProblem
from ccproxy.ledger.model import Row, Spend
from ccproxy.ledger.sql import SCHEMA_VERSION, Database
from ccproxy.ledger.store import LedgerUnavailable, SQLLedger
from ccproxy.ledger.worker import Inline, Worker
from tests.support.fakes import completion, jsonReply, sseReply
from tests.support.harness import BASE_CONFIG, Harness, message, resultOf
from tests.test_disconnect import connect, hangUp


def row(i: int = 0, client: str = "alice", time: float = 100.0, **extra: Any) -> Row:
    fields: dict[str, Any] = {
        "time": time,
        "requestId": f"req_{i}",
        "client": client,
        "model": "claude-sonnet-4-5",
        "upstream": "up",
        "upstreamModel": "big-model",
        "stream": True,
        "status": 200,
        "errorType": None,
        "inputTokens": 10,
        "outputTokens": 5,
        "cacheWriteTokens": 2,
        "cost": 0.5,
        "route": "claude-*",
        "priced": True,
        **extra,
    }
    return Row(**fields)


def stored(path: Path) -> list[tuple[Any, ...]]:
    with sqlite3.connect(path) as connection:
        return connection.execute(
            "SELECT request_id, client, input_tokens, cache_write_tokens, cost "
            "FROM ccproxy_ledger ORDER BY request_id"
        ).fetchall()


def ledgerAt(path: Path, clock: Clock, **kw: Any) -> SQLLedger:
    return SQLLedger(
        Database(LedgerURL.sqlite(str(path)), **kw.pop("db", {})), clock, Inline(), **kw
    )


class Lock:
    """Another connection holding the database's write lock, as a second daemon or
    a backup would."""

    def __init__(self, path: Path) -> None:
        self.connection = sqlite3.connect(path, isolation_level=None)
        self.connection.execute("BEGIN EXCLUSIVE")

    def release(self) -> None:
        self.connection.execute("ROLLBACK")
        self.connection.close()


# -- config -----------------------------------------------------------------------------


def test_the_default_ledger_is_ccproxy_db_where_the_daemon_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    config = Config.fromYAML(BASE_CONFIG, {})
    assert config.ledger == LedgerURL("sqlite", str(tmp_path / "ccproxy.db"))
    assert config.ledger == defaultLedger()


@pytest.mark.parametrize(
    ("written", "expected"),
    [
        ("off", None),
        ("false", None),
        ('"sqlite:///data/l.db"', LedgerURL("sqlite", "{tmp}/data/l.db")),
        ('"sqlite:////var/lib/ccproxy/l.db"', LedgerURL("sqlite", "/var/lib/ccproxy/l.db")),
        ('"postgresql://ccproxy@db:5432/ccproxy"', LedgerURL("postgresql", "{pg}")),
        (
            '"postgres://ccproxy@db/ccproxy"',
            LedgerURL("postgresql", "postgres://ccproxy@db/ccproxy"),
        ),
    ],
)
def test_ledger_urls(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, written: str, expected: LedgerURL | None
) -> None:
    monkeypatch.chdir(tmp_path)
    config = Config.fromYAML(BASE_CONFIG + f"ledger: {written}\n", {})
    if expected is not None:
        target = expected.target.format(tmp=tmp_path, pg="postgresql://ccproxy@db:5432/ccproxy")
        expected = LedgerURL(expected.kind, target)
    assert config.ledger == expected


BAD_URLS = {
    '"mysql://x/y"': 'ledger: must be "sqlite:///FILE", "postgresql://…" or off',
    "3": 'ledger: must be "sqlite:///FILE"',
    '"sqlite://relative.db"': "ledger: a SQLite ledger is sqlite:///FILE",
    '"postgresql://u@h/db?password=x"': "ledger: put the password before the host",
    '"postgresql://u@h:99999/db"': "ledger: not a valid URL",
}
"""What is written after `ledger:`, and how the refusal begins."""


@pytest.mark.parametrize(("written", "problem"), BAD_URLS.items())
def test_bad_ledger_urls_name_the_key(written: str, problem: str) -> None:
    with pytest.raises(ConfigError) as e:
        Config.fromYAML(BASE_CONFIG + f"ledger: {written}\n", {})
    assert str(e.value).startswith(problem)


def test_a_password_in_the_ledger_url_is_a_secret_kept_out_of_logs() -> None:
    config = Config.fromYAML(BASE_CONFIG + 'ledger: "postgresql://cc:long%40secret@db/cc"\n', {})
    assert config.ledger is not None
    assert str(config.ledger) == "postgresql://cc:***@db/cc"
    said = config.redactor.redact("with long@secret, or long%40secret")
    assert "secret" not in said
    assert "ledger" in config.literalSecrets


def test_a_sqlite_ledger_in_a_missing_directory_is_refused_before_the_start(
    tmp_path: Path,
) -> None:
    assert ledgerProblem(LedgerURL.sqlite(str(tmp_path / "l.db"))) is None
    problem = ledgerProblem(LedgerURL.sqlite(str(tmp_path / "var/lib/l.db")))
    assert problem is not None and "four slashes" in problem


def test_twistd_refuses_a_ledger_it_could_not_write_with_one_line(tmp_path: Path) -> None:
    from twisted.python.usage import UsageError

    from ccproxy.daemon.tap import Options

    path = tmp_path / "ccproxy.yaml"
    path.write_text(BASE_CONFIG + f'ledger: "sqlite:///{tmp_path}/no/dir/l.db"\n')
    with pytest.raises(UsageError) as e:
        Options().parseOptions(["--config", str(path)])
    assert str(e.value).startswith(
        f"{path}: ledger: the directory {tmp_path}/no/dir does not exist (an absolute path"
    )


# -- rows in --------------------------------------------------------------------------


def test_rows_are_written_a_second_after_the_first_not_on_the_request_path(
    tmp_path: Path,
) -> None:
    clock, path = Clock(), tmp_path / "l.db"
    ledger = ledgerAt(path, clock)
    ledger.start()  # the schema is made on first start
    assert stored(path) == []
    ledger.record(row(1))
    clock.advance(0.5)
    ledger.record(row(2))
    assert stored(path) == []
    clock.advance(0.5)
    assert [r[0] for r in stored(path)] == ["req_1", "req_2"]
    assert ledger.stats().written == 2 and ledger.stats().pending == 0


def test_a_full_batch_is_written_at_once(tmp_path: Path) -> None:
    clock, path = Clock(), tmp_path / "l.db"
    ledger = ledgerAt(path, clock, batchRows=3)
    ledger.start()
    for i in range(7):
        ledger.record(row(i))
    assert len(stored(path)) == 6
    clock.advance(1)
    assert len(stored(path)) == 7


def test_the_schema_version_is_recorded_and_a_newer_one_is_not_written_to(
    tmp_path: Path,
) -> None:
    path = tmp_path / "l.db"
    ledgerAt(path, Clock()).start()
    with sqlite3.connect(path) as connection:
        assert connection.execute("SELECT version FROM ccproxy_schema").fetchall() == [
            (SCHEMA_VERSION,)
        ]
        connection.execute("UPDATE ccproxy_schema SET version = 99")
    clock = Clock()
    ledger = ledgerAt(path, clock)
    ledger.start()
    ledger.record(row(1))
    clock.advance(1)
    assert stored(path) == []
    assert ledger.stats().pending == 1 and not ledger.stats().up


def lockedLedger(tmp_path: Path, **kw: Any) -> tuple[Clock, Path, SQLLedger, Lock]:
    """A started ledger, and a lock on its database (its writes fail at once)."""
    clock, path = Clock(), tmp_path / "l.db"
    ledger = ledgerAt(path, clock, db={"timeout": 0.01}, **kw)
    ledger.start()
    return clock, path, ledger, Lock(path)


def test_a_locked_database_keeps_rows_waiting_then_takes_them(tmp_path: Path) -> None:
    clock, path, ledger, lock = lockedLedger(tmp_path)
    with capturedLogs() as events:
        for i in range(3):
            ledger.record(row(i))
        clock.advance(1)
        assert ledger.stats().pending == 3 and not ledger.stats().up
        for pause in (1, 2):  # tried again, and again, with a longer pause
            clock.advance(pause)
        assert ledger.stats().pending == 3
        lock.release()
        clock.advance(5)
    assert [r[0] for r in stored(path)] == ["req_0", "req_1", "req_2"]
    assert ledger.stats().up and ledger.stats().pending == 0
    said = [formatEvent(e) for e in events]
    assert len(said) == 2, said  # said once, and once back
    assert "is unavailable (OperationalError: database is locked)" in said[0]
    assert "is back" in said[1]


def test_past_the_bound_rows_are_dropped_counted_and_said_once(tmp_path: Path) -> None:
    clock, path, ledger, lock = lockedLedger(tmp_path, bufferRows=4)
    with capturedLogs() as events:
        for i in range(7):
            ledger.record(row(i))
        clock.advance(1)
        assert ledger.stats().dropped == 3 and ledger.stats().pending == 4
        lock.release()
        clock.advance(1)
    assert [r[0] for r in stored(path)] == ["req_0", "req_1", "req_2", "req_3"]
    said = [formatEvent(e) for e in events]
    assert len([line for line in said if "dropped" in line]) == 2, said
    assert "4 rows are waiting for the database; new rows are dropped" in said[0]
    assert "(3 were dropped meanwhile)" in said[-1]


def test_stop_writes_what_waits(tmp_path: Path) -> None:
    clock, path = Clock(), tmp_path / "l.db"
    ledger = ledgerAt(path, clock, batchRows=2)
    ledger.start()
    ledger.record(row(1))
    assert stored(path) == []
    for i in range(2, 6):
        ledger.record(row(i))
    from twisted.internet.defer import Deferred

    resultOf(Deferred.fromCoroutine(ledger.stop()))
    assert len(stored(path)) == 5


def test_a_row_sent_twice_is_kept_once(tmp_path: Path) -> None:
    """A batch whose commit was not acknowledged is sent again."""
    database = Database(LedgerURL.sqlite(str(tmp_path / "l.db")))
    assert database.write([row(1), row(2)]) == 2
    database.write([row(2), row(3)])
    assert [r[0] for r in stored(tmp_path / "l.db")] == ["req_1", "req_2", "req_3"]


# -- reading ----------------------------------------------------------------------------


def test_spent_counts_stored_rows_and_those_waiting(tmp_path: Path) -> None:
    clock, path = Clock(), tmp_path / "l.db"
    ledger = ledgerAt(path, clock)
    ledger.start()
    ledger.record(row(1, time=100))
    ledger.record(row(2, time=200))
    ledger.record(row(3, client="bob", time=150))
    clock.advance(1)
    ledger.record(row(4, time=150))  # still waiting
    assert _run(ledger.spent("alice", 100, 200)) == Spend(
        tokens=2 * 17, cost=1.0
    )  # rows 1 and 4: until is excluded
    assert _run(ledger.spent("alice", 0)) == Spend(tokens=3 * 17, cost=1.5)


def _run(coroutine: Any) -> Any:
    from twisted.internet.defer import Deferred

    return resultOf(Deferred.fromCoroutine(coroutine))


def test_usage_by_client_model_and_day_with_the_unpriced_models(tmp_path: Path) -> None:
    clock, path = Clock(), tmp_path / "l.db"
    ledger = ledgerAt(path, clock)
    ledger.start()
    day = 86400.0
    ledger.record(row(1, time=day + 5))
    ledger.record(row(2, time=day + 6, status=502, errorType="api_error"))
    ledger.record(row(3, time=2 * day + 1, upstreamModel="free", priced=False, cost=0.0))
    clock.advance(1)
    ledger.record(row(4, client="bob", time=2 * day + 2, route=None))
    usage = _run(ledger.usage(0))
    keys = [(g.client, g.model, g.day, g.tally.requests, g.tally.errors) for g in usage.groups]
    assert keys == [
        ("alice", "claude-*", "1970-01-02", 2, 1),
        ("alice", "claude-*", "1970-01-03", 1, 0),
        ("bob", "-", "1970-01-03", 1, 0),
    ]
    assert usage.unpriced == ("free",)
    assert _run(ledger.usage(0, 2 * day)).unpriced == ()
    assert [g.client for g in _run(ledger.usage(0, None, "bob")).groups] == ["bob"]


def test_a_read_that_the_database_does_not_answer_is_unavailable(tmp_path: Path) -> None:
    clock = Clock()
    ledger = SQLLedger(
        Database(LedgerURL.sqlite(str(tmp_path / "l.db"))), clock, Worker(clock), readSeconds=3
    )  # never started: nothing answers
    d = _deferred(ledger.usage(0))
    clock.advance(3)
    with pytest.raises(LedgerUnavailable):
        resultOf(d)


def _deferred(coroutine: Any) -> Any:
    from twisted.internet.defer import Deferred

    return Deferred.fromCoroutine(coroutine)


# -- the app ----------------------------------------------------------------------------

PRICED = (
    BASE_CONFIG
    + """
clients:
  - {name: alice, key: alice-key}
  - {name: bob, key: bob-key}
  - {name: root, key: root-key, admin: true}
currency: EUR
prices:
  big-model: {input: 3, output: 15, cache_read: 0.3, cache_write: 3.75}
"""
)


def ledgerHarness(tmp_path: Path, config: str = PRICED) -> tuple[Harness, Path]:
    path = tmp_path / "l.db"
    h = Harness.build(config, ledger=lambda clock: ledgerAt(path, clock))
    assert h.app.ledger is not None
    h.app.ledger.start()
    return h, path


def test_every_messages_request_that_reached_routing_leaves_one_row(tmp_path: Path) -> None:
    h, path = ledgerHarness(tmp_path)
    usage = {
        "prompt_tokens": 1000,
        "completion_tokens": 100,
        "prompt_tokens_details": {"cached_tokens": 400},
    }
    h.upstream.queue(jsonReply(completion("hi", usage=usage)))
    assert h.post(message(), headers={"x-api-key": "alice-key"}).status == 200
    h.post(message(model="gpt-4"), headers={"x-api-key": "alice-key"})  # unrouted: 404
    h.post(b"{", headers={"x-api-key": "alice-key"})  # never reached routing
    h.post(message(), "/v1/messages/count_tokens", headers={"x-api-key": "alice-key"})
    h.clock.advance(1)
    with sqlite3.connect(path) as connection:
        rows = connection.execute(
            "SELECT client, model, route, upstream, upstream_model, stream, status, "
            "input_tokens, output_tokens, cache_read_tokens, cost, priced FROM ccproxy_ledger "
            "ORDER BY status"
        ).fetchall()
    cost = (600 * 3 + 100 * 15 + 400 * 0.3) / 1_000_000
    served = ("alice", "claude-sonnet-4-5", "claude-*", "up", "big-model", 0, 200, 600, 100, 400)
    assert rows == [
        (*served, pytest.approx(cost), 1),
        ("alice", "gpt-4", None, None, None, 0, 404, 0, 0, 0, 0.0, 0),
    ]


def test_a_stream_cut_by_its_client_leaves_its_row_with_what_was_counted(
    tmp_path: Path,
) -> None:
    h, path = ledgerHarness(tmp_path, BASE_CONFIG)
    usage = {"prompt_tokens": 50, "completion_tokens": 1}  # a gateway that counts as it goes
    chunks = [
        {"choices": [{"index": 0, "delta": {"content": f"w{i} "}}], "usage": usage}
        for i in range(10)
    ]
    h.upstream.queue(sseReply(chunks, delay=1))
    channel, transport = connect(h, message(stream=True))
    for _ in range(3):
        h.clock.advance(1)
        h.flush()
    assert b"content_block_delta" in transport.value()
    hangUp(channel)
    h.flush()
    h.clock.advance(1)
    with sqlite3.connect(path) as connection:
        assert connection.execute(
            "SELECT stream, status, error_type, input_tokens, output_tokens, duration_ms "
            "FROM ccproxy_ledger"
        ).fetchall() == [(1, 499, "cancelled", 50, 1, 3000)]


def test_the_access_record_counts_cache_writes(tmp_path: Path) -> None:
    h, path = ledgerHarness(tmp_path)
    usage = {
        "prompt_tokens": 1000,
        "completion_tokens": 10,
        "prompt_tokens_details": {"cached_tokens": 100, "cache_write_tokens": 300},
    }
    h.upstream.queue(jsonReply(completion("hi", usage=usage)))
    answer = h.post(message(), headers={"x-api-key": "alice-key"}).json()
    assert answer["usage"]["cache_creation_input_tokens"] == 300
    assert answer["usage"]["input_tokens"] == 600
    h.clock.advance(1)
    assert stored(path)[0][2:4] == (600, 300)


def test_usage_reads_the_ledger_an_admin_sees_all_a_client_its_own(tmp_path: Path) -> None:
    h, _ = ledgerHarness(tmp_path)
    for key in ("alice-key", "alice-key", "bob-key"):
        h.post(message(), headers={"x-api-key": key})
    h.post(message(model="passthrough"), headers={"x-api-key": "bob-key"})  # no price
    everyone = h.call("GET", "/v1/usage", headers={"x-api-key": "root-key"}).json()
    assert everyone["since"] == "1970-01-01T00:00:00Z" and everyone["until"] is None
    assert everyone["currency"] == "EUR"
    assert set(everyone["clients"]) == {"alice", "bob"}
    alice = everyone["clients"]["alice"]
    assert alice["total"]["requests"] == 2
    assert alice["total"]["cost"] == pytest.approx(2 * (11 * 3 + 7 * 15) / 1_000_000)
    assert set(alice["total"]) >= {"cost", "cache_creation_input_tokens"}
    assert set(everyone["clients"]["bob"]["models"]) == {"claude-*", "passthrough"}
    assert everyone["unpriced"] == ["passthrough"]
    own = h.call("GET", "/v1/usage", headers={"x-api-key": "alice-key"}).json()
    assert own["clients"] == {"alice": alice} and own["unpriced"] == []
    h.clock.advance(1)  # written now: the same answer from the database
    assert h.call("GET", "/v1/usage", headers={"x-api-key": "root-key"}).json() == everyone


@pytest.mark.parametrize(
    ("query", "status", "requests"),
    [
        ("", 200, 2),
        ("?since=1970-01-02", 200, 1),
        ("?until=1970-01-01", 200, 1),  # a date alone counts that whole day
        ("?since=1970-01-01T12:00:00&until=1970-01-02T00:00:00Z", 200, 0),
        ("?since=yesterday", 400, 0),
        ("?since=1970-01-03&until=1970-01-02", 400, 0),
    ],
)
def test_usage_for_a_period(tmp_path: Path, query: str, status: int, requests: int) -> None:
    h, _ = ledgerHarness(tmp_path)
    h.post(message(), headers={"x-api-key": "alice-key"})
    h.clock.advance(86400)
    h.post(message(), headers={"x-api-key": "alice-key"})
    reply = h.call("GET", "/v1/usage" + query, headers={"x-api-key": "root-key"})
    assert reply.status == status
    if status == 200:
        clients = reply.json()["clients"]
        assert clients.get("alice", {"total": {"requests": 0}})["total"]["requests"] == requests


def test_usage_is_503_when_the_ledger_does_not_answer(tmp_path: Path) -> None:
    path = tmp_path / "l.db"
    h = Harness.build(
        PRICED,
        ledger=lambda clock: SQLLedger(
            Database(LedgerURL.sqlite(str(path))), clock, Worker(clock), readSeconds=2
        ),
    )
    d = h.request("GET", "/v1/usage", headers={"x-api-key": "root-key"})
    h.clock.advance(2)
    h.flush()
    reply = resultOf(d)
    assert reply.status == 503
    assert "did not answer within 2 s" in reply.json()["error"]["message"]


def test_the_ledger_metrics(tmp_path: Path) -> None:
    h, _ = ledgerHarness(tmp_path)
    h.post(message(), headers={"x-api-key": "alice-key"})
    text = h.call("GET", "/metrics", headers={"x-api-key": "root-key"}).body.decode()
    assert "ccproxy_ledger_rows_pending 1.0" in text
    h.clock.advance(1)
    text = h.call("GET", "/metrics", headers={"x-api-key": "root-key"}).body.decode()
    assert "ccproxy_ledger_rows_pending 0.0" in text
    assert "ccproxy_ledger_rows_written_total 1.0" in text
    assert "ccproxy_ledger_rows_dropped_total 0.0" in text
    assert "ccproxy_ledger_up 1.0" in text
