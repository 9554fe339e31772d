"""Anthropic Messages <-> OpenAI's Responses API (`api: responses` upstreams).

The request is translated by the chat translator first (`toOpenAI`: one pass that
validates the client's body and settles tool results, tool names, schema presets,
tool search and the history's shape), then its messages are recast as Responses
`input` items: the leading system text becomes `instructions`, user content
`input_text`/`input_image`/`input_file` parts, an assistant turn `output_text`
and one `function_call` per call, a tool message a `function_call_output`.
ccproxy stays stateless: `store: false`, no `previous_response_id`.

A reasoning model's chain of thought is carried across turns the way OpenAI
asks for when nothing is stored: its `reasoning` item comes back with its
`encrypted_content`. ccproxy keeps that text in the thinking block's signature
(`ResponsesSignature`), naming the upstream it came from, and sends it back as a
`reasoning` item to that upstream only; any other signature (Anthropic's,
ccproxy's own hash) never goes as one.

The whole answer (`fromResponses`) is read here; the stream, with the same
vocabulary, in `ccproxy.translate.responsestream`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ccproxy.errors import brokenAnswer
from ccproxy.translate.dialect import Profile
from ccproxy.translate.names import ToolNames
from ccproxy.translate.request import THINKING_BLOCKS, reasoningEffort, toOpenAI
from ccproxy.translate.response import (
    anthropicMessage,
    anthropicUsage,
    contentText,
    parseArguments,
    stopReasonFor,
    syntheticToolId,
)
from ccproxy.translate.thinking import thinkingBlock

SIGNATURE_PREFIX = "ccproxy-responses-v1:"
"""Starts the signature of a thinking block that holds a Responses upstream's
`encrypted_content`: `ccproxy-responses-v1:<upstream>:<encrypted_content>`."""

_PASSED = ("temperature", "top_p", "user", "prompt_cache_key", "parallel_tool_calls")
"""Chat request fields that mean the same in a Responses request."""


def toResponses(
    body: Any,
    *,
    model: str,
    profile: Profile,
    defaultMaxTokens: int,
    upstream: str,
    names: ToolNames | None = None,
    cacheKey: str | None = None,
) -> dict[str, Any]:
    """Translate a Messages request body for the Responses API of `upstream` (its
    name: only the reasoning it produced goes back to it)."""
    chat = toOpenAI(
        body,
        model=model,
        profile=profile,
        defaultMaxTokens=defaultMaxTokens,
        names=names,
        cacheKey=cacheKey,
        keepThinking=True,
    )
    instructions, items = _inputItems(chat["messages"], upstream)
    out: dict[str, Any] = {"model": model}
    if instructions:
        out["instructions"] = instructions
    out["input"] = items
    out["max_output_tokens"] = chat.get(profile.maxTokensParam)
    for key in _PASSED:
        if key in chat:
            out[key] = chat[key]
    if "tools" in chat:
        out["tools"] = [_functionTool(tool["function"]) for tool in chat["tools"]]
        if "tool_choice" in chat:
            out["tool_choice"] = _toolChoice(chat["tool_choice"])
    effort = reasoningEffort(body.get("thinking"), body.get("output_config"))
    if effort is not None and profile.reasoning == "reasoning_effort":
        out["reasoning"] = {"effort": effort, "summary": "auto"}
        out["include"] = ["reasoning.encrypted_content"]
    out["store"] = False
    out["stream"] = chat["stream"]
    out.update(profile.extraBody)
    return out


def _inputItems(messages: list[dict[str, Any]], upstream: str) -> tuple[str, list[dict[str, Any]]]:
    """The chat messages as `instructions` and Responses input items."""
    instructions = ""
    items: list[dict[str, Any]] = []
    for position, message in enumerate(messages):
        role = message["role"]
        if position == 0 and role in ("system", "developer"):
            content = message["content"]  # parts when cache_control passes through
            parts = [content] if isinstance(content, str) else [p["text"] for p in content]
            instructions = "\n\n".join(parts)
        elif role == "tool":
            items.append(
                {
                    "type": "function_call_output",
                    "call_id": message["tool_call_id"],
                    "output": message["content"],
                }
            )
        elif role == "assistant":
            for block in message.get(THINKING_BLOCKS, ()):
                encrypted = encryptedContent(block.get("signature"), upstream)
                if encrypted is not None:
                    items.append(_reasoningItem(block["thinking"], encrypted))
            text = message.get("content") or ""
            if text:
                content = [{"type": "output_text", "text": text}]
                items.append({"type": "message", "role": "assistant", "content": content})
            for call in message.get("tool_calls", ()):
                function = call["function"]
                items.append(
                    {
                        "type": "function_call",
                        "call_id": call["id"],
                        "name": function["name"],
                        "arguments": function["arguments"],
                    }
                )
        else:
            items.append({"type": "message", "role": "user", "content": _userParts(message)})
    return instructions, items


def _userParts(message: dict[str, Any]) -> list[dict[str, Any]]:
    content = message["content"]
    if isinstance(content, str):
        return [{"type": "input_text", "text": content}]
    parts = []
    for part in content:
        kind = part["type"]
        if kind == "image_url":
            url = part["image_url"]["url"]
            parts.append({"type": "input_image", "image_url": url, "detail": "auto"})
        elif kind == "file":
            file = part["file"]
            parts.append(
                {
                    "type": "input_file",
                    "filename": file["filename"],
                    "file_data": file["file_data"],
                }
            )
        else:
            parts.append({"type": "input_text", "text": part["text"]})
    return parts


def _reasoningItem(summary: str, encrypted: str) -> dict[str, Any]:
    texts = [{"type": "summary_text", "text": summary}] if summary else []
    return {"type": "reasoning", "summary": texts, "encrypted_content": encrypted}


def _functionTool(function: dict[str, Any]) -> dict[str, Any]:
    """A chat function tool as a Responses one (flat; `strict: false` keeps the
    schema as the client wrote it)."""
    tool: dict[str, Any] = {"type": "function", "name": function["name"]}
    if "description" in function:
        tool["description"] = function["description"]
    tool["parameters"] = function.get("parameters")
    tool["strict"] = False
    return tool


def _toolChoice(choice: Any) -> Any:
    if isinstance(choice, dict):
        return {"type": "function", "name": choice["function"]["name"]}
    return choice


def responsesSignature(upstream: str, encrypted: str) -> str:
    """A thinking block's signature holding `upstream`'s encrypted reasoning."""
    return f"{SIGNATURE_PREFIX}{upstream}:{encrypted}"


def encryptedContent(signature: Any, upstream: str) -> str | None:
    """The encrypted reasoning a signature holds, when it came from `upstream`."""
    if not isinstance(signature, str) or not signature.startswith(SIGNATURE_PREFIX):
        return None
    name, _, encrypted = signature[len(SIGNATURE_PREFIX) :].partition(":")
    return encrypted if name == upstream and encrypted else None


# -- the answer ------------------------------------------------------------------


def fromResponses(
    data: Any,
    *,
    messageId: str,
    model: str,
    upstream: str,
    stopSequences: Sequence[str] = (),
    toolName: Callable[[str], str] = str,
) -> dict[str, Any]:
    """A decoded Responses `response` object as an Anthropic message (a failed
    response is the caller's to turn into an error first)."""
    if not isinstance(data, dict):
        raise brokenAnswer("the upstream's answer is not a JSON object")
    output = data.get("output")
    if not isinstance(output, list):
        raise brokenAnswer("the upstream's answer holds no output")
    content: list[dict[str, Any]] = []
    text = ""
    made = 0
    refused = False
    for item in output:
        if not isinstance(item, dict):
            continue
        kind = item.get("type")
        if kind == "reasoning":
            block = reasoningBlock(item, upstream)
            if block is not None:
                content.append(block)
        elif kind == "message":
            said, refusal = messageText(item)
            refused = refused or refusal
            if said.strip():
                content.append({"type": "text", "text": said})
                text = said
        elif kind == "function_call":
            callId = item.get("call_id")
            if not isinstance(callId, str) or not callId:
                callId = syntheticToolId(messageId, made)
            made += 1
            name = item.get("name")
            content.append(
                {
                    "type": "tool_use",
                    "id": callId,
                    "name": toolName(name) if isinstance(name, str) else "",
                    "input": parseArguments(item.get("arguments")),
                }
            )
    hasCalls = any(b["type"] == "tool_use" for b in content)
    stopReason, stopSequence = stopReasonFor(
        finishReason(data, refused), hasCalls, text, stopSequences
    )
    usage = anthropicUsage(chatUsage(data.get("usage")))
    return anthropicMessage(messageId, model, content, stopReason, stopSequence, usage)


def reasoningBlock(item: dict[str, Any], upstream: str) -> dict[str, Any] | None:
    """A `reasoning` item as a thinking block: its summary (else its reasoning
    text), signed with its encrypted content when it has one; None when it holds
    neither text nor encrypted content."""
    text = reasoningItemText(item)
    encrypted = item.get("encrypted_content")
    if isinstance(encrypted, str) and encrypted:
        signature = responsesSignature(upstream, encrypted)
        return {"type": "thinking", "thinking": text, "signature": signature}
    return thinkingBlock(text) if text.strip() else None


def reasoningItemText(item: dict[str, Any]) -> str:
    """A reasoning item's summary texts, one paragraph each; its `reasoning_text`
    content when it has no summary (gpt-oss on open servers)."""
    summary = _texts(item.get("summary"), "summary_text")
    if summary:
        return "\n\n".join(summary)
    return "".join(_texts(item.get("content"), "reasoning_text"))


def messageText(item: dict[str, Any]) -> tuple[str, bool]:
    """An output message's text (its refusals included), and whether it refused."""
    content = item.get("content")
    if not isinstance(content, list):
        return contentText(content), False
    texts, refused = [], False
    for part in content:
        if not isinstance(part, dict):
            continue
        if part.get("type") == "refusal" and isinstance(part.get("refusal"), str):
            texts.append(part["refusal"])
            refused = True
        elif isinstance(part.get("text"), str):  # LiteLLM sends `text: null`
            texts.append(part["text"])
    return "".join(texts), refused


def _texts(parts: Any, kind: str) -> list[str]:
    if not isinstance(parts, list):
        return []
    return [
        p["text"]
        for p in parts
        if isinstance(p, dict) and p.get("type", kind) == kind and isinstance(p.get("text"), str)
    ]


def finishReason(response: dict[str, Any], refused: bool = False) -> str:
    """The chat finish reason a response's status amounts to."""
    if response.get("status") == "incomplete":
        details = response.get("incomplete_details")
        reason = details.get("reason") if isinstance(details, dict) else None
        return "content_filter" if reason == "content_filter" else "length"
    return "content_filter" if refused else "stop"


def chatUsage(usage: Any) -> dict[str, Any] | None:
    """Responses usage in chat's words, for `anthropicUsage` (one reading of usage)."""
    if not isinstance(usage, dict):
        return None
    details = usage.get("input_tokens_details")
    return {
        "prompt_tokens": usage.get("input_tokens"),
        "completion_tokens": usage.get("output_tokens"),
        "prompt_tokens_details": details if isinstance(details, dict) else {},
    }
