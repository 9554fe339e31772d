"""The composition root: the daemon's whole object graph, built in one function.

`makeService` (twistd) and the tests call `buildService`; nothing else builds the
pool, the HTTP clients, the dispatcher, the app or the site. Read it top to bottom
to see what a request goes through. Only I/O-free objects are built here, because
twistd daemonizes afterwards; the one exception is the log file, which twistd asks
for before it starts logging.
"""

from __future__ import annotations

from collections.abc import Sequence
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import IO, Any

from treq.client import HTTPClient
from twisted.application.internet import TimerService
from twisted.logger import ILogObserver
from twisted.python.logfile import LogFile
from twisted.web.client import Agent

from ccproxy.compat import bindTimerMethods
from ccproxy.config import Config, Upstream
from ccproxy.config.policy import Policy
from ccproxy.daemon.approve import approveService
from ccproxy.daemon.listen import connectionCap, inheritedService, listenService
from ccproxy.daemon.logs import (
    fileObserver,
    isTerminal,
    openLogFile,
    quietLevels,
    terminalObserver,
    textObserver,
    workerObserver,
)
from ccproxy.daemon.service import ProxyService
from ccproxy.daemon.workers import MasterService, WorkerSeat
from ccproxy.ledger.model import Ledger
from ccproxy.ledger.store import SQLLedger
from ccproxy.observe.metrics import Metrics
from ccproxy.state.local import LocalState
from ccproxy.state.model import State
from ccproxy.state.shared import RedisLink, RedisState
from ccproxy.upstream.client import BytesProducer, PooledClient, UpstreamClient
from ccproxy.upstream.dispatch import Dispatcher, UpstreamState
from ccproxy.upstream.offload import Offload
from ccproxy.upstream.pool import UpstreamEndpoints, UpstreamPool
from ccproxy.web.app import ProxyApp
from ccproxy.web.site import ProxySite

POOL_SIZE_PER_HOST = 64
"""Kept-alive connections per upstream host; enough for a team's concurrent sessions."""


def buildService(
    config: Config,
    reactor: Any,
    configPath: str | None = None,
    stdout: IO[str] | None = None,
    startupWarnings: Sequence[str] = (),
    twistdLogsToStdout: bool = False,
    twistdLogFile: str | None = None,
    openFiles: int = 1024,
    ledger: Ledger | None = None,
    worker: WorkerSeat | None = None,
    metricsDir: str | None = None,
) -> ProxyService:
    """The daemon for `config`: port -> site -> app -> dispatcher -> client -> pool,
    with client limits, budgets and breakers in the state backend (`stateFor`), and
    each request's row in the ledger (`ledger`, when given, takes the config's place).

    `configPath` is what SIGHUP reads again (None: the config came from the
    environment); `stdout` is where `pretty` panels go; `twistdLogsToStdout` says
    that twistd's own log lines would go there too, `twistdLogFile` that they would
    go to that file (both are then written here, with control characters escaped);
    `openFiles` is the process's open-files limit, which caps the connections
    served at once; `ledger` is where budgets read what was spent before.

    `worker`: this process is one of a master's workers (`workers: N`): it serves
    the socket it inherited, logs to `stdout` (the master writes the log), and
    counts its metrics in `metricsDir` beside the other workers.
    """
    logFile = None if worker is not None else _openLog(config, twistdLogFile)
    bindTimerMethods(reactor)  # three objects fewer per timer (see compat)

    pool = UpstreamPool(reactor, POOL_SIZE_PER_HOST)
    # Upstream cookies (load-balancer stickiness, sessions) must not be shared
    # between the many users whose requests go through these clients: the
    # upstreams' client keeps none, and treq's (telemetry) has a jar that takes none.
    cookies = CookieJar(DefaultCookiePolicy(allowed_domains=[]))
    clients: dict[float, PooledClient] = {}

    def httpWithTimeout(connectTimeout: float) -> PooledClient:
        """The upstreams' client per connect timeout, all on the one pool: no treq,
        no Agent (`PooledClient`)."""
        if connectTimeout not in clients:
            clients[connectTimeout] = PooledClient(pool, UpstreamEndpoints(reactor, connectTimeout))
        return clients[connectTimeout]

    def httpFor(upstream: Upstream) -> PooledClient:
        return httpWithTimeout(upstream.policy.connectTimeout)

    client = UpstreamClient(httpWithTimeout(Policy().connectTimeout), reactor, httpFor=httpFor)
    state = stateFor(config, reactor)
    dispatcher = Dispatcher(
        client, reactor, UpstreamState(reactor, state), offload=Offload(reactor)
    )
    # Nothing is opened here: the ledger's thread and database start with the service.
    if ledger is None and config.ledger is not None:
        ledger = SQLLedger.at(config.ledger, reactor)
    metrics = Metrics(multiprocessDir=metricsDir)
    app = ProxyApp(
        config=config,
        dispatcher=dispatcher,
        clock=reactor,
        ledger=ledger,
        metrics=metrics,
        http=HTTPClient(
            Agent.usingEndpointFactory(
                reactor, UpstreamEndpoints(reactor, Policy().connectTimeout), pool=pool
            ),
            cookiejar=cookies,
            data_to_body_producer=BytesProducer,
        ),
    )
    site = ProxySite.serving(app, reactor, connectionCap(openFiles))
    if worker is None:
        http = listenService(config.listen, config.reusePort, site, reactor)
        logObserver, panels = _logging(config, logFile, stdout, twistdLogsToStdout)
    else:
        http = inheritedService(worker.fd, site, reactor)
        logObserver, panels = _workerLogging(config, worker, stdout), None
    service = ProxyService(
        app,
        pool,
        http,
        reactor,
        site,
        state=state,
        ledger=ledger if isinstance(ledger, SQLLedger) else None,
        configPath=configPath,
        logFile=logFile,
        logObserver=logObserver,
        panels=panels,
        startupWarnings=startupWarnings,
    )
    if config.login.approveSocket is not None and app.signIn.serving(config):
        # `python -m ccproxy approve CODE`: the kernel names the local user. One
        # process holds the socket: the daemon, or with `workers: N` its first worker.
        if worker is None or worker.id == 1:
            approveService(app, reactor, config.login.approveSocket).setServiceParent(service)
    if metricsDir is not None:
        # The other workers read this one's gauges from its files: keep them fresh.
        refresh = TimerService(METRICS_REFRESH, _publishLoad, app)
        refresh.clock = reactor
        refresh.setServiceParent(service)
    return service


METRICS_REFRESH = 1.0
"""Seconds between a worker's updates of its in-flight gauges for the others."""


def _publishLoad(app: ProxyApp) -> None:
    app.metrics.inFlight.set(app.inFlight)
    app.metrics.streamsInFlight.set(app.streamsInFlight)


def masterService(
    config: Config,
    reactor: Any,
    workerArguments: Sequence[str],
    configPath: str | None = None,
    stdout: IO[str] | None = None,
    twistdLogsToStdout: bool = False,
    twistdLogFile: str | None = None,
) -> MasterService:
    """The master of `workers: N` (N > 1): it binds the port and runs the workers,
    each `twistd ccproxy WORKERARGUMENTS --worker ID:FD`; it opens the log they all
    write to, through it."""
    logFile = _openLog(config, twistdLogFile)
    logObserver, _ = _logging(config, logFile, stdout, twistdLogsToStdout)
    return MasterService(
        config,
        reactor,
        workerArguments,
        configPath=configPath,
        logFile=logFile,
        logObserver=logObserver,
        stdout=stdout if twistdLogsToStdout else None,
    )


def _openLog(config: Config, twistdLogFile: str | None) -> LogFile | None:
    if config.log.file:
        return openLogFile(config.log)
    if twistdLogFile:
        return LogFile.fromFullPath(twistdLogFile)  # as twistd would: 1 MB, all kept
    return None


def _workerLogging(config: Config, worker: WorkerSeat, stdout: IO[str] | None) -> ILogObserver:
    """A worker's log: its lines on its stdout, in the log's format, marked with
    its number; the master copies them into the one log file."""
    assert stdout is not None, "a worker logs to its stdout"
    observer = workerObserver(fileObserver(config.log, stdout), worker.id)
    return quietLevels(observer) if config.log.file else observer


def stateFor(config: Config, reactor: Any) -> State:
    """Where client limits, budgets and breakers are counted: in Redis for every
    process pointing at it (`state: {redis: …}`), else in this process. Nothing
    connects before the service starts."""
    if config.redis is None:
        return LocalState(reactor)
    return RedisState(RedisLink(config.redis, reactor), reactor)


def _logging(
    config: Config, logFile: LogFile | None, stdout: IO[str] | None, twistdLogsToStdout: bool
) -> tuple[ILogObserver | None, IO[str] | None]:
    """The log observer to hand twistd (None: its own), and where to show panels.

    twistd's own file or stdout gets the same text as twistd would write, with
    control characters escaped. With `pretty` on the terminal twistd logs to, the
    panels take the place of twistd's lines for the same events: an observer of
    their own beside twistd's printed every exchange twice, as a line and a panel.
    """
    panels = stdout if config.pretty else None
    if logFile is not None and config.log.file:
        return quietLevels(fileObserver(config.log, logFile)), panels
    if logFile is not None:
        return textObserver(logFile), panels
    if twistdLogsToStdout and stdout is not None:
        if panels is not None and isTerminal(stdout):
            return terminalObserver(stdout), None
        return textObserver(stdout), panels
    return None, panels
