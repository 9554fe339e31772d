"""CPU per upstream SSE chunk of a translated stream, in process: no sockets, no mock.

    python -m bench.relaychunks [--body FILE] [--streams 300] [--repeat 7]

Feeds the bench's upstream stream (bench/payloads.py, ~57 KB, 225 chunks; or the
`data:` body in FILE, e.g. the reference harness's `chat.sse`) through the real
relay path — `SSEParser` -> `StreamRelay` -> `StreamTranslator` -> `EventWriter` ->
a twisted.web `Request` on a `StringTransport` — in the reads an upstream's body
arrives in: the whole body in one read (a 64 KB socket read), cut into reads of
1-3 KB, and one chunk per read, all in one reactor turn (an upstream's chunked
body: twisted.web hands each HTTP chunk over on its own). An empty stream
(`[DONE]` alone) gives the cost per stream; the difference, divided by the
chunks, the cost per chunk. Best of `--repeat` runs.
"""

from __future__ import annotations

import argparse
import random
import time
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import HTTPChannel
from twisted.web.http_headers import Headers
from twisted.web.server import Request

from bench import payloads
from ccproxy.config.model import Upstream
from ccproxy.config.policy import Policy
from ccproxy.relay.relay import StreamRelay, TurnEnd
from ccproxy.upstream.dispatch import Answer, Gate
from ccproxy.upstream.plan import Rendering

UPSTREAM = Upstream("up", "http://up.test/v1/chat/completions", None, timeout=30.0)


class _Response:
    """An upstream response whose body is handed over in given reads."""

    code = 200
    headers = Headers({b"content-type": [b"text/event-stream"]})

    def __init__(self) -> None:
        self.transport = StringTransport()
        self.protocol: Any = None

    def deliverBody(self, protocol: Any) -> None:
        self.protocol = protocol
        protocol.makeConnection(self.transport)


def _stream(reads: list[bytes], clock: Clock, turnEnd: TurnEnd, turns: bool = True) -> bytes:
    """One stream relayed whole; the bytes the client got. `turns`: each read in a
    reactor turn of its own (else all in one turn)."""
    transport = StringTransport()
    channel = HTTPChannel()
    channel.makeConnection(transport)
    request = Request(channel, parsePOSTFormSubmission=False)
    request.method, request.clientproto = b"POST", b"HTTP/1.1"
    response = _Response()
    gate = Gate(clock, "up", Policy())
    answer = Answer(gate, UPSTREAM, None, response, None, Rendering("msg_1", "claude-x"))  # type: ignore[arg-type]
    relay = StreamRelay(request, clock, 10.0, 1 << 20, turnEnd=turnEnd)
    done = Deferred.fromCoroutine(relay.relay(answer))
    protocol = response.protocol
    for read in reads:
        protocol.dataReceived(read)
        if turns:
            clock.advance(0)  # the end of the reactor's turn: the batch is written
    clock.advance(0)
    protocol.connectionLost(Failure(ResponseDone()))
    assert done.called and relay.verdict is not None and relay.verdict.ok, relay.verdict
    return transport.value()


def _cut(body: bytes, low: int, high: int, seed: int = 18) -> list[bytes]:
    rng = random.Random(seed)
    reads, at = [], 0
    while at < len(body):
        size = rng.randint(low, high)
        reads.append(body[at : at + size])
        at += size
    return reads


def _best(reads: list[bytes], streams: int, repeat: int, turns: bool = True) -> float:
    """Seconds of CPU per stream, best of `repeat` runs of `streams` streams;
    `turns`: each read in a reactor turn of its own (else all in one turn)."""
    clock, turnEnd = Clock(), None
    best = float("inf")
    for _ in range(repeat):
        clock = Clock()
        turnEnd = TurnEnd(clock)
        started = time.process_time()
        for _ in range(streams):
            _stream(reads, clock, turnEnd, turns)
        best = min(best, (time.process_time() - started) / streams)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--body", help="an SSE body to feed (default: bench/payloads.py's)")
    parser.add_argument("--streams", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    if args.body:
        with open(args.body, "rb") as fh:
            body = fh.read()
    else:
        body = b"".join(payloads.sse_frames())
    chunks = body.count(b"\n\n") - 1  # [DONE] is no chunk
    empty = _best([b"data: [DONE]\n\n"], args.streams, args.repeat)
    print(f"body: {len(body)} bytes, {chunks} chunks; per stream alone: {empty * 1e6:.1f} us")
    frames = [frame + b"\n\n" for frame in body.split(b"\n\n") if frame]
    for label, reads, turns in (
        ("one read", [body], False),
        ("64 KB reads", _cut(body, 65536, 65536), True),
        ("1-3 KB reads", _cut(body, 1024, 3072), True),
        ("chunk reads", frames, False),
    ):
        if label == "64 KB reads" and len(reads) == 1:
            continue
        whole = _best(reads, args.streams, args.repeat, turns)
        perChunk = (whole - empty) / chunks
        print(
            f"{label:>12}: {len(reads):3d} reads, {whole * 1e6:7.1f} us per stream, "
            f"{perChunk * 1e6:5.2f} us per chunk"
        )


if __name__ == "__main__":
    main()
