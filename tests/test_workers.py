"""The master of `workers: N` in memory: its supervisor on a `Clock` with fake
worker processes (restart with backoff, SIGHUP checked then passed on, SIGTERM
passed on and the stop done when every worker has ended, the log lines copied
whole), and the pieces around it (the config key, the worker's log lines)."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from twisted.application.internet import TimerService
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import Clock
from twisted.logger import LogLevel, jsonFileLogObserver
from twisted.python.failure import Failure
from twisted.python.usage import UsageError

from ccproxy.config import Config, ConfigError
from ccproxy.daemon.logs import textObserver, workerObserver
from ccproxy.daemon.tap import Options
from ccproxy.daemon.wiring import buildService
from ccproxy.daemon.workers import Backoff, Supervisor, WorkerSeat


class FakeProcess:
    """A worker's transport: its pid, and the signals it was sent."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.signals: list[str] = []

    def signalProcess(self, name: str) -> None:
        self.signals.append(name)


class Master:
    """A supervisor on a Clock, spawning fake processes (pids from 100)."""

    def __init__(self, count: int = 2, check: bool = True, **kwargs: Any) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.processes: list[tuple[int, FakeProcess, ProcessProtocol]] = []
        self.written: list[bytes] = []
        self.forgotten: list[int] = []
        self.checkAnswer = check
        self.supervisor = Supervisor(
            count,
            self.spawn,
            self.clock,
            check=lambda: self.checkAnswer,
            write=self.written.append,
            forget=self.forgotten.append,
            **kwargs,
        )

    def spawn(self, protocol: ProcessProtocol, id: int) -> FakeProcess:
        process = FakeProcess(100 + len(self.processes))
        protocol.makeConnection(process)  # type: ignore[arg-type]
        self.processes.append((id, process, protocol))
        return process

    def live(self) -> dict[int, int]:
        """Worker number -> pid of the running workers."""
        return {id: w.pid for id, w in self.supervisor.workers.items()}  # type: ignore[misc]

    def end(self, id: int, reason: Exception | None = None) -> None:
        """Worker `id`'s current process ends (killed by SIGKILL unless told)."""
        protocol = self.supervisor.workers[id]
        protocol.processEnded(Failure(reason or ProcessTerminated(signal=9)))

    def process(self, id: int) -> FakeProcess:
        return [p for i, p, _ in self.processes if i == id][-1]


def test_start_runs_every_worker() -> None:
    master = Master(3)
    master.supervisor.startService()
    assert master.live() == {1: 100, 2: 101, 3: 102}


def test_a_dead_worker_is_restarted_later_and_later_while_it_keeps_dying() -> None:
    master = Master(2)
    master.supervisor.startService()
    delays = []
    for _ in range(5):
        master.end(1)
        assert 1 not in master.live()
        waited = 0.0
        while 1 not in master.live():
            master.clock.advance(0.25)
            waited += 0.25
        delays.append(waited)
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0]
    assert master.live()[2] == 101  # the other worker was left alone
    assert master.forgotten == [100, 102, 103, 104, 105]


def test_the_backoff_stops_growing_and_starts_again_after_a_long_life() -> None:
    assert Backoff(first=1, longest=60).delay(10) == 60
    master = Master(1, backoff=Backoff(first=1, longest=4, stable=30))
    master.supervisor.startService()
    for _ in range(4):
        master.end(1)
        master.clock.advance(4)
    assert master.supervisor.quickDeaths[1] == 4
    master.clock.advance(30)  # this one lived long enough
    master.end(1)
    assert master.supervisor.quickDeaths[1] == 0
    master.clock.advance(0)
    assert 1 in master.live()  # at once


def test_a_worker_that_cannot_be_started_is_tried_again_later() -> None:
    master = Master(1)
    real = master.spawn
    failures = [OSError(11, "Resource temporarily unavailable")] * 2

    def spawn(protocol: ProcessProtocol, id: int) -> FakeProcess:
        if failures:
            raise failures.pop()
        return real(protocol, id)

    master.supervisor._spawn = spawn
    master.supervisor.startService()
    assert master.live() == {}
    master.clock.advance(1)
    assert master.live() == {}
    master.clock.advance(2)
    assert master.live() == {1: 100}


def test_reload_is_passed_on_only_when_the_config_reads_well() -> None:
    master = Master(2)
    master.supervisor.startService()
    assert master.supervisor.reload() is True
    assert [p.signals for _, p, _ in master.processes] == [["HUP"], ["HUP"]]
    master.checkAnswer = False
    assert master.supervisor.reload() is False
    assert [p.signals for _, p, _ in master.processes] == [["HUP"], ["HUP"]]


def test_stop_passes_sigterm_on_and_ends_when_every_worker_has() -> None:
    master = Master(2)
    master.supervisor.startService()
    master.end(2)  # its restart is pending when the stop comes
    stopped = master.supervisor.stopService()
    done: list[None] = []
    stopped.addCallback(done.append)
    assert master.process(1).signals == ["TERM"]
    master.clock.advance(10)
    assert master.live() == {1: 100}  # no restart while stopping
    assert not done
    master.end(1, ProcessDone(0))
    assert done == [None]
    assert len(master.processes) == 2
    assert not master.clock.getDelayedCalls()  # the killer timer is gone too


def test_a_worker_that_does_not_drain_is_killed() -> None:
    master = Master(2, killAfter=45)
    master.supervisor.startService()
    done: list[None] = []
    master.supervisor.stopService().addCallback(done.append)
    master.end(1, ProcessDone(0))
    master.clock.advance(44.9)
    assert master.process(2).signals == ["TERM"]
    master.clock.advance(0.1)
    assert master.process(2).signals == ["TERM", "KILL"]
    master.end(2)
    assert done == [None]


def test_a_stop_with_no_worker_left_is_done_at_once() -> None:
    master = Master(1)
    master.supervisor.startService()
    master.end(1)
    done: list[None] = []
    master.supervisor.stopService().addCallback(done.append)
    assert done == [None]
    master.clock.advance(100)
    assert master.live() == {}


def test_log_lines_are_copied_whole_and_never_mixed() -> None:
    master = Master(2)
    master.supervisor.startService()
    one, two = master.supervisor.workers[1], master.supervisor.workers[2]
    one.outReceived(b"w1 first\nw1 sec")
    two.outReceived(b"w2 half")
    two.outReceived(b" line\n")
    one.outReceived(b"ond\n")
    one.errReceived(b"Traceback: unfinished")
    master.end(1)
    assert master.written == [
        b"w1 first\n",
        b"w2 half line\n",
        b"w1 second\n",
        b"Traceback: unfinished\n",
    ]


def test_worker_seat() -> None:
    assert WorkerSeat.parse("2:3") == WorkerSeat(2, 3)
    assert WorkerSeat(2, 3).argument() == "2:3"
    with pytest.raises(ValueError):
        WorkerSeat.parse("two")


BASE = {"upstreams": {"u": {"url": "http://127.0.0.1:9/v1"}}, "models": {"*": "u"}}


def test_workers_key() -> None:
    assert Config.fromMapping(BASE).workers == 1
    assert Config.fromMapping({**BASE, "workers": 3}).workers == 3
    assert Config.fromMapping({**BASE, "workers": "auto"}).workers >= 1
    for bad in (0, -1, "four", True, 1.5, 10_000):
        with pytest.raises(ConfigError, match='workers: must be "auto"'):
            Config.fromMapping({**BASE, "workers": bad})
    with pytest.raises(ConfigError, match="workers: more than one needs a plain tcp listen"):
        Config.fromMapping({**BASE, "workers": 2, "listen": "unix:/tmp/ccproxy.sock"})
    assert Config.fromMapping({**BASE, "workers": 1, "listen": "unix:/tmp/ccproxy.sock"})


def test_workers_need_a_tcp_listen_given_on_the_command_line_too(tmp_path: Any) -> None:
    path = tmp_path / "ccproxy.yaml"
    path.write_text(json.dumps({**BASE, "workers": 2}))
    options = Options()
    with pytest.raises(UsageError, match="--listen: workers: more than one needs a plain tcp"):
        options.parseOptions(["--config", str(path), "--listen", "unix:/tmp/ccproxy.sock"])


def _event(**fields: Any) -> dict[str, Any]:
    return {
        "log_format": "hello {who}",
        "who": "you",
        "log_namespace": "ccproxy.access",
        "log_level": LogLevel.info,
        "log_time": 0.0,
        **fields,
    }


def test_a_workers_text_lines_name_it() -> None:
    out = io.StringIO()
    workerObserver(textObserver(out), 2)(_event())
    assert "[w2 ccproxy.access#info] hello you" in out.getvalue()


def test_a_workers_json_records_name_it() -> None:
    out = io.StringIO()
    workerObserver(jsonFileLogObserver(out), 3)(_event())
    record = json.loads(out.getvalue().strip("\x1e\n"))
    assert record["worker"] == 3
    assert record["who"] == "you"


def test_a_worker_publishes_its_load_for_the_others_every_second(tmp_path: Any) -> None:
    """The other workers read a worker's in-flight gauges from its files, which it
    refreshes every second; a single process sets them when scraped, as before."""
    clock = Clock()
    config = Config.fromMapping(BASE)
    single = buildService(config, clock, ledger=None)
    assert not [s for s in single if isinstance(s, TimerService)]
    service = buildService(
        config, clock, stdout=io.StringIO(), worker=WorkerSeat(1, 99), metricsDir=str(tmp_path)
    )
    [timer] = [s for s in service if isinstance(s, TimerService)]
    timer.startService()
    service.app.inFlight = 3
    clock.advance(1)
    registry = service.app.metrics.registry
    assert registry.get_sample_value("ccproxy_requests_in_flight") == 3
    service.app.inFlight = 0
    clock.advance(1)
    assert registry.get_sample_value("ccproxy_requests_in_flight") == 0
    timer.stopService()
