"""A loopback network in memory: real protocols, their bytes on `iosim` transports, and
all time on one `MemoryReactorClock`.

`MemoryNet.reactor` is the reactor of everything a test builds on it: the real
`ProxyService` (its `Site`, its `Agent` and connection pool, every timer), a fake
upstream on a `Site` or a byte-level scripted `Protocol`, a treq client. The
MemoryReactor only records `listenTCP` and `connectTCP`; `flush()` joins each new
connection to the factory listening on its port with a pair of `FakeTransport`s and
moves bytes both ways until nothing moves, without moving the clock. `run(d)`
alternates that with advancing the clock to its next timer, until `d` has fired: a
0.5 s silence timeout or a 60 s slowloris takes no wall-clock time, and every timer
fires in order, at its own time. The HTTP on the wire is real (Twisted's client and
server parse every byte), so a fault written at the byte level behaves as it would
on a socket, except that:

- a connection to a port that nobody listens on is refused; one to a `blackhole()`
  port hangs until it is cancelled or its connect timeout passes (as when SYNs are
  dropped);
- `abortConnection()` is `loseConnection()`: buffered bytes are still delivered,
  and there is no RST;
- `pauseProducing()` is ignored: a paused reader still gets bytes (no back
  pressure; test_backpressure covers that over sockets);
- a closed connection is closed at both ends within one `flush()`.

So keep a real-socket test of each kind of fault beside the scenarios run here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionRefusedError, TimeoutError
from twisted.internet.interfaces import IDelayedCall, IProtocolFactory
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.test.iosim import FakeTransport, IOPump, connect

SIMULATED_BOUND = 600.0
"""Seconds of the clock a single `run` may take before the test fails."""


class MemoryNet:
    """Connections between the factories on one `MemoryReactorClock`, in memory."""

    def __init__(self) -> None:
        self.reactor = MemoryReactorClock()
        self.pumps: list[IOPump] = []
        self._blackholes: set[int] = set()
        self._connectTimers: dict[Any, IDelayedCall] = {}
        self._lastPort = 20000

    def _newPort(self) -> int:
        self._lastPort += 1
        return self._lastPort

    def listen(self, factory: IProtocolFactory) -> int:
        """`factory` listening on a new port of 127.0.0.1: that port."""
        port = self._newPort()
        self.reactor.listenTCP(port, factory, interface="127.0.0.1")
        return port

    def unusedPort(self) -> int:
        """A port that nobody listens on: connecting to it is refused."""
        return self._newPort()

    def blackhole(self) -> int:
        """A port whose connections never complete."""
        port = self._newPort()
        self._blackholes.add(port)
        return port

    def _connect(self) -> bool:
        """Complete, refuse or keep waiting each connection attempt; whether any ended."""
        reactor = self.reactor
        servers = {port: factory for port, factory, _, _ in reactor.tcpServers}
        attempts = list(zip(reactor.tcpClients, reactor.connectors, strict=True))
        del reactor.tcpClients[:], reactor.connectors[:]
        ended = False
        for attempt, connector in attempts:
            host, port, factory, timeout, _ = attempt
            if connector.stoppedConnecting:  # cancelled: its endpoint has said so
                timer = self._connectTimers.pop(connector, None)
                if timer is not None and timer.active():
                    timer.cancel()
                ended = True
            elif port in servers:
                self._join(host, port, factory, servers[port])
                ended = True
            elif port in self._blackholes:
                reactor.tcpClients.append(attempt)
                reactor.connectors.append(connector)
                if connector not in self._connectTimers:
                    self._connectTimers[connector] = reactor.callLater(
                        timeout, self._timedOut, connector
                    )
            else:
                factory.clientConnectionFailed(connector, Failure(ConnectionRefusedError()))
                ended = True
        return ended

    def _timedOut(self, connector: Any) -> None:
        """What a real connector does when its connect timeout passes."""
        reactor = self.reactor
        index = reactor.connectors.index(connector)
        factory = reactor.tcpClients[index][2]
        del reactor.tcpClients[index], reactor.connectors[index]
        del self._connectTimers[connector]
        factory.clientConnectionFailed(connector, Failure(TimeoutError()))

    def _join(
        self, host: str, port: int, clientFactory: Any, serverFactory: IProtocolFactory
    ) -> None:
        serverAddress = IPv4Address("TCP", host, port)
        clientAddress = IPv4Address("TCP", "127.0.0.1", self._newPort())
        server = serverFactory.buildProtocol(clientAddress)
        client = clientFactory.buildProtocol(serverAddress)
        self.pumps.append(
            connect(
                server,
                FakeTransport(server, True, serverAddress, clientAddress),
                client,
                FakeTransport(client, False, clientAddress, serverAddress),
                greet=False,
                clock=self.reactor,
            )
        )

    def _dueNow(self) -> bool:
        now = self.reactor.seconds()
        return any(call.getTime() <= now for call in self.reactor.getDelayedCalls())

    def flush(self) -> None:
        """Make connections and move bytes until nothing moves; the clock stays."""
        for _ in range(100_000):
            self.reactor.advance(0)
            moved = self._connect()
            for pump in self.pumps:
                moved = pump.pump(advanceClock=False) or moved
            self.pumps = [
                p for p in self.pumps if not (p.clientIO.disconnected and p.serverIO.disconnected)
            ]
            if not moved and not self._dueNow():
                return
        raise AssertionError("the memory network never settles")

    def runUntil(
        self, condition: Callable[[], bool], what: str, seconds: float = SIMULATED_BOUND
    ) -> None:
        """Flush, then advance the clock timer by timer, until `condition` holds."""
        deadline = self.reactor.seconds() + seconds
        self.flush()
        while not condition():
            calls = [call.getTime() for call in self.reactor.getDelayedCalls()]
            if not calls:
                raise AssertionError(f"nothing left to happen, and still no {what}")
            when = min(calls)
            if when > deadline:
                raise AssertionError(f"no {what} after {seconds:g} s of the clock")
            self.reactor.advance(max(when - self.reactor.seconds(), 0.0))
            self.flush()

    def run(self, d: Deferred[Any], seconds: float = SIMULATED_BOUND) -> Deferred[Any]:
        """`d`, once the network has run until it has its result (see `runUntil`)."""
        done: list[bool] = []

        def settled(result: Any) -> Any:
            done.append(True)
            return result

        d.addBoth(settled)  # last in its chain: it runs once any Deferred it waits on fired
        self.runUntil(lambda: bool(done), "result", seconds)
        return d
