"""`python -m ccproxy usage`: the ledger's totals for people, read from a real
SQLite ledger the test writes, by client, model or day, as a table, CSV or JSON."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import orjson
import pytest

from ccproxy.__main__ import main
from ccproxy.config.ledger import LedgerURL
from ccproxy.ledger.cli import _budgets
from ccproxy.ledger.sql import Database
from tests.test_ledger import row

NOW = datetime(2026, 3, 15, 12, tzinfo=UTC).timestamp()
DAY = 86400.0

CONFIG = """
ledger: "sqlite:///{path}"
currency: EUR
upstreams:
  up: {{url: "http://127.0.0.1:9/v1"}}
models:
  claude-*: up/big-model
"""


@pytest.fixture(name="config")
def configFixture(tmp_path: Path) -> Path:
    """A config whose ledger holds five rows: alice's two this month and one last
    month, bob's two (one unpriced and failed) this month."""
    ledger = tmp_path / "ccproxy.db"
    Database(LedgerURL.sqlite(str(ledger))).write(
        [
            row(1, time=NOW - DAY),
            row(2, time=NOW - 40 * DAY),
            row(3, time=NOW),
            row(4, client="bob", time=NOW - DAY, inputTokens=1000, cost=2.25),
            row(
                5,
                client="bob",
                time=NOW,
                upstreamModel="free",
                priced=False,
                cost=0.0,
                route="passthrough",
                status=502,
                errorType="api_error",
            ),
        ]
    )
    path = tmp_path / "ccproxy.yaml"
    path.write_text(CONFIG.format(path=ledger))
    return path


def usage(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    status = main(["usage", *args])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_a_table_by_client_for_the_current_month(
    config: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("time.time", lambda: NOW)
    status, out, _ = usage(capsys, "--config", str(config))
    assert status == 0
    lines = out.splitlines()
    assert lines[0] == "usage from 2026-03-01T00:00:00Z to now"
    assert lines[2].split() == [
        "client",
        "requests",
        "errors",
        "input",
        "output",
        "cache",
        "read",
        "cache",
        "write",
        "cost",
        "(EUR)",
    ]
    assert lines[4].split() == ["alice", "2", "0", "20", "10", "0", "4", "1.0000"]
    assert lines[5].split() == ["bob", "2", "1", "1,010", "10", "0", "4", "2.2500"]
    assert lines[7].split() == ["total", "4", "1", "1,030", "20", "0", "8", "3.2500"]
    assert lines[-1] == "no price for: free (counted as 0)"


def test_by_model_and_by_day_for_a_period(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = usage(
        capsys,
        "--config",
        str(config),
        "--since",
        "2026-01-01",
        "--until",
        "2026-03-14",
        "--by",
        "day",
    )
    assert status == 0
    assert "usage from 2026-01-01T00:00:00Z to 2026-03-15T00:00:00Z" in out
    days = [line.split()[0] for line in out.splitlines()[4:-2]]
    assert days == ["2026-02-03", "2026-03-14"]
    status, out, _ = usage(
        capsys, "--config", str(config), "--since", "2026-01-01", "--by", "model"
    )
    assert [line.split()[:2] for line in out.splitlines()[4:6]] == [
        ["claude-*", "4"],
        ["passthrough", "1"],
    ]


def test_csv_and_json(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    since = ("--since", "2026-03-01")
    status, out, _ = usage(capsys, "--config", str(config), *since, "--format", "csv")
    assert status == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [(r["client"], r["requests"], r["cost"], r["currency"]) for r in rows] == [
        ("alice", "2", "1.0", "EUR"),
        ("bob", "2", "2.25", "EUR"),
    ]
    status, out, _ = usage(capsys, "--config", str(config), *since, "--format", "json")
    report = orjson.loads(out)
    assert report["rows"]["bob"]["cache_creation_input_tokens"] == 4
    assert report["total"]["requests"] == 4
    assert report["unpriced"] == ["free"]
    assert "budgets" not in report  # the config sets none


def test_budget_used_per_client_when_the_config_has_budgets(tmp_path: Path) -> None:
    """`clients[].budget` comes with the budgets; the report reads it where it is."""
    database = Database(LedgerURL.sqlite(str(tmp_path / "l.db")))
    database.write([row(1, time=NOW - 3600), row(2, time=NOW - 5 * DAY)])
    config = SimpleNamespace(
        clients=[
            SimpleNamespace(name="alice", budget=SimpleNamespace(tokensPerDay=68, costPerMonth=4)),
            SimpleNamespace(name="bob"),
        ]
    )
    uses = _budgets(database, config, NOW)  # type: ignore[arg-type]
    assert [str(u) for u in uses["alice"]] == ["tokens_per_day 25%", "cost_per_month 25%"]
    assert "bob" not in uses


@pytest.mark.parametrize(
    ("text", "status", "says"),
    [
        (
            'ledger: off\nupstreams: {up: {url: "http://h/v1"}}\nmodels: {"*": up}\n',
            2,
            "ledger is off",
        ),
        ('upstreams: {up: {url: "http://h/v1"}}\nmodels: {"*": up}\n', 1, "there is no ledger at"),
        ("upstreams: 3\n", 2, "upstreams: must be a mapping"),
    ],
)
def test_what_cannot_be_read_is_said_in_one_line(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    text: str,
    status: int,
    says: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "c.yaml"
    path.write_text(text)
    got, out, err = usage(capsys, "--config", str(path))
    assert (got, out) == (status, "")
    assert says in err and "Traceback" not in err
    assert not (tmp_path / "ccproxy.db").exists()  # a reader makes no ledger


def test_a_bad_date_is_said(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = usage(capsys, "--config", str(config), "--since", "last week")
    assert status == 2
    assert "not an ISO date or datetime" in err
