"""A ledger in memory: the `Ledger` contract (`ccproxy.ledger.model`) over a list,
for the tests of what builds on it (budgets). Not the real ledger, which is the
ledger's own tests' business; this one only keeps rows and sums them."""

from __future__ import annotations

from attrs import define, field

from ccproxy.ledger.model import Row, Spend


@define
class MemoryLedger:
    """Rows in a list; `spent` sums a client's rows that began in the span. `fail`
    makes `spent` raise, as a database that is down would."""

    rows: list[Row] = field(factory=list)
    fail: BaseException | None = None
    asked: list[tuple[str, float, float | None]] = field(factory=list)
    """Every `spent` question: (client, since, until)."""

    def record(self, row: Row) -> None:
        self.rows.append(row)

    async def spent(self, client: str, since: float, until: float | None = None) -> Spend:
        self.asked.append((client, since, until))
        if self.fail is not None:
            raise self.fail
        rows = [
            r
            for r in self.rows
            if r.client == client and r.time >= since and (until is None or r.time < until)
        ]
        return Spend(sum(r.budgetTokens for r in rows), sum(r.cost for r in rows))

    def spend(self, client: str, time: float, tokens: int = 0, cost: float = 0.0) -> None:
        """A row of `client` at `time` that used `tokens` (as input) and `cost`."""
        self.record(
            Row(
                time=time,
                requestId=f"req_{len(self.rows)}",
                client=client,
                model="claude-sonnet-4-5",
                upstream="up",
                upstreamModel="big-model",
                stream=False,
                status=200,
                errorType=None,
                inputTokens=tokens,
                cost=cost,
            )
        )
