"""Per-client admission: concurrency and request rate.

A single client cannot crowd out the others: past its own limits it gets 429 with
`retry-after`.
"""

from __future__ import annotations

import math
from collections import deque

from ccproxy.errors import ProxyError


class ClientLimits:
    """Concurrency and requests-per-minute of one client (a sliding one-minute window)."""

    def __init__(self) -> None:
        self.active = 0
        self._recent: deque[float] = deque()

    def admit(
        self, now: float, maxConcurrent: int | None, perMinute: int | None, name: str
    ) -> None:
        """Count a new request in, or refuse it with 429 and a `retry-after`."""
        if maxConcurrent is not None and self.active >= maxConcurrent:
            raise ProxyError(
                429,
                f"client {name!r} already has {self.active} requests in flight "
                f"(limit {maxConcurrent})",
                "rate_limit_error",
                {"retry-after": "1"},
            )
        if perMinute is not None:
            while self._recent and self._recent[0] <= now - 60:
                self._recent.popleft()
            if len(self._recent) >= perMinute:
                wait = math.ceil(self._recent[0] + 60 - now)
                raise ProxyError(
                    429,
                    f"client {name!r} is over its limit of {perMinute} requests per minute",
                    "rate_limit_error",
                    {"retry-after": str(max(wait, 1))},
                )
            self._recent.append(now)
        self.active += 1

    def done(self) -> None:
        self.active -= 1
