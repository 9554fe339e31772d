"""What a client may do: the models it may ask for, its limits, and its budgets.

The counting is the state backend's (`ccproxy.state`: this process's, or Redis's
for every process); the ledger, which the state knows nothing of, seeds a budget
window's counter with what the client already spent in it (at the first request
of the window, and whenever Redis has lost the counter). Both meet here.

A client over a budget is refused before anything is sent upstream, with the
429 `billing_error` and the usage-limit headers of Claude Code's gateway protocol
("rejected" shape); a client under a cap gets its standing ("allowed" shape) on
every successful `/v1/messages` answer. The counters see a request's usage when
it ends, so requests admitted together may overshoot a budget by what they use
between them.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable
from contextlib import AbstractAsyncContextManager, nullcontext
from typing import Any, ClassVar

from attrs import define, evolve, field
from twisted.internet.defer import CancelledError, Deferred, ensureDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.iweb import IRequest

from ccproxy.config.model import Client, Config
from ccproxy.errors import ProxyError, invalidRequest
from ccproxy.ledger.model import Ledger, Spend
from ccproxy.state import model
from ccproxy.state.model import Ask, Lease, State, Used, Window

SEED_TIMEOUT = 5.0
"""Seconds the ledger may take to say what a client spent in a window."""
LEDGER_QUIET = 30.0
"""Seconds budgets go unseeded (and so unchecked) after the ledger failed to answer."""

_UNIFIED = "anthropic-ratelimit-unified-"


def mayUse(client: Client | None, model: str) -> None:
    """A 400 naming the model when the client may not ask for it (`clients[].models`)."""
    if client is None or client.models is None or client.mayUse(model):
        return
    allowed = ", ".join(client.models or ())
    raise invalidRequest(
        f"model {model!r} is not available to client {client.name!r} (allowed: {allowed})"
    )


@define
class Standing:
    """An admitted request: its place, and its budget windows as they stood."""

    lease: Lease
    windows: tuple[Window, ...]
    used: tuple[Used, ...]
    usage: dict[str, Any] | None = None
    """The answer's Anthropic usage, once known: what `Admission.charge` adds."""

    def headers(self) -> dict[str, str]:
        """The usage-limit headers of a successful answer: the fullest window's
        utilization, kept below 1 while requests are allowed (none without a cap, or
        when the ledger could not seed the counters)."""
        if not self.used:
            return {}
        window, used = max(
            zip(self.windows, self.used, strict=True), key=lambda pair: pair[0].utilization(pair[1])
        )
        # Whole percents, rounded down (a hair of float error aside), under 1.
        utilization = math.floor(window.utilization(used) * 100 + 1e-9) / 100
        surpassed = next((t for t in model.WARNING_THRESHOLDS if utilization >= t), None)
        status = "allowed" if surpassed is None else "allowed_warning"
        reset = str(int(window.end))
        headers = {
            _UNIFIED + "status": status,
            _UNIFIED + "representative-claim": "overage",
            _UNIFIED + "overage-status": status,
            _UNIFIED + "overage-utilization": f"{min(utilization, 0.99):.2f}",
            _UNIFIED + "reset": reset,
            _UNIFIED + "overage-reset": reset,
        }
        if surpassed is not None:
            headers[_UNIFIED + "overage-surpassed-threshold"] = f"{surpassed:.2f}"
        return headers

    def show(self, request: IRequest) -> None:
        for name, value in self.headers().items():
            request.setHeader(name.encode(), value.encode())


def overBudget(
    config: Config, windows: tuple[Window, ...], used: tuple[Used, ...], now: float
) -> ProxyError:
    """The 429 `billing_error` of a used-up budget, in the protocol's rejected shape:
    the window that resets last when several are used up."""
    reached = [(w, u) for w, u in zip(windows, used, strict=True) if w.reached(u)]
    window, spent = max(reached, key=lambda pair: pair[0].end)
    reset = str(int(window.end))
    parts = []
    if window.tokens is not None and spent.tokens >= window.tokens:
        parts.append(f"{spent.tokens} of {window.tokens} tokens")
    if window.cost is not None and spent.cost >= window.cost:
        currency = config.prices.currency
        parts.append(f"{spent.cost:.2f} of {window.cost:.2f} {currency}")
    kind = "token" if window.tokens is not None and spent.tokens >= window.tokens else "cost"
    if len(parts) == 2:
        kind = "token and cost"
    message = (
        f"{model.periodWord(window.period)} {kind} budget reached ({' and '.join(parts)} used) "
        f"· resets {model.resetText(window.end)}"
    )
    return ProxyError(
        429,
        message,
        "billing_error",
        {
            "retry-after": str(max(math.ceil(window.end - now), 1)),
            "x-should-retry": "false",
            _UNIFIED + "status": "rejected",
            _UNIFIED + "reset": reset,
            _UNIFIED + "overage-reset": reset,
            _UNIFIED + "overage-utilization": "1",
            _UNIFIED + "overage-surpassed-threshold": "1",
            _UNIFIED + "overage-period": model.periodWord(window.period),
            _UNIFIED + "overage-disabled-reason": "org_spend_cap_reached",
        },
    )


Entry = tuple[Lease | None, "Standing | None"]
"""An admitted request (`Admission.enter`): the place it holds, to give back with
`Admission.leave` however it ends, and its budget `Standing` (None: the client has
no budget windows to show or charge). `(None, None)`: no clients, nothing held."""

_NOBODY: Entry = (None, None)
_NO_STANDING: AbstractAsyncContextManager[Standing | None] = nullcontext(None)
"""`Admission.admitted` without clients (stateless: shared by every request)."""


class _Admitted(AbstractAsyncContextManager["Standing | None"]):
    """`Admission.enter` and `leave` around an `async with` block."""

    __slots__ = ("_admission", "_budgets", "_client", "_config", "_lease")

    def __init__(self, admission: Admission, client: Client, config: Config, budgets: bool):
        self._admission = admission
        self._client = client
        self._config = config
        self._budgets = budgets
        self._lease: Lease | None = None

    async def __aenter__(self) -> Standing | None:
        entry = self._admission.enter(self._client, self._config, self._budgets)
        if type(entry) is not tuple:
            entry = await entry
        self._lease, standing = entry
        return standing

    async def __aexit__(self, *exc_info: object) -> bool:
        lease, self._lease = self._lease, None
        self._admission.leave(lease)
        return False


@define
class Admission:
    """Admits each client's requests through the state backend, seeding budget
    counters from the ledger (None: from nothing, so they count from the start)."""

    state: State
    clock: IReactorTime
    ledger: Ledger | None = None
    seedTimeout: float = SEED_TIMEOUT
    _ledgerQuietUntil: float = field(default=0.0, init=False)
    _asks: dict[str, Ask] = field(factory=dict, init=False)
    """The `Ask` of each client without a budget, under `_asksOf` (see `_ask`)."""
    _asksOf: Config | None = field(default=None, init=False)

    log: ClassVar[Logger] = Logger()

    def enter(
        self, client: Client | None, config: Config, budgets: bool = True
    ) -> Entry | Awaitable[Entry]:
        """A place for one request of `client` (none without clients), 429 when it
        is over a limit or (with `budgets`) a budget; a refused request holds none.
        The caller gives the place back with `leave`, however the request ends
        (`try`/`finally`). The `Entry` comes at once when the state answers at once
        (this process's), else to be awaited (Redis, or a budget window to seed).

        Not an `async with` block: its context object and two coroutines cost some
        10,000 instructions a request, paid by every caller with `clients:`
        (issue 18); `admitted` is that block, for the paths that are not hot."""
        if client is None:
            return _NOBODY
        now = self.clock.seconds()
        ask = self._ask(client, config, now, budgets)
        decision = self.state.admit(ask, now)
        if type(decision) is model.Admitted:
            return _entry(decision, ask)
        return self._entering(client, config, ask, now, decision)

    async def _entering(
        self,
        client: Client,
        config: Config,
        ask: Ask,
        now: float,
        first: model.Decision | Awaitable[model.Decision],
    ) -> Entry:
        decision = await self._decide(ask, now, first)
        if isinstance(decision, model.Limited):
            raise decision.error(client.name)
        if isinstance(decision, model.OverBudget):
            raise overBudget(config, ask.windows, decision.used, now)
        assert isinstance(decision, model.Admitted), decision
        return _entry(decision, ask)

    def leave(self, lease: Lease | None) -> None:
        """Give an entered request's place back (None: it held none)."""
        if lease is not None:
            self.state.release(lease)

    def admitted(
        self, client: Client | None, config: Config, budgets: bool = True
    ) -> AbstractAsyncContextManager[Standing | None]:
        """`enter` and `leave` around an `async with` block, which gets the
        request's budget `Standing` (or None). Without clients, one shared context:
        nothing is made per request, nor kept while a stream lasts."""
        if client is None:
            return _NO_STANDING
        return _Admitted(self, client, config, budgets)

    def _ask(self, client: Client, config: Config, now: float, budgets: bool) -> Ask:
        """What admitting a request of `client` checks. A client without a budget
        asks the same every time under one config: its `Ask` is made once per
        config (a reload's requests make them afresh, and drop the old ones)."""
        if client.budget is not None:
            return Ask.of(client, now, budgets)
        if self._asksOf is not config:
            self._asks, self._asksOf = {}, config
        ask = self._asks.get(client.name)
        if ask is None:
            ask = self._asks[client.name] = Ask.of(client, now, budgets)
        return ask

    async def _decide(
        self, ask: Ask, now: float, first: model.Decision | Awaitable[model.Decision]
    ) -> model.Decision:
        """The state's decision (`first`: its answer to `ask`, at once from this
        process's counters, or to be awaited), each window seeded from the ledger
        when the state has no counter for it yet."""
        for attempt in range(len(ask.windows) + 1):
            decision = self.state.admit(ask, now) if attempt else first
            if not isinstance(decision, model.Decision):  # a backend that waits
                decision = await decision
            if not isinstance(decision, model.Unseeded):
                return decision
            used = await self._spent(ask.client, decision.window, now)
            if used is None:
                break
            await self.state.seed(ask.client, decision.window, used)
        # The ledger did not answer: the limits still hold, the budgets wait.
        decision = self.state.admit(evolve(ask, windows=()), now)
        if not isinstance(decision, model.Decision):
            decision = await decision
        return decision

    async def _spent(self, client: str, window: Window, now: float) -> Used | None:
        """What `client` spent in `window` by the ledger; None when it cannot say."""
        if self.ledger is None:
            return Used()
        if now < self._ledgerQuietUntil:
            return None
        d: Deferred[Spend] = ensureDeferred(self.ledger.spent(client, window.start))
        d.addTimeout(self.seedTimeout, self.clock)
        try:
            spend = await d
        except CancelledError:
            raise
        except Exception as e:
            self._ledgerQuietUntil = now + LEDGER_QUIET
            self.log.warn(
                "budgets: the ledger did not say what {client} spent ({why}); budgets go "
                "unchecked for {quiet:g} s",
                client=client,
                why=repr(e),
                quiet=LEDGER_QUIET,
            )
            return None
        return Used(spend.tokens, spend.cost)

    def charge(self, config: Config, standing: Standing, upstreamModel: str | None) -> None:
        """Add what the request used to its windows (tokens: input + output +
        cache-write; cost: `prices:` on the model the upstream served)."""
        usage = standing.usage
        if not standing.windows or usage is None:
            return
        inputTokens = _count(usage.get("input_tokens"))
        outputTokens = _count(usage.get("output_tokens"))
        cacheRead = _count(usage.get("cache_read_input_tokens"))
        cacheWrite = _count(usage.get("cache_creation_input_tokens"))
        cost = config.prices.cost(
            upstreamModel or "", inputTokens, outputTokens, cacheRead, cacheWrite
        )
        used = Used(inputTokens + outputTokens + cacheWrite, cost)
        if used != Used():
            self.state.charge(standing.lease.client, standing.windows, used)


def _entry(decision: model.Admitted, ask: Ask) -> Entry:
    """An admitted request's place and, when it has budget windows, its standing
    (a `Standing` without windows would show no headers and be charged nothing)."""
    if not ask.windows:
        return (decision.lease, None)
    return (decision.lease, Standing(decision.lease, ask.windows, decision.used))


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0
