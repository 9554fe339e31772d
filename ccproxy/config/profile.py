"""The per-upstream dialect knobs as YAML: named presets, then keys one by one.

One config serves gateways that disagree by giving each upstream a `Profile` (the
value lives in `ccproxy.translate.dialect`, where the translators read it), usually
from a named preset (`preset: gemini`) with keys overridden one by one.
"""

from __future__ import annotations

from typing import Any

from ccproxy.config.schema import ConfigError, Node, boolean, positiveInt, string
from ccproxy.translate.dialect import (
    AUTH_HEADERS,
    BETAS,
    MAX_TOKENS_PARAMS,
    REASONING_MODES,
    SCHEMA_MODES,
    SYSTEM_ROLES,
    WEB_SEARCH_MODES,
    Profile,
)

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
    "prompt_cache_key": ("promptCacheKey", boolean, None),
    "betas": ("betas", lambda v, p: _betas(v, p), None),
}

PRESETS: dict[str, dict[str, Any]] = {
    "openai": {"prompt_cache_key": True},
    "azure": {"auth_header": "api-key", "prompt_cache_key": True},
    "gemini": {
        "schema": "gemini",
        "max_tokens_param": "max_tokens",
        "reasoning": "reasoning_effort",
    },
    # For `api: messages` (README, "Passthrough"): DeepSeek documents
    # anthropic-beta as ignored and x-api-key as supported.
    "deepseek": {
        "reasoning": "deepseek",
        "max_tokens_param": "max_tokens",
        "vision": False,
        "betas": "none",
    },
    # OpenRouter's Claude Code guide sends the key as a bearer token
    # (ANTHROPIC_AUTH_TOKEN, with ANTHROPIC_API_KEY explicitly empty); it serves
    # Anthropic's own models, whose betas matter: all pass.
    "openrouter": {
        "cache_control": True,
        "reasoning": "reasoning_effort",
        "web_search": "openrouter",
        "auth_header": "authorization",
    },
    "vllm": {"max_tokens_param": "max_tokens"},
    "ollama": {"max_tokens_param": "max_tokens"},
    # llama-server reads no anthropic-beta: nothing to send.
    "llama.cpp": {"vision": False, "betas": "none"},
    "litellm": {},
    # Anthropic-compatible endpoints of model vendors whose models have none of
    # Claude's betas; their Claude Code guides send the key as a bearer token.
    "moonshot": {"auth_header": "authorization", "betas": "none"},
    "glm": {"auth_header": "authorization", "betas": "none"},
    "minimax": {"auth_header": "authorization", "betas": "none"},
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


def _betas(value: Any, path: str) -> str | tuple[str, ...]:
    if isinstance(value, str) and value in BETAS:
        return value
    if isinstance(value, list) and all(isinstance(v, str) and v.strip() for v in value):
        return tuple(v.strip() for v in value)
    raise ConfigError(path, "must be all, none, or a list of beta names")


def _emptyContent(value: Any, path: str) -> str | None:
    if value == "":
        return ""
    raise ConfigError(path, 'must be "" or null')


def _mapping(value: Any, path: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(path, "must be a mapping")
    return value
