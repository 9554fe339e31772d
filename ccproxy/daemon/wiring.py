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
from twisted.logger import ILogObserver
from twisted.python.logfile import LogFile
from twisted.web.client import Agent

from ccproxy.config import Config, Upstream
from ccproxy.config.policy import Policy
from ccproxy.daemon.approve import approveService
from ccproxy.daemon.listen import connectionCap, listenService
from ccproxy.daemon.logs import (
    fileObserver,
    isTerminal,
    openLogFile,
    quietLevels,
    terminalObserver,
    textObserver,
)
from ccproxy.daemon.service import ProxyService
from ccproxy.ledger.model import Ledger
from ccproxy.ledger.store import SQLLedger
from ccproxy.state.local import LocalState
from ccproxy.state.model import State
from ccproxy.state.shared import RedisLink, RedisState
from ccproxy.upstream.client import AgentClient, BytesProducer, UpstreamClient
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
    """
    logFile = None
    if config.log.file:
        logFile = openLogFile(config.log)
    elif twistdLogFile:
        logFile = LogFile.fromFullPath(twistdLogFile)  # as twistd would: 1 MB, all kept

    pool = UpstreamPool(reactor, POOL_SIZE_PER_HOST)
    # Upstream cookies (load-balancer stickiness, sessions) must not be shared
    # between the many users whose requests go through these clients: the
    # upstreams' client keeps none, and treq's (telemetry) has a jar that takes none.
    cookies = CookieJar(DefaultCookiePolicy(allowed_domains=[]))
    agents: dict[float, Agent] = {}
    clients: dict[float, AgentClient] = {}

    def agentWithTimeout(connectTimeout: float) -> Agent:
        """One Agent per connect timeout, all on the one pool."""
        if connectTimeout not in agents:
            endpoints = UpstreamEndpoints(reactor, connectTimeout)
            agents[connectTimeout] = Agent.usingEndpointFactory(reactor, endpoints, pool=pool)
        return agents[connectTimeout]

    def httpWithTimeout(connectTimeout: float) -> AgentClient:
        """The upstreams' client: Twisted's Agent without treq's wrapping (`AgentClient`)."""
        if connectTimeout not in clients:
            clients[connectTimeout] = AgentClient(agentWithTimeout(connectTimeout))
        return clients[connectTimeout]

    def httpFor(upstream: Upstream) -> AgentClient:
        return httpWithTimeout(upstream.policy.connectTimeout)

    client = UpstreamClient(httpWithTimeout(Policy().connectTimeout), reactor, httpFor=httpFor)
    state = stateFor(config, reactor)
    dispatcher = Dispatcher(
        client, reactor, UpstreamState(reactor, state), offload=Offload(reactor)
    )
    # Nothing is opened here: the ledger's thread and database start with the service.
    if ledger is None and config.ledger is not None:
        ledger = SQLLedger.at(config.ledger, reactor)
    app = ProxyApp(
        config=config,
        dispatcher=dispatcher,
        clock=reactor,
        ledger=ledger,
        http=HTTPClient(
            agentWithTimeout(Policy().connectTimeout),
            cookiejar=cookies,
            data_to_body_producer=BytesProducer,
        ),
    )
    site = ProxySite.serving(app, reactor, connectionCap(openFiles))
    http = listenService(config.listen, config.reusePort, site, reactor)

    logObserver, panels = _logging(config, logFile, stdout, twistdLogsToStdout)
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
        # `python -m ccproxy approve CODE`: the kernel names the local user.
        approveService(app, reactor, config.login.approveSocket).setServiceParent(service)
    return service


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
