"""A real `twistd -n ccproxy` for the tests of what only a real daemon does: its log
files, its signals, its exit status. On a free loopback port, every wait bounded."""

from __future__ import annotations

import signal
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from attrs import define

from tests.support.processes import checkoutEnvironment, freePort, waitFor
from tests.support.processes import twistd as twistdCommand

UNREACHABLE = """
upstreams:
  up: {url: "http://127.0.0.1:9/v1", retries: 0}
models:
  "*": up
"""
"""A config body whose one upstream refuses connections (a 502 for every call)."""

ENV = checkoutEnvironment()


@define
class Daemon:
    """A `twistd -n ccproxy` on a free loopback port, its working directory `home`."""

    process: subprocess.Popen[bytes]
    port: int
    home: Path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def request(self, path: str = "/v1/models") -> str:
        """One request; its `request-id`, which its access line carries."""
        with urllib.request.urlopen(self.base + path, timeout=5) as response:
            response.read()
            return response.headers["request-id"]

    def ready(self) -> bool:
        with urllib.request.urlopen(self.base + "/healthz", timeout=5) as response:
            return response.status == 200

    def signal(self, number: int) -> None:
        self.process.send_signal(number)

    def stop(self) -> int:
        """SIGTERM, and the exit status (negative: killed by that signal)."""
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(30)


def twistd(config: Path, *options: str) -> list[str]:
    """`twistd -n [OPTIONS] ccproxy --config CONFIG`, with no pidfile."""
    return [
        *twistdCommand(),
        "-n",
        "--pidfile=",
        *options,
        "ccproxy",
        "--config",
        str(config),
    ]


def startDaemon(home: Path, config: str, *options: str) -> Daemon:
    """The daemon on `config` (everything but `listen`), started in `home` with its
    stdout in `home/stdout`; `options` go to twistd."""
    port = freePort()
    path = home / "ccproxy.yaml"
    path.write_text(f'listen: "tcp:{port}:interface=127.0.0.1"\n' + config)
    with (home / "stdout").open("wb") as stdout:
        process = subprocess.Popen(
            twistd(path, *options), cwd=home, env=ENV, stdout=stdout, stderr=subprocess.STDOUT
        )
    daemon = Daemon(process, port, home)
    try:
        waitFor(daemon.ready, "the daemon to answer")
    except AssertionError:
        process.kill()
        process.wait(10)
        raise AssertionError((home / "stdout").read_text()) from None
    return daemon


@pytest.fixture(name="daemons")
def daemonsFixture() -> Iterator[list[Daemon]]:
    """Daemons a test starts (import this into the test module); killed if the
    test leaves one running."""
    started: list[Daemon] = []
    yield started
    for daemon in started:
        if daemon.process.poll() is None:
            daemon.process.kill()
        daemon.process.wait(10)
