"""`compat.QuickProcessRequest.write`: an answer's head and bytes go out as
`twisted.web.server.Request.write` writes them, in every case it takes and every
case it leaves to Twisted (a HEAD request, a 204 or 304, no Content-Length, a
zero one, HTTP/1.0, a date, an etag, cookies, a gzip encoder, writes after the
end or after the client left)."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel
from twisted.web.server import GzipEncoderFactory
from twisted.web.server import Request as SiteRequest

from ccproxy import compat
from tests.support.examples import examples

HEADERS = {
    "none": [],
    "json": [(b"content-type", b"application/json"), (b"content-length", b"5")],
    "type": [(b"Content-Type", b"text/event-stream"), (b"cache-control", b"no-cache")],
    "length": [(b"content-length", b"11")],
    "zero": [(b"content-length", b"0")],
    "many": [(b"x-a", b"1"), (b"X-A", b"2"), (b"request-id", b"req_1"), (b"x-b", b"")],
    "chunked": [(b"transfer-encoding", b"chunked"), (b"content-type", b"text/plain")],
}


def outcome(
    kind: type[SiteRequest],
    method: bytes,
    version: bytes,
    code: tuple[int, bytes | None],
    headers: str,
    extra: str,
    writes: list[bytes],
    end: str,
) -> Any:
    channel = HTTPChannel()
    transport = StringTransport()
    channel.makeConnection(transport)
    request = kind(channel, parsePOSTFormSubmission=False)
    channel.requests.append(request)
    request.method, request.uri, request.path, request.clientproto = method, b"/", b"/", version
    request.setResponseCode(*code)
    for name, value in HEADERS[headers]:
        request.responseHeaders.addRawHeader(name, value)
    if extra == "date":
        request.setLastModified(1_700_000_000)
    elif extra == "etag":
        request.setETag(b"abc")
    elif extra == "cookie":
        request.addCookie(b"k", b"v")
    elif extra == "gzip":
        request.requestHeaders.setRawHeaders(b"accept-encoding", [b"gzip"])
        request._encoder = GzipEncoderFactory().encoderForRequest(request)
    elif extra == "fakehead":
        request._inFakeHead = True
    seen: list[Any] = []
    for i, data in enumerate(writes):
        if end == "lost" and i == 1:
            request.connectionLost(Failure(ConnectionError("gone")))
        if end == "finished" and i == 1:
            request.finish()
        try:
            request.write(data)
            seen.append(transport.value())
        except Exception as e:
            seen.append((type(e), str(e)))
    if end == "finish" and not request.finished and not request._disconnected:
        request.finish()
    return (
        seen,
        transport.value(),
        request.startedWriting,
        request.chunked,
        request.sentLength,
        list(request.responseHeaders.getAllRawHeaders()),
    )


CASES = [
    (b"POST", b"HTTP/1.1", (200, None), "json", "", [b"hello"], "finish"),
    (b"POST", b"HTTP/1.1", (200, None), "type", "", [b"data: 1\n\n", b"", b"x"], "finish"),
    (b"POST", b"HTTP/1.1", (200, None), "none", "", [b""], "finish"),
    (b"GET", b"HTTP/1.0", (200, None), "none", "", [b"a", b"b"], "finish"),
    (b"GET", b"HTTP/1.1", (404, b"Gone Fishing"), "many", "", [b"a"], "finish"),
    (b"HEAD", b"HTTP/1.1", (200, None), "json", "", [b"hello"], "finish"),
    (b"GET", b"HTTP/1.1", (204, None), "none", "", [b"x"], "finish"),
    (b"GET", b"HTTP/1.1", (304, None), "type", "", [b""], "finish"),
    (b"GET", b"HTTP/1.1", (200, None), "zero", "", [b""], "finish"),
    (b"GET", b"HTTP/1.1", (200, None), "chunked", "", [b"abc", b"def"], "finish"),
    (b"GET", b"HTTP/1.1", (200, None), "json", "date", [b"hello"], "finish"),
    (b"GET", b"HTTP/1.1", (200, None), "json", "etag", [b"hello"], "finish"),
    (b"GET", b"HTTP/1.1", (200, None), "json", "cookie", [b"hello"], "finish"),
    (b"GET", b"HTTP/1.1", (200, None), "type", "gzip", [b"hello" * 50, b"x"], "finish"),
    (b"GET", b"HTTP/1.1", (200, None), "type", "fakehead", [b"hello"], "finish"),
    (b"GET", b"HTTP/1.1", (200, None), "type", "", [b"a", b"b"], "lost"),
    (b"GET", b"HTTP/1.1", (200, None), "json", "", [b"a", b"b"], "finished"),
]


def test_answers_are_written_as_twisted_writes_them() -> None:
    for case in CASES:
        assert outcome(compat.QuickProcessRequest, *case) == outcome(SiteRequest, *case), case


@settings(max_examples=examples(300), deadline=None)
@given(
    st.tuples(
        st.sampled_from([b"GET", b"POST", b"HEAD"]),
        st.sampled_from([b"HTTP/1.1", b"HTTP/1.0"]),
        st.sampled_from([(200, None), (201, None), (204, None), (304, None), (500, b"Oops")]),
        st.sampled_from(sorted(HEADERS)),
        st.sampled_from(["", "", "", "date", "etag", "cookie", "gzip", "fakehead"]),
        st.lists(st.sampled_from([b"", b"x", b"hello", b"0" * 300]), min_size=1, max_size=4),
        st.sampled_from(["finish", "finish", "lost", "finished"]),
    )
)
def test_any_answer_is_written_as_twisted_writes_it(case: Any) -> None:
    assert outcome(compat.QuickProcessRequest, *case) == outcome(SiteRequest, *case)
