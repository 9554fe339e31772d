"""Upstream faults: what the client gets, whether failover happened, and that the
daemon serves normally afterwards.

The faulty upstream ("flaky") is a raw TCP server scripted at the byte level, so it
can do what no well-behaved HTTP server does: reset, stall, trickle, send garbage,
announce 2 GB. The healthy partner ("backup") is `tests.support.fakes.FakeOpenAI` on
a real `Site`. The proxy is the real `ProxyService`, and the client is treq.

They run over real sockets on 127.0.0.1, except the faults that last until a timer
ends them (stalls, slowloris, a line that never ends): every case of those runs on
a `tests.support.memorynet.MemoryNet`, the same protocols and bytes with the clock
jumping from timer to timer, and one case of each over sockets too (`TIMED`).

Each scenario runs on three routes of one config: `partnered` fails over from flaky
to backup, `solo` has no partner, `healthy` goes to backup alone. Failover must
happen when the fault comes before any byte reached the client, and never after a
stream started (the client then gets `event: error` and no `message_stop`). After
every fault, a normal request is answered, both by backup and (when its port is
still open) by flaky itself, on the connections the pool kept; and at the end no
upstream connection is left open and no slot is held.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
import pytest
import pytest_twisted
from attrs import define, field, frozen
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.server import Site

from ccproxy.config import Config
from ccproxy.daemon.service import ProxyService
from ccproxy.daemon.wiring import buildService
from tests.support.fakes import FakeOpenAI, completion, jsonReply, sseReply
from tests.support.faultkit import (
    Client,
    ClientReply,
    assertEnvelope,
    assertStreamError,
    closedPort,
    request,
    textOf,
    waitUntil,
    within,
    words,
)
from tests.support.memorynet import MemoryNet

UPSTREAM_TIMEOUT = 0.5
MAX_DURATION = 1.5
MAX_LINE_BYTES = 4096
MAX_RESPONSE_BYTES = 65536

CONFIG = """
listen: "tcp:0:interface=127.0.0.1"
ledger: off
max_duration: {maxDuration}
max_line_bytes: {maxLine}
max_response_bytes: {maxResponse}
ping_interval: 30
upstreams:
  flaky:
    url: "http://127.0.0.1:{flaky}/v1"
    timeout: {timeout}
    connect_timeout: {connectTimeout}
    retries: {retries}
    max_retry_wait: 0.2
    breaker_failures: {breakerFailures}
    breaker_cooldown: 60
{flakyExtra}
  backup:
    url: "http://127.0.0.1:{backup}/v1"
    timeout: 5
    retries: 0
models:
  partnered: [flaky/m, backup/m]
  solo: flaky/m
  healthy: backup/m
"""


# -- the scripted upstream ------------------------------------------------------------


@define(eq=False)
class Seen:
    """One request the scripted upstream received."""

    number: int
    stream: bool
    body: Any


class Conn(Protocol):
    """One connection to the scripted upstream: reads each HTTP request and lets the
    factory's script answer it, at the byte level."""

    factory: ScriptedFactory

    def connectionMade(self) -> None:
        self.buffer = b""
        self.calls: list[IDelayedCall] = []
        self.lost: Deferred[None] = Deferred()
        self.open = True
        self.factory.connections.append(self)

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:
            head, _, rest = self.buffer.partition(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if len(rest) < length:
                return
            raw, self.buffer = rest[:length], rest[length:]
            body = orjson.loads(raw)
            seen = Seen(len(self.factory.requests), bool(body.get("stream")), body)
            self.factory.requests.append(seen)
            self.factory.answer(self, seen)

    def later(self, delay: float, f: Callable[..., Any], *args: Any) -> None:
        """Call `f` in `delay` seconds unless the connection is gone by then."""

        def call() -> None:
            if self.open:
                f(*args)

        self.calls.append(self.factory.clock.callLater(delay, call))

    def reset(self) -> None:
        """Close with a TCP RST (SO_LINGER 0), not a FIN."""
        self.transport.getHandle().setsockopt(
            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
        )
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        self.open = False
        for call in self.calls:
            if call.active():
                call.cancel()
        self.lost.callback(None)


Action = Callable[[Conn, Seen], None]


@define(eq=False)
class ScriptedFactory(Factory):
    """Answers the first `faults` requests with `fault`, and every later one normally."""

    fault: Action
    faults: int = 1
    clock: IReactorTime = reactor
    connections: list[Conn] = field(factory=list)
    requests: list[Seen] = field(factory=list)
    faultyConnections: list[Conn] = field(factory=list)
    """The connections that carried a faulty answer."""
    protocol = Conn

    def answer(self, conn: Conn, request: Seen) -> None:
        if request.number < self.faults:
            self.faultyConnections.append(conn)
            self.fault(conn, request)
        else:
            healthy(conn, request)


def chunkOf(data: bytes) -> bytes:
    """One chunk of a chunked body."""
    return b"%x\r\n%s\r\n" % (len(data), data)


def sseFrame(value: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(value) + b"\n\n"


def delta(text: str) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]}


FINISH = {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
)


def healthyStream(text: str) -> bytes:
    """A whole, well-formed OpenAI stream as a chunked HTTP/1.1 response."""
    frames = [sseFrame(delta(word + " ")) for word in text.split(" ")]
    body = b"".join(chunkOf(f) for f in [*frames, sseFrame(FINISH), b"data: [DONE]\n\n"])
    return SSE_HEAD + body + b"0\r\n\r\n"


def jsonResponse(status: bytes, body: bytes, *headers: bytes) -> bytes:
    return (
        b"HTTP/1.1 "
        + status
        + b"\r\nContent-Type: application/json\r\n"
        + b"".join(h + b"\r\n" for h in headers)
        + b"Content-Length: %d\r\n\r\n" % len(body)
        + body
    )


FLAKY_TEXT = "fine again from flaky"
BACKUP_TEXT = "hello from backup"


def healthy(conn: Conn, request: Seen) -> None:
    if request.stream:
        conn.transport.write(healthyStream(FLAKY_TEXT))
    else:
        conn.transport.write(jsonResponse(b"200 OK", orjson.dumps(completion(FLAKY_TEXT))))


# -- the faults -------------------------------------------------------------------------


def blackhole(conn: Conn, request: Seen) -> None:
    """Never called: the rig gives this fault a port whose accept queue is full, so
    the proxy's connection attempt hangs (its SYNs are dropped)."""
    raise AssertionError("a black-holed port accepts no connection")


def resetBeforeHeaders(conn: Conn, request: Seen) -> None:
    conn.reset()


def stall(conn: Conn, request: Seen) -> None:
    """Reads the request and never answers."""


def status(code: bytes, body: bytes, *headers: bytes, contentType: bytes = b"") -> Action:
    def answer(conn: Conn, request: Seen) -> None:
        response = jsonResponse(code, body, *headers)
        if contentType:
            response = response.replace(b"application/json", contentType, 1)
        conn.transport.write(response)

    return answer


GARBAGE = bytes(range(256)) * 3 + b"\r\n\r\n"


def garbage(conn: Conn, request: Seen) -> None:
    """Bytes that are not HTTP at all where the status line should be."""
    conn.transport.write(GARBAGE)


def trickle(conn: Conn, data: bytes, every: float = 0.1, chunked: bool = False) -> None:
    """`data` one byte at a time, `every` seconds apart: never silent for long."""

    def send(i: int) -> None:
        piece = data[i : i + 1]
        conn.transport.write(chunkOf(piece) if chunked else piece)
        if i + 1 < len(data):
            conn.later(every, send, i + 1)

    send(0)


def headerTrickle(conn: Conn, request: Seen) -> None:
    """The status line and headers one byte per 0.1 s (slowloris, before headers)."""
    trickle(
        conn,
        healthyStream("never " * 50)
        if request.stream
        else jsonResponse(b"200 OK", orjson.dumps(completion("never " * 50))),
    )


def resetMidStream(conn: Conn, request: Seen) -> None:
    if request.stream:
        conn.transport.write(
            SSE_HEAD + chunkOf(sseFrame(delta("half "))) + chunkOf(sseFrame(delta("an ")))
        )
    else:
        body = orjson.dumps(completion("half an answer " * 20))
        conn.transport.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body) + body[:40]
        )
    conn.later(0.05, conn.reset)


def stallMidStream(conn: Conn, request: Seen) -> None:
    if request.stream:
        conn.transport.write(SSE_HEAD + chunkOf(sseFrame(delta("and then "))))
    else:
        body = orjson.dumps(completion("and then nothing " * 20))
        conn.transport.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body) + body[:40]
        )


def hugeBody(conn: Conn, request: Seen) -> None:
    """Announces a 2 GB JSON body, sends a few bytes, then waits."""
    conn.transport.write(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        b'Content-Length: 2147483648\r\n\r\n{"id": "chatcmpl-huge", "choices": ['
    )


def endless(conn: Conn, request: Seen) -> None:
    """A stream line (or a JSON body) that never ends, 1 KB every 10 ms."""
    if request.stream:
        conn.transport.write(SSE_HEAD + chunkOf(b'data: {"choices": "'))
    else:
        conn.transport.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n" + chunkOf(b'{"choices": "')
        )

    def more() -> None:
        conn.transport.write(chunkOf(b"x" * 1024))
        conn.later(0.01, more)

    more()


def slowloris(conn: Conn, request: Seen) -> None:
    """Headers at once, then the body one byte per 0.1 s: ~60 s in all, never silent
    for the 0.5 s timeout; only `max_duration` can end it."""
    if request.stream:
        conn.transport.write(SSE_HEAD + chunkOf(sseFrame(delta("slowly "))))
        trickle(conn, b"".join(sseFrame(delta("drip ")) for _ in range(10)), chunked=True)
    else:
        body = orjson.dumps(completion("drip " * 100))
        conn.transport.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body)
        )
        trickle(conn, body)


def garbageBody(conn: Conn, request: Seen) -> None:
    """A 200 whose body is not what it says: binary junk in SSE or JSON clothing."""
    junk = bytes(range(1, 256)).replace(b"\n", b"")
    if request.stream:
        conn.transport.write(
            SSE_HEAD + chunkOf(sseFrame(delta("ok so far "))) + chunkOf(b"data: " + junk + b"\n\n")
        )
    else:
        conn.transport.write(jsonResponse(b"200 OK", junk))


@frozen
class Fault:
    """A scripted fault and what the client must see for it."""

    name: str
    action: Action | None
    """None: connection refused (nothing listens on the port)."""
    beforeHeaders: bool
    """The fault comes before any 2xx header: safe to fail over."""
    status: int
    """The status a client without a failover partner gets (an envelope)."""
    errorType: str
    says: str
    """In the error's message."""
    streamSays: str | None = None
    """In the `event: error` of a started stream, when that differs from `says`."""
    keeps: tuple[bool, ...] = ()
    """For these values of `stream`, the faulty answer was a whole HTTP response, so
    its connection may stay in the pool; otherwise the proxy must close it."""
    headers: dict[str, str] = field(factory=dict)
    """Headers the error must carry."""
    jsonAnswer: bool = False
    """The answer is JSON even to a stream request (which then reads it whole)."""
    deadline: bool = False
    """Ended by `max_duration`, the request's whole budget: nothing left to fail over with."""

    def readsWhole(self, stream: bool) -> bool:
        """The proxy reads this answer whole before the client gets a byte."""
        return not stream or self.jsonAnswer

    def failsOver(self, stream: bool) -> bool:
        """Whether a route with a partner must fail over: the fault came before any
        byte reached the client, and there is time left."""
        return self.beforeHeaders or (self.readsWhole(stream) and not self.deadline)


BOTH = (False, True)

FAULTS = [
    Fault("refused", None, True, 502, "api_error", "cannot connect to 127.0.0.1"),
    Fault(
        "connect-stall",
        blackhole,
        True,
        504,
        "api_error",
        f"no data for {UPSTREAM_TIMEOUT:g} s before answering",
    ),
    Fault(
        "reset-before-headers",
        resetBeforeHeaders,
        True,
        502,
        "api_error",
        "the connection failed before an answer",
    ),
    Fault(
        "stall-before-headers",
        stall,
        True,
        504,
        "api_error",
        f"no data for {UPSTREAM_TIMEOUT:g} s before answering",
    ),
    Fault(
        "429-retry-after",
        status(
            b"429 Too Many Requests",
            b'{"error": {"message": "slow down", "type": "rate_limit"}}',
            b"Retry-After: 1",
        ),
        True,
        429,
        "rate_limit_error",
        "flaky: slow down",
        keeps=BOTH,
        headers={"retry-after": "1", "x-should-retry": "true"},
    ),
    Fault(
        "500-html",
        status(
            b"500 Internal Server Error",
            b"<html><head><title>500 Internal Server Error</title></head>"
            b"<body><center><h1>500 Internal Server Error</h1></center><hr>nginx</body></html>",
            contentType=b"text/html",
        ),
        True,
        500,
        "api_error",
        "flaky: 500 Internal Server Error",
        keeps=BOTH,
    ),
    Fault(
        "503",
        status(b"503 Service Unavailable", b'{"error": {"message": "model overloaded"}}'),
        True,
        503,
        "overloaded_error",
        "flaky: model overloaded",
        keeps=BOTH,
    ),
    Fault(
        "garbage-bytes",
        garbage,
        True,
        502,
        "api_error",
        "the connection failed before an answer",
    ),
    Fault(
        "slowloris-headers",
        headerTrickle,
        True,
        504,
        "api_error",
        f"no data for {UPSTREAM_TIMEOUT:g} s before answering",
    ),
    Fault(
        "reset-mid-stream",
        resetMidStream,
        False,
        502,
        "api_error",
        "the connection was lost in the middle of its answer",
        streamSays="the connection was lost in the middle of the stream",
    ),
    Fault(
        "stall-mid-stream",
        stallMidStream,
        False,
        504,
        "api_error",
        f"no data for {UPSTREAM_TIMEOUT:g} s in the middle of its answer",
        streamSays=f"no data for {UPSTREAM_TIMEOUT:g} s in the middle of the stream",
    ),
    Fault(
        "2gb-announced",
        hugeBody,
        False,
        502,
        "api_error",
        f"the answer is larger than the {MAX_RESPONSE_BYTES}-byte limit",
        jsonAnswer=True,
    ),
    Fault(
        "never-ending-line",
        endless,
        False,
        502,
        "api_error",
        f"the answer is larger than the {MAX_RESPONSE_BYTES}-byte limit",
        streamSays=f"a stream line is longer than {MAX_LINE_BYTES} bytes",
    ),
    Fault(
        "slowloris-body",
        slowloris,
        False,
        504,
        "api_error",
        f"the request took longer than {MAX_DURATION:g} s",
        deadline=True,
    ),
    Fault(
        "garbage-body",
        garbageBody,
        False,
        502,
        "api_error",
        "the answer is not JSON",
        streamSays="the stream holds a line that is not JSON",
        keeps=(False,),
    ),
]


def knownBugs(fault: Fault, stream: bool, route: str) -> list[Any]:
    return []


TIMED = {
    "connect-stall",
    "stall-before-headers",
    "stall-mid-stream",
    "slowloris-headers",
    "slowloris-body",
    "never-ending-line",
}
"""Faults that last until a timer ends them (a timeout, `max_duration`, or a size
limit that a trickle reaches): every case of these runs on a `MemoryNet`, where that
takes no wall-clock time, and one case of each over sockets as well."""

SOCKET_CASE = (True, "partnered")
"""The (stream, route) of a timed fault that also runs over sockets."""


def cases() -> list[Any]:
    params = []
    for fault in FAULTS:
        for stream in (False, True):
            for route in ("partnered", "solo"):
                name = f"{fault.name}-{'stream' if stream else 'json'}-{route}"
                marks = knownBugs(fault, stream, route)
                if fault.name not in TIMED or (stream, route) == SOCKET_CASE:
                    params.append(
                        pytest.param("sockets", fault, stream, route, id=name, marks=marks)
                    )
                if fault.name in TIMED:
                    params.append(
                        pytest.param(
                            "memory", fault, stream, route, id=f"{name}-in-memory", marks=marks
                        )
                    )
    return params


# -- the rig ------------------------------------------------------------------------------


def backupReply(request: IRequest, fake: FakeOpenAI) -> Any:
    """The backup's answer, streamed when the request asked for a stream."""
    if fake.last.get("stream"):
        frames = [delta(word + " ") for word in BACKUP_TEXT.split(" ")]
        return sseReply([*frames, FINISH])(request, fake)
    return jsonReply(completion(BACKUP_TEXT))(request, fake)


class Sockets:
    """The rig's network: real sockets on 127.0.0.1, under the global reactor."""

    reactor: Any = reactor

    def __init__(self) -> None:
        self.ports: list[Any] = []
        self.sockets: list[socket.socket] = []

    def listen(self, factory: Factory) -> int:
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.ports.append(port)
        return int(port.getHost().port)

    def refused(self) -> int:
        return closedPort()

    def blackhole(self) -> int:
        """A listening port whose accept queue is full: a new connection hangs."""
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        filler = socket.create_connection(listener.getsockname(), timeout=5)
        self.sockets += [listener, filler]
        return int(listener.getsockname()[1])

    def wait(self, d: Deferred[Any]) -> Deferred[Any]:
        return within(d)

    async def until(self, condition: Callable[[], bool], what: str) -> None:
        await waitUntil(condition, what)

    async def close(self) -> None:
        for port in self.ports:
            await within(port.stopListening())
        for sock in self.sockets:
            sock.close()


class Memory:
    """The rig's network: a `MemoryNet`, whose clock jumps from timer to timer."""

    def __init__(self) -> None:
        self.net = MemoryNet()
        self.reactor = self.net.reactor

    def listen(self, factory: Factory) -> int:
        return self.net.listen(factory)

    def refused(self) -> int:
        return self.net.unusedPort()

    def blackhole(self) -> int:
        return self.net.blackhole()

    def wait(self, d: Deferred[Any]) -> Deferred[Any]:
        return self.net.run(d)

    async def until(self, condition: Callable[[], bool], what: str) -> None:
        self.net.runUntil(condition, what)

    async def close(self) -> None:
        pass


@define
class Rig:
    """A scripted flaky upstream, a healthy backup, the proxy, and a client, all on
    one network: real sockets, or a `MemoryNet`."""

    network: Sockets | Memory
    flaky: ScriptedFactory | None = None
    backup: FakeOpenAI = field()
    service: ProxyService | None = None
    base: str = ""
    client: Client = field()

    @backup.default
    def _backup(self) -> FakeOpenAI:
        return FakeOpenAI(clock=self.network.reactor)

    @client.default
    def _client(self) -> Client:
        return Client(self.network.reactor, self.network.wait)

    async def start(
        self,
        action: Action | None,
        retries: int = 0,
        faults: int = 1,
        flakyExtra: str = "",
        breakerFailures: int = 100,
        connectTimeout: float = 5,
    ) -> None:
        network = self.network
        if action is None:
            flakyPort = network.refused()
        elif action is blackhole:
            flakyPort = network.blackhole()
        else:
            self.flaky = ScriptedFactory(action, faults, network.reactor)
            flakyPort = network.listen(self.flaky)
        self.backup.queue(*[backupReply] * 20)
        backupPort = network.listen(Site(self.backup.resource(), reactor=network.reactor))
        config = Config.fromYAML(
            CONFIG.format(
                maxDuration=MAX_DURATION,
                maxLine=MAX_LINE_BYTES,
                maxResponse=MAX_RESPONSE_BYTES,
                flaky=flakyPort,
                backup=backupPort,
                timeout=UPSTREAM_TIMEOUT,
                retries=retries,
                flakyExtra=flakyExtra,
                breakerFailures=breakerFailures,
                connectTimeout=connectTimeout,
            ),
            {},
        )
        self.service = buildService(config, network.reactor)
        self.service.startService()
        listening = await network.wait(self.service.listeningPort())
        self.base = f"http://127.0.0.1:{listening.getHost().port}"

    async def post(self, model: str, stream: bool) -> ClientReply:
        return await self.client.post(f"{self.base}/v1/messages", request(model, stream))

    async def closed(self, conn: Conn) -> None:
        """Once `conn` is closed (a bounded wait)."""
        await self.network.wait(conn.lost)

    async def until(self, condition: Callable[[], bool], what: str) -> None:
        await self.network.until(condition, what)

    def assertIdle(self) -> None:
        """Nothing in flight, no slot held: the fault left no bookkeeping behind."""
        assert self.service is not None
        app = self.service.app
        assert app.inFlight == 0
        assert app.streamsInFlight == 0
        health = app.dispatcher.health(app.config.upstreams)
        assert {n: (h.active, h.queued) for n, h in health.items()} == {
            n: (0, 0) for n in app.config.upstreams
        }

    async def stop(self) -> None:
        if self.service is not None:
            await self.network.wait(self.service.stopService())
        await self.client.close()
        await self.network.close()
        if self.flaky is not None:
            # Every upstream connection is closed once the proxy has stopped.
            for conn in self.flaky.connections:
                await self.closed(conn)


@pytest_twisted.async_yield_fixture()
async def rig(request: pytest.FixtureRequest) -> AsyncIterator[Rig]:
    """A rig on sockets, or on a `MemoryNet` where a test is parametrized with "memory"."""
    made = Rig(Memory() if getattr(request, "param", "sockets") == "memory" else Sockets())
    try:
        yield made
    finally:
        await made.stop()


# -- the scenarios ---------------------------------------------------------------------


@pytest.mark.parametrize(("rig", "fault", "stream", "route"), cases(), indirect=["rig"])
@pytest_twisted.ensureDeferred
async def test_fault(rig: Rig, fault: Fault, stream: bool, route: str) -> None:
    """One fault on one route: what the client gets, whether the backup served it,
    that the faulty connection was closed, and that normal requests work after."""
    await rig.start(fault.action)
    reply = await rig.post(route, stream)
    if route == "partnered" and fault.failsOver(stream):
        assert words(textOf(reply, stream)) == words(BACKUP_TEXT)
        assert len(rig.backup.received) == 1
    else:
        assert len(rig.backup.received) == 0  # never after a stream started
        if fault.readsWhole(stream) or fault.beforeHeaders:
            assertEnvelope(reply, fault.status, fault.errorType, fault.says, fault.headers)
        else:
            assertStreamError(reply, fault.streamSays or fault.says)
    if rig.flaky is not None:
        assert len(rig.flaky.requests) == 1  # retries: 0, so one attempt
        if stream not in fault.keeps:
            # The proxy closed the connection that carried the fault.
            for conn in rig.flaky.faultyConnections:
                await rig.closed(conn)
    rig.assertIdle()

    # The daemon then serves normally: the backup, and flaky itself when it listens.
    assert words(textOf(await rig.post("healthy", stream), stream)) == words(BACKUP_TEXT)
    if rig.flaky is not None:
        assert words(textOf(await rig.post("solo", stream), stream)) == words(FLAKY_TEXT)
        assert len(rig.flaky.requests) == 2
    rig.assertIdle()


# -- retries, breaker and slots around faults -------------------------------------------


@pytest_twisted.ensureDeferred
async def test_retry_after_within_the_cap_retries_the_same_upstream(rig: Rig) -> None:
    """A 429 asking for 0 s is retried on flaky itself (retries: 1), not failed over."""
    await rig.start(
        status(b"429 Too Many Requests", b'{"error": "busy"}', b"Retry-After: 0"), retries=1
    )
    reply = await rig.post("partnered", False)
    assert words(textOf(reply, False)) == words(FLAKY_TEXT)
    assert len(rig.flaky.requests) == 2  # type: ignore[union-attr]
    assert len(rig.backup.received) == 0


@pytest_twisted.ensureDeferred
async def test_retries_exhausted_then_failover(rig: Rig) -> None:
    """Two resets before headers: flaky is tried twice (retries: 1), then backup."""
    await rig.start(resetBeforeHeaders, retries=1, faults=2)
    reply = await rig.post("partnered", True)
    assert words(textOf(reply, True)) == words(BACKUP_TEXT)
    assert len(rig.flaky.requests) == 2  # type: ignore[union-attr]
    assert len(rig.backup.received) == 1


@pytest.mark.parametrize("rig", ["memory"], indirect=True)
@pytest_twisted.ensureDeferred
async def test_open_breaker_skips_flaky(rig: Rig) -> None:
    """After `breaker_failures` faults flaky is skipped while it has a partner:
    partnered goes straight to backup, and flaky sees no further request from it.
    Solo has no partner, so it still goes to flaky (a breaker never makes an outage
    of its own), which has recovered."""
    await rig.start(stall, faults=2, breakerFailures=2)
    for _ in range(2):
        assertEnvelope(await rig.post("solo", False), 504, "api_error", "before answering")
    assert words(textOf(await rig.post("partnered", True), True)) == words(BACKUP_TEXT)
    assert len(rig.flaky.requests) == 2  # type: ignore[union-attr]
    assert (await rig.post("solo", False)).status == 200
    assert len(rig.flaky.requests) == 3  # type: ignore[union-attr]
    rig.assertIdle()


@pytest_twisted.ensureDeferred
async def test_stream_answered_with_json_frees_its_slot(rig: Rig) -> None:
    """With `max_concurrent: 1`, a stream request that flaky answers with plain JSON
    (as servers that ignore `stream: true` do) must give its slot back: the next
    request is served, not queued until `queue_timeout` and refused with 529."""

    def jsonEvenForStreams(conn: Conn, request: Seen) -> None:
        conn.transport.write(jsonResponse(b"200 OK", orjson.dumps(completion(FLAKY_TEXT))))

    await rig.start(
        jsonEvenForStreams,
        faults=10,
        flakyExtra="    max_concurrent: 1\n    queue_timeout: 1\n",
    )
    first = await rig.post("solo", True)
    assert words(textOf(first, True)) == words(FLAKY_TEXT)
    second = await rig.post("solo", False)
    assert second.status == 200, second.body
    rig.assertIdle()


@pytest.mark.parametrize("rig", ["memory"], indirect=True)
@pytest_twisted.ensureDeferred
async def test_client_leaving_while_connecting_is_no_upstream_failure(rig: Rig) -> None:
    """With `breaker_failures: 1`, a client that hangs up while the proxy is still
    connecting to a black-holed flaky must not open flaky's breaker: the next request
    is tried (and times out), not refused with 503 "circuit open"."""
    await rig.start(blackhole, breakerFailures=1)
    assert rig.service is not None
    app = rig.service.app
    leaving = rig.client.http.post(
        f"{rig.base}/v1/messages", data=orjson.dumps(request("solo", True))
    )
    await rig.until(lambda: app.inFlight == 1, "the request to reach the proxy")
    leaving.addErrback(lambda _: None)  # its failure is the point
    leaving.cancel()  # the client hangs up while the proxy is connecting
    await rig.until(lambda: app.inFlight == 0, "the proxy to drop the request")
    reply = await rig.post("solo", True)
    assertEnvelope(reply, 504, "api_error", "before answering")


@pytest_twisted.ensureDeferred
async def test_connect_timeout_fails_over(rig: Rig) -> None:
    """`connect_timeout` shorter than `timeout`: a black-holed flaky is given up as
    unreachable (502, not a timeout) and the partner serves."""
    await rig.start(blackhole, connectTimeout=0.2)
    assertEnvelope(await rig.post("solo", False), 502, "api_error", "cannot connect to")
    assert words(textOf(await rig.post("partnered", True), True)) == words(BACKUP_TEXT)
    rig.assertIdle()
