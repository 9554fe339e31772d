"""How hard to try one upstream: retries, timeouts, concurrency and its breaker.

Per-upstream knobs that decide what happens when a gateway fails, kept apart from
the translation knobs (`profile.py`) because they are about the connection, not the
dialect.
"""

from __future__ import annotations

from attrs import frozen

from ccproxy.config.schema import Node, nonNegativeInt, positiveInt, positiveNumber


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


def parsePolicy(node: Node) -> Policy:
    """The resilience knobs of one `upstreams.NAME` mapping."""
    return Policy(
        retries=node.get("retries", nonNegativeInt, 1),
        maxRetryWait=node.get("max_retry_wait", positiveNumber, 10.0),
        connectTimeout=node.get("connect_timeout", positiveNumber, 10.0),
        breakerFailures=node.get("breaker_failures", positiveInt, 5),
        breakerCooldown=node.get("breaker_cooldown", positiveNumber, 30.0),
        maxConcurrent=node.get("max_concurrent", positiveInt, None),
        queueSize=node.get("queue_size", nonNegativeInt, 100),
        queueTimeout=node.get("queue_timeout", positiveNumber, 30.0),
    )
