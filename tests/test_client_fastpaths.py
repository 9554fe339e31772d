"""The upstream client's cheaper steps (issue 18, round 4): each does what the
Twisted code it stands in for does, byte for byte where bytes are written."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.defer import succeed
from twisted.internet.testing import StringTransport
from twisted.web._newclient import BadHeaders
from twisted.web._newclient import Request as TwistedRequest
from twisted.web.http_headers import Headers

from ccproxy import compat
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
