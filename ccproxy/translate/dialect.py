"""How one upstream wants its requests shaped: the per-upstream dialect value.

Gateways disagree: which max-tokens field they read, whether reasoning models take
a temperature, `system` or `developer`, `""` or `null` for a tool-call-only turn,
whether they see images, how they want reasoning back, which JSON Schema keywords
they reject. The translators read these knobs; `ccproxy.config.profile` reads them
from YAML (with named presets). The quirks themselves are listed in
`docs/upstream-quirks.md`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from attrs import field, frozen

MAX_TOKENS_PARAMS = ("max_completion_tokens", "max_tokens")
SYSTEM_ROLES = ("system", "developer")
REASONING_MODES = ("none", "reasoning_effort", "deepseek")
SCHEMA_MODES = ("full", "gemini")
WEB_SEARCH_MODES = ("none", "openai", "openrouter")
AUTH_HEADERS = ("authorization", "api-key", "x-api-key")
BETAS = ("all", "none")
"""`betas:` as a word; otherwise a list of the beta names an upstream takes."""
# The output limit sent upstream at most when a profile sets no cap of its own: the
# largest any current model writes (Claude Code asks for up to 128000). A client's
# 2**63 would otherwise go upstream as is, and fail there, or worse, be taken.
MAX_TOKENS_CEILING = 128_000


@frozen
class Profile:
    """Dialect knobs for one upstream; the defaults suit a standard OpenAI gateway."""

    maxTokens: int | None = None
    """Cap on the max-tokens value sent upstream (None: `MAX_TOKENS_CEILING`)."""
    maxTokensParam: str = "max_completion_tokens"
    """Field that carries the output limit: OpenAI's current name, or the older one."""
    sendTemperature: bool = True
    """False for reasoning models that accept only the default temperature and top_p."""
    systemRole: str = "system"
    """`developer` for OpenAI reasoning models; `system` for everyone else."""
    assistantEmptyContent: str | None = ""
    """Content of a tool-call-only assistant turn: `""` (most) or None (null)."""
    streamUsage: bool = True
    """Ask for `stream_options.include_usage` on streams (some servers reject it)."""
    vision: bool = True
    """False: images become a short text placeholder, never their base64."""
    reasoning: str = "none"
    """`reasoning_effort`: map Claude's thinking/effort to it; `deepseek`: send thinking
    back as `reasoning_content` (DeepSeek's thinking mode requires it); `none`."""
    thinkTags: bool = False
    """Read `<think>…</think>` at the start of the content as reasoning."""
    schema: str = "full"
    """`gemini`: reduce tool schemas to the subset Gemini accepts."""
    cacheControl: bool = False
    """Pass `cache_control` markers through on content parts (OpenRouter takes them)."""
    keepBillingHeader: bool = False
    """Keep Claude Code's `x-anthropic-billing-header` system block (it changes on every
    request and defeats upstream prefix caching, so it is dropped by default)."""
    webSearch: str = "none"
    """Map Claude Code's web search tool to the upstream's own: `openai`
    (`web_search_options`) or `openrouter` (the `web` plugin)."""
    extraBody: Mapping[str, Any] = field(factory=dict)
    """Merged into every request body."""
    authHeader: str | None = None
    """How the key goes: `authorization` (`Bearer`), `api-key` (Azure OpenAI, the key
    without `Bearer`) or `x-api-key` (Anthropic's). None: the API's own way
    (`authorization` for `chat`, `x-api-key` for `messages`)."""
    betas: str | tuple[str, ...] = "all"
    """Which of the client's `anthropic-beta` values a `messages` upstream gets:
    `all`, `none`, or only those listed (some servers refuse a beta they do not
    know: "invalid beta flag")."""
    promptCacheKey: bool = False
    """Send the client's session as `prompt_cache_key`, so one user's turns reach
    the same prompt cache (OpenAI, Azure). Off unless a preset says the server
    takes it: some reject a field they do not know (Gemini, older vLLM)."""
