"""What JSON calls an integer or a number, for checking decoded bodies.

Python's `bool` is an `int`, JSON's `true` is not: `max_tokens: true` and a schema's
`minimum: false` must not pass for numbers. One owner for the request checks and the
schema reducer alike.
"""

from __future__ import annotations

from typing import Any


def isInt(value: Any) -> bool:
    """Whether `value` is a JSON integer (not a boolean)."""
    return isinstance(value, int) and not isinstance(value, bool)


def isNumber(value: Any) -> bool:
    """Whether `value` is a JSON number, integer or not (not a boolean)."""
    return isinstance(value, int | float) and not isinstance(value, bool)
