"""OpenAI Responses stream events -> Anthropic stream events.

A Responses stream says what it is making item by item: `response.output_item.added`,
deltas of the item's own kind (`response.output_text.delta`,
`response.reasoning_summary_text.delta`, `response.function_call_arguments.delta`),
`response.output_item.done` with the whole item, and at the end one of
`response.completed`, `response.incomplete` (out of tokens) or `response.failed`.
There is no `[DONE]`: a stream that ends before its `response.completed` or
`response.incomplete` was cut short, and is an error.

Each output item becomes at most one Anthropic block, as `fromResponses` makes of
the same item, so a stream and the whole answer it adds up to read the same:
reasoning a thinking block (signed with its `encrypted_content` from the item's
`done`), a message a text block, a function call a tool_use block. What a server
leaves out is taken from the whole item at its `done` (deltas never sent), or from
the finished response (no item events at all). The rest of the grammar and the
accounting across rounds of ccproxy's tool search are the chat translator's
(`StreamTranslator`), which this one extends.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any

from ccproxy.errors import brokenAnswer
from ccproxy.translate.response import syntheticToolId
from ccproxy.translate.responses import (
    chatUsage,
    finishReason,
    messageText,
    reasoningItemText,
    responsesSignature,
)
from ccproxy.translate.stream import Event, StreamTranslator, streamError

_ENDS = ("response.completed", "response.incomplete")
_ITEM_OF = {"text": "message", "thinking": "reasoning"}
"""The kind of output item whose block holds each kind of text."""


class _Item:
    """One output item of the answer, as far as it has come."""

    __slots__ = (
        "arguments",
        "block",
        "callId",
        "digest",
        "done",
        "held",
        "kind",
        "name",
        "part",
        "pieces",
        "said",
        "source",
    )

    def __init__(self, kind: str) -> None:
        self.kind = kind
        """message, reasoning or function_call."""
        self.block: int | None = None
        """Its block's index, once it has one."""
        self.held: list[str] = []
        """Leading whitespace not sent yet (a block of nothing but it is no block)."""
        self.said = False
        """Whether any text (or arguments) of it came in a delta."""
        self.source: str | None = None
        """The reasoning it streams: `summary` or `content` (the first one heard)."""
        self.part: Any = None
        """The summary part its last delta belonged to."""
        self.digest: Any = None
        self.callId = ""
        self.name = ""
        self.pieces: list[str] | None = None
        """A call of ccproxy's own function: its arguments as sent."""
        self.done = False


class ResponsesStreamTranslator(StreamTranslator):
    """Feeds on decoded Responses stream events, returns the Anthropic events each
    one makes; the same interface as the chat translator, for the relay."""

    def __init__(
        self,
        messageId: str,
        model: str,
        stopSequences: Sequence[str] = (),
        toolName: Callable[[str], str] = str,
        serverTools: frozenset[str] = frozenset(),
        contextWindow: int | None = None,
        upstream: str = "",
    ) -> None:
        """`upstream`: the name its reasoning's signatures carry."""
        super().__init__(
            messageId,
            model,
            stopSequences,
            toolName=toolName,
            serverTools=serverTools,
            contextWindow=contextWindow,
        )
        self._upstream = upstream
        self._items: dict[Any, _Item] = {}
        self._live: _Item | None = None
        """The item whose block is open."""
        self._signature: str | None = None
        self._callNames: list[str] = []
        self._serverBlocks: list[tuple[str, list[str]]] = []
        """This round's server calls: block id and argument pieces."""
        self._refused = False
        self._heard = False
        """Whether any output item event came (else the finished response is read)."""

    # -- input ------------------------------------------------------------------

    def feedInto(self, chunk: Any, events: list[Event]) -> None:
        """`feed`, its events added to `events` (as they are: joined deltas are the
        chat translator's)."""
        events.extend(self.feed(chunk))

    def feed(self, chunk: Any) -> list[Event]:
        """Events for one decoded Responses stream event; a `ProxyError` for an
        error the upstream sends in the stream."""
        if not isinstance(chunk, dict):
            raise brokenAnswer("the upstream sent a stream event that is not an object")
        kind = chunk.get("type")
        events: list[Event] = []
        if kind == "response.output_text.delta" or kind == "response.refusal.delta":
            self._refused = self._refused or kind == "response.refusal.delta"
            self._text(self._item(chunk, "message"), _delta(chunk), events)
        elif kind == "response.reasoning_summary_text.delta":
            self._reasoning(chunk, "summary", events)
        elif kind == "response.reasoning_text.delta":
            self._reasoning(chunk, "content", events)
        elif kind == "response.function_call_arguments.delta":
            item = self._item(chunk, "function_call")
            self._arguments(item, _delta(chunk), events)
        elif kind == "response.function_call_arguments.done":
            item = self._item(chunk, "function_call")
            if not item.said and isinstance(chunk.get("arguments"), str):
                self._arguments(item, chunk["arguments"], events)
        elif kind == "response.output_item.added":
            self._added(chunk, events)
        elif kind == "response.output_item.done":
            item = chunk.get("item")
            if isinstance(item, dict):
                self._whole(self._item(chunk, item.get("type")), item, events)
        elif kind in _ENDS:
            self._finished(chunk.get("response"), events)
        elif kind == "response.failed":
            response = chunk.get("response")
            error = response.get("error") if isinstance(response, dict) else None
            error = error or {"message": "the response failed"}
            raise streamError({"error": error}, self.contextWindow)
        elif kind == "error" or (kind is None and chunk.get("error")):
            # OpenAI's `error` event; or a chat-style error object some servers send
            raise streamError({"error": _errorObject(chunk)}, self.contextWindow)
        elif not isinstance(kind, str):
            raise brokenAnswer("the upstream sent a stream event without a type")
        return events

    def endBlocks(self, sawDone: bool = True) -> list[Event]:
        """Close the answer's blocks; a stream that never finished is an error
        (a Responses stream has no `[DONE]`: `sawDone` does not make it whole)."""
        if self.finishReason is None:
            raise brokenAnswer("the upstream ended the stream before finishing its answer")
        events: list[Event] = []
        self._close(events)
        return events

    def serverCalls(self) -> list[tuple[str, str]]:
        return [(blockId, "".join(pieces)) for blockId, pieces in self._serverBlocks]

    def clientCalls(self) -> bool:
        return any(name not in self._serverTools for name in self._callNames)

    def nextRound(self) -> None:
        super().nextRound()
        self._items, self._live = {}, None
        self._callNames, self._serverBlocks = [], []
        self._refused = self._heard = False

    # -- items ------------------------------------------------------------------

    def _item(self, chunk: dict[str, Any], kind: Any) -> _Item:
        """The item an event is about (by its output index, else its item id)."""
        key = chunk.get("output_index")
        if not isinstance(key, int) or isinstance(key, bool):
            key = chunk.get("item_id")
            if not isinstance(key, str):
                item = chunk.get("item")
                key = item.get("id") if isinstance(item, dict) else None
        self._heard = True
        item = self._items.get(key)
        if item is None:
            item = self._items[key] = _Item(kind if isinstance(kind, str) else "message")
        return item

    def _added(self, chunk: dict[str, Any], events: list[Event]) -> None:
        whole = chunk.get("item")
        if not isinstance(whole, dict):
            return
        item = self._item(chunk, whole.get("type"))
        if item.kind == "function_call":
            self._callFields(item, whole)
            self._startCall(item, events)

    def _whole(self, item: _Item, whole: dict[str, Any], events: list[Event]) -> None:
        """The item's `done`: what its deltas left out, its signature, its end."""
        if item.done:
            return
        item.done = True
        if item.kind == "message":
            text, refused = messageText(whole)
            self._refused = self._refused or refused
            if not item.said:
                self._text(item, text, events)
        elif item.kind == "reasoning":
            if not item.said:
                self._thinking(item, reasoningItemText(whole), events)
            encrypted = whole.get("encrypted_content")
            if isinstance(encrypted, str) and encrypted:
                if item.block is None:
                    self._openItem(item, "thinking", events)
                    self._flushHeld(item, events)
                if self._live is item:
                    self._signature = responsesSignature(self._upstream, encrypted)
        elif item.kind == "function_call":
            self._callFields(item, whole)
            if not item.said:
                self._arguments(item, _text(whole.get("arguments")), events)
            self._startCall(item, events)
        if self._live is item:
            self._close(events)

    def _finished(self, response: Any, events: list[Event]) -> None:
        if not isinstance(response, dict):
            response = {}
        output = response.get("output")
        if not self._heard and isinstance(output, list):
            # A server that sent no item events: the finished response has them.
            for position, whole in enumerate(output):
                if isinstance(whole, dict):
                    chunk = {"output_index": position, "item": whole}
                    self._whole(self._item(chunk, whole.get("type")), whole, events)
        self.finishReason = finishReason(response, self._refused)
        usage = chatUsage(response.get("usage"))
        if usage is not None:
            self.usage = usage

    # -- blocks -----------------------------------------------------------------

    def _openItem(self, item: _Item, kind: str, events: list[Event]) -> None:
        self._close(events)
        if kind == "thinking":
            block: dict[str, Any] = {"type": "thinking", "thinking": "", "signature": ""}
            item.digest = hashlib.sha256()
        elif kind == "text":
            block = {"type": "text", "text": ""}
        else:
            server = item.name in self._serverTools
            blockId = item.callId
            if server:
                blockId = self._serverBlockId(item.callId)
                item.pieces = []
                self._serverBlocks.append((blockId, item.pieces))
            block = {
                "type": "server_tool_use" if server else "tool_use",
                "id": blockId,
                "name": self._toolName(item.name),
                "input": {},
            }
            self._callNames.append(item.name)
        item.block = self._openBlock(kind, block, events)
        self._live = item
        if kind == "thinking":
            self._thinkingDigest = item.digest

    def _close(self, events: list[Event]) -> None:
        if self._open == "thinking" and self._signature is not None:
            events.append(
                {
                    "type": "content_block_delta",
                    "index": self._blocks - 1,
                    "delta": {"type": "signature_delta", "signature": self._signature},
                }
            )
            events.append({"type": "content_block_stop", "index": self._blocks - 1})
            self._open = None
        else:
            super()._close(events)
        self._signature = None
        self._live = None

    def _text(self, item: _Item, text: str, events: list[Event]) -> None:
        if text:
            item.said = True
        if self._place(item, "text", text, events) and self.stopSequences:
            self._textTail = (self._textTail + text)[-256:]

    def _reasoning(self, chunk: dict[str, Any], source: str, events: list[Event]) -> None:
        item = self._item(chunk, "reasoning")
        if item.source is None:
            item.source = source
        elif item.source != source:
            return  # its summary and its full text: the summary is what is shown
        part = chunk.get("summary_index")
        if source == "summary" and item.said and part != item.part:
            self._thinking(item, "\n\n", events)  # one paragraph per summary part
        item.part = part
        item.said = True
        self._thinking(item, _delta(chunk), events)

    def _thinking(self, item: _Item, text: str, events: list[Event]) -> None:
        self._place(item, "thinking", text, events)

    def _place(self, item: _Item, kind: str, text: str, events: list[Event]) -> bool:
        """Send `text` in the item's block (`text` or `thinking`), opening it at the
        first text that is not whitespace alone; whether it went out. Text of
        another kind than the item's (a server's mistake) goes nowhere: a delta
        goes only in a block of its own type."""
        if not text or item.kind != _ITEM_OF[kind]:
            return False
        if item.block is None:
            if not text.strip():
                item.held.append(text)
                return False
            self._openItem(item, kind, events)
            text = "".join([*item.held, text])
            item.held = []
        elif self._live is not item:
            return False  # its block was closed by another item's: nothing more goes in it
        if kind == "thinking":
            item.digest.update(text.encode())
            delta = {"type": "thinking_delta", "thinking": text}
        else:
            delta = {"type": "text_delta", "text": text}
        events.append({"type": "content_block_delta", "index": item.block, "delta": delta})
        return True

    def _flushHeld(self, item: _Item, events: list[Event]) -> None:
        """A block opened without text of its own (encrypted reasoning) takes its
        held whitespace, as the whole answer's block does."""
        held, item.held = "".join(item.held), []
        if held:
            item.digest.update(held.encode())
            events.append(
                {
                    "type": "content_block_delta",
                    "index": item.block,
                    "delta": {"type": "thinking_delta", "thinking": held},
                }
            )

    # -- function calls ---------------------------------------------------------

    def _callFields(self, item: _Item, whole: dict[str, Any]) -> None:
        if not item.callId:
            callId = whole.get("call_id")
            if isinstance(callId, str) and callId:
                item.callId = callId
        if not item.name and isinstance(whole.get("name"), str):
            item.name = whole["name"]

    def _startCall(self, item: _Item, events: list[Event]) -> None:
        """Open the call's block once, as soon as its name is known."""
        if item.block is not None or not item.name:
            return
        if not item.callId:
            item.callId = syntheticToolId(self.messageId, self._made)
        self._made += 1
        self._openItem(item, "tool_use", events)
        pending = "".join(item.held)
        item.held = []
        self._sendArgumentsText(item, pending, events)

    def _arguments(self, item: _Item, text: str, events: list[Event]) -> None:
        if not text or item.kind != "function_call":
            return
        item.said = True
        if item.block is None:
            item.held.append(text)  # its name is not known yet
        elif self._live is item:
            self._sendArgumentsText(item, text, events)

    def _sendArgumentsText(self, item: _Item, text: str, events: list[Event]) -> None:
        if not text:
            return
        if item.pieces is not None:
            item.pieces.append(text)
        events.append(
            {
                "type": "content_block_delta",
                "index": item.block,
                "delta": {"type": "input_json_delta", "partial_json": text},
            }
        )


def _delta(chunk: dict[str, Any]) -> str:
    return _text(chunk.get("delta"))


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _errorObject(chunk: dict[str, Any]) -> dict[str, Any]:
    """An `error` event's fields (OpenAI puts them at the top, some servers under
    `error`), as an error object."""
    inner = chunk.get("error")
    if isinstance(inner, dict):
        return inner
    return {key: chunk[key] for key in ("code", "message", "param") if key in chunk}
