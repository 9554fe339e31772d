"""Soak: a few hundred concurrent streams for a few minutes through ccproxy, against a
dripping upstream that faults now and then, with clients hanging up at random.

    python -m bench.soak [--streams 300] [--seconds 180] [--warmup 20] [--drip 0.1]

From the repository root, with an interpreter that has ccproxy's dependencies
(`--python` picks another one for ccproxy, `--ccproxy-root` another checkout's
ccproxy). Linux only (/proc). Everything listens
on 127.0.0.1. It starts `bench/soak_upstream.py` (two ports: a primary that faults
on request, a healthy backup) and `twistd -n --pidfile= ccproxy --config …` with
PYTHONPATH set to the checkout, routing `solo-*` to the primary alone and everything
else to [primary, backup] with failover and small timeouts.

Each of --streams workers sends requests back to back on a kept-alive connection,
for --warmup seconds and then --seconds more, each one of (weights in MIX): a
normal dripping stream; a stream the upstream closes, resets or stalls in the
middle; a 503 or a reset before the headers (failed over to the backup); a 429 on
a route without a partner; a non-streaming request. A share of the normal streams
(--disconnect-rate) are abandoned by their client after a random number of events,
by a close or a reset. Every answer is read to its end and validated against what
its scenario allows (SSE grammar, the exact text, who served it, the error shape).

Before the soak (after the warm-up and once idle) and at the end (once the clients
are gone and the proxy is idle) it samples ccproxy's RSS and open fds, and its
ESTABLISHED connections to the upstream ports (/proc/PID/fd and /proc/net/tcp); it
samples the same every second during the run. The report gives requests completed,
outcomes and errors by type as the client saw them, disconnects, fds and RSS at
start/peak/end, and the upstream connections left open.

With --hostile, the config sets `clients` (the normal load sends its key) and the
soak runs three phases of --seconds each after the warm-up: the normal load alone
("calm"), the same with bench/hostile.py's clients beside it in a process of their
own ("hostile": slowloris heads and bodies, 30 MiB bodies without a key, bodies over
max_body_bytes, a 5 MB model name, thousands of distinct 250-character model names,
30 MiB count_tokens bodies; --hostile-mix sets how many of each), and alone again
("calm again"). Every phase replays the same requests (one seed). The report gives,
phase by phase, the normal clients' errors, full time and time to the first byte of
their streams (p50/p95/p99/max), ccproxy's peak RSS, fds and CPU, and the size of
/metrics; then what each hostile kind got. The end checks are the soak's own, from
the start of the first phase to the end of the last.

Exit status: 0 when all holds; 1 when open fds grew by more than --fd-bound, RSS by
more than --rss-bound-mib MiB (with --hostile: over the last calm phase, as the
hostile one leaves the allocator at its high-water), any upstream connection was
left open, a request was still in flight at the end, or an answer failed
validation (with --hostile: or a hostile client got other than it should); 2 when
the soak could not run. The report also goes to WORKDIR/soak-report.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import corpus
from bench.procstat import runqueue_wait_seconds

ROOT = Path(__file__).resolve().parent.parent
PAGE = os.sysconf("SC_PAGE_SIZE")
CLK_TCK = os.sysconf("SC_CLK_TCK")
UPSTREAM_TIMEOUT = 2.0
MESSAGES = "/v1/messages?beta=true"

# (route, directive, stream): weight. Routes: "p" fails over to the backup, "solo" not.
MIX: dict[tuple[str, str, bool], int] = {
    ("p", "ok", True): 62,
    ("p", "close", True): 5,
    ("p", "rst", True): 4,
    ("p", "stall", True): 3,
    ("p", "503", True): 4,
    ("p", "reset", True): 3,
    ("p", "ok", False): 5,
    ("p", "503", False): 2,
    ("solo", "ok", True): 6,
    ("solo", "429", True): 3,
}

CONFIG = """
listen: "tcp:{port}:interface=127.0.0.1"
max_duration: 120
ping_interval: 5
upstreams:
  up:
    url: "http://127.0.0.1:{primary}/v1"
    timeout: {timeout}
    connect_timeout: 2
    retries: 0
    breaker_failures: 10
    breaker_cooldown: 5
  backup:
    url: "http://127.0.0.1:{backup}/v1"
    timeout: 10
    connect_timeout: 2
    retries: 0
models:
  "solo-*": up
  "*": [up, backup]
"""

# With --hostile: callers need a key. The normal load is one client, the hostile mix
# another (a teammate's runaway script has a key too), the soak's probes an admin.
CLIENTS = """
clients:
  - name: soak
    key: "${CCPROXY_SOAK_KEY}"
  - name: hostile
    key: "${CCPROXY_SOAK_HOSTILE_KEY}"
  - name: soak-admin
    key: "${CCPROXY_SOAK_ADMIN_KEY}"
    admin: true
"""
KEYS = {
    "CCPROXY_SOAK_KEY": "sk-soak-client-000000000000000000",
    "CCPROXY_SOAK_HOSTILE_KEY": "sk-soak-hostile-00000000000000000",
    "CCPROXY_SOAK_ADMIN_KEY": "sk-soak-admin-0000000000000000000",
}


# -- /proc ------------------------------------------------------------------------------


def rssBytes(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * PAGE


def openFds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def cpuSeconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat", "rb") as f:
        data = f.read()
    fields = data[data.rindex(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def connectionsTo(pid: int, ports: set[int]) -> int:
    """ESTABLISHED TCP connections of `pid` whose remote port is in `ports`."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                lines = f.read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            remotePort = int(parts[2].rsplit(":", 1)[1], 16)
            if parts[3] == "01" and remotePort in ports and parts[9] in inodes:
                count += 1
    return count


@dataclass
class Sample:
    t: float
    rss: int
    fds: int
    upstreamConnections: int
    cpu: float


def sample(pid: int, ports: set[int], started: float) -> Sample:
    return Sample(
        time.monotonic() - started,
        rssBytes(pid),
        openFds(pid),
        connectionsTo(pid, ports),
        cpuSeconds(pid),
    )


# -- the client ------------------------------------------------------------------------


class Invalid(Exception):
    """An answer its scenario does not allow."""

    def __init__(self, kind: str, detail: str = "") -> None:
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    events: list[tuple[str, Any]]
    body: bytes
    keepAlive: bool
    hungUp: bool = False
    headAt: float = 0.0
    """time.monotonic() when the answer's head was in."""


@dataclass
class Tally:
    started: int = 0
    completed: int = 0
    disconnects: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    invalid: Counter[str] = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    firstBytes: list[float] = field(default_factory=list)
    """Seconds to the answer's head, of the completed 200 streams (a whole answer's
    head comes with its body, after the upstream's)."""

    def fail(self, kind: str, detail: str) -> None:
        """One answer its scenario does not allow, and the first example of its kind."""
        self.invalid[kind] += 1
        self.examples.setdefault(kind, detail[:300])


def parseFrames(buffer: bytearray, events: list[tuple[str, Any]]) -> None:
    """Moves whole SSE frames from `buffer` to `events`."""
    while True:
        end = buffer.find(b"\n\n")
        if end < 0:
            return
        frame = bytes(buffer[:end])
        del buffer[: end + 2]
        name, data = None, []
        for line in frame.split(b"\n"):
            if line.startswith(b"event: "):
                name = line[7:].decode()
            elif line.startswith(b"data: "):
                data.append(line[6:])
        if name is None or not data:
            raise Invalid("sse_frame", repr(frame[:120]))
        events.append((name, json.loads(b"\n".join(data))))


def requestHead(length: int, key: str | None = None, path: str = MESSAGES) -> bytes:
    """A POST's head, with `key` as x-api-key when given."""
    return (
        b"POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\n" % path.encode()
        + b"Content-Type: application/json\r\nAnthropic-Version: 2023-06-01\r\n"
        + (b"X-Api-Key: %s\r\n" % key.encode() if key else b"")
        + b"Content-Length: %d\r\n\r\n" % length
    )


async def exchange(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    body: bytes,
    hangUpAfter: int | None,
    abort: bool,
    key: str | None = None,
    path: str = MESSAGES,
) -> Answer:
    writer.write(requestHead(len(body), key, path) + body)
    await writer.drain()
    return await readAnswer(reader, writer, hangUpAfter, abort)


async def readAnswer(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    hangUpAfter: int | None = None,
    abort: bool = False,
) -> Answer:
    """One answer, read to its end (or to `hangUpAfter` SSE events, then a close or,
    with `abort`, a reset)."""
    head = await reader.readuntil(b"\r\n\r\n")
    headAt = time.monotonic()
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    keepAlive = headers.get("connection", "").lower() != "close"
    events: list[tuple[str, Any]] = []
    sse = headers.get("content-type", "").startswith("text/event-stream")
    buffer = bytearray()
    raw = bytearray()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                break
            data = (await reader.readexactly(size + 2))[:-2]
            if sse:
                buffer += data
                parseFrames(buffer, events)
                if hangUpAfter is not None and len(events) >= hangUpAfter:
                    if abort:
                        writer.transport.abort()
                    else:
                        writer.close()
                    return Answer(status, headers, events, b"", False, True, headAt)
            else:
                raw += data
    elif "content-length" in headers:
        raw += await reader.readexactly(int(headers["content-length"]))
    else:
        raw += await reader.read()
        keepAlive = False
    if sse and buffer.strip():
        raise Invalid("sse_trailing_bytes", repr(bytes(buffer[:120])))
    return Answer(status, headers, events, bytes(raw), keepAlive, headAt=headAt)


def streamText(events: list[tuple[str, Any]]) -> str:
    return "".join(
        d["delta"]["text"]
        for n, d in events
        if n == "content_block_delta" and d["delta"]["type"] == "text_delta"
    )


def expectedText(prefix: str, n: int) -> str:
    return "".join(f"{prefix}{i} " for i in range(n))


def checkGrammar(events: list[tuple[str, Any]]) -> None:
    """Anthropic's event order: message_start, blocks (start, deltas, stop), then
    message_delta and message_stop, or an error last; pings anywhere."""
    names = [n for n, _ in events if n != "ping"]
    if not names or names[0] != "message_start":
        raise Invalid("no_message_start", str(names[:3]))
    open_ = None
    for name, data in events[1:]:
        if name in ("ping", "error"):
            continue
        if name == "content_block_start":
            if open_ is not None:
                raise Invalid("block_overlap")
            open_ = data["index"]
        elif name == "content_block_delta":
            if data["index"] != open_:
                raise Invalid("delta_outside_block")
        elif name == "content_block_stop":
            if data["index"] != open_:
                raise Invalid("stop_outside_block")
            open_ = None
    if "error" in names and names[-1] != "error":
        raise Invalid("events_after_error", str(names[-3:]))
    if "message_stop" in names and names[-2:] != ["message_delta", "message_stop"]:
        raise Invalid("bad_ending", str(names[-3:]))


STREAM_ERRORS = {
    "close": ("the connection was lost in the middle of the stream",),
    "rst": ("the connection was lost in the middle of the stream",),
    "stall": (f"no data for {UPSTREAM_TIMEOUT:g} s in the middle of the stream",),
}


def envelope(answer: Answer) -> tuple[str, str]:
    """The error type and message of an error answer; Invalid when it is not an
    Anthropic error envelope with a request id, or shows a Python repr."""
    try:
        body = json.loads(answer.body)
        kind = body["error"]["type"]
        message = body["error"]["message"]
    except (ValueError, KeyError, TypeError):
        raise Invalid(f"http_{answer.status}_not_an_envelope", repr(answer.body[:200])) from None
    if not body.get("request_id"):
        raise Invalid("envelope_without_request_id")
    if "<twisted." in message or "Address(" in message or "Traceback" in message:
        raise Invalid("python_repr_in_message", message[:200])
    return kind, message


def classify(answer: Answer, route: str, directive: str, stream: bool, n: int) -> str:
    """The outcome as the client saw it; raises Invalid if the scenario forbids it."""
    if answer.hungUp:
        checkGrammar(answer.events)
        text = streamText(answer.events)
        # With the primary's breaker open, the backup serves the partnered route.
        if not (
            expectedText("w", n).startswith(text)
            or (route == "p" and expectedText("b", n).startswith(text))
        ):
            raise Invalid("text_mismatch_before_hangup", repr(text[:80]))
        return "client disconnect (on purpose)"
    if answer.status != 200:
        kind, message = envelope(answer)
        outcome = f"{answer.status} {kind}"
        if route == "solo" and answer.status == 503 and "circuit open" in message:
            return outcome + " (circuit open)"
        if route == "solo" and answer.status == 504 and "before answering" in message:
            # An upstream slower than `timeout` on a loaded host: the proxy's answer.
            return outcome + " (upstream silent past its timeout)"
        if route == "solo" and directive == "429" and answer.status == 429:
            if answer.headers.get("retry-after") != "1":
                raise Invalid("429_without_retry_after")
            return outcome
        raise Invalid(f"unexpected_{answer.status}", message[:200])
    if not stream:
        message = json.loads(answer.body)
        text = "".join(b.get("text", "") for b in message["content"])
        if text == expectedText("w", n) and directive == "ok":
            return "200 message"
        if text == expectedText("b", n) and route == "p":
            return "200 message (failed over to backup)"
        raise Invalid("json_text_mismatch", text[:80])
    if not answer.headers.get("content-type", "").startswith("text/event-stream"):
        raise Invalid("200_not_a_stream", answer.headers.get("content-type", ""))
    checkGrammar(answer.events)
    names = [name for name, _ in answer.events]
    text = streamText(answer.events)
    if names[-1] == "message_stop":
        if text == expectedText("w", n) and directive == "ok":
            return "200 stream complete"
        if text == expectedText("b", n) and route == "p":
            return "200 stream complete (failed over to backup)"
        raise Invalid("stream_text_mismatch", f"{directive}: {text[:80]!r}")
    if names[-1] != "error":
        raise Invalid("stream_without_end", str(names[-3:]))
    error = answer.events[-1][1]["error"]
    if "<twisted." in error["message"] or "Address(" in error["message"]:
        raise Invalid("python_repr_in_message", error["message"][:200])
    allowed = STREAM_ERRORS.get(directive, ())
    if not any(a in error["message"] for a in allowed):
        raise Invalid("unexpected_stream_error", f"{directive}: {error['message'][:160]}")
    if not expectedText("w", n).startswith(text):
        raise Invalid("text_mismatch_before_error")
    return f"200 stream then event: error ({error['type']}: {error['message'].split(': ', 1)[-1]})"


@dataclass
class Load:
    host: str
    port: int
    rng: random.Random
    disconnectRate: float
    clientTimeout: float
    tally: Tally = field(default_factory=Tally)
    key: str | None = None
    """Sent as x-api-key (the config sets clients with --hostile)."""

    def pick(self) -> tuple[str, str, bool]:
        choices = list(MIX)
        return self.rng.choices(choices, weights=[MIX[c] for c in choices])[0]

    async def worker(self, until: float, delay: float) -> None:
        await asyncio.sleep(delay)
        conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        try:
            while time.monotonic() < until:
                route, directive, stream = self.pick()
                n = self.rng.randint(10, 40)
                hangUp = None
                if stream and directive == "ok" and self.rng.random() < self.disconnectRate:
                    hangUp = self.rng.randint(2, n)
                model = f"{'solo-' if route == 'solo' else 'soak-'}{directive}-{n}"
                body = json.dumps(
                    {
                        "model": model,
                        "max_tokens": 256,
                        "stream": stream,
                        "messages": [{"role": "user", "content": "drip, please"}],
                    }
                ).encode()
                if conn is None:
                    conn = await asyncio.wait_for(
                        asyncio.open_connection(self.host, self.port, limit=1 << 20), 30
                    )
                self.tally.started += 1
                began = time.monotonic()
                try:
                    answer = await asyncio.wait_for(
                        exchange(*conn, body, hangUp, self.rng.random() < 0.5, self.key),
                        self.clientTimeout,
                    )
                    outcome = classify(answer, route, directive, stream, n)
                except Invalid as e:
                    self.invalid(e.kind, f"{model} stream={stream}: {e}")
                    conn = close(conn)
                    continue
                except TimeoutError:
                    self.invalid("client_timeout", f"{model} stream={stream}")
                    conn = close(conn)
                    continue
                except (OSError, asyncio.IncompleteReadError, ValueError) as e:
                    self.invalid(f"connection_{type(e).__name__}", f"{model}: {e}")
                    conn = close(conn)
                    continue
                self.tally.outcomes[outcome] += 1
                if answer.hungUp:
                    self.tally.disconnects += 1
                    conn = None
                else:
                    self.tally.completed += 1
                    self.tally.latencies.append(time.monotonic() - began)
                    if stream and answer.status == 200:
                        self.tally.firstBytes.append(answer.headAt - began)
                    if not answer.keepAlive:
                        conn = close(conn)
        finally:
            close(conn)

    def invalid(self, kind: str, detail: str) -> None:
        self.tally.fail(kind, detail)

    async def run(self, streams: int, seconds: float, ramp: float) -> Tally:
        until = time.monotonic() + seconds
        await asyncio.gather(*(self.worker(until, ramp * i / streams) for i in range(streams)))
        return self.tally


def close(conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None) -> None:
    if conn is not None:
        conn[1].close()
    return None


# -- processes -------------------------------------------------------------------------


def freePort() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def getJSON(url: str, timeout: float = 5, key: str | None = None) -> Any:
    return json.loads(getBytes(url, timeout, key))


def getBytes(url: str, timeout: float = 5, key: str | None = None) -> bytes:
    import urllib.request

    request = urllib.request.Request(url, headers={"x-api-key": key} if key else {})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        data: bytes = response.read()
        return data


def waitFor(check: Any, seconds: float) -> Any:
    """Polls `check` (a readiness or quiescence probe) until it is truthy."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            result = check()
        except (OSError, ValueError):
            result = None
        if result or time.monotonic() > deadline:
            return result
        time.sleep(0.1)


def raiseFdLimit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


@dataclass
class Rig:
    workdir: Path
    python: str
    drip: float
    clients: bool = False
    """Whether the config sets `clients` (then every caller sends a key)."""
    root: Path = ROOT
    """The checkout whose ccproxy runs (--ccproxy-root)."""
    upstream: subprocess.Popen[bytes] | None = None
    proxy: subprocess.Popen[bytes] | None = None
    primary: int = 0
    backup: int = 0
    port: int = 0

    def start(self) -> None:
        portFile = self.workdir / "upstream.ports"
        portFile.unlink(missing_ok=True)  # a reused workdir holds an old one
        self.upstream = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.soak_upstream",
                "--port-file",
                str(portFile),
                "--drip",
                str(self.drip),
            ],
            cwd=ROOT,
            stdout=open(self.workdir / "upstream.log", "wb"),
            stderr=subprocess.STDOUT,
        )
        ports = waitFor(lambda: portFile.exists() and portFile.read_text().split(), 20)
        if not ports:
            raise SystemExit("soak: the upstream did not start (see upstream.log)")
        self.primary, self.backup = int(ports[0]), int(ports[1])
        self.port = freePort()
        config = self.workdir / "ccproxy.yaml"
        config.write_text(
            CONFIG.format(
                port=self.port,
                primary=self.primary,
                backup=self.backup,
                timeout=UPSTREAM_TIMEOUT,
            )
            + (CLIENTS if self.clients else "")
        )
        twistd = Path(self.python).parent / "twistd"
        command = ([str(twistd)] if twistd.exists() else [self.python, "-m", "twisted"]) + [
            "-n",
            "--pidfile=",
            "ccproxy",
            "--config",
            str(config),
        ]
        self.proxy = subprocess.Popen(
            command,
            cwd=self.workdir,
            env={**os.environ, "PYTHONPATH": str(self.root), **(KEYS if self.clients else {})},
            stdout=open(self.workdir / "ccproxy.log", "wb"),
            stderr=subprocess.STDOUT,
        )
        healthy = waitFor(
            lambda: self.proxy.poll() is None and self.get("/healthz")["status"] == "ok",
            30,
        )
        if not healthy:
            raise SystemExit("soak: ccproxy did not start (see ccproxy.log)")

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    @property
    def adminKey(self) -> str | None:
        return KEYS["CCPROXY_SOAK_ADMIN_KEY"] if self.clients else None

    def get(self, path: str) -> Any:
        """GET `path` of ccproxy as JSON, with the admin key when there are clients."""
        return getJSON(self.url(path), key=self.adminKey)

    @property
    def ports(self) -> set[int]:
        return {self.primary, self.backup}

    def upstreamStats(self) -> dict[str, Any]:
        stats: dict[str, Any] = getJSON(f"http://127.0.0.1:{self.primary}/stats")
        return stats

    def quiet(self, seconds: float) -> dict[str, Any]:
        """Waits until nothing is in flight and the proxy holds no upstream connection
        (the upstream closes idle kept-alive ones after 2 s); returns what it saw."""
        assert self.proxy is not None
        started = time.monotonic()

        def state() -> dict[str, Any]:
            health = self.get("/healthz")
            stats = self.upstreamStats()
            return {
                "proxy_in_flight": health["in_flight"],
                "proxy_streams_in_flight": health["streams_in_flight"],
                "upstream_active_requests": stats["active_requests"],
                "proxy_upstream_connections": connectionsTo(self.proxy.pid, self.ports),
            }

        last: dict[str, Any] = {}

        def idle() -> bool:
            nonlocal last
            last = state()
            return not any(last.values())

        waitFor(idle, seconds)
        last["waited_s"] = round(time.monotonic() - started, 1)
        return last

    def stop(self) -> None:
        for process in (self.proxy, self.upstream):
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in (self.proxy, self.upstream):
            if process is not None:
                try:
                    process.wait(15)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(5)


# -- the run -----------------------------------------------------------------------------


async def sampler(rig: Rig, samples: list[Sample], started: float, stop: asyncio.Event) -> None:
    assert rig.proxy is not None
    while not stop.is_set():
        samples.append(sample(rig.proxy.pid, rig.ports, started))
        try:
            await asyncio.wait_for(stop.wait(), 1.0)
        except TimeoutError:
            pass


async def drive(
    rig: Rig, args: argparse.Namespace, seconds: float, seed: int
) -> tuple[Tally, list[Sample], float]:
    load = Load(
        "127.0.0.1", rig.port, random.Random(seed), args.disconnect_rate, args.client_timeout
    )
    load.key = KEYS["CCPROXY_SOAK_KEY"] if rig.clients else None
    samples: list[Sample] = []
    stop = asyncio.Event()
    began = time.monotonic()
    watcher = asyncio.create_task(sampler(rig, samples, began, stop))
    tally = await load.run(args.streams, seconds, args.ramp)
    elapsed = time.monotonic() - began
    stop.set()
    await watcher
    return tally, samples, elapsed


def slopeMiBPerMinute(samples: list[Sample]) -> float:
    """Least-squares slope of RSS over the second half of the run."""
    half = samples[len(samples) // 2 :]
    if len(half) < 3:
        return 0.0
    ts = [s.t for s in half]
    ys = [s.rss / 2**20 for s in half]
    mt, my = sum(ts) / len(ts), sum(ys) / len(ys)
    den = sum((t - mt) ** 2 for t in ts)
    return 60 * sum((t - mt) * (y - my) for t, y in zip(ts, ys, strict=True)) / den if den else 0.0


def percentile(values: list[float], p: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--streams", type=int, default=300, help="concurrent streams (300)")
    ap.add_argument("--seconds", type=float, default=180, help="soak duration (180)")
    ap.add_argument(
        "--warmup", type=float, default=20, help="warm-up at full load before the start sample (20)"
    )
    ap.add_argument("--ramp", type=float, default=5, help="seconds over which workers start (5)")
    ap.add_argument("--drip", type=float, default=0.1, help="seconds between upstream chunks (0.1)")
    ap.add_argument(
        "--disconnect-rate",
        type=float,
        default=0.1,
        help="share of normal streams the client abandons (0.1)",
    )
    ap.add_argument(
        "--client-timeout",
        type=float,
        default=60,
        help="seconds a client waits for one answer (60)",
    )
    ap.add_argument(
        "--fd-bound", type=int, default=8, help="allowed growth of open fds, start to end (8)"
    )
    ap.add_argument(
        "--rss-bound-mib",
        type=float,
        default=16,
        help="allowed growth of RSS, start to end, MiB (16: ~0.7 KB per request of a "
        "25k-request run, once the warm-up at full load has grown the heap)",
    )
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument(
        "--hostile",
        action="store_true",
        help="three phases of --seconds each: the normal load alone, with hostile clients "
        "beside it (bench/hostile.py), alone again; clients with keys in the config",
    )
    ap.add_argument(
        "--hostile-mix",
        default="",
        help="KIND=N,... over bench/hostile.py's defaults (e.g. count_tokens=0)",
    )
    ap.add_argument(
        "--hostile-source",
        default="127.0.0.2",
        help="loopback address the hostile clients connect from (127.0.0.2)",
    )
    ap.add_argument("--python", default=sys.executable, help="interpreter for ccproxy")
    ap.add_argument(
        "--ccproxy-root", default="", help="run the ccproxy of this checkout (this one)"
    )
    ap.add_argument(
        "--workdir", default="", help="where configs, logs and the report go (a new temp dir)"
    )
    args = ap.parse_args()
    if not sys.platform.startswith("linux"):
        print("soak: Linux only (/proc)", file=sys.stderr)
        return 2
    nofile = raiseFdLimit()
    if nofile < 3 * args.streams + 200:
        print(
            f"soak: RLIMIT_NOFILE {nofile} is too low for {args.streams} streams", file=sys.stderr
        )
        return 2
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="ccproxy-soak-"))
    workdir.mkdir(parents=True, exist_ok=True)
    root = Path(args.ccproxy_root).resolve() if args.ccproxy_root else ROOT
    rig = Rig(workdir, args.python, args.drip, clients=args.hostile, root=root)
    if args.hostile:
        return hostileSoak(rig, args, workdir)
    try:
        rig.start()
        assert rig.proxy is not None
        pid = rig.proxy.pid
        fresh = sample(pid, rig.ports, time.monotonic())
        print(
            f"soak: ccproxy pid {pid} on :{rig.port}, upstream :{rig.primary} "
            f"backup :{rig.backup}, workdir {workdir}",
            flush=True,
        )
        print(f"soak: warm-up, {args.streams} streams for {args.warmup:g} s", flush=True)
        warm, _, _ = asyncio.run(drive(rig, args, args.warmup, args.seed + 1))
        quietBefore = rig.quiet(30)
        start = sample(pid, rig.ports, time.monotonic())
        print(f"soak: {args.streams} streams for {args.seconds:g} s", flush=True)
        statsBefore = rig.upstreamStats()
        tally, samples, elapsed = asyncio.run(drive(rig, args, args.seconds, args.seed))
        quietAfter = rig.quiet(30)
        end = sample(pid, rig.ports, time.monotonic())
        statsAfter = rig.upstreamStats()
        alive = rig.proxy.poll() is None
    finally:
        rig.stop()
    peakRss = max([s.rss for s in samples] + [start.rss, end.rss])
    peakFds = max([s.fds for s in samples] + [start.fds, end.fds])
    peakUp = max([s.upstreamConnections for s in samples] + [0])
    cpu = end.cpu - start.cpu
    upstreamDelta = {
        "requests": {
            k: statsAfter["requests"].get(k, 0) - statsBefore["requests"].get(k, 0)
            for k in statsAfter["requests"]
        },
        "abandoned_by_peer": statsAfter["abandoned_by_peer"] - statsBefore["abandoned_by_peer"],
        "stalls_ended_by_peer": statsAfter["stalls_ended_by_peer"]
        - statsBefore["stalls_ended_by_peer"],
    }
    logText = (workdir / "ccproxy.log").read_text(errors="replace")
    tracebacks = logText.count("Traceback (most recent call last)")
    problems = endProblems(args, start, end, quietAfter, warm, alive, tracebacks)
    if sum(tally.invalid.values()):
        problems.append(f"{sum(tally.invalid.values())} answers failed validation")
    report = {
        "streams": args.streams,
        "seconds": round(elapsed, 1),
        "warmup_seconds": args.warmup,
        "drip_s": args.drip,
        "requests_started": tally.started,
        "requests_completed": tally.completed,
        "requests_per_second": round(tally.completed / elapsed, 1) if elapsed else 0,
        "client_disconnects": tally.disconnects,
        "outcomes": dict(tally.outcomes.most_common()),
        "validation_failures": dict(tally.invalid),
        "validation_examples": tally.examples,
        "latency_s": {p: round(percentile(tally.latencies, p), 2) for p in (50, 90, 99)},
        "upstream_seen": upstreamDelta,
        "proxy": {
            "rss": {"fresh": fresh.rss, "start": start.rss, "peak": peakRss, "end": end.rss},
            "fds": {"fresh": fresh.fds, "start": start.fds, "peak": peakFds, "end": end.fds},
            "rss_slope_mib_per_min_second_half": round(slopeMiBPerMinute(samples), 2),
            "cpu_s": round(cpu, 1),
            "cpu_share_of_a_core": round(cpu / elapsed, 2) if elapsed else 0,
            "peak_upstream_connections": peakUp,
            "quiet_before": quietBefore,
            "quiet_after": quietAfter,
        },
        "warmup": {
            "completed": warm.completed,
            "invalid": dict(warm.invalid),
            "examples": warm.examples,
        },
        "proxy_log": {"lines": logText.count("\n"), "tracebacks": tracebacks},
        "bounds": {"fd_growth": args.fd_bound, "rss_growth_mib": args.rss_bound_mib},
        "problems": problems,
    }
    (workdir / "soak-report.json").write_text(json.dumps(report, indent=2))
    printReport(report, workdir)
    return 1 if problems else 0


# -- --hostile ------------------------------------------------------------------------------

PHASES = (("calm", False), ("hostile", True), ("calm again", False))


def spread(values: list[float]) -> dict[str, float]:
    return {f"p{p}": round(percentile(values, p), 4) for p in (50, 95, 99)} | {
        "max": round(max(values, default=0.0), 4)
    }


def hostilePhase(
    rig: Rig, args: argparse.Namespace, name: str, hostile: bool, ctBody: Path
) -> dict[str, Any]:
    """The normal load for --seconds, with the hostile clients beside it or not."""
    assert rig.proxy is not None
    pid = rig.proxy.pid
    quiet = rig.quiet(90)
    before = sample(pid, rig.ports, time.monotonic())
    metricsBefore = len(getBytes(rig.url("/metrics"), key=rig.adminKey))
    cpu0 = cpuSeconds(pid)
    waited0 = runqueue_wait_seconds([pid])
    process, out = None, rig.workdir / "hostile.json"
    if hostile:
        out.unlink(missing_ok=True)
        command = [sys.executable, "-m", "bench.hostile", "--port", str(rig.port)]
        command += ["--key", KEYS["CCPROXY_SOAK_HOSTILE_KEY"], "--seconds", str(args.seconds)]
        command += ["--source", args.hostile_source, "--mix", args.hostile_mix]
        command += ["--count-tokens-body", str(ctBody), "--json", str(out)]
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            stdout=open(rig.workdir / "hostile.log", "wb"),
            stderr=subprocess.STDOUT,
        )
    print(f"soak: phase '{name}', {args.streams} streams for {args.seconds:g} s", flush=True)
    tally, samples, elapsed = asyncio.run(drive(rig, args, args.seconds, args.seed))
    report: dict[str, Any] = {}
    if process is not None:
        try:
            process.wait(60)
            report = json.loads(out.read_text())
        except (subprocess.TimeoutExpired, OSError, ValueError) as e:
            process.kill()
            process.wait(5)
            report = {"error": f"no report from bench.hostile ({e}; see hostile.log)"}
    cpu = cpuSeconds(pid) - cpu0
    errors = sum(tally.invalid.values())
    return {
        "phase": name,
        "seconds": round(elapsed, 1),
        "quiet_before": quiet,
        "started": tally.started,
        "completed": tally.completed,
        "client_disconnects": tally.disconnects,
        "errors": errors,
        "error_rate": errors / tally.started if tally.started else 0.0,
        "errors_by_kind": dict(tally.invalid),
        "error_examples": tally.examples,
        "outcomes": dict(tally.outcomes.most_common()),
        "full_s": spread(tally.latencies),
        "first_byte_s": spread(tally.firstBytes),
        "rss_before": before.rss,
        "fds_before": before.fds,
        "rss_peak": max((x.rss for x in samples), default=0),
        "rss_slope_mib_per_min_second_half": round(slopeMiBPerMinute(samples), 2),
        "fds_peak": max((x.fds for x in samples), default=0),
        "cpu_share_of_a_core": round(cpu / elapsed, 2) if elapsed else 0,
        "proxy_waited_for_cpu": round((runqueue_wait_seconds([pid]) - waited0) / elapsed, 3),
        "metrics_bytes": [metricsBefore, len(getBytes(rig.url("/metrics"), key=rig.adminKey))],
        "hostile": report,
    }


def hostileSoak(rig: Rig, args: argparse.Namespace, workdir: Path) -> int:
    """--hostile: warm-up, then the normal load calm, beside the hostile mix, and calm
    again; the same checks as the soak (fds, RSS, upstream connections, validation)
    over the three, and the normal clients' figures phase by phase."""
    ctBody = workdir / "count_tokens-30MiB.json"
    ctBody.write_bytes(corpus.large_body(30 * 2**20, "claude-sonnet-4-5", count_tokens=True))
    try:
        rig.start()
        assert rig.proxy is not None
        pid = rig.proxy.pid
        print(f"soak --hostile: ccproxy pid {pid} on :{rig.port}, workdir {workdir}", flush=True)
        fresh = sample(pid, rig.ports, time.monotonic())
        warm, _, _ = asyncio.run(drive(rig, args, args.warmup, args.seed + 1))
        rig.quiet(90)
        start = sample(pid, rig.ports, time.monotonic())
        phases = [hostilePhase(rig, args, name, bad, ctBody) for name, bad in PHASES]
        quietAfter = rig.quiet(90)
        end = sample(pid, rig.ports, time.monotonic())
        alive = rig.proxy.poll() is None
    finally:
        rig.stop()
    logText = (workdir / "ccproxy.log").read_text(errors="replace")
    tracebacks = logText.count("Traceback (most recent call last)")
    # Leaks are judged over the last calm phase: the hostile one leaves the allocator
    # at the high-water of the bodies it held (body_memory_bytes bounds them), which
    # the process keeps but does not grow from. The hostile phase's peak is reported.
    calmAgain = phases[-1]
    leakStart = Sample(start.t, calmAgain["rss_before"], calmAgain["fds_before"], 0, 0.0)
    problems = endProblems(args, leakStart, end, quietAfter, warm, alive, tracebacks)
    for phase in phases:
        if phase["errors"]:
            problems.append(f"{phase['errors']} normal answers failed in '{phase['phase']}'")
        for kind, seen in phase["hostile"].items():
            if kind == "error":
                problems.append(seen)
            elif seen["unexpected"]:
                problems.append(f"hostile {kind}: unexpected {seen['unexpected']}")
    report = {
        "streams": args.streams,
        "seconds_per_phase": args.seconds,
        "drip_s": args.drip,
        "hostile_mix": args.hostile_mix or "defaults",
        "phases": phases,
        "proxy": {
            "rss": {
                "fresh": fresh.rss,
                "start": start.rss,
                "calm_again_start": calmAgain["rss_before"],
                "end": end.rss,
            },
            "fds": {"fresh": fresh.fds, "start": start.fds, "end": end.fds},
            "quiet_after": quietAfter,
        },
        "warmup": {"completed": warm.completed, "invalid": dict(warm.invalid)},
        "tracebacks": tracebacks,
        "problems": problems,
    }
    (workdir / "soak-report.json").write_text(json.dumps(report, indent=2))
    printHostileReport(report, workdir)
    return 1 if problems else 0


def printHostileReport(r: dict[str, Any], workdir: Path) -> None:
    print()
    print(
        f"## ccproxy soak --hostile: {r['streams']} normal streams, {r['seconds_per_phase']:g} s "
        f"a phase (drip {r['drip_s']} s); hostile mix: {r['hostile_mix']}"
    )
    print()
    print(
        "| phase | completed | errors (rate) | full time p50/p95/p99/max s "
        "| first byte (streams) p50/p95/p99/max ms | ccproxy RSS peak (slope, 2nd half) "
        "| fds peak | CPU | waited for CPU | /metrics bytes |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for p in r["phases"]:
        full = " / ".join(f"{v:.2f}" for v in p["full_s"].values())
        first = " / ".join(f"{v * 1000:.1f}" for v in p["first_byte_s"].values())
        print(
            f"| {p['phase']} | {p['completed']} | {p['errors']} ({p['error_rate']:.2%}) "
            f"| {full} | {first} | {mib(p['rss_peak'])} "
            f"({p['rss_slope_mib_per_min_second_half']:+.1f} MiB/min) | {p['fds_peak']} "
            f"| {p['cpu_share_of_a_core']:.0%} | {p['proxy_waited_for_cpu']:.1%} "
            f"| {p['metrics_bytes'][0]} → {p['metrics_bytes'][1]} |"
        )
    for p in r["phases"]:
        for kind, example in p["error_examples"].items():
            print(f"- {p['phase']}: e.g. {kind}: {example}")
    print()
    print("| hostile kind | clients | attempts | outcomes | to the answer p50/max s | unfinished |")
    print("|---|---|---|---|---|---|")
    for p in r["phases"]:
        for kind, seen in p["hostile"].items():
            if kind == "error":
                print(f"| {seen} |")
                continue
            answer = seen["seconds_to_answer"] or {}
            cut = seen["seconds_to_cut"]
            outcomes = "; ".join(f"{n} x {o}" for o, n in seen["outcomes"].items())
            if cut:
                outcomes += f"; cut {cut['p50']:.1f} s (max {cut['max']:.1f}) after the answer"
            print(
                f"| {kind} | {seen['clients']} | {seen['attempts']} | {outcomes} "
                f"| {answer.get('p50', '-')} / {answer.get('max', '-')} "
                f"| {seen['unfinished_at_the_end']} |"
            )
            for outcome, example in seen["examples"].items():
                print(f"|  | e.g. {outcome}: {example[:160]!r} | | | | |")
    x = r["proxy"]
    print()
    print(
        f"- ccproxy RSS fresh {mib(x['rss']['fresh'])}, start {mib(x['rss']['start'])}, "
        f"calm again from {mib(x['rss']['calm_again_start'])} (the leak check's start), "
        f"end {mib(x['rss']['end'])}; fds fresh {x['fds']['fresh']}, start {x['fds']['start']}, "
        f"end {x['fds']['end']}; at the end: {x['quiet_after']}"
    )
    print(f"- ccproxy log: {r['tracebacks']} tracebacks")
    print()
    print("PASS" if not r["problems"] else "FAIL: " + "; ".join(r["problems"]))
    print(f"(report: {workdir / 'soak-report.json'})")


def endProblems(
    args: argparse.Namespace,
    start: Sample,
    end: Sample,
    quietAfter: dict[str, Any],
    warm: Tally,
    alive: bool,
    tracebacks: int,
) -> list[str]:
    """What the end of a soak shows wrong: fds or RSS grown past their bounds (start
    to end), upstream connections or requests left over, failed warm-up answers,
    ccproxy gone, tracebacks in its log."""
    problems = []
    if end.fds - start.fds > args.fd_bound:
        problems.append(f"open fds grew by {end.fds - start.fds} (bound {args.fd_bound})")
    if (end.rss - start.rss) / 2**20 > args.rss_bound_mib:
        problems.append(
            f"RSS grew by {mib(end.rss - start.rss)} (bound {args.rss_bound_mib:g} MiB)"
        )
    if quietAfter.get("proxy_upstream_connections"):
        problems.append(
            f"{quietAfter['proxy_upstream_connections']} upstream connections left open"
        )
    if quietAfter.get("proxy_in_flight") or quietAfter.get("proxy_streams_in_flight"):
        problems.append("requests still in flight in the proxy at the end")
    if quietAfter.get("upstream_active_requests"):
        problems.append(f"{quietAfter['upstream_active_requests']} upstream requests never ended")
    if warm.invalid:
        problems.append(f"{sum(warm.invalid.values())} warm-up answers failed validation")
    if not alive:
        problems.append("ccproxy exited during the soak")
    if tracebacks:
        problems.append(f"{tracebacks} tracebacks in ccproxy's log")
    return problems


def printReport(r: dict[str, Any], workdir: Path) -> None:
    p = r["proxy"]
    print()
    print(
        f"## ccproxy soak: {r['streams']} concurrent streams for {r['seconds']} s "
        f"(drip {r['drip_s']} s)"
    )
    print()
    print(
        f"- requests completed: {r['requests_completed']} of {r['requests_started']} started "
        f"({r['requests_per_second']}/s); client disconnects on purpose: {r['client_disconnects']}"
    )
    latency = r["latency_s"]
    print(f"- answer time p50/p90/p99: {latency[50]} / {latency[90]} / {latency[99]} s")
    print("- outcomes as the client saw them:")
    for outcome, count in r["outcomes"].items():
        print(f"    {count:7d}  {outcome}")
    failures = r["validation_failures"]
    print(f"- validation failures: {sum(failures.values())}" + (f" {failures}" if failures else ""))
    for kind, example in r["validation_examples"].items():
        print(f"    e.g. {kind}: {example}")
    warm = r["warmup"]
    print(f"- warm-up: {warm['completed']} completed, validation failures: {warm['invalid']}")
    for kind, example in warm["examples"].items():
        print(f"    e.g. {kind}: {example}")
    up = r["upstream_seen"]
    print(
        f"- upstream saw: {dict(sorted(up['requests'].items()))}; streams abandoned by the proxy: "
        f"{up['abandoned_by_peer']}; stalls ended by the proxy: {up['stalls_ended_by_peer']}"
    )
    print("- ccproxy process:")
    print(
        f"    RSS   fresh {mib(p['rss']['fresh'])}, start {mib(p['rss']['start'])}, "
        f"peak {mib(p['rss']['peak'])}, end {mib(p['rss']['end'])} "
        f"(growth {mib(p['rss']['end'] - p['rss']['start'])}, "
        f"bound {r['bounds']['rss_growth_mib']:g} MiB; "
        f"slope in the second half {p['rss_slope_mib_per_min_second_half']} MiB/min)"
    )
    print(
        f"    fds   fresh {p['fds']['fresh']}, start {p['fds']['start']}, peak {p['fds']['peak']}, "
        f"end {p['fds']['end']} (growth {p['fds']['end'] - p['fds']['start']}, "
        f"bound {r['bounds']['fd_growth']})"
    )
    print(
        f"    CPU   {p['cpu_s']} s ({p['cpu_share_of_a_core']:.0%} of a core); "
        f"peak upstream connections {p['peak_upstream_connections']}"
    )
    print(f"    at the end: {p['quiet_after']}")
    print(f"- upstream connections left open: {p['quiet_after'].get('proxy_upstream_connections')}")
    print(
        f"- ccproxy log: {r['proxy_log']['lines']} lines, {r['proxy_log']['tracebacks']} tracebacks"
    )
    print()
    print("PASS" if not r["problems"] else "FAIL: " + "; ".join(r["problems"]))
    print(f"(report: {workdir / 'soak-report.json'})")


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(2)
