"""`workers: N`: one `twistd ccproxy` that binds the port and runs N worker processes
sharing it, each a whole ccproxy (`twistd -n ccproxy --worker ID:FD`) adopting the
listening socket it inherits (`listen.inheritedService`).

The master serves no request. It restarts a worker that dies (`Backoff`: at once
after a long life, slower and slower while they keep dying), checks a reload once
(a bad config is refused here, and the workers keep theirs) before passing SIGHUP
on, passes SIGTERM on and exits when every worker has drained, and is the one
writer of the log: each worker writes its lines to its stdout, a pipe the master
copies to the rotated log (so SIGUSR1 rotates it here, and the workers never
race over a rotation). One pidfile, the master's.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable, Sequence
from socket import socket
from typing import IO, Any, ClassVar

from attrs import frozen
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.interfaces import IProcessTransport
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import ILogObserver, Logger
from twisted.python.failure import Failure
from twisted.python.logfile import LogFile

from ccproxy import compat
from ccproxy.config import Config
from ccproxy.daemon.listen import workerSockets
from ccproxy.daemon.service import onSignal, readForReload, restoreSignals
from ccproxy.observe.metrics import forgetWorker

WORKER_FD = 3
"""Where a worker finds the listening socket (the first after stdin/out/err, as
systemd's socket activation hands them)."""
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


@frozen
class Backoff:
    """How long to wait before restarting a worker that died: `first` seconds after
    its first quick death, doubling up to `longest` while deaths stay quick; a
    worker that had lived `stable` seconds starts the count again."""

    first: float = 1.0
    longest: float = 60.0
    stable: float = 30.0

    def delay(self, quickDeaths: int) -> float:
        return float(min(self.longest, self.first * 2 ** max(0, quickDeaths - 1)))


@frozen
class WorkerSeat:
    """What a worker process is told on its command line: its number and the fd of
    the listening socket it inherited."""

    id: int
    fd: int

    @classmethod
    def parse(cls, text: str) -> WorkerSeat:
        number, _, fd = text.partition(":")
        if not (number.isdigit() and fd.isdigit()):
            raise ValueError(f"--worker takes ID:FD, not {text!r}")
        return cls(int(number), int(fd))

    def argument(self) -> str:
        return f"{self.id}:{self.fd}"


def workerSignals() -> None:
    """A worker's signals: SIGUSR1 (log rotation) is the master's, so a worker
    sent one by a broad `kill` ignores it rather than dying of it; and the kernel
    sends the worker SIGTERM when its master dies (Linux's PR_SET_PDEATHSIG), so a
    master killed with SIGKILL leaves no worker serving on alone: it drains and
    exits as on any SIGTERM."""
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the master died before that was set
        os.kill(os.getpid(), signal.SIGTERM)


PR_SET_PDEATHSIG = 1

Spawn = Callable[[ProcessProtocol, int], IProcessTransport]
"""Start worker number N with this protocol; its transport (pid, signalProcess)."""


class _Worker(ProcessProtocol):
    """One worker process: its output goes to the log, its end to the supervisor."""

    def __init__(self, supervisor: Supervisor, id: int, startedAt: float) -> None:
        self.supervisor = supervisor
        self.id = id
        self.startedAt = startedAt
        self.pid: int | None = None
        self.ended = False

    def connectionMade(self) -> None:
        self.pid = getattr(self.transport, "pid", None)

    def outReceived(self, data: bytes) -> None:
        self.supervisor.output(self.id, data)

    errReceived = outReceived  # a traceback before logging starts, say

    def processEnded(self, reason: Failure) -> None:
        self.ended = True
        self.supervisor.ended(self, reason)

    def signal(self, name: str) -> None:
        if not self.ended and self.transport is not None:
            try:
                self.transport.signalProcess(name)  # type: ignore[attr-defined]
            except (OSError, ProcessLookupError):
                pass  # it is ending: processEnded comes


class Supervisor(MultiService):
    """Keeps `count` workers running until stopped; the master's heart, driven by
    an injected clock and spawner (tests give a `Clock` and fake processes)."""

    log: ClassVar[Logger] = Logger()

    def __init__(
        self,
        count: int,
        spawn: Spawn,
        clock: Any,
        check: Callable[[], bool] = lambda: True,
        write: Callable[[bytes], None] = lambda data: None,
        forget: Callable[[int], None] = lambda pid: None,
        backoff: Backoff = Backoff(),
        killAfter: float = 60.0,
    ) -> None:
        """`check`: whether a reload may go on (the config reads well); `write`:
        where the workers' complete log lines go; `forget`: told each dead pid;
        `killAfter`: seconds a stop waits for the workers to drain before SIGKILL
        (their own `shutdown_grace` comes first)."""
        super().__init__()
        self.count = count
        self._spawn = spawn
        self.clock = clock
        self._check = check
        self._write = write
        self._forget = forget
        self.backoff = backoff
        self.killAfter = killAfter
        self.workers: dict[int, _Worker] = {}
        self.restarts: dict[int, Any] = {}
        self.quickDeaths: dict[int, int] = {}
        self._partial: dict[int, bytes] = {}
        self._stopping: Deferred[None] | None = None

    def startService(self) -> None:
        super().startService()
        for id in range(1, self.count + 1):
            self._start(id)

    def _start(self, id: int) -> None:
        self.restarts.pop(id, None)
        worker = _Worker(self, id, self.clock.seconds())
        self.workers[id] = worker
        try:
            self._spawn(worker, id)
        except OSError as e:  # no process could be made (EAGAIN, ENOMEM...): later
            self.log.error("worker {id} could not be started: {why}", id=id, why=str(e))
            worker.processEnded(Failure(ProcessTerminated(exitCode=None)))
            return
        self.log.info("worker {id} started (pid {pid})", id=id, pid=worker.pid)

    def output(self, id: int, data: bytes) -> None:
        """Copy a worker's complete lines to the log; keep a partial one for later,
        so that lines of two workers never mix."""
        data = self._partial.pop(id, b"") + data
        end = data.rfind(b"\n") + 1
        if end < len(data):
            self._partial[id] = data[end:]
        if end:
            self._write(data[:end])

    def ended(self, worker: _Worker, reason: Failure) -> None:
        if worker.pid is not None:
            self._forget(worker.pid)
        rest = self._partial.pop(worker.id, b"")
        if rest:
            self._write(rest + b"\n")
        if self.workers.get(worker.id) is worker:
            del self.workers[worker.id]
        if self._stopping is not None:
            if not self.workers:
                self._stopping.callback(None)
            return
        lived = self.clock.seconds() - worker.startedAt
        quick = 0 if lived >= self.backoff.stable else self.quickDeaths.get(worker.id, 0) + 1
        self.quickDeaths[worker.id] = quick
        delay = self.backoff.delay(quick) if quick else 0.0
        self.log.error(
            "worker {id} (pid {pid}) ended after {lived:.1f} s ({why}): restarting it in "
            "{delay:g} s",
            id=worker.id,
            pid=worker.pid,
            lived=lived,
            why=_why(reason),
            delay=delay,
        )
        self.restarts[worker.id] = self.clock.callLater(delay, self._start, worker.id)

    def reload(self) -> bool:
        """SIGHUP: pass it on to every worker if the config reads well (checked
        once, here); else the workers are left alone with the config they have."""
        if not self._check():
            return False
        for worker in list(self.workers.values()):
            worker.signal("HUP")
        return True

    def stopService(self) -> Deferred[None]:
        """SIGTERM every worker (each drains, as one daemon does), and fire when
        all have ended; SIGKILL those still there after `killAfter` seconds."""
        super().stopService()
        for call in self.restarts.values():
            call.cancel()
        self.restarts.clear()
        self._stopping = Deferred()
        if not self.workers:
            return succeed(None)
        for worker in list(self.workers.values()):
            worker.signal("TERM")
        self.log.info("stopping: {count} workers draining", count=len(self.workers))
        killer = self.clock.callLater(self.killAfter, self._killAll)
        done = self._stopping

        def cancelKiller(result: None) -> None:
            if killer.active():
                killer.cancel()

        done.addCallback(cancelKiller)
        return done

    def _killAll(self) -> None:
        for worker in list(self.workers.values()):
            self.log.warn("worker {id} still there: killing it", id=worker.id)
            worker.signal("KILL")


def _why(reason: Failure) -> str:
    if reason.check(ProcessDone):
        return "exit 0"
    value = reason.value
    if getattr(value, "signal", None):
        return f"signal {value.signal}"
    return f"exit {getattr(value, 'exitCode', '?')}"


class MasterService(MultiService):
    """The master of `workers: N`: binds the port, supervises the workers, handles
    the signals, writes the one log, and cleans its metrics directory at the end."""

    log: ClassVar[Logger] = Logger()

    def __init__(
        self,
        config: Config,
        reactor: Any,
        workerArguments: Sequence[str],
        configPath: str | None = None,
        logFile: LogFile | None = None,
        logObserver: ILogObserver | None = None,
        stdout: IO[str] | None = None,
    ) -> None:
        """`workerArguments`: `ccproxy`'s own options for each worker (`--config
        PATH`, `--listen ...`); `logFile`: where the workers' lines go (else
        `stdout`, else as events of the master's log); `logObserver`: handed to
        twistd, as `ProxyService` does."""
        super().__init__()
        self.config = config
        self.reactor = reactor
        self.configPath = configPath
        self.logFile = logFile
        self._logObserver = logObserver
        self._stdout = stdout
        self._arguments = list(workerArguments)
        self._sockets: list[socket] = []
        self._signals: dict[int, Any] = {}
        self.metricsDir = ""
        self.supervisor = Supervisor(
            config.workers,
            self._spawn,
            reactor,
            check=self._checkReload,
            write=self._writeLines,
            forget=self._forget,
            killAfter=config.shutdownGrace + 30,
        )
        self.supervisor.setServiceParent(self)

    def setServiceParent(self, parent: Any) -> None:
        super().setServiceParent(parent)
        if self._logObserver is not None and hasattr(parent, "setComponent"):
            parent.setComponent(ILogObserver, self._logObserver)

    def privilegedStartService(self) -> None:
        """Bind before twistd drops privileges (port 80 works as for one process)."""
        self._sockets = workerSockets(
            self.config.listen, self.config.workers, self.config.reusePort
        )
        super().privilegedStartService()

    def startService(self) -> None:
        self.metricsDir = tempfile.mkdtemp(prefix="ccproxy-metrics-")
        onSignal(self.reactor, self._signals, "SIGHUP", self.supervisor.reload)
        if self.logFile is not None:
            onSignal(self.reactor, self._signals, "SIGUSR1", self.logFile.rotate)
        port = self._sockets[0].getsockname()[1]
        self.log.info(
            "ccproxy master serving on {listen} (port {port}) with {count} workers ({how})",
            listen=self.config.listen,
            port=port,
            count=self.config.workers,
            how="a SO_REUSEPORT socket each" if self.config.reusePort else "one shared socket",
        )
        self.log.info("workers count their metrics in {path}", path=self.metricsDir)
        super().startService()

    def _spawn(self, protocol: ProcessProtocol, id: int) -> IProcessTransport:
        sock = self._sockets[(id - 1) % len(self._sockets)]
        seat = WorkerSeat(id, WORKER_FD)
        environ = {**os.environ, MULTIPROC_ENV: self.metricsDir}
        argv = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]
        argv += ["-n", "--pidfile=", "ccproxy", *self._arguments, "--worker", seat.argument()]
        transport: IProcessTransport = self.reactor.spawnProcess(
            protocol,
            sys.executable,
            argv,
            env=environ,
            childFDs={0: "w", 1: "r", 2: "r", WORKER_FD: sock.fileno()},
        )
        return transport

    def _checkReload(self) -> bool:
        config = readForReload(
            self.log, self.configPath, self.config, "the running config in every worker"
        )
        if isinstance(config, str):
            return False
        if (config.workers, config.reusePort) != (self.config.workers, self.config.reusePort):
            self.log.warn(
                "workers or reuse_port changed in {path}: the master keeps {count} "
                "workers as it started until it is restarted",
                path=self.configPath,
                count=self.config.workers,
            )
        self.log.info("reload: config checked, passing SIGHUP to every worker")
        return True

    def _writeLines(self, data: bytes) -> None:
        if self.logFile is not None:
            self.logFile.write(data.decode("utf-8", "replace"))
            self.logFile.flush()
        elif self._stdout is not None:
            self._stdout.write(data.decode("utf-8", "replace"))
            self._stdout.flush()
        else:
            for line in data.decode("utf-8", "replace").splitlines():
                self.log.info("{line}", line=line)

    def _forget(self, pid: int) -> None:
        if self.metricsDir:
            forgetWorker(pid, self.metricsDir)

    async def _stop(self) -> None:
        restoreSignals(self._signals)
        await super().stopService()  # the supervisor drains the workers
        for sock in self._sockets:
            sock.close()
        if self.metricsDir:
            shutil.rmtree(self.metricsDir, ignore_errors=True)
        self.log.info("every worker has ended: master stopping")
        compat.exitNormallyAfter(self.reactor, signal.SIGTERM)

    def stopService(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._stop())
