"""What a Messages request holds, read cheaply for routing (`routes:` in the config).

A rule asks whether a request carries an image, has thinking switched on, offers a
tool, or is one of Claude Code's background calls. Each fact is read on first use
and kept, so rules that ask the same question read the body once. The walks are
linear and shallow: the messages' blocks and the blocks of their `tool_result`s,
the `tools` list, a few top-level keys; nothing recurses into a tool's input or a
schema, so a deeply nested or huge body costs its length and no more. A malformed
body is no error here (the translation refuses it later): a fact it cannot read is
simply absent.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any

from ccproxy.translate.tokens import tokensAtMost

IMAGE_BLOCKS = frozenset(("image", "document"))
"""Blocks that need a model that sees: images, and documents (PDFs)."""
THINKING_TYPES = frozenset(("enabled", "adaptive"))
THINKING_EFFORTS = frozenset(("high", "xhigh", "max"))
"""`output_config.effort` values that ask for a reasoning model."""


class RequestFacts:
    """The facts routing reads from one request body, each computed once."""

    def __init__(self, body: dict[str, Any], size: int) -> None:
        self.body = body
        self.size = size
        """Bytes of the body as received: what bounds its token estimate."""
        self.inputTokens: int | None = None
        """The count_tokens estimate, once a rule needed it (see `tokensAtMost`)."""

    @cached_property
    def images(self) -> int:
        """Image and document blocks, in messages and inside their tool results."""
        messages = self.body.get("messages")
        if not isinstance(messages, list):
            return 0
        found = 0
        for message in messages:
            content = message.get("content") if isinstance(message, dict) else None
            if not isinstance(content, list):
                continue
            for block in content:
                if not isinstance(block, dict):
                    continue
                kind = block.get("type")
                if kind in IMAGE_BLOCKS:
                    found += 1
                elif kind == "tool_result":
                    inner = block.get("content")
                    if isinstance(inner, list):
                        for part in inner:
                            if isinstance(part, dict) and part.get("type") in IMAGE_BLOCKS:
                                found += 1
        return found

    @cached_property
    def thinking(self) -> bool:
        """Thinking enabled or adaptive, or a high `output_config.effort`."""
        thinking = self.body.get("thinking")
        if isinstance(thinking, dict) and thinking.get("type") in THINKING_TYPES:
            return True
        output = self.body.get("output_config")
        effort = output.get("effort") if isinstance(output, dict) else None
        return isinstance(effort, str) and effort in THINKING_EFFORTS

    @cached_property
    def tools(self) -> tuple[str, ...]:
        """The names of the tools offered, and the types of server tools
        (`web_search_20250305`), in the order offered."""
        tools = self.body.get("tools")
        if not isinstance(tools, list):
            return ()
        names: list[str] = []
        for tool in tools:
            if not isinstance(tool, dict):
                continue
            name, kind = tool.get("name"), tool.get("type")
            if isinstance(name, str):
                names.append(name)
            if isinstance(kind, str) and kind != "custom":
                names.append(kind)
        return tuple(names)

    @property
    def background(self) -> bool:
        """No tool offered: Claude Code's side calls (a session's title, summaries,
        a command's prefix, the quota probe), never its main loop or a subagent,
        which always offer tools."""
        return not self.tools

    @property
    def tokenBound(self) -> int:
        """No request's estimate exceeds this (`tokensAtMost`): a threshold at or
        above it is settled without counting."""
        return tokensAtMost(self.size, self.images)
