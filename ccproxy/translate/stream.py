"""OpenAI stream chunks -> Anthropic stream events: a state machine over dicts.

Claude Code needs a strict grammar: `message_start`, then per block
`content_block_start`, deltas of the block's own type, `content_block_stop` (one
block open at a time, indices 0, 1, 2, …), then `message_delta` with the stop reason
and usage, then `message_stop`. Upstreams send tool calls in every shape
(`docs/upstream-quirks.md`): index missing or always 0, ids once or on every
fragment, arguments whole, in pieces, as objects, or interleaved between parallel
calls. This module turns all of them into that grammar, streaming each fragment
as soon as it can be placed.

Each chunk costs time in proportion to its own size, never to what came before it:
a model writing a large file sends its arguments in many thousands of fragments, so
they are kept as a list of pieces, and read once, piece by piece, to know when they
form a whole JSON value (`_Progress`), instead of being joined and parsed again for
every fragment.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from operator import itemgetter
from typing import Any

import orjson

from ccproxy.errors import ProxyError, brokenAnswer, extractMessage, promptTooLong, statusInBody
from ccproxy.translate.overflow import readOverflow
from ccproxy.translate.response import (
    anthropicUsage,
    argumentsText,
    contentText,
    stopReasonFor,
    sumUsage,
    syntheticToolId,
)
from ccproxy.translate.thinking import ThinkTagSplitter, reasoningText, signatureFor
from ccproxy.translate.toolsearch import serverCallId

Event = dict[str, Any]

_JOIN_LIMIT = 4096
"""Consecutive deltas of a block are joined into one while it is shorter than this."""


class _Call:
    """One tool call being assembled from fragments."""

    __slots__ = (
        "_parts",
        "_progress",
        "_unfed",
        "_unsent",
        "block",
        "blockId",
        "closed",
        "id",
        "length",
        "name",
    )

    def __init__(self, callId: str) -> None:
        self.id = callId
        self.blockId = callId
        """The id of its block (a server call's is made unique in the message)."""
        self.name: str | None = None
        self._parts: list[str] = []
        """The arguments so far, as the pieces they came in."""
        self.length = 0
        """The length of the arguments so far."""
        self._unsent: list[str] = []
        """The pieces that have not gone out as input_json_delta yet."""
        self._progress = _Progress()
        self._unfed: list[str] = []
        """The pieces `_progress` has not read yet: it reads them only when asked
        whether the call is complete, which a lone call never is asked."""
        self.block: int | None = None
        self.closed = False

    def add(self, fragment: str) -> None:
        if not fragment or self.closed:
            return
        # Only a fragment as long as the text so far can be a cumulative snapshot (the
        # whole text so far, not a piece of it), so this costs the fragment's length.
        if (
            self.length
            and len(fragment) >= self.length
            and fragment.startswith(self.arguments())
            and not _isJSON(self.arguments() + fragment)
        ):
            sent = self.length - sum(map(len, self._unsent))
            self._parts, self._unsent = [fragment], [fragment[sent:]]
            self.length = len(fragment)
            self._progress, self._unfed = _Progress(), [fragment]
        else:
            self._parts.append(fragment)
            self._unsent.append(fragment)
            self._unfed.append(fragment)
            self.length += len(fragment)

    def addSent(self, fragment: str) -> bool:
        """`add` of a fragment that goes out at once, when it is a plain piece
        (not empty, shorter than the text so far: no cumulative snapshot;
        the call open, nothing left unsent): `add`'s steps for it, then counted
        as sent as `unsent` would; False, nothing done, for any other."""
        if not fragment or len(fragment) >= self.length or self.closed or self._unsent:
            return False
        self._parts.append(fragment)
        self._unfed.append(fragment)
        self.length += len(fragment)
        return True

    def arguments(self) -> str:
        """The arguments so far, as one text (joined once, then kept whole)."""
        if len(self._parts) > 1:
            self._feedProgress()  # its pieces go, not to be held twice
            self._parts = ["".join(self._parts)]
        return self._parts[0] if self._parts else ""

    def unsent(self) -> str:
        """What has not gone out yet, now counted as sent."""
        pending = "".join(self._unsent)
        self._unsent = []
        return pending

    def same(self, arguments: str) -> bool:
        """Whether `arguments` is the whole text so far (it costs its own length)."""
        return len(arguments) == self.length and arguments == self.arguments()

    def complete(self) -> bool:
        """Whether the arguments so far are a whole JSON value (the call is done)."""
        self._feedProgress()
        return self._progress.complete(self.arguments)

    def _feedProgress(self) -> None:
        if self._unfed:
            feed = self._progress.feed
            for piece in self._unfed:
                feed(piece)
            self._unfed = []


def _isJSON(text: str) -> bool:
    try:
        orjson.loads(text)
    except orjson.JSONDecodeError:
        return False
    return True


_NOT_BLANK = re.compile(r"[^ \t\n\r]")  # JSON's whitespace is these four
_STRUCTURE = re.compile(r'[][{}"]')
# A string's text up to its closing quote, escapes included (or up to a backslash
# that ends the piece, its escaped character being in the next one).
_STRING_BODY = re.compile(r'(?:[^"\\]+|\\.)*', re.DOTALL)
# A top-level scalar (not a function's arguments, which are an object) is parsed
# whole while it is at most this long, and taken as never complete beyond.
_SCALAR_LIMIT = 64


class _Progress:
    """Whether a JSON text read piece by piece is a whole value yet, reading each
    piece once.

    The brackets and strings of an object, an array or a string are followed to
    where the value closes; only then is the text parsed, once, to tell whether it
    is valid JSON (an unclosed value never is, and a closed one followed by more
    than whitespace never becomes one).
    """

    __slots__ = ("depth", "escaped", "inString", "scalar", "state", "valid")

    def __init__(self) -> None:
        self.state = "blank"
        """blank (only whitespace so far), open, closed, scalar, or trailing (text
        after the closed value: never valid)."""
        self.depth = 0
        self.inString = False
        self.escaped = False
        self.valid: bool | None = None
        """Whether the closed value parses (None: not parsed yet)."""
        self.scalar: list[str] = []
        """A top-level scalar's text, while it is short enough to parse."""

    def feed(self, piece: str) -> None:
        at = 0
        while at < len(piece):
            if self.state == "blank":
                found = _NOT_BLANK.search(piece, at)
                if found is None:
                    return
                at = found.start()
                if piece[at] in "{[":
                    self.state, self.depth, at = "open", 1, at + 1
                elif piece[at] == '"':
                    self.state, self.inString, at = "open", True, at + 1
                else:
                    self.state = "scalar"
            elif self.state == "open":
                at = self._scan(piece, at)
            elif self.state == "closed":
                if _NOT_BLANK.search(piece, at) is not None:
                    self.state = "trailing"
                return
            elif self.state == "scalar":
                if sum(map(len, self.scalar)) <= _SCALAR_LIMIT:
                    self.scalar.append(piece[at : at + _SCALAR_LIMIT + 1])
                return
            else:
                return

    def _scan(self, piece: str, at: int) -> int:
        """Follow an open value from `at`; where the scan stopped."""
        if self.inString:
            if self.escaped:
                self.escaped = False
                at += 1
            at = _STRING_BODY.match(piece, at).end()  # always matches, if only ""
            if at == len(piece):
                return at
            if piece[at] == "\\":
                self.escaped = True
            else:  # the closing quote
                self.inString = False
                if self.depth == 0:
                    self.state = "closed"
            return at + 1
        found = _STRUCTURE.search(piece, at)
        if found is None:
            return len(piece)
        mark = found.group()
        if mark == '"':
            self.inString = True
        elif mark in "{[":
            self.depth += 1
        else:
            self.depth -= 1
            if self.depth == 0:
                self.state = "closed"
        return found.end()

    def complete(self, text: Callable[[], str]) -> bool:
        """Whether the text read so far is one whole JSON value; `text` gives it."""
        if self.state == "closed":
            if self.valid is None:
                self.valid = _isJSON(text())
            return self.valid
        if self.state == "scalar":
            scalar = "".join(self.scalar)
            return len(scalar) <= _SCALAR_LIMIT and _isJSON(scalar)
        return False


def _startsAnother(call: _Call, function: dict[str, Any]) -> bool:
    """A named fragment with arguments of its own, after `call` is complete, is a
    new call (and not a repeat of the same one)."""
    name = function.get("name")
    if not name:
        return False
    if call.name is not None and name != call.name:
        return True  # a call's name never changes
    if not call.complete():
        return False
    arguments = argumentsText(function.get("arguments"))
    return bool(arguments.strip()) and not call.same(arguments)


class StreamTranslator:
    """Feeds on decoded OpenAI chunks, returns the Anthropic events each one makes."""

    def __init__(
        self,
        messageId: str,
        model: str,
        stopSequences: Sequence[str] = (),
        thinkTags: bool = False,
        toolName: Callable[[str], str] = str,
        serverTools: frozenset[str] = frozenset(),
        contextWindow: int | None = None,
    ) -> None:
        """`serverTools`: upstream names of the functions ccproxy runs itself (its
        tool search): their calls are `server_tool_use` blocks, and a round that
        makes one can go on with another upstream answer (`nextRound`)."""
        self.messageId = messageId
        self.model = model
        self.contextWindow = contextWindow
        """The target's `context_window`, for an overflow the upstream says mid-stream."""
        self.stopSequences = tuple(stopSequences)
        self._tags = ThinkTagSplitter() if thinkTags else None
        self._toolName = toolName
        self._thinkingDigest: Any = None
        self.finishReason: str | None = None
        self.matchedStop: Any = None
        self.usage: dict[str, Any] | None = None
        self.done = False
        self._blocks = 0
        self._open: str | None = None
        """Kind of the open block: "text", "thinking", or "tool_use"."""
        self._calls: list[_Call] = []
        self._placed = 0
        """How many of `_calls` have a block: they get one in order, so the next to
        place is found at once, however many calls there are."""
        self._byIndex: dict[int, _Call] = {}
        self._byId: dict[str, _Call] = {}
        self._liveCall: _Call | None = None
        self._textTail = ""
        # Empty tuples, not lists, where most streams never add a thing: a
        # translator lives as long as its stream (issue 18: memory per stream).
        self._blank: tuple[str, ...] = ()
        self._blankThinking: tuple[str, ...] = ()
        self._serverTools = serverTools
        self._made = 0
        """Calls made in every round (each without an id of its own gets a new one)."""
        self._total: tuple[Any, int, dict[str, int]] | None = None
        """`totalUsage` as last read, with the usage and the rounds it read."""
        self._serverIds: set[str] | None = None
        """Block ids of ccproxy's own tool calls so far (made with the first)."""
        self._spent: tuple[dict[str, int], ...] = ()
        """Anthropic usage of the rounds before this one."""
        self._lastDelta: Event | None = None
        """The last `content_block_delta` made (`_delta` may join the next into it)."""
        self._shapes: _Shapes | None = None
        """What `feedPayloads` learned of this upstream's chunks (set here, not
        later: an attribute set late in a translator's life is no key its
        instances share, and each would get a dict of its own)."""

    # -- input ------------------------------------------------------------------

    def start(self) -> list[Event]:
        """The `message_start` event, sent as soon as the upstream answered 2xx."""
        return [messageStart(self.messageId, self.model)]

    def feed(self, chunk: Any) -> list[Event]:
        """Events for one decoded `data:` payload. Raises `ProxyError` for an error
        chunk, which the caller turns into an `event: error`."""
        events: list[Event] = []
        self.feedInto(chunk, events)
        return events

    def feedPayloads(self, payloads: list[bytes], events: list[Event]) -> None:
        """Each of one read's `data:` payloads parsed and fed (`feedInto`), in turn;
        raises `notJSON` for one that does not parse, after those before it.

        Most chunks are content alone: `choices[0].delta` is `{"content": str}`,
        without a usage or a finish reason. Those go straight to `_text`, the
        steps `feedInto` takes for them, checked here at once (each chunk is
        parsed and let go in turn: a read's chunks all alive at once would wake
        the garbage collector). And an upstream sends them all alike but for
        their text: once one has shown its bytes around its text (`_Shapes`),
        a payload with the same bytes around a JSON string is that string's
        chunk, its string alone parsed (a run of them, their strings parsed at
        once: `_textRun`); the same for the usual fragment of a tool call's
        arguments (`_argumentRun`)."""
        loads = orjson.loads
        feed = self.feedInto
        # None: every chunk through `feedInto` (<think> tags to split, or another
        # translator's chunks: `_chatChunks`)
        text = self._text if self._tags is None and self._chatChunks else None
        shapes = self._shapes if text is not None else None
        shape = shapes.text if shapes is not None else None
        prefix, suffix = shape or (b"", b"")
        args = shapes.arguments if shapes is not None else None
        argsPrefix, argsSuffix, argsIndex = args or (b"", b"", 0)
        count = len(payloads)
        at = 0
        marks: bytes | None = None  # (`_marks`, once `marked`)
        marked = False
        while at < count:
            data = payloads[at]
            at += 1
            if shape is not None and data.startswith(prefix) and data.endswith(suffix):
                if at < count and shapes.runs:  # (`shape`: `shapes` is not None)
                    # A run of such chunks: their texts parsed at once (`_textRun`)
                    if not marked:
                        marks, marked = _marks(payloads, prefix), True
                    end, texts, marks = _run(payloads, at - 1, marks, prefix, suffix)
                    if end > at:
                        if self._textRun(texts, events):
                            at = end
                            continue
                        shapes.runs = False  # read one by one, below, from now on
                try:  # the text alone: a JSON string (`_shapeOf`), or parsed whole
                    content = loads(data[len(prefix) : len(data) - len(suffix)])
                except orjson.JSONDecodeError:
                    content = None
                if type(content) is str:
                    if content:
                        text(content, events)
                    continue
            if args is not None and data.startswith(argsPrefix) and data.endswith(argsSuffix):
                if at < count and shapes.argumentRuns and argsIndex in self._byIndex:
                    # A run of such fragments of a known call: their arguments parsed
                    # at once (`_argumentRun`)
                    end = _argumentRunEnd(payloads, at, args, shape)
                    if end > at:
                        if self._argumentRun(argsIndex, payloads[at - 1 : end], args, events):
                            at = end
                            continue
                        shapes.argumentRuns = False  # one by one, below, from now on
                try:  # the arguments alone, as the text above
                    arguments = loads(data[len(argsPrefix) : len(data) - len(argsSuffix)])
                except orjson.JSONDecodeError:
                    arguments = None
                if type(arguments) is str and self._moreArguments(argsIndex, arguments, events):
                    continue
            try:
                chunk = loads(data)
            except orjson.JSONDecodeError:
                raise notJSON(data) from None
            if text is not None and type(chunk) is dict:
                choices = chunk.get("choices")
                if (
                    type(choices) is list
                    and choices
                    and chunk.get("usage") is None
                    and "x_groq" not in chunk
                ):
                    choice = choices[0]
                    if (
                        type(choice) is dict
                        and choice.get("finish_reason") is None
                        and choice.get("usage") is None
                    ):
                        delta = choice.get("delta")
                        if type(delta) is dict and len(delta) == 1:
                            content = delta.get("content")
                            if type(content) is str:
                                if content:
                                    text(content, events)
                                if shape is None:
                                    shapes = shapes or self._learning()
                                    shape = shapes.learnText(data, chunk, content)
                                    prefix, suffix = shape or (b"", b"")
                                continue
                            if args is None:
                                shapes = shapes or self._learning()
                                args = shapes.learnArguments(data, chunk, delta)
                                argsPrefix, argsSuffix, argsIndex = args or (b"", b"", 0)
            feed(chunk, events)

    def _textRun(self, texts: list[bytes], events: list[Event]) -> bool:
        """Consecutive payloads of the learned text shape (`_run`: at least two,
        `texts` their parts between the prefix and the suffix, given up to
        `_stringsOf`) fed as `feedPayloads` feeds each, their texts parsed by one
        `orjson.loads`; False, nothing done, when any is not a JSON string alone
        (they are then read one by one, as before)."""
        parsed = _stringsOf(texts)
        if parsed is None:
            return False
        self._texts(*parsed, events)
        return True

    def _argumentRun(
        self,
        index: int,
        run: list[bytes],
        shape: tuple[bytes, bytes, int],
        events: list[Event],
    ) -> bool:
        """Consecutive payloads of the learned fragment shape (`_argumentRunEnd`:
        at least two), the call `index` names known, fed as `feedPayloads` feeds
        each (`_moreArguments`, in turn: each fragment added and placed as it
        would be alone, cumulative snapshots and delta cuts the same), their
        arguments parsed by one `orjson.loads` (`_stringsOf`), as `_textRun`'s
        texts; False, nothing done, when any is not a JSON string alone."""
        prefix, suffix, _ = shape
        parsed = _stringsOf(list(map(itemgetter(slice(len(prefix), -len(suffix))), run)))
        if parsed is None:
            return False
        strings, _ = parsed
        call = self._byIndex[index]  # (placing never changes which call an index names)
        more = self._addArguments
        for arguments in strings:
            more(call, arguments, events)
        return True

    def _texts(self, texts: list[str], whole: str, events: list[Event]) -> None:
        """`_text` of each of `texts` that is not empty, in turn (`whole`: them
        joined). Once the text block is open and its last delta still last in
        `events`, the rest are joined into that delta at once when `_text`
        would join each (it stays under `_JOIN_LIMIT` before the last)."""
        text = self._text
        done = 0
        for at, piece in enumerate(texts):
            last = self._lastDelta
            if self._open == "text" and last is not None and events and events[-1] is last:
                delta = last["delta"]
                rest = whole[done:] if done else whole
                if len(delta["text"]) + len(rest) - len(texts[-1]) < _JOIN_LIMIT:
                    delta["text"] += rest
                    if self.stopSequences:
                        self._textTail = (self._textTail + rest)[-256:]
                    return
                for piece in texts[at:]:
                    if piece:
                        text(piece, events)
                return
            if piece:
                text(piece, events)
            done += len(piece)

    _chatChunks = True
    """Whether `feedPayloads` may read chunks as this class's `feedInto` does (a
    subclass that reads other chunks, Responses events, says no)."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if any(
            getattr(cls, name) is not getattr(StreamTranslator, name)
            for name in ("feedInto", "_text", "_moreArguments")
        ):
            cls._chatChunks = False

    def _learning(self) -> _Shapes:
        """What `feedPayloads` learns of this upstream's chunks, made at its first try."""
        self._shapes = _Shapes()
        return self._shapes

    def feedInto(self, chunk: Any, events: list[Event]) -> None:
        """`feed`, its events added to `events`: a caller that queues the events of
        several chunks in one list (those of one upstream read, not sent yet) gets
        a block's consecutive deltas joined into its last one there (`_delta`).
        Raises `ProxyError` for an error chunk before adding any of its events."""
        if not isinstance(chunk, dict):
            raise brokenAnswer("the upstream sent a stream chunk that is not an object")
        choices = chunk.get("choices")
        if choices and isinstance(choices, list) and isinstance(choices[0], dict):
            choice = choices[0]
        else:
            if not choices and chunk.get("error"):
                raise streamError(chunk, self.contextWindow)
            choice = {}
        usage = chunk.get("usage") or choice.get("usage")
        if usage is not None or "x_groq" in chunk:  # the usual chunk says nothing of it
            if not usage and "x_groq" in chunk:
                usage = _groqUsage(chunk)
            if isinstance(usage, dict):
                self.usage = usage
        finish = choice.get("finish_reason")
        if finish == "error":  # checked first: an error chunk adds no events
            if chunk.get("error"):
                # OpenRouter says why beside the finish
                raise streamError(chunk, self.contextWindow)
            raise brokenAnswer("the upstream ended its answer with an error")
        delta = choice.get("delta")
        if not isinstance(delta, dict):
            delta = choice.get("message") if isinstance(choice.get("message"), dict) else {}
        content = delta.get("content")
        # Most chunks carry content alone: no reasoning nor tool calls to look for.
        alone = content is not None and len(delta) == 1
        if not alone and (
            "reasoning_content" in delta or "reasoning" in delta or "reasoning_details" in delta
        ):
            reasoning = reasoningText(delta)
            if reasoning:
                self._thinking(reasoning, events)
        text = content if type(content) is str else contentText(content)
        if text:
            if self._tags is not None:
                self._tagged(self._tags.feed(text), events)
            else:
                self._text(text, events)
        if not alone:
            calls = delta.get("tool_calls")
            if calls is not None:
                if isinstance(calls, dict):
                    calls = [calls]
                if isinstance(calls, list):
                    for position, fragment in enumerate(calls):
                        if isinstance(fragment, dict):
                            self._toolFragment(fragment, position, len(calls), events)
        if finish and isinstance(finish, str):
            self.finishReason = finish
            if choice.get("matched_stop") is not None:
                self.matchedStop = choice.get("matched_stop")

    def finish(self, sawDone: bool = True) -> list[Event]:
        """The closing events once the upstream's stream ended.

        A stream that ends with neither a finish reason nor `[DONE]` was cut short:
        that is an error, not a clean stop, so Claude Code retries instead of
        taking half an answer for a whole one.
        """
        return self.endBlocks(sawDone) + self.endMessage()

    def endBlocks(self, sawDone: bool = True) -> list[Event]:
        """Close this upstream answer's blocks (the message may go on: `nextRound`)."""
        if self.finishReason is None and not sawDone:
            raise brokenAnswer("the upstream ended the stream before finishing its answer")
        events: list[Event] = []
        if self._tags is not None:
            self._tagged(self._tags.finish(), events)
        self._flushCalls(events)
        self._close(events)
        return events

    def endMessage(self, stopReason: str | None = None) -> list[Event]:
        """`message_delta` and `message_stop`, with the usage of every round;
        `stopReason` is one ccproxy decided (`pause_turn`: its tool search ran out
        of rounds), else it is read from the upstream's finish."""
        reason, stopSequence = stopReasonFor(
            self.finishReason,
            self.clientCalls(),
            self._textTail,
            self.stopSequences,
            self.matchedStop,
        )
        self.done = True
        return [
            {
                "type": "message_delta",
                "delta": {"stop_reason": stopReason or reason, "stop_sequence": stopSequence},
                "usage": self.totalUsage(),
            },
            {"type": "message_stop"},
        ]

    def serverCalls(self) -> list[tuple[str, str]]:
        """This round's calls of ccproxy's own functions (its tool search): each
        block's id and arguments text."""
        return [(c.blockId, c.arguments()) for c in self._calls if c.name in self._serverTools]

    def clientCalls(self) -> bool:
        """Whether this round called any of the client's tools."""
        return any(c.name not in self._serverTools for c in self._calls)

    def addBlock(self, block: dict[str, Any]) -> list[Event]:
        """A whole block of ccproxy's own (a tool search's result), after the
        round's blocks are ended."""
        index = self._blocks
        self._blocks += 1
        return [
            {"type": "content_block_start", "index": index, "content_block": block},
            {"type": "content_block_stop", "index": index},
        ]

    def nextRound(self) -> None:
        """Another upstream answer continues this message: its blocks are numbered
        on from these, its usage added to this one's."""
        self._spent = (*self._spent, anthropicUsage(self.usage))
        self.usage = None
        self.finishReason = self.matchedStop = None
        self._calls, self._placed, self._byIndex, self._byId = [], 0, {}, {}
        self._liveCall = None
        if self._tags is not None:  # the next answer may begin with its own <think>
            self._tags = ThinkTagSplitter()

    def knownUsage(self) -> dict[str, int] | None:
        """`totalUsage`, or None when no round said what it used."""
        if self.usage is None and not self._spent:
            return None
        return self.totalUsage()

    def totalUsage(self) -> dict[str, int]:
        """Anthropic usage of every round so far, summed (a copy of its own for each
        caller). A stream's end asks twice (`message_delta`, then the verdict's
        `knownUsage`): read once for both while the rounds and usage are the same."""
        seen = (self.usage, len(self._spent))
        total = self._total
        if total is None or total[0] is not seen[0] or total[1] != seen[1]:
            if not self._spent:
                counted = anthropicUsage(self.usage)
            else:
                counted = sumUsage([*self._spent, anthropicUsage(self.usage)])
            total = self._total = (seen[0], seen[1], counted)
        return dict(total[2])

    # -- blocks -----------------------------------------------------------------

    def _openBlock(self, kind: str, block: dict[str, Any], events: list[Event]) -> int:
        self._close(events)
        index = self._blocks
        self._blocks += 1
        self._open = kind
        events.append({"type": "content_block_start", "index": index, "content_block": block})
        return index

    def _close(self, events: list[Event]) -> None:
        if self._open is None:
            return
        if self._open == "thinking":
            events.append(
                {
                    "type": "content_block_delta",
                    "index": self._blocks - 1,
                    "delta": {
                        "type": "signature_delta",
                        "signature": signatureFor(self._thinkingDigest),
                    },
                }
            )
        events.append({"type": "content_block_stop", "index": self._blocks - 1})
        if self._open == "tool_use" and self._liveCall is not None:
            self._liveCall.closed = True
            self._liveCall = None
        self._open = None

    def _thinking(self, text: str, events: list[Event]) -> None:
        if self._open != "thinking":
            if not text.strip():
                self._blankThinking += (text,)  # no block of nothing but whitespace
                return
            text, self._blankThinking = "".join((*self._blankThinking, text)), ()
            self._flushCalls(events)
            self._openBlock(
                "thinking", {"type": "thinking", "thinking": "", "signature": ""}, events
            )
            self._thinkingDigest = hashlib.sha256()
        self._thinkingDigest.update(text.encode())
        self._delta(events, self._blocks - 1, "thinking_delta", "thinking", text)

    def _tagged(self, pieces: list[tuple[str, str]], events: list[Event]) -> None:
        for kind, piece in pieces:
            if kind == "thinking":
                self._thinking(piece, events)
            else:
                self._text(piece, events)

    def _text(self, text: str, events: list[Event]) -> None:
        if self._open != "text":
            if not text.strip():
                # Held back: a block of nothing but whitespace is no text block.
                self._blank += (text,)
                return
            text, self._blank = "".join((*self._blank, text)), ()
            self._flushCalls(events)
            self._openBlock("text", {"type": "text", "text": ""}, events)
        last = self._lastDelta
        if last is not None and events and events[-1] is last:
            # `_delta`'s join, inlined for the usual chunk (the text block is open:
            # the last delta, still last in the queue, is this block's)
            delta = last["delta"]
            if len(delta["text"]) < _JOIN_LIMIT:
                delta["text"] += text
            else:
                self._delta(events, self._blocks - 1, "text_delta", "text", text)
        else:
            self._delta(events, self._blocks - 1, "text_delta", "text", text)
        if self.stopSequences:
            self._textTail = (self._textTail + text)[-256:]

    # -- tool calls ---------------------------------------------------------------

    def _toolFragment(
        self, fragment: dict[str, Any], position: int, count: int, events: list[Event]
    ) -> None:
        function = fragment.get("function")
        if not isinstance(function, dict):
            function = {}
        arguments = function.get("arguments")
        if "id" not in fragment and "name" not in function and type(arguments) is str:
            index = fragment.get("index")
            if type(index) is int and self._moreArguments(index, arguments, events):
                return
        call = self._callFor(fragment, function, position, count)
        name = function.get("name")
        if isinstance(name, str) and name and not call.name:
            call.name = name  # a repeated name is the same name, never concatenated
        call.add(argumentsText(arguments))
        self._advance(events)

    def _moreArguments(self, index: int, arguments: str, events: list[Event]) -> bool:
        """The usual fragment (no id, no name): more arguments of the call `index`
        names, placed (`_callFor`'s steps for it); False, nothing done, when no
        call has that index yet."""
        call = self._byIndex.get(index)
        if call is None:
            return False
        self._addArguments(call, arguments, events)
        return True

    def _addArguments(self, call: _Call, arguments: str, events: list[Event]) -> None:
        """`call.add(arguments)`, then `_advance`; for a plain piece of the live
        call with no later call waiting (most fragments), their steps at once:
        `_advance` would send it alone (`_sendArguments`)."""
        if call is self._liveCall and self._placed == len(self._calls) and call.addSent(arguments):
            self._delta(events, call.block, "input_json_delta", "partial_json", arguments)
            return
        call.add(arguments)
        self._advance(events)

    def _callFor(
        self, fragment: dict[str, Any], function: dict[str, Any], position: int, count: int
    ) -> _Call:
        """Which call a fragment continues, or a new one. A new id is always a new call
        (servers that send index 0 for every call). Without an id, the index decides
        (or, missing, the position in a many-call delta, or else the last call) —
        unless the fragment brings a named call whole while that call is already
        complete: Gemini and gateways before it send each call whole, without ids,
        and with no index or always 0."""
        callId = fragment.get("id")
        index = fragment.get("index")
        if not isinstance(index, int) or isinstance(index, bool):
            # A named fragment in a many-call delta is told apart by its position;
            # a nameless one continues the last call.
            index = position if count > 1 and function.get("name") else None
        if isinstance(callId, str) and callId:
            call = self._byId.get(callId) or self._newCall(callId)
        else:
            if index is not None:
                candidate = self._byIndex.get(index)
            else:
                candidate = self._calls[-1] if self._calls else None
            if candidate is None or _startsAnother(candidate, function):
                call = self._newCall(None)
            else:
                call = candidate
        if index is not None:
            self._byIndex[index] = call
        return call

    def _newCall(self, callId: str | None) -> _Call:
        call = _Call(callId or syntheticToolId(self.messageId, self._made))
        self._made += 1
        self._calls.append(call)
        self._byId[call.id] = call
        return call

    def _advance(self, events: list[Event]) -> None:
        """Stream what can be placed: the live call's new arguments; and when it is
        complete and a later call is waiting, close it and go live with the next.
        Later calls' fragments wait (parallel calls interleave by index, but only
        one block may be open)."""
        live = self._liveCall
        if live is not None and self._placed == len(self._calls):
            # The usual fragment: the live call's, no later call waiting.
            self._sendArguments(live, events)
            return
        while True:
            live = self._liveCall
            if live is None:
                waiting = self._nextCall()
                if waiting is None or waiting.name is None:
                    return
                self._startCall(waiting, events)
                continue
            self._sendArguments(live, events)
            later = self._nextCall()
            if later is None or not live.complete():
                return
            self._close(events)

    def _serverBlockId(self, callId: str) -> str:
        """The block id of ccproxy's own tool call `callId`, unique in the message."""
        if self._serverIds is None:
            self._serverIds = set()
        blockId = serverCallId(callId, self._serverIds)
        self._serverIds.add(blockId)
        return blockId

    def _nextCall(self) -> _Call | None:
        return self._calls[self._placed] if self._placed < len(self._calls) else None

    def _startCall(self, call: _Call, events: list[Event]) -> None:
        server = call.name in self._serverTools
        if server:
            call.blockId = self._serverBlockId(call.id)
        call.block = self._openBlock(
            "tool_use",
            {
                "type": "server_tool_use" if server else "tool_use",
                "id": call.blockId,
                "name": self._toolName(call.name or ""),
                "input": {},
            },
            events,
        )
        self._placed += 1
        self._liveCall = call

    def _sendArguments(self, call: _Call, events: list[Event]) -> None:
        pending = call.unsent()
        if pending:
            self._delta(events, call.block, "input_json_delta", "partial_json", pending)

    def _delta(self, events: list[Event], index: Any, kind: str, field: str, text: str) -> None:
        """A `content_block_delta` of `text`, joined into the block's last delta when
        that is still the last event in `events` (Claude Code joins a block's deltas
        however they are cut). The joined text is kept under `_JOIN_LIMIT` chars, so
        joining costs linear time however small the pieces."""
        last = self._lastDelta
        if last is not None and events and events[-1] is last and last["index"] == index:
            delta = last["delta"]
            if delta["type"] == kind and len(delta[field]) < _JOIN_LIMIT:
                delta[field] += text
                return
        self._lastDelta = {
            "type": "content_block_delta",
            "index": index,
            "delta": {"type": kind, field: text},
        }
        events.append(self._lastDelta)

    def _flushCalls(self, events: list[Event]) -> None:
        """Place every call still waiting, in order (the answer is ending, or text
        follows the calls)."""
        while True:
            if self._liveCall is not None:
                self._sendArguments(self._liveCall, events)
                self._close(events)
            waiting = self._nextCall()
            if waiting is None:
                return
            self._startCall(waiting, events)


def _stringsOf(parts: list[bytes]) -> tuple[list[str], str] | None:
    """Each of `parts` parsed as one JSON string alone, all by one
    `orjson.loads`, and those strings joined; None when any part is not a JSON
    string alone. `parts` is given up: its first and last get the brackets.

    The parts go in one JSON array, `\\n,` between them: a raw newline is never
    inside a JSON string, so each comma put there is outside every string, and
    an array of as many strings as parts has each part as one of them, the
    string its own parse gives. (The brackets go on the first and last parts:
    the parts are copied once, by the join, not again by a `+` on each side.)"""
    count = len(parts)
    parts[0] = b"[" + parts[0]
    parts[-1] += b"]"
    try:
        strings = orjson.loads(b"\n,".join(parts))
    except orjson.JSONDecodeError:
        return None
    if len(strings) != count:
        return None
    try:
        return strings, "".join(strings)  # (a TypeError for any that is not a str)
    except TypeError:
        return None


def _marks(payloads: list[bytes], prefix: bytes) -> bytes | None:
    """For each payload, whether its byte where `prefix` ends is `prefix`'s last
    (b"\\x01", else b"\\x00"): where a run of text chunks may end, told of a
    read's payloads at once in C (a `startswith` and an `endswith` per chunk
    cost twice as much); None when a payload is too short to tell."""
    try:
        found = bytes(map(itemgetter(len(prefix) - 1), payloads))
    except IndexError:
        return None
    mark = prefix[-1]
    return found.translate(bytes(mark) + b"\x01" + bytes(255 - mark))


def _run(
    payloads: list[bytes], first: int, marks: bytes | None, prefix: bytes, suffix: bytes
) -> tuple[int, list[bytes], bytes | None]:
    """The run of payloads of the text shape from `first` (which has it): where
    it ends, each one's part between `prefix` and `suffix`, and `marks` for the
    read's next run (None once they failed).

    Its end is found by `marks` and the run checked whole: the payloads joined
    are the prefix, their parts and the suffix joined, byte for byte (as long,
    so each payload is its own prefix, part and suffix). Without `marks`, or a
    run they tell wrong (then not asked again in this read: each check would
    read on to their end), it is found payload by payload."""
    cut = itemgetter(slice(len(prefix), -len(suffix)))
    if marks is not None:
        end = marks.find(b"\x00", first + 1)
        end = len(payloads) if end == -1 else end
        run = payloads[first:end]
        texts = list(map(cut, run))
        # (one join, not two `+`: each a copy of the whole read's texts)
        if b"".join(run) == b"".join([prefix, (suffix + prefix).join(texts), suffix]):
            return end, texts, marks
    end = first + 1
    while (
        end < len(payloads) and payloads[end].startswith(prefix) and payloads[end].endswith(suffix)
    ):
        end += 1
    return end, list(map(cut, payloads[first:end])), None


_RUN_MOST = 128
"""The most payloads in one `_argumentRun`: a run that fails (a part not a JSON
string alone, where the payload-by-payload read would stop or go on) has
then cost its parse and scan for at most that many before the read goes on
one by one, as before runs."""


def _argumentRunEnd(
    payloads: list[bytes],
    at: int,
    shape: tuple[bytes, bytes, int],
    textShape: tuple[bytes, bytes] | None,
) -> int:
    """Where the run of payloads of the fragment `shape` that goes on at `at`
    (the one before it has the shape) ends: before the first without it, or
    with the text shape too (which `feedPayloads` reads as text first), or
    after `_RUN_MOST` payloads."""
    prefix, suffix, _ = shape
    end = at
    most = min(len(payloads), at - 1 + _RUN_MOST)
    while end < most:
        data = payloads[end]
        if not (data.startswith(prefix) and data.endswith(suffix)) or (
            textShape is not None and data.startswith(textShape[0]) and data.endswith(textShape[1])
        ):
            break
        end += 1
    return end


_SHAPE_TRIES = 3
"""Chunks read for a shape before giving up: a stream whose chunks differ in more
than their text (a timestamp or a random pad in each) has none."""

_SHAPE_BYTES = 4096
"""The most a learned shape holds (its bytes before and after the string): it
lives as long as its stream. Usual chunks hold a few hundred; one with a
megabyte of id or fingerprint is read whole instead of kept for minutes."""

_MARK = "\x00ccproxy\x00"
_MARK_JSON = orjson.dumps(_MARK)


class _Shapes:
    """The bytes of an upstream's usual chunks around the one string that changes
    from chunk to chunk (`_shapeOf`): the text of a content-only chunk, and the
    arguments of a call's usual fragment (with its index). Learned from the
    first such chunks; a stream whose chunks differ in more than that (a
    timestamp or a random pad in each) has none, and after `_SHAPE_TRIES` of
    each kind, no more is tried."""

    __slots__ = ("argumentRuns", "argumentTries", "arguments", "runs", "text", "textTries")

    def __init__(self) -> None:
        self.runs = True
        """Whether runs of text chunks are parsed at once (`_textRun`): no more
        after a run that could not be, which is then read chunk by chunk."""
        self.argumentRuns = True
        """The same for runs of argument fragments (`_argumentRun`)."""
        self.text: tuple[bytes, bytes] | None = None
        self.textTries = 0
        self.arguments: tuple[bytes, bytes, int] | None = None
        self.argumentTries = 0

    def learnText(
        self, data: bytes, chunk: dict[str, Any], content: str
    ) -> tuple[bytes, bytes] | None:
        """The shape of `data`, parsed to `chunk`, a content-only chunk with text
        `content`, once known."""
        if self.text is None and self.textTries < _SHAPE_TRIES:
            self.textTries += 1
            self.text = _shapeOf(data, chunk, {"content": _MARK}, content)
        return self.text

    def learnArguments(
        self, data: bytes, chunk: dict[str, Any], delta: dict[str, Any]
    ) -> tuple[bytes, bytes, int] | None:
        """The shape of `data` (parsed to `chunk`, whose delta is `delta` alone, no
        usage, no finish) when it is the usual fragment of a call's arguments:
        `{"tool_calls": [{"index": int, "function": {"arguments": str}}]}`, no id,
        no name (what `_toolFragment` reads with `_moreArguments`), once known."""
        if self.arguments is not None or self.argumentTries >= _SHAPE_TRIES:
            return self.arguments
        calls = delta.get("tool_calls")
        if type(calls) is not list or len(calls) != 1 or type(calls[0]) is not dict:
            return None
        fragment = calls[0]
        function = fragment.get("function")
        index = fragment.get("index")
        if (
            "id" in fragment
            or type(index) is not int
            or type(function) is not dict
            or "name" in function
            or type(function.get("arguments")) is not str
        ):
            return None
        self.argumentTries += 1
        markedCall = {**fragment, "function": {**function, "arguments": _MARK}}
        shape = _shapeOf(data, chunk, {"tool_calls": [markedCall]}, function["arguments"])
        self.arguments = None if shape is None else (*shape, index)
        return self.arguments


def _shapeOf(
    data: bytes, chunk: dict[str, Any], markedDelta: dict[str, Any], value: str
) -> tuple[bytes, bytes] | None:
    """The bytes of `data` before and after its string `value`, where `marked` (what
    `data` parsed to, `chunk`, its first choice's delta made `markedDelta`: `_MARK`
    in place of `value`) has the mark; None when `data` is not, byte for byte,
    orjson's writing of what it parsed to.

    The mark is found once in `marked` as orjson writes it, so what precedes it
    ends where a JSON value begins. Any payload that is that prefix, a JSON
    string (with whitespace around it or not), then that suffix is then the
    same document with another string in that place: it parses to the same
    chunk with that string (the prefix's and the suffix's tokens are unchanged,
    and a string is read the same wherever it stands)."""
    choices = chunk["choices"]
    marked = {**chunk, "choices": [{**choices[0], "delta": markedDelta}, *choices[1:]]}
    try:
        written = orjson.dumps(marked)
    except orjson.JSONEncodeError:
        return None
    at = written.find(_MARK_JSON)
    if at == -1 or written.find(_MARK_JSON, at + 1) != -1:
        return None  # (the mark elsewhere too: then which is the value's place?)
    prefix, suffix = written[:at], written[at + len(_MARK_JSON) :]
    if len(prefix) + len(suffix) > _SHAPE_BYTES or data != prefix + orjson.dumps(value) + suffix:
        return None
    return prefix, suffix


def notJSON(data: bytes) -> ProxyError:
    """A stream's `data:` payload that does not parse (the caller names the upstream)."""
    return brokenAnswer(f"the stream holds a line that is not JSON: {data[:200]!r}")


def streamError(chunk: dict[str, Any], contextWindow: int | None = None) -> ProxyError:
    """An error the upstream sent inside the stream, as a ProxyError for `event: error`;
    a prompt too long for the model in the words Claude Code compacts on (the
    request is no longer at hand to be counted: without the upstream's count, the
    prompt is said to be one token over `contextWindow`)."""
    raw = orjson.dumps(chunk)
    overflow = readOverflow(raw.decode())
    if overflow is not None:
        return promptTooLong(overflow.message(None, contextWindow))
    status = statusInBody(chunk)
    message = extractMessage(raw) or "the upstream sent an error"
    errorType = "overloaded_error" if status in (429, 503, 529) else "api_error"
    return ProxyError(status, message, errorType)


def _groqUsage(chunk: dict[str, Any]) -> Any:
    extra = chunk.get("x_groq")
    return extra.get("usage") if isinstance(extra, dict) else None


def messageStart(messageId: str, model: str) -> Event:
    """A stream's `message_start`: nothing in it depends on the upstream (the id and
    model are the client's), so it may go out before any upstream has answered, and
    a failover partner's answer follows it without contradiction."""
    return {
        "type": "message_start",
        "message": {
            "id": messageId,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {
                "input_tokens": 0,
                "output_tokens": 0,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
            },
        },
    }


def eventsForMessage(message: dict[str, Any]) -> list[Event]:
    """A whole Anthropic message as a stream, for upstreams that answer a stream
    request with one JSON completion."""
    start = {**message, "content": [], "stop_reason": None, "stop_sequence": None}
    events: list[Event] = [{"type": "message_start", "message": start}]
    for index, block in enumerate(message["content"]):
        if block["type"] not in ("text", "tool_use", "server_tool_use", "thinking"):
            # ccproxy's own tool_search_tool_result, or (from an upstream that
            # speaks the Messages API) any other kind: whole at once
            events.append({"type": "content_block_start", "index": index, "content_block": block})
            events.append({"type": "content_block_stop", "index": index})
            continue
        if block["type"] in ("tool_use", "server_tool_use"):
            opening = {**block, "input": {}}
            deltas = [
                {"type": "input_json_delta", "partial_json": orjson.dumps(block["input"]).decode()}
            ]
        elif block["type"] == "thinking":
            opening = {"type": "thinking", "thinking": "", "signature": ""}
            deltas = [
                {"type": "thinking_delta", "thinking": block["thinking"]},
                {"type": "signature_delta", "signature": block["signature"]},
            ]
        else:
            opening = {"type": "text", "text": ""}
            deltas = [{"type": "text_delta", "text": block["text"]}]
        events.append({"type": "content_block_start", "index": index, "content_block": opening})
        for delta in deltas:
            events.append({"type": "content_block_delta", "index": index, "delta": delta})
        events.append({"type": "content_block_stop", "index": index})
    events.append(
        {
            "type": "message_delta",
            "delta": {
                "stop_reason": message["stop_reason"],
                "stop_sequence": message["stop_sequence"],
            },
            "usage": message["usage"],
        }
    )
    events.append({"type": "message_stop"})
    return events
