"""UpstreamClient details that matter for memory: a sent body is not kept."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.web.http_headers import Headers

from ccproxy.config import Config
from ccproxy.upstream.client import BytesProducer, UpstreamClient
from tests.support.harness import resultOf


class _Proxy:
    """What Twisted hands back as `response.request`: a proxy with `original`."""

    def __init__(self, original: Any) -> None:
        self.original = original


def test_the_request_body_and_headers_are_dropped_once_the_answer_has_begun() -> None:
    producer = BytesProducer(b"x" * 50_000)
    sentHeaders = Headers({b"authorization": [b"Bearer sk-up"], b"host": [b"u.test"]})

    class Sent:
        bodyProducer = producer
        headers = sentHeaders

    class Response:
        code = 200
        request = _Proxy(Sent())

    class Client:
        def request(self, method: str, url: str, **kwargs: Any) -> Any:
            transport = StringTransport()
            producer.startProducing(transport)
            assert len(transport.value()) == 50_000
            return succeed(Response())

    upstream = Config.fromYAML(
        'upstreams: {u: {url: "http://u.test/v1"}}\nmodels: {"*": u}\n', {}
    ).upstreams["u"]
    client = UpstreamClient(Client(), Clock())  # type: ignore[arg-type]
    resultOf(Deferred.fromCoroutine(client.post(upstream, b"{}", None)))
    again = StringTransport()
    producer.startProducing(again)
    assert again.value() == b""  # released: a long stream does not hold its 50 KB
    assert list(sentHeaders.getAllRawHeaders()) == []  # written: not kept either
