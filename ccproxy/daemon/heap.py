"""The garbage collector, set for a proxy: what the start made is left alone, and
young objects are collected less often.

Translating one 50 KB request makes and drops thousands of dicts and lists; with
CPython's default threshold (700) the young generation is collected several
times a request, and whatever is alive then (the request being translated) is
promoted and scanned again by the older generations. Everything imported and
built at start (modules, classes, the config) would be scanned by every full
collection for the life of the daemon. `gc.freeze` moves those to a permanent
generation, and a higher first threshold lets most of a request's objects die
before anyone looks at them. Reference counting still frees almost everything
at once; the collector is only for cycles, so memory stays bounded.
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 20_000
"""Allocations (less deallocations) of tracked objects between two collections of
the young generation (CPython's default: 700)."""


def settleHeap() -> None:
    """Freeze what exists now (call once the service is built) and raise the young
    generation's threshold, keeping the older generations' ratios."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, older, oldest)
