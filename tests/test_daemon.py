"""The real daemon: `twistd ccproxy` daemonized with a pidfile, reloaded with SIGHUP,
stopped with SIGTERM. Subprocesses on 127.0.0.1 only, every wait bounded."""

from __future__ import annotations

import json
import os
import signal
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.processes import Processes, alive, daemonize, freePort, waitFor


def get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def post(url: str, body: dict[str, Any]) -> tuple[int, Any]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"content-type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status, json.loads(response.read())


@pytest.fixture
def upstream(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    processes = Processes(tmp_path)
    try:
        port = processes.scriptedUpstream()
        yield f"http://127.0.0.1:{port}/v1", processes.upstreamLog
    finally:
        processes.close()


CONFIG = """
listen: "tcp:{port}:interface=127.0.0.1"
upstreams:
  up:
    url: "{upstream}"
    retries: 0
models:
  "*": up/{model}
log:
  file: {log}
  max_bytes: 100000
  keep: 3
"""


def test_daemon_pidfile_reload_and_stop(tmp_path: Path, upstream: tuple[str, Path]) -> None:
    upstreamURL, upstreamLog = upstream
    port = freePort()
    config, pidfile, logfile = (
        tmp_path / "ccproxy.yaml",
        tmp_path / "ccproxy.pid",
        tmp_path / "ccproxy.log",
    )

    def writeConfig(model: str) -> None:
        config.write_text(CONFIG.format(port=port, upstream=upstreamURL, model=model, log=logfile))

    writeConfig("model-one")
    pid = daemonize(tmp_path, pidfile, config, "--logfile", str(tmp_path / "twistd.log"))
    base = f"http://127.0.0.1:{port}"
    try:
        waitFor(lambda: get(f"{base}/healthz")["status"] == "ok", "the daemon to answer")
        body = {
            "model": "claude-x",
            "max_tokens": 5,
            "messages": [{"role": "user", "content": "hi"}],
        }
        assert post(f"{base}/v1/messages", body)[0] == 200
        writeConfig("model-two")
        os.kill(pid, signal.SIGHUP)
        waitFor(lambda: get(f"{base}/healthz")["generation"] == 2, "the reload")
        assert post(f"{base}/v1/messages", body)[0] == 200
        models = [
            json.loads(line)["body"]["model"] for line in upstreamLog.read_text().splitlines()
        ]
        assert models == ["model-one", "model-two"]
        os.kill(pid, signal.SIGTERM)
        waitFor(lambda: not pidfile.exists(), "the pidfile to go")
        waitFor(lambda: not alive(pid), "the daemon to exit")
    finally:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)
    log = logfile.read_text()
    assert "config reloaded" in log
    assert "route * -> up/model-two" in log
    assert log.count("POST /v1/messages claude-x") == 2
    assert "Server Shut Down" in log or "Main loop terminated" in log
