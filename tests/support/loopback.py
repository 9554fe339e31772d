"""The real service over loopback sockets, in this process: the global reactor (run by
pytest-twisted), the real `ProxyService`, and `FakeOpenAI` on a real `Site`, all on
127.0.0.1 at ports the OS picks.

- `serveFake(fake)`: a fake upstream listening on a real port.
- `startProxy(config)`: the daemon's service (`buildService`) started from a config,
  and its base URL.
- `startLoopback(config)`: both, the proxy in front of the fake; `stop()` ends both.
"""

from __future__ import annotations

from collections.abc import Callable

from attrs import define, evolve
from twisted.internet import reactor
from twisted.internet.interfaces import IListeningPort
from twisted.web.server import Site

from ccproxy.config import Config
from ccproxy.config.ledger import defaultLedger
from ccproxy.daemon.service import ProxyService
from ccproxy.daemon.wiring import buildService
from tests.support.fakes import FakeOpenAI
from tests.support.faultkit import within


def serveFake(fake: FakeOpenAI) -> IListeningPort:
    """`fake` on a real `Site` on 127.0.0.1."""
    port: IListeningPort = reactor.listenTCP(0, Site(fake.resource()), interface="127.0.0.1")
    return port


def baseURL(port: IListeningPort) -> str:
    return f"http://127.0.0.1:{port.getHost().port}"


async def startProxy(config: Config) -> tuple[ProxyService, str]:
    """A started `ProxyService` (its `listen` on 127.0.0.1) and its base URL, once it
    listens. A config that leaves `ledger:` to its default (`ccproxy.db` in the
    working directory: the repository) runs without a ledger; a test that wants one
    puts it in its tmp_path."""
    if config.ledger == defaultLedger():
        config = evolve(config, ledger=None)
    service = buildService(config, reactor)
    service.startService()
    return service, baseURL(await within(service.listeningPort()))


@define
class Loopback:
    """A fake upstream and the proxy in front of it, both listening."""

    upstream: FakeOpenAI
    upstreamPort: IListeningPort
    service: ProxyService
    base: str
    """The proxy's URL: http://127.0.0.1:PORT."""

    async def stop(self) -> None:
        await within(self.service.stopService())
        await within(self.upstreamPort.stopListening())


async def startLoopback(config: Callable[[str], str]) -> Loopback:
    """A `FakeOpenAI` (on the global reactor's clock) and the proxy started from the
    YAML `config(upstream)`, where `upstream` is the fake's base URL (…/v1)."""
    upstream = FakeOpenAI(clock=reactor)
    upstreamPort = serveFake(upstream)
    try:
        text = config(baseURL(upstreamPort) + "/v1")
        service, base = await startProxy(Config.fromYAML(text, {}))
    except BaseException:
        await upstreamPort.stopListening()
        raise
    return Loopback(upstream, upstreamPort, service, base)
