"""An Anthropic answer passed through (`api: messages`): read only as far as needed.

An upstream that speaks the Messages API itself is not translated: its answer goes
to the client as it came. ccproxy still needs three things from it: the usage (for
the access log, metrics, the ledger and budgets), whether a 2xx stream failed
mid-way (an `event: error`, or a stream cut before `message_stop`), and, when the
client's stream was committed before any upstream answered (`head_wait`), that the
upstream's own `message_start` is not sent a second time. Only the four events that
carry those are parsed; every other event (the deltas: nearly all of a stream) is
forwarded as the bytes it came in.
"""

from __future__ import annotations

from typing import Any

import orjson

from ccproxy.errors import anthropicError, brokenAnswer
from ccproxy.translate.response import MAX_COUNT

USAGE_KEYS = (
    "input_tokens",
    "output_tokens",
    "cache_read_input_tokens",
    "cache_creation_input_tokens",
)
_READ = frozenset({b"message_start", b"message_delta", b"message_stop", b"error"})


def usageOf(value: Any) -> dict[str, int]:
    """The token counts in an Anthropic `usage` object, each at most `MAX_COUNT`;
    anything else is ignored."""
    if not isinstance(value, dict):
        return {}
    return {
        key: min(count, MAX_COUNT)
        for key in USAGE_KEYS
        if isinstance(count := value.get(key), int) and not isinstance(count, bool) and count >= 0
    }


class MessageStream:
    """Reads an Anthropic event stream as it is relayed: which frames go to the
    client (`keep`), the usage so far, and whether it ended as it should (`finish`).

    `skipStart`: the client already has a `message_start` (ccproxy's own, sent
    while no upstream had answered), so the upstream's is read but not sent.
    """

    def __init__(self, skipStart: bool = False) -> None:
        self.skipStart = skipStart
        self.usage: dict[str, int] = {}
        self.started = False
        self.stopped = False
        self._delta: dict[str, Any] | None = None
        """The `message_delta` just read, when its frame may lack what the client's
        `message_start` (ccproxy's) did not say: see `toSend`."""

    def reads(self, event: bytes) -> bool:
        """Whether `keep` needs the data of an event of this name (the rest go on
        unread); after `message_stop`, every frame's (none goes on)."""
        return event in _READ or not event or self.stopped

    def keep(self, event: bytes, data: bytes) -> bool:
        """Whether the frame of `event` (its name) with `data` goes to the client;
        a `ProxyError` for the upstream's own `event: error`, or a frame that
        cannot be read where it must be. Nothing after `message_stop` goes on: the
        answer was whole there (an error after it is no failure, and a second
        message's frames are not the client's)."""
        if self.stopped:
            return False
        if event not in _READ:
            if event:
                return True
            event = self._nameOf(data)  # a server that omits `event:` lines
            if event not in _READ:
                return True
        payload = _loads(data)
        if event == b"message_delta":
            usage = payload.get("usage")
            self.usage.update(usageOf(usage))
            self._delta = payload if self.skipStart else None
            return True
        if event == b"message_start":
            if self.started:  # the client would read a second message in this one
                raise brokenAnswer("the stream holds a second message_start")
            self.started = True
            message = payload.get("message")
            if isinstance(message, dict):
                self.usage.update(usageOf(message.get("usage")))
            return not self.skipStart
        if event == b"message_stop":
            self.stopped = True
            return True
        raise anthropicError(payload, 502) or brokenAnswer(
            f"the stream holds an error: {data[:200]!r}"
        )

    def toSend(self, event: bytes, data: bytes, frame: bytes) -> bytes | None:
        """The bytes of a read frame that go to the client (`keep`), None for none.

        With `skipStart`, the client's `message_start` was ccproxy's, its usage all
        zeros: the upstream's input counts (told in its own `message_start`) go in
        its `message_delta` then, where a client adds them up (as a translated
        stream's `message_delta` says them too)."""
        if not self.keep(event, data):
            return None
        delta, self._delta = self._delta, None
        if delta is None:
            return frame
        told = delta.get("usage")
        told = told if isinstance(told, dict) else {}
        missing = {k: v for k, v in self.usage.items() if k not in told}
        if not missing:
            return frame
        delta = {**delta, "usage": {**told, **missing}}
        return b"event: message_delta\ndata: " + orjson.dumps(delta) + b"\n\n"

    def finish(self) -> None:
        """The stream ended: a `ProxyError` when it ended before `message_stop`."""
        if not self.stopped:
            raise brokenAnswer("the stream ended before message_stop (cut short)")

    def knownUsage(self) -> dict[str, int] | None:
        """The usage the upstream has told of so far, if any."""
        return dict(self.usage) if self.usage else None

    @staticmethod
    def _nameOf(data: bytes) -> bytes:
        payload = _loads(data)
        name = payload.get("type")
        return name.encode() if isinstance(name, str) else b""


def _loads(data: bytes) -> dict[str, Any]:
    try:
        payload = orjson.loads(data)
    except orjson.JSONDecodeError:
        payload = None
    if not isinstance(payload, dict):
        raise brokenAnswer(f"the stream holds an event that is not a JSON object: {data[:200]!r}")
    return payload


def wholeMessage(data: Any) -> dict[str, Any]:
    """A whole Anthropic message, checked so far as ccproxy reads it: its usage for
    the accounting, and its blocks in case it must be sent as a stream
    (`eventsForMessage`). A `ProxyError` for an error envelope or any other shape."""
    error = anthropicError(data, 502)
    if error is not None:
        raise error
    if not isinstance(data, dict) or not isinstance(data.get("content"), list):
        raise brokenAnswer("the answer is not an Anthropic message (no content list)")
    for block in data["content"]:
        if not isinstance(block, dict) or not _blockOK(block):
            raise brokenAnswer(f"the answer holds a content block it should not: {block!r:.200}")
    return {
        **data,
        "stop_reason": data.get("stop_reason"),
        "stop_sequence": data.get("stop_sequence"),
        "usage": usageOf(data.get("usage")),
    }


def _blockOK(block: dict[str, Any]) -> bool:
    kind = block.get("type")
    if kind == "text":
        return isinstance(block.get("text"), str)
    if kind in ("tool_use", "server_tool_use"):
        return "input" in block
    if kind == "thinking":
        return isinstance(block.get("thinking"), str) and isinstance(block.get("signature"), str)
    return isinstance(kind, str)
