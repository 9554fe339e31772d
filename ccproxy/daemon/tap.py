"""`twistd ccproxy`: command-line options and the service maker.

The config is read and validated in `postOptions`, before twistd daemonizes, so a
bad file stops the start with a `UsageError` naming the file, the key and the
problem. `makeService` hands the result to the composition root, `buildService`.
"""

from __future__ import annotations

import os
import sys

from attrs import evolve
from twisted.python import usage

from ccproxy.config import Config, ConfigError
from ccproxy.config.claudesettings import defaultSettingsPath, settingsWarnings
from ccproxy.config.endpoints import endpoint
from ccproxy.config.ledger import ledgerProblem
from ccproxy.config.load import checkOpenListen, checkWorkersListen
from ccproxy.config.seed import defaultDotenv, settingsFromEnvironment
from ccproxy.daemon.heap import settleHeap
from ccproxy.daemon.listen import raiseOpenFilesLimit
from ccproxy.daemon.logs import logFileProblem
from ccproxy.daemon.service import ProxyService
from ccproxy.daemon.wiring import buildService, masterService
from ccproxy.daemon.workers import MULTIPROC_ENV, MasterService, WorkerSeat, workerSignals


class Options(usage.Options):
    """Options of `twistd ccproxy`."""

    synopsis = "[--config PATH] [--listen ENDPOINT]"
    optParameters = [
        [
            "config",
            "c",
            None,
            "Path of the YAML configuration file (without it: the environment, as the "
            "original single-gateway proxy read it).",
        ],
        ["listen", "l", None, "Twisted endpoint to listen on (overrides the config's listen)."],
        [
            "worker",
            None,
            None,
            "ID:FD: run as worker ID of a master (workers: N), serving the listening "
            "socket inherited at FD (the master gives it; not for hand use).",
            WorkerSeat.parse,
        ],
    ]

    def postOptions(self) -> None:
        path = self["config"]
        if path:
            path = self["config"] = os.path.abspath(path)  # twistd chdirs when daemonizing
            try:
                config = Config.fromPath(path)
            except ConfigError as e:
                raise usage.UsageError(f"{path}: {e}") from None
            problem = logFileProblem(config.log)
            if problem:
                raise usage.UsageError(f"{path}: log.file: {problem}")
        else:
            config = _fromEnvironment()
        problem = ledgerProblem(config.ledger)
        if problem:
            raise usage.UsageError(f"{path}: ledger: {problem}" if path else f"ledger: {problem}")
        if self["listen"]:
            try:
                config = evolve(config, listen=endpoint(self["listen"], "--listen"))
                checkOpenListen(config)
                checkWorkersListen(config)
            except ConfigError as e:
                problem = e.problem if e.path == "listen" else str(e)
                raise usage.UsageError(f"--listen: {problem}") from None
        self["loaded"] = config

    def workerArguments(self) -> list[str]:
        """The options a master passes on to its workers (they read the same file)."""
        arguments = ["--config", self["config"]] if self["config"] else []
        return arguments + (["--listen", self["listen"]] if self["listen"] else [])


def _fromEnvironment() -> Config:
    """Seed-compatible mode: no --config, so the original single-gateway proxy's
    environment variables (and a .env in the working directory) describe it."""
    try:
        seed = settingsFromEnvironment(os.environ, defaultDotenv())
    except ConfigError as e:
        raise usage.UsageError(f"no --config given, so the environment is read: {e}") from None
    config = evolve(seed.config, pretty=seed.pretty)
    if seed.logPayloadMaxChars:
        config = evolve(config, logPayloadMaxChars=seed.logPayloadMaxChars)
    return config


def makeService(options: Options) -> ProxyService | MasterService:
    """The service for twistd; the one place that touches the global reactor.
    With `workers: N` (N > 1), the master that runs N of these; with `--worker`,
    one of them."""
    from twisted.internet import reactor

    config: Config = options["loaded"]
    seat: WorkerSeat | None = options["worker"]
    if seat is None and config.workers > 1:
        raiseOpenFilesLimit()  # the workers inherit it
        return masterService(
            config,
            reactor,
            options.workerArguments(),
            configPath=options["config"],
            stdout=sys.stdout,
            twistdLogsToStdout=_twistdLogsToStdout(options),
            twistdLogFile=_twistdLogFile(options),
        )
    if seat is not None:
        workerSignals()
    service = buildService(
        options["loaded"],
        reactor,
        configPath=options["config"],
        stdout=sys.stdout,
        startupWarnings=[
            f.line() for f in settingsWarnings(defaultSettingsPath(os.environ), os.environ)
        ],
        twistdLogsToStdout=_twistdLogsToStdout(options),
        twistdLogFile=_twistdLogFile(options),
        openFiles=raiseOpenFilesLimit(),
        worker=seat,
        metricsDir=os.environ.get(MULTIPROC_ENV) if seat is not None else None,
    )
    settleHeap()  # process-wide, like the reactor: here and nowhere else
    return service


def _twistdLogsToStdout(options: Options) -> bool:
    """Whether twistd logs to this process's stdout: in the foreground (`-n`) with no
    --logfile (or `--logfile -`), --syslog or --logger. twistd's own options are
    the parent of ours; without one (a test), nothing is known."""
    twistd = getattr(options, "parent", None)
    if twistd is None:
        return False
    return (
        bool(twistd.get("nodaemon"))
        and twistd.get("logfile") in (None, "", "-")
        and not twistd.get("syslog")
        and not twistd.get("logger")
    )


def _twistdLogFile(options: Options) -> str | None:
    """The file twistd would log to (its --logfile, twistd.log when daemonized), as
    an absolute path: ccproxy opens it itself, to escape what it writes there. None
    where twistd logs elsewhere (stdout, --syslog, --logger) or nothing is known."""
    twistd = getattr(options, "parent", None)
    if twistd is None or twistd.get("syslog") or twistd.get("logger"):
        return None
    logfile = twistd.get("logfile")
    if logfile == "-" or (not logfile and twistd.get("nodaemon")):
        return None
    return os.path.abspath(logfile or "twistd.log")
