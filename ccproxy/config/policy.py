"""How hard to try one upstream: retries, timeouts, concurrency and its breaker.

Per-upstream knobs that decide what happens when a gateway fails, kept apart from
the translation knobs (`profile.py`) because they are about the connection, not the
dialect.
"""

from __future__ import annotations

from attrs import fields, frozen

from ccproxy.config.schema import (
    Node,
    nonNegativeInt,
    nonNegativeNumber,
    positiveInt,
    positiveNumber,
)


@frozen
class Policy:
    """Failure handling for one upstream; defaults suit a shared team gateway."""

    retries: int = 1
    """Further attempts on a retryable failure (connect error, timeout, 408, 429, 5xx)."""
    maxRetryWait: float = 10.0
    """Longest wait before a retry; a longer `retry-after` means no retry here."""
    connectTimeout: float = 10.0
    breakerFailures: int = 5
    """Consecutive failures that open the circuit breaker."""
    breakerCooldown: float = 30.0
    """Seconds an open breaker skips the upstream before one trial request."""
    maxConcurrent: int | None = None
    """Requests in flight at once (None: no limit); the excess waits in a queue."""
    queueSize: int = 100
    queueTimeout: float = 30.0
    headWait: float = 5.0
    """Seconds a streaming request waits for this upstream's headers (it being the
    route's first target) before its client gets `200`, `message_start` and pings:
    a gateway that sends nothing until the model's first token (LiteLLM) must not
    look dead to Claude Code. A refusal sooner keeps its own status."""


def parsePolicy(node: Node) -> Policy:
    """The resilience knobs of one `upstreams.NAME` mapping; a key left out keeps
    the default written on `Policy` (read from its fields, so it is written once)."""
    default = fields(Policy)
    return Policy(
        retries=node.get("retries", nonNegativeInt, default.retries.default),
        maxRetryWait=node.get("max_retry_wait", positiveNumber, default.maxRetryWait.default),
        connectTimeout=node.get("connect_timeout", positiveNumber, default.connectTimeout.default),
        breakerFailures=node.get("breaker_failures", positiveInt, default.breakerFailures.default),
        breakerCooldown=node.get(
            "breaker_cooldown", positiveNumber, default.breakerCooldown.default
        ),
        maxConcurrent=node.get("max_concurrent", positiveInt, default.maxConcurrent.default),
        queueSize=node.get("queue_size", nonNegativeInt, default.queueSize.default),
        queueTimeout=node.get("queue_timeout", positiveNumber, default.queueTimeout.default),
        headWait=node.get("head_wait", nonNegativeNumber, default.headWait.default),
    )
