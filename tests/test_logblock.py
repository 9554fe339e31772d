"""Every documented form of the `log:` block, in a real `twistd -n ccproxy`: the file
is read back after the daemon has run, rotated and stopped.

`log: {file: X}` exactly as the README shows it once logged nothing at all (the
attrs slots, not their defaults, reached `LogFile`, which died at its first size
check); a parse-level test could not see that, so these start the daemon.
"""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

from twisted.internet import reactor
from twisted.logger import LogLevel, capturedLogs, eventsFromJSONLogFile, formatEvent

from ccproxy.config import Config
from ccproxy.daemon.wiring import buildService
from tests.support.processes import waitFor
from tests.support.realdaemon import (
    ENV,
    UNREACHABLE,
    Daemon,
    daemonsFixture,  # noqa: F401 (the `daemons` fixture)
    startDaemon,
    twistd,
)

CONFIG = 'listen: "tcp:0:interface=127.0.0.1"\n' + UNREACHABLE


def run(daemons: list[Daemon], home: Path, block: str) -> Daemon:
    daemons.append(startDaemon(home, UNREACHABLE + block))
    return daemons[-1]


def logNames(home: Path) -> list[str]:
    return sorted(p.name for p in home.iterdir() if p.name.startswith("ccproxy.log"))


def test_file_alone_logs_everything_to_it(tmp_path: Path, daemons: list[Daemon]) -> None:
    daemon = run(daemons, tmp_path, "log: {file: ccproxy.log}\n")
    ids = [daemon.request() for _ in range(3)]
    assert daemon.stop() == 0  # SIGTERM with nothing in flight: a clean exit
    log = (tmp_path / "ccproxy.log").read_text()
    assert "ccproxy serving on" in log
    assert all(f"{i} - GET /v1/models" in log for i in ids)
    assert log.rstrip().endswith("Server Shut Down.")
    assert logNames(tmp_path) == ["ccproxy.log"]
    assert (tmp_path / "stdout").read_text() == ""  # nothing left for twistd's own log


def test_max_bytes_without_keep_rotates_again_and_again(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    """Past the second rotation (where `keep` is first compared) and past `keep`'s
    default of 5: logging goes on, and 5 old files are kept."""
    daemon = run(daemons, tmp_path, "log: {file: ccproxy.log, max_bytes: 1000}\n")
    ids = [daemon.request() for _ in range(60)]  # some 9 KB of access lines
    daemon.stop()
    assert logNames(tmp_path) == ["ccproxy.log"] + [f"ccproxy.log.{i}" for i in range(1, 6)]
    current = (tmp_path / "ccproxy.log").read_text()
    assert current.rstrip().endswith("Server Shut Down.")
    newest = (tmp_path / "ccproxy.log.1").read_text() + current
    assert f"{ids[-1]} - GET /v1/models" in newest
    assert all(p.stat().st_size < 1000 + 300 for p in tmp_path.glob("ccproxy.log*"))


def test_keep_alone_bounds_what_sigusr1_rotates(tmp_path: Path, daemons: list[Daemon]) -> None:
    """No size reached (10 MiB by default): only SIGUSR1 rotates, and `keep` holds."""
    daemon = run(daemons, tmp_path, "log: {file: ccproxy.log, keep: 2}\n")
    ids = []
    for _ in range(4):
        ids.append(daemon.request())
        rotated = len(logNames(tmp_path))
        daemon.signal(signal.SIGUSR1)
        waitFor(
            lambda n=rotated: len(logNames(tmp_path)) > n or len(logNames(tmp_path)) == 3,
            "the rotation",
        )
        waitFor(lambda: (tmp_path / "ccproxy.log").stat().st_size == 0, "a fresh file")
    last = daemon.request()
    daemon.stop()
    assert logNames(tmp_path) == ["ccproxy.log", "ccproxy.log.1", "ccproxy.log.2"]
    assert f"{ids[-1]} - GET" in (tmp_path / "ccproxy.log.1").read_text()
    assert f"{ids[-2]} - GET" in (tmp_path / "ccproxy.log.2").read_text()
    assert f"{last} - GET" in (tmp_path / "ccproxy.log").read_text()


def test_sigusr1_rotates_now(tmp_path: Path, daemons: list[Daemon]) -> None:
    daemon = run(daemons, tmp_path, "log: {file: ccproxy.log}\n")
    before = daemon.request()
    daemon.signal(signal.SIGUSR1)
    waitFor(lambda: (tmp_path / "ccproxy.log.1").exists(), "the rotation")
    after = daemon.request()
    daemon.stop()
    old, new = (tmp_path / "ccproxy.log.1").read_text(), (tmp_path / "ccproxy.log").read_text()
    assert "ccproxy serving on" in old and f"{before} - GET" in old
    assert f"{after} - GET" in new and "serving on" not in new


def jsonRecords(path: Path) -> list[dict[str, object]]:
    with path.open() as f:
        return list(eventsFromJSONLogFile(f))


def test_json_records_keep_their_named_fields(tmp_path: Path, daemons: list[Daemon]) -> None:
    daemon = run(daemons, tmp_path, "log: {file: ccproxy.log, format: json}\n")
    rid = daemon.request()
    daemon.stop()
    raw = (tmp_path / "ccproxy.log").read_text()
    assert raw.startswith("\x1e{")  # RFC 7464: a record separator before each record
    records = jsonRecords(tmp_path / "ccproxy.log")
    access = [r for r in records if r.get("log_namespace") == "ccproxy.access"]
    assert [(r["request_id"], r["method"], r["path"], r["status"]) for r in access] == [
        (rid, "GET", "/v1/models", 200)
    ]
    assert any(r.get("log_format") == "Server Shut Down." for r in records)


def test_json_with_max_bytes_and_keep(tmp_path: Path, daemons: list[Daemon]) -> None:
    daemon = run(
        daemons, tmp_path, "log: {file: ccproxy.log, format: json, max_bytes: 4000, keep: 2}\n"
    )
    ids = [daemon.request() for _ in range(40)]
    daemon.stop()
    assert logNames(tmp_path) == ["ccproxy.log", "ccproxy.log.1", "ccproxy.log.2"]
    seen = [
        r.get("request_id")
        for name in ("ccproxy.log.2", "ccproxy.log.1", "ccproxy.log")
        for r in jsonRecords(tmp_path / name)
    ]
    assert ids[-1] in seen and ids[0] not in seen  # the oldest went with the old files


def test_max_bytes_and_keep(tmp_path: Path, daemons: list[Daemon]) -> None:
    daemon = run(daemons, tmp_path, "log:\n  file: ccproxy.log\n  max_bytes: 1500\n  keep: 3\n")
    ids = [daemon.request() for _ in range(60)]
    daemon.stop()
    assert logNames(tmp_path) == ["ccproxy.log"] + [f"ccproxy.log.{i}" for i in range(1, 4)]
    text = "".join((tmp_path / n).read_text() for n in logNames(tmp_path))
    assert f"{ids[-1]} - GET" in text and f"{ids[0]} - GET" not in text


def test_a_log_file_that_cannot_be_opened_stops_the_start_in_one_line(tmp_path: Path) -> None:
    config = tmp_path / "ccproxy.yaml"
    config.write_text(CONFIG + "log: {file: no/such/dir/ccproxy.log}\n")
    started = subprocess.run(
        twistd(config), cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=30
    )
    assert started.returncode != 0
    assert "Traceback" not in started.stderr + started.stdout
    line = f"{config}: log.file: cannot open {tmp_path}/no/such/dir/ccproxy.log"
    assert line in started.stderr + started.stdout


def test_a_reload_that_changes_the_log_block_says_it_needs_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "ccproxy.yaml"
    path.write_text(CONFIG + f"log: {{file: {tmp_path / 'a.log'}}}\n")
    service = buildService(Config.fromPath(str(path)), reactor, configPath=str(path))
    assert service.logFile is not None
    service.logFile.close()
    path.write_text(CONFIG + f"log: {{file: {tmp_path / 'b.log'}}}\n")
    with capturedLogs() as events:
        assert service.reload() is True
    warnings = [formatEvent(e) for e in events if e["log_level"] == LogLevel.warn]
    assert any("log settings changed" in w and "restart" in w for w in warnings)


def test_sigusr1_rotates_twistds_own_log_file_too(tmp_path: Path, daemons: list[Daemon]) -> None:
    """Without `log:`, ccproxy writes twistd's --logfile itself (to escape it), so
    it rotates that file on SIGUSR1 as twistd did."""
    daemons.append(startDaemon(tmp_path, UNREACHABLE, "--logfile", "twistd.log"))
    before = daemons[-1].request()
    daemons[-1].signal(signal.SIGUSR1)
    waitFor(lambda: (tmp_path / "twistd.log.1").exists(), "the rotation")
    after = daemons[-1].request()
    daemons[-1].stop()
    assert f"{before} - GET" in (tmp_path / "twistd.log.1").read_text()
    assert f"{after} - GET" in (tmp_path / "twistd.log").read_text()
