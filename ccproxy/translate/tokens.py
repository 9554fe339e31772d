"""Token estimate for `count_tokens`, over what the upstream will actually see.

No gateway offers a tokenizer endpoint, and the upstream model's tokenizer is not
Claude's, so the count is an estimate: it is taken over the translated OpenAI body
(system, messages, tool calls and tool schemas as sent), splitting text into word
pieces, numbers and punctuation the way BPE tokenizers roughly do. The constants are
calibrated with `python -m bench.count_tokens_accuracy` (README, count_tokens).
"""

from __future__ import annotations

import re
import string
from typing import Any

import orjson

# Words in any script, single digits, whitespace runs, ASCII punctuation runs, and
# any other single character.
_PIECE = re.compile(r"[^\W\d_]+|\d|\s+|[!-/:-@\[-`{-~]+|.", re.DOTALL)
_ASCII_PUNCTUATION = frozenset(string.punctuation)
# A BPE vocabulary holds most English words of up to ~12 letters whole.
_LETTERS_PER_TOKEN = 8
# Cyrillic, Greek, accented Latin...: vocabularies hold fewer such merges.
_OTHER_SCRIPT_LETTERS_PER_TOKEN = 3
_PER_REQUEST = 3  # the assistant header a chat template ends with
_PER_MESSAGE = 4
_PER_TOOL = 8
_PER_TOOLS = 100  # the instructions a chat template wraps the tool list in
_PER_IMAGE = 1000


EXACT_CHARS = 1 << 20
"""Characters of a request's text counted piece by piece; past them, the rest is
counted at the rate the first ones gave. Counting is a Python loop over every word
(some 0.15 s a MiB): a 30 MiB body took 3.7 s of one core, and one caller sending
such bodies in a loop halved everyone else's share of it. A request Claude Code
sends holds far less text than this, so its count is exact as before."""


def estimateTokens(request: dict[str, Any]) -> int:
    """Estimated prompt tokens of a translated chat/completions request (or a
    Responses one: its `instructions` and `input` items)."""
    tally = _Tally()
    total = _PER_REQUEST
    if isinstance(request.get("instructions"), str):
        total += _PER_MESSAGE + tally.text(request["instructions"])
    for item in request.get("input", ()):
        total += _PER_MESSAGE + _contentTokens(item.get("content"), tally)
        for key in ("name", "arguments", "output", "encrypted_content"):
            if isinstance(item.get(key), str):
                total += tally.text(item[key])
    for message in request.get("messages", ()):
        total += _PER_MESSAGE + _contentTokens(message.get("content"), tally)
        for call in message.get("tool_calls", ()):
            function = call.get("function", {})
            total += _PER_TOOL + tally.text(function.get("name", ""))
            total += tally.text(function.get("arguments", ""))
    tools = request.get("tools", ())
    if tools:
        total += _PER_TOOLS
    for tool in tools:
        total += _PER_TOOL + tally.text(orjson.dumps(tool.get("function", tool)).decode())
    return max(total, 1)


class _Tally:
    """Counts texts exactly up to `EXACT_CHARS` in all, then extrapolates."""

    def __init__(self, budget: int = EXACT_CHARS) -> None:
        self._left = budget
        self._chars = 0
        self._tokens = 0

    def text(self, text: str) -> int:
        if len(text) <= self._left:
            return self._exact(text)
        cut = self._left
        head = self._exact(text[:cut]) if cut else 0
        return head + self._rate(len(text) - cut)

    def _exact(self, text: str) -> int:
        tokens = textTokens(text)
        self._left -= len(text)
        self._chars += len(text)
        self._tokens += tokens
        return tokens

    def _rate(self, chars: int) -> int:
        return round(chars * self._tokens / self._chars) if self._chars else (chars + 3) // 4


def _contentTokens(content: Any, tally: _Tally) -> int:
    if isinstance(content, str):
        return tally.text(content)
    total = 0
    for part in content or ():
        if part.get("type") in ("text", "input_text", "output_text"):
            total += tally.text(part.get("text", ""))
        else:
            total += _PER_IMAGE
    return total


def textTokens(text: str) -> int:
    """Estimated tokens in one text."""
    total = 0
    for match in _PIECE.finditer(text):
        piece = match.group()
        if piece[0].isalpha():
            total += _wordTokens(piece)
        elif piece[0].isspace():
            # A space folds into the next word; a newline or a longer run does not.
            total += 1 if len(piece) > 1 or piece == "\n" else 0
        elif piece[0] in _ASCII_PUNCTUATION:
            total += (len(piece) + 1) // 2  # `":"`, `",`, `{"`, `();` are merged pairs
        else:
            total += 1  # a digit (most vocabularies split numbers), an emoji, a symbol
    return total


def _wordTokens(word: str) -> int:
    if word.isascii():
        return 1 + (len(word) - 1) // _LETTERS_PER_TOKEN
    ideographs = sum(1 for char in word if char >= "\u2e80")  # CJK, kana, Hangul: 1 each
    rest = len(word) - ideographs
    if rest:
        ideographs += 1 + (rest - 1) // _OTHER_SCRIPT_LETTERS_PER_TOKEN
    return ideographs
