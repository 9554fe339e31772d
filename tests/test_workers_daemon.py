"""`workers: 2` for real: one daemonized `twistd ccproxy` with its pidfile, two
worker processes sharing its port, a scripted upstream, a SQLite ledger. Both
workers answer, `/metrics` counts the requests of both whichever answers the
scrape, a killed worker is restarted, SIGHUP reloads both (and a bad file
neither), SIGTERM drains them and the master exits with its pidfile gone.
Subprocesses on 127.0.0.1 only, every wait bounded."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import urllib.request
from pathlib import Path

from tests.support.processes import (
    alive,
    checkoutEnvironment,
    daemonize,
    freePort,
    twistd,
    waitFor,
)
from tests.test_daemon import CONFIG as DAEMON_CONFIG
from tests.test_daemon import upstream  # noqa: F401 (a fixture: the scripted upstream)

CONFIG = (
    DAEMON_CONFIG
    + """workers: 2
ledger: "sqlite:///{db}"
"""
)

BODY = {"model": "claude-x", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}


def post(base: str) -> str:
    """One /v1/messages request on a new connection; its request id."""
    request = urllib.request.Request(
        base + "/v1/messages",
        data=json.dumps(BODY).encode(),
        headers={"content-type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
        response.read()
        return str(response.headers["request-id"])


def messagesCounted(base: str) -> float:
    """`ccproxy_requests_total` of /v1/messages, as one scrape says."""
    with urllib.request.urlopen(base + "/metrics", timeout=5) as response:
        text = response.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("ccproxy_requests_total{") and 'endpoint="messages"' in line
    )


def workerPids(log: str) -> dict[int, int]:
    """Worker number -> pid of its latest start, from the master's log lines."""
    return {int(m[1]): int(m[2]) for m in re.finditer(r"worker (\d+) started \(pid (\d+)\)", log)}


def test_two_workers_one_daemon(
    tmp_path: Path,
    upstream: tuple[str, Path],  # noqa: F811 (the fixture)
) -> None:
    port = freePort()
    config, pidfile, logfile, db = (
        tmp_path / "ccproxy.yaml",
        tmp_path / "ccproxy.pid",
        tmp_path / "ccproxy.log",
        tmp_path / "ledger.db",
    )
    upstreamURL, upstreamLog = upstream

    def writeConfig(model: str, extra: str = "") -> None:
        config.write_text(
            CONFIG.format(port=port, upstream=upstreamURL, model=model, log=logfile, db=db) + extra
        )

    def log() -> str:
        return logfile.read_text() if logfile.exists() else ""

    writeConfig("model-one")
    master = daemonize(tmp_path, pidfile, config)
    base = f"http://127.0.0.1:{port}"
    try:
        waitFor(lambda: log().count("ccproxy serving on") == 2, "both workers to serve")
        first = workerPids(log())
        assert sorted(first) == [1, 2] and master not in first.values()

        # Both answer: new connections until each worker has logged one of ours.
        sent: list[str] = []

        def bothAnswered() -> bool:
            sent.append(post(base))
            text = log()
            workers = {
                m[1]
                for m in re.finditer(r"\[w(\d) ccproxy\.access#info\] (req_\w+)", text)
                if m[2] in sent
            }
            return workers == {"1", "2"}

        waitFor(bothAnswered, "both workers to answer", seconds=60)
        waitFor(lambda: log().count("POST /v1/messages") == len(sent), "the access lines")
        # /metrics is the daemon's: the same total whichever worker is asked.
        counts = {messagesCounted(base) for _ in range(10)}
        assert counts == {len(sent)}

        # Both workers write to the one SQLite ledger (WAL, a busy timeout). Their
        # rows wait in a buffer for a moment: a worker killed with SIGKILL loses
        # those, so let them be written first.
        waitFor(lambda: ledgerRows(db) == len(sent), "the ledger's rows")

        # A killed worker is restarted, and what it had counted is still counted.
        os.kill(first[1], signal.SIGKILL)
        waitFor(lambda: workerPids(log())[1] != first[1], "worker 1's restart", seconds=30)
        waitFor(lambda: log().count("ccproxy serving on") == 3, "the new worker 1 to serve")
        assert f"worker 1 (pid {first[1]}) ended" in log()
        sent.append(post(base))
        assert {messagesCounted(base) for _ in range(10)} == {len(sent)}

        # SIGHUP: checked by the master, reloaded by both workers.
        writeConfig("model-two")
        os.kill(master, signal.SIGHUP)
        waitFor(lambda: log().count("config reloaded") == 2, "both workers to reload")
        assert re.search(r"\[w1 [^]]*\] config reloaded", log())
        assert re.search(r"\[w2 [^]]*\] config reloaded", log())
        for _ in range(4):
            sent.append(post(base))
        models = [
            json.loads(line)["body"]["model"] for line in upstreamLog.read_text().splitlines()
        ]
        assert models[-4:] == ["model-two"] * 4
        # A bad file: refused once, by the master; no worker reloads.
        config.write_text(config.read_text() + "max_body_bytes: -1\n")
        os.kill(master, signal.SIGHUP)
        waitFor(
            lambda: "reload refused, keeping the running config in every worker" in log(),
            "the refusal",
        )
        assert "max_body_bytes" in log()
        sent.append(post(base))
        assert log().count("config reloaded") == 2

        # SIGUSR1: the master rotates the one log; a worker sent it ignores it.
        two = workerPids(log())[2]
        os.kill(two, signal.SIGUSR1)
        os.kill(master, signal.SIGUSR1)
        waitFor(lambda: Path(f"{logfile}.1").exists(), "the log's rotation")
        sent.append(post(base))
        waitFor(lambda: "POST /v1/messages" in log(), "a line in the new log")
        assert alive(two)
        assert f"worker 2 (pid {two}) ended" not in Path(f"{logfile}.1").read_text() + log()

        # SIGTERM: the workers drain, the master exits, its pidfile goes.
        pids = workerPids(log())
        os.kill(master, signal.SIGTERM)
        waitFor(lambda: not pidfile.exists(), "the pidfile to go")
        waitFor(
            lambda: not any(alive(p) for p in [master, *pids.values()]), "every process to exit"
        )
    finally:
        for pid in [master, *workerPids(log()).values()]:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
    text = Path(f"{logfile}.1").read_text() + log()
    assert "every worker has ended: master stopping" in text
    assert text.count("POST /v1/messages") == len(sent)
    metricsDir = re.search(r"workers count their metrics in (\S+)", text)
    assert metricsDir and not Path(metricsDir[1]).exists()
    assert ledgerRows(db) == len(sent)  # the drain wrote the last rows


def test_workers_end_with_their_master(tmp_path: Path) -> None:
    """A master killed outright (SIGKILL: no drain, no signal passed on) leaves no
    worker serving on alone: the kernel tells them (parent-death signal)."""
    port = freePort()
    config = tmp_path / "ccproxy.yaml"
    config.write_text(
        f'listen: "tcp:{port}:interface=127.0.0.1"\nworkers: 2\nledger: "off"\n'
        'upstreams:\n  up: {url: "http://127.0.0.1:9/v1"}\nmodels:\n  "*": up\n'
    )
    out = tmp_path / "stdout"
    with out.open("wb") as stdout:
        master = subprocess.Popen(
            [*twistd(), "-n", "--pidfile=", "ccproxy", "--config", str(config)],
            cwd=tmp_path,
            env=checkoutEnvironment(),
            stdout=stdout,
            stderr=subprocess.STDOUT,
        )
    try:
        waitFor(
            lambda: out.read_text().count("ccproxy serving on") == 2,
            "both workers",
            process=master,
            log=out,
        )
        workers = workerPids(out.read_text())
        master.kill()
        master.wait(10)
        waitFor(lambda: not any(alive(p) for p in workers.values()), "the workers to exit")
    finally:
        if master.poll() is None:
            master.kill()
            master.wait(10)
        for pid in workerPids(out.read_text()).values():
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def ledgerRows(db: Path) -> int:
    with sqlite3.connect(db) as connection:
        return int(connection.execute("SELECT count(*) FROM ccproxy_ledger").fetchone()[0])
