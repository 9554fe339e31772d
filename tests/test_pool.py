"""A kept-alive upstream connection that was closed unannounced: replayed at once.

Over real loopback sockets, with an upstream that (like llama-server) drops a
kept-alive connection when the next request arrives on it, without answering.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.internet.protocol import Factory, Protocol

from ccproxy.config import Config
from tests.support.loopback import startProxy

ANSWER = orjson.dumps(
    {
        "choices": [{"message": {"content": "ok"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1},
    }
)


class DropsSecondRequest(Protocol):
    """Answers the first request on a connection; closes it when a second arrives."""

    def connectionMade(self) -> None:
        self.factory.connections += 1
        self.buffer = b""
        self.served = 0

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:
            head, _, rest = self.buffer.partition(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            if len(rest) < length:
                return
            self.buffer = rest[length:]
            self.factory.requests += 1
            if self.served:
                self.transport.abortConnection()
                return
            self.served += 1
            self.transport.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n" % len(ANSWER) + ANSWER
            )


@pytest_twisted.ensureDeferred
async def test_stale_kept_alive_connection_is_replayed() -> None:
    factory: Any = Factory.forProtocol(DropsSecondRequest)
    factory.connections = factory.requests = 0
    upstreamPort = reactor.listenTCP(0, factory, interface="127.0.0.1")
    config = Config.fromYAML(
        f"""
listen: "tcp:0:interface=127.0.0.1"
upstreams:
  flaky:
    url: "http://127.0.0.1:{upstreamPort.getHost().port}/v1"
    retries: 0
models:
  "*": flaky
""",
        {},
    )
    service, base = await startProxy(config)
    try:
        body = orjson.dumps(
            {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
        )
        codes = []
        for _ in range(2):
            response = await treq.post(f"{base}/v1/messages", data=body)
            await response.content()
            codes.append(response.code)
        assert codes == [200, 200]
        # The second request met the dead connection, then went out on a new one.
        assert factory.requests == 3
        assert factory.connections == 2
    finally:
        await service.stopService()
        await upstreamPort.stopListening()


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        (b"http://127.0.0.1:8000/v1/chat/completions", "TCP4ClientEndpoint"),
        (b"http://[::1]:8000/v1/chat/completions", "TCP6ClientEndpoint"),
        (b"http://gateway.internal:8080/v1/chat/completions", "HostnameEndpoint"),
        (b"https://llm.example.com/v1/chat/completions", "_WrapperEndpoint"),
    ],
)
def test_ip_addresses_skip_the_resolver(url: bytes, kind: str) -> None:
    from twisted.internet.testing import MemoryReactorClock
    from twisted.web.client import URI

    from ccproxy.upstream.pool import UpstreamEndpoints

    endpoint = UpstreamEndpoints(MemoryReactorClock(), 5).endpointForURI(URI.fromBytes(url))
    assert type(endpoint).__name__ == kind
