"""A circuit breaker per upstream: stop sending to a gateway that keeps failing.

After `failures` consecutive failures the breaker opens and the upstream is skipped
(its failover partner serves) for `cooldown` seconds; then one trial request goes
through, and its outcome closes the breaker or opens it again.
"""

from __future__ import annotations

from collections.abc import Callable

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


class Breaker:
    """The breaker state of one upstream; time comes from the injected `now`."""

    def __init__(self, now: Callable[[], float]) -> None:
        self._now = now
        self.state = CLOSED
        self.failures = 0
        self._openedAt = 0.0
        self._trialInFlight = False

    def allow(self, cooldown: float) -> bool:
        """Whether a request may go to this upstream now (and, after the cooldown,
        claims the single trial)."""
        if self.state == CLOSED:
            return True
        if self.state == OPEN and self._now() - self._openedAt >= cooldown:
            self.state = HALF_OPEN
            self._trialInFlight = False
        if self.state == HALF_OPEN and not self._trialInFlight:
            self._trialInFlight = True
            return True
        return False

    def retryIn(self, cooldown: float) -> float:
        """Seconds until the breaker lets a trial through."""
        return max(0.0, self._openedAt + cooldown - self._now())

    def succeeded(self) -> None:
        self.state = CLOSED
        self.failures = 0
        self._trialInFlight = False

    def failed(self, threshold: int) -> None:
        self.failures += 1
        if self.state == HALF_OPEN or self.failures >= threshold:
            self.state = OPEN
            self._openedAt = self._now()
            self._trialInFlight = False

    def released(self) -> None:
        """The request that held the trial ended with no verdict (the client left)."""
        self._trialInFlight = False
