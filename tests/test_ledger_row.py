"""`AccessRecord.row` fills each of `Row`'s fields from its own part of the record
(it calls `Row` by position: a field added or moved in `Row` fails here)."""

from __future__ import annotations

import attrs

from ccproxy.config.prices import Price, Prices
from ccproxy.ledger.model import Row
from ccproxy.observe.accesslog import AccessRecord

PRICES = Prices(table=(("up-model", Price(input=1e6, output=1e7, cacheRead=1e8, cacheWrite=1e9)),))


def _record() -> AccessRecord:
    record = AccessRecord(requestId="req_9", method="POST", path="/v1/messages", started=1000.0)
    record.client, record.model, record.route = "alice", "claude-x", "rule-1"
    record.upstream, record.upstreamModel, record.stream = "up", "up-model", True
    record.status, record.errorType, record.firstByte = 529, "overloaded_error", 1000.25
    record.inputTokens, record.outputTokens = 11, 22
    record.cacheReadTokens, record.cacheWriteTokens = 33, 44
    return record


def test_each_field_of_the_row_is_its_own() -> None:
    row = _record().row(1001.5, PRICES)
    assert attrs.asdict(row) == {
        "time": 1000.0,
        "requestId": "req_9",
        "client": "alice",
        "model": "claude-x",
        "upstream": "up",
        "upstreamModel": "up-model",
        "stream": True,
        "status": 529,
        "errorType": "overloaded_error",
        "inputTokens": 11,
        "outputTokens": 22,
        "cacheReadTokens": 33,
        "cacheWriteTokens": 44,
        "cost": 11 + 220 + 3300 + 44000,
        "ttfbMs": 250,
        "durationMs": 1500,
        "route": "rule-1",
        "priced": True,
    }
    assert [f.name for f in attrs.fields(Row)] == [
        "time",
        "requestId",
        "client",
        "model",
        "upstream",
        "upstreamModel",
        "stream",
        "status",
        "errorType",
        "inputTokens",
        "outputTokens",
        "cacheReadTokens",
        "cacheWriteTokens",
        "cost",
        "ttfbMs",
        "durationMs",
        "route",
        "priced",
    ]


def test_a_record_without_names_or_head_leaves_dashes_and_nones() -> None:
    record = AccessRecord(requestId="req_0", method="POST", path="/v1/messages", started=5.0)
    row = record.row(5.0, Prices())
    assert (row.client, row.model, row.ttfbMs, row.durationMs, row.priced) == (
        "-",
        "-",
        None,
        0,
        False,
    )
