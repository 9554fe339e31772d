"""`ProxyApp.serve`: the handler's coroutine writes its request's access event and
stops its `max_duration` timer as it ends, however it ends (answered, refused,
its client gone, its time up, its handler done at once): one event each, no
timer left, no request left in flight."""

from __future__ import annotations

from typing import Any

from twisted.logger import globalLogPublisher

from ccproxy.web.app import ProxyApp
from tests.support.fakes import completion, jsonReply, sseReply, stallReply
from tests.support.harness import BASE_CONFIG, Harness, message
from tests.test_disconnect import connect, hangUp


def _watching(h: Harness) -> tuple[list[dict[str, Any]], Any]:
    events: list[dict[str, Any]] = []

    def access(event: dict[str, Any]) -> None:
        if event.get("log_namespace") == "ccproxy.access":
            events.append(event)

    globalLogPublisher.addObserver(access)
    return events, access


def _expiries(h: Harness) -> list[Any]:
    return [
        c
        for c in h.clock.getDelayedCalls()
        if c.active() and getattr(c.func, "__func__", None) is ProxyApp._expire
    ]


def _once(h: Harness, act: Any) -> list[dict[str, Any]]:
    events, observer = _watching(h)
    try:
        act(h)
        h.flush()
    finally:
        globalLogPublisher.removeObserver(observer)
    assert _expiries(h) == [] and h.app.inFlight == 0
    return events


def test_an_answered_request_is_served_once() -> None:
    h = Harness.build()
    h.upstream.queue(jsonReply(completion("hello")))
    events = _once(h, lambda h: h.post(message()))
    assert [e["status"] for e in events] == [200]


def test_a_refused_request_is_served_once() -> None:
    h = Harness.build()
    events = _once(h, lambda h: h.post({"model": 5}))
    assert [e["status"] for e in events] == [400]


def test_a_handler_done_at_once_sets_no_timer() -> None:
    h = Harness.build()
    made: list[Any] = []
    callLater = h.clock.callLater

    def counting(delay: float, f: Any, *args: Any, **kw: Any) -> Any:
        made.append(getattr(f, "__func__", None))
        return callLater(delay, f, *args, **kw)

    h.clock.callLater = counting  # type: ignore[method-assign]
    events = _once(h, lambda h: h.call("GET", "/v1/models"))
    assert [e["status"] for e in events] == [200]
    assert ProxyApp._expire not in made, "no timer made for a request already over"


def test_a_request_whose_client_left_is_served_once() -> None:
    h = Harness.build()
    h.upstream.queue(stallReply())

    def leave(h: Harness) -> None:
        channel, _ = connect(h, message())
        h.flush()
        hangUp(channel)

    events = _once(h, leave)
    assert [e["status"] for e in events] == [499]


def test_a_request_out_of_time_is_served_once() -> None:
    h = Harness.build(BASE_CONFIG + "max_duration: 30\n")
    h.upstream.queue(
        sseReply([{"choices": [{"index": 0, "delta": {"content": "."}}]}] * 10, delay=20)
    )

    def slow(h: Harness) -> None:
        h.request("POST", "/v1/messages", message(stream=True))
        for _ in range(10):
            h.clock.advance(20)
            h.flush()

    events = _once(h, slow)
    assert len(events) == 1 and events[0]["error_type"] is not None
