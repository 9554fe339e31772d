"""SIGTERM drains: a stream in flight finishes whole, no kept-alive connection starts
a new request, and a clean drain exits 0 (as the README says).

These run a real `twistd -n ccproxy`, because the truncation they guard against only
exists there: the reactor stopped in the turn the last stream ended, and its last
bytes (the final delta, `message_delta`, `message_stop`, the chunked terminator)
were still in the transport's buffer. The upstream is a small threaded HTTP server
in the test, which holds the stream open until the test lets it finish.
"""

from __future__ import annotations

import json
import signal
import socket
import threading
import time
from collections.abc import Iterator
from functools import cached_property
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from ccproxy.config import Config
from ccproxy.web.site import ProxySite
from tests.support.harness import fired, parseSSE
from tests.support.processes import waitFor
from tests.support.realdaemon import (
    Daemon,
    daemonsFixture,  # noqa: F401 (the `daemons` fixture)
    startDaemon,
)

WAIT = 20.0
"""The bound on every wait for the daemon or the upstream."""


def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
    body = {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    return b"data: " + json.dumps(body).encode() + b"\n\n"


class HeldUpstream(ThreadingHTTPServer):
    """Streams a few words, then waits for `release` before the rest and [DONE]."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.started = threading.Event()
        self.release = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


class _Handler(BaseHTTPRequestHandler):
    server: HeldUpstream

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["content-length"]))
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("connection", "close")
        self.end_headers()
        self.wfile.write(chunk({"role": "assistant", "content": "Hello"}))
        self.wfile.flush()
        self.server.started.set()
        self.server.release.wait(WAIT)
        for word in (" there,", " a", " whole", " answer."):
            self.wfile.write(chunk({"content": word}))
        self.wfile.write(chunk({}, finish="stop"))
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def upstream() -> Iterator[HeldUpstream]:
    server = HeldUpstream()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.release.set()
        server.shutdown()
        server.server_close()


def config(upstream: HeldUpstream, grace: float) -> str:
    return (
        f'upstreams:\n  up: {{url: "{upstream.url}", retries: 0}}\n'
        f'models:\n  "*": up\nshutdown_grace: {grace}\nlog: {{file: ccproxy.log}}\n'
    )


def connect(daemon: Daemon) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", daemon.port), timeout=WAIT)
    return sock


def streamRequest() -> bytes:
    body = json.dumps(
        {
            "model": "claude-x",
            "max_tokens": 50,
            "stream": True,
            "messages": [{"role": "user", "content": "hi"}],
        }
    ).encode()
    head = (
        "POST /v1/messages HTTP/1.1\r\nHost: ccproxy\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def readUntil(sock: socket.socket, seen: bytes, marker: bytes) -> bytes:
    while marker not in seen:
        data = sock.recv(65536)
        if not data:
            raise AssertionError(f"closed before {marker!r}: {seen!r}")
        seen += data
    return seen


def readToEnd(sock: socket.socket, seen: bytes = b"") -> bytes:
    """Everything until the daemon closes the connection (bounded by WAIT)."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            break
        if not data:
            break
        seen += data
    return seen


def dechunk(body: bytes) -> tuple[bytes, bool]:
    """A chunked body's payload, and whether it ended with the zero-size chunk."""
    payload = b""
    while body:
        size, sep, rest = body.partition(b"\r\n")
        if not sep:
            return payload, False
        length = int(size, 16)
        if length == 0:
            return payload, rest == b"\r\n"
        payload, body = payload + rest[:length], rest[length + 2 :]
    return payload, False


def splitResponse(raw: bytes) -> tuple[bytes, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status, *lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return status.encode(), headers, body


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


def startStream(daemon: Daemon, upstream: HeldUpstream, sock: socket.socket) -> bytes:
    """A stream through `sock`, its first delta read: the upstream holds the rest."""
    sock.sendall(streamRequest())
    seen = readUntil(sock, b"", b"Hello")
    assert upstream.started.wait(WAIT)
    return seen


def terminate(daemon: Daemon) -> None:
    """SIGTERM, and wait for the drain to have begun (the port refuses)."""
    daemon.signal(signal.SIGTERM)
    waitFor(lambda: refused(daemon.port), "the port to stop accepting")


def streamThroughSigterm(
    home: Path, daemons: list[Daemon], upstream: HeldUpstream, grace: float, finish: bool
) -> tuple[Daemon, bytes]:
    """A daemon, a stream through it, SIGTERM mid-stream, the upstream let `finish`
    (or not); everything the client got."""
    daemons.append(startDaemon(home, config(upstream, grace)))
    with connect(daemons[-1]) as stream:
        seen = startStream(daemons[-1], upstream, stream)
        terminate(daemons[-1])
        if finish:
            upstream.release.set()
        return daemons[-1], readToEnd(stream, seen)


def test_sigterm_lets_the_stream_finish_whole_and_exits_0(
    tmp_path: Path, daemons: list[Daemon], upstream: HeldUpstream
) -> None:
    """Before: 818 bytes, up to the first delta, no chunked terminator; exit 143."""
    daemon, raw = streamThroughSigterm(tmp_path, daemons, upstream, grace=15, finish=True)
    status, headers, body = splitResponse(raw)
    assert status == b"HTTP/1.1 200 OK" and headers["transfer-encoding"] == "chunked"
    payload, terminated = dechunk(body)
    assert terminated, body[-80:]
    frames = parseSSE(payload)
    text = "".join(
        data["delta"].get("text", "") for name, data in frames if name == "content_block_delta"
    )
    assert text == "Hello there, a whole answer."
    assert [name for name, _ in frames[-3:]] == [
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert daemon.process.wait(WAIT) == 0
    log = (tmp_path / "ccproxy.log").read_text()
    assert "draining 1 requests in flight" in log
    assert "stopping anyway" not in log
    assert log.rstrip().endswith("Server Shut Down.")


def test_a_status_page_stream_does_not_hold_the_drain(
    tmp_path: Path, daemons: list[Daemon], upstream: HeldUpstream
) -> None:
    """The status page's event stream never ends on its own: the drain ends it, and
    the daemon exits 0 at once instead of waiting out `shutdown_grace`."""
    daemons.append(startDaemon(tmp_path, config(upstream, grace=60)))
    daemon = daemons[-1]
    with connect(daemon) as sock:
        sock.sendall(b"GET /status/events HTTP/1.1\r\nHost: ccproxy\r\n\r\n")
        seen = readUntil(sock, b"", b"event: status")
        began = time.monotonic()
        terminate(daemon)
        status, headers, body = splitResponse(readToEnd(sock, seen))
    assert status == b"HTTP/1.1 200 OK" and headers["content-type"] == "text/event-stream"
    assert dechunk(body)[1]  # ended whole
    assert daemon.process.wait(WAIT) == 0
    assert time.monotonic() - began < 30  # well within the grace
    assert "stopping anyway" not in (tmp_path / "ccproxy.log").read_text()


def test_no_kept_alive_connection_starts_a_request_during_the_drain(
    tmp_path: Path, daemons: list[Daemon], upstream: HeldUpstream
) -> None:
    """An idle kept-alive connection is closed as the drain begins; a request whose
    bytes were already on their way is answered 503, `Connection: close`."""
    daemons.append(startDaemon(tmp_path, config(upstream, grace=15)))
    daemon = daemons[-1]
    with connect(daemon) as stream, connect(daemon) as idle, connect(daemon) as late:
        seen = startStream(daemon, upstream, stream)  # keeps the drain going
        idle.sendall(b"GET /healthz HTTP/1.1\r\nHost: ccproxy\r\n\r\n")
        late.sendall(b"GET /healthz HTTP/1.1\r\nHost: ccproxy\r\n")  # the head, not all
        status, headers, _ = splitResponse(readUntil(idle, b"", b"}"))
        assert status.endswith(b"200 OK") and headers.get("connection") != "close"
        terminate(daemon)
        assert readToEnd(idle) == b""  # closed with nothing sent
        late.sendall(b"\r\n")
        status, headers, body = splitResponse(readToEnd(late))
        upstream.release.set()
        assert parseSSE(dechunk(splitResponse(readToEnd(stream, seen))[2])[0])[-1][0] == (
            "message_stop"
        )
    assert status == b"HTTP/1.1 503 Service Unavailable"
    assert headers["connection"] == "close" and headers["x-should-retry"] == "true"
    assert json.loads(body)["error"]["type"] == "overloaded_error"
    assert daemon.process.wait(WAIT) == 0
    (line,) = [
        line
        for line in (tmp_path / "ccproxy.log").read_text().splitlines()
        if headers["request-id"] in line
    ]
    assert "[ccproxy.access#warn]" in line and "GET /healthz" in line
    assert "503" in line and "overloaded_error" in line


def test_a_stream_past_the_grace_is_cut_and_the_exit_says_so(
    tmp_path: Path, daemons: list[Daemon], upstream: HeldUpstream
) -> None:
    daemon, raw = streamThroughSigterm(tmp_path, daemons, upstream, grace=0.5, finish=False)
    assert not dechunk(splitResponse(raw)[2])[1]
    assert daemon.process.wait(WAIT) == -signal.SIGTERM  # 143 in a shell
    log = (tmp_path / "ccproxy.log").read_text()
    assert "1 requests in flight and 1 client connections open after 0.5 s" in log


# -- the drain's parts, in memory ----------------------------------------------------


class _Pages(Resource):
    """`/fast` answers at once; `/slow` waits for the test (its requests in `held`)."""

    isLeaf = True

    def render_GET(self, request: Any) -> Any:
        if request.path != b"/slow":
            return b"ok"
        self.held.append(request)
        return NOT_DONE_YET

    @cached_property
    def held(self) -> list[Any]:
        return []


def connection(pages: _Pages) -> tuple[ProxySite, Any, StringTransport]:
    site = ProxySite(pages, lambda: OPEN_CONFIG, reactor=Clock())
    protocol = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 50000))
    transport = StringTransport()
    protocol.makeConnection(transport)
    return site, protocol, transport


OPEN_CONFIG = Config.fromYAML("upstreams: {up: {url: 'http://up.test/v1'}}\nmodels: {'*': up}", {})
GET = b"GET %s HTTP/1.1\r\nHost: ccproxy\r\n\r\n"


def test_an_idle_connection_is_closed_and_then_the_drain_is_over() -> None:
    pages = _Pages()
    site, protocol, transport = connection(pages)
    protocol.dataReceived(GET % b"/fast")
    assert transport.value().startswith(b"HTTP/1.1 200 OK") and not transport.disconnecting
    closed = site.whenClosed()
    site.beginDrain()
    assert transport.disconnecting  # loseConnection: what was written goes first
    assert not fired(closed)
    protocol.connectionLost(Failure(ConnectionDone()))
    assert fired(closed) and site.connections == 0


def test_a_busy_connection_closes_once_its_answer_ends() -> None:
    pages = _Pages()
    site, protocol, transport = connection(pages)
    protocol.dataReceived(GET % b"/slow")
    site.beginDrain()
    assert not transport.disconnecting
    (request,) = pages.held
    request.write(b"the answer")
    request.finish()
    assert b"Connection: close" in transport.value()  # its head was not yet sent
    assert transport.value().endswith(b"the answer\r\n0\r\n\r\n")
    assert transport.disconnecting


def test_a_request_begun_during_the_drain_is_refused_503() -> None:
    pages = _Pages()
    site, protocol, transport = connection(pages)
    protocol.dataReceived(b"GET /fast HTTP/1.1\r\n")  # on its way as the drain begins
    site.beginDrain()
    protocol.dataReceived(b"Host: ccproxy\r\n\r\n")
    head, _, body = transport.value().partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503 ")
    assert b"connection: close" in head.lower() and b"x-should-retry: true" in head
    assert json.loads(body)["error"]["type"] == "overloaded_error"
    assert transport.disconnecting and pages.held == []


def test_what_the_grace_leaves_open_is_aborted() -> None:
    pages = _Pages()
    site, protocol, transport = connection(pages)
    protocol.dataReceived(GET % b"/slow")
    site.beginDrain()
    site.abortAll()
    assert transport.disconnected


def test_no_connection_is_taken_during_the_drain() -> None:
    site, _, _ = connection(_Pages())
    site.beginDrain()
    assert site.buildProtocol(IPv4Address("TCP", "10.0.0.1", 1)) is None
