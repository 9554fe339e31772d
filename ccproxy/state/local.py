"""The state of this process alone: what ccproxy counts without `state:`, and what
it falls back to while Redis does not answer.

Everything here answers at once (no I/O); `LocalState` is the `State` over it.
"""

from __future__ import annotations

import itertools
import uuid
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime

from ccproxy.config.model import Client
from ccproxy.config.policy import Policy
from ccproxy.state.breaker import LocalBreaker
from ccproxy.state.model import (
    Admitted,
    Ask,
    Decision,
    Lease,
    Limited,
    OverBudget,
    Unseeded,
    Used,
    Window,
    busy,
    tooFast,
)

MINUTE = 60.0


class ClientLimits:
    """Concurrency and requests-per-minute of one client (a sliding one-minute window).

    Only a request that was let in holds a place: `take` is called only once
    `refusal` found none, and a refused request never took one.
    """

    def __init__(self) -> None:
        self.active = 0
        self._recent: deque[float] = deque()

    def refusal(
        self, now: float, maxConcurrent: int | None, perMinute: int | None
    ) -> Decision | None:
        """Why a request at `now` may not come in (None: it may)."""
        if maxConcurrent is not None and self.active >= maxConcurrent:
            return busy(self.active, maxConcurrent)
        if perMinute is not None:
            while self._recent and self._recent[0] <= now - MINUTE:
                self._recent.popleft()
            if len(self._recent) >= perMinute:
                return tooFast(perMinute, self._recent[0] + MINUTE - now)
        return None

    def take(self, now: float, perMinute: bool) -> None:
        """Count an admitted request (in the rate window when the client has one)."""
        self.active += 1
        if perMinute:
            self._recent.append(now)

    def give(self) -> None:
        self.active -= 1

    @contextmanager
    def admitted(self, now: float, client: Client) -> Iterator[None]:
        """Hold a place for one request for the length of the block; 429 (with a
        `retry-after`) when the client is over either of its limits."""
        refusal = self.refusal(now, client.maxConcurrent, client.requestsPerMinute)
        if isinstance(refusal, Limited):
            raise refusal.error(client.name)
        self.take(now, client.requestsPerMinute is not None)
        try:
            yield
        finally:
            self.give()


class LocalBudgets:
    """Budget counters per (client, window), each set once from the ledger
    (`seed`) and then added to (`charge`); a window's counter goes when it ends."""

    def __init__(self) -> None:
        self._counters: dict[tuple[str, str], tuple[Used, float]] = {}

    def check(self, client: str, windows: tuple[Window, ...]) -> Decision | tuple[Used, ...]:
        """Each window's counter, or why the request may not come in."""
        used = []
        for window in windows:
            found = self._counters.get((client, window.key))
            if found is None:
                return Unseeded(window)
            used.append(found[0])
        if any(w.reached(u) for w, u in zip(windows, used, strict=True)):
            return OverBudget(tuple(used))
        return tuple(used)

    def seed(self, client: str, window: Window, used: Used, now: float) -> None:
        self._forgetEnded(now)
        self._counters.setdefault((client, window.key), (used, window.end))

    def charge(self, client: str, windows: tuple[Window, ...], used: Used) -> None:
        """Add `used` to the windows that have a counter (one without waits for
        its seed, which the ledger's rows will hold)."""
        for window in windows:
            found = self._counters.get((client, window.key))
            if found is not None:
                self._counters[client, window.key] = (found[0].plus(used), found[1])

    def _forgetEnded(self, now: float) -> None:
        for key in [k for k, (_, end) in self._counters.items() if end <= now]:
            del self._counters[key]


class LocalState:
    """Client limits, budgets and breakers of this process: the `State` without
    `state:`, and the fallback of the Redis one."""

    def __init__(self, clock: IReactorTime) -> None:
        self.clock = clock
        self.limits: dict[str, ClientLimits] = {}
        self.budgets = LocalBudgets()
        self.breakers: dict[str, LocalBreaker] = {}
        self._ids = itertools.count(1)
        self._process = uuid.uuid4().hex[:12]

    @property
    def up(self) -> bool:
        return True

    def newLease(self, ask: Ask) -> Lease:
        """A lease named uniquely among every process (Redis holds them together)."""
        return Lease(
            ask.client, f"{self._process}:{next(self._ids)}", ask.maxConcurrent is not None
        )

    def decide(self, ask: Ask, now: float, lease: Lease | None = None) -> Decision:
        """Admit within this process's own counters (at once)."""
        limits = self._limitsOf(ask.client)
        checked: tuple[Used, ...] = ()
        if ask.windows:  # (a client without a budget has nothing to check)
            found = self.budgets.check(ask.client, ask.windows)
            if not isinstance(found, tuple):
                return found
            checked = found
        refusal = limits.refusal(now, ask.maxConcurrent, ask.perMinute)
        if refusal is not None:
            return refusal
        if lease is None:
            lease = self.newLease(ask)
        limits.take(now, ask.perMinute is not None)  # as `count` does
        return Admitted(lease, checked)

    def count(self, ask: Ask, now: float, lease: Lease) -> None:
        """Count a request admitted elsewhere (by Redis) here too, so that a fall
        back to this process's counters starts from what it has in flight."""
        self._limitsOf(ask.client).take(now, ask.perMinute is not None)

    def _limitsOf(self, client: str) -> ClientLimits:
        # Not `setdefault(client, ClientLimits())`: that makes a ClientLimits (and
        # its deque) per request only to drop it.
        limits = self.limits.get(client)
        if limits is None:
            limits = self.limits[client] = ClientLimits()
        return limits

    admit = decide
    """`decide`, as the `State`: a plain `Decision`, no Deferred (nor another call)
    per request."""

    def release(self, lease: Lease) -> None:
        if not lease.released:
            lease.released = True
            self.limits[lease.client].give()

    def seed(self, client: str, window: Window, used: Used) -> Deferred[None]:
        self.budgets.seed(client, window, used, self.clock.seconds())
        return succeed(None)

    def charge(self, client: str, windows: tuple[Window, ...], used: Used) -> None:
        self.budgets.charge(client, windows, used)

    def breaker(self, upstream: str, policy: Policy) -> LocalBreaker:
        if upstream not in self.breakers:
            self.breakers[upstream] = LocalBreaker(self.clock.seconds, policy)
        return self.breakers[upstream]

    def start(self) -> None:
        pass

    def stop(self) -> Deferred[None]:
        return succeed(None)
