"""Failover, retries, the circuit breaker and admission limits, in memory on a Clock."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.defer import fail, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.web.http_headers import Headers

from tests.support.fakes import jsonReply, rawReply, sseReply, stallReply
from tests.support.harness import Harness, fired, message, resultOf

CONFIG = """
upstreams:
  main:
    url: http://main.test/v1
    timeout: 30
    retries: {retries}
    breaker_failures: 3
    breaker_cooldown: 30
  backup:
    url: http://backup.test/v1
    timeout: 30
    retries: 0
models:
  claude-*: [main/big, backup/big-too]
  solo: main/big
"""

OK = jsonReply({"choices": [{"message": {"content": "fine"}, "finish_reason": "stop"}]})


def build(retries: int = 0, extra: str = "", http: Any = None) -> Harness:
    return Harness.build(CONFIG.format(retries=retries) + extra, http=http)


def hosts(h: Harness) -> list[str]:
    return [r.headers["host"] for r in h.upstream.received]


# -- failover -------------------------------------------------------------------


@pytest.mark.parametrize(
    "failure",
    [
        jsonReply({"error": {"message": "down"}}, 503),
        jsonReply({"error": {"message": "busy"}}, 429),
        jsonReply({"error": {"message": "timeout"}}, 408),
        rawReply(b"<html><title>500</title></html>", 500, "text/html"),
    ],
)
def test_failover_to_the_next_target(failure: Any) -> None:
    h = build()
    h.upstream.queue(failure, OK)
    reply = h.post(message())
    assert reply.status == 200
    assert reply.json()["content"][0]["text"] == "fine"
    assert hosts(h) == ["main.test", "backup.test"]
    assert [r.body["model"] for r in h.upstream.received] == ["big", "big-too"]


@pytest.mark.parametrize("status", [400, 401, 403, 404, 413, 422])
def test_client_errors_are_neither_retried_nor_failed_over(status: int) -> None:
    h = build(retries=2)
    h.upstream.queue(jsonReply({"error": {"message": "no"}}, status), OK)
    reply = h.post(message())
    assert reply.status == status
    assert hosts(h) == ["main.test"]


def test_failover_when_connection_refused() -> None:
    class Refusing:
        def __init__(self, stub: Any) -> None:
            self.stub = stub

        def request(self, method: str, url: str, **kw: Any) -> Any:
            if "main.test" in url:
                return fail(ConnectionRefusedError("refused"))
            return self.stub.request(method, url, **kw)

    h = build(http=lambda clock, stub: Refusing(stub))
    reply = h.post(message())
    assert reply.status == 200
    assert hosts(h) == ["backup.test"]


def test_failover_when_silent_before_headers() -> None:
    h = build()
    h.upstream.queue(stallReply(), OK)
    d = h.request("POST", "/v1/messages", message())
    h.flush()
    h.clock.advance(30)
    h.flush()
    assert resultOf(d).status == 200
    assert hosts(h) == ["main.test", "backup.test"]
    assert h.upstream.disconnected == 1


def test_all_targets_failing_gives_the_last_error() -> None:
    h = build()
    h.upstream.queue(
        jsonReply({"error": {"message": "main down"}}, 503),
        jsonReply({"error": {"message": "backup down"}}, 502),
    )
    reply = h.post(message())
    assert reply.status == 502
    assert "backup: backup down" in reply.json()["error"]["message"]


def test_no_failover_once_the_stream_started() -> None:
    h = build()
    h.upstream.queue(
        sseReply(
            [
                {"choices": [{"index": 0, "delta": {"content": "half"}}]},
                {"error": {"message": "died", "code": 500}},
            ],
            done=False,
        ),
        OK,
    )
    reply = h.post(message(stream=True))
    assert reply.status == 200
    assert b"event: error" in reply.body
    assert hosts(h) == ["main.test"]
    assert h.post(message()).status == 200  # the queued OK serves the next request


# -- retries --------------------------------------------------------------------


def test_retries_with_backoff_then_succeeds() -> None:
    h = build(retries=2)
    down = jsonReply({"error": {"message": "down"}}, 503)
    h.upstream.queue(down, down, OK)
    d = h.request("POST", "/v1/messages", message())
    h.flush()
    assert len(h.upstream.received) == 1
    # Backoff 0.5 s x 2^n, jittered to 75% by the harness's fixed random 0.5.
    h.clock.advance(0.37)
    h.flush()
    assert len(h.upstream.received) == 1
    h.clock.advance(0.01)
    h.flush()
    assert len(h.upstream.received) == 2
    h.clock.advance(0.75)
    h.flush()
    assert resultOf(d).status == 200
    assert hosts(h) == ["main.test"] * 3


def test_retry_after_is_honoured() -> None:
    h = build(retries=1, extra="")
    h.upstream.queue(jsonReply({"error": {"message": "slow"}}, 429, {"retry-after": "3"}), OK)
    d = h.request("POST", "/v1/messages", message(model="solo"))
    h.flush()
    h.clock.advance(2.9)
    h.flush()
    assert len(h.upstream.received) == 1
    h.clock.advance(0.1)
    h.flush()
    assert resultOf(d).status == 200
    assert len(h.upstream.received) == 2


def test_retry_after_beyond_the_cap_is_passed_to_the_client() -> None:
    h = build(retries=3)
    h.upstream.queue(jsonReply({"error": {"message": "later"}}, 429, {"retry-after": "60"}))
    reply = h.post(message(model="solo"))
    assert reply.status == 429
    assert reply.headers["retry-after"] == "60"
    assert len(h.upstream.received) == 1


def test_no_retry_beyond_the_clients_patience() -> None:
    h = build(retries=3)
    h.upstream.queue(jsonReply({"error": {"message": "slow"}}, 429, {"retry-after": "5"}))
    reply = h.post(message(model="solo"), headers={"x-stainless-timeout": "4"})
    assert reply.status == 429
    assert len(h.upstream.received) == 1


# -- circuit breaker ------------------------------------------------------------------


def test_a_lone_upstream_serves_the_moment_it_recovers() -> None:
    """Twenty upstream 500s and stalls in a row, no partner: the breaker is open, yet
    the very next request after the upstream recovers is answered."""
    h = build()
    for i in range(20):
        h.upstream.queue(jsonReply({"error": {"message": "boom"}}, 500) if i % 2 else stallReply())
        pending = h.request("POST", "/v1/messages", message(model="solo"))
        h.flush()
        h.clock.advance(30)  # a stall ends at the upstream's timeout
        h.flush()
        assert resultOf(pending).status in (500, 504)
    assert h.call("GET", "/healthz").json()["upstreams"]["main"]["breaker"] == "open"
    h.upstream.queue(OK)
    reply = h.post(message(model="solo"))
    assert reply.status == 200
    assert h.call("GET", "/healthz").json()["upstreams"]["main"]["breaker"] == "closed"


FORWARDING = """
upstreams:
  shared:
    url: http://shared.test/v1
    retries: 2
    breaker_failures: 2
  other:
    url: http://other.test/v1
    api_key: sk-other
models:
  claude-*: [shared/big, other/big]
"""


def test_one_callers_rate_limited_key_is_nobody_elses_outage() -> None:
    """`shared` forwards each caller's own key. Alice's key is rate-limited: her
    429s go back to her (no retry, no failover on her behalf), and neither the
    breaker nor Bob hears of them."""
    h = Harness.build(FORWARDING)
    limited = jsonReply({"error": {"message": "rate limited"}}, 429, {"retry-after": "20"})
    for _ in range(5):
        h.upstream.queue(limited)
        reply = h.post(message(), headers={"x-api-key": "alice-own-key"})
        assert reply.status == 429 and reply.headers["retry-after"] == "20"
        assert "rate limited" in reply.json()["error"]["message"]
    assert hosts(h) == ["shared.test"] * 5
    assert h.call("GET", "/healthz").json()["upstreams"]["shared"]["breaker"] == "closed"
    reply = h.post(message(), headers={"x-api-key": "bob-own-key"})
    assert reply.status == 200
    assert hosts(h)[-1] == "shared.test"
    assert h.upstream.received[-1].headers["authorization"] == "Bearer bob-own-key"


def test_breaker_opens_skips_and_recovers() -> None:
    h = build()
    down = jsonReply({"error": {"message": "down"}}, 503)
    for _ in range(3):
        h.upstream.queue(down, OK)
        assert h.post(message()).status == 200
    assert hosts(h) == ["main.test", "backup.test"] * 3
    # Open: main is skipped, backup serves at once.
    h.upstream.queue(OK)
    assert h.post(message()).status == 200
    assert hosts(h)[-1] == "backup.test" and len(hosts(h)) == 7
    health = h.call("GET", "/healthz").json()
    assert health["upstreams"]["main"]["breaker"] == "open"
    assert (
        'ccproxy_upstream_breaker_state{upstream="main"} 1.0'
        in h.call("GET", "/metrics").body.decode()
    )
    # A route with no partner still goes to main: a breaker steers, it never makes
    # an outage of its own (panic routing). It failed again: still open.
    h.upstream.queue(down)
    reply = h.post(message(model="solo"))
    assert reply.status == 503 and "main: down" in reply.json()["error"]["message"]
    assert hosts(h)[-1] == "main.test" and len(hosts(h)) == 8
    assert h.call("GET", "/healthz").json()["upstreams"]["main"]["breaker"] == "open"
    # After the cooldown one trial goes to main; it succeeds and closes the breaker.
    h.clock.advance(30)
    h.upstream.queue(OK)
    assert h.post(message()).status == 200
    assert hosts(h)[-1] == "main.test"
    assert h.call("GET", "/healthz").json()["upstreams"]["main"]["breaker"] == "closed"


# -- limits -----------------------------------------------------------------------------


def test_upstream_concurrency_queue_and_overload() -> None:
    text = CONFIG.format(retries=0).replace(
        "    breaker_cooldown: 30\n",
        "    breaker_cooldown: 30\n    max_concurrent: 1\n"
        "    queue_size: 1\n    queue_timeout: 5\n",
    )
    h = Harness.build(text)
    h.upstream.queue(stallReply(), OK, OK)
    first = h.request("POST", "/v1/messages", message(model="solo"))
    second = h.request("POST", "/v1/messages", message(model="solo"))
    third = h.request("POST", "/v1/messages", message(model="solo"))
    h.flush()
    assert len(h.upstream.received) == 1
    assert resultOf(third).status == 529  # the queue (one place) is full
    assert resultOf(third).json()["error"]["type"] == "overloaded_error"
    assert not fired(second)
    h.clock.advance(5)
    h.flush()
    assert resultOf(second).status == 529  # waited its queue_timeout
    assert len(h.upstream.received) == 1
    assert not fired(first)


def test_queued_request_gets_the_freed_slot() -> None:
    text = CONFIG.format(retries=0).replace(
        "    breaker_cooldown: 30\n", "    breaker_cooldown: 30\n    max_concurrent: 1\n"
    )
    h = Harness.build(text)
    h.upstream.queue(
        sseReply(
            [{"choices": [{"index": 0, "delta": {"content": "x"}, "finish_reason": "stop"}]}],
            delay=1,
        ),
        OK,
    )
    first = h.request("POST", "/v1/messages", message(model="solo", stream=True))
    second = h.request("POST", "/v1/messages", message(model="solo"))
    h.flush()
    assert len(h.upstream.received) == 1
    for _ in range(3):
        h.clock.advance(1)
        h.flush()
    assert resultOf(first).status == 200
    assert resultOf(second).status == 200
    assert len(h.upstream.received) == 2


CLIENTS = """
clients:
  - name: alice
    key: alice-key
    max_concurrent: 1
    requests_per_minute: 2
  - name: bob
    key: bob-key
"""


def test_client_concurrency_limit() -> None:
    h = build(extra=CLIENTS)
    h.upstream.queue(stallReply(), OK)
    first = h.request("POST", "/v1/messages", message(), headers={"x-api-key": "alice-key"})
    h.flush()
    reply = h.post(message(), headers={"x-api-key": "alice-key"})
    assert reply.status == 429
    assert reply.json()["error"]["type"] == "rate_limit_error"
    assert reply.headers["retry-after"] == "1"
    assert h.post(message(), headers={"x-api-key": "bob-key"}).status == 200  # others unaffected
    assert not fired(first)


def test_client_requests_per_minute() -> None:
    h = build(extra=CLIENTS)
    alice = {"x-api-key": "alice-key"}
    assert h.post(message(), headers=alice).status == 200
    h.clock.advance(10)
    assert h.post(message(), headers=alice).status == 200
    h.clock.advance(10)
    reply = h.post(message(), headers=alice)
    assert reply.status == 429
    assert reply.headers["retry-after"] == "40"  # the first request leaves the window at 60 s
    h.clock.advance(40)
    assert h.post(message(), headers=alice).status == 200


# -- timeouts and sizes -------------------------------------------------------------------


def test_max_duration_ends_a_slow_request() -> None:
    h = build(extra="max_duration: 5\n")
    h.upstream.queue(stallReply())
    d = h.request("POST", "/v1/messages", message(model="solo"))
    h.flush()
    h.clock.advance(5)
    h.flush()
    reply = resultOf(d)
    assert reply.status == 504
    assert "longer than 5 s" in reply.json()["error"]["message"]
    assert h.upstream.disconnected == 1


def test_max_duration_ends_a_stream_with_an_error_event() -> None:
    h = build(extra="max_duration: 5\n")
    chunks = [{"choices": [{"index": 0, "delta": {"content": f"{i} "}}]} for i in range(20)]
    h.upstream.queue(sseReply(chunks, delay=1))
    d = h.request("POST", "/v1/messages", message(model="solo", stream=True))
    for _ in range(6):
        h.clock.advance(1)
        h.flush()
    reply = resultOf(d)
    assert reply.status == 200
    assert reply.body.rstrip().splitlines()[-2] == b"event: error"
    assert b"message_stop" not in reply.body
    assert h.upstream.disconnected == 1


class _HugeResponse:
    code = 200
    phrase = b"OK"
    length = 2 * 1024**3

    def __init__(self) -> None:
        self.headers = Headers({b"content-type": [b"application/json"]})
        self.stopped = False

    def deliverBody(self, protocol: Any) -> None:
        transport = self

        class T:
            def stopProducing(self) -> None:
                transport.stopped = True

        protocol.makeConnection(T())


def test_announced_huge_body_is_refused_unread() -> None:
    huge = _HugeResponse()

    class Client:
        def request(self, method: str, url: str, **kw: Any) -> Any:
            return succeed(huge)

    h = build(http=lambda clock, stub: Client())
    reply = h.post(message(model="solo"))
    assert reply.status == 502
    assert "larger than" in reply.json()["error"]["message"]
    assert huge.stopped


def test_never_ending_sse_line_is_an_error_not_memory() -> None:
    h = build(extra="max_line_bytes: 4096\n")
    h.upstream.queue(sseReply([b"data: " + b"x" * 10000], done=False, close=False))
    reply = h.post(message(model="solo", stream=True))
    assert reply.status == 200
    assert b"event: error" in reply.body
    assert b"longer than 4096 bytes" in reply.body
    assert h.upstream.disconnected == 1


@pytest.mark.parametrize("stream", [False, True])
def test_every_answer_gives_its_slot_back(stream: bool) -> None:
    text = CONFIG.format(retries=0).replace(
        "    breaker_cooldown: 30\n", "    breaker_cooldown: 30\n    max_concurrent: 1\n"
    )
    h = Harness.build(text)
    # A JSON completion (also what a stream request gets from servers that ignore
    # stream: true), then a garbled one: each must free the upstream's only slot.
    h.upstream.queue(OK, rawReply(b"{broken", 200, "application/json"), OK)
    assert h.post(message(model="solo", stream=stream)).status == 200
    assert h.post(message(model="solo", stream=stream)).status in (200, 502)
    assert h.post(message(model="solo")).status == 200
    assert h.app.dispatcher.health(["main"])["main"].active == 0
