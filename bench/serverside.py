"""In-process micro-benchmarks of ccproxy's HTTP server side (issue 18).

    python -m bench.serverside [request|head|bare|pooled|stream|nginx|peer|newid|accesslog ...]

`request`: one non-streaming `POST /v1/messages` (a 40 KB Claude Code body in one
read) through a real `ProxySite`/`ProxyChannel` on a `StringTransport`, the
upstream a stub that answers at once, the access log through the global log
publisher to the daemon's text observer on /dev/null: CPU per request, from the
head's bytes to the answer's. `head`: the same request's head alone. `bare`: the same
request, its handler answering at once: the server side alone. `pooled`: the same request
through the daemon's own upstream client (`PooledClient` on an `UpstreamPool`,
its kept-alive connection a `compat.ClientProtocol` on a `StringTransport`), the
upstream answering as the reference harness's nginx does (head and JSON body,
Content-Length, in one read), each row going to an `SQLLedger` whose database
takes batches without writing them: CPU per request, and its part from the
upstream's answer read to the request's end. `stream`:
the same request with `stream: true`, its upstream a real `HTTP11ClientProtocol`
fed an SSE answer (chunked, one event per chunk, in one read): CPU of the upstream
head (status and header lines to `message_start` written), of the body, and of
the answer's end (the last chunk to the request finished and logged). `nginx`:
the same stream, its upstream answering as the reference harness's mock does
(head and 57 KB body, Content-Length, in one read): CPU from that read to the
stream's end. The others time one step. Each figure is the best of several runs
(the machine is shared).
"""

from __future__ import annotations

import gc
import os
import socket
import sys
import time
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import succeed
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import globalLogBeginner
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http_headers import Headers

from bench import corpus, ledger, payloads
from ccproxy.config import Config
from ccproxy.daemon.logs import quietLevels, textObserver
from ccproxy.observe.accesslog import Attempt
from ccproxy.upstream.client import UpstreamClient
from ccproxy.upstream.dispatch import Dispatcher, UpstreamState
from ccproxy.web.app import ProxyApp
from ccproxy.web.call import newId
from ccproxy.web.site import ProxySite

REPLY = payloads.completion_bytes(20)
CONFIG = """
upstreams:
  mock: {url: "http://127.0.0.1:9/v1", api_key: sk-up, timeout: 120}
models:
  "*": mock/gpt-mock-1
"""


class _Answer:
    """An upstream's 200 JSON answer, delivered at once."""

    code = 200
    phrase = b"OK"
    version = (b"HTTP", 1, 1)
    length = len(REPLY)

    def __init__(self) -> None:
        self.headers = Headers({b"content-type": [b"application/json"]})

    def deliverBody(self, protocol: Any) -> None:
        protocol.makeConnection(StringTransport())
        protocol.dataReceived(REPLY)
        protocol.connectionLost(Failure(ResponseDone()))


class _Upstream:
    def request(self, method: str, url: str, **kwargs: Any) -> Any:
        return succeed(_Answer())


def _best(run: Any, number: int, repeat: int = 7) -> float:
    """Microseconds of CPU per call of `run`, best of `repeat` runs of `number`."""
    best = float("inf")
    for _ in range(repeat):
        start = time.process_time()
        for _ in range(number):
            run()
        best = min(best, (time.process_time() - start) / number * 1e6)
    return best


_logging: list[Any] = []


def _site() -> tuple[Any, ProxyApp, MemoryReactorClock]:
    if not _logging:
        _logging.append(open(os.devnull, "w"))
        globalLogBeginner.beginLoggingTo(
            [quietLevels(textObserver(_logging[0]))], discardBuffer=True, redirectStandardIO=False
        )
    reactor = MemoryReactorClock()
    client = UpstreamClient(_Upstream(), reactor)
    app = ProxyApp(
        config=Config.fromYAML(CONFIG, {}),
        dispatcher=Dispatcher(client, reactor, UpstreamState(reactor)),
        clock=reactor,
    )
    return ProxySite.serving(app, reactor), app, reactor


def _connected(site: Any) -> tuple[Any, StringTransport]:
    """A client's connection into `site`, on a `StringTransport`."""
    peer = IPv4Address("TCP", "127.0.0.1", 40000)
    channel = site.buildProtocol(peer)
    transport = StringTransport(IPv4Address("TCP", "127.0.0.1", 8082), peer)
    channel.makeConnection(transport)
    return channel, transport


def _request(stream: bool = False) -> bytes:
    body = corpus.bodies(1, 40, 40, stream=stream)[0]
    headers = {**corpus.HEADERS, "X-Api-Key": "k", "Authorization": "Bearer k"}
    head = "POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1:1\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return (head + f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def request(parts: bool = False) -> None:
    site, _, _ = _site()
    channel, transport = _connected(site)
    data = _request()
    end = data.find(b"\r\n\r\n") + 4
    head, body = data[:end], data[end:]

    def whole() -> None:
        channel.dataReceived(data)
        transport.clear()

    whole()
    channel.dataReceived(data)
    assert transport.value().startswith(b"HTTP/1.1 200 "), transport.value()[:300]
    transport.clear()
    gc.collect()
    gc.freeze()  # as the daemon does after start
    if not parts:
        print(f"request: {_best(whole, 2000):.1f} us per request")
        return
    best = float("inf")
    for _ in range(7):
        spent = 0.0
        for _ in range(2000):
            start = time.process_time()
            channel.dataReceived(head)
            spent += time.process_time() - start
            channel.dataReceived(body)
            transport.clear()
        best = min(best, spent / 2000 * 1e6)
    print(f"head: {best:.1f} us per request head (line parsing, Request, judging)")


def bareRequest() -> Any:
    """`bare`'s request, ready: a call serves one. The server side alone: the
    request's head read, its `Request` made and judged, its body read, routed by
    `HotRoute`, answered (three headers set as `jsonReply` sets them, a 1 KB JSON
    body) and finished, the kept-alive channel ready for the next; the handler
    answers at once, without translating or calling any upstream."""
    from ccproxy.web.call import jsonReply

    site, _, _ = _site()
    answer = {"id": "msg_1", "type": "message", "content": [{"type": "text", "text": "x" * 900}]}

    async def handler(request: Any) -> bytes:
        request.content.read()
        request.setHeader(b"request-id", b"req_0123456789abcdef")
        return jsonReply(request, answer)

    site.resource._routes[(b"POST", b"/v1/messages")] = handler
    channel, transport = _connected(site)
    data = _request()

    def once() -> None:
        channel.dataReceived(data)
        transport.clear()

    once()
    channel.dataReceived(data)
    assert transport.value().startswith(b"HTTP/1.1 200 "), transport.value()[:300]
    assert transport.value().endswith(b"x" * 900 + b'"}]}')
    transport.clear()
    return once


def bare() -> None:
    """The server side of a non-streaming request alone (`bareRequest`)."""
    once = bareRequest()
    gc.collect()
    gc.freeze()
    print(f"bare: {_best(once, 5000):.1f} us per request (server side alone)")


JSON_ANSWER = (
    b"HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: Sun, 06 Dec 2026 08:00:00 GMT\r\n"
    b"Content-Type: application/json\r\nContent-Length: %d\r\n"
    b"Last-Modified: Sun, 06 Dec 2026 07:00:00 GMT\r\nConnection: keep-alive\r\n"
    b"Cache-Control: no-cache\r\nAccept-Ranges: bytes\r\n\r\n" % len(REPLY)
) + REPLY
"""The reference harness's mock answering a non-streaming request: nginx's head and
its JSON completion file (Content-Length), in one read."""


class Connected:
    """An endpoint (and its factory) whose every connection is made at once, on a
    `StringTransport`; `protocols` keeps them."""

    def __init__(self) -> None:
        self.protocols: list[Any] = []

    def connect(self, factory: Any) -> Any:
        protocol = factory.buildProtocol(None)
        protocol.makeConnection(StringTransport())
        self.protocols.append(protocol)
        return succeed(protocol)

    def endpointForURI(self, uri: Any) -> Any:
        return self


class _Batches:
    """The ledger's runner, its database taking each batch without writing it."""

    def run(self, fn: Any, *args: Any) -> Any:
        return succeed(len(args[0]) if args else None)

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass


def pooledRequest() -> Any:
    """`pooled`'s request, ready: a call serves one and returns the CPU seconds spent
    from the upstream's answer read on (also for profiling it)."""
    from ccproxy.config.ledger import LedgerURL
    from ccproxy.ledger.sql import Database
    from ccproxy.ledger.store import SQLLedger
    from ccproxy.upstream.client import PooledClient
    from ccproxy.upstream.pool import UpstreamPool

    site, app, reactor = _site()
    rows = SQLLedger(Database(LedgerURL.sqlite(":memory:")), reactor, _Batches())
    rows.start()
    app.accessLog.ledger = rows
    endpoint = Connected()
    app.dispatcher.client.http = PooledClient(UpstreamPool(reactor, 20), endpoint)
    channel, transport = _connected(site)
    data = _request()

    def once() -> float:
        channel.dataReceived(data)
        upstream = endpoint.protocols[-1]
        start = time.process_time()
        upstream.dataReceived(JSON_ANSWER)
        spent = time.process_time() - start
        upstream.transport.clear()
        transport.clear()
        return spent

    once()
    channel.dataReceived(data)
    endpoint.protocols[-1].dataReceived(JSON_ANSWER)
    assert transport.value().startswith(b"HTTP/1.1 200 "), transport.value()[:300]
    assert len(endpoint.protocols) == 1, "the upstream connection is kept alive"
    assert rows.written + len(rows._buffer) == 2, "each request leaves its row"
    transport.clear()
    return once


def pooled() -> None:
    """A non-streaming request through the daemon's own upstream client, the upstream
    answering in one read as nginx does: CPU per request, and from that read on."""
    once = pooledRequest()
    gc.collect()
    gc.freeze()
    total, answer = float("inf"), float("inf")
    for _ in range(7):
        start = time.process_time()
        spent = sum(once() for _ in range(2000))
        total = min(total, (time.process_time() - start) / 2000 * 1e6)
        answer = min(answer, spent / 2000 * 1e6)
    print(f"pooled: {total:.1f} us per request, {answer:.1f} us of it from the upstream's answer")


STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
    b"transfer-encoding: chunked\r\ncache-control: no-cache\r\n"
    b"date: Sun, 06 Dec 2026 08:00:00 GMT\r\nserver: mock\r\n\r\n"
)
STREAM_BODY = b"".join(b"%x\r\n%b\r\n" % (len(f), f) for f in payloads.sse_frames(40))
STREAM_END = b"0\r\n\r\n"


NGINX_BODY = b"".join(payloads.sse_frames(200))
NGINX_ANSWER = (
    b"HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: Sun, 06 Dec 2026 08:00:00 GMT\r\n"
    b"Content-Type: text/event-stream\r\nContent-Length: %d\r\n"
    b"Last-Modified: Sun, 06 Dec 2026 07:00:00 GMT\r\nConnection: keep-alive\r\n"
    b'ETag: "6750a1b0-dfa0"\r\nCache-Control: no-cache\r\nAccept-Ranges: bytes\r\n\r\n'
    % len(NGINX_BODY)
) + NGINX_BODY
"""The reference harness's mock: nginx's head and its event stream file (sendfile,
Content-Length), arriving in one read."""


class _StreamUpstream:
    """An upstream on the daemon's own `HTTP11ClientProtocol` (the pool's,
    `compat.QuietClientFactory`, over a `StringTransport`) whose answer the bench
    feeds a piece at a time."""

    def __init__(self) -> None:
        self.protocol: Any = None

    def request(self, method: str, url: str, data: bytes = b"", **kwargs: Any) -> Any:
        from twisted.web._newclient import Request

        from ccproxy.compat import QuietClientFactory
        from ccproxy.upstream.client import BytesProducer

        self.protocol = QuietClientFactory(lambda protocol: None, None).buildProtocol(None)
        self.protocol.makeConnection(StringTransport())
        headers = Headers({b"host": [b"127.0.0.1:9"]})
        for name, value in kwargs.get("headers", {}).items():
            headers.addRawHeader(name, value)
        sent = Request._construct(
            method.encode(), b"/v1/chat/completions", headers, BytesProducer(data)
        )
        return self.protocol.request(sent)


def stream() -> None:
    site, app, reactor = _site()
    upstream = _StreamUpstream()
    app.dispatcher.client.http = upstream
    peer = IPv4Address("TCP", "127.0.0.1", 40000)
    data = _request(stream=True)
    spent = {"head": 0.0, "body": 0.0, "end": 0.0}

    def once(count: bool) -> None:
        channel = site.buildProtocol(peer)
        transport = StringTransport(IPv4Address("TCP", "127.0.0.1", 8082), peer)
        channel.makeConnection(transport)
        channel.dataReceived(data)
        protocol = upstream.protocol
        for part, piece in (("head", STREAM_HEAD), ("body", STREAM_BODY), ("end", STREAM_END)):
            start = time.process_time()
            protocol.dataReceived(piece)
            if count:
                spent[part] += time.process_time() - start
        reactor.advance(0)
        assert transport.value().endswith(b"0\r\n\r\n"), transport.value()[-300:]
        channel.connectionLost(Failure(ResponseDone()))

    once(False)
    gc.collect()
    gc.freeze()
    best = {k: float("inf") for k in spent}
    for _ in range(7):
        for k in spent:
            spent[k] = 0.0
        for _ in range(500):
            once(True)
        for k in spent:
            best[k] = min(best[k], spent[k] / 500 * 1e6)
    print(
        f"stream: upstream head {best['head']:.1f} us, body {best['body']:.1f} us,"
        f" end {best['end']:.1f} us"
    )


def nginx() -> None:
    """A stream whose upstream answers as the reference harness's nginx mock does:
    its head and whole 57 KB event stream (Content-Length) in one read."""
    site, app, reactor = _site()
    upstream = _StreamUpstream()
    app.dispatcher.client.http = upstream
    peer = IPv4Address("TCP", "127.0.0.1", 40000)
    data = _request(stream=True)

    def once(count: bool) -> float:
        channel = site.buildProtocol(peer)
        transport = StringTransport(IPv4Address("TCP", "127.0.0.1", 8082), peer)
        channel.makeConnection(transport)
        channel.dataReceived(data)
        start = time.process_time()
        upstream.protocol.dataReceived(NGINX_ANSWER)
        reactor.advance(0)
        spent = time.process_time() - start
        assert transport.value().endswith(b"0\r\n\r\n"), transport.value()[-300:]
        channel.connectionLost(Failure(ResponseDone()))
        return spent

    once(False)
    gc.collect()
    gc.freeze()
    best = min(sum(once(True) for _ in range(300)) / 300 * 1e6 for _ in range(7))
    print(f"nginx: the upstream's answer in one read, to the stream's end {best:.1f} us")


def peer() -> None:
    """What `Request.__init__` asked a TCP transport for each request: its peer
    (an address object) and its host (`getsockname`, a syscall)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    connecting = socket.create_connection(listener.getsockname())
    server, client = listener.accept()

    def asked() -> Any:  # as twisted.internet.tcp.Server.getPeer / getHost
        return IPv4Address("TCP", *client), IPv4Address("TCP", *server.getsockname())

    print(f"peer: getPeer+getHost of a TCP connection {_best(asked, 100000):.2f} us")
    for each in (connecting, server, listener):
        each.close()


def newid() -> None:
    print(f"newid: {_best(newId, 100000):.2f} us")


def accesslog() -> None:
    _, app, reactor = _site()
    config = app.config
    now = reactor.seconds()
    # the ledger bench's finished request, as this site's upstream would have served it
    record = ledger.record(0)
    record.started = record.firstByte = now
    record.upstream, record.upstreamModel, record.upstreamStatus = "mock", "gpt-mock-1", 200
    record.attempts = [Attempt("mock", 200)]
    log = app.accessLog

    def write() -> None:
        log.begin(record, lambda: 0)
        log.write(record, now, None, config.redactor.redact, config.prices)

    print(f"accesslog: AccessLog.begin+write {_best(write, 20000):.2f} us")


def main() -> None:
    chosen = sys.argv[1:] or ["request", "head", "pooled", "peer", "newid", "accesslog"]
    for name in chosen:
        if name == "head":
            request(parts=True)
        else:
            globals()[name]()


if __name__ == "__main__":
    main()
