"""OpenAI chat/completions answer -> Anthropic message.

Upstreams deviate (`docs/upstream-quirks.md`): arguments as objects, missing
tool-call ids, `content: null` or a list of parts, `finish_reason: "stop"` with tool
calls, usage under different names. This module holds that vocabulary once; the
stream translator reuses it so both paths agree on every answer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import orjson

from ccproxy.errors import brokenAnswer
from ccproxy.translate.thinking import reasoningText, splitThinkTags, thinkingBlock

_STOP_REASONS = {
    "stop": "end_turn",
    "end_turn": "end_turn",
    "length": "max_tokens",
    "max_tokens": "max_tokens",
    "content_filter": "refusal",
    "tool_calls": "end_turn",
    "function_call": "end_turn",
}


def fromOpenAI(
    data: Any,
    *,
    messageId: str,
    model: str,
    stopSequences: Sequence[str] = (),
    thinkTags: bool = False,
    toolName: Callable[[str], str] = str,
) -> dict[str, Any]:
    """Translate a decoded non-streaming chat completion into an Anthropic message.

    `model` is the name the client asked for, which Claude Code expects back;
    `thinkTags` reads `<think>…</think>` at the start of the text as reasoning;
    `toolName` maps a (shortened) upstream tool name back to the client's.
    """
    choice = firstChoice(data)
    message = choice.get("message")
    if not isinstance(message, dict):
        message = {}
    text = contentText(message.get("content"))
    reasoning = reasoningText(message)
    if thinkTags:
        tagged, text = splitThinkTags(text)
        reasoning += tagged
    calls = [
        toolUseBlock(call, toolCallId(call, messageId, i), toolName)
        for i, call in enumerate(toolCallList(message.get("tool_calls")))
    ]
    stopReason, stopSequence = stopReasonFor(
        choice.get("finish_reason"), bool(calls), text, stopSequences, choice.get("matched_stop")
    )
    if stopSequence is not None and text.endswith(stopSequence):
        text = text[: -len(stopSequence)]
    content: list[dict[str, Any]] = []
    if reasoning.strip():
        content.append(thinkingBlock(reasoning))
    if text.strip():
        content.append({"type": "text", "text": text})
    content.extend(calls)
    usage = anthropicUsage(data.get("usage") or choice.get("usage"))
    return anthropicMessage(messageId, model, content, stopReason, stopSequence, usage)


def anthropicMessage(
    messageId: str,
    model: str,
    content: list[dict[str, Any]],
    stopReason: str,
    stopSequence: str | None,
    usage: dict[str, int],
) -> dict[str, Any]:
    """A whole Anthropic message, whichever API the answer came in."""
    return {
        "id": messageId,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stopReason,
        "stop_sequence": stopSequence,
        "usage": usage,
    }


def firstChoice(data: Any) -> dict[str, Any]:
    """The answer's first choice; an answer without one is the upstream's fault (502)."""
    if not isinstance(data, dict):
        raise brokenAnswer("the upstream's answer is not a JSON object")
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise brokenAnswer("the upstream's answer holds no choices")
    return choices[0]


def contentText(content: Any) -> str:
    """Message text from a string, null, or a list of content parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)
        )
    return ""


def toolCallList(calls: Any) -> list[dict[str, Any]]:
    """Tool calls as a list of objects (old TGI sent one object, not a list)."""
    if isinstance(calls, dict):
        calls = [calls]
    if not isinstance(calls, list):
        return []
    return [c for c in calls if isinstance(c, dict) and isinstance(c.get("function"), dict)]


def toolCallId(call: dict[str, Any], messageId: str, position: int) -> str:
    """The upstream's id kept verbatim (Kimi validates echoes), or one made up."""
    callId = call.get("id")
    if isinstance(callId, str) and callId:
        return callId
    return syntheticToolId(messageId, position)


def syntheticToolId(messageId: str, position: int) -> str:
    return f"toolu_{messageId.removeprefix('msg_')}_{position}"


def toolUseBlock(
    call: dict[str, Any], callId: str, toolName: Callable[[str], str] = str
) -> dict[str, Any]:
    function = call["function"]
    name = function.get("name")
    return {
        "type": "tool_use",
        "id": callId,
        "name": toolName(name) if isinstance(name, str) else "",
        "input": parseArguments(function.get("arguments")),
    }


def argumentsText(arguments: Any) -> str:
    """Arguments as JSON text, whether sent as a string, an object or nothing."""
    if isinstance(arguments, str):
        return arguments
    if arguments is None:
        return ""
    return orjson.dumps(arguments).decode()


def parseArguments(arguments: Any) -> dict[str, Any]:
    """Tool input as an object. Text that is not a JSON object is kept, not lost,
    so that the model sees in the tool's error what it sent."""
    if isinstance(arguments, dict):
        return arguments
    text = argumentsText(arguments)
    if not text.strip():
        return {}
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return {"__unparsed_arguments": text}
    return value if isinstance(value, dict) else {"__unparsed_arguments": text}


def stopReasonFor(
    finishReason: Any,
    hasToolCalls: bool,
    text: str = "",
    stopSequences: Sequence[str] = (),
    matchedStop: Any = None,
) -> tuple[str, str | None]:
    """Anthropic `stop_reason` (and `stop_sequence`) for an OpenAI finish.

    Tool calls make it `tool_use` whatever the upstream said (Gemini and old Ollama
    say `stop`). A `stop` is a stop sequence when the upstream names the one it
    matched (SGLang's `matched_stop`) or the text still ends on one.
    """
    if hasToolCalls:
        return "tool_use", None
    reason = (
        _STOP_REASONS.get(finishReason, "end_turn")
        if isinstance(finishReason, str)
        else ("end_turn")
    )
    if reason == "end_turn" and stopSequences:
        if isinstance(matchedStop, str) and matchedStop in stopSequences:
            return "stop_sequence", matchedStop
        for sequence in stopSequences:
            if text.endswith(sequence):
                return "stop_sequence", sequence
    return reason, None


def anthropicUsage(usage: Any) -> dict[str, int]:
    """OpenAI usage as Anthropic counts it: prompt tokens read from the cache and
    written to it apart from the rest. Cache reads are `prompt_tokens_details.
    cached_tokens` (DeepSeek: `prompt_cache_hit_tokens`); cache writes, which
    cost more than plain input, are `prompt_tokens_details.cache_write_tokens`
    (OpenRouter) or `cache_creation_input_tokens` (LiteLLM); both are part of
    `prompt_tokens`."""
    if not isinstance(usage, dict):
        usage = {}
    prompt = _count(usage.get("prompt_tokens"))
    details = usage.get("prompt_tokens_details")
    if not isinstance(details, dict):
        details = {}
    cached = _count(details.get("cached_tokens")) or _count(usage.get("prompt_cache_hit_tokens"))
    cached = min(cached, prompt)
    written = _count(details.get("cache_write_tokens")) or _count(
        usage.get("cache_creation_input_tokens")
    )
    written = min(written, prompt - cached)
    return {
        "input_tokens": prompt - cached - written,
        "output_tokens": _count(usage.get("completion_tokens")),
        "cache_creation_input_tokens": written,
        "cache_read_input_tokens": cached,
    }


def sumUsage(usages: Sequence[dict[str, int]]) -> dict[str, int]:
    """Anthropic usages added up (one answer made of several upstream calls)."""
    keys = (
        "input_tokens",
        "output_tokens",
        "cache_creation_input_tokens",
        "cache_read_input_tokens",
    )
    return {key: sum(u.get(key, 0) for u in usages) for key in keys}


MAX_COUNT = 1 << 53
"""The most tokens one count may say: an upstream's 2**64 - 1 would overflow the
ledger's integers (and the sums over them)."""


_NUMBERS = (int, float)
"""A tuple, not `int | float`: that expression makes a union object at each call."""


def _count(value: Any) -> int:
    if type(value) is int and 0 <= value <= MAX_COUNT:  # the usual count: as it is
        return value
    if value is None or isinstance(value, bool) or not isinstance(value, _NUMBERS):
        return 0  # (None first: an absent count, the next most usual)
    if value != value:
        return 0
    return max(int(min(value, MAX_COUNT)), 0)
