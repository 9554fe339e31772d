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


def periodEnd(now: float, period: str) -> float:
    """Unix seconds at which the `period` holding `now` ends (the next one begins)."""
    start = datetime.fromtimestamp(periodStart(now, period), UTC)
    if period == DAY:
        end = start + timedelta(days=1)
    else:
        end = (start + timedelta(days=32)).replace(day=1)
    return end.timestamp()
