"""The ledger's values and its contract: a `Row` per request, `Spend` per period.

Both the ledger (which stores rows) and the budgets (which read a client's spend in
a period) build on these, so they are defined once, here.
"""

from __future__ import annotations

from typing import Protocol

from attrs import frozen


@frozen
class Row:
    """One request that reached routing, as it ended."""

    time: float
    """Unix seconds when the request began."""
    requestId: str
    client: str
    """The client's name (`-` without `clients`)."""
    model: str
    """The model the client asked for."""
    upstream: str | None
    upstreamModel: str | None
    stream: bool
    status: int
    errorType: str | None
    inputTokens: int = 0
    outputTokens: int = 0
    cacheReadTokens: int = 0
    cacheWriteTokens: int = 0
    cost: float = 0.0
    """In the config's `currency`, by `prices:` on the upstream model (0 without a price)."""
    ttfbMs: int | None = None
    durationMs: int | None = None

    @property
    def budgetTokens(self) -> int:
        """The tokens a budget counts: input + output + cache-write."""
        return self.inputTokens + self.outputTokens + self.cacheWriteTokens


@frozen
class Spend:
    """What a client used in a span of time."""

    tokens: int = 0
    """input + output + cache-write, as budgets count them."""
    cost: float = 0.0


class Ledger(Protocol):
    """What the rest of ccproxy asks of a ledger."""

    def record(self, row: Row) -> None:
        """Take a row; never blocks (it is written in a batch later)."""

    async def spent(self, client: str, since: float, until: float | None = None) -> Spend:
        """What `client` used from `since` (Unix seconds) to `until` (now if None)."""
        ...
