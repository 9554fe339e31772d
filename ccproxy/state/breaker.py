"""A circuit breaker per upstream: stop sending to a gateway that keeps failing.

After `breakerFailures` consecutive failures the breaker opens and the upstream is
skipped (its failover partner serves) for `breakerCooldown` seconds; then one trial
request goes through, and its outcome closes the breaker or opens it again.

`Breaker` is the state machine of one process; `LocalBreaker` serves it as an
`UpstreamBreaker`. It lives with the state because Redis can hold the same states
for several processes (`ccproxy.state.shared`), with a `Breaker` as its fallback.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from twisted.internet.defer import Deferred, succeed

from ccproxy.config.policy import Policy

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


class Breaker:
    """The breaker state of one upstream; time comes from the injected `now`.

    It holds its upstream's `Policy` (thresholds), given once and again on reload,
    so that callers only report what happened.
    """

    def __init__(self, now: Callable[[], float], policy: Policy) -> None:
        self._now = now
        self.policy = policy
        self.state = CLOSED
        self.failures = 0
        self.openedAt = 0.0
        self._trialInFlight = False

    def allow(self) -> bool:
        """Whether a request may go to this upstream now (and, after the cooldown,
        claims the single trial)."""
        if self.state == CLOSED:
            return True
        if self.state == OPEN and self._now() - self.openedAt >= self.policy.breakerCooldown:
            self.state = HALF_OPEN
            self._trialInFlight = False
        if self.state == HALF_OPEN and not self._trialInFlight:
            self._trialInFlight = True
            return True
        return False

    def retryIn(self) -> float:
        """Seconds until the breaker lets a trial through."""
        return max(0.0, self.openedAt + self.policy.breakerCooldown - self._now())

    def succeeded(self) -> None:
        self.state = CLOSED
        self.failures = 0
        self._trialInFlight = False

    def failed(self) -> None:
        self.failures += 1
        if self.state == HALF_OPEN or self.failures >= self.policy.breakerFailures:
            self.state = OPEN
            self.openedAt = self._now()
            self._trialInFlight = False

    def released(self) -> None:
        """The request that held the trial ended with no verdict (the client left)."""
        self._trialInFlight = False


class LocalBreaker:
    """A `Breaker` of this process, answering as an `UpstreamBreaker` (at once)."""

    def __init__(self, now: Callable[[], float], policy: Policy) -> None:
        self.breaker = Breaker(now, policy)

    @property
    def policy(self) -> Policy:
        return self.breaker.policy

    @policy.setter
    def policy(self, policy: Policy) -> None:
        self.breaker.policy = policy

    @property
    def state(self) -> str:
        return self.breaker.state

    @property
    def openedAt(self) -> float:
        return self.breaker.openedAt

    @property
    def failures(self) -> int:
        return self.breaker.failures

    def allow(self) -> bool | Awaitable[bool]:
        return self.breaker.allow()  # a plain bool: see `UpstreamBreaker.allow`

    def succeeded(self) -> None:
        self.breaker.succeeded()

    def released(self) -> None:
        self.breaker.released()

    def failed(self) -> Deferred[bool]:
        self.breaker.failed()
        return succeed(self.breaker.state == OPEN)
