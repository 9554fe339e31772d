"""The running daemon's lifecycle: start, SIGHUP reload, SIGUSR1 log rotation, drain, stop.

What a long-running daemon needs from its service: SIGHUP reloads the config (a bad
file is logged and the old config kept), and stopping drains, giving streams in
flight `shutdown_grace` seconds to finish, and their last bytes time to reach the
client (`ProxySite.beginDrain`), before the pool is closed. The objects it
works with are built by `ccproxy.daemon.wiring.buildService`.
"""

from __future__ import annotations

import os
import signal
import stat
from collections.abc import Sequence
from typing import IO, Any, ClassVar

from attrs import evolve
from twisted.application.service import IService, MultiService
from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import ILogObserver, Logger, globalLogPublisher
from twisted.python.logfile import LogFile

from ccproxy import compat
from ccproxy.config import Config, ConfigError
from ccproxy.daemon.logs import PrettyObserver, isTerminal
from ccproxy.ledger.store import SQLLedger
from ccproxy.state.local import LocalState
from ccproxy.state.model import State
from ccproxy.upstream.pool import UpstreamPool
from ccproxy.web.app import ProxyApp
from ccproxy.web.site import ProxySite


class ProxyService(MultiService):
    """Starts and stops the listening port (its child named "http") around the app.

    It builds nothing: binding the port is the child's `privilegedStartService`,
    starting opens the ledger, and stopping drains the app, writes the ledger's
    last rows, then closes the pool's cached connections.
    """

    log: ClassVar[Logger] = Logger()

    def __init__(
        self,
        app: ProxyApp,
        pool: UpstreamPool,
        http: IService,
        reactor: Any,
        site: ProxySite,
        state: State | None = None,
        ledger: SQLLedger | None = None,
        configPath: str | None = None,
        logFile: LogFile | None = None,
        logObserver: ILogObserver | None = None,
        panels: IO[str] | None = None,
        startupWarnings: Sequence[str] = (),
    ) -> None:
        """`site`: what `http` serves, whose client connections stopping drains;
        `state`: the state backend, started and stopped with the service; `ledger`:
        the database ledger, likewise (None: none, or one the caller owns);
        `logObserver`: handed to twistd as the application's (None: twistd's
        own); `panels`: where `pretty` panels go, if it is a terminal once started."""
        super().__init__()
        self.app = app
        self.state = state if state is not None else LocalState(reactor)
        self.ledger = ledger
        self.pool = pool
        self.reactor = reactor
        self.site = site
        self.configPath = configPath
        self.logFile = logFile
        self._logObserver = logObserver
        self._panels = panels
        self._startupWarnings = tuple(startupWarnings)
        self._signals: dict[int, Any] = {}
        self._pretty: PrettyObserver | None = None
        http.setName("http")
        http.setServiceParent(self)

    def listeningPort(self) -> Deferred[Any]:
        """The bound port, once listening (its `getHost().port` when listening on 0)."""
        return compat.whenListening(self.getServiceNamed("http"))  # type: ignore[arg-type]

    def setServiceParent(self, parent: Any) -> None:
        """twistd asks the application for its log observer right after `makeService`,
        before it daemonizes and starts logging: the observer is handed over here."""
        super().setServiceParent(parent)
        if self._logObserver is not None and hasattr(parent, "setComponent"):
            parent.setComponent(ILogObserver, self._logObserver)

    def startService(self) -> None:
        super().startService()
        config = self.app.config
        self.state.start()
        self._onSignal("SIGHUP", self.reload)
        if self.logFile is not None:
            self._onSignal("SIGUSR1", self.logFile.rotate)
        if self._panels is not None and isTerminal(self._panels):
            self._pretty = PrettyObserver(self._panels)
            globalLogPublisher.addObserver(self._pretty)
        self._warnAboutSecrets(config)
        if self.ledger is not None:
            # After twistd has daemonized: a thread does not survive its fork.
            self.ledger.start()
            self.log.info("ledger: {url}", url=str(self.ledger.url))
        elif self.app.ledger is None:
            self.log.info("ledger: off (/v1/usage counts in this process, since it started)")
        for warning in self._startupWarnings:
            self.log.warn("settings of the user running ccproxy: {warning}", warning=warning)
        self.log.info(
            "ccproxy serving on {listen} with upstreams {upstreams}",
            listen=config.listen,
            upstreams=", ".join(sorted(config.upstreams)),
        )
        self._logRoutes(config)

    def _onSignal(self, name: str, handler: Any) -> None:
        onSignal(self.reactor, self._signals, name, handler)

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
        for rule in config.router.rules:
            self.log.info(
                "route {label} when {when} -> {targets}",
                label=rule.label,
                when=str(rule.when),
                targets=", ".join(str(t) for t in rule.route.targets),
            )
        for route in config.router.routes:
            self.log.info(
                "route {pattern} -> {targets}",
                pattern=route.pattern,
                targets=", ".join(str(t) for t in route.targets),
            )

    def reload(self) -> bool:
        """Read the config file again; serve new requests from it if it is good.

        A bad file, or one that changes `listen` (a restart is needed for that), is
        logged and the running config is kept. The status page shows the outcome.
        """
        refusal = self._reload()
        if refusal is None:
            self.app.status.noteReload(True, f"generation {self.app.generation}")
        else:
            self.app.status.noteReload(False, refusal)
        return refusal is None

    def _reload(self) -> str | None:
        """`reload`'s work: None once the new config serves, else why not."""
        config = readForReload(self.log, self.configPath, self.app.config)
        if isinstance(config, str):
            return config
        if config.redis != self.app.config.redis:
            self.log.warn(
                "state changed in {path}: the daemon keeps the state it started with "
                "until it is restarted",
                path=self.configPath,
            )
        if config.ledger != self.app.config.ledger:
            self.log.warn(
                "ledger changed in {path}: the daemon keeps writing to {url} until it is restarted",
                path=self.configPath,
                url=str(self.app.config.ledger or "off"),
            )
            config = evolve(config, ledger=self.app.config.ledger)
        if config.login.approveSocket != self.app.config.login.approveSocket:
            self.log.warn(
                "login.approve_socket changed in {path}: the daemon keeps the socket it "
                "started with until it is restarted",
                path=self.configPath,
            )
        if config.log != self.app.config.log:
            self.log.warn(
                "log settings changed in {path}: the daemon keeps logging as it started "
                "until it is restarted",
                path=self.configPath,
            )
        self.app.reconfigure(config)
        self.log.info(
            "config reloaded from {path} (generation {generation})",
            path=self.configPath,
            generation=self.app.generation,
        )
        self._logRoutes(config)
        self._warnAboutSecrets(config)
        return None

    async def _stop(self) -> None:
        restoreSignals(self._signals)
        if self._pretty is not None:
            globalLogPublisher.removeObserver(self._pretty)
        await super().stopService()  # the port stops accepting
        self.site.beginDrain()
        self.app.status.closeStreams()  # a status page's stream would hold the drain
        grace = self.app.config.shutdownGrace
        if self.app.inFlight:
            self.log.info(
                "draining {count} requests in flight (up to {grace:g} s)",
                count=self.app.inFlight,
                grace=grace,
            )
        drained = Deferred.fromCoroutine(self._drained())
        timer = self.reactor.callLater(grace, drained.cancel)
        try:
            await drained
        except CancelledError:
            self.log.warn(
                "{count} requests in flight and {connections} client connections open "
                "after {grace:g} s: stopping anyway",
                count=self.app.inFlight,
                connections=self.site.connections,
                grace=grace,
            )
            self.site.abortAll()
        else:
            # A clean drain is a clean exit: 0, not the 143 of a death by SIGTERM.
            # Cut short, it stays 143, so a supervisor can tell. Ctrl-C (SIGINT)
            # keeps its status, which shells rely on.
            compat.exitNormallyAfter(self.reactor, signal.SIGTERM)
        finally:
            if timer.active():
                timer.cancel()
        if self.ledger is not None:
            await self.ledger.stop()  # every request has left its row by now
        await self.pool.closeCachedConnections()
        await self.state.stop()

    async def _drained(self) -> None:
        """Every request answered, and every answer's last byte written: a handler
        that has returned may still have its end in the connection's buffer."""
        await self.app.whenIdle()
        await self.site.whenClosed()

    def stopService(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._stop())


def onSignal(reactor: Any, saved: dict[int, Any], name: str, handler: Any) -> None:
    """Run `handler` in the reactor when the signal comes (signal-safe, as twistd's
    own SIGUSR1 rotation); the previous handler is kept in `saved`."""
    number = getattr(signal, name, None)
    if number is not None:
        saved[number] = signal.signal(number, lambda *_: reactor.callFromThread(handler))


def restoreSignals(saved: dict[int, Any]) -> None:
    """Put back the handlers `onSignal` replaced."""
    for number, previous in saved.items():
        signal.signal(number, previous)
    saved.clear()


def readForReload(
    log: Logger, path: str | None, running: Config, keeping: str = "the running config"
) -> Config | str:
    """The config file read again for a reload, or why it cannot be (said in the
    log too, with what is kept): no file, a bad one, or a new `listen`."""
    if path is None:
        log.warn("reload asked, but the config came from the environment: nothing to read")
        return "the config came from the environment: nothing to read"
    try:
        config = Config.fromPath(path)
    except ConfigError as e:
        log.error(
            "reload refused, keeping {keeping}: {path}: {problem}",
            keeping=keeping,
            path=path,
            problem=str(e),
        )
        return f"{path}: {e}"
    if config.listen != running.listen:
        log.error(
            "reload refused, keeping {keeping}: listen changed from {old} to {new}, which "
            "needs a restart",
            keeping=keeping,
            old=running.listen,
            new=config.listen,
        )
        return "listen changed, which needs a restart"
    return config
