"""`compat.ClientProtocol` sends a request written whole (`compat.WrittenWhole`, the
upstream client's every request) itself, its answer's Deferred the response
parser's own: what is written, answered, cancelled, lost or refused is what
Twisted's own `HTTP11ClientProtocol.request` makes of the same request."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.web._newclient import (
    RequestGenerationFailed,
    RequestNotSent,
    ResponseFailed,
    ResponseNeverReceived,
)
from twisted.web.http_headers import Headers

from ccproxy import compat
from ccproxy.upstream.client import BytesProducer
from tests.support.harness import resultOf
from tests.test_compat import _HEAD, _Recording, _Socket
from tests.test_pooled_client import Collect


class _ByTwisted(compat.WrittenWhole):
    """The same request, sent by Twisted's own `request` (the fast path takes a
    `WrittenWhole` itself only)."""


def _request(kind: type, headers: Headers | None = None, body: bytes = b'{"a":1}') -> Any:
    headers = headers if headers is not None else Headers({b"host": [b"up"]})
    headers.addRawHeader(b"authorization", b"Bearer k")
    return kind._construct(
        b"POST", b"/v1/chat", headers, BytesProducer(body), persistent=True, parsedURI=None
    )


def _connected(quiescent: list[Any] | None = None) -> tuple[compat.ClientProtocol, _Recording]:
    callback = quiescent.append if quiescent is not None else (lambda p: None)
    protocol = compat.QuietClientFactory(callback, None).buildProtocol(None)
    transport = _Recording()
    protocol.makeConnection(transport)
    return protocol, transport


def _sent(kind: type, **kw: Any) -> tuple[compat.ClientProtocol, _Recording, Deferred[Any]]:
    protocol, transport = _connected(kw.pop("quiescent", None))
    return protocol, transport, protocol.request(_request(kind, **kw))


BOTH = pytest.mark.parametrize("kind", [compat.WrittenWhole, _ByTwisted])


def _failure(d: Deferred[Any]) -> Any:
    return resultOf(d.addErrback(lambda f: f.value))


def test_the_fast_path_is_taken_and_writes_what_twisteds_writes() -> None:
    fast, fastTransport, _ = _sent(compat.WrittenWhole)
    slow, slowTransport, _ = _sent(_ByTwisted)
    assert fast._finishedRequest is fast._parser._responseDeferred, "the parser's own"
    assert slow._finishedRequest is not slow._parser._responseDeferred
    assert fastTransport.value() == slowTransport.value()
    assert fastTransport.value().startswith(b"POST /v1/chat HTTP/1.1\r\n")
    assert fastTransport.value().endswith(b'\r\n\r\n{"a":1}')
    assert fast.state == slow.state == "WAITING"
    assert isinstance(fast._transportProxy._producer, compat._PauseOnNextRead)


@BOTH
def test_an_answer_is_read_and_the_connection_goes_back_to_the_pool(kind: type) -> None:
    quiescent: list[Any] = []
    protocol, transport, requested = _sent(kind, quiescent=quiescent)
    body = Collect()
    requested.addCallback(lambda response: response.deliverBody(body))
    protocol.dataReceived(_HEAD + b"01234")
    protocol.dataReceived(b"56789")
    assert b"".join(body.parts) == b"0123456789" and body.done.called
    assert quiescent == [protocol] and protocol.state == "QUIESCENT"
    assert transport.calls == ["resume"], "resumed for the pool, never paused"
    assert not transport.disconnecting
    assert protocol._finishedRequest is None and protocol._parser is None
    again = protocol.request(_request(kind))
    protocol.dataReceived(_HEAD + b"abcdefghij")
    assert resultOf(again).code == 200


@BOTH
def test_more_of_a_body_before_its_reader_pauses_the_connection(kind: type) -> None:
    protocol, transport, requested = _sent(kind)
    for part in (_HEAD + b"012", b"345"):
        protocol.dataReceived(part)
    paused, body = list(transport.calls), Collect()
    resultOf(requested).deliverBody(body)
    protocol.dataReceived(b"6789")
    assert paused == ["pause"] and b"".join(body.parts) == b"0123456789"
    assert transport.calls == ["pause", "resume", "resume"], "the reader's, then the pool's"


def _outcome(d: Deferred[Any], transport: _Recording, protocol: Any) -> tuple[Any, ...]:
    error = _failure(d)
    reasons = tuple(type(r.value) for r in getattr(error, "reasons", ()))
    return type(error), reasons, transport.disconnected, protocol.state


def _both(act: Any, **kw: Any) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    seen = []
    for kind in (compat.WrittenWhole, _ByTwisted):
        protocol, transport, requested = _sent(kind, **kw)
        act(protocol, transport, requested)
        seen.append(_outcome(requested, transport, protocol))
    return seen[0], seen[1]


def test_cancelled_before_the_answer_as_twisted_cancels() -> None:
    fast, slow = _both(lambda p, t, d: d.cancel())
    assert fast == slow and fast[:3] == (ResponseNeverReceived, (CancelledError,), True)


def test_cancelled_in_the_middle_of_the_head_as_twisted_cancels() -> None:
    def act(protocol: Any, transport: Any, d: Deferred[Any]) -> None:
        protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-")
        d.cancel()

    fast, slow = _both(act)
    assert fast == slow and fast[:3] == (ResponseFailed, (CancelledError,), True)


@pytest.mark.parametrize("reason", [ConnectionDone(), ConnectionLost()])
def test_a_connection_lost_before_the_answer_as_twisted_fails(reason: Exception) -> None:
    fast, slow = _both(lambda p, t, d: p.connectionLost(Failure(reason)))
    assert fast == slow and fast[:2] == (ResponseNeverReceived, (type(reason),))


def test_a_cancel_after_the_answer_changes_nothing() -> None:
    protocol, transport, requested = _sent(compat.WrittenWhole)
    protocol.dataReceived(_HEAD + b"0123456789")
    response = resultOf(requested)
    requested.cancel()
    assert response.code == 200 and protocol.state == "QUIESCENT"
    assert not transport.disconnected and not transport.disconnecting


def test_a_write_that_fails_fails_the_request_as_twisted_does() -> None:
    protocol, transport = _connected()

    def broken(data: Any) -> None:
        raise RuntimeError("the transport broke")

    transport.writeSequence = broken  # type: ignore[method-assign]
    failed = protocol.request(_request(compat.WrittenWhole))
    error = _failure(failed)
    assert isinstance(error, RequestGenerationFailed)
    assert isinstance(error.reasons[0].value, RuntimeError)
    assert transport.disconnected and protocol.state == "GENERATION_FAILED"


@BOTH
def test_a_request_without_one_host_is_refused_as_twisted_refuses_it(kind: type) -> None:
    headers = Headers({b"host": [b"a", b"b"]})
    _protocol, transport, requested = _sent(kind, headers=headers)
    error = _failure(requested)
    assert isinstance(error, RequestGenerationFailed)
    assert type(error.reasons[0].value).__name__ == "BadHeaders"
    assert transport.value() == b"" and transport.disconnected


def test_a_busy_connection_refuses_the_request() -> None:
    protocol, _transport, requested = _sent(compat.WrittenWhole)
    refused = protocol.request(_request(compat.WrittenWhole))
    assert isinstance(_failure(refused), RequestNotSent)
    protocol.dataReceived(_HEAD + b"0123456789")
    assert resultOf(requested).code == 200


def test_a_request_written_whole_leaves_in_one_send_within_the_call() -> None:
    """(Over real sockets: tests/test_pooled_client.py, every request of which takes
    this path, and test_integration.py.)"""
    socket = _Socket(MemoryReactorClock())
    protocol = compat.QuietClientFactory(lambda p: None, None).buildProtocol(None)
    protocol.makeConnection(socket)
    protocol.request(_request(compat.WrittenWhole, body=b"{}" * 5000))
    assert len(socket.sent) == 1 and socket.sent[0].endswith(b"{}" * 5000)
    assert socket.sent[0].startswith(b"POST /v1/chat HTTP/1.1\r\n")


def test_the_parser_is_made_as_twisted_makes_it_with_the_requests_deferred() -> None:
    from twisted.web._newclient import HTTPClientParser

    request, finisher, answered = _request(compat.WrittenWhole), (lambda rest: None), Deferred()
    made = compat._parserFor(request, finisher, answered)
    twisteds = HTTPClientParser(request, finisher)
    assert type(made) is HTTPClientParser
    assert set(vars(made)) == set(vars(twisteds)), "HTTPClientParser.__init__ changed"
    for name, value in vars(twisteds).items():
        if name != "_responseDeferred":
            assert getattr(made, name) is value or getattr(made, name) == value, name
    assert made._responseDeferred is answered


def test_every_answer_is_read_as_twisted_reads_it_for_a_request_written_whole() -> None:
    """The answers `tests/test_compat.py` reads through Twisted's own connection
    (broken ones, `Connection: close` in either case, no length...), each in one
    read, to a request sent by `_sendWhole` and to the same request sent by
    Twisted's `HTTP11ClientProtocol`: the same answer, body, end and state."""
    from twisted.web._newclient import HTTP11ClientProtocol

    from tests.test_compat import ANSWERS

    class Body(Collect):
        end: Any = None

        def connectionLost(self, reason: Any = None) -> None:
            self.end = reason.type

    answers = {**ANSWERS, "lower-close": ANSWERS["close"].replace(b"Connection", b"connection")}

    def read(kind: type, raw: bytes, persistent: bool) -> tuple[Any, ...]:
        pooled: list[Any] = []
        protocol, transport = kind(pooled.append), _Recording()
        protocol.makeConnection(transport)
        request = _request(compat.WrittenWhole)
        request.persistent = persistent
        seen: list[Any] = []
        body = Body()
        protocol.request(request).addCallbacks(
            lambda r: (
                seen.append((r.code, list(r.headers.getAllRawHeaders()))) or r.deliverBody(body)
            ),
            lambda f: seen.append(f.type),
        )
        protocol.dataReceived(raw)
        state = (protocol._state, protocol._parser is None, len(pooled))
        return seen, b"".join(body.parts), body.end, state, transport.disconnecting

    for name, raw in answers.items():
        for persistent in (True, False):
            fast = read(compat.ClientProtocol, raw, persistent)
            assert fast == read(HTTP11ClientProtocol, raw, persistent), (name, persistent)
