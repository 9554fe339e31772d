"""The stream relay on its own: a real twisted.web request on a `StringTransport`,
an upstream response fed by hand, and a `Clock` — no app, no dispatcher."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import HTTPChannel
from twisted.web.http_headers import Headers
from twisted.web.server import Request

from ccproxy.config.model import Upstream
from ccproxy.config.policy import Policy
from ccproxy.errors import ProxyError
from ccproxy.relay.relay import PING, EventWriter, StreamRelay, Verdict
from ccproxy.upstream.dispatch import Answer, Gate
from ccproxy.upstream.plan import Rendering
from tests.support.harness import parseSSE, resultOf

UPSTREAM = Upstream("up", "http://up.test/v1/chat/completions", None, timeout=30.0)


class Upstream_:
    """An upstream response whose body the test feeds, recording an abort."""

    def __init__(self, contentType: bytes = b"text/event-stream") -> None:
        self.code = 200
        self.headers = Headers({b"content-type": [contentType]})
        self.transport = StringTransport()
        self.protocol: Any = None

    def deliverBody(self, protocol: Any) -> None:
        self.protocol = protocol
        protocol.makeConnection(self.transport)

    def send(self, *chunks: dict[str, Any] | bytes) -> None:
        for chunk in chunks:
            data = chunk if isinstance(chunk, bytes) else b"data: " + orjson.dumps(chunk) + b"\n\n"
            self.protocol.dataReceived(data)

    def end(self) -> None:
        self.protocol.connectionLost(Failure(ResponseDone()))

    @property
    def aborted(self) -> bool:
        return self.transport.producerState == "stopped"


class Client:
    """A client's side: one real twisted.web request on a StringTransport."""

    def __init__(self) -> None:
        self.transport = StringTransport()
        channel = HTTPChannel()
        channel.makeConnection(self.transport)
        self.request = Request(channel, parsePOSTFormSubmission=False)
        self.request.method, self.request.clientproto = b"POST", b"HTTP/1.1"

    def events(self) -> list[tuple[str, Any]]:
        raw = self.transport.value()
        head, _, body = raw.partition(b"\r\n\r\n")
        assert b"200 OK" in head.split(b"\r\n")[0]
        return parseSSE(_unchunk(body))


def _unchunk(body: bytes) -> bytes:
    out = b""
    while body:
        size, _, rest = body.partition(b"\r\n")
        n = int(size, 16)
        out, body = out + rest[:n], rest[n + 2 :]
    return out


def chunk(content: str | None = None, finish: str | None = None, **extra: Any) -> dict[str, Any]:
    delta = {} if content is None else {"content": content}
    return {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}


USAGE = {"usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}}


class Rig:
    def __init__(self, message: dict[str, Any] | None = None, ping: float = 10.0) -> None:
        self.clock = Clock()
        self.client = Client()
        self.upstream = Upstream_()
        gate = Gate(self.clock, "up", Policy())
        rendering = Rendering("msg_1", "claude-x")
        self.answer = Answer(gate, UPSTREAM, None, self.upstream, message, rendering)  # type: ignore[arg-type]
        self.relay = StreamRelay(self.client.request, self.clock, ping, 1 << 20)
        self.done: Deferred[Verdict] = Deferred.fromCoroutine(self.relay.relay(self.answer))


def test_a_whole_stream_is_relayed_and_its_verdict_is_success() -> None:
    rig = Rig()
    # The head and message_start are out before the upstream has sent a byte.
    assert [name for name, _ in rig.client.events()] == ["message_start"]
    rig.upstream.send(chunk("Hel"), chunk("lo"), chunk(finish="stop", **USAGE), b"data: [DONE]\n\n")
    rig.upstream.end()
    verdict = resultOf(rig.done)
    assert verdict.ok is True and verdict.errorType is None
    assert verdict.usage["input_tokens"] == 5 and verdict.usage["output_tokens"] == 2
    names = [name for name, _ in rig.client.events()]
    assert names[-2:] == ["message_delta", "message_stop"]
    text = "".join(
        d["delta"].get("text", "") for n, d in rig.client.events() if n == "content_block_delta"
    )
    assert text == "Hello"


def test_a_relayed_stream_keeps_none_of_its_upstream_s_headers() -> None:
    """Read at the upstream's head (its content type), they are not kept for the
    stream's minutes (issue 18: memory per live stream)."""
    rig = Rig()
    rig.upstream.send(chunk("Hel"))
    assert list(rig.upstream.headers.getAllRawHeaders()) == []
    rig.upstream.send(chunk(finish="stop", **USAGE), b"data: [DONE]\n\n")
    rig.upstream.end()
    assert resultOf(rig.done).ok is True


def test_one_read_is_one_write() -> None:
    rig = Rig()
    before = rig.client.transport.value()
    rig.upstream.protocol.dataReceived(
        b"".join(b"data: " + orjson.dumps(chunk(c)) + b"\n\n" for c in "abc")
    )
    rig.clock.advance(0)  # the reactor's turn ends
    added = rig.client.transport.value()[len(before) :]
    assert added.count(b"\r\n") == 2  # one HTTP chunk: its size line and its end


def test_a_commit_with_no_start_of_its_own_sends_the_head_now() -> None:
    """A passed-through stream's message_start is the upstream's own, which comes
    later: the status and headers go out at the commit all the same."""
    client = Client()
    relay = StreamRelay(client.request, Clock(), 10.0, 1 << 20)
    relay.holdHead(5.0, [])
    relay.commit()
    assert client.transport.value().startswith(b"HTTP/1.1 200 OK\r\n")
    assert client.transport.value().endswith(b"\r\n\r\n")  # the head alone
    relay.close()


def test_the_chunks_of_one_read_are_one_write() -> None:
    """An upstream's chunked body reaches the parser one HTTP chunk (one event) at a
    time, all within the reactor's turn that read them: one write to the client at
    the end of that turn, not one per chunk."""
    rig = Rig()
    before = rig.client.transport.value()
    for c in "abc":
        rig.upstream.protocol.dataReceived(b"data: " + orjson.dumps(chunk(c)) + b"\n\n")
    assert rig.client.transport.value() == before  # nothing yet: the turn goes on
    rig.clock.advance(0)
    added = rig.client.transport.value()[len(before) :]
    assert added.count(b"\r\n") == 2  # one HTTP chunk
    assert added.count(b"text_delta") == 1  # the deltas of one write, joined
    assert b'"text":"abc"' in added
    rig.upstream.protocol.dataReceived(b"data: " + orjson.dumps(chunk("d")) + b"\n\n")
    rig.clock.advance(0)  # a slow stream's lone chunk goes out in its own turn
    assert rig.client.transport.value().count(b"text_delta") == 2
    assert rig.client.transport.value().endswith(b'"text":"d"}}\n\n\r\n')


@pytest.mark.parametrize(
    ("feed", "says", "ok"),
    [
        (
            lambda u: u.send({"error": {"message": "model overloaded", "code": 503}}),
            "up: model overloaded",
            False,
        ),
        (
            lambda u: u.send(b"data: {not json\n\n"),
            "up: the stream holds a line that is not JSON",
            False,
        ),
        (
            lambda u: u.protocol.connectionLost(Failure(ConnectionError("reset"))),
            "up: the connection was lost in the middle of the stream",
            False,
        ),
    ],
)
def test_a_stream_that_breaks_ends_with_an_error_event(feed: Any, says: str, ok: bool) -> None:
    rig = Rig()
    rig.upstream.send(chunk("partial"))
    feed(rig.upstream)
    verdict = resultOf(rig.done)
    assert verdict.ok is ok
    name, data = rig.client.events()[-1]
    assert name == "error" and says in data["error"]["message"]
    assert "message_stop" not in [n for n, _ in rig.client.events()]


def test_an_error_inside_a_read_follows_that_reads_text() -> None:
    """The deltas queued (and joined) before an error chunk of the same read go
    out first, then the error event, and no message_stop."""
    rig = Rig()
    error = {"error": {"message": "model overloaded", "code": 503}}
    rig.upstream.protocol.dataReceived(
        b"".join(b"data: " + orjson.dumps(c) + b"\n\n" for c in [chunk("a"), chunk("b"), error])
    )
    verdict = resultOf(rig.done)
    assert verdict.ok is False
    names = [n for n, _ in rig.client.events()]
    assert names == ["message_start", "content_block_start", "content_block_delta", "error"]
    assert rig.client.events()[2][1]["delta"] == {"type": "text_delta", "text": "ab"}


def test_a_stream_in_one_read_or_in_many_says_the_same() -> None:
    """However the upstream's body is cut into reads, the client gets the same
    answer; one read gives each block one delta."""
    frames = [
        b"data: " + orjson.dumps(c) + b"\n\n"
        for c in [chunk(t) for t in ["Hel", "lo", " ✓"]] + [chunk(finish="stop", **USAGE)]
    ] + [b"data: [DONE]\n\n"]
    body = b"".join(frames)
    answers = []
    for reads in ([body], [body[i : i + 7] for i in range(0, len(body), 7)]):
        rig = Rig()
        for read in reads:
            rig.upstream.protocol.dataReceived(read)
            rig.clock.advance(0)
        rig.upstream.end()
        assert resultOf(rig.done).ok is True
        events = rig.client.events()
        text = "".join(d["delta"]["text"] for n, d in events if n == "content_block_delta")
        answers.append((text, [n for n, _ in events if n != "content_block_delta"]))
        if len(reads) == 1:
            assert [n for n, _ in events].count("content_block_delta") == 1
    assert (
        answers[0]
        == answers[1]
        == (
            "Hello ✓",
            [
                "message_start",
                "content_block_start",
                "content_block_stop",
                "message_delta",
                "message_stop",
            ],
        )
    )


def test_silence_past_the_timeout_is_an_error_event_and_hangs_up() -> None:
    rig = Rig()
    rig.clock.advance(29.0)
    rig.upstream.send(chunk("still here"))
    rig.clock.advance(29.0)
    assert not rig.done.called
    rig.clock.advance(1.0)
    verdict = resultOf(rig.done)
    assert verdict.ok is False
    assert (
        "no data for 30 s in the middle of the stream"
        in rig.client.events()[-1][1]["error"]["message"]
    )
    assert rig.upstream.aborted


def test_pings_fill_the_silences() -> None:
    rig = Rig(ping=10.0)
    rig.clock.advance(10.0)
    rig.clock.advance(10.0)
    assert rig.client.transport.value().count(PING) == 2
    rig.upstream.send(chunk("x"))
    rig.clock.advance(9.0)
    assert rig.client.transport.value().count(PING) == 2  # a write starts the wait over


def test_max_duration_ends_the_stream_without_a_verdict() -> None:
    rig = Rig()
    rig.relay.expire(ProxyError(504, "the request took longer than 60 s"))
    verdict = resultOf(rig.done)
    assert (verdict.ok, verdict.errorType) == (None, "timeout")
    assert rig.client.events()[-1][1]["error"]["message"] == "the request took longer than 60 s"
    assert rig.upstream.aborted


def test_a_client_that_leaves_aborts_the_upstream_with_no_verdict() -> None:
    rig = Rig()
    rig.upstream.send(chunk("a"), USAGE | {"choices": []})
    rig.done.cancel()
    with pytest.raises(CancelledError):
        resultOf(rig.done)
    assert rig.upstream.aborted
    assert rig.relay.verdict is not None
    assert rig.relay.verdict.ok is None
    usage = rig.relay.verdict.usage
    assert usage is not None and usage["output_tokens"] == 2  # what was relayed is counted
    rig.clock.advance(0)  # the turn's end (its flush finds the writer stopped)
    assert rig.clock.getDelayedCalls() == []  # no ping, no silence timer left
    assert rig.client.transport.value().count(b"text_delta") == 0  # nothing after the end


def test_a_whole_message_is_relayed_as_events() -> None:
    message = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-x",
        "content": [{"type": "text", "text": "hi"}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 1, "output_tokens": 1},
    }
    rig = Rig(message=message)
    assert resultOf(rig.done).ok is True
    assert [n for n, _ in rig.client.events()][-1] == "message_stop"


# -- EventWriter --------------------------------------------------------------------


class Sink:
    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(data)


def test_event_writer_batches_and_captures() -> None:
    clock, sink = Clock(), Sink()
    writer = EventWriter(sink, clock, 10.0, capture=40)  # type: ignore[arg-type]
    writer.add([{"type": "ping"}, {"type": "ping"}])
    assert sink.writes == []
    writer.flush()
    assert sink.writes == [PING + PING]
    assert writer.copy == (PING + PING)[:40]
    writer.stop()


def test_event_writer_pings_exactly_an_interval_after_the_last_write() -> None:
    """A write only notes its time; the ping timer, come too early, waits for the
    rest: a ping still goes out `pingInterval` after the last write, never sooner,
    then one each interval, and none once stopped."""
    clock, sink = Clock(), Sink()
    writer = EventWriter(sink, clock, 10.0)  # type: ignore[arg-type]
    clock.advance(9.0)
    writer.write([{"type": "a"}])
    clock.advance(1.0)  # the first timer: one second after a write
    assert PING not in sink.writes
    clock.advance(8.999)
    assert PING not in sink.writes
    clock.advance(0.001)
    assert sink.writes.count(PING) == 1  # at 19, ten seconds after the write
    clock.advance(10.0)
    assert sink.writes.count(PING) == 2
    for _ in range(5):  # a steady trickle of writes: no ping
        clock.advance(4.0)
        writer.write([{"type": "b"}])
    assert sink.writes.count(PING) == 2
    assert len(clock.getDelayedCalls()) == 1
    writer.stop()
    assert clock.getDelayedCalls() == []
    clock.advance(100.0)
    assert sink.writes.count(PING) == 2


def test_event_writer_sends_at_once_except_the_last_events() -> None:
    """Each write is put on the wire at once (`SendTogether`); the stream's last events
    are left for the request's finish, which sends them with the closing chunk."""
    from twisted.internet.interfaces import IWriteDescriptor
    from zope.interface import implementer

    @implementer(IWriteDescriptor)
    class Socket:
        sends = 0
        connected = True
        disconnecting = False
        dataBuffer = b""
        _tempDataBuffer: list[bytes] = []

        def doWrite(self) -> None:
            self.sends += 1
            self._tempDataBuffer.clear()

    class Channel:
        transport = Socket()

    class Client(Sink):
        channel = Channel()

        def write(self, data: bytes) -> None:
            super().write(data)
            self.channel.transport._tempDataBuffer.append(data)

    client, clock = Client(), Clock()
    writer = EventWriter(client, clock, 10.0)  # type: ignore[arg-type]
    writer.write([{"type": "a"}])
    assert Channel.transport.sends == 1
    writer.write([{"type": "message_stop"}], last=True)
    assert Channel.transport.sends == 1  # buffered, for the finish's send
    assert client.writes[-1].startswith(b"event: message_stop")
    writer.stop()


@pytest.mark.parametrize(
    ("errorType", "sent"),
    [
        ("overloaded_error", "overloaded_error"),
        ("rate_limit_error", "api_error"),
        ("api_error", "api_error"),
    ],
)
def test_event_writer_errors_are_types_claude_code_retries(errorType: str, sent: str) -> None:
    sink = Sink()
    writer = EventWriter(sink, Clock(), 10.0)  # type: ignore[arg-type]
    writer.writeError(ProxyError(529, "busy", errorType))
    assert parseSSE(sink.writes[0]) == [
        ("error", {"type": "error", "error": {"type": sent, "message": "busy"}})
    ]
    writer.stop()
