"""The UTC calendar periods that budgets and usage reports count in.

A day runs from 00:00 UTC; a month from the 1st at 00:00 UTC. Budgets reset at the
end of theirs, and `/v1/usage` defaults to the current month.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

DAY, MONTH = "day", "month"
PERIODS = (DAY, MONTH)


def periodStart(now: float, period: str) -> float:
    """Unix seconds at which the `period` holding `now` began."""
    moment = datetime.fromtimestamp(now, UTC)
    if period == DAY:
        start = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    elif period == MONTH:
        start = moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    else:
        raise ValueError(f"unknown period {period!r}")
    return start.timestamp()


def weekStart(now: float) -> float:
    """Unix seconds of the Monday 00:00 UTC that began the week holding `now`."""
    day = datetime.fromtimestamp(periodStart(now, DAY), UTC)
    return (day - timedelta(days=day.weekday())).timestamp()


def periodEnd(now: float, period: str) -> float:
    """Unix seconds at which the `period` holding `now` ends (the next one begins)."""
    start = datetime.fromtimestamp(periodStart(now, period), UTC)
    if period == DAY:
        end = start + timedelta(days=1)
    else:
        end = (start + timedelta(days=32)).replace(day=1)
    return end.timestamp()


def parseMoment(text: str, endOfDay: bool = False) -> float:
    """Unix seconds of an ISO date (`2025-01-31`: its 00:00 UTC, or with `endOfDay`
    the next day's, so that the day counts whole) or datetime (UTC unless it says
    otherwise). `ValueError` says what is wrong."""
    text = text.strip()
    try:
        if len(text) == 10:
            day = datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=UTC)
            return (day + timedelta(days=1 if endOfDay else 0)).timestamp()
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"{text[:40]!r} is not an ISO date or datetime (2025-01-31, 2025-01-31T12:00:00Z)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def isoMoment(moment: float) -> str:
    """Unix seconds as an ISO datetime in UTC, to the second (`2025-01-31T00:00:00Z`)."""
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
