"""Usage for people: the ledger's totals as a table, CSV or JSON, by client, model
or day, with the budget each client has used (pure: `Usage` in, text out).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from typing import Any

import orjson
from attrs import astuple, frozen

from ccproxy.ledger.model import NONE, Tally, Usage

BY = ("client", "model", "day")
FORMATS = ("table", "csv", "json")


@frozen
class BudgetUse:
    """One budget of one client, and how much of it the current period used."""

    name: str
    """`tokens_per_day`, `tokens_per_month`, `cost_per_day` or `cost_per_month`."""
    limit: float
    used: float

    @property
    def percent(self) -> float:
        return 100.0 * self.used / self.limit if self.limit else 0.0

    def __str__(self) -> str:
        return f"{self.name} {self.percent:.0f}%"


@frozen
class Report:
    """What `python -m ccproxy usage` prints."""

    usage: Usage
    by: str
    since: str
    until: str | None
    currency: str
    budgets: Mapping[str, Sequence[BudgetUse]] = {}
    """Per client with a budget (none: the config sets no budgets)."""

    def lines(self) -> list[tuple[str, Tally]]:
        """(client, model or day, its totals), sorted by the key."""
        totals: dict[str, Tally] = {}
        for group in self.usage.groups:
            key = {"client": group.client, "model": group.model, "day": group.day}[self.by]
            totals[key] = totals.get(key, NONE) + group.tally
        return sorted(totals.items())

    def total(self) -> Tally:
        total = NONE
        for group in self.usage.groups:
            total += group.tally
        return total

    def _budget(self, key: str) -> str:
        return ", ".join(str(b) for b in self.budgets.get(key, ()))

    @property
    def showsBudgets(self) -> bool:
        return self.by == "client" and bool(self.budgets)

    def table(self) -> str:
        head = [self.by, "requests", "errors", "input", "output", "cache read", "cache write"]
        head.append(f"cost ({self.currency})")
        if self.showsBudgets:
            head.append("budget used (this day/month)")
        rows = [self._cells(key, tally) for key, tally in self.lines()]
        rows.append(self._cells("total", self.total(), budget=False))
        widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]

        left = {0, len(head) - 1} if self.showsBudgets else {0}  # words left, numbers right

        def line(cells: Sequence[str]) -> str:
            padded = [
                c.ljust(w) if i in left else c.rjust(w)
                for i, (c, w) in enumerate(zip(cells, widths, strict=True))
            ]
            return "  ".join(padded).rstrip()

        until = self.until or "now"
        out = [f"usage from {self.since} to {until}", "", line(head)]
        out.append("  ".join("-" * w for w in widths))
        out += [line(r) for r in rows[:-1]]
        out.append("  ".join("-" * w for w in widths))
        out.append(line(rows[-1]))
        if self.usage.unpriced:
            out += ["", f"no price for: {', '.join(self.usage.unpriced)} (counted as 0)"]
        return "\n".join(out) + "\n"

    def _cells(self, key: str, t: Tally, budget: bool = True) -> list[str]:
        cells = [key, *(f"{n:,}" for n in _counts(t)), f"{t.cost:,.4f}"]
        if self.showsBudgets:
            cells.append(self._budget(key) if budget else "")
        return cells

    def csv(self) -> str:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        head = [self.by, "requests", "errors", "input_tokens", "output_tokens"]
        head += ["cache_read_input_tokens", "cache_creation_input_tokens", "cost", "currency"]
        if self.showsBudgets:
            head.append("budget_used")
        writer.writerow(head)
        for key, tally in self.lines():
            row: list[Any] = [key, *_counts(tally), round(tally.cost, 6), self.currency]
            if self.showsBudgets:
                row.append(
                    "; ".join(f"{b.name}={b.percent:.1f}%" for b in self.budgets.get(key, ()))
                )
            writer.writerow(row)
        return out.getvalue()

    def json(self) -> str:
        value: dict[str, Any] = {
            "since": self.since,
            "until": self.until,
            "currency": self.currency,
            "by": self.by,
            "rows": {key: tally.asDict() for key, tally in self.lines()},
            "total": self.total().asDict(),
            "unpriced": list(self.usage.unpriced),
        }
        if self.showsBudgets:
            value["budgets"] = {
                client: {
                    b.name: {"limit": b.limit, "used": b.used, "percent": round(b.percent, 1)}
                    for b in uses
                }
                for client, uses in self.budgets.items()
            }
        return orjson.dumps(value, option=orjson.OPT_INDENT_2).decode() + "\n"

    def render(self, form: str) -> str:
        return {"table": self.table, "csv": self.csv, "json": self.json}[form]()


def _counts(t: Tally) -> tuple[int, ...]:
    """Its counts, in field order (all but the cost)."""
    return tuple(astuple(t)[:-1])
