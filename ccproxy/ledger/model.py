"""The ledger's values and its contract: a `Row` per request, `Spend` per period,
and `Usage` (totals by client, model and day) for the people who read it.

Both the ledger (which stores rows) and the budgets (which read a client's spend in
a period) build on these, so they are defined once, here.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

from attrs import evolve, frozen


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
    route: str | None = None
    """What chose the upstream: the `routes:` rule (its name, or `routes.N`), else
    the `models:` entry `model` matched (the name, or the glob's pattern): what
    `/v1/usage` counts by, so that its keys are the config's."""
    priced: bool | None = None
    """Whether `prices:` had a price for the upstream model (None: not known)."""

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


@frozen
class Tally:
    """Totals of some rows."""

    requests: int
    errors: int
    """Rows with a status of 400 or more, or an error type (a stream broken midway)."""
    inputTokens: int
    """Tokens as `Row` counts them: input apart from cache reads and writes."""
    outputTokens: int
    cacheReadTokens: int
    cacheWriteTokens: int
    cost: float
    """In the config's `currency`, as each row was priced when it was written."""

    def __add__(self, other: Tally) -> Tally:
        return Tally(
            self.requests + other.requests,
            self.errors + other.errors,
            self.inputTokens + other.inputTokens,
            self.outputTokens + other.outputTokens,
            self.cacheReadTokens + other.cacheReadTokens,
            self.cacheWriteTokens + other.cacheWriteTokens,
            self.cost + other.cost,
        )

    @classmethod
    def of(cls, row: Row) -> Tally:
        return cls(
            1,
            1 if row.status >= 400 or row.errorType else 0,
            row.inputTokens,
            row.outputTokens,
            row.cacheReadTokens,
            row.cacheWriteTokens,
            row.cost,
        )

    @property
    def tokens(self) -> int:
        """input + output + cache-write, as budgets count them."""
        return self.inputTokens + self.outputTokens + self.cacheWriteTokens

    def asDict(self) -> dict[str, Any]:
        """The JSON shape of `/v1/usage`'s totals."""
        return {
            "requests": self.requests,
            "errors": self.errors,
            "input_tokens": self.inputTokens,
            "output_tokens": self.outputTokens,
            "cache_read_input_tokens": self.cacheReadTokens,
            "cache_creation_input_tokens": self.cacheWriteTokens,
            "cost": round(self.cost, 6),
        }


NONE = Tally(0, 0, 0, 0, 0, 0, 0.0)
"""The totals of no rows."""


@frozen
class Group:
    """The rows of one client, for one model, on one UTC day."""

    client: str
    model: str
    """The route (see `Row.route`)."""
    day: str
    """YYYY-MM-DD, UTC."""
    tally: Tally


@frozen
class Usage:
    """What a span of time held: totals by client, model and day."""

    groups: tuple[Group, ...] = ()
    unpriced: tuple[str, ...] = ()
    """Upstream models that served a row without a price (their cost counts 0)."""

    def only(self, client: str) -> Usage:
        """One client's part."""
        return evolve(self, groups=tuple(g for g in self.groups if g.client == client))


def gather(groups: Iterable[Group]) -> tuple[Group, ...]:
    """`groups` with those of the same client, model and day added up, sorted."""
    totals: dict[tuple[str, str, str], Tally] = {}
    for group in groups:
        key = (group.client, group.model, group.day)
        totals[key] = totals.get(key, NONE) + group.tally
    return tuple(Group(*key, tally) for key, tally in sorted(totals.items()))


class Ledger(Protocol):
    """What the rest of ccproxy asks of a ledger."""

    def record(self, row: Row) -> None:
        """Take a row; never blocks (it is written in a batch later)."""

    async def spent(self, client: str, since: float, until: float | None = None) -> Spend:
        """What `client` used from `since` (Unix seconds) to `until` (now if None)."""
        ...

    async def usage(
        self, since: float, until: float | None = None, client: str | None = None
    ) -> Usage:
        """Every client's (or one `client`'s) totals by model and day from `since`
        to `until` (now if None), with the models that had no price."""
        ...
