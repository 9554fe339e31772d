"""How many hypothesis examples a property test runs: its own count, scaled by the
active settings profile (the profiles are registered in tests/conftest.py).

A per-test `@settings(max_examples=300)` overrides the profile's `max_examples`, so a
profile alone cannot make such a test quicker or more thorough. Written as
`max_examples=examples(300)` instead, the count is 300 under the `default` and `ci`
profiles (both at hypothesis's base of 100), 30 under `dev` (10), 3,000 under a
profile of 1,000.
"""

from __future__ import annotations

from hypothesis import settings


def examples(count: int) -> int:
    """`count` (meant for a profile of 100 examples) scaled to the active profile."""
    base = settings.get_profile("default").max_examples
    return max(1, round(count * settings().max_examples / base))
