"""The site's door, byte by byte: requests judged as soon as their headers are in,
bodies held only once let in, deadlines for headers and bodies, connection caps.

Each test drives a real `ProxySite`/`ProxyChannel` over a `StringTransport` on a
`Clock`, with the app behind it in memory (`tests/support/harness.py`)."""

from __future__ import annotations

import gc
import resource
from typing import Any

import orjson
import pytest
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure

from ccproxy.compat import CHANNEL_ATTRIBUTES
from ccproxy.daemon.listen import connectionCap, raiseOpenFilesLimit
from ccproxy.web.site import LINGER, SPLIT_FROM, ProxySite, isCanonicalPath
from tests.support.fakes import completion, jsonReply, sseReply
from tests.support.harness import Harness, message


def completionChunk(text: str) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]}


CONFIG = """
max_body_bytes: 1000000
body_memory_bytes: 2000000
header_timeout: 10
body_timeout: 30
max_connections_per_address: 3
clients:
  - {name: alice, key: alice-key}
upstreams:
  up: {url: "http://upstream.test/v1"}
models:
  "*": up
"""

BIG = 30 * 1024 * 1024


class Conn:
    """One client connection into the site."""

    def __init__(self, site: ProxySite, host: str = "10.0.0.1", port: int = 40000) -> None:
        self.site = site
        self.channel = site.buildProtocol(IPv4Address("TCP", host, port))
        assert self.channel is not None, "turned away"
        self.transport = StringTransport(
            hostAddress=IPv4Address("TCP", "127.0.0.1", 8082),
            peerAddress=IPv4Address("TCP", host, port),
        )
        self.channel.makeConnection(self.transport)

    def send(self, data: bytes) -> Conn:
        self.channel.dataReceived(data)
        return self

    def head(self, length: int | None, key: str | None = "alice-key", expect: bool = False) -> Conn:
        lines = [b"POST /v1/messages HTTP/1.1", b"Host: proxy", b"Content-Type: application/json"]
        if key:
            lines.append(b"x-api-key: " + key.encode())
        lines.append(
            b"Transfer-Encoding: chunked" if length is None else b"Content-Length: %d" % length
        )
        if expect:
            lines.append(b"Expect: 100-continue")
        return self.send(b"\r\n".join(lines) + b"\r\n\r\n")

    @property
    def written(self) -> bytes:
        return self.transport.value()

    def status(self) -> int:
        line = self.written.split(b"\r\n", 1)[0]
        return int(line.split(b" ")[1])

    def envelope(self) -> dict[str, Any]:
        body: dict[str, Any] = orjson.loads(self.written.split(b"\r\n\r\n", 1)[1])
        return body

    def close(self) -> None:
        self.channel.connectionLost(Failure(ConnectionDone()))


@pytest.fixture
def h() -> Harness:
    return Harness.build(CONFIG)


@pytest.fixture
def site(h: Harness) -> ProxySite:
    return ProxySite.serving(h.app, h.clock, maxConnections=5)


def test_no_key_is_refused_before_a_byte_of_the_body_is_kept(site: ProxySite) -> None:
    """40 callers without a key announcing 30 MiB each took the daemon to 1.35 GB:
    now each gets its 401 at the headers, and nothing of the body is held."""
    conns = [Conn(site, f"10.0.0.{i}").head(BIG, key=None, expect=True) for i in range(5)]
    for conn in conns:
        conn.send(b"x" * 65536)
        assert conn.status() == 401
        assert b"100 Continue" not in conn.written
        assert conn.envelope()["error"]["type"] == "authentication_error"
        assert b"connection: close" in conn.written.lower()
    assert site.bodyBytes == 0
    assert all(len(c.channel.requests[0].content.getvalue()) == 0 for c in conns)


def test_a_wrong_key_is_refused_at_the_headers_too(site: ProxySite) -> None:
    conn = Conn(site).head(100, key="wrong")
    assert conn.status() == 401 and conn.envelope()["error"]["message"] == "invalid API key"


@pytest.mark.parametrize("key", [None, "wrong"])
def test_a_401_at_the_headers_tells_claude_code_not_to_retry(
    site: ProxySite, key: str | None
) -> None:
    """Without it Claude Code retries for minutes before it says the key is wrong."""
    conn = Conn(site).head(100, key=key)
    assert conn.status() == 401
    assert b"\r\nx-should-retry: false\r\n" in conn.written.split(b"\r\n\r\n", 1)[0] + b"\r\n"


def test_100_continue_only_for_a_request_that_will_be_read(site: ProxySite) -> None:
    assert b"HTTP/1.1 100 Continue" in Conn(site).head(100, expect=True).written
    tooBig = Conn(site, "10.0.0.2").head(2_000_000, expect=True)
    assert tooBig.status() == 413 and b"100 Continue" not in tooBig.written


def test_an_announced_body_over_the_limit_is_413_at_once(site: ProxySite) -> None:
    """It used to drop the connection with no answer and a traceback in the log."""
    failures: list[Any] = []
    globalLogPublisher.addObserver(failures.append)
    try:
        conn = Conn(site).head(2_000_000).send(b"x" * 100_000)
    finally:
        globalLogPublisher.removeObserver(failures.append)
    assert conn.status() == 413
    assert conn.envelope()["error"]["type"] == "request_too_large"
    assert not [e for e in failures if e.get("log_failure") is not None]


def test_a_chunked_body_over_the_limit_is_413_midway(site: ProxySite) -> None:
    conn = Conn(site).head(None)
    chunk = b"x" * 400_000
    for _ in range(3):
        conn.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
    assert conn.status() == 413
    assert site.bodyBytes == 0


def test_bodies_in_flight_share_a_bounded_memory(h: Harness, site: ProxySite) -> None:
    """Two 0.9 MB bodies half sent fill 2 MB of room with their reservations: a
    third waits for none of it, it is refused 503 with a retry-after."""
    first = Conn(site, "10.0.0.1").head(900_000).send(b"x" * 10)
    Conn(site, "10.0.0.2").head(900_000).send(b"x" * 10)
    assert site.bodyBytes == 1_800_000
    third = Conn(site, "10.0.0.3").head(900_000)
    assert third.status() == 503
    assert third.envelope()["error"]["type"] == "overloaded_error"
    assert b"retry-after: 1" in third.written.lower()
    first.close()  # its room comes back
    assert site.bodyBytes == 900_000


def test_an_answered_request_gives_its_room_back(h: Harness, site: ProxySite) -> None:
    body = orjson.dumps(message())
    conn = Conn(site).head(len(body)).send(body)
    h.flush()
    assert conn.status() == 200
    assert site.bodyBytes == 0


def _oneRead(body: bytes, key: str | None = "alice-key") -> bytes:
    """A request's head and body as one read (as a client's 50 KB request comes)."""
    lines = [b"POST /v1/messages HTTP/1.1", b"Host: proxy", b"Content-Type: application/json"]
    if key:
        lines.append(b"x-api-key: " + key.encode())
    lines.append(b"Content-Length: %d" % len(body))
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def test_a_head_and_body_read_together_are_served(h: Harness, site: ProxySite) -> None:
    """A large body read with its head (the site hands them to twisted.web apart)
    is served whole, and so is a request whose head comes in the same read."""
    body = orjson.dumps(message("x" * (SPLIT_FROM * 4)))
    conn = Conn(site).send(_oneRead(body) + _oneRead(body)[:30])
    h.flush()
    assert conn.status() == 200
    assert h.upstream.received[0].body["messages"][-1]["content"] == "x" * (SPLIT_FROM * 4)
    assert site.bodyBytes == 0
    conn.send(_oneRead(body)[30:])
    h.flush()
    assert len(h.upstream.received) == 2
    assert conn.written.count(b"HTTP/1.1 200") == 2


def test_each_connection_s_requests_see_its_own_addresses(h: Harness, site: ProxySite) -> None:
    """A channel asks its transport for its addresses once (they are the
    connection's): every request kept alive on it has them, and a new connection
    has its own."""
    body = orjson.dumps(message())
    first, second = Conn(site, "10.0.0.1", 40001), Conn(site, "10.0.0.2", 40002)
    seen = []
    for conn in (first, first, second, first):
        conn.head(len(body))
        request = conn.channel.requests[-1]
        seen.append((request.getClientAddress(), request.getHost()))
        conn.send(body)
        h.flush()
    assert [peer.host for peer, _ in seen] == ["10.0.0.1", "10.0.0.1", "10.0.0.2", "10.0.0.1"]
    assert [peer.port for peer, _ in seen] == [40001, 40001, 40002, 40001]
    assert {host for _, host in seen} == {IPv4Address("TCP", "127.0.0.1", 8082)}
    first.transport.peerAddr = IPv4Address("TCP", "10.9.9.9", 1)  # asked once: not again
    first.head(len(body))
    assert first.channel.requests[-1].getClientAddress().host == "10.0.0.1"
    assert first.written.count(b"HTTP/1.1 200") == 3


def test_a_refused_head_read_with_its_body_keeps_none_of_it(h: Harness, site: ProxySite) -> None:
    body = orjson.dumps(message("x" * (SPLIT_FROM * 4)))
    conn = Conn(site).send(_oneRead(body, key=None))
    assert conn.status() == 401
    assert conn.transport.disconnecting
    assert site.bodyBytes == 0 and not h.upstream.received


def test_headers_trickled_a_byte_at_a_time_are_cut_at_the_deadline(
    h: Harness, site: ProxySite
) -> None:
    conn = Conn(site)
    for byte in b"POST /v1/messages HTTP/1.1\r\nHost: x":
        conn.send(bytes([byte]))
        h.clock.advance(0.5)  # every byte resets twisted.web's own idle timer
        if h.clock.seconds() >= 10:
            break
    assert conn.status() == 408
    assert conn.transport.disconnecting


def test_a_body_that_does_not_arrive_in_time_is_408(h: Harness, site: ProxySite) -> None:
    conn = Conn(site).head(1000)
    for _ in range(29):
        conn.send(b"x")
        h.clock.advance(1)
    assert conn.written == b""
    h.clock.advance(1)
    assert conn.status() == 408
    assert site.bodyBytes == 0


def _timers(h: Harness) -> list[str]:
    """The site's head and body timers pending on the clock."""
    names = ("_headersLate", "_bodyLate")
    return [c.func.__name__ for c in h.clock.getDelayedCalls() if c.func.__name__ in names]


def test_a_request_read_whole_sets_no_head_or_body_timer(h: Harness, site: ProxySite) -> None:
    """Each timer is set only by a read that leaves its part unfinished: the usual
    request, whole in one read, had both set and cancelled for nothing."""
    h.upstream.queue(jsonReply(completion("hi")))
    conn = Conn(site)
    calls: list[str] = []
    callLater = conn.channel.callLater
    conn.channel.callLater = lambda delay, f, *a: (
        calls.append(f.__name__) or callLater(delay, f, *a)
    )
    conn.send(_oneRead(orjson.dumps(message("hello"))))
    assert conn.status() == 200
    assert "_headersLate" not in calls and "_bodyLate" not in calls
    assert _timers(h) == []


def test_a_body_begun_in_its_heads_read_must_end_in_time(h: Harness, site: ProxySite) -> None:
    whole = _oneRead(orjson.dumps(message("x" * 1000)))
    conn = Conn(site).send(whole[:-10])
    assert _timers(h) == ["_bodyLate"]
    h.clock.advance(30)
    assert conn.status() == 408
    assert site.bodyBytes == 0


def test_a_head_cut_in_two_reads_must_end_in_time_from_its_first(
    h: Harness, site: ProxySite
) -> None:
    whole = _oneRead(orjson.dumps(message("hello")))
    conn = Conn(site).send(whole[:20])
    assert _timers(h) == ["_headersLate"]
    h.clock.advance(9)
    conn.send(whole[20:40])
    h.clock.advance(1)
    assert conn.status() == 408


def test_a_request_read_whole_arms_no_header_or_body_deadline(
    h: Harness, site: ProxySite, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Head and body in one read (nearly every request): neither deadline is
    scheduled, only to be cancelled in the same call and linger in the reactor's
    queue; a head cut in two still has its deadline from its first byte, and a
    body after its head from the head's read (the tests above)."""
    scheduled: list[str] = []
    callLater = h.clock.callLater

    def counted(delay: float, f: Any, *args: Any, **kw: Any) -> Any:
        scheduled.append(getattr(f, "__name__", ""))
        return callLater(delay, f, *args, **kw)

    monkeypatch.setattr(h.clock, "callLater", counted)
    body = orjson.dumps(message())
    h.upstream.queue(jsonReply(completion("hi")))
    conn = Conn(site)
    head = b"POST /v1/messages HTTP/1.1\r\nHost: p\r\nx-api-key: alice-key\r\n"
    conn.send(head + b"Content-Length: %d\r\n\r\n" % len(body) + body)
    h.flush()
    assert conn.status() == 200
    assert "_headersLate" not in scheduled and "_bodyLate" not in scheduled
    split = Conn(site, "10.0.0.2")
    split.send(head[:20])
    assert scheduled.count("_headersLate") == 1
    split.send(head[20:] + b"Content-Length: %d\r\n\r\n" % len(body) + body[:10])
    assert scheduled.count("_bodyLate") == 1


def test_a_refused_body_is_read_to_its_end_then_the_connection_closes(
    h: Harness, site: ProxySite
) -> None:
    conn = Conn(site).head(5000, key=None)
    assert not conn.transport.disconnecting  # the client must get to read its 401
    conn.send(b"x" * 5000)
    assert conn.transport.disconnecting


def test_a_refused_body_that_never_ends_is_cut(h: Harness, site: ProxySite) -> None:
    conn = Conn(site).head(BIG, key=None)
    h.clock.advance(LINGER)
    assert conn.transport.disconnected


def test_connections_are_capped_per_address_and_in_all(site: ProxySite) -> None:
    mine = [Conn(site, "10.0.0.9") for _ in range(3)]
    address = IPv4Address("TCP", "10.0.0.9", 40001)
    assert site.buildProtocol(address) is None  # per address: 3
    others = [Conn(site, "10.0.0.8"), Conn(site, "10.0.0.7")]
    assert site.buildProtocol(IPv4Address("TCP", "10.0.0.6", 1)) is None  # in all: 5
    mine[0].close()
    assert site.buildProtocol(address) is not None
    assert site.connections == 5 and site.turnedAway == 2
    del others


def test_an_ipv6_peer_is_capped_by_its_64_not_address_by_address(site: ProxySite) -> None:
    # one host holds a whole /64: new addresses in it are no way round the cap
    mine = [site.buildProtocol(IPv6Address("TCP", f"2001:db8:0:1::{n}", 1)) for n in (1, 2, 3)]
    assert all(c is not None for c in mine)
    assert site.buildProtocol(IPv6Address("TCP", "2001:db8:0:1:ffff::9", 1)) is None
    other = site.buildProtocol(IPv6Address("TCP", "2001:db8:0:2::1", 1))  # another /64
    assert other is not None
    for channel in [*mine, other]:
        site.connectionClosed(channel)  # type: ignore[arg-type]
    # an IPv4-mapped peer is the IPv4 address it is
    mapped = [site.buildProtocol(IPv6Address("TCP", "::ffff:10.0.0.5", 1)) for _ in range(3)]
    assert all(c is not None for c in mapped)
    assert site.buildProtocol(IPv4Address("TCP", "10.0.0.5", 1)) is None
    assert site.turnedAway == 2


def test_a_refusal_leaves_an_access_event(h: Harness, site: ProxySite) -> None:
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        Conn(site).head(100, key=None)
    finally:
        globalLogPublisher.removeObserver(events.append)
    (access,) = [e for e in events if e.get("log_namespace") == "ccproxy.access"]
    assert (access["status"], access["method"], access["path"]) == (401, "POST", "/v1/messages")
    assert access["endpoint"] == "messages"


@pytest.mark.parametrize(
    ("path", "canonical"),
    [
        (b"/v1/messages", True),
        (b"/v1/messages?beta=true", True),
        (b"/v1/models/claude%20x", True),
        (b"/%76%31/usage", False),
        (b"/v1/models/a%2Fb", False),
        (b"/v1//usage", False),
        (b"/v1/./usage", False),
        (b"/v1/x/../usage", False),
        (b"/v1/usage%", False),
        (b"http://proxy/v1/usage", False),
    ],
)
def test_canonical_paths(path: bytes, canonical: bool) -> None:
    assert isCanonicalPath(path) is canonical


def test_a_percent_encoded_path_is_refused_not_decoded(h: Harness, site: ProxySite) -> None:
    """`/%76%31/usage` used to be served as `/v1/usage`, past a front proxy's path rule."""
    conn = Conn(site).send(b"GET /%76%31/usage HTTP/1.1\r\nHost: x\r\nx-api-key: alice-key\r\n\r\n")
    assert conn.status() == 400
    assert "canonical" in conn.envelope()["error"]["message"]


def test_the_open_files_limit_is_raised_as_far_as_allowed() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
        got = raiseOpenFilesLimit(wanted=512)
        assert got == min(512, hard) == resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert connectionCap(512) == 224  # half of what is left for client sockets


def test_a_body_holds_its_room_until_its_request_lets_go_of_it(h: Harness, site: ProxySite) -> None:
    """Parsed, a body is larger than its bytes: its room is held while the request
    keeps it (waiting for an upstream), and comes free once the upstream has
    answered and the request let it go, though the stream goes on."""
    later: Deferred[None] = Deferred()
    stream = sseReply([completionChunk("a"), completionChunk("b")], delay=5.0)
    h.upstream.queue(lambda request, fake: later.addCallback(lambda _: stream(request, fake)))
    body = orjson.dumps(message(stream=True))
    conn = Conn(site).head(len(body))
    conn.send(body)
    h.flush()
    assert site.bodyBytes == len(body)  # read; the upstream has not answered yet
    later.callback(None)
    h.flush()
    assert site.bodyBytes == 0  # answered: the plan and the body are let go
    assert b"event: message_start" in conn.written and b"message_stop" not in conn.written
    h.clock.advance(5)
    h.clock.advance(5)
    h.clock.advance(5)
    h.flush()
    assert b"message_stop" in conn.written


def test_a_request_kept_for_tool_search_rounds_keeps_its_room(h: Harness, site: ProxySite) -> None:
    """A request offering the tool search tool is kept while its answer streams (each
    search round sends it again): its room among the bodies stays held until the
    request ends, so body_memory_bytes still bounds what such streams keep."""
    stream = sseReply([completionChunk("a"), completionChunk("b")], delay=5.0)
    h.upstream.queue(stream)
    searching = message(stream=True)
    searching["tools"] = [{"type": "tool_search_tool_regex_20251119", "name": "search"}]
    body = orjson.dumps(searching)
    conn = Conn(site).head(len(body))
    conn.send(body)
    h.flush()
    assert b"event: message_start" in conn.written and b"message_stop" not in conn.written
    assert site.bodyBytes == len(body)  # answered, but the request is kept
    for _ in range(3):
        h.clock.advance(5)
    h.flush()
    assert b"message_stop" in conn.written
    assert site.bodyBytes == 0


def test_a_live_stream_keeps_only_the_headers_read_later(h: Harness, site: ProxySite) -> None:
    """Once its upstream has answered, a stream keeps of its request's headers only
    those still read (issue 18: memory per live stream): `Connection`, which
    twisted.web reads as the answer's head goes out (here: close after it), and the
    caller's key, which redacts an upstream's words to the end; of its answer's
    headers, once they are out, only its request id."""
    stream = sseReply([completionChunk("a"), completionChunk("b")], delay=5.0)
    h.upstream.queue(stream)
    body = orjson.dumps(message(stream=True))
    head = [
        b"POST /v1/messages HTTP/1.1",
        b"Host: proxy",
        b"Content-Type: application/json",
        b"x-api-key: alice-key",
        b"Connection: close",
        b"User-Agent: claude-cli/2.1.330 (external, cli)",
        b"X-Stainless-Timeout: 600",
        b"Anthropic-Beta: claude-code-20250219",
        b"Content-Length: %d" % len(body),
    ]
    conn = Conn(site).send(b"\r\n".join(head) + b"\r\n\r\n" + body)
    h.flush()
    assert b"event: message_start" in conn.written and b"message_stop" not in conn.written
    request = conn.channel.requests[0]
    kept = dict(request.requestHeaders.getAllRawHeaders())
    assert kept == {b"X-Api-Key": [b"alice-key"], b"Connection": [b"close"]}
    # The answer's head is out whole; of its headers the request keeps its id alone.
    head = conn.written.split(b"\r\n\r\n", 1)[0].lower()
    for name in (b"content-type: text/event-stream", b"x-accel-buffering: no", b"request-id:"):
        assert name in head
    assert [name for name, _ in request.responseHeaders.getAllRawHeaders()] == [b"Request-Id"]
    assert not conn.transport.disconnecting
    for _ in range(3):
        h.clock.advance(5)
    h.flush()
    assert conn.written.endswith(b"0\r\n\r\n") and b"message_stop" in conn.written
    assert b"connection: close" in conn.written.lower()
    assert conn.transport.disconnecting  # `Connection: close` was read when the head went out


def test_live_streams_keep_their_request_and_channel_attributes_in_shared_keys(
    h: Harness,
) -> None:
    """Many streams at once: each request and channel keeps its attributes beside
    its class's shared keys, not in a dict of its own (some 2 KB more per stream;
    `compat.shareInstanceKeys`), and whatever twisted.web sets on a channel is
    among the names shared."""
    site = ProxySite.serving(h.app, h.clock, maxConnections=100)
    stream = sseReply([completionChunk("a"), completionChunk("b")], delay=5.0)
    answers: list[Deferred[None]] = []

    def answerLater(request: Any, fake: Any) -> Any:
        answers.append(Deferred())
        return answers[-1].addCallback(lambda _: stream(request, fake))

    conns = []
    for i in range(40):  # all made before any answer begins, as streams come
        h.upstream.queue(answerLater)
        body = orjson.dumps(message(stream=True))
        conns.append(Conn(site, f"10.0.1.{i}").head(len(body)).send(body))
    h.flush()
    for answer in answers:
        answer.callback(None)
    h.flush()
    for conn in conns:
        assert b"event: message_start" in conn.written and b"message_stop" not in conn.written
        request = conn.channel.requests[0]
        for obj, name in ((request, "channel"), (conn.channel, "requests")):
            assert not any(type(r) is dict and name in r for r in gc.get_referents(obj))
    for _ in range(3):
        h.clock.advance(5)
    h.flush()
    for conn in conns:
        assert b"message_stop" in conn.written
        conn.close()
        assert set(vars(conn.channel)) <= set(CHANNEL_ATTRIBUTES)
