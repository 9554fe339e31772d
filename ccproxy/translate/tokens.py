"""Token estimate for `count_tokens`, over what the upstream will actually see.

No gateway offers a tokenizer endpoint, and the upstream model's tokenizer is not
Claude's, so the count is an estimate: it is taken over the translated OpenAI body
(system, messages, tool calls and tool schemas as sent), splitting text into word
pieces, numbers and punctuation the way BPE tokenizers roughly do.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

# A BPE vocabulary holds most common words whole; longer runs split every ~4 chars.
_PIECE = re.compile(r"[A-Za-z]+|\d{1,3}|\s+|[^\sA-Za-z\d]")
_PER_MESSAGE = 4
_PER_TOOL = 8
_PER_IMAGE = 1000


def estimateTokens(request: dict[str, Any]) -> int:
    """Estimated prompt tokens of a translated chat/completions request."""
    total = 0
    for message in request.get("messages", ()):
        total += _PER_MESSAGE + _contentTokens(message.get("content"))
        for call in message.get("tool_calls", ()):
            function = call.get("function", {})
            total += _PER_TOOL + textTokens(function.get("name", ""))
            total += textTokens(function.get("arguments", ""))
    for tool in request.get("tools", ()):
        total += _PER_TOOL + textTokens(orjson.dumps(tool.get("function", {})).decode())
    return max(total, 1)


def _contentTokens(content: Any) -> int:
    if isinstance(content, str):
        return textTokens(content)
    total = 0
    for part in content or ():
        if part.get("type") == "text":
            total += textTokens(part.get("text", ""))
        else:
            total += _PER_IMAGE
    return total


def textTokens(text: str) -> int:
    """Estimated tokens in one text."""
    total = 0
    for match in _PIECE.finditer(text):
        piece = match.group()
        if piece[0].isalpha():
            total += 1 + (len(piece) - 1) // 6
        elif piece[0].isspace():
            total += 0 if len(piece) == 1 else 1
        else:
            total += 1  # a number group, a punctuation mark, or a non-Latin character
    return total
