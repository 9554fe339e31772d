"""What tokens cost: `prices:` and `currency:` in the YAML, and the cost of one
request's usage.

Prices are per million tokens and matched on the *upstream* model (what was
actually served), exact names first, then globs in file order, as `models:` is.
A model without a price costs nothing, and says so (`find` is None), so a report
can name the models it could not price.
"""

from __future__ import annotations

from fnmatch import fnmatchcase
from typing import Any

from attrs import frozen

from ccproxy.config.routing import GLOB_CHARS
from ccproxy.config.schema import ConfigError, Node, nonNegativeNumber, string

DEFAULT_CURRENCY = "USD"
PER = 1_000_000


@frozen
class Price:
    """The price of a million tokens of each kind."""

    input: float = 0.0
    output: float = 0.0
    cacheRead: float = 0.0
    cacheWrite: float = 0.0

    def cost(
        self,
        inputTokens: int,
        outputTokens: int,
        cacheReadTokens: int = 0,
        cacheWriteTokens: int = 0,
    ) -> float:
        return (
            inputTokens * self.input
            + outputTokens * self.output
            + cacheReadTokens * self.cacheRead
            + cacheWriteTokens * self.cacheWrite
        ) / PER


@frozen
class Prices:
    """The price table, in one currency."""

    currency: str = DEFAULT_CURRENCY
    table: tuple[tuple[str, Price], ...] = ()
    """(model name or glob, price), in file order."""

    def find(self, model: str) -> Price | None:
        """The price of `model`: its exact name first, then the first glob matching it."""
        for pattern, price in self.table:
            if pattern == model:
                return price
        for pattern, price in self.table:
            if not GLOB_CHARS.isdisjoint(pattern) and fnmatchcase(model, pattern):
                return price
        return None

    def cost(
        self,
        model: str,
        inputTokens: int,
        outputTokens: int,
        cacheReadTokens: int = 0,
        cacheWriteTokens: int = 0,
    ) -> float:
        """What one request's usage cost (0 for a model without a price)."""
        price = self.find(model)
        if price is None:
            return 0.0
        return price.cost(inputTokens, outputTokens, cacheReadTokens, cacheWriteTokens)


_KINDS = (
    ("input", "input"),
    ("output", "output"),
    ("cache_read", "cacheRead"),
    ("cache_write", "cacheWrite"),
)


def parsePrices(root: Node) -> Prices:
    """`currency:` and `prices:` of the top-level mapping."""
    currency = root.get("currency", string, DEFAULT_CURRENCY)
    node = root.node("prices")
    if not isinstance(node.value, dict):
        raise ConfigError(node.path, "must map model names or globs to prices")
    table = []
    for pattern in node.value:
        if not isinstance(pattern, str) or not pattern:
            raise ConfigError(node.at(str(pattern)), "a price is keyed by a model name or glob")
        table.append((pattern, _price(node.node(pattern))))
    return Prices(currency, tuple(table))


def _price(node: Node) -> Price:
    if not isinstance(node.value, dict):
        raise ConfigError(
            node.path, "must be {input, output, cache_read, cache_write} per million tokens"
        )
    values: dict[str, Any] = {
        attribute: node.get(key, nonNegativeNumber, 0.0) for key, attribute in _KINDS
    }
    node.finish()
    return Price(**values)
