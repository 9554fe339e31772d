"""Usage totals per client and model, for `/v1/usage`: read from the ledger, or,
with `ledger: off`, counted in this process since it started.

Both count the same rows (one per Messages request that reached routing) by the
model as the config routes it, and answer in one shape:
`{since, until, currency, clients: {NAME: {total, models: {MODEL: totals}}},
unpriced}`.
"""

from __future__ import annotations

from typing import Any

from ccproxy.ledger.model import NONE, Group, Row, Tally, Usage

MAX_UNPRICED = 64
"""Upstream model names kept as having had no price (a route that passes the
client's name through could otherwise grow the set without end)."""


class UsageBook:
    """Totals keyed by (client, model), the model as the config routes it (an exact
    name, or a glob's pattern), so the keys are bounded by the config. Kept in the
    process (not in the config), so a reload does not reset them."""

    def __init__(self, startedAt: str) -> None:
        self.startedAt = startedAt
        self._totals: dict[tuple[str, str], Tally] = {}
        self._unpriced: set[tuple[str, str]] = set()
        """(client, upstream model)."""

    def add(self, row: Row) -> None:
        key = (row.client, row.route or "-")
        tally = Tally.of(row)
        self._totals[key] = self._totals.get(key, NONE) + tally
        if (
            row.priced is False
            and row.upstreamModel is not None
            and tally.tokens + row.cacheReadTokens
            and len(self._unpriced) < MAX_UNPRICED
        ):
            self._unpriced.add((row.client, row.upstreamModel))

    def usage(self, client: str | None = None) -> Usage:
        """Every client's totals (or one `client`'s), by model, since the start."""
        groups = tuple(
            Group(c, m, "", t) for (c, m), t in sorted(self._totals.items()) if client in (None, c)
        )
        unpriced = {m for c, m in self._unpriced if client in (None, c)}
        return Usage(groups, tuple(sorted(unpriced)))


def report(usage: Usage, since: str, until: str | None, currency: str) -> dict[str, Any]:
    """`/v1/usage`'s answer: `{since, until, currency, clients: {client: {total,
    models: {model: totals}}}, unpriced}`."""
    clients: dict[str, dict[str, Any]] = {}
    for group in usage.groups:
        entry = clients.setdefault(group.client, {"total": NONE, "models": {}})
        entry["models"][group.model] = entry["models"].get(group.model, NONE) + group.tally
        entry["total"] += group.tally
    return {
        "since": since,
        "until": until,
        "currency": currency,
        "clients": {
            name: {
                "total": entry["total"].asDict(),
                "models": {model: t.asDict() for model, t in sorted(entry["models"].items())},
            }
            for name, entry in sorted(clients.items())
        },
        "unpriced": list(usage.unpriced),
    }
