"""How one upstream wants its requests shaped: the per-upstream dialect knobs.

Gateways disagree (`../shared/upstream-quirks.md`): which max-tokens field they
read, whether reasoning models take a temperature, `system` or `developer`, `""` or
`null` for a tool-call-only turn, whether they see images, how they want reasoning
back, which JSON Schema keywords they reject. One config serves gateways that
disagree by giving each upstream a `Profile`, usually from a named preset
(`preset: gemini`) with keys overridden one by one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from attrs import field, frozen

from ccproxy.schema import ConfigError, Node, boolean, positiveInt, string

MAX_TOKENS_PARAMS = ("max_completion_tokens", "max_tokens")
SYSTEM_ROLES = ("system", "developer")
REASONING_MODES = ("none", "reasoning_effort", "deepseek")
SCHEMA_MODES = ("full", "gemini")
WEB_SEARCH_MODES = ("none", "openai", "openrouter")
AUTH_HEADERS = ("authorization", "api-key")


@frozen
class Profile:
    """Dialect knobs for one upstream; the defaults suit a standard OpenAI gateway."""

    maxTokens: int | None = None
    """Cap on the max-tokens value sent upstream (None: no cap)."""
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
    authHeader: str = "authorization"
    """`api-key` for Azure OpenAI (the key without `Bearer`)."""


# YAML key -> (Profile attribute, reader, allowed values or None)
_KNOBS: dict[str, tuple[str, Any, tuple[Any, ...] | None]] = {
    "max_tokens": ("maxTokens", positiveInt, None),
    "max_tokens_param": ("maxTokensParam", string, MAX_TOKENS_PARAMS),
    "send_temperature": ("sendTemperature", boolean, None),
    "system_role": ("systemRole", string, SYSTEM_ROLES),
    "assistant_empty_content": ("assistantEmptyContent", lambda v, p: _emptyContent(v, p), None),
    "stream_usage": ("streamUsage", boolean, None),
    "vision": ("vision", boolean, None),
    "reasoning": ("reasoning", string, REASONING_MODES),
    "think_tags": ("thinkTags", boolean, None),
    "schema": ("schema", string, SCHEMA_MODES),
    "cache_control": ("cacheControl", boolean, None),
    "keep_billing_header": ("keepBillingHeader", boolean, None),
    "web_search": ("webSearch", string, WEB_SEARCH_MODES),
    "extra_body": ("extraBody", lambda v, p: _mapping(v, p), None),
    "auth_header": ("authHeader", string, AUTH_HEADERS),
}

PRESETS: dict[str, dict[str, Any]] = {
    "openai": {},
    "azure": {"auth_header": "api-key"},
    "gemini": {
        "schema": "gemini",
        "max_tokens_param": "max_tokens",
        "reasoning": "reasoning_effort",
    },
    "deepseek": {"reasoning": "deepseek", "max_tokens_param": "max_tokens", "vision": False},
    "openrouter": {
        "cache_control": True,
        "reasoning": "reasoning_effort",
        "web_search": "openrouter",
    },
    "vllm": {"max_tokens_param": "max_tokens"},
    "ollama": {"max_tokens_param": "max_tokens"},
    "llama.cpp": {"vision": False},
    "litellm": {},
}


def parseProfile(node: Node) -> Profile:
    """The dialect of one `upstreams.NAME` mapping: its preset, then its own keys."""
    preset = node.get("preset", string, None)
    values: dict[str, Any] = {}
    if preset is not None:
        if preset not in PRESETS:
            known = ", ".join(PRESETS)
            raise ConfigError(node.at("preset"), f"unknown preset {preset!r} (known: {known})")
        for key, value in PRESETS[preset].items():
            values[_KNOBS[key][0]] = value
    for key, (attribute, reader, allowed) in _KNOBS.items():
        if key in node.value and node.value[key] is not None:
            value = node.get(key, reader, None)
            if allowed is not None and value not in allowed:
                raise ConfigError(node.at(key), f"must be one of {', '.join(map(str, allowed))}")
            values[attribute] = value
        else:
            node.get(key, reader, None)  # marks the key as known
    if "assistant_empty_content" in node.value and node.value["assistant_empty_content"] is None:
        values["assistantEmptyContent"] = None
    return Profile(**values)


def _emptyContent(value: Any, path: str) -> str | None:
    if value == "":
        return ""
    raise ConfigError(path, 'must be "" or null')


def _mapping(value: Any, path: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(path, "must be a mapping")
    return value
