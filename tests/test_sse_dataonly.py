"""SSEParser's reads of data-only events (`_dataOnly`): a read of the usual shape
(`data: {...}` lines, each followed by a blank line, bare `\\n`, at most a last
`data: [DONE]`) skips the line loop; every other read takes it. Either way the
events, their batches, `[DONE]`, the limits and the errors are the line loop's:
pinned here against a parser whose shortcut is turned off."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.error import ConnectionLost
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone

from bench import payloads
from ccproxy.config.model import DEFAULT_MAX_LINE_BYTES
from ccproxy.relay.sse import SSEParser
from tests.support.examples import examples


class LineLoopOnly(SSEParser):
    """The parser as it reads any other read: line by line."""

    def _dataOnly(self, data: bytes) -> bool:
        return False


class Counting(SSEParser):
    """The parser, counting the reads its line loop read."""

    loops = 0

    def _readLines(self, lines: list[bytes], cr: bool = True) -> None:
        self.loops += 1
        SSEParser._readLines(self, lines, cr)


def record(
    parser: type[SSEParser],
    reads: list[bytes],
    limit: int = DEFAULT_MAX_LINE_BYTES,
    boom: bytes | None = None,
    lost: bool = False,
) -> list[Any]:
    """Everything `parser` did with `reads`: each read's event batches, `[DONE]`,
    how `finished` ended, the aborts; `boom`: a payload `onEvents` raises on."""
    log: list[Any] = []

    def onEvents(events: list[bytes]) -> None:
        log.append(list(events))
        if boom is not None and boom in events:
            raise ValueError("boom")

    body = parser(
        log.append,
        Clock(),
        30.0,
        "up",
        limit,
        onBatch=lambda: log.append("batch"),
        onEvents=onEvents,
    )
    transport = StringTransport()
    stops: list[None] = []
    transport.stopProducing = lambda: stops.append(None)  # type: ignore[method-assign]
    body.makeConnection(transport)
    outcome: list[Any] = []
    body.finished.addBoth(lambda r: outcome.append(repr(r.value) if isinstance(r, Failure) else r))
    for read in reads:
        body.dataReceived(read)
        log.append((body.sawDone, list(outcome), len(stops)))
    body.connectionLost(Failure(ConnectionLost() if lost else ResponseDone()))
    log.append((body.sawDone, outcome, len(stops)))
    return log


def same(
    reads: list[bytes], limit: int = DEFAULT_MAX_LINE_BYTES, boom: bytes | None = None
) -> None:
    for lost in (False, True):
        assert record(SSEParser, reads, limit, boom, lost) == record(
            LineLoopOnly, reads, limit, boom, lost
        ), (reads, limit, boom, lost)


def event(data: bytes) -> bytes:
    return b"data: " + data + b"\n\n"


# Reads the shortcut takes, and reads of every shape it must leave to the loop.
SHAPES = [
    event(b'{"a":1}') + event(b'{"b":2}') + b"data: [DONE]\n\n",
    event(b'{"a":1}') + event(b'{"b":"\\n\\ndata: [DONE]\\n\\n"}') + event(b'{"c":3}'),
    event(b'{"a":1}') + b"data: [DONE]\n\n" + event(b'{"c":3}'),
    event(b'{"a":1}') + event(b" [DONE]") + event(b"[DONE] ") + event(b"[DONE]x"),
    event(b'{"a":1}') + b"data:[DONE]\n\n",
    event(b'{"a":1}') + event(b"[1]") + event(b"") + event(b"not json"),
    event(b'{"a":1}') + b"\n" + event(b'{"b":2}') + b"\n\n\n",
    event(b'{"a":1}') + b": keep-alive\n\nevent: x\nid: 1\nretry: 5\n" + event(b'{"b":2}'),
    event(b'{"a":1}') + b"data: {\ndata: 2}\n\n" + event(b'{"b":2}'),
    event(b'{"a":1}') + b"data: {\r\n\r\n" + event(b'{"b":2}\r'),
    b'data:{"a":1}\n\ndata\n\ndatax: 1\n\n' + event(b'{"b":2}'),
    event(b'{"a":1}') + b'data: {"b":2}\nid: 1\ndata: {"c":3}',
    b"\n\n" + event(b'{"a":1}') + b"data: [DONE]\n\n",
    event('{"é":"✓😀"}'.encode()) + b"data: {\xff\x00}\n\n",
    # [DONE] in a payload: the loop's [DONE] only when it is that, stripped
    event(b'{"a":"[DONE]"}') + event(b"[DONE]x") + event(b"x [DONE]") + b"data: [DONE]\n\n",
    event(b"\t[DONE]\x0c") + event(b'{"a":1}'),
    event(b'{"a":1}') + event(b"[DONE] "),
    event(b"[DONE][DONE]") + event(b"[DONE] [DONE]") + event(b'{"[DONE]":"[DONE]"}'),
    event(b"[DONE]") + event(b"[DONE]"),
    event(b"{[DONE]}") + event(b" {") + event(b"") + b"data: [DONE]\n\n",
]


@pytest.mark.parametrize("stream", SHAPES)
def test_everySplitReadsAsTheLineLoop(stream: bytes) -> None:
    same([stream])
    for cut in range(len(stream) + 1):
        same([stream[:cut], stream[cut:]])
    same([stream[i : i + 1] for i in range(len(stream))])


@pytest.mark.parametrize("stream", SHAPES)
def test_limitsAndErrorsAreTheLineLoops(stream: bytes) -> None:
    for limit in (5, 8, 12, 13, 14, 15, 20, 40):
        same([stream], limit)
        cut = len(stream) // 2
        same([stream[:cut], stream[cut:]], limit)
    for boom in (b'{"a":1}', b'{"b":2}'):
        same([stream], boom=boom)


ATOMS = [b"data: ", b"data:", b"{", b"}", b"\n", b"\n\n", b"\r", b"[DONE]", b":", b" ", b"x"]


@settings(max_examples=examples(500), deadline=None, derandomize=True, database=None)
@given(
    st.lists(st.sampled_from(ATOMS), min_size=1, max_size=40),
    st.lists(st.integers(0, 400), max_size=4),
    st.sampled_from([DEFAULT_MAX_LINE_BYTES, 3, 8, 15, 30]),
    st.sampled_from([None, b"{", b"x"]),
)
def test_anyStreamReadsAsTheLineLoop(
    atoms: list[bytes], cuts: list[int], limit: int, boom: bytes | None
) -> None:
    stream = b"".join(atoms)
    bounds = [0, *sorted(min(c, len(stream)) for c in cuts), len(stream)]
    same([stream[a:b] for a, b in itertools.pairwise(bounds)], limit, boom)


BENCH = b"".join(payloads.sse_frames(200))


def test_aRealisticStreamInAnyReads() -> None:
    """The bench's 57 KB stream (text, a tool call, usage, `[DONE]`, hostile text)
    in one read, two, and reads of 1-3 KB, with and without a tight limit."""
    same([BENCH])
    for cut in range(0, len(BENCH), 499):
        same([BENCH[:cut], BENCH[cut:]])
    for size in (1024, 1500, 3072):
        reads = [BENCH[at : at + size] for at in range(0, len(BENCH), size)]
        same(reads)
        same(reads, limit=400)


def test_theUsualReadSkipsTheLineLoop() -> None:
    parser = Counting(lambda data: None, Clock(), 30.0, "up")
    got: list[bytes] = []
    parser._onEvents = got.extend
    parser.makeConnection(StringTransport())
    parser.dataReceived(BENCH)
    assert parser.loops == 0 and parser.sawDone and len(got) == 224
    # A read that ends inside an event: the events before it skip the loop, the
    # rest (a line not ended) waits, then the events after it skip the loop too.
    parser = Counting(lambda data: None, Clock(), 30.0, "up")
    parser._onEvents = got.extend
    parser.makeConnection(StringTransport())
    for at in range(0, len(BENCH), 1500):
        parser.dataReceived(BENCH[at : at + 1500])
    assert parser.loops == 0 and parser.sawDone


@pytest.mark.parametrize(
    "read",
    [
        event(b'{"a":1}') + b": keep-alive\n\n",  # a comment
        event(b'{"a":1}') + b"event: x\n" + event(b"{}"),  # another field
        event(b'{"a":1}') + b"data: {\ndata: 1}\n\n",  # data in two lines
        event(b'{"a":1}\r'),  # a \r anywhere
        event(b'{"a":1}') + b"\n",  # a blank line more
        b'data:{"a":1}\n\n',  # no space after the colon
        event(b"[DONE]") + event(b'{"a":1}'),  # [DONE] before an event
        event(b'{"a":1}') + event(b" [DONE]"),  # ... or the loop's, stripped
        event(b'{"a":1}') + event(b"[DONE]\t") + b"data: [DONE]\n\n",
    ],
)
def test_otherReadsTakeTheLineLoop(read: bytes) -> None:
    assert loops(read) == 1


def loops(read: bytes) -> int:
    """How many times the line loop ran for `read`."""
    parser = Counting(lambda data: None, Clock(), 30.0, "up")
    parser.makeConnection(StringTransport())
    parser.dataReceived(read)
    return parser.loops


@pytest.mark.parametrize(
    "read",
    [
        event(b'{"a":1}') + event(b"[1]"),  # a payload not an object: handed over
        event(b'{"a":1}') + event(b"|") + event(b"}") + event(b""),  # as the loop does
        event(b'{"a":"[DONE]"}') + event(b"x[DONE]") + b"data: [DONE]\n\n",
    ],
)
def test_readsOfAnyPayloadsSkipTheLineLoop(read: bytes) -> None:
    assert loops(read) == 0
    same([read])


def test_aReadOverTheLimitTakesTheLineLoop() -> None:
    stream = event(b'{"a":1}') + event(b'{"b":2}')
    parser = Counting(lambda data: None, Clock(), 30.0, "up", len(stream) - 1)
    parser.makeConnection(StringTransport())
    parser.dataReceived(stream)
    assert parser.loops == 1 and not parser.finished.called


def test_theRestOfAReadKeepsTheLimit() -> None:
    """After the read's last event, a line over the limit fails the stream, after
    the events before it went on."""
    got: list[list[bytes]] = []
    parser = SSEParser(lambda data: None, Clock(), 30.0, "up", 20, onEvents=got.append)
    parser.makeConnection(StringTransport())
    failures: list[Failure] = []
    parser.finished.addErrback(failures.append)
    parser.dataReceived(event(b'{"a":1}') + b"data: " + b"x" * 30)
    assert got == [[b'{"a":1}']]
    assert "longer than 20 bytes" in str(failures[0].value)
