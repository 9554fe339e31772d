"""`PooledClient`'s answers are gzip-decoded in the pool's own callbacks
(`compat.poolRequest(..., answered)`): on a new connection, on a cached one, and
when a dead cached connection's request is replayed on a new one."""

from __future__ import annotations

import gzip
from typing import Any

from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from bench.serverside import Connected
from ccproxy.upstream.client import PooledClient
from ccproxy.upstream.pool import UpstreamPool
from tests.test_pooled_client import Collect

_BODY = b'{"id":"x"}' * 50
_GZIPPED = gzip.compress(_BODY)
GZIP_ANSWER = (
    b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n" % len(_GZIPPED)
) + _GZIPPED
PLAIN_ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(_BODY) + _BODY


def _client() -> tuple[PooledClient, Connected]:
    upstream = Connected()
    return PooledClient(UpstreamPool(Clock(), 4), upstream), upstream


def _post(client: PooledClient) -> list[Any]:
    got: list[Any] = []
    client.request("POST", "http://up.test/v1", data=b"{}", headers={}).addBoth(got.append)
    return got


def _body(response: Any) -> tuple[bytes, Any]:
    body = Collect()
    response.deliverBody(body)
    return b"".join(body.parts), response.headers.getRawHeaders(b"content-encoding")


def test_every_answer_is_decoded_new_cached_or_replayed() -> None:
    client, upstream = _client()
    first = _post(client)  # a new connection
    upstream.protocols[0].dataReceived(GZIP_ANSWER)
    assert _body(first[0]) == (_BODY, None)
    second = _post(client)  # the cached one
    upstream.protocols[0].dataReceived(GZIP_ANSWER)
    assert _body(second[0]) == (_BODY, None)
    third = _post(client)
    upstream.protocols[0].connectionLost(Failure(ConnectionDone()))  # found dead: replayed
    assert len(upstream.protocols) == 2 and not third
    upstream.protocols[1].dataReceived(GZIP_ANSWER)
    assert _body(third[0]) == (_BODY, None)


def test_a_plain_answer_is_handed_over_as_it_came() -> None:
    client, upstream = _client()
    first = _post(client)
    upstream.protocols[0].dataReceived(PLAIN_ANSWER)
    second = _post(client)
    upstream.protocols[0].dataReceived(PLAIN_ANSWER)
    for got in (first, second):
        assert type(got[0]).__name__ == "Response" and _body(got[0]) == (_BODY, None)
