"""SSEParser as an upstream body protocol, on a StringTransport and a Clock: bytes
split anywhere, the line limit, silence, cancellation, how the body ends; and
encodeEvent, the client's frames."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import CancelledError
from twisted.internet.error import ConnectionLost
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone, ResponseFailed
from twisted.web.http import PotentialDataLoss

from ccproxy.config.model import DEFAULT_MAX_LINE_BYTES as DEFAULT_MAX_LINE
from ccproxy.errors import ProxyError
from ccproxy.relay.relay import encodeEvent
from ccproxy.relay.sse import SSEParser
from tests.support.examples import examples

TIMEOUT = 30.0


class RecordingTransport(StringTransport):
    """A body transport that counts `stopProducing`, the call that aborts the
    upstream connection (`TransportProxyProducer.stopProducing`)."""

    def __init__(self) -> None:
        super().__init__()
        self.stops = 0

    def stopProducing(self) -> None:
        self.stops += 1
        super().stopProducing()


class Body:
    """One SSEParser delivered a response body, with what came out of it."""

    def __init__(
        self,
        timeout: float = TIMEOUT,
        maxLineLength: int = DEFAULT_MAX_LINE,
        onData: Callable[[bytes], None] | None = None,
        onEvents: Callable[[list[bytes]], None] | None = None,
    ) -> None:
        self.clock = Clock()
        self.payloads: list[bytes] = []
        self.transport = RecordingTransport()
        self.parser = SSEParser(
            onData or self.payloads.append,
            self.clock,
            timeout,
            "up",
            maxLineLength,
            onEvents=onEvents,
        )
        self.parser.makeConnection(self.transport)
        self.outcome: list[Any] = []
        self.parser.finished.addBoth(self.outcome.append)

    def feed(self, *parts: bytes) -> Body:
        for part in parts:
            self.parser.dataReceived(part)
        return self

    def end(self, reason: BaseException | None = None) -> Body:
        self.parser.connectionLost(Failure(reason if reason is not None else ResponseDone()))
        return self

    @property
    def running(self) -> bool:
        return not self.outcome

    def succeeded(self) -> bool:
        assert len(self.outcome) == 1, f"finished fired {len(self.outcome)} times"
        return self.outcome[0] is None

    def error(self) -> BaseException:
        """The exception `finished` failed with (it must have failed, once)."""
        assert len(self.outcome) == 1, f"finished fired {len(self.outcome)} times"
        failure = self.outcome[0]
        assert isinstance(failure, Failure), f"finished succeeded with {failure!r}"
        return failure.value


def payloadsOf(*parts: bytes) -> tuple[list[bytes], bool]:
    body = Body().feed(*parts).end()
    assert body.succeeded()
    assert body.clock.getDelayedCalls() == [], "the silence timer outlived the body"
    assert body.transport.stops == 0
    return body.payloads, body.parser.sawDone


# A stream with every shape of line a real upstream sends.
STREAM = (
    b": OPENROUTER PROCESSING\r\n"
    b"\r\n"
    b'data: {"a":1}\r\n'
    b"\r\n"
    b": keep-alive\n"
    b"\n"
    b"\n"
    b"\r\n"
    b"event: message\n"
    b"id: 7\n"
    b"retry: 1000\n"
    b'data:{"b":"caf\xc3\xa9 \xe2\x9c\x93 \xf0\x9f\x98\x80"}\n'
    b"\n"
    b'data: {"c":\n'
    b"data: 2}\n"
    b"\n"
    b'data:  {"d":"one space kept"}\r\n'
    b"\r\n"
    b'data: {"e":"\xe4\xb8\xad\xe6\x96\x87"}\n'
    b"\n"
    b"data: [DONE]\n"
    b"\n"
)
EXPECTED = [
    b'{"a":1}',
    '{"b":"café ✓ 😀"}'.encode(),
    b'{"c":\n2}',
    b' {"d":"one space kept"}',
    '{"e":"中文"}'.encode(),
]

# Ends at connection close with a line that has no newline.
UNTERMINATED = b'data: {"x":1}\n\ndata: {"y":"\xc3\xa9\xe2\x9c\x93"}'
UNTERMINATED_EXPECTED = [b'{"x":1}', '{"y":"é✓"}'.encode()]


def test_wholeStream() -> None:
    payloads, sawDone = payloadsOf(STREAM)
    assert payloads == EXPECTED
    assert sawDone
    assert [orjson.loads(p) for p in payloads][1] == {"b": "café ✓ 😀"}


@pytest.mark.parametrize(
    ("stream", "expected", "done"),
    [(STREAM, EXPECTED, True), (UNTERMINATED, UNTERMINATED_EXPECTED, False)],
    ids=["full", "unterminated"],
)
def test_splitAtEveryPosition(stream: bytes, expected: list[bytes], done: bool) -> None:
    for position in range(len(stream) + 1):
        got = payloadsOf(stream[:position], stream[position:])
        assert got == (expected, done), f"split at {position}: {stream[position - 5 : position]!r}"


@pytest.mark.parametrize(
    ("stream", "expected", "done"),
    [(STREAM, EXPECTED, True), (UNTERMINATED, UNTERMINATED_EXPECTED, False)],
    ids=["full", "unterminated"],
)
def test_singleBytes(stream: bytes, expected: list[bytes], done: bool) -> None:
    assert payloadsOf(*(stream[i : i + 1] for i in range(len(stream)))) == (expected, done)


@settings(max_examples=examples(200), deadline=None, derandomize=True, database=None)
@given(st.lists(st.integers(0, len(STREAM)), max_size=12))
def test_anySplit(cuts: list[int]) -> None:
    bounds = [0, *sorted(cuts), len(STREAM)]
    parts = [STREAM[a:b] for a, b in itertools.pairwise(bounds)]
    assert payloadsOf(*parts) == (EXPECTED, True)


# Reads of one whole event each (an upstream's chunked body, as twisted.web hands it
# over): those of one `data: ` line take a shortcut past the line loop; the others,
# and any read after a line or an event left open, take the loop.
ONE_EVENT_READS = [
    ([b'data: {"a":1}\n\n', b"data: [DONE]\n\n"], [b'{"a":1}'], True),
    ([b"data:   [DONE]  \n\n"], [], True),
    ([b"data: \n\n"], [b""], False),
    ([b"data: x\r\n\r\n", b"data: y\r\n\n"], [b"x", b"y"], False),
    ([b"data: x\n", b"data: y\n\n"], [b"x\ny"], False),  # an event still open
    ([b": no newline yet", b"data: x\n\n"], [], False),  # a line still open: a comment
    ([b"data: x\n\n\n"], [b"x"], False),
    ([b"data: x\ndata: y\n\n"], [b"x\ny"], False),
    ([b"data:x\n\n", b"data: {}\n\n"], [b"x", b"{}"], False),
]


@pytest.mark.parametrize(("reads", "expected", "done"), ONE_EVENT_READS)
def test_readsOfOneEventEach(reads: list[bytes], expected: list[bytes], done: bool) -> None:
    assert payloadsOf(*reads) == (expected, done)
    assert payloadsOf(b"".join(reads)) == (expected, done)  # the same in one read


def test_aOneEventReadKeepsTheLineLimit() -> None:
    line = b'data: {"a":1}'
    assert Body(maxLineLength=len(line)).feed(line + b"\n\n").payloads == [b'{"a":1}']
    body = Body(maxLineLength=len(line) - 1).feed(line + b"\n\n")
    assert "longer than" in str(body.error()) and body.payloads == []


def test_splitInsideAMultiByteCharacter() -> None:
    data = 'data: {"t":"😀"}\n\n'.encode()
    emoji = data.index(b"\xf0")
    for cut in range(emoji + 1, emoji + 4):
        assert payloadsOf(data[:cut], data[cut:])[0] == ['{"t":"😀"}'.encode()]


def test_doneSetsSawDoneAndIsNotDelivered() -> None:
    body = Body().feed(b'data: {"a":1}\n\n')
    assert not body.parser.sawDone
    body.feed(b"data: [DONE]\r\n\r\n")
    assert body.parser.sawDone
    assert body.payloads == [b'{"a":1}']
    body.end()
    assert body.succeeded()


def test_streamWithoutDone() -> None:
    assert payloadsOf(b'data: {"a":1}\n\n') == ([b'{"a":1}'], False)


def test_lastLineWithoutNewlineIsDeliveredAtClose() -> None:
    body = Body().feed(b'data: {"a":1}\n\ndata: {"b":2}')
    assert body.payloads == [b'{"a":1}']
    body.end(PotentialDataLoss())
    assert body.payloads == [b'{"a":1}', b'{"b":2}']
    assert body.succeeded()


def test_lastEventWithoutBlankLineIsDeliveredAtClose() -> None:
    assert payloadsOf(b'data: {"a":\ndata: 1}\n')[0] == [b'{"a":\n1}']


def test_onlyCommentsAndBlankLines() -> None:
    assert payloadsOf(b": keep-alive\n\n\n: OPENROUTER PROCESSING\r\n\r\n\n") == ([], False)


def test_otherFieldsAreIgnored() -> None:
    assert payloadsOf(
        b"event: completion\nid: 42\nretry: 10\nfoo: bar\ndatum: no\ndata: {}\n\n"
    ) == ([b"{}"], False)


# -- the line limit ---------------------------------------------------------------------


def test_lineAtTheLimitIsAccepted() -> None:
    line = b'data: {"a":1}'
    body = Body(maxLineLength=len(line)).feed(line + b"\n\n").end()
    assert body.succeeded()
    assert body.payloads == [b'{"a":1}']


def test_completeLineOverTheLimit() -> None:
    body = Body(maxLineLength=100).feed(b'data: {"a":1}\n\n', b"data: " + b"x" * 200 + b"\n\n")
    error = body.error()
    assert isinstance(error, ProxyError)
    assert (error.status, error.errorType) == (502, "api_error")
    assert "up" in error.message
    assert body.transport.stops >= 1
    assert body.payloads == [b'{"a":1}']
    assert body.clock.getDelayedCalls() == []


def test_growingLineOverTheLimitStopsAndStaysBounded() -> None:
    limit, size = 1000, 64
    body = Body(maxLineLength=limit).feed(b"data: ")
    chunk = b"x" * size
    fed = 0
    while body.running:
        body.feed(chunk)
        fed += size
        assert fed <= limit + size, "no failure once the line passed the limit"
    error = body.error()
    assert isinstance(error, ProxyError) and error.status == 502
    assert body.transport.stops >= 1
    # The upstream may still push what was in flight: none of it is kept.
    for _ in range(100):
        body.feed(chunk)
    assert sum(map(len, body.parser._partial)) <= limit + size
    assert body.payloads == []
    body.end()
    assert len(body.outcome) == 1


def test_anEventOfManyShortDataLinesOverTheLimitStops() -> None:
    """The limit bounds an event's data however many lines it is cut into: an
    upstream that never sends the blank line does not grow it without end."""
    body = Body(maxLineLength=100)
    while body.running:
        body.feed(b"data: xxxxxxxx\n" * 4)
        assert len(body.parser._lines) <= 100
    error = body.error()
    assert isinstance(error, ProxyError) and "longer than 100 bytes" in error.message
    assert body.payloads == [] and body.parser._lines == []


# -- silence ---------------------------------------------------------------------------


def test_silenceFailsWith504AndStopsTheUpstream() -> None:
    body = Body().feed(b'data: {"a":1}\n\n')
    body.clock.advance(TIMEOUT - 0.5)
    assert body.running
    body.clock.advance(0.5)
    error = body.error()
    assert isinstance(error, ProxyError)
    assert (error.status, error.errorType) == (504, "api_error")
    assert "up" in error.message
    assert body.transport.stops == 1
    # Whatever arrives afterwards is dropped; the end changes nothing.
    body.feed(b'data: {"late":1}\n\n')
    body.end()
    assert body.payloads == [b'{"a":1}']
    assert len(body.outcome) == 1


def test_silenceBeforeAnyData() -> None:
    body = Body()
    body.clock.advance(TIMEOUT)
    assert isinstance(body.error(), ProxyError)
    assert body.error().status == 504


@pytest.mark.parametrize(
    "data",
    [b'data: {"a":1}\n\n', b": keep-alive\n", b"\n", b"da"],
    ids=["event", "comment", "blank-line", "part-of-a-line"],
)
def test_dataResetsTheSilenceTimer(data: bytes) -> None:
    body = Body()
    body.clock.advance(TIMEOUT - 1)
    body.feed(data)
    body.clock.advance(TIMEOUT - 1)
    assert body.running
    body.feed(data)
    body.clock.advance(TIMEOUT - 1)
    assert body.running
    body.clock.advance(1)
    assert body.error().status == 504


def test_endStopsTheSilenceTimer() -> None:
    body = Body().feed(b"data: {}\n\n").end()
    assert body.clock.getDelayedCalls() == []
    body.clock.advance(10 * TIMEOUT)
    assert body.succeeded()


# -- cancellation ----------------------------------------------------------------------


def test_cancelStopsTheUpstream() -> None:
    body = Body().feed(b'data: {"a":1}\n\n')
    body.parser.finished.cancel()
    assert body.transport.stops == 1
    assert isinstance(body.error(), CancelledError)
    assert body.clock.getDelayedCalls() == []
    # The aborted connection then reports its loss: nothing raises, nothing fires again.
    body.feed(b'data: {"late":1}\n\n')
    body.end(ResponseFailed([Failure(ConnectionLost())]))
    assert body.payloads == [b'{"a":1}']
    assert len(body.outcome) == 1
    body.clock.advance(10 * TIMEOUT)
    assert len(body.outcome) == 1


def test_cancelAfterTheEndDoesNothing() -> None:
    body = Body().feed(b"data: {}\n\n").end()
    body.parser.finished.cancel()
    assert body.succeeded()
    assert body.transport.stops == 0


# -- how the body ends -------------------------------------------------------------------


@pytest.mark.parametrize(
    "reason", [ResponseDone(), PotentialDataLoss()], ids=lambda r: type(r).__name__
)
def test_cleanEnd(reason: BaseException) -> None:
    body = Body().feed(b'data: {"a":1}\n\n').end(reason)
    assert body.succeeded()
    assert body.payloads == [b'{"a":1}']


@pytest.mark.parametrize(
    "reason",
    [ResponseFailed([Failure(ConnectionLost())]), ConnectionLost()],
    ids=lambda r: type(r).__name__,
)
def test_lostConnection(reason: BaseException) -> None:
    body = Body().feed(b'data: {"a":1}\n\n').end(reason)
    error = body.error()
    assert isinstance(error, ProxyError)
    assert (error.status, error.errorType) == (502, "api_error")
    assert "up" in error.message
    assert body.payloads == [b'{"a":1}']
    assert body.clock.getDelayedCalls() == []


def test_lostConnectionDoesNotDeliverACutLine() -> None:
    """A connection lost in the middle of a line: that half line is not an event,
    and the error says the connection was lost.

    Exposes a defect: `connectionLost` dispatches the unterminated buffer whatever the
    reason, so the app's `onData` gets `{"choi`, and the client is told the upstream
    sent a line that is not JSON instead of that the connection was lost."""
    body = Body().feed(b'data: {"a":1}\n\ndata: {"choi')
    body.end(ResponseFailed([Failure(ConnectionLost())]))
    assert body.payloads == [b'{"a":1}']
    error = body.error()
    assert isinstance(error, ProxyError) and error.status == 502
    assert "connection was lost" in error.message


# -- errors raised by onData -----------------------------------------------------------


def test_onDataErrorFailsFinishedAndStopsTheUpstream() -> None:
    seen: list[bytes] = []
    boom = ProxyError(502, "not JSON", "api_error")

    def onData(data: bytes) -> None:
        seen.append(data)
        if data == b"boom":
            raise boom

    body = Body(onData=onData)
    body.feed(b"data: 1\n\ndata: boom\n\ndata: 3\n\n")
    assert body.error() is boom
    assert body.transport.stops == 1
    assert seen == [b"1", b"boom"]
    body.feed(b"data: 4\n\n")
    body.end()
    assert seen == [b"1", b"boom"]
    assert len(body.outcome) == 1
    assert body.clock.getDelayedCalls() == []


def test_anyExceptionFromOnDataIsPassedOn() -> None:
    def onData(data: bytes) -> None:
        raise ValueError(data)

    body = Body(onData=onData).feed(b"data: x\n\n")
    error = body.error()
    assert isinstance(error, ValueError) and error.args == (b"x",)
    assert body.transport.stops == 1


# -- onEvents: a read's events together ------------------------------------------------


def test_onEventsGetsEachReadsEventsInOneList() -> None:
    reads: list[list[bytes]] = []
    cut = STREAM.index(b"event: message")
    body = Body(onEvents=lambda payloads: reads.append(list(payloads)))
    body.feed(STREAM[:cut], STREAM[cut:], b'data: {"f":1}\n\n').end()
    assert body.succeeded() and body.parser.sawDone
    assert reads == [EXPECTED[:1], EXPECTED[1:], [b'{"f":1}']]
    assert body.payloads == []  # onData is not called beside it


@pytest.mark.parametrize(
    "overLimit",
    [b"data: " + b"x" * 200 + b"\n\n", b"data: " + b"x" * 60 + b"\ndata: " + b"y" * 60 + b"\n"],
    ids=["line", "event"],
)
def test_eventsBeforeALimitInTheSameReadGoFirst(overLimit: bytes) -> None:
    """The limit stops the stream after the events before it in its read went on."""
    reads: list[list[bytes]] = []
    body = Body(maxLineLength=100, onEvents=reads.append)
    body.feed(b'data: {"a":1}\n\ndata: {"b":2}\n\n' + overLimit + b'data: {"c":3}\n\n')
    error = body.error()
    assert isinstance(error, ProxyError) and "longer than 100 bytes" in error.message
    assert reads == [[b'{"a":1}', b'{"b":2}']]
    assert body.transport.stops >= 1


def test_anErrorFromOnEventsStopsTheStream() -> None:
    boom = ProxyError(502, "not JSON", "api_error")
    reads: list[list[bytes]] = []

    def onEvents(payloads: list[bytes]) -> None:
        reads.append(payloads)
        raise boom

    body = Body(maxLineLength=100, onEvents=onEvents)
    body.feed(b"data: 1\n\ndata: " + b"x" * 200 + b"\n\n")  # its error first
    assert body.error() is boom
    body.feed(b"data: 4\n\n")
    body.end()
    assert reads == [[b"1"]] and len(body.outcome) == 1
    assert body.transport.stops >= 1


# -- encodeEvent -----------------------------------------------------------------------


def test_encodeEvent() -> None:
    assert encodeEvent({"type": "message_stop"}) == (
        b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
    )


def test_encodeEventKeepsOneDataLine() -> None:
    event = {
        "type": "content_block_delta",
        "index": 0,
        "delta": {"type": "text_delta", "text": "a\nb\r\n\n✓ \u2028 é"},
    }
    frame = encodeEvent(event)
    assert frame.startswith(b"event: content_block_delta\ndata: ")
    assert frame.endswith(b"\n\n")
    lines = frame[:-2].split(b"\n")
    assert len(lines) == 2
    assert b"\r" not in frame
    assert orjson.loads(lines[1][len(b"data: ") :]) == event


def test_encodedEventsParseBack() -> None:
    events = [
        {"type": "message_start", "message": {"id": "msg_1", "content": []}},
        {"type": "content_block_delta", "index": 0, "delta": {"text": "x\n\ny ✓"}},
        {"type": "message_stop"},
    ]
    stream = b"".join(encodeEvent(e) for e in events)
    for position in range(len(stream) + 1):
        payloads, _ = payloadsOf(stream[:position], stream[position:])
        assert [orjson.loads(p) for p in payloads] == events


class _ReadCounted(list):  # type: ignore[type-arg]
    """A list that counts the times it is read whole (iterated: joined, copied)."""

    reads = 0

    def __iter__(self):  # type: ignore[no-untyped-def]
        self.reads += 1
        return super().__iter__()


def test_aLongLineIsJoinedOnceNotOnEveryRead() -> None:
    """The partial line is kept in the pieces it came in, so a 16 MiB line read in
    TCP-sized pieces costs one join, not one per read (which cost seconds of CPU
    with `LineOnlyReceiver`'s `buffer + data`)."""
    body = Body().feed(b"data: {")
    held = body.parser._partial = _ReadCounted(body.parser._partial)
    for _ in range(1000):
        body.feed(b"x" * 1460)
    assert len(body.parser._partial) == 1001  # never joined while the line grows
    assert held.reads == 0  # nor copied, even for a moment (the data-only read's test)
    body.feed(b"}\n\n")
    assert body.parser._partial == []
    assert len(body.payloads) == 1 and len(body.payloads[0]) == 1_460_002
