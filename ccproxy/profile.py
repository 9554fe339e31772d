"""How one upstream wants its requests shaped: the per-upstream translation knobs.

Gateways disagree on details (which max-tokens field they read, whether they accept
`stream_options`), so the translator takes a `Profile` instead of assuming one dialect.
"""

from __future__ import annotations

from attrs import frozen

from ccproxy.schema import ConfigError, Node, boolean, positiveInt, string

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


def parseProfile(node: Node) -> Profile:
    """The translation knobs of one `upstreams.NAME` mapping."""
    maxTokensParam = node.get("max_tokens_param", string, "max_completion_tokens")
    if maxTokensParam not in MAX_TOKENS_PARAMS:
        raise ConfigError(node.at("max_tokens_param"), f"must be one of {MAX_TOKENS_PARAMS}")
    return Profile(
        maxTokens=node.get("max_tokens", positiveInt, None),
        maxTokensParam=maxTokensParam,
        streamUsage=node.get("stream_usage", boolean, True),
    )
