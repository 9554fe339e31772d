"""The client side of an answer streamed to Claude Code: upstream bytes -> events ->
client bytes, as they arrive.

`StreamRelay` owns a started stream from its head to its end: the status and
headers (sent the moment the upstream answers, or after `head_wait` seconds without
its headers, with `message_start`: `holdHead`), each upstream read parsed
(`SSEParser`), translated (`StreamTranslator`) and written as one batch of frames
(`EventWriter`), a ping in every silence, backpressure from a slow reader to the
upstream, and every way a stream can end — done, an upstream error inside it, a
line too long, silence past the timeout, the connection cut, `max_duration`, or a
client that left. It answers with a `Verdict` for the breaker and the access log.

Once the first frame is out the HTTP status is spent: every later failure is an
`event: error` frame written here, never an exception reaching twisted.web (which
would splice an HTML error page into the stream), and no `message_stop`, so
Claude Code retries rather than trusting half an answer.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, Protocol

import orjson
from attrs import frozen
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.web.iweb import IRequest

from ccproxy.compat import SendTogether, keepOnlyHeaders, setOwnHeader
from ccproxy.errors import KEY_SHAPES, ProxyError, badGateway, committedErrorType
from ccproxy.relay.sse import SSEFrames, SSEParser
from ccproxy.translate.passthrough import MessageStream
from ccproxy.translate.stream import StreamTranslator, eventsForMessage, notJSON
from ccproxy.translate.toolsearch import Blocks, ToolSearch, parsedInput
from ccproxy.upstream.dispatch import Answer


def encodeEvent(event: dict[str, Any]) -> bytes:
    """One Anthropic SSE frame, with the `event:` line Claude Code requires."""
    return b"event: " + event["type"].encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"


PING = encodeEvent({"type": "ping"})

KEPT_RESPONSE_HEADERS = (b"request-id",)
"""The answer's headers a committed stream keeps (see `StreamRelay.commit`)."""


_setContentType = setOwnHeader(b"content-type")
_setCacheControl = setOwnHeader(b"cache-control")
_setAccelBuffering = setOwnHeader(b"x-accel-buffering")
"""The stream's own headers, set without Twisted's sanitizing of each name and value
(`compat.setOwnHeader`): about a microsecond each, on every stream's head."""


def startStream(request: IRequest) -> None:
    """Commit to a 200 event stream (headers go out with the first write)."""
    request.setResponseCode(200)
    _setContentType(request, b"text/event-stream; charset=utf-8")
    _setCacheControl(request, b"no-cache")
    _setAccelBuffering(request, b"no")


class TurnEnd:
    """Calls made once the reactor's current turn is over, all of them on one timer:
    a turn that reads a hundred dripping streams schedules one call, not a hundred."""

    log = Logger()

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self._due: list[Callable[[], None]] = []
        self._call: IDelayedCall | None = None

    def add(self, call: Callable[[], None]) -> None:
        self._due.append(call)
        if self._call is None:
            self._call = self._clock.callLater(0, self._run)

    def _run(self) -> None:
        self._call = None
        due, self._due = self._due, []
        for call in due:
            try:
                call()
            except Exception:  # one stream's bug is not every other stream's
                self.log.failure("Unexpected error flushing a stream")


class EventWriter:
    """Writes Anthropic events to one client, and a ping after each `pingInterval`
    seconds in which nothing was written, so idle timers on the way never fire."""

    def __init__(
        self,
        request: IRequest,
        clock: IReactorTime,
        pingInterval: float,
        capture: int = 0,
        redact: Callable[[str], str] = KEY_SHAPES.redact,
        turnEnd: TurnEnd | None = None,
    ) -> None:
        self._request = request
        self._redact = redact
        self._clock = clock
        self._turnEnd = turnEnd or TurnEnd(clock)
        self._queued = False
        self._interval = pingInterval
        self._now = clock.seconds
        self._wrote = -math.inf
        """When frames were last written (none yet: never)."""
        self._timer: IDelayedCall = clock.callLater(pingInterval, self._ping)
        self._capture = capture
        self._captured = 0
        self._copy: list[bytes] = []
        self.queue: list[dict[str, Any] | bytes] = []
        """What goes out at the next `flush`: events, encoded then, and frames
        already encoded. A translator may add to it directly (`feedInto`), joining
        a delta into its block's last one while that is not sent yet. The same
        list throughout: `flush` empties it."""

    @property
    def copy(self) -> bytes | None:
        """The first `capture` bytes written, for payload logging (None when off)."""
        return b"".join(self._copy) if self._capture else None

    def add(self, events: Iterable[dict[str, Any]]) -> None:
        """Queue events; they go out at the next `flush`. A burst of upstream chunks
        read at once becomes one write (and one HTTP chunk), not one per event."""
        self.queue.extend(events)

    def write(self, events: Iterable[dict[str, Any]], last: bool = False) -> None:
        """Queue events and send everything queued. `last`: the stream's last
        events, which leave with its end: the request's finish puts them on the
        wire with the closing chunk (`ccproxy.web.app._answer`), one send, not two."""
        self.add(events)
        self.flush(last)

    def flushSoon(self) -> None:
        """Send what is queued once this reactor turn is over. An upstream's stream
        arrives one HTTP chunk per event, and its parser is called once per chunk:
        a read holding 200 of them is one write to the client (one HTTP chunk, one
        trip through twisted.web), not 200. A slow stream's chunk, alone in its
        read, still goes out within the same turn of the reactor."""
        if self.queue and not self._queued:
            self._queued = True
            self._turnEnd.add(self._flushSoon)

    def _flushSoon(self) -> None:
        if self._queued:  # else flushed or stopped meanwhile
            self.flush()

    def flush(self, last: bool = False) -> None:
        self._queued = False
        queue = self.queue
        if not queue:
            return
        frames = b"".join([e if type(e) is bytes else encodeEvent(e) for e in queue])
        queue.clear()
        self.writeFrames(frames, last)

    def addFrame(self, frame: bytes) -> None:
        """Queue a frame already encoded (an upstream's, passed on as it came)."""
        self.queue.append(frame)

    def writeFrames(self, frames: bytes, last: bool = False) -> None:
        """Send frames already encoded (`last`: see `write`)."""
        if last:
            self._request.write(frames)
        else:
            with SendTogether.of(self._request):
                self._request.write(frames)
        # Noted, not the timer moved (a reactor call each write): `_ping` waits
        # for the rest of the interval when it comes too early.
        self._wrote = self._now()
        if self._captured < self._capture:
            piece = frames[: self._capture - self._captured]
            self._copy.append(piece)
            self._captured += len(piece)

    def writeError(self, error: ProxyError, errorType: str | None = None) -> None:
        """End a started stream with an error Claude Code reads (and retries on); its
        message goes through `redact`, as an upstream's words may hold its key.
        `errorType`: the frame's type (by default `overloaded_error` or `api_error`,
        for a stream that broke off; a prompt too long for the model keeps its own
        type: Claude Code compacts on it)."""
        if errorType is None:
            errorType = "api_error"
            if error.errorType == "overloaded_error" or error.verbatim:
                errorType = error.errorType
        message = self._redact(error.message)
        self.write([{"type": "error", "error": {"type": errorType, "message": message}}])

    def stop(self) -> None:
        self._queued = False
        if self._timer.active():
            self._timer.cancel()

    def _ping(self) -> None:
        now = self._now()
        # A write "after now" (the wall clock stepped back) counts as written now.
        self._wrote = wrote = min(self._wrote, now)
        rest = wrote + self._interval - now
        if rest > 0:  # something went out within the interval: wait for the rest
            self._timer = self._clock.callLater(rest, self._ping)
            return
        self._request.write(PING)
        self._timer = self._clock.callLater(self._interval, self._ping)


@frozen
class Verdict:
    """How a relayed answer ended, for the breaker and the access log."""

    ok: bool | None
    """True: whole; False: the upstream broke it off; None: no verdict (the client
    left, or `max_duration` ran out)."""
    errorType: str | None = None
    errorMessage: str | None = None
    usage: dict[str, Any] | None = None
    """Anthropic usage of what was relayed, when the upstream said."""
    copy: bytes | None = None
    """The first bytes sent, when payload logging is on."""


class StreamRelay:
    """Relays one 2xx answer to one client as an Anthropic event stream.

    Made before the answer is asked for: `holdHead` commits the client's stream
    (`200`, `message_start`, pings) if no upstream has answered within `head_wait`;
    after that, whatever the dispatch ends with reaches the client inside the
    stream (`relay` continues it, `refuse` ends it with an `event: error`). `close`
    ends the wait and the pings on every path.

    `verdict` is set however the relay ends, a client that left included (then
    `relay` raises `CancelledError` after setting it).
    """

    def __init__(
        self,
        request: IRequest,
        clock: IReactorTime,
        pingInterval: float,
        maxLineBytes: int,
        capture: int = 0,
        redact: Callable[[str], str] = KEY_SHAPES.redact,
        onCommit: Callable[[], None] | None = None,
        turnEnd: TurnEnd | None = None,
    ) -> None:
        """`onCommit` is called as the stream's head is made, before it goes out
        (it may still set headers); `turnEnd`: the streams' shared end-of-turn
        flush (one of its own without)."""
        self._request = request
        self._turnEnd = turnEnd
        self._clock = clock
        self._onCommit = onCommit
        self._pingInterval = pingInterval
        self._maxLineBytes = maxLineBytes
        self._capture = capture
        self._redact = redact
        self._parser: SSEParser | None = None
        self._waiting: Deferred[Answer] | None = None
        """The next round's upstream answer, while ccproxy's tool search waits for it."""
        self._expiry: ProxyError | None = None
        self._headTimer: IDelayedCall | None = None
        self._start: list[dict[str, Any]] = []
        self._writer: EventWriter | None = None
        self.verdict: Verdict | None = None
        self.chunks = 0
        """Upstream chunks relayed so far (about one token each): the status page's
        tokens so far of a stream whose usage is not known until its end."""

    @property
    def committed(self) -> bool:
        """Whether the client has its `200` and `message_start` (the status is spent)."""
        return self._writer is not None

    def holdHead(self, seconds: float, start: list[dict[str, Any]]) -> None:
        """Commit the stream with `start` (its `message_start`) unless an answer
        begins within `seconds`."""
        self._start = start
        self._headTimer = self._clock.callLater(seconds, self.commit)

    def commit(self) -> None:
        """Commit the client's stream now: `200`, the event-stream head and
        `message_start` on the wire, and a ping after each silent `pingInterval`."""
        self._stopHeadTimer()
        if self._writer is not None:
            return
        self._head()
        self._writer = EventWriter(
            self._request,
            self._clock,
            self._pingInterval,
            self._capture,
            self._redact,
            self._turnEnd,
        )
        if self._start:
            self._writer.write(self._start)  # the head with it, at once
        else:  # a passed-through stream: its message_start is the upstream's
            with SendTogether.of(self._request):
                self._request.write(b"")  # the status and headers alone, now
        # The head is out: twisted.web reads its headers no more, and a stream lives
        # for minutes. The request id stays (`requestId` reads it back).
        keepOnlyHeaders(self._request.responseHeaders, KEPT_RESPONSE_HEADERS)

    def refuse(self, error: ProxyError, timeout: bool = False) -> Verdict:
        """End a committed stream whose answer never came (`error`: the upstream's
        refusal, its silence, a failed connection, or `max_duration` with
        `timeout`) with the `event: error` its status would have meant."""
        writer = self._writer
        assert writer is not None, "only a committed stream is refused inside it"
        writer.writeError(error, committedErrorType(error))
        writer.stop()
        errorType = "timeout" if timeout else error.errorType
        self.verdict = Verdict(None, errorType, error.message, copy=writer.copy)
        return self.verdict

    def close(self) -> None:
        """The request is over, however it ended: no commit any more, no pings."""
        self._stopHeadTimer()
        if self._writer is not None:
            self._writer.stop()

    def _head(self) -> None:
        startStream(self._request)
        if self._onCommit is not None:
            self._onCommit()

    def _stopHeadTimer(self) -> None:
        timer, self._headTimer = self._headTimer, None
        if timer is not None and timer.active():
            timer.cancel()

    def expire(self, error: ProxyError) -> None:
        """`max_duration` ran out: end the stream now with `error` (not the
        upstream's fault, so no verdict for its breaker)."""
        self._expiry = error
        if self._parser is not None:
            self._parser.fail(error)
        elif self._waiting is not None:
            self._waiting.cancel()

    def relay(self, answer: Answer, rounds: Rounds | None = None) -> Coroutine[Any, Any, Verdict]:
        """Relay `answer` whole; its JSON `message` as events when it was read whole
        (a server that ignored `stream: true`), else its event stream. `rounds`:
        ccproxy's tool search, whose calls continue the answer with more upstream
        answers.

        A plain method returning the coroutine that relays: no frame of its own
        waits while the stream lives (memory per live stream, issue 18)."""
        self._stopHeadTimer()
        if answer.message is not None:
            return self._relayMessage(answer)
        return self._relayStream(answer, rounds)

    async def _relayMessage(self, answer: Answer) -> Verdict:
        writer = self._writer
        events = eventsForMessage(answer.message or {})
        if writer is not None:  # committed: its message_start is out already
            events = events[1:]
        try:
            frames = b"".join(encodeEvent(e) for e in events)
        except orjson.JSONEncodeError:
            raise nestedTooDeepAnswer(answer.upstream.name) from None
        if writer is None:
            self._head()
            self._request.write(frames)
            copy = frames[: self._capture] if self._capture else None
        else:
            writer.stop()
            writer.writeFrames(frames)
            copy = writer.copy
        self.verdict = Verdict(True, copy=copy)
        return self.verdict

    async def _relayStream(self, answer: Answer, rounds: Rounds | None) -> Verdict:
        translator = answer.rendering.streamTranslator(answer.upstream, answer.target)
        if isinstance(translator, MessageStream):
            return await self._passStream(answer, translator)
        if self._writer is None:
            self._start = translator.start()
            self.commit()
        writer = self._writer
        assert writer is not None
        blocks = Blocks() if rounds is not None else None

        def emit(events: list[dict[str, Any]]) -> None:
            writer.add(events)
            if blocks is not None:
                blocks.add(events)

        ok: bool | None = None
        errorType = errorMessage = None
        try:
            while True:
                parser = self._chatParser(
                    answer, translator, writer, emit if blocks is not None else None
                )
                await self._drain(answer, parser)
                sawDone = parser.sawDone
                calls = translator.serverCalls() if rounds is not None else []
                if rounds is None or not calls:
                    writer.write(self._named(answer, translator.finish, sawDone), last=True)
                    break
                emit(self._named(answer, translator.endBlocks, sawDone))
                for blockId, arguments in calls:
                    emit(translator.addBlock(rounds.search.result(blockId, parsedInput(arguments))))
                if translator.clientCalls() or not rounds.more():
                    paused = None if translator.clientCalls() else "pause_turn"
                    writer.write(translator.endMessage(paused), last=True)
                    break
                writer.flush()
                translator.nextRound()
                answer = await self._next(rounds, answer, blocks.content if blocks else [])
            ok = True
        except ProxyError as e:
            ok, errorType, errorMessage = self._broken(writer, e)
        finally:
            self._parser = None
            writer.stop()
            usage = translator.knownUsage()
            self.verdict = Verdict(ok, errorType, errorMessage, usage, writer.copy)
        return self.verdict

    async def _passStream(self, answer: Answer, stream: MessageStream) -> Verdict:
        """Relay an Anthropic event stream as it came, frame by frame (`SSEFrames`),
        reading only what `MessageStream` needs; the upstream's `message_start` is
        held back when the client has ccproxy's already."""
        stream.skipStart = self._writer is not None
        if self._writer is None:
            self._start = []
            self.commit()
        writer = self._writer
        assert writer is not None
        upstream = answer.upstream

        def onFrame(event: bytes, data: bytes, frame: bytes) -> None:
            try:
                sent = stream.toSend(event, data, frame)
            except ProxyError as e:  # the upstream's own error, said inside the stream
                raise e.naming(upstream.name) from None
            self.chunks += 1
            if sent is not None:
                writer.addFrame(sent)

        def onUnread(frames: bytes) -> None:
            self.chunks += max(1, frames.count(b"\n\n"))
            writer.addFrame(frames)

        ok: bool | None = None
        errorType = errorMessage = None
        try:
            parser = self._parser = SSEFrames(
                onFrame,
                self._clock,
                upstream.timeout,
                upstream.name,
                self._maxLineBytes,
                onBatch=writer.flushSoon,
                wants=stream.reads,
                onUnread=onUnread,
            )
            await self._drain(answer, parser)
            writer.flush()
            try:
                stream.finish()
            except ProxyError as e:
                raise e.naming(upstream.name) from None
            ok = True
        except ProxyError as e:
            ok, errorType, errorMessage = self._broken(writer, e)
        finally:
            self._parser = None
            writer.stop()
            self.verdict = Verdict(ok, errorType, errorMessage, stream.knownUsage(), writer.copy)
        return self.verdict

    def _broken(self, writer: EventWriter, error: ProxyError) -> tuple[bool | None, str, str]:
        """A started stream that failed: ended with `event: error`; its verdict (no
        verdict when `max_duration` ran out: not the upstream's fault), error type
        and message."""
        writer.writeError(error)
        if self._expiry is not None:
            return None, "timeout", error.message
        return False, error.errorType, error.message

    async def _next(self, rounds: Rounds, answer: Answer, prefix: list[dict[str, Any]]) -> Answer:
        """The next round's answer; `max_duration` running out meanwhile ends it."""
        waiting = self._waiting = Deferred.fromCoroutine(rounds.next(answer, list(prefix)))
        try:
            return await waiting
        except CancelledError:
            if self._expiry is None:
                raise  # the client left
            raise self._expiry from None
        finally:
            self._waiting = None

    def _chatParser(
        self,
        answer: Answer,
        translator: StreamTranslator,
        writer: EventWriter,
        emit: Callable[[list[dict[str, Any]]], None] | None,
    ) -> SSEParser:
        """The parser of one upstream answer's stream, each read's chunks through
        `translator` (`sawDone`, once it ended: whether with `[DONE]`). `emit`:
        where each chunk's events go when something besides the writer reads them
        (ccproxy's tool search); without it, into the writer's queue, where the
        deltas of one read join."""
        upstream = answer.upstream
        feedPayloads = translator.feedPayloads
        queue = writer.queue
        loads = orjson.loads

        def onEvents(payloads: list[bytes]) -> None:
            # A read's chunks in one call: counted at once, then each translated.
            self.chunks += len(payloads)
            if emit is None:
                try:
                    feedPayloads(payloads, queue)
                except ProxyError as e:  # not JSON, or the upstream's own error in it
                    raise e.naming(upstream.name) from None
                return
            for data in payloads:  # each chunk's events to `emit` on their own
                try:
                    chunk = loads(data)
                except orjson.JSONDecodeError:
                    raise notJSON(data).naming(upstream.name) from None
                try:
                    emit(translator.feed(chunk))
                except ProxyError as e:  # the upstream's own error, said inside the stream
                    raise e.naming(upstream.name) from None

        parser = self._parser = SSEParser(
            _ignored,  # a read's events go to onEvents together
            self._clock,
            upstream.timeout,
            upstream.name,
            self._maxLineBytes,
            onBatch=writer.flushSoon,
            onEvents=onEvents,
        )
        return parser

    def _drain(self, answer: Answer, parser: SSEParser) -> Deferred[None]:
        """Feed `answer`'s body to `parser`, the client's reading pacing the
        upstream's sending; what fires when it has ended (`parser.finished`),
        after `_drained`. A plain method, not a coroutine: no frame of its own
        waits while the stream lives (memory per live stream, issue 18)."""
        # The upstream's headers were read at its head (dispatch: the content type,
        # gzip); nothing reads them while the stream lasts, minutes.
        keepOnlyHeaders(answer.response.headers, ())
        parser.ending = SendTogether.of(self._request)
        try:
            answer.response.deliverBody(parser)
            # A slow reader pauses the upstream instead of making us buffer its stream.
            self._request.registerProducer(parser.transport, True)
        except BaseException:
            self._drained(None)
            raise
        return parser.finished.addBoth(self._drained)

    def _drained(self, result: Any) -> Any:
        """The body has ended, however (`result`, passed on): the client no longer
        paces the upstream."""
        self._parser = None
        request = self._request
        if request.channel is not None:  # None once the client has gone
            request.unregisterProducer()
        return result

    @staticmethod
    def _named(
        answer: Answer, end: Callable[[bool], list[dict[str, Any]]], sawDone: bool
    ) -> list[dict[str, Any]]:
        """`end(sawDone)`'s events; a stream cut short is the upstream's fault, named."""
        try:
            return end(sawDone)
        except ProxyError as e:
            raise e.naming(answer.upstream.name) from None


def _ignored(data: bytes) -> None:
    """`SSEParser`'s event callback where a read's events go to `onEvents` (a
    function, not a lambda made per stream)."""


class Rounds(Protocol):
    """ccproxy's tool search inside one streamed answer (`ccproxy.web.searching`)."""

    search: ToolSearch

    def more(self) -> bool:
        """Whether the answer may go on after this round's searches."""

    async def next(self, previous: Answer, prefix: list[dict[str, Any]]) -> Answer:
        """The upstream answer that continues an answer begun with `prefix` (the
        previous round's slot given back first)."""


def nestedTooDeepAnswer(upstream: str) -> ProxyError:
    """An answer nested deeper than orjson can write (over 250 levels)."""
    return badGateway(upstream, "the answer nests values too deeply (over 250 levels)")
