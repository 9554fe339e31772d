"""`ccproxy.web.app.HotRoute`: the hot route's handler result, or its failure, on
the wire through one callback (`_settle`), as the chain of three it replaced did:
the bytes written and the request finished, a failure answered by `failed`, an
exception while answering logged, a client that left cancelling the handler and
its `CancelledError` dropped."""

from __future__ import annotations

from typing import Any

from klein import Klein
from twisted.internet.defer import CancelledError, Deferred
from twisted.python.failure import Failure
from twisted.web.server import NOT_DONE_YET
from twisted.web.test.requesthelper import DummyRequest

from ccproxy.web.app import HotRoute


def route(handler: Any, failed: Any = None) -> HotRoute:
    def failing(request: Any, failure: Failure) -> bytes:
        request.setResponseCode(500)
        return b"failed: " + str(failure.value).encode()

    return HotRoute(Klein(), {(b"POST", b"/v1/messages"): handler}, failed or failing)


def logged(failures: list[dict[str, Any]]) -> list[tuple[str, type]]:
    """The failures logged (taken off the list the test would fail on)."""
    seen = [(e["log_format"], type(e["log_failure"].value)) for e in failures]
    failures.clear()
    return seen


def hot() -> DummyRequest:
    request = DummyRequest([b"v1", b"messages"])
    request.method, request.path = b"POST", b"/v1/messages"
    return request


def test_the_handler_s_bytes_are_written_and_the_request_finished() -> None:
    async def handler(request: Any) -> bytes:
        return b"answer"

    request = hot()
    assert route(handler).render(request) is NOT_DONE_YET
    assert request.written == [b"answer"] and request.finished == 1


def test_a_handler_that_answered_itself_is_only_finished() -> None:
    async def handler(request: Any) -> None:
        request.write(b"streamed")

    request = hot()
    route(handler).render(request)
    assert request.written == [b"streamed"] and request.finished == 1


def test_a_failure_is_answered_by_failed() -> None:
    async def handler(request: Any) -> bytes:
        raise ValueError("bad")

    request = hot()
    route(handler).render(request)
    assert request.written == [b"failed: bad"] and request.finished == 1
    assert request.responseCode == 500


def test_an_exception_while_answering_is_logged(noLoggedFailures: list[Any]) -> None:
    async def handler(request: Any) -> bytes:
        raise ValueError("bad")

    def failedBadly(request: Any, failure: Failure) -> bytes:
        raise RuntimeError("failed to fail")

    request = hot()
    route(handler, failedBadly).render(request)
    assert request.written == [] and not request.finished
    assert logged(noLoggedFailures) == [("Unhandled error writing an answer", RuntimeError)]

    async def good(request: Any) -> bytes:
        return "not bytes"  # type: ignore[return-value]

    request = hot()
    request.finish = lambda: (_ for _ in ()).throw(KeyError("gone"))  # type: ignore[method-assign]
    route(good).render(request)
    assert logged(noLoggedFailures) == [("Unhandled error writing an answer", KeyError)]


def test_a_client_that_left_cancels_the_handler_quietly(noLoggedFailures: list[Any]) -> None:
    cancelled: list[object] = []
    pending: Deferred[bytes] = Deferred(cancelled.append)

    async def handler(request: Any) -> bytes:
        return await pending

    request = hot()
    route(handler).render(request)
    assert cancelled == []
    request.processingFailed(Failure(ConnectionError("client left")))
    assert cancelled == [pending]
    assert request.written == [] and logged(noLoggedFailures) == []


def test_a_failure_after_the_client_left_is_logged(noLoggedFailures: list[Any]) -> None:
    pending: Deferred[bytes] = Deferred()

    async def handler(request: Any) -> bytes:
        try:
            return await pending
        except CancelledError:
            raise ValueError("late") from None

    request = hot()
    route(handler).render(request)
    request.processingFailed(Failure(ConnectionError("client left")))
    assert request.written == []
    assert logged(noLoggedFailures) == [("Unhandled error processing a request", ValueError)]
