"""One access-log event per request, with named fields and never a secret.

The record is filled in as the request goes (who, which route, each upstream
attempt, how long it took, how many tokens) and written once at the end, so a
user's `request_id` from an error message finds the whole story in one log line.
The same fields feed the metrics and the per-client usage totals, and a request
that reached routing leaves its row in the ledger.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from attrs import define, field
from twisted.logger import Logger, LogLevel

from ccproxy.compat import emitEvent
from ccproxy.config.prices import Prices
from ccproxy.errors import Redact
from ccproxy.ledger.model import Ledger, Row
from ccproxy.observe.metrics import Metrics
from ccproxy.observe.usage import UsageBook
from ccproxy.observe.watch import Watch

# Module-level on purpose: a Logger that is a class attribute takes the class's
# name as its namespace, and these namespaces are what log readers filter on.
_accessLog = Logger(namespace="ccproxy.access")
_payloadLog = Logger(namespace="ccproxy.payload")

_FORMAT = (
    "{request_id} {client} {method} {path} {model}{route_suffix} -> {target}{stream_mark} "
    "{status} (upstream {upstream_status}) ttfb={ttfb_ms}ms total={duration_ms}ms "
    "tokens in={input_tokens} out={output_tokens} cached={cache_read_tokens}"
    "{attempts_suffix}{error_suffix}"
)


@define
class Attempt:
    """One try at one upstream."""

    upstream: str
    status: int | None
    errorType: str | None = None
    note: str = ""

    def __str__(self) -> str:
        if self.note:
            return f"{self.upstream}: {self.note}"
        if self.errorType:
            return f"{self.upstream}: {self.status} {self.errorType}"
        return f"{self.upstream}: {self.status}"


@define
class AccessRecord:
    """What one request did, for the access log."""

    requestId: str
    method: str
    path: str
    started: float
    endpoint: str = "messages"
    """Which API: messages, count_tokens, models, usage (a metric label)."""
    client: str | None = None
    model: str | None = None
    route: str | None = None
    """What chose the upstream: the `routes:` rule that held (its `name`, else
    `routes.N`), else the `models:` entry `model` matched (the name itself when the
    config lists it, else the glob's pattern, `claude-*`). Metrics, usage and the
    ledger count by it, so that their series and keys are the config's, however
    many names clients invent."""
    modelRoute: str | None = None
    """The `models:` entry `model` matched, whether or not a rule chose instead:
    the `model` label of the metrics."""
    upstream: str | None = None
    upstreamModel: str | None = None
    stream: bool = False
    status: int = 0
    upstreamStatus: int | None = None
    firstByte: float | None = None
    inputTokens: int = 0
    outputTokens: int = 0
    cacheReadTokens: int = 0
    cacheWriteTokens: int = 0
    errorType: str | None = None
    errorMessage: str | None = None
    attempts: list[Attempt] = field(factory=list)
    expired: bool = False
    """`max_duration` ran out (a timeout, not a client that left)."""
    requestPayload: bytes | None = None
    responsePayload: bytes | None = None

    def countUsage(self, usage: dict[str, Any]) -> None:
        self.inputTokens = usage.get("input_tokens", 0)
        self.outputTokens = usage.get("output_tokens", 0)
        self.cacheReadTokens = usage.get("cache_read_input_tokens", 0)
        self.cacheWriteTokens = usage.get("cache_creation_input_tokens", 0)

    def fail(self, status: int, errorType: str, message: str) -> None:
        self.status = status
        self.errorType = errorType
        self.errorMessage = message

    def fields(self, now: float) -> dict[str, Any]:
        """The event's named fields (also what JSON logs and metrics read)."""
        attempts, failed = [], []
        for attempt in self.attempts:  # one loop, not two comprehensions' frames
            attempts.append(str(attempt))
            if attempt.errorType:
                failed.append((attempt.upstream, attempt.errorType))
        return {
            "request_id": self.requestId,
            "client": self.client or "-",
            "method": self.method,
            "path": self.path,
            "endpoint": self.endpoint,
            "model": self.model or "-",
            "route": self.route or "-",
            "model_route": self.modelRoute or "-",
            # A `routes:` rule chose: the text line names it.
            "route_suffix": f" route={self.route}"
            if self.route is not None and self.route != self.modelRoute
            else "",
            "upstream": self.upstream,
            "upstream_model": self.upstreamModel,
            "target": _target(self.upstream, self.upstreamModel),
            "stream": self.stream,
            "stream_mark": " (stream)" if self.stream else "",
            "status": self.status,
            "upstream_status": self.upstreamStatus or "-",
            "ttfb_ms": _ms(self.firstByte, self.started),
            "duration_ms": _ms(now, self.started),
            "input_tokens": self.inputTokens,
            "output_tokens": self.outputTokens,
            "cache_read_tokens": self.cacheReadTokens,
            "cache_write_tokens": self.cacheWriteTokens,
            "error_type": self.errorType,
            "error_message": self.errorMessage,
            "error_suffix": f" error={self.errorType}: {self.errorMessage}"
            if self.errorType
            else "",
            "attempts": attempts,
            "attempts_suffix": f" attempts=[{'; '.join(attempts)}]" if len(attempts) > 1 else "",
            "failed_attempts": failed,
        }

    def row(self, now: float, prices: Prices) -> Row:
        """The ledger's row for this request, its cost by `prices` on the upstream model."""
        return self._row(_ms(self.firstByte, self.started), _ms(now, self.started), prices)

    def _row(self, ttfb: int | str, duration: int | str, prices: Prices) -> Row:
        """`row`, its times in milliseconds already counted (`fields` has them)."""
        price = prices.find(self.upstreamModel) if self.upstreamModel else None
        cost = 0.0
        if price is not None:
            cost = price.cost(
                self.inputTokens, self.outputTokens, self.cacheReadTokens, self.cacheWriteTokens
            )
        # By position, in `Row`'s order: eighteen keywords cost a call as much as
        # the row's making (test_ledger_row pins each field).
        return Row(
            self.started,  # time
            self.requestId,
            self.client or "-",  # client
            self.model or "-",  # model
            self.upstream,
            self.upstreamModel,
            self.stream,
            self.status,
            self.errorType,
            self.inputTokens,
            self.outputTokens,
            self.cacheReadTokens,
            self.cacheWriteTokens,
            cost,
            ttfb if type(ttfb) is int else None,  # ttfbMs
            duration if type(duration) is int else None,  # durationMs
            self.route,
            price is not None,  # priced
        )


@define
class AccessLog:
    """Where finished requests go: the log, the metrics, the usage totals, and the
    ledger (when there is one)."""

    metrics: Metrics
    usage: UsageBook
    ledger: Ledger | None = None
    watch: Watch = field(factory=Watch)
    """The requests in flight and the last ones, for the status page."""

    def begin(self, record: AccessRecord, tokensSoFar: Callable[[], int]) -> None:
        """A request is being served: the status page shows it in flight until
        `write` has its event."""
        self.watch.begin(record, tokensSoFar)

    def write(
        self,
        record: AccessRecord,
        now: float,
        payloadMaxChars: int | None,
        redact: Redact,
        prices: Prices | None = None,
    ) -> None:
        """Emit one request's event; `payloadMaxChars` set means payload logging is on.
        The error message and the payloads go through `redact` (an upstream's words,
        and a prompt, may hold a key); the operator still reads the rest in full.
        A Messages request that reached routing leaves its row in the ledger, its
        cost by `prices`."""
        if record.errorMessage:
            record.errorMessage = redact(record.errorMessage)
        fields = record.fields(now)
        row = None
        if record.endpoint == "messages" and record.model is not None:  # it reached routing
            row = record._row(fields["ttfb_ms"], fields["duration_ms"], prices or _NO_PRICES)
            fields["cost"] = row.cost
        level = LogLevel.warn if record.status >= 500 else LogLevel.info
        emitEvent(_accessLog, level, _FORMAT, dict(fields))  # `_accessLog.info`, cheaper
        self.metrics.observe(fields)
        if row is not None:
            if self.ledger is not None:
                self.ledger.record(row)
            else:  # `ledger: off`: `/v1/usage` counts in this process
                self.usage.add(row)
        payloads = None
        if payloadMaxChars is not None and record.requestPayload is not None:
            payloads = (
                _excerpt(record.requestPayload, payloadMaxChars, redact),
                _excerpt(record.responsePayload or b"", payloadMaxChars, redact),
            )
            _payloadLog.info(
                "{request_id} request {request_body}\n{request_id} response {response_body}",
                request_id=record.requestId,
                request_body=payloads[0],
                response_body=payloads[1],
                status=record.status,
                stream=record.stream,
            )
        self.watch.end(record, now, fields, payloads)  # `fields` handed over, not copied


_NO_PRICES = Prices()

_KEY_MARGIN = 4096
"""Characters past the cut redacted with the rest, so that a key across it goes whole."""


def _excerpt(payload: bytes, limit: int, redact: Redact) -> str:
    text = payload.decode("utf-8", "replace")
    if len(text) <= limit:
        return redact(text)
    return f"{redact(text[: limit + _KEY_MARGIN])[:limit]}… [{len(text) - limit} more chars]"


def _target(upstream: str | None, model: str | None) -> str:
    if upstream is None:
        return "-"
    return upstream if model is None else f"{upstream}/{model}"


def _ms(end: float | None, start: float) -> int | str:
    return "-" if end is None else round((end - start) * 1000)
