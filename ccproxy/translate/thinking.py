"""Upstream reasoning, wherever a server puts it, as Claude's thinking.

Servers disagree on where reasoning goes: `reasoning_content` (DeepSeek, llama.cpp,
SGLang, LiteLLM), `reasoning` (vLLM since late 2025, Ollama, OpenRouter, Groq),
`reasoning_details[]` (OpenRouter), or `<think>…</think>` at the start of the content
(raw Qwen/DeepSeek-R1 output). All of it becomes `thinking` blocks, with a signature
that is plainly ccproxy's own: it must never pass for Anthropic's if a conversation
is later sent to Anthropic.
"""

from __future__ import annotations

import hashlib
from typing import Any

SIGNATURE_PREFIX = "ccproxy-thinking-v1:"

_OPEN = "<think>"
_CLOSE = "</think>"


def reasoningText(message: dict[str, Any]) -> str:
    """The reasoning text of a message or a stream delta ('' when none)."""
    for key in ("reasoning_content", "reasoning"):
        value = message.get(key)
        if isinstance(value, str) and value:
            return value
    details = message.get("reasoning_details")
    if isinstance(details, list):
        texts = []
        for detail in details:
            if not isinstance(detail, dict):
                continue
            for key in ("text", "summary"):  # reasoning.text / reasoning.summary
                if isinstance(detail.get(key), str):
                    texts.append(detail[key])
                    break
        return "".join(texts)
    return ""


def signatureFor(digest: Any) -> str:
    """A signature naming ccproxy, from a sha256 of the thinking text."""
    return SIGNATURE_PREFIX + digest.hexdigest()[:32]


def thinkingBlock(text: str) -> dict[str, Any]:
    return {
        "type": "thinking",
        "thinking": text,
        "signature": signatureFor(hashlib.sha256(text.encode())),
    }


def splitThinkTags(content: str) -> tuple[str, str]:
    """(thinking, text) of a whole content that may open with `<think>…</think>`."""
    splitter = ThinkTagSplitter()
    pieces = splitter.feed(content) + splitter.finish()
    thinking = "".join(text for kind, text in pieces if kind == "thinking")
    return thinking, "".join(text for kind, text in pieces if kind == "text")


class ThinkTagSplitter:
    """Splits streamed content into thinking and text when it opens with `<think>`.

    Tags may arrive cut across deltas, so undecided characters wait (never more
    than a tag's length, after any whitespace) until the next delta settles them.
    """

    def __init__(self) -> None:
        self._state = "start"  # start -> text, or start -> inside -> after -> text
        self._held = ""
        self._lead: list[str] = []
        """At the start: the deltas so far, whitespace first. Kept as a list, since an
        upstream may send any number of whitespace-only deltas before deciding."""

    def feed(self, content: str) -> list[tuple[str, str]]:
        """(kind, text) pieces, kind being "thinking" or "text"."""
        if self._state == "after":  # the newlines right after </think> are layout
            content = content.lstrip("\n")
            if not content:
                return []
            self._state = "text"
        if self._state == "text":
            return [("text", content)]
        out: list[tuple[str, str]] = []
        if self._state == "start":
            self._lead.append(content)
            # What follows the leading whitespace: at most a tag's length is held.
            self._held = self._held + content if self._held else content.lstrip()
            if self._held.startswith(_OPEN):
                self._state = "inside"
                self._held = self._held[len(_OPEN) :].lstrip("\n")
                self._lead = []
            elif _OPEN.startswith(self._held):
                return out  # maybe the tag, not yet whole
            else:
                self._state = "text"
                held, self._held, self._lead = "".join(self._lead), "", []
                return [("text", held)]
        else:
            self._held += content
        end = self._held.find(_CLOSE)
        if end >= 0:
            thinking, rest = self._held[:end], self._held[end + len(_CLOSE) :]
            self._state = "after"
            self._held = ""
            if thinking:
                out.append(("thinking", thinking))
            return out + self.feed(rest) if rest else out
        keep = len(_CLOSE) - 1  # the start of a closing tag may be at the end
        if len(self._held) > keep:
            out.append(("thinking", self._held[:-keep]))
            self._held = self._held[-keep:]
        return out

    def finish(self) -> list[tuple[str, str]]:
        """What is still held when the content ends."""
        held = "".join(self._lead) if self._state == "start" else self._held
        self._held, self._lead = "", []
        if not held:
            return []
        return [("thinking" if self._state == "inside" else "text", held)]
