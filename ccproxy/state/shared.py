"""State shared through Redis by every ccproxy process that points at it.

Each decision is one Lua script run in Redis, atomically, on Redis's own clock
(`TIME`), so processes on hosts whose clocks differ count in one time:

- admission: the client's budget counters, its leases (`max_concurrent`) and its
  last minute of requests (`requests_per_minute`), checked in that order; only a
  request that passes all three adds its lease and its entry in the window, so a
  refused request holds no place;
- a lease expires `leaseTTL` seconds after it was last renewed. A live process
  renews its leases every third of that, so the places of a process that died
  come free within `leaseTTL` seconds;
- budget counters are set once from the ledger (`seed`, only where none is) and
  then added to (`charge`); they expire a day after their period;
- breakers: `allow` (moving an open breaker past its cooldown to half-open and
  claiming its one trial, itself a lease) and each verdict.

Reads and writes both go to Redis. When Redis does not answer within `timeout`
(250 ms), or refuses, the request is decided by this process's own counters
(`LocalState`, kept up to date all along), the outage is logged once, and Redis is
probed until it answers; then leases taken meanwhile are registered there, the
charges made meanwhile are added, and shared counting resumes.
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import txredisapi
from attrs import frozen
from hiredis import pack_command
from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from ccproxy.compat import SendTogether
from ccproxy.config.model import RedisAddress
from ccproxy.config.policy import Policy
from ccproxy.state import model
from ccproxy.state.breaker import CLOSED, OPEN, LocalBreaker
from ccproxy.state.local import LocalState
from ccproxy.state.model import Ask, Decision, Lease, Used, Window

FALLBACK_AFTER = 0.25
"""Seconds a request waits for Redis before this process's counters decide."""
LEASE_TTL = 30.0
"""Seconds a place outlives the last renewal by its process (a dead one's go then)."""
PROBE_EVERY = 0.5
"""Seconds between pings of a Redis that stopped answering."""
TRIAL_TTL = 60.0
"""Seconds a half-open breaker's trial is held for a process that may have died."""
MAX_PENDING_CHARGES = 100_000
"""Charges kept while Redis is away, to add when it is back; older ones are dropped."""
PREFIX = "ccproxy:"


@frozen
class Script:
    """A Lua script with its SHA1, computed once (txredisapi's `eval` encodes and
    hashes the whole text on every call)."""

    text: bytes
    sha: str

    @classmethod
    def of(cls, text: str) -> Script:
        encoded = text.encode()
        return cls(encoded, hashlib.sha1(encoded).hexdigest())


_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
"""

ADMIT = Script.of(
    _NOW
    + """
-- KEYS: leases, rate window, then one budget counter per window
-- ARGV: lease id, lease ttl, max_concurrent or '', per-minute or '', then the
--       token cap and the cost cap of each window ('' for none)
local used = {}
local over = false
for i = 3, #KEYS do
  local v = redis.call('HMGET', KEYS[i], 'tokens', 'cost')
  if not v[1] then return {'unseeded', tostring(i - 2)} end
  local tokenCap, costCap = ARGV[3 + (i - 2) * 2], ARGV[4 + (i - 2) * 2]
  if (tokenCap ~= '' and tonumber(v[1]) >= tonumber(tokenCap))
      or (costCap ~= '' and tonumber(v[2]) >= tonumber(costCap)) then
    over = true
  end
  used[#used + 1] = v[1]
  used[#used + 1] = v[2]
end
if over then
  table.insert(used, 1, 'over')
  return used
end
local ttl = tonumber(ARGV[2])
if ARGV[3] ~= '' then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
  local active = redis.call('ZCARD', KEYS[1])
  if active >= tonumber(ARGV[3]) then return {'busy', tostring(active)} end
end
if ARGV[4] ~= '' then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - 60)
  if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[4]) then
    local oldest = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
    return {'rate', tostring(tonumber(oldest[2]) + 60 - now)}
  end
  redis.call('ZADD', KEYS[2], now, ARGV[1])
  redis.call('EXPIRE', KEYS[2], 61)
end
if ARGV[3] ~= '' then
  redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
  redis.call('EXPIRE', KEYS[1], math.ceil(ttl))
end
table.insert(used, 1, 'ok')
return used
"""
)

RENEW = Script.of(
    _NOW
    + """
-- KEYS: one client's leases; ARGV: ttl, then the ids of its live leases
local ttl = tonumber(ARGV[1])
for i = 2, #ARGV do redis.call('ZADD', KEYS[1], now + ttl, ARGV[i]) end
redis.call('EXPIRE', KEYS[1], math.ceil(ttl))
return #ARGV - 1
"""
)

SEED = Script.of(
    """
-- KEYS: a budget counter; ARGV: tokens, cost, when it expires (Unix seconds)
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('HSET', KEYS[1], 'tokens', ARGV[1], 'cost', ARGV[2])
  redis.call('EXPIREAT', KEYS[1], ARGV[3])
  return 1
end
return 0
"""
)

CHARGE = Script.of(
    """
-- KEYS: budget counters; ARGV: tokens, cost. A counter not seeded yet is left
-- alone: its seed, from the ledger, will hold this request.
for i = 1, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 1 then
    redis.call('HINCRBY', KEYS[i], 'tokens', ARGV[1])
    redis.call('HINCRBYFLOAT', KEYS[i], 'cost', ARGV[2])
  end
end
return #KEYS
"""
)

BREAKER_ALLOW = Script.of(
    _NOW
    + """
-- KEYS: a breaker; ARGV: cooldown, trial ttl.
-- Returns allowed, state, opened at, failures.
local b = redis.call('HMGET', KEYS[1], 'state', 'opened', 'trial', 'failures')
local state = b[1] or 'closed'
if state == 'closed' then return {1, 'closed', '0', b[4] or '0'} end
local opened = b[2] or '0'
local trial = tonumber(b[3]) or 0
if state == 'open' and now - tonumber(opened) >= tonumber(ARGV[1]) then
  state = 'half_open'
  trial = 0
  redis.call('HSET', KEYS[1], 'state', state, 'trial', 0)
end
if state == 'half_open' and trial <= now then
  redis.call('HSET', KEYS[1], 'trial', now + tonumber(ARGV[2]))
  return {1, state, opened, b[4] or '0'}
end
return {0, state, opened, b[4] or '0'}
"""
)

BREAKER_REPORT = Script.of(
    _NOW
    + """
-- KEYS: a breaker; ARGV: succeeded, failed or released, failures that open it.
-- Returns the state, when it opened, and the failures counted.
local verdict = ARGV[1]
if verdict == 'succeeded' then
  redis.call('HSET', KEYS[1], 'state', 'closed', 'failures', 0, 'trial', 0)
elseif verdict == 'released' then
  if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('HSET', KEYS[1], 'trial', 0) end
else
  local failures = redis.call('HINCRBY', KEYS[1], 'failures', 1)
  local state = redis.call('HGET', KEYS[1], 'state') or 'closed'
  if state == 'half_open' or failures >= tonumber(ARGV[2]) then
    redis.call('HSET', KEYS[1], 'state', 'open', 'opened', tostring(now), 'trial', 0)
  end
end
redis.call('EXPIRE', KEYS[1], 86400)
local b = redis.call('HMGET', KEYS[1], 'state', 'opened', 'failures')
return {b[1] or 'closed', b[2] or '0', b[3] or '0'}
"""
)


def leasesKey(client: str) -> str:
    # The client's keys share a hash tag ({…}), so a cluster keeps them together.
    return f"{PREFIX}{{{client}}}:leases"


def rateKey(client: str) -> str:
    return f"{PREFIX}{{{client}}}:rate"


def budgetKey(client: str, window: Window) -> str:
    return f"{PREFIX}{{{client}}}:budget:{window.key}"


def breakerKey(upstream: str) -> str:
    return f"{PREFIX}breaker:{{{upstream}}}"


def _cap(value: float | None) -> str:
    return "" if value is None else repr(value)


def _used(tokens: Any, cost: Any) -> Used:
    return Used(int(float(tokens)), float(cost))


class RedisLink:
    """One pipelined connection to Redis through txredisapi, reconnecting on its own
    (within a second once Redis is back). A call made while the connection is
    lost fails at once (txredisapi would keep it until Redis is back); one made
    before the first connection waits for it, bounded by the caller.

    The one place that leans on txredisapi's and hiredis's lower layers
    (`_command`, `run`), pinned by tests/test_redis_link.py: a call's command is
    packed by hiredis and leaves at once; its reply, read by hiredis, comes back
    through txredisapi's reply queue."""

    def __init__(self, address: RedisAddress, reactor: Any) -> None:
        self.address = address
        self._reactor = reactor
        self._factory: txredisapi.RedisFactory | None = None
        self._connected = False

    @property
    def where(self) -> str:
        """HOST:PORT/DB, for the log (never the password)."""
        return f"{self.address.host}:{self.address.port}/{self.address.db}"

    def connect(self) -> None:
        address = self.address
        factory = txredisapi.RedisFactory(
            f"{address.host}:{address.port}",
            address.db,
            1,
            isLazy=True,
            password=address.password,
            username=address.username,
            # A connection silent this long is dropped and made again (the state's
            # own commands go without it: `_command`).
            replyTimeout=2,
            convertNumbers=False,
        )
        factory.initialDelay = 0.1
        factory.maxDelay = 1.0
        factory.startConnecting(
            HostnameEndpoint(self._reactor, address.host, address.port, timeout=1)
        )
        self._factory = factory

    def _connection(self) -> Any | None:
        """The connection itself once there is one (a call through txredisapi's
        handler costs some 20 µs more CPU); None before the first, when the
        handler waits for it."""
        factory = self._factory
        if factory is None:  # not connected yet, or disconnected: a late call fails
            raise txredisapi.ConnectionError("there is no connection to Redis")
        if factory.size:
            self._connected = True
            return factory.pool[0]
        if self._connected:
            raise txredisapi.ConnectionError("the connection to Redis is lost")
        return None

    def _command(self, connection: Any, parts: tuple[Any, ...]) -> Deferred[Any]:
        """One command on `connection`, its bytes sent at once, in one send, without
        the reactor asked to watch the socket for room and then to stop (two
        epoll_ctl and a reactor turn a call); a Deferred of its reply.

        Relies on txredisapi's protocol: each reply goes, in the order the commands
        were sent, to the oldest `replyQueue.get()` (a `ReplyQueue`, whose
        cancelled get keeps its place for the reply still to come), `handle_reply`
        raises an error reply, `connected` says whether it can send; and on
        hiredis's `pack_command` writing the bytes that txredisapi's
        `_build_command` writes for str, bytes and int parts (no float is passed:
        callers `repr` theirs). Why: `execute_command` encodes each part and its
        length through chains of isinstance and bytearray extends, some 100k
        instructions for one script's call, and adds a second Deferred; nor is its
        reply timer wanted (`run`)."""
        if not connection.connected:
            return fail(txredisapi.ConnectionError("Not connected"))
        transport = connection.transport
        with SendTogether(transport):
            transport.write(pack_command(parts))
        return connection.replyQueue.get().addCallback(connection.handle_reply)  # type: ignore[no-any-return]

    def run(self, script: Script, keys: Sequence[str], args: Sequence[Any]) -> Deferred[Any]:
        """`script` run in Redis: by its hash once this connection has run it
        (EVALSHA), by its text before (EVAL) and when Redis forgot it (NOSCRIPT),
        keeping the connection's `script_hashes` as txredisapi's own `eval` keeps
        them (emptied when the connection is lost). Why not `eval`: it encodes and
        hashes the script's text on every call; and its reply timer
        (`replyTimeout`, a reactor timer made and cancelled per command) never
        fires for the state's calls, which the state gives up on sooner (`timeout`;
        cancelling a call cancelled that timer)."""
        try:
            connection = self._connection()
        except txredisapi.ConnectionError as e:
            return fail(e)
        if connection is None:  # before the first connection: the handler waits for it
            return self._factory.handler.eval(script.text, list(keys), list(args))  # type: ignore[union-attr,no-any-return]
        if script.sha in connection.script_hashes:
            d = self._command(connection, ("EVALSHA", script.sha, len(keys), *keys, *args))
            return d.addErrback(self._forgotten, connection, script, keys, args)
        return self._eval(connection, script, keys, args)

    def _eval(
        self, connection: Any, script: Script, keys: Sequence[str], args: Sequence[Any]
    ) -> Deferred[Any]:
        d = self._command(connection, ("EVAL", script.text, len(keys), *keys, *args))

        def known(reply: Any) -> Any:
            connection.script_hashes.add(script.sha)
            return reply

        return d.addCallback(known)

    def _forgotten(
        self,
        failure: Failure,
        connection: Any,
        script: Script,
        keys: Sequence[str],
        args: Sequence[Any],
    ) -> Any:
        """NOSCRIPT (SCRIPT FLUSH, a failover): run it by its text again."""
        if not (
            failure.check(txredisapi.ResponseError)
            and str(failure.value).startswith("NOSCRIPT")
            and connection.connected
        ):
            return failure
        connection.script_hashes.discard(script.sha)
        return self._eval(connection, script, keys, args)

    def zrem(self, key: str, member: str) -> Deferred[Any]:
        return self._plain("zrem", "ZREM", key, member)

    def ping(self) -> Deferred[Any]:
        return self._plain("ping", "PING")

    def _plain(self, method: str, *parts: Any) -> Deferred[Any]:
        """A command without a script: txredisapi's `method` of the same name
        before the first connection (its handler waits for one)."""
        try:
            connection = self._connection()
        except txredisapi.ConnectionError as e:
            return fail(e)
        if connection is None:
            return getattr(self._factory.handler, method)(*parts[1:])  # type: ignore[union-attr,no-any-return]
        return self._command(connection, parts)

    def disconnect(self) -> Deferred[Any]:
        factory, self._factory = self._factory, None
        return factory.disconnect() if factory is not None else succeed(None)


class RedisState:
    """The `State` that every process pointing at one Redis shares, falling back to
    `local` while Redis does not answer."""

    log: ClassVar[Logger] = Logger()

    def __init__(
        self,
        link: RedisLink,
        reactor: Any,
        local: LocalState | None = None,
        timeout: float = FALLBACK_AFTER,
        leaseTTL: float = LEASE_TTL,
        probeEvery: float = PROBE_EVERY,
    ) -> None:
        self.link = link
        self.reactor = reactor
        self.local = local or LocalState(reactor)
        self.timeout = timeout
        self.leaseTTL = leaseTTL
        self.probeEvery = probeEvery
        self._up = True
        self._downSince = 0.0
        self._leases: dict[str, Lease] = {}
        """Live leases that count against `max_concurrent`, renewed in Redis."""
        self._stale: set[tuple[str, str]] = set()
        """(client, lease id) released while Redis was away: removed when it is back."""
        self._pending: deque[tuple[str, tuple[Window, ...], Used]] = deque(
            maxlen=MAX_PENDING_CHARGES
        )
        self._breakers: dict[str, RedisBreaker] = {}
        self._renewal = LoopingCall(self._renewAll)
        self._renewal.clock = reactor
        self._probe = LoopingCall(self._probeOnce)
        self._probe.clock = reactor
        self._probing = False
        self._stopped = False
        self.outages = 0
        """How many times Redis stopped answering (for tests and logs)."""
        self.lastFallback: float | None = None
        """Seconds the last request that fell back waited for Redis first."""

    @property
    def up(self) -> bool:
        return self._up

    # -- lifecycle --------------------------------------------------------------

    def start(self) -> None:
        self.log.info("state shared through Redis at {redis}", redis=self.link.where)
        self.link.connect()
        self._renewal.start(self.leaseTTL / 3, now=False)

    async def stop(self) -> None:
        self._stopped = True  # a write failing as the link closes starts no probe
        for loop in (self._renewal, self._probe):
            if loop.running:
                loop.stop()
        await self.link.disconnect()

    # -- calls ----------------------------------------------------------------------

    def _call(self, script: Script, keys: Sequence[str], args: Sequence[Any]) -> Deferred[Any]:
        """A script run in Redis, given up after `timeout` seconds."""
        return self._bounded(self.link.run(script, keys, args))

    def _bounded(self, d: Deferred[Any]) -> Deferred[Any]:
        """`d`, given up after `timeout` seconds."""
        return d.addTimeout(self.timeout, self.reactor)

    def _fire(self, d: Deferred[Any], onLost: Callable[[], None] = lambda: None) -> None:
        """A write nobody waits for: a failure marks Redis down and runs `onLost`."""

        def failed(failure: Failure) -> None:
            self._lost(failure)
            onLost()

        d.addErrback(failed)

    def _lost(self, reason: Failure | BaseException) -> None:
        """Redis did not answer: count here until it does; said once per outage."""
        if not self._up:
            return
        self._up = False
        self.outages += 1
        self._downSince = self.reactor.seconds()
        why = reason.getErrorMessage() if isinstance(reason, Failure) else repr(reason)
        self.log.warn(
            "state: Redis at {redis} does not answer ({why}): limits, budgets and "
            "breakers are counted in this process until it does",
            redis=self.link.where,
            why=why,
        )
        if not self._probe.running and not self._stopped:
            self._probe.start(self.probeEvery, now=False)

    def _probeOnce(self) -> None:
        if self._probing:
            return
        self._probing = True
        d = self.link.ping()
        d.addTimeout(self.timeout, self.reactor)

        def done(result: Any) -> None:
            self._probing = False
            if not isinstance(result, Failure):
                self._back()

        d.addBoth(done)

    def _back(self) -> None:
        """Redis answers again: hand it what happened meanwhile, then share again."""
        if self._up:
            return
        self._up = True
        if self._probe.running:
            self._probe.stop()
        self.log.info(
            "state: Redis at {redis} answers again after {seconds:.1f} s: shared counting resumes",
            redis=self.link.where,
            seconds=self.reactor.seconds() - self._downSince,
        )
        stale, self._stale = self._stale, set()
        for client, leaseId in stale:
            self._fire(self._zrem(client, leaseId))
        pending, self._pending = list(self._pending), deque(maxlen=MAX_PENDING_CHARGES)
        for client, windows, used in pending:
            self._sendCharge(client, windows, used)
        self._renewAll()

    def _zrem(self, client: str, leaseId: str) -> Deferred[Any]:
        return self._bounded(self.link.zrem(leasesKey(client), leaseId))

    # -- client limits and budgets --------------------------------------------------

    async def admit(self, ask: Ask, now: float) -> Decision:
        if ask.free:
            return self.local.decide(ask, now)
        lease = self.local.newLease(ask)
        if self._up:
            asked = self.reactor.seconds()
            keys = [leasesKey(ask.client), rateKey(ask.client)]
            keys += [budgetKey(ask.client, w) for w in ask.windows]
            args: list[Any] = [
                lease.id,
                repr(self.leaseTTL),
                "" if ask.maxConcurrent is None else ask.maxConcurrent,
                "" if ask.perMinute is None else ask.perMinute,
            ]
            for window in ask.windows:
                args += [_cap(window.tokens), _cap(window.cost)]
            try:
                reply = await self._call(ADMIT, keys, args)
            except CancelledError:
                # The client left while Redis decided: it may hold the place.
                if lease.held:
                    self._fire(self._zrem(ask.client, lease.id))
                raise
            except Exception as e:
                self._lost(e)
                self.lastFallback = self.reactor.seconds() - asked
            else:
                decision = self._decision(ask, lease, reply)
                if isinstance(decision, model.Admitted):
                    self.local.count(ask, now, lease)
                    self._hold(lease)
                return decision
        decision = self.local.decide(ask, now, lease)
        if isinstance(decision, model.Admitted):
            self._hold(lease)  # registered in Redis when it is back
        return decision

    def _hold(self, lease: Lease) -> None:
        if lease.held:
            lease.shared = True
            self._leases[lease.id] = lease

    def _decision(self, ask: Ask, lease: Lease, reply: list[Any]) -> Decision:
        what, rest = reply[0], reply[1:]
        if what in ("ok", "over"):
            used = tuple(_used(*rest[i : i + 2]) for i in range(0, len(rest), 2))
            return model.Admitted(lease, used) if what == "ok" else model.OverBudget(used)
        if what == "unseeded":
            return model.Unseeded(ask.windows[int(rest[0]) - 1])
        if what == "busy":
            assert ask.maxConcurrent is not None
            return model.busy(int(rest[0]), ask.maxConcurrent)
        assert what == "rate" and ask.perMinute is not None, reply
        return model.tooFast(ask.perMinute, float(rest[0]))

    def release(self, lease: Lease) -> None:
        if lease.released:
            return
        self._leases.pop(lease.id, None)
        if lease.shared:
            client, leaseId = lease.client, lease.id
            if self._up:
                self._fire(self._zrem(client, leaseId), lambda: self._stale.add((client, leaseId)))
            else:
                self._stale.add((client, leaseId))
        self.local.release(lease)

    def _renewAll(self) -> None:
        """Every live lease's place, renewed (or registered, after an outage)."""
        if not self._up or not self._leases:
            return
        byClient: dict[str, list[str]] = {}
        for lease in self._leases.values():
            byClient.setdefault(lease.client, []).append(lease.id)
        for client, ids in byClient.items():
            self._fire(self._call(RENEW, [leasesKey(client)], [repr(self.leaseTTL), *ids]))

    async def seed(self, client: str, window: Window, used: Used) -> None:
        await self.local.seed(client, window, used)
        if not self._up:
            return
        expires = int(window.end) + 86400
        try:
            await self._call(
                SEED, [budgetKey(client, window)], [used.tokens, repr(used.cost), expires]
            )
        except CancelledError:
            raise
        except Exception as e:
            self._lost(e)

    def charge(self, client: str, windows: tuple[Window, ...], used: Used) -> None:
        self.local.charge(client, windows, used)
        if not windows:
            return
        if self._up:
            self._sendCharge(client, windows, used)
        else:
            self._pending.append((client, windows, used))

    def _sendCharge(self, client: str, windows: tuple[Window, ...], used: Used) -> None:
        keys = [budgetKey(client, w) for w in windows]
        self._fire(
            self._call(CHARGE, keys, [used.tokens, repr(used.cost)]),
            lambda: self._pending.append((client, windows, used)),
        )

    # -- breakers ---------------------------------------------------------------------

    def breaker(self, upstream: str, policy: Policy) -> RedisBreaker:
        if upstream not in self._breakers:
            self._breakers[upstream] = RedisBreaker(self, upstream, policy)
        return self._breakers[upstream]


class RedisBreaker(LocalBreaker):
    """One upstream's breaker as Redis holds it for every process; this process's
    own `Breaker` hears every verdict too, and decides while Redis is away."""

    def __init__(self, shared: RedisState, upstream: str, policy: Policy) -> None:
        super().__init__(shared.reactor.seconds, policy)
        self._shared = shared
        self._key = breakerKey(upstream)
        self._seen = CLOSED
        self._openedAt = 0.0
        self._failures = 0

    @property
    def state(self) -> str:
        return self._seen if self._shared.up else self.breaker.state

    @property
    def openedAt(self) -> float:
        return self._openedAt if self._shared.up else self.breaker.openedAt

    def _saw(self, state: Any, openedAt: Any, failures: Any) -> None:
        self._seen = str(state)
        self._openedAt = float(openedAt)
        self._failures = int(failures)

    async def allow(self) -> bool:  # type: ignore[override]
        shared = self._shared
        if shared.up:
            args = [repr(self.policy.breakerCooldown), repr(TRIAL_TTL)]
            try:
                allowed, *seen = await shared._call(BREAKER_ALLOW, [self._key], args)
            except CancelledError:
                raise
            except Exception as e:
                shared._lost(e)
            else:
                self._saw(*seen)
                return bool(int(allowed))
        return self.breaker.allow()

    def _report(self, verdict: str) -> Deferred[bool]:
        """Tell Redis a verdict; whether the breaker is open now (this process's
        answer when Redis does not give one)."""
        shared = self._shared
        if not shared.up:
            return succeed(self.breaker.state == OPEN)
        d = shared._call(BREAKER_REPORT, [self._key], [verdict, self.policy.breakerFailures])

        def answered(reply: list[Any]) -> bool:
            self._saw(*reply)
            return self._seen == OPEN

        def failed(failure: Failure) -> Failure | bool:
            if failure.check(CancelledError):
                return failure
            shared._lost(failure)
            return self.breaker.state == OPEN

        return d.addCallbacks(answered, failed)

    def succeeded(self) -> None:
        self.breaker.succeeded()
        if self._seen != CLOSED or self._failures:
            self._report("succeeded")
        # else: closed with no failure counted when last asked (a round trip saved on
        # each healthy request); a failure counted since is reset by the next success.

    def released(self) -> None:
        self.breaker.released()
        self._report("released")

    def failed(self) -> Deferred[bool]:
        self.breaker.failed()
        return self._report("failed")
