"""The daemon's service tree: the listening port, the upstream connection pool, the app.

Also what a long-running daemon needs from its service: SIGHUP reloads the config
(a bad file is logged and the old config kept), and stopping drains, giving streams
in flight `shutdown_grace` seconds to finish before the pool is closed.
"""

from __future__ import annotations

import os
import signal
import stat
from collections.abc import Sequence
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import IO, Any, ClassVar

from treq.client import HTTPClient
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred
from twisted.logger import ILogObserver, Logger, globalLogPublisher
from twisted.web.client import Agent

from ccproxy import compat
from ccproxy.config import Config, ConfigError, Upstream
from ccproxy.daemon.listen import listenService
from ccproxy.daemon.logs import PrettyObserver, fileObserver, isTerminal, openLogFile, quietLevels
from ccproxy.upstream.client import BytesProducer, UpstreamClient
from ccproxy.upstream.dispatch import Dispatcher, Upstreams
from ccproxy.upstream.pool import UpstreamEndpoints, UpstreamPool
from ccproxy.web.app import ProxyApp
from ccproxy.web.site import ProxySite

# Kept-alive connections per upstream host; enough for a team's concurrent sessions.
POOL_SIZE_PER_HOST = 64


class ProxyService(MultiService):
    """Owns the port (named child "http"), the keep-alive pool and the Klein app.

    Only I/O-free objects are built here; binding the port is the child service's
    `privilegedStartService`, and stopping closes the pool's cached connections.
    """

    log: ClassVar[Logger] = Logger()

    def __init__(
        self,
        config: Config,
        reactor: Any,
        configPath: str | None = None,
        stdout: IO[str] | None = None,
        startupWarnings: Sequence[str] = (),
    ) -> None:
        super().__init__()
        self.reactor = reactor
        self.configPath = configPath
        self._stdout = stdout
        self._startupWarnings = tuple(startupWarnings)
        # Opened here, before twistd daemonizes and starts logging, because twistd
        # asks the application for its log observer at that point.
        self.logFile = openLogFile(config.log) if config.log.file else None
        self._signals: dict[int, Any] = {}
        self._pretty: PrettyObserver | None = None
        self.pool = UpstreamPool(reactor, POOL_SIZE_PER_HOST)
        # Upstream cookies (load-balancer stickiness, sessions) must not be shared
        # between the many users whose requests go through these clients.
        self._cookies = CookieJar(DefaultCookiePolicy(allowed_domains=[]))
        self._clients: dict[float, HTTPClient] = {}
        client = UpstreamClient(self._clientFor(10.0), reactor, httpFor=self._httpFor)
        self.app = ProxyApp(
            config=config, dispatcher=Dispatcher(client, reactor, Upstreams(reactor)), clock=reactor
        )
        self.site = ProxySite(
            self.app.resource(), lambda: self.app.config.maxBodyBytes, reactor=reactor
        )
        http_service = listenService(config.listen, config.reusePort, self.site, reactor)
        http_service.setName("http")
        http_service.setServiceParent(self)

    def _clientFor(self, connectTimeout: float) -> HTTPClient:
        if connectTimeout not in self._clients:
            self._clients[connectTimeout] = HTTPClient(
                Agent.usingEndpointFactory(
                    self.reactor, UpstreamEndpoints(self.reactor, connectTimeout), pool=self.pool
                ),
                cookiejar=self._cookies,
                data_to_body_producer=BytesProducer,
            )
        return self._clients[connectTimeout]

    def _httpFor(self, upstream: Upstream) -> HTTPClient:
        return self._clientFor(upstream.policy.connectTimeout)

    def listeningPort(self) -> Deferred[Any]:
        """The bound port, once listening (its `getHost().port` when listening on 0)."""
        return compat.whenListening(self.getServiceNamed("http"))  # type: ignore[arg-type]

    def setServiceParent(self, parent: Any) -> None:
        super().setServiceParent(parent)
        if self.logFile is not None and hasattr(parent, "setComponent"):
            parent.setComponent(
                ILogObserver, quietLevels(fileObserver(self.app.config.log, self.logFile))
            )

    def startService(self) -> None:
        super().startService()
        config = self.app.config
        self._onSignal("SIGHUP", self.reload)
        if self.logFile is not None:
            self._onSignal("SIGUSR1", self.logFile.rotate)
        if config.pretty and self._stdout is not None and isTerminal(self._stdout):
            self._pretty = PrettyObserver(self._stdout)
            globalLogPublisher.addObserver(self._pretty)
        self._warnAboutSecrets(config)
        for warning in self._startupWarnings:
            self.log.warn("settings of the user running ccproxy: {warning}", warning=warning)
        self.log.info(
            "ccproxy serving on {listen} with upstreams {upstreams}",
            listen=config.listen,
            upstreams=", ".join(sorted(config.upstreams)),
        )
        self._logRoutes(config)

    def _onSignal(self, name: str, handler: Any) -> None:
        """Run `handler` in the reactor when the signal comes (signal-safe, as
        twistd's own SIGUSR1 rotation); the previous handler returns on stop."""
        number = getattr(signal, name, None)
        if number is not None:
            self._signals[number] = signal.signal(
                number, lambda *_: self.reactor.callFromThread(handler)
            )

    def _warnAboutSecrets(self, config: Config) -> None:
        if not config.literalSecrets or config.source is None:
            return
        try:
            mode = os.stat(config.source).st_mode
        except OSError:
            return
        if mode & (stat.S_IRGRP | stat.S_IROTH):
            self.log.warn(
                "{path} is readable by other users and holds keys written in it ({keys}): "
                'use "${{VAR}}" and the environment, or chmod 600 it',
                path=config.source,
                keys=", ".join(config.literalSecrets),
            )

    def _logRoutes(self, config: Config) -> None:
        for route in config.router.routes:
            self.log.info(
                "route {pattern} -> {targets}",
                pattern=route.pattern,
                targets=", ".join(str(t) for t in route.targets),
            )

    def reload(self) -> bool:
        """Read the config file again; serve new requests from it if it is good.

        A bad file, or one that changes `listen` (a restart is needed for that), is
        logged and the running config is kept.
        """
        if self.configPath is None:
            self.log.warn("reload asked, but the config came from the environment: nothing to read")
            return False
        try:
            config = Config.fromPath(self.configPath)
        except ConfigError as e:
            self.log.error(
                "reload refused, keeping the running config: {path}: {problem}",
                path=self.configPath,
                problem=str(e),
            )
            return False
        if config.listen != self.app.config.listen:
            self.log.error(
                "reload refused, keeping the running config: listen changed from "
                "{old} to {new}, which needs a restart",
                old=self.app.config.listen,
                new=config.listen,
            )
            return False
        self.app.reconfigure(config)
        self.log.info(
            "config reloaded from {path} (generation {generation})",
            path=self.configPath,
            generation=self.app.generation,
        )
        self._logRoutes(config)
        self._warnAboutSecrets(config)
        return True

    async def _stop(self) -> None:
        for number, previous in self._signals.items():
            signal.signal(number, previous)
        self._signals = {}
        if self._pretty is not None:
            globalLogPublisher.removeObserver(self._pretty)
        await super().stopService()  # the port stops accepting
        grace = self.app.config.shutdownGrace
        if self.app.inFlight:
            self.log.info(
                "draining {count} requests in flight (up to {grace:g} s)",
                count=self.app.inFlight,
                grace=grace,
            )
            idle = self.app.whenIdle()
            timer = self.reactor.callLater(grace, idle.cancel)
            try:
                await idle
            except Exception:
                self.log.warn(
                    "{count} requests still in flight after {grace:g} s: stopping anyway",
                    count=self.app.inFlight,
                    grace=grace,
                )
            finally:
                if timer.active():
                    timer.cancel()
        await self.pool.closeCachedConnections()

    def stopService(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._stop())
