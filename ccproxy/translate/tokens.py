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

from ccproxy.translate.dialect import Profile
from ccproxy.translate.request import toOpenAI

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


def requestTokens(body: Any, model: str, profile: Profile, defaultMaxTokens: int) -> int:
    """The estimate of a Messages request as `model` on an upstream of `profile` gets
    it: what `count_tokens` answers and `input_tokens_over` compares. Raises the
    translation's `ProxyError`, or `orjson.JSONEncodeError` for a body nested too
    deeply to encode."""
    translated = toOpenAI(body, model=model, profile=profile, defaultMaxTokens=defaultMaxTokens)
    return estimateTokens(translated)


def tokensAtMost(bodyBytes: int, images: int) -> int:
    """A bound on `requestTokens` of a Messages body of `bodyBytes` bytes holding
    `images` image or document blocks, known without counting.

    A text's estimate is at most its length (no piece gives more tokens than it has
    characters), and a translated text is a text of the body (its JSON at least as
    long) or a few fixed words standing for a block whose JSON is longer than their
    tokens (`[image attached below]`, a missing tool result's line); each message
    and tool costs fewer tokens than its JSON has bytes. An image counts
    `_PER_IMAGE` however few bytes name it; the constant covers the request's own
    and the tool search function ccproxy may add. Routing (`input_tokens_over`)
    counts only requests whose bound exceeds its threshold: a body is never counted
    for a threshold over its size in bytes."""
    return bodyBytes + _PER_IMAGE * images + 4096


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
        tokens = _rememberedTokens(text)
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


MEMO_CHARS = 32
"""Texts from this long are counted once per process (`_rememberedTokens`)."""
MEMO_ENTRIES = 32768
_memo: dict[tuple[int, int], int] = {}


def _rememberedTokens(text: str) -> int:
    """`textTokens`, remembered by the text's length and hash. A conversation sends
    its system prompt, tools and every earlier turn again on each request: counted
    once, each request counts only what is new (some 0.15 s a MiB saved on a long
    session's every turn, for `count_tokens` and `input_tokens_over` both). A
    memo of a pure function: the count is the same, only not done again. Full, it
    starts over (a hostile stream of new texts costs what it would without it)."""
    if len(text) < MEMO_CHARS:
        return textTokens(text)
    key = (len(text), hash(text))
    tokens = _memo.get(key)
    if tokens is None:
        tokens = textTokens(text)
        if len(_memo) >= MEMO_ENTRIES:
            _memo.clear()
        _memo[key] = tokens
    return tokens


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
