"""One silence timer for an upstream's head and its whole body: `UpstreamClient.send`
leaves the head's timer running and `readBody` hands it to the body's reader, which
waits its own `timeout` from then on, exactly as a timer of its own would."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH

from ccproxy.config import Config
from ccproxy.errors import ProxyError
from ccproxy.upstream.client import Silence, UpstreamClient
from tests.support.fakes import completion, jsonReply
from tests.support.harness import Harness, message, resultOf

CONFIG = """
upstreams:
  up:
    url: http://upstream.test/v1
    timeout: 30
models:
  claude-*: up/big-model
"""


class _Response:
    """An upstream's answer whose head is in and whose body the test sends."""

    code = 200
    length = UNKNOWN_LENGTH

    def __init__(self) -> None:
        self.headers = Headers({b"content-type": [b"application/json"]})
        self.reader: Any = None
        self.stopped = False

    def deliverBody(self, protocol: Any) -> None:
        self.reader = protocol
        protocol.makeConnection(self)

    def stopProducing(self) -> None:
        self.stopped = True


class _HTTP:
    def __init__(self) -> None:
        self.requested: list[Deferred[Any]] = []

    def request(self, method: str, url: str, **kwargs: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.requested.append(d)
        return d


def _client() -> tuple[Clock, _HTTP, UpstreamClient, Any]:
    clock, http = Clock(), _HTTP()
    upstream = Config.fromYAML(CONFIG, {}).upstreams["up"]
    return clock, http, UpstreamClient(http, clock), upstream


def _timers(clock: Clock) -> list[Any]:
    return [call for call in clock.getDelayedCalls() if call.active()]


def test_handTo_starts_the_wait_over_for_its_new_waiter() -> None:
    clock, fired = Clock(), []
    silence = Silence(clock, 30, lambda: fired.append("head"))
    clock.advance(20)
    silence.handTo(lambda: fired.append("body"))
    clock.advance(29.9)
    assert fired == [] and silence.active()
    clock.advance(0.1)
    assert fired == ["body"] and not silence.active()


def _read(clock: Clock, http: _HTTP, client: UpstreamClient, upstream: Any) -> Any:
    """A whole answer as the dispatcher reads one: its head after 29 s, then its body."""

    async def read() -> bytes:
        response, silence = await client.send(upstream, b"{}", None, None, None)
        try:
            return await client.readBody(upstream, response, 1000, silence=silence)
        finally:
            silence.cancel()

    d = Deferred.fromCoroutine(read())
    clock.advance(29)
    response = _Response()
    http.requested[0].callback(response)
    return d, response


def test_the_body_waits_its_whole_timeout_after_a_late_head() -> None:
    clock, http, client, upstream = _client()
    d, response = _read(clock, http, client, upstream)
    assert len(_timers(clock)) == 1, "the head's timer, handed to the body's reader"
    response.reader.dataReceived(b'{"a"')
    clock.advance(29.9)
    assert not d.called
    clock.advance(0.1)
    error = resultOf(d.addErrback(lambda f: f.value))
    assert isinstance(error, ProxyError) and error.status == 504
    assert "in the middle of its answer" in error.message
    assert response.stopped and _timers(clock) == []


def test_a_body_read_whole_leaves_no_timer() -> None:
    clock, http, client, upstream = _client()
    d, response = _read(clock, http, client, upstream)
    response.reader.dataReceived(b"{}")
    response.reader.connectionLost(Failure(ResponseDone()))
    assert resultOf(d) == b"{}"
    assert _timers(clock) == []


def test_a_client_that_leaves_mid_body_stops_the_timer_and_the_upstream() -> None:
    clock, http, client, upstream = _client()
    d, response = _read(clock, http, client, upstream)
    d.cancel()
    assert isinstance(resultOf(d.addErrback(lambda f: f.value)), CancelledError)
    assert response.stopped and _timers(clock) == []


def test_the_head_still_has_its_own_timeout() -> None:
    clock, _http, client, upstream = _client()
    d = Deferred.fromCoroutine(client.send(upstream, b"{}", None, None, None))
    clock.advance(30)
    error = resultOf(d.addErrback(lambda f: f.value))
    assert isinstance(error, ProxyError) and "before answering" in error.message
    assert _timers(clock) == []


def test_a_whole_answer_through_the_dispatcher_makes_one_silence_timer() -> None:
    h = Harness.build(CONFIG)
    made: list[Any] = []
    callLater = h.clock.callLater

    def counting(delay: float, f: Any, *args: Any, **kw: Any) -> Any:
        made.append(f)
        return callLater(delay, f, *args, **kw)

    h.clock.callLater = counting  # type: ignore[method-assign]
    h.upstream.queue(jsonReply(completion("hello")))
    assert h.post(message()).status == 200
    assert len([f for f in made if getattr(f, "__func__", None) is Silence._fire]) == 1
    assert _timers(h.clock) == []
