"""One access-log event per request, with named fields and never a secret.

The record is filled in as the request goes (who, which route, what the upstream
said, how long it took, how many tokens) and emitted once at the end, so a user's
`request_id` from an error message finds the whole story in one log line.
"""

from __future__ import annotations

from typing import Any, ClassVar

from attrs import define
from twisted.logger import Logger

_FORMAT = (
    "{request_id} {client} {method} {path} {model} -> {target} "
    "{status} (upstream {upstream_status}) ttfb={ttfb_ms}ms total={duration_ms}ms "
    "tokens in={input_tokens} out={output_tokens} cached={cache_read_tokens}"
    "{error_suffix}"
)


@define
class AccessRecord:
    """What one request did, for the access log."""

    requestId: str
    method: str
    path: str
    started: float
    client: str | None = None
    model: str | None = None
    upstream: str | None = None
    upstreamModel: str | None = None
    stream: bool = False
    status: int = 0
    upstreamStatus: int | None = None
    firstByte: float | None = None
    inputTokens: int = 0
    outputTokens: int = 0
    cacheReadTokens: int = 0
    errorType: str | None = None
    errorMessage: str | None = None

    log: ClassVar[Logger] = Logger(namespace="ccproxy.access")

    def countUsage(self, usage: dict[str, Any]) -> None:
        self.inputTokens = usage.get("input_tokens", 0)
        self.outputTokens = usage.get("output_tokens", 0)
        self.cacheReadTokens = usage.get("cache_read_input_tokens", 0)

    def fail(self, status: int, errorType: str, message: str) -> None:
        self.status = status
        self.errorType = errorType
        self.errorMessage = message

    def fields(self, now: float) -> dict[str, Any]:
        """The event's named fields (also what JSON logs and metrics read)."""
        return {
            "request_id": self.requestId,
            "client": self.client or "-",
            "method": self.method,
            "path": self.path,
            "model": self.model or "-",
            "upstream": self.upstream,
            "upstream_model": self.upstreamModel,
            "target": f"{self.upstream}/{self.upstreamModel}" if self.upstream else "-",
            "stream": self.stream,
            "status": self.status,
            "upstream_status": self.upstreamStatus or "-",
            "ttfb_ms": _ms(self.firstByte, self.started),
            "duration_ms": _ms(now, self.started),
            "input_tokens": self.inputTokens,
            "output_tokens": self.outputTokens,
            "cache_read_tokens": self.cacheReadTokens,
            "error_type": self.errorType,
            "error_message": self.errorMessage,
            "error_suffix": f" error={self.errorType}: {self.errorMessage}"
            if self.errorType
            else "",
        }

    def emit(self, now: float) -> None:
        fields = self.fields(now)
        if self.status >= 500:
            self.log.warn(_FORMAT, **fields)
        else:
            self.log.info(_FORMAT, **fields)


def _ms(end: float | None, start: float) -> int | str:
    return "-" if end is None else round((end - start) * 1000)
