"""Tool names an OpenAI-compatible upstream accepts, reversibly.

OpenAI wants function names matching `^[a-zA-Z0-9_-]{1,64}$`. Gemini also wants the
first character to be a letter or an underscore. Claude Code's MCP tools break
both rules: `mcp__<server>__<tool>` often runs past 64 characters, and a server name
may hold dots, spaces or non-ASCII letters. A name that fails either rule would make
the upstream reject the whole request.

So a valid name (by both rules) is sent unchanged. Any other name is sent as a
readable, sanitized stem plus `_` plus 8 hex digits of the SHA-256 of the original,
at most 64 characters in all. The short name depends only on the original, so the
tool list, the `tool_use` blocks in the history and the upstream's new calls agree
from one request to the next without any stored state. Within one request, a short
name that would clash with another tool's name is salted until it is unique. Names
are taken in sorted order, so the result does not depend on the order they arrived
in. `ToolNames.fromUpstream` turns the upstream's calls back into the client's names.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Iterable, Mapping
from typing import Any

from attrs import field, frozen

MAX_NAME_LENGTH = 64
HASH_LENGTH = 8

_VALID = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,63}")
_INVALID_RUN = re.compile(r"[^A-Za-z0-9_-]+")
_START = re.compile(r"[A-Za-z_]")
_STEM_LENGTH = MAX_NAME_LENGTH - 1 - HASH_LENGTH
# A stem that is too long keeps this much of its start; the rest of the budget
# goes to its end, where an MCP name has the tool's own name.
_HEAD_LENGTH = 20


def isValidName(name: str) -> bool:
    """Whether both OpenAI and Gemini take `name` as a function name unchanged."""
    return _VALID.fullmatch(name) is not None


def shortName(name: str, salt: int = 0) -> str:
    """The upstream name for a name that is not valid: a stem and a hash, <= 64 chars.

    `salt` picks another hash for the same name, used only to resolve a clash.
    """
    data = name.encode("utf-8", "surrogatepass")
    if salt:
        data += b"\0" + str(salt).encode()
    digest = hashlib.sha256(data).hexdigest()[:HASH_LENGTH]
    return f"{_stem(name)}_{digest}"


def _stem(name: str) -> str:
    """A readable ASCII version of `name` that fits the budget before the hash."""
    folded = unicodedata.normalize("NFKD", name)
    folded = "".join(c for c in folded if not unicodedata.combining(c))  # é -> e
    stem = _INVALID_RUN.sub("_", folded)
    if stem.strip("_-") == "":
        stem = "tool"
    elif not _START.match(stem):
        stem = "_" + stem  # Gemini: a name starts with a letter or an underscore
    if len(stem) > _STEM_LENGTH:
        tail = _STEM_LENGTH - _HEAD_LENGTH - 1
        stem = f"{stem[:_HEAD_LENGTH]}_{stem[-tail:]}"
    return stem


@frozen
class ToolNames:
    """The names of one request's tools, both ways: client <-> upstream."""

    up: Mapping[str, str] = field(factory=dict)
    """The upstream name of each of the request's names. Read directly by the
    request translator's loops (a `toUpstream` call per tool and per call cost
    more than the lookup); `toUpstream` answers for any name."""
    _down: Mapping[str, str] = field(factory=dict)
    same: bool = False
    """Known to send every name as it is (all of them valid): nothing to rename."""

    @classmethod
    def of(cls, names: Iterable[str]) -> ToolNames:
        """The mapping for a set of client names (order and repeats do not matter).

        Remembered (`_MEMO`): a session's requests name the same tools each time, and
        checking every name again cost as much as finding them in the body."""
        unique = frozenset(names)
        known = _MEMO.get(unique)
        if known is not None:
            return known
        made = cls._made(unique)
        if len(unique) <= MEMO_NAMES and sum(map(len, unique)) <= MEMO_CHARS:
            if len(_MEMO) >= MEMO_ENTRIES:
                _MEMO.clear()  # rare (many distinct tool sets): start again, bounded
            _MEMO[unique] = made
        return made

    @classmethod
    def _made(cls, unique: frozenset[str]) -> ToolNames:
        up = {name: name for name in unique if isValidName(name)}
        if len(up) == len(unique):  # every name valid (Claude Code's own tools): as they are
            return cls(up=up, down=up, same=True)
        taken = set(up)
        for name in sorted(unique - taken):
            salt = 0
            short = shortName(name)
            while short in taken:
                salt += 1
                short = shortName(name, salt)
            taken.add(short)
            up[name] = short
        return cls(up=up, down={short: name for name, short in up.items()})

    @classmethod
    def fromRequest(cls, body: Any) -> ToolNames:
        """The mapping for a Messages request body: its tools, the tool_use blocks
        in its history and its tool_choice. Parts that are not well-formed are
        skipped, since the request translator reports those."""
        return cls.of(_requestNames(body))

    @property
    def renamed(self) -> bool:
        """Whether any name differs upstream (if not, nothing needs translating)."""
        return any(name != short for name, short in self.up.items())

    def toUpstream(self, name: str) -> str:
        """The name to send upstream for a client name."""
        short = self.up.get(name)
        if short is not None:
            return short
        return name if isValidName(name) else shortName(name)

    def fromUpstream(self, name: str) -> str:
        """The client's name for a name the upstream used; unknown names unchanged."""
        return self._down.get(name, name)


MEMO_ENTRIES = 64
"""Tool sets remembered by `ToolNames.of` (a few per session: its main loop, its
subagents), then forgotten all at once."""
MEMO_NAMES = 256
MEMO_CHARS = 16384
"""Only sets of at most this many names, this many characters in all, are
remembered: the memo holds at most a megabyte whatever clients send."""
_MEMO: dict[frozenset[str], ToolNames] = {}
"""Tool set -> its mapping. A `ToolNames` is immutable, so requests share one; a
dict's get and set are atomic, so translations in threads may share it too."""


def _requestNames(body: Any) -> set[str]:
    names: set[str] = set()
    if not isinstance(body, dict):
        return names
    addDefinedNames(body, names)
    messages = body.get("messages")
    if isinstance(messages, list):
        for message in messages:
            try:
                content = message.get("content")
            except AttributeError:
                continue
            if not isinstance(content, list):
                continue
            for block in content:
                try:
                    if block.get("type") != "tool_use":
                        continue
                except AttributeError:
                    continue
                name = block.get("name")
                if isinstance(name, str):
                    names.add(name)
    return names


def addDefinedNames(body: dict[str, Any], names: set[str]) -> None:
    """Add to `names` those a request defines or asks for outside its history: its
    tools' and its tool_choice's. The history's are its `tool_use` blocks' names
    (a request translator walking it finds them as it goes: `PendingNames`)."""
    tools = body.get("tools")
    if isinstance(tools, list):
        for tool in tools:
            try:
                name = tool.get("name")
            except AttributeError:  # no object (cheaper than an isinstance per tool)
                continue
            if isinstance(name, str):
                names.add(name)
    choice = body.get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") == "tool":
        if isinstance(choice.get("name"), str):
            names.add(choice["name"])


class PendingNames:
    """One request's `ToolNames`, found once, then kept: handed over by the
    request's first translation (`found`), whose walk over the history meets
    every `tool_use` anyway, so that the history is not walked a second time just
    for its names; or found from the body (`ToolNames.fromRequest`) when asked
    before that (`names`). Either way the same mapping: the same set of names
    (so two finding it at once, a translation in a thread and a reader, agree)."""

    __slots__ = ("_body", "_names")

    def __init__(self, body: Any) -> None:
        self._body: Any = body
        self._names: ToolNames | None = None

    @property
    def names(self) -> ToolNames:
        """The mapping, found from the body now if no translation handed it over."""
        names = self._names
        if names is None:
            body = self._body
            # None: a translation in a thread handed its names over since the line
            # above (`found` sets them before it lets the body go)
            handed = self._names if body is None else None
            names = handed if handed is not None else ToolNames.fromRequest(body)
            self._names, self._body = names, None
        return names

    @property
    def known(self) -> ToolNames | None:
        """The mapping if it is found already (None: a translation may find it)."""
        return self._names

    def found(self, names: ToolNames) -> None:
        """A translation's walk found the request's names (its body is let go)."""
        if self._names is None:
            self._names = names
            self._body = None
