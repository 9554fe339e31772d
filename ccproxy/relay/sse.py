"""Server-sent events from the upstream: its byte stream parsed into `data` payloads.

The parser is a `LineOnlyReceiver` fed with the raw response body, so any split of
the byte stream (across TCP chunks, inside a multi-byte UTF-8 character) gives the
same events: lines are cut on bytes and a payload is decoded only once whole.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.protocols.basic import LineOnlyReceiver
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss

from ccproxy.config.model import DEFAULT_MAX_LINE_BYTES
from ccproxy.errors import ProxyError

_DONE = b"[DONE]"


class SSEParser(LineOnlyReceiver):
    """Parses an upstream's `text/event-stream` body into `data` payloads.

    `onData` gets each event's data as bytes (multi-line data joined by newlines),
    and `onBatch` is called once the events of one read have all been handed over;
    `[DONE]`, comments (`: keep-alive`) and blank keep-alive lines are consumed here.
    `finished` fires when the body ends, or fails with a `ProxyError` (a line over
    the limit, silence past the timeout, the connection lost, an error raised by
    `onData`). Cancelling `finished` aborts the upstream connection.
    """

    delimiter = b"\n"

    def __init__(
        self,
        onData: Callable[[bytes], None],
        clock: IReactorTime,
        timeout: float,
        upstream: str,
        maxLineLength: int = DEFAULT_MAX_LINE_BYTES,
        onBatch: Callable[[], None] = lambda: None,
    ) -> None:
        self.MAX_LENGTH = maxLineLength
        self._onData = onData
        self._onBatch = onBatch
        self._clock = clock
        self._timeout = timeout
        self._upstream = upstream
        self._lines: list[bytes] = []
        self._timer: IDelayedCall | None = None
        self.sawDone = False
        self.finished: Deferred[None] = Deferred(lambda d: self._abort())

    def connectionMade(self) -> None:
        self._timer = self._clock.callLater(self._timeout, self._silent)

    def dataReceived(self, data: bytes) -> None:
        if self.finished.called:
            return
        if self._timer is not None and self._timer.active():
            self._timer.reset(self._timeout)
        super().dataReceived(data)
        if not self.finished.called:
            self._onBatch()  # every event of this read has been handed over

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
        name, _, value = line.partition(b":")
        if name == b"data":
            self._lines.append(value[1:] if value[:1] == b" " else value)
        # "event", "id" and "retry" carry nothing an OpenAI stream needs.

    def lineLengthExceeded(self, line: bytes) -> None:
        self.fail(
            ProxyError(
                502,
                f"{self._upstream}: a stream line is longer than {self.MAX_LENGTH} bytes",
                "api_error",
            )
        )

    def connectionLost(self, reason: Failure = Failure(ResponseDone())) -> None:  # noqa: B008
        self._stopTimer()
        if self.finished.called:
            return
        if not reason.check(ResponseDone, PotentialDataLoss):
            # Cut off: a half line is not an event, and the cut is what to report.
            self._buffer, self._lines = b"", []
            self.finished.errback(
                ProxyError(
                    502,
                    f"{self._upstream}: the connection was lost in the middle of the stream",
                    "api_error",
                )
            )
            return
        if self._buffer:  # a last line without its newline
            line, self._buffer = self._buffer, b""
            self.lineReceived(line)
        self._dispatch()
        if not self.finished.called:
            self.finished.callback(None)

    def fail(self, error: Exception) -> None:
        """End the stream with `error` and abort the upstream connection."""
        if not self.finished.called:
            self.finished.errback(error)
        self._abort()

    def _dispatch(self) -> None:
        if not self._lines:
            return
        data = self._lines[0] if len(self._lines) == 1 else b"\n".join(self._lines)
        self._lines = []
        if data.strip() == _DONE:
            self.sawDone = True
            return
        try:
            self._onData(data)
        except Exception as e:
            self.fail(e)

    def _silent(self) -> None:
        self.fail(
            ProxyError(
                504,
                f"{self._upstream}: no data for {self._timeout:g} s in the middle of the stream",
                "api_error",
            )
        )

    def _stopTimer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()

    def _abort(self) -> None:
        self._stopTimer()
        if self.transport is not None:
            self.transport.stopProducing()
