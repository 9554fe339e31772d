"""The upstream client's cheaper steps (issue 18, round 4): each does what the
Twisted code it stands in for does, byte for byte where bytes are written."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.defer import succeed
from twisted.internet.protocol import Protocol
from twisted.internet.testing import StringTransport
from twisted.web._newclient import BadHeaders, HTTP11ClientProtocol
from twisted.web._newclient import Request as TwistedRequest
from twisted.web.http_headers import Headers

from bench.serverside import JSON_ANSWER, Connected
from ccproxy import compat
from ccproxy.compat import readHead
from ccproxy.upstream.client import BytesProducer


def _headers(*pairs: tuple[bytes, bytes]) -> Headers:
    headers = Headers()
    for name, value in pairs:
        headers.addRawHeader(name, value)
    return headers


def _written(cls: Any, headers: Headers, body: Any, persistent: bool) -> tuple[bytes, Any]:
    transport = StringTransport()
    request = cls._construct(b"POST", b"/v1/chat?x=1", headers, body, persistent=persistent)
    try:
        done = request.writeTo(transport)
    except BadHeaders as e:
        return b"", type(e)
    fired: list[Any] = []
    done.addBoth(fired.append)
    return transport.value(), fired


@pytest.mark.parametrize("persistent", [True, False])
def test_a_request_written_whole_is_what_twisted_writes(persistent: bool) -> None:
    headers = _headers(
        (b"Content-Type", b"application/json"),
        (b"authorization", b"Bearer k"),
        (b"X-Two", b"a"),
        (b"x-two", b"b"),
        (b"Host", b"up.test:8080"),
        (b"Accept-Encoding", b"gzip"),
    )
    body = b'{"model": "m"}' * 100
    ours = _written(compat.WrittenWhole, headers, BytesProducer(body), persistent)
    theirs = _written(TwistedRequest, headers, BytesProducer(body), persistent)
    assert ours == theirs
    assert ours[0].endswith(b"\r\n\r\n" + body) and ours[1] == [None]


@pytest.mark.parametrize("hosts", [[], [b"a", b"b"]])
def test_a_request_without_exactly_one_host_is_refused_as_twisted_refuses_it(
    hosts: list[bytes],
) -> None:
    headers = _headers(*[(b"Host", host) for host in hosts])
    ours = _written(compat.WrittenWhole, headers, BytesProducer(b"{}"), True)
    assert ours == _written(TwistedRequest, headers, BytesProducer(b"{}"), True)
    assert ours == (b"", BadHeaders)


def test_a_body_not_held_in_memory_is_written_by_twisted() -> None:
    class Producer:
        """A body producer without `content`: Twisted's own writeTo writes it."""

        length = 2

        def startProducing(self, consumer: Any) -> Any:
            consumer.write(b"{}")
            return succeed(None)

        def stopProducing(self) -> None:
            pass

    headers = _headers((b"Host", b"up"))
    ours = _written(compat.WrittenWhole, headers, Producer(), True)
    assert ours == _written(TwistedRequest, headers, Producer(), True)
    assert ours[0].endswith(b"Content-Length: 2\r\nHost: up\r\n\r\n{}")


# -- a response's head read whole (compat.readHead) ----------------------------------

ANSWERS = [
    b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Type: application/json\r\n"
    b"Content-Length: 2\r\nConnection: keep-alive\r\nX-Two: a\r\nx-two:  b \r\n\r\n{}",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\ngarbage",
    b"HTTP/1.1 204 No Content\r\nServer: x\r\n\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}",
    b"HTTP/1.1 200\r\nContent-Length: 2\r\n\r\n{}",
    b"HTTP/1.0 500 Oops\r\nContent-Length: 2\r\n\r\n{}",
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n{}",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
    b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n{}",
    b"HTTP/1.1 2x0 OK\r\nContent-Length: 2\r\n\r\n{}",
    b"HTTX/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}",
    b"garbage\r\n\r\n",
    b"\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nNo colon here\r\nContent-Length: 2\r\n\r\n{}",
    b"HTTP/1.1 200 OK\r\nBad Name: 1\r\nContent-Length: 2\r\n\r\n{}",
    b"HTTP/1.1 200 OK\r\nX-Folded: a\r\n b\r\nContent-Length: 2\r\n\r\n{}",
    b"HTTP/1.1 200 OK\nX-Bare: a\nContent-Length: 2\n\n{}",
    b"HTTP/1.1 200 OK\r\nX-Cr: a\rb\r\nContent-Length: 2\r\n\r\n{}",
    b"HTTP/1.1 200 OK\r\nX-Empty:\r\nContent-Length: 2\r\n\r\n{}",
    b"HTTP/1.1 200 OK\r\nX-Long: " + b"a" * 20000 + b"\r\nContent-Length: 2\r\n\r\n{}",
    b"HTTP/1.1 200 OK\r\nContent-Length: 6000\r\n\r\n" + b"x" * 6000,
]


def _outcome(protocolClass: Any, answer: bytes, method: bytes, pieces: int) -> Any:
    """What a connection made of the answer read in `pieces`: the response's status
    and headers, or its failure; its body and how it ended; the connection's state."""
    protocol = protocolClass(lambda p: None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    request = TwistedRequest(method, b"/", _headers((b"Host", b"up")), None, persistent=True)
    result: list[Any] = []
    protocol.request(request).addBoth(result.append)
    body: list[Any] = []

    class Reader(Protocol):
        def dataReceived(self, data: bytes) -> None:
            body.append(data)

        def connectionLost(self, reason: Any) -> None:
            body.append(type(reason.value).__name__)

    step = max(1, len(answer) // pieces)
    for at in range(0, len(answer), step):
        protocol.dataReceived(answer[at : at + step])
        if result and not isinstance(result[0], Exception) and hasattr(result[0], "deliverBody"):
            response, result[:] = (
                result[0],
                [
                    (
                        result[0].code,
                        result[0].phrase,
                        result[0].version,
                        sorted(result[0].headers.getAllRawHeaders()),
                        result[0].length,
                    )
                ],
            )
            response.deliverBody(Reader())
    shown = [r if isinstance(r, tuple) else type(r.value).__name__ for r in result]
    return (
        shown,
        b"".join(b for b in body if isinstance(b, bytes)),
        [b for b in body if isinstance(b, str)],
        protocol.state,
        transport.disconnecting,
    )


@pytest.mark.parametrize("answer", ANSWERS)
@pytest.mark.parametrize("pieces", [1, 3])
def test_a_head_read_whole_ends_as_twisteds_parser_ends_it(
    answer: bytes, pieces: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every answer, read in one piece (its head read whole when plain) or in
    three, leaves the same response, body, errors and connection state as Twisted's
    own line-by-line parser."""
    read: list[bytes] = []
    monkeypatch.setattr(compat, "readHead", lambda p, head: read.append(head) or readHead(p, head))
    for method in (b"POST", b"HEAD"):
        ours = _outcome(compat.ClientProtocol, answer, method, pieces)
        assert ours == _outcome(HTTP11ClientProtocol, answer, method, pieces), (answer, method)
    plain = b"\r\n " not in answer and b"\n\n" not in answer and b"\rb" not in answer
    if pieces == 1 and plain and len(answer) < 16384:
        assert read, "a plain head in one read is read whole"


def test_a_nine_line_head_is_read_whole() -> None:
    read: list[Any] = []
    protocol = compat.ClientProtocol(lambda p: None)
    protocol.makeConnection(StringTransport())
    request = TwistedRequest(b"POST", b"/", _headers((b"Host", b"up")), None, persistent=True)
    protocol.request(request).addBoth(read.append)
    protocol._parser.lineReceived = None  # no line goes through the line reader
    protocol.dataReceived(JSON_ANSWER[: JSON_ANSWER.find(b"\r\n\r\n") + 4])
    assert read[0].code == 200 and read[0].length == len(JSON_ANSWER) - len(
        JSON_ANSWER[: JSON_ANSWER.find(b"\r\n\r\n") + 4]
    )


# -- a request on a cached connection (compat.ConnectionPool.request) ---------------


def _pooled() -> tuple[Any, Any, Any]:
    from twisted.internet.task import Clock

    from ccproxy.upstream.pool import UpstreamPool

    clock = Clock()
    pool = UpstreamPool(clock, 4)
    upstream = Connected()
    uri = compat.requestURI(b"http://up.test/v1")

    def send() -> Any:
        headers = _headers((b"Host", b"up.test"))
        return compat.poolRequest(
            pool, ("k",), upstream, b"POST", uri, b"/v1", headers, BytesProducer(b"{}")
        )

    return send, upstream, clock


_OK = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"


def test_a_cached_connection_found_dead_is_replayed_on_a_new_one() -> None:
    from twisted.internet.error import ConnectionDone
    from twisted.python.failure import Failure

    send, upstream, _ = _pooled()
    first: list[Any] = []
    send().addBoth(first.append)
    upstream.protocols[0].dataReceived(_OK)
    assert first[0].code == 200
    second: list[Any] = []
    send().addBoth(second.append)
    assert len(upstream.protocols) == 1, "the cached connection is used"
    upstream.protocols[0].connectionLost(Failure(ConnectionDone()))  # closed unannounced
    assert len(upstream.protocols) == 2 and not second, "replayed on a new connection"
    assert upstream.protocols[1].transport.value().endswith(b"\r\n\r\n{}")
    upstream.protocols[1].dataReceived(_OK)
    assert second[0].code == 200


def test_a_cancelled_request_on_a_cached_connection_is_not_replayed() -> None:
    from twisted.internet.defer import CancelledError

    send, upstream, _ = _pooled()
    send()
    upstream.protocols[0].dataReceived(_OK)
    second: list[Any] = []
    requested = send()
    requested.addBoth(second.append)
    requested.cancel()
    assert len(upstream.protocols) == 1, "not replayed"
    assert upstream.protocols[0].transport.disconnecting
    reasons = getattr(second[0].value, "reasons", [second[0]])
    assert any(r.check(CancelledError) for r in reasons)


# -- a response's end on a kept-alive connection (ClientProtocol._finishResponse_WAITING)


@pytest.mark.parametrize("fails", [False, True])
def test_a_kept_alive_connection_ends_its_response_as_twisted_does(
    fails: bool, noLoggedFailures: list[dict[str, Any]]
) -> None:
    """The quiescent callback called with the connection (one that raises: logged,
    the connection closed), the response delivered, the state as Twisted leaves it."""
    from twisted.logger import globalLogPublisher

    def outcome(protocolClass: Any) -> Any:
        called: list[Any] = []

        def quiescent(protocol: Any) -> None:
            called.append(protocol.state)
            if fails:
                raise RuntimeError("pool broke")

        protocol = protocolClass(quiescent)
        transport = StringTransport()
        protocol.makeConnection(transport)
        request = TwistedRequest(b"POST", b"/", _headers((b"Host", b"up")), None, persistent=True)
        result: list[Any] = []
        protocol.request(request).addBoth(result.append)
        logged: list[Any] = []
        globalLogPublisher.addObserver(logged.append)
        try:
            protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
        finally:
            globalLogPublisher.removeObserver(logged.append)
        failures = [
            (e.get("log_namespace"), e.get("log_format"), type(e["log_failure"].value))
            for e in logged
            if "log_failure" in e
        ]
        return called, result[0].code, protocol.state, transport.disconnecting, failures

    ours = outcome(compat.ClientProtocol)
    assert ours == outcome(HTTP11ClientProtocol)
    assert ours[0] == ["QUIESCENT"] and ours[3] is fails
    assert bool(ours[4]) is fails
    noLoggedFailures.clear()  # the two logged on purpose
