"""The daemon's service tree: the listening port, the upstream connection pool, the app."""

from __future__ import annotations

from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import Any, ClassVar

from treq.client import HTTPClient
from twisted.application import strports
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.web.client import Agent, HTTPConnectionPool, _HTTP11ClientFactory

from ccproxy.app import ProxyApp
from ccproxy.config import Config
from ccproxy.site import ProxySite
from ccproxy.upstream import BytesProducer, UpstreamClient

# Kept-alive connections per upstream host; enough for a team's concurrent sessions.
POOL_SIZE_PER_HOST = 64


class _QuietClientFactory(_HTTP11ClientFactory):
    """The pool's connection factory, without a log line per upstream connection."""

    noisy = False


class ProxyService(MultiService):
    """Owns the port (named child "http"), the keep-alive pool and the Klein app.

    Only I/O-free objects are built here; binding the port is the child service's
    `privilegedStartService`, and stopping closes the pool's cached connections.
    """

    log: ClassVar[Logger] = Logger()

    def __init__(self, config: Config, reactor: Any) -> None:
        super().__init__()
        self.reactor = reactor
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.pool._factory = _QuietClientFactory
        self.pool.maxPersistentPerHost = POOL_SIZE_PER_HOST
        self.pool.retryAutomatically = False
        http = HTTPClient(
            Agent(reactor, pool=self.pool),
            # Upstream cookies (load-balancer stickiness, sessions) must not be
            # shared between the many users whose requests go through this client.
            cookiejar=CookieJar(DefaultCookiePolicy(allowed_domains=[])),
            data_to_body_producer=BytesProducer,
        )
        self.app = ProxyApp(config=config, upstreams=UpstreamClient(http, reactor), clock=reactor)
        self.site = ProxySite(
            self.app.resource(), lambda: self.app.config.maxBodyBytes, reactor=reactor
        )
        self.site.noisy = False
        http_service = strports.service(config.listen, self.site, reactor=reactor)
        http_service.setName("http")
        http_service.setServiceParent(self)

    def listeningPort(self) -> Deferred[Any]:
        """The bound port, once listening (its `getHost().port` when listening on 0)."""
        return self.getServiceNamed("http")._waitingForPort  # type: ignore[attr-defined,no-any-return]

    def startService(self) -> None:
        super().startService()
        config = self.app.config
        self.log.info(
            "ccproxy serving on {listen} with upstreams {upstreams}",
            listen=config.listen,
            upstreams=", ".join(sorted(config.upstreams)),
        )
        for route in config.router.routes:
            self.log.info(
                "route {pattern} -> {targets}",
                pattern=route.pattern,
                targets=", ".join(str(t) for t in route.targets),
            )

    async def _stop(self) -> None:
        await super().stopService()
        await self.pool.closeCachedConnections()

    def stopService(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._stop())
