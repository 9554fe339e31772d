"""The HTTP site: twisted.web's `Site` with a request body limit enforced while reading.

twisted.web buffers a whole request body (to a temporary file past 100 kB) before a
handler sees it; a hostile client could send gigabytes. `LimitedRequest` keeps bodies
in memory up to the limit and discards the rest, and the handler answers 413.
"""

from __future__ import annotations

from collections.abc import Callable
from io import BytesIO
from typing import Any

from twisted.web.server import Request, Site


class _Discarded:
    """A write-only sink for the part of a body past the limit."""

    def write(self, data: bytes) -> None:
        pass

    def seek(self, *args: Any) -> None:
        pass

    def read(self) -> bytes:
        return b""

    def close(self) -> None:
        pass


class LimitedRequest(Request):
    """A request whose body may not exceed its site's `maxBodyBytes`."""

    bodyTooLarge = False

    def _limit(self) -> int:
        return self.channel.site.maxBodyBytes()

    def gotLength(self, length: int | None) -> None:
        if length is not None and length > self._limit():
            self.bodyTooLarge = True
            self.content = _Discarded()
        else:
            self.content = BytesIO()
        self._received = 0

    def handleContentChunk(self, data: bytes) -> None:
        if self.bodyTooLarge:
            return
        self._received += len(data)
        if self._received > self._limit():
            self.bodyTooLarge = True
            self.content = _Discarded()
            return
        self.content.write(data)


class ProxySite(Site):
    """A `Site` serving the proxy's resource with `LimitedRequest`s.

    `maxBodyBytes` is a callable so that a config reload changes the limit.
    """

    requestFactory = LimitedRequest
    displayTracebacks = False
    noisy = False  # no "Starting factory" lines

    def __init__(self, resource: Any, maxBodyBytes: Callable[[], int], **kwargs: Any) -> None:
        # No form parsing: bodies are JSON, and parsing each POST's Content-Type
        # with the email package cost 7-9% of a request's CPU in the profile.
        super().__init__(resource, parsePOSTFormSubmission=False, **kwargs)
        self.maxBodyBytes = maxBodyBytes

    def log(self, request: Any) -> None:
        """No combined-log line: the app's access log says more, with named fields."""
