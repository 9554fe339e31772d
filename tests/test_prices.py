"""`prices:` and `currency:`, and the UTC periods budgets and reports count in."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from ccproxy.config import Config, ConfigError
from ccproxy.config.periods import DAY, MONTH, periodEnd, periodStart
from ccproxy.config.prices import Price, Prices

BASE = "upstreams: {up: {url: 'http://up.test/v1'}}\nmodels: {'*': up}\n"


def config(extra: str) -> Config:
    return Config.fromYAML(BASE + extra, {})


def test_prices_match_exact_names_then_globs_in_order() -> None:
    prices = config(
        "currency: EUR\nprices:\n"
        "  'gpt-*': {input: 1, output: 2}\n"
        "  gpt-4.1: {input: 2, output: 8, cache_read: 0.5, cache_write: 2.5}\n"
        "  'gpt-4*': {input: 9}\n"
    ).prices
    assert prices.currency == "EUR"
    assert prices.find("gpt-4.1") == Price(2, 8, 0.5, 2.5)  # exact wins over earlier globs
    assert prices.find("gpt-4o") == Price(1, 2)  # the first glob in file order
    assert prices.find("llama") is None
    assert prices.cost("gpt-4.1", 1_000_000, 500_000, 2_000_000, 400_000) == 2 + 4 + 1 + 1
    assert prices.cost("llama", 10**9, 10**9) == 0.0


def test_no_prices_costs_nothing_in_usd() -> None:
    assert config("").prices == Prices()
    assert Prices().currency == "USD"


@pytest.mark.parametrize(
    ("extra", "where"),
    [
        ("prices: [gpt]\n", "prices"),
        ("prices: {gpt: 3}\n", "prices.gpt"),
        ("prices: {gpt: {input: -1}}\n", "prices.gpt.input"),
        ("prices: {gpt: {inptu: 1}}\n", "prices.gpt.inptu"),
    ],
)
def test_bad_prices_name_their_key(extra: str, where: str) -> None:
    with pytest.raises(ConfigError) as e:
        config(extra)
    assert e.value.path == where


def at(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    ("now", "period", "start", "end"),
    [
        ("2026-12-05T23:59:59", DAY, "2026-12-05T00:00:00", "2026-12-06T00:00:00"),
        ("2026-12-31T12:00:00", MONTH, "2026-12-01T00:00:00", "2027-01-01T00:00:00"),
        ("2028-02-29T01:00:00", MONTH, "2028-02-01T00:00:00", "2028-03-01T00:00:00"),
        ("2026-03-01T00:00:00", DAY, "2026-03-01T00:00:00", "2026-03-02T00:00:00"),
    ],
)
def test_utc_periods(now: str, period: str, start: str, end: str) -> None:
    assert periodStart(at(now), period) == at(start)
    assert periodEnd(at(now), period) == at(end)
