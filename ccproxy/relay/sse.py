"""Server-sent events from the upstream: its byte stream parsed into `data` payloads.

The parser is a line protocol fed with the raw response body, so any split of the
byte stream (across TCP chunks, inside a multi-byte UTF-8 character) gives the same
events: lines are cut on bytes and a payload is decoded only once whole. It splits
lines itself rather than through `LineOnlyReceiver`, which joins the partial line
to each new read: a 4 MiB line (a file written by a tool call) arriving in TCP-sized
reads cost 2.1 s of CPU that way, and 16 MiB about 35 s. Here each byte is joined
once. What
every body reader shares (silence timeout, cancellation, a lost connection) comes
from `ccproxy.upstream.client.BodyReader`.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss

from ccproxy.config.model import DEFAULT_MAX_LINE_BYTES
from ccproxy.errors import badGateway
from ccproxy.upstream.client import BodyReader

_DONE = b"[DONE]"


class SSEParser(BodyReader):
    """Parses an upstream's `text/event-stream` body into `data` payloads.

    `onData` gets each event's data as bytes (multi-line data joined by newlines),
    or `onEvents`, when given, the data of one read's events in one list, in
    order (an error it raises stops the stream as `onData`'s would); `onBatch` is
    called once the events of one read have all been handed over;
    `[DONE]`, comments (`: keep-alive`) and blank keep-alive lines are consumed here.
    `finished` fires when the body ends, or fails with a `ProxyError` (a line over
    the limit, silence past the timeout, the connection lost, an error raised by
    `onData`). Cancelling `finished` aborts the upstream connection.
    """

    what = "the stream"

    def __init__(
        self,
        onData: Callable[[bytes], None],
        clock: IReactorTime,
        timeout: float,
        upstream: str,
        maxLineLength: int = DEFAULT_MAX_LINE_BYTES,
        onBatch: Callable[[], None] = lambda: None,
        onEvents: Callable[[list[bytes]], None] | None = None,
    ) -> None:
        BodyReader.__init__(self, clock, upstream, timeout)
        self.MAX_LENGTH = maxLineLength
        self._partial: list[bytes] = []
        """The line being read, in the pieces it came in (no newline yet)."""
        self._partialSize = 0
        self._onData = onData
        self._onEvents = onEvents or self._eachEvent
        self._onBatch = onBatch
        self._lines: list[bytes] = []
        self._eventSize = 0
        """Bytes of the data lines of the event being read."""
        self.sawDone = False

    _oneEventReads = True
    """Whether a read of whole `data: ` events (one, or `_dataOnly`'s) may skip the
    line loop (`SSEFrames`, which reads every field, says no)."""

    def dataReceived(self, data: bytes) -> None:
        if self.finished.called:
            return
        self.heard()
        size = len(data)
        if (
            self._oneEventReads
            and data[:6] == b"data: "
            and data.find(b"\n") == size - 2
            and data[-1:] == b"\n"
            and data[-3:-2] != b"\r"
            and size - 2 <= self.MAX_LENGTH
            and not self._partial
            and not self._lines
        ):
            # An upstream's chunked body: twisted.web hands over each HTTP chunk,
            # one event, on its own. The line loop's steps for its two lines.
            self._dispatchOne(data[6:-2])
        elif not (self._oneEventReads and not self._lines and self._dataOnly(data)):
            self._splitLines(data)
        if not self.finished.called:
            self._onBatch()  # every event of this read has been handed over

    def _dataOnly(self, data: bytes) -> bool:
        """A read whose whole events are all `data: ` lines each followed by a
        blank line, bare `\\n` line ends, none the loop takes for `[DONE]` but
        an exact `data: [DONE]` last, handed over without the line loop: those
        payloads, and the [DONE], are what the loop would find, found with a
        few bytes operations over the read.
        False, nothing done, for any other read, which the loop reads. The part
        after the last event goes through the loop (it ends no event)."""
        partial = self._partial
        if partial:
            # The line held has no newline: only a read with a blank line in it can
            # end an event. Any other is left to the loop before the held line is
            # joined to it: a 16 MiB line read in TCP-sized pieces, joined at every
            # read, cost 1.2 s of CPU (one join: 0.06 s).
            if b"\n\n" not in data or self._partialSize + len(data) > self.MAX_LENGTH:
                return False
            data = b"".join([*partial, data])
        # Without a `\r`, a blank line is two `\n` in a row: none after `end`.
        end = data.rfind(b"\n\n") + 2
        if end == 1 or end > self.MAX_LENGTH or data[:6] != b"data: " or b"\r" in data:
            return False  # (within the limit: so is each line and event before `end`)
        # The events up to `end` are `data: P\n\n` each, P without a newline,
        # just when cutting at each `\n\ndata: ` leaves no newline in any P (a
        # split on one byte, then every other line checked blank, cost twice
        # as much).
        payloads = (data if end == len(data) else data[:end]).split(b"\n\ndata: ")
        payloads[0] = payloads[0][6:]  # (not the read cut at 6: one copy less)
        payloads[-1] = payloads[-1][:-2]
        if b"\n" in b"".join(payloads):
            return False
        done = payloads[-1] == _DONE
        if self._doneAmong(data, end - 8 if done else end - 2):
            return False
        if done:
            payloads.pop()
            self.sawDone = True
        self._partial, self._partialSize = [], 0
        if payloads:
            self._handOver(payloads)
        if end < len(data) and not self.finished.called:
            self._splitLines(data[end:])
        return True

    @staticmethod
    def _doneAmong(data: bytes, stop: int) -> bool:
        """Whether a payload of the events of `data` before `stop` (`data: P\\n\\n`
        each, P without a newline) is one the loop takes for `[DONE]`: not an
        object, `[DONE]` once stripped. Only a payload holding `[DONE]` is looked
        at (a text may hold it too), each once: from its `[DONE]` back to its
        start, then on from its end."""
        at = data.find(_DONE, 6, stop)
        while at != -1:
            first = data.rfind(b"\n\ndata: ", 0, at)
            first = 6 if first == -1 else first + 8
            last = data.find(b"\n\n", at)
            if data[first : first + 1] != b"{" and data[first:last].strip() == _DONE:
                return True
            at = data.find(_DONE, last, stop)
        return False

    def _dispatchOne(self, payload: bytes) -> None:
        """An event of one data line, ended."""
        if payload[:1] != b"{" and payload.strip() == _DONE:  # no strip for a chunk
            self.sawDone = True
            return
        self._handOver([payload])

    def _handOver(self, payloads: list[bytes]) -> None:
        """Events read, to `onEvents`; an error it raises ends the stream."""
        try:
            self._onEvents(payloads)
        except Exception as e:
            self.fail(e)

    def _eachEvent(self, payloads: list[bytes]) -> None:
        """Without `onEvents`: each event to `onData`, in turn."""
        onData = self._onData
        for payload in payloads:
            onData(payload)

    def _splitLines(self, data: bytes) -> None:
        end = data.rfind(b"\n")
        if end == -1:  # still inside one line
            self._partial.append(data)
            self._partialSize += len(data)
            if self._partialSize > self.MAX_LENGTH:
                self._partial, self._partialSize = [], 0
                self.lineLengthExceeded()
            return
        complete, rest = data[:end], data[end + 1 :]
        if self._partial:
            self._partial.append(complete)
            complete = b"".join(self._partial)
        self._partial = [rest] if rest else []
        self._partialSize = len(rest)
        self._readLines(complete.split(b"\n"), b"\r" in complete)
        if not self.finished.called and self._partialSize > self.MAX_LENGTH:
            self.lineLengthExceeded()

    def _readLines(self, lines: list[bytes], cr: bool = True) -> None:
        """Each line in turn, within the line limit, until the body is finished.

        The per-line steps of `lineReceived` and `fieldReceived` are inlined here
        (same rules, same limits): a read holds a few hundred chunks, and three
        method calls per line were a third of the parser's time. The events read
        go to `onEvents` together, at the end, or before a line over the limit
        stops the stream (so what came before it still goes out first).
        `SSEFrames`, which reads every field, keeps the line-by-line path
        (`_eachLine`)."""
        if self.finished.called:
            return
        limit = self.MAX_LENGTH
        data = self._lines
        size = self._eventSize
        ready: list[bytes] = []
        for line in lines:
            if len(line) > limit:
                self._failAfter(ready, self.lineLengthExceeded)
                return
            if cr and line[-1:] == b"\r":  # `cr`: whether any line holds one
                line = line[:-1]
            if not line:  # the blank line that ends an event: `_dispatch`, inlined
                if data:
                    payload = data[0] if len(data) == 1 else b"\n".join(data)
                    data.clear()
                    size = 0
                    if payload[:1] != b"{" and payload.strip() == _DONE:  # no strip for a chunk
                        self.sawDone = True
                        continue
                    ready.append(payload)
                continue
            if line[:5] == b"data:":
                value = line[6:] if line[5:6] == b" " else line[5:]
            elif line == b"data":  # a field without a colon has an empty value
                value = b""
            else:  # a comment; "event", "id" and "retry" carry nothing we need
                continue
            data.append(value)
            size += len(line)
            if size > limit:  # however many lines it is cut into
                self._lines, self._eventSize = [], 0
                self._failAfter(ready, self.eventTooLong)
                return
        self._eventSize = size
        if ready:
            self._handOver(ready)

    def _failAfter(self, ready: list[bytes], failure: Callable[[], None]) -> None:
        """Hand over the events read before a limit was passed, then fail (unless
        one of them failed the stream first)."""
        if ready:
            self._handOver(ready)
        if not self.finished.called:
            failure()

    def _eachLine(self, lines: list[bytes], cr: bool = True) -> None:
        """Each line in turn through `lineReceived`, within the line limit."""
        for line in lines:
            if self.finished.called:
                return
            if len(line) > self.MAX_LENGTH:
                self.lineLengthExceeded()
                return
            self.lineReceived(line)

    def lineReceived(self, line: bytes) -> None:
        if self.finished.called:
            return
        if line.endswith(b"\r"):
            line = line[:-1]
        if not line:
            self._dispatch()
            return
        if line[0] == 0x3A:  # ":" starts a comment
            return
        self.fieldReceived(line)

    def fieldReceived(self, line: bytes) -> None:
        """One `name: value` line of an event."""
        name, _, value = line.partition(b":")
        if name == b"data":
            self._lines.append(value[1:] if value[:1] == b" " else value)
            self._eventSize += len(line)
            if self._eventSize > self.MAX_LENGTH:  # however many lines it is cut into
                self._lines = []
                self.eventTooLong()
        # "event", "id" and "retry" carry nothing an OpenAI stream needs.

    def lineLengthExceeded(self) -> None:
        self.fail(badGateway(self._name, f"a stream line is longer than {self.MAX_LENGTH} bytes"))

    def eventTooLong(self) -> None:
        """The line limit bounds an event too (an upstream that never sends the
        blank line that ends it must not grow it without end)."""
        self.fail(badGateway(self._name, f"a stream event is longer than {self.MAX_LENGTH} bytes"))

    ending: AbstractContextManager[Any] = nullcontext()
    """Around the body's end: the relay's `SendTogether` on its client's connection,
    so that what the end writes (the stream's last events, its closing chunk, all
    in this turn) leaves in one send, the socket never watched for room."""

    def connectionLost(self, reason: Failure = Failure(ResponseDone())) -> None:  # noqa: B008
        # isinstance, not Failure.check (as `BodyReader.connectionLost`): check
        # spells out each type's qualified name, at the end of every stream.
        if not self.finished.called and not isinstance(
            reason.value, (ResponseDone, PotentialDataLoss)
        ):
            # Cut off: a half line is not an event, and the cut is what to report.
            self._partial, self._lines = [], []
        with self.ending:
            BodyReader.connectionLost(self, reason)

    def ended(self) -> None:
        if self._partial:  # a last line without its newline
            line, self._partial = b"".join(self._partial), []
            self.lineReceived(line)
        self._dispatch()

    def _dispatch(self) -> None:
        if not self._lines:
            return
        data = self._lines[0] if len(self._lines) == 1 else b"\n".join(self._lines)
        self._lines, self._eventSize = [], 0
        if data[:1] != b"{" and data.strip() == _DONE:  # a chunk is an object: no strip
            self.sawDone = True
            return
        self._handOver([data])


class SSEFrames(SSEParser):
    """Parses an Anthropic event stream into whole frames, for passing them on as
    they came: `onFrame(event, data, frame)` gets each frame's `event:` name, its
    data, and the frame's bytes ready to write (ending in a blank line).

    Most frames are deltas that go on untouched, so the usual stream (lines ending
    in a bare `\\n`, as Anthropic and llama-server send) is cut on blank lines
    with `bytes.find` and only the `event:` line of each frame is looked at: the
    frames `wants(event)` does not want go to `onUnread` as they came, those of
    one read in one piece; the others (and any frame without an `event:` line
    first) are read line by line, their data handed to `onFrame`. A stream with `\\r\\n`
    line ends is read line by line, as `SSEParser` reads. Comments and blank
    keep-alive lines are dropped. The line limit bounds a frame here, in either mode.
    """

    def __init__(
        self,
        onFrame: Callable[[bytes, bytes, bytes], None],
        clock: IReactorTime,
        timeout: float,
        upstream: str,
        maxLineLength: int = DEFAULT_MAX_LINE_BYTES,
        onBatch: Callable[[], None] = lambda: None,
        wants: Callable[[bytes], bool] = lambda event: True,
        onUnread: Callable[[bytes], None] | None = None,
    ) -> None:
        """`onUnread` gets the frames `wants` does not want, several at once when
        they came together (by default each goes to `onFrame` with empty data)."""
        SSEParser.__init__(self, _noData, clock, timeout, upstream, maxLineLength, onBatch)
        self._onFrame = onFrame
        self._wants = wants
        self._onUnread = onUnread or (lambda frames: onFrame(b"", b"", frames))
        self._event = b""
        self._frame: list[bytes] = []
        """Line mode: the lines of the frame being read."""
        self._mode: str | None = None
        """`frames` (bare `\\n`) or `lines`, from the first read with a line end."""
        self._pieces: list[bytes] = []
        """Frame mode: the frame being read, in the pieces it came in."""
        self._size = 0
        self._frameSize = 0
        """Bytes of the lines of `_frame`: the line limit bounds a frame in line mode."""

    def dataReceived(self, data: bytes) -> None:
        if self.finished.called or not data:
            return
        if self._mode is None:  # read on the first line end: a first read may have none
            if b"\n" not in data and b"\r" not in data:
                self.heard()
                self._hold(data)
                return
            if self._pieces:
                data = b"".join([*self._pieces, data])
                self._pieces, self._size = [], 0
            self._mode = "lines" if b"\r" in data else "frames"
        if self._mode == "lines":
            SSEParser.dataReceived(self, data)
            return
        self.heard()
        start = 0
        if self._pieces and self._pieces[-1].endswith(b"\n") and data[:1] == b"\n":
            self._whole(b"".join(self._pieces)[:-1])  # a blank line split across reads
            self._pieces, self._size, start = [], 0, 1
        run = start  # frames from here to `start` go on as they are, in one piece
        find, wants, finished = data.find, self._wants, self.finished
        while not finished.called:
            end = find(b"\n\n", start)
            if end == -1:
                break
            if self._pieces:
                self._pieces.append(data[start:end])
                frame = b"".join(self._pieces)
                self._pieces, self._size = [], 0
                self._whole(frame)
                run = end + 2
            else:
                # Unread: it names its event first, `wants` does not want it, and
                # it holds no comment line.
                newline = find(b"\n", start, end)
                if (
                    not data.startswith(b"event:", start)
                    or wants(data[start + 6 : end if newline == -1 else newline].strip())
                    or find(b"\n:", start, end) != -1
                ):
                    if run < start:
                        self._onRaw(data[run:start])
                    self._whole(data[start:end])
                    run = end + 2
            start = end + 2
        if self.finished.called:
            return
        if run < start:
            self._onRaw(data[run:start])
        if start < len(data) and not self._hold(data[start:] if start else data):
            return
        self._onBatch()

    _readLines = SSEParser._eachLine  # every field is read here (`fieldReceived`)
    _oneEventReads = False

    def _hold(self, piece: bytes) -> bool:
        """Keep `piece` of a frame not whole yet; False (the stream failed) when that
        makes the frame longer than the limit."""
        self._pieces.append(piece)
        self._size += len(piece)
        if self._size > self.MAX_LENGTH:
            self._pieces, self._size = [], 0
            self.eventTooLong()
            return False
        return True

    def _whole(self, frame: bytes) -> None:
        """One frame of the bare-`\\n` stream (without its blank line), read line by
        line: its data, its comments, the line limit."""
        self._readLines(frame.split(b"\n"))
        if not self.finished.called:
            self._dispatch()

    def _onRaw(self, frames: bytes) -> None:
        """Frames that go on unread, as they came."""
        self._hand(b"", b"", frames, unread=True)

    def fieldReceived(self, line: bytes) -> None:
        self._frameSize += len(line) + 1
        if self._frameSize > self.MAX_LENGTH:  # however many lines it is cut into
            self._frame, self._lines = [], []
            self.eventTooLong()
            return
        self._frame.append(line)
        if line.startswith(b"data:"):
            value = line[5:]
            self._lines.append(value[1:] if value[:1] == b" " else value)
        elif line.startswith(b"event:"):
            self._event = line[6:].strip()

    def connectionLost(self, reason: Failure = Failure(ResponseDone())) -> None:  # noqa: B008
        # isinstance, not Failure.check (as `BodyReader.connectionLost`): check
        # spells out each type's qualified name, at the end of every stream.
        if not self.finished.called and not isinstance(
            reason.value, (ResponseDone, PotentialDataLoss)
        ):
            self._pieces, self._frame = [], []
        SSEParser.connectionLost(self, reason)

    def ended(self) -> None:
        if self._pieces:  # a last frame without its blank line
            frame, self._pieces = b"".join(self._pieces), []
            self._whole(frame.rstrip(b"\n"))
        SSEParser.ended(self)

    def _dispatch(self) -> None:
        if not self._frame:
            return
        frame, self._frame = self._frame, []
        self._frameSize = 0
        event, self._event = self._event, b""
        lines, self._lines = self._lines, []
        data = lines[0] if len(lines) == 1 else b"\n".join(lines)
        self._hand(event, data, b"\n".join(frame) + b"\n\n")

    def _hand(self, event: bytes, data: bytes, frame: bytes, unread: bool = False) -> None:
        try:
            if unread:
                self._onUnread(frame)
            else:
                self._onFrame(event, data, frame)
        except Exception as e:
            self.fail(e)


def _noData(data: bytes) -> None:
    """`SSEFrames` hands over frames, never bare data."""
