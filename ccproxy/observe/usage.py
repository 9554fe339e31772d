"""Token and request totals per client and model since start, for the admin.

Kept in the process (not in the config), so a reload does not reset them.
"""

from __future__ import annotations

from typing import Any

from attrs import define


@define
class Totals:
    requests: int = 0
    errors: int = 0
    inputTokens: int = 0
    outputTokens: int = 0
    cacheReadTokens: int = 0

    def asDict(self) -> dict[str, int]:
        return {
            "requests": self.requests,
            "errors": self.errors,
            "input_tokens": self.inputTokens,
            "output_tokens": self.outputTokens,
            "cache_read_input_tokens": self.cacheReadTokens,
        }


class UsageBook:
    """Totals keyed by (client, model), the model as the config routes it (an exact
    name, or a glob's pattern), so the keys are bounded by the config."""

    def __init__(self, startedAt: str) -> None:
        self.startedAt = startedAt
        self._totals: dict[tuple[str, str], Totals] = {}

    def add(self, client: str, model: str, fields: dict[str, Any]) -> None:
        totals = self._totals.setdefault((client, model), Totals())
        totals.requests += 1
        if fields["status"] >= 400 or fields["error_type"]:
            totals.errors += 1
        totals.inputTokens += fields["input_tokens"]
        totals.outputTokens += fields["output_tokens"]
        totals.cacheReadTokens += fields["cache_read_tokens"]

    def report(self) -> dict[str, Any]:
        """`{since, clients: {client: {total, models: {model: totals}}}}`."""
        clients: dict[str, Any] = {}
        for (client, model), totals in sorted(self._totals.items()):
            entry = clients.setdefault(client, {"total": Totals(), "models": {}})
            entry["models"][model] = totals.asDict()
            total = entry["total"]
            total.requests += totals.requests
            total.errors += totals.errors
            total.inputTokens += totals.inputTokens
            total.outputTokens += totals.outputTokens
            total.cacheReadTokens += totals.cacheReadTokens
        for entry in clients.values():
            entry["total"] = entry["total"].asDict()
        return {"since": self.startedAt, "clients": clients}
