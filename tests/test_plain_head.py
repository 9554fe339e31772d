"""`compat.QuickHeaderChannel.readPlainHead`: a request's head that one read holds
whole, read in one split, leaves everything as Twisted's own line reader does.

Each case is fed, read by read, to twisted.web's `HTTPChannel` and to a
`QuickHeaderChannel` that offers every read holding a head's end to
`readPlainHead` (as `ccproxy.web.site.ProxyChannel` does); both must end with the
same requests handed on (method, target, version, headers, body), the same bytes
written (answers, 400s, `100 Continue`), the same close, and the same parser state
(what is left unread, line or raw mode, counters, the request being read)."""

from __future__ import annotations

from io import BytesIO
from itertools import pairwise
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.testing import StringTransport
from twisted.web.http import HTTPChannel, Request

from ccproxy import compat
from tests.support.examples import examples

CLAUDE_HEAD = (
    b"POST /v1/messages?beta=true HTTP/1.1\r\nHost: 127.0.0.1:8082\r\n"
    b"Accept: application/json\r\nContent-Type: application/json\r\n"
    b"User-Agent: claude-cli/2.0.37 (external, cli)\r\nX-App: cli\r\n"
    b"Anthropic-Version: 2023-06-01\r\nAnthropic-Beta: claude-code-20250219,"
    b"interleaved-thinking-2025-05-14\r\nX-Api-Key: k\r\nAuthorization: Bearer k\r\n"
    b"X-Stainless-Retry-Count: 0\r\nContent-Length: 11\r\n\r\n"
)
CLAUDE = CLAUDE_HEAD + b'{"a": true}'


class Recorded(Request):
    """Notes what it was handed and answers at once (a target under /later: when
    the test says)."""

    def gotLength(self, length: int | None) -> None:
        self.content = BytesIO()  # (not a temporary file for a chunked body)

    def process(self) -> None:
        self.channel.seen.append(
            (
                self.method,
                self.uri,
                self.clientproto,
                list(self.requestHeaders._rawHeaders.items()),
                self.content.read(),
            )
        )
        if not self.uri.startswith(b"/later"):
            self.answer()

    def answer(self) -> None:
        self.setHeader(b"content-length", b"2")
        self.write(b"ok")
        self.finish()


class Reference(HTTPChannel):
    requestFactory = Recorded  # type: ignore[assignment]

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[Any] = []
        self.taken = 0


class Fast(compat.QuickHeaderChannel):
    """As `ProxyChannel` offers a read to `readPlainHead`, but for every read (its
    own checks must turn away a read in the middle of a body or a head)."""

    requestFactory = Recorded  # type: ignore[assignment]

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[Any] = []
        self.taken = 0

    def dataReceived(self, data: bytes) -> None:
        end = data.find(b"\r\n\r\n")
        if end != -1 and self.readPlainHead(data, end):
            self.taken += 1
            return
        HTTPChannel.dataReceived(self, data)


class Sticky(StringTransport):
    """A transport that does not say it is closing when asked to close: Twisted's
    reader then goes on reading the lines after a refused one."""

    def loseConnection(self) -> None:
        self.closed = True


def outcome(
    channelType: type[Any],
    reads: list[bytes],
    limits: tuple[int, int, int] = (16384, 16384, 500),
    transportType: type[StringTransport] = StringTransport,
) -> tuple[Any, ...]:
    channel = channelType()
    channel.MAX_LENGTH, channel.totalHeadersSize, channel.maxHeaders = limits
    transport = transportType()
    channel.makeConnection(transport)
    raised = None
    for data in reads:
        try:
            channel.dataReceived(data)
        except Exception as e:  # as the reactor would see it
            raised = (type(e), str(e).replace(type(channel).__name__, "channel"))
            break
    while channel.requests and not raised and not transport.disconnecting:
        request = channel.requests[0]  # the answers held back, in order
        if not getattr(request, "uri", b"").startswith(b"/later") or request.finished:
            break
        try:
            request.answer()
        except Exception as e:
            raised = (type(e), str(e).replace(type(channel).__name__, "channel"))
    state = {
        name: getattr(channel, name, None)
        for name in (
            "line_mode",
            "_buffer",
            "_busyReceiving",
            "_receivedHeaderSize",
            "_receivedHeaderCount",
            "_HTTPChannel__header",
            "_HTTPChannel__first_line",
            "_command",
            "_path",
            "_version",
            "persistent",
            "length",
            "_dataBuffer",
            "_handlingRequest",
        )
    }
    if raised:  # the reactor drops a connection whose read raised: nothing is read after
        del state["_buffer"]
    decoder = channel._transferDecoder
    pending = [
        (request.method, list(request.requestHeaders._rawHeaders.items()))
        for request in channel.requests
    ]
    return (
        channel.seen,
        transport.value(),
        transport.disconnecting,
        getattr(transport, "closed", None),
        raised,
        state,
        type(decoder),
        getattr(decoder, "length", None),
        pending,
    )


def assertSame(
    reads: list[bytes],
    limits: tuple[int, int, int] = (16384, 16384, 500),
    transportType: type[StringTransport] = StringTransport,
) -> int:
    """Both channels agree on `reads`; how many reads the fast one took whole."""
    fast = Fast()
    got = outcome(lambda: fast, reads, limits, transportType)  # type: ignore[arg-type,return-value]
    assert got == outcome(Reference, reads, limits, transportType), reads
    return fast.taken


CASES = [
    [CLAUDE],
    [CLAUDE + CLAUDE],  # pipelined, the second read from the buffer once the first is answered
    [CLAUDE + CLAUDE[:40], CLAUDE[40:]],  # the second head split across reads
    [CLAUDE[:30], CLAUDE[30:]],
    [CLAUDE_HEAD, b'{"a": true}'],
    [CLAUDE_HEAD[:-2], b"\r\n" + b'{"a": true}'],
    [b"GET / HTTP/1.1\r\n\r\n"],
    [b"GET /later HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\nX: 1\r\n\r\n"],
    [b"GET /later HTTP/1.1\r\n\r\n", b"GET /b HTTP/1.1\r\nX: 1\r\n\r\nGET /c HTTP/1.1\r\n\r\n"],
    [b"GET /x HTTP/1.0\r\nA: b\r\n\r\nGET /y HTTP/1.1\r\n\r\n"],
    [b"GET /x HTTP/1.1\r\nConnection: close\r\n\r\nGET /y HTTP/1.1\r\n\r\n"],
    [b"POST /x HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nab"],
    [b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n0\r\n\r\n"],
    [b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\nzz\r\n\r\n"],
    [b"POST /x HTTP/1.1\r\nTransfer-Encoding: identity\r\nContent-Length: 1\r\n\r\na"],
    [b"POST /x HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\na"],
    [b"POST /x HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\na"],
    [b"POST /x HTTP/1.1\r\nContent-Length: -1\r\nX: y\r\n\r\na"],
    [b"POST /x HTTP/1.1\r\nContent-Length: 4\r\n\r\n\r\n\r\n"],  # a body that looks like a head
    [b"POST /x HTTP/1.1\r\nContent-Length: 40\r\n\r\nab", b"GET / HTTP/1.1\r\n\r\n"],
    [b"GET / HTTP/1.1\r\nA: 1\r\nA: 2\r\na: 3\r\nB:\r\nC: x:y:z\r\nD:  \t v \t \r\n\r\n"],
    [b"GET / HTTP/1.1\r\nCaf\xc3\xa9: x\r\n\r\n"],
    [b"GET / HTTP/1.1\r\nV: caf\xc3\xa9\x0b\x0c\r\n\r\n"],
    [b"GET / HTTP/1.1\r\nno colon\r\nB: 1\r\n\r\n"],
    [b"GET / HTTP/1.1\r\nB: 1\r\nno colon\r\n\r\n"],
    [b"GET / HTTP/1.1\r\nBad Name: 1\r\nC: 2\r\nD: 3\r\n\r\n"],
    [b"GET / HTTP/1.1\r\n: empty name\r\n\r\n"],
    [b"GET / HTTP/1.1\r\nV: a\x00b\r\nW: 1\r\n\r\n"],
    [b"GET / HTTP/1.1\r\nA: 1\r\n folded\r\n\tmore\r\nB: 2\r\n\r\n"],
    [b"GET / HTTP/1.1\r\n folded first\r\n\r\n"],
    [b"GET / HTTP/1.1\nA: 1\n\n"],
    [b"GET / HTTP/1.1\r\nA: 1\n\r\n\r\n"],
    [b"GET / HTTP/1.1\r\nA: 1\rB: 2\r\n\r\n"],
    [b"\r\nGET / HTTP/1.1\r\n\r\n"],  # the empty line some clients send first
    [b"\r\n\r\nGET / HTTP/1.1\r\n\r\n"],
    [b"GET /later HTTP/1.1\r\n\r\n\r\nGET / HTTP/1.1\r\n\r\n"],
    [b"GET / HTTP/1.1 extra\r\nA: 1\r\n\r\n"],
    [b"GET  / HTTP/1.1\r\n\r\n"],
    [b"G(T / HTTP/1.1\r\n\r\n"],
    [b"GET /\x7f HTTP/1.1\r\n\r\n"],
    [b"GET / HTTP/2.0\r\n\r\n"],
    [b"GET  HTTP/1.1\r\n\r\n"],
    [b"GET / HTTP/1.1\r\nX: " + b"v" * 20000 + b"\r\n\r\n"],
    [b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(600)) + b"\r\n"],
    [b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: %s\r\n" % (i, b"v" * 900) for i in range(20))],
]


def test_heads_are_read_as_twisted_reads_them() -> None:
    taken = sum(assertSame(reads) for reads in CASES)
    assert taken >= 25, "the plain heads were read whole"
    assert assertSame([CLAUDE]) == 1
    later = CLAUDE.replace(b"/v1/messages", b"/later", 1)
    assert assertSame([later + later + CLAUDE]) == 3  # pipelined: each read once answered


def test_limits_and_refusals_are_twisted_s() -> None:
    """Lowered limits: a line over `MAX_LENGTH`, a head over `totalHeadersSize`,
    more headers than `maxHeaders` are refused as Twisted refuses them (the fast
    read leaves them to it), and a head just within each is read whole."""
    head = b"GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\n\r\n"  # 30 bytes before the blank line
    for limits in [(30, 16384, 500), (29, 16384, 500), (16384, 26, 500), (16384, 25, 500)]:
        assertSame([head], limits)
    assert assertSame([head], (26, 26, 2)) == 1
    assert assertSame([head], (25, 16384, 500)) == 0
    assert assertSame([head], (16384, 16384, 1)) == 0
    for reads in CASES:
        assertSame(reads, (60, 120, 3))


def test_a_refusal_that_does_not_close_goes_on_as_twisted_s() -> None:
    """A transport that does not say it closes: Twisted reads on after a refused
    line (the next header, or the rest as lines), and so does the fast read."""
    for reads in CASES:
        assertSame(reads, transportType=Sticky)


_NAMES = [b"Host", b"content-length", b"Transfer-Encoding", b"Connection", b"Expect",
          b"X-A", b"x-a", b"Bad Name", b"", b"N\xe9", b"\tX"]  # fmt: skip
_VALUES = [b"1", b"5", b"chunked", b"CHUNKED", b"identity", b"close", b"keep-alive",
           b"100-continue", b"", b" v ", b"a\x00b", b"\tx", b"-1", b"a:b"]  # fmt: skip
_ENDS = [b"\r\n"] * 12 + [b"\n", b"\r", b"\r\n ", b"\r\n\t", b"\r\n\r\n"]
_LINES = [b"POST /v1/messages HTTP/1.1", b"GET /later HTTP/1.1", b"GET /x?y=1 HTTP/1.0",
          b"BAD LINE", b"GET  / HTTP/1.1", b"", b"GET / HTTP/2.0",
          b"G\x00T / HTTP/1.1"]  # fmt: skip
_BODIES = [b"", b"hello", b"5\r\nhello\r\n0\r\n\r\n", b"\r\n\r\n", b"GET / HTTP/1.1\r\n\r\n"]

header = st.builds(
    lambda name, sep, value, end: name + sep + value + end,
    st.sampled_from(_NAMES),
    st.sampled_from([b":", b": ", b""]),
    st.sampled_from(_VALUES),
    st.sampled_from(_ENDS),
)
request = st.builds(
    lambda line, end, headers, body: line + end + b"".join(headers) + b"\r\n" + body,
    st.sampled_from(_LINES),
    st.sampled_from(_ENDS),
    st.lists(header, max_size=8),
    st.sampled_from(_BODIES),
)


@settings(max_examples=examples(500), deadline=None)
@given(
    st.lists(request, min_size=1, max_size=3),
    st.lists(st.integers(min_value=0, max_value=400), max_size=3),
    st.sampled_from([(16384, 16384, 500), (40, 16384, 500), (16384, 60, 500), (16384, 16384, 2)]),
    st.sampled_from([StringTransport, Sticky]),
)
def test_any_head_is_read_as_twisted_reads_it(
    requests: list[bytes],
    cuts: list[int],
    limits: tuple[int, int, int],
    transportType: type[StringTransport],
) -> None:
    stream = b"".join(requests)
    points = sorted({0, len(stream), *(cut for cut in cuts if cut < len(stream))})
    reads = [stream[a:b] for a, b in pairwise(points) if b > a]
    assertSame(reads, limits, transportType)
