"""Subprocesses for the end-to-end tests: on 127.0.0.1 only, every wait bounded.

- `freePort()`: a loopback port that nothing listens on now. Another process can
  still take it before ours binds it, so `Processes.ccproxy` tries a second port
  when the first is taken.
- `waitFor(check, what)`: polls a subprocess's visible state (a port file, a URL
  that answers) until `check()` holds: a readiness probe with a deadline, not a
  timing assertion. It fails at once, with `Exited`, when the process it waits for
  has ended.
- `Processes`: the subprocesses one test (or module) started, each writing its
  output to a file in one directory, stopped together by `close()`:
  `scriptedUpstream()` runs tests/support/scripted_upstream.py, `ccproxy()` runs
  `twistd -n ccproxy` from this checkout, `spawn()` anything else.

The twistd started here is the foreground one (`-n`, no pidfile); test_daemon.py
daemonizes its own, since that is what it tests, with `twistd()` and
`checkoutEnvironment()` from here.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parents[2]
SCRIPTED_UPSTREAM = ROOT / "tests" / "support" / "scripted_upstream.py"


def testCache() -> Path:
    """Where the tests keep what they install once (Claude Code, LiteLLM):
    $CCPROXY_TEST_CACHE, else ~/.cache/ccproxy-tests."""
    base = os.environ.get("CCPROXY_TEST_CACHE")
    if base:
        return Path(base)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "ccproxy-tests"


def freePort() -> int:
    """A loopback port that was bound and closed again: free now, refused if connected to."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def answers(url: str, timeout: float = 2) -> bool:
    """Whether a GET of `url` is answered with 200."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return bool(response.status == 200)
    except (OSError, urllib.error.URLError):
        return False


class Exited(AssertionError):
    """The process `waitFor` was waiting for ended first."""

    def __init__(self, message: str, returncode: int) -> None:
        super().__init__(message)
        self.returncode = returncode


def waitFor(
    check: Callable[[], Any],
    what: str,
    seconds: float = 20,
    process: subprocess.Popen[Any] | None = None,
    log: Path | None = None,
) -> Any:
    """What `check()` returns once it is true (an `OSError` counts as not yet).

    Fails after `seconds`, or with `Exited` as soon as `process` has ended; either
    way with the tail of `log` when one is given."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            result = check()
        except OSError:
            result = None
        if result:
            return result
        more = f":\n{tail(log)}" if log is not None else ""
        if process is not None and process.poll() is not None:
            raise Exited(
                f"exited with {process.returncode} before {what}{more}", process.returncode
            )
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {seconds:g} s waiting for {what}{more}")
        time.sleep(0.05)


def tail(path: Path, limit: int = 20000) -> str:
    """The end of a log file, for a failure message."""
    try:
        text = path.read_text(errors="replace")
    except OSError as e:
        return f"<{e}>"
    return text if len(text) <= limit else "…" + text[-limit:]


def stop(process: subprocess.Popen[Any], timeout: float = 10) -> None:
    """SIGTERM, then SIGKILL if it is still there after `timeout` seconds."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout)


def twistd() -> list[str]:
    """The command that runs twistd on this interpreter."""
    script = Path(sys.executable).parent / "twistd"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


def daemonize(home: Path, pidfile: Path, config: Path, *options: str) -> int:
    """`twistd --pidfile PIDFILE [OPTIONS] ccproxy --config CONFIG` daemonized, run
    in `home`: the daemon's pid, once its pidfile says it."""
    started = subprocess.run(
        [*twistd(), "--pidfile", str(pidfile), *options, "ccproxy", "--config", str(config)],
        cwd=home,
        env=checkoutEnvironment(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert started.returncode == 0, started.stderr
    return int(waitFor(lambda: pidfile.exists() and pidfile.read_text().strip(), "pidfile"))


def alive(pid: int) -> bool:
    """Whether process `pid` runs (a zombie child of ours does not, for this)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return False


def checkoutEnvironment() -> dict[str, str]:
    """This environment with the checkout first on PYTHONPATH, so that twistd finds
    this checkout's ccproxy plugin whether ccproxy is installed or not."""
    pythonpath = [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(pythonpath)}


class Processes:
    """Subprocesses writing their output to files in `directory`; `close()` stops them."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.processes: list[subprocess.Popen[Any]] = []
        self.files: list[IO[bytes]] = []
        self.upstreamLog = directory / "upstream-requests.jsonl"
        """What the scripted upstream received, one JSON line a request."""
        self.upstreamOutput = directory / "upstream-output.log"
        self.proxyLog = directory / "ccproxy.log"

    def spawn(self, command: list[str], output: Path, **kwargs: Any) -> subprocess.Popen[Any]:
        """`command` with stdout and stderr appended to `output`, no stdin."""
        out = output.open("ab")
        self.files.append(out)
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, **kwargs
        )
        self.processes.append(process)
        return process

    def scriptedUpstream(self, *args: str) -> int:
        """tests/support/scripted_upstream.py with `args` (`--file`, `--answer`): its port,
        once it listens."""
        portFile = self.directory / "upstream.port"
        portFile.unlink(missing_ok=True)
        command = [sys.executable, str(SCRIPTED_UPSTREAM), "--port-file", str(portFile)]
        process = self.spawn([*command, "--log", str(self.upstreamLog), *args], self.upstreamOutput)
        port = waitFor(
            lambda: portFile.exists() and portFile.read_text().strip(),
            "the scripted upstream to listen",
            process=process,
            log=self.upstreamOutput,
        )
        return int(port)

    def received(self) -> list[dict[str, Any]]:
        """What the scripted upstream logged: `{"path": …, "body": …}` per request."""
        if not self.upstreamLog.exists():
            return []
        return [json.loads(line) for line in self.upstreamLog.read_text().splitlines() if line]

    def ccproxy(self, config: Callable[[int], str], seconds: float = 30) -> int:
        """`twistd -n ccproxy` with the config `config(port)` (it must listen on
        `port`): the port, once GET /healthz answers 200."""
        for attempt in range(2):  # a free port can be taken before ccproxy binds it
            port = freePort()
            path = self.directory / "ccproxy.yaml"
            path.write_text(config(port))
            process = self.spawn(
                [*twistd(), "-n", "--pidfile=", "ccproxy", "--config", str(path)],
                self.proxyLog,
                cwd=self.directory,
                env=checkoutEnvironment(),
            )
            try:
                waitFor(
                    partial(answers, f"http://127.0.0.1:{port}/healthz"),
                    "ccproxy to answer",
                    seconds,
                    process=process,
                    log=self.proxyLog,
                )
                return port
            except AssertionError:
                stop(process)
                if attempt == 0 and "CannotListenError" in tail(self.proxyLog):
                    continue
                raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        for process in reversed(self.processes):
            stop(process)
        for f in self.files:
            f.close()
