"""A real Redis for the tests of the shared state: `redis-server` started by the test
on 127.0.0.1, on a free port, in a temporary directory, persisting nothing, and
stopped after. It can be killed and started again on the same port (an outage),
or paused (SIGSTOP: a Redis that accepts and never answers).

Where `redis-server` is not installed the tests that need it are skipped, except
in CI (`CI` set), where `.ci/run` installs it and its absence is a failure.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.processes import freePort, waitFor


def ping(port: int) -> bool:
    """Whether a Redis on `port` answers PING."""
    with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
        s.sendall(b"PING\r\n")
        return s.recv(64).startswith(b"+PONG")


class RedisServer:
    """One `redis-server` process on a port that stays the same across restarts."""

    def __init__(self, directory: Path, port: int) -> None:
        self.directory = directory
        self.port = port
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        log = (self.directory / "redis.log").open("ab")
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        waitFor(lambda: ping(self.port), "redis-server to answer", process=self.process)

    def kill(self) -> None:
        """SIGKILL: gone at once, with everything it held."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(10)
            self.process = None

    def pause(self) -> None:
        """SIGSTOP: connections stay open, nothing is answered."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def command(self, *args: str) -> str:
        """One command through redis-cli, its answer as text."""
        return subprocess.run(
            ["redis-cli", "-p", str(self.port), *args],
            check=True,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()

    def stop(self) -> None:
        if self.process is not None:
            self.resume()  # a paused server would not hear SIGTERM
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
            self.process = None


@pytest.fixture(name="redisServer")
def redisServerFixture(tmp_path: Path) -> Iterator[RedisServer]:
    """A started Redis, stopped after the test (import this into the test module)."""
    if shutil.which("redis-server") is None:
        if os.environ.get("CI"):
            pytest.fail("redis-server is not installed (.ci/run installs it)")
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    for attempt in range(2):  # a free port can be taken before redis-server binds it
        server = RedisServer(tmp_path, freePort())
        try:
            server.start()
            break
        except AssertionError:
            server.stop()
            if attempt:
                raise
    try:
        yield server
    finally:
        server.stop()
