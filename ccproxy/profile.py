"""How one upstream wants its requests shaped: the per-upstream translation knobs.

Gateways disagree on details (which max-tokens field they read, whether they accept
`stream_options`), so the translator takes a `Profile` instead of assuming one dialect.
"""

from __future__ import annotations

from attrs import frozen

MAX_TOKENS_PARAMS = ("max_completion_tokens", "max_tokens")


@frozen
class Profile:
    """Translation knobs for one upstream; the defaults suit a standard OpenAI gateway."""

    maxTokens: int | None = None
    """Cap on the max-tokens value sent upstream (None: no cap)."""

    maxTokensParam: str = "max_completion_tokens"
    """Field that carries the output limit: OpenAI's current name, or the legacy one."""

    streamUsage: bool = True
    """Ask for `stream_options.include_usage` on streams (some servers reject it)."""
