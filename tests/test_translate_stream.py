"""StreamTranslator without a reactor: recorded chunk sequences for every upstream
quirk (`docs/upstream-quirks.md`), each checked event by event; a checker for
the event grammar Claude Code needs; and a property test holding the streamed
answer to what `fromOpenAI` makes of the same answer sent whole."""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import operator
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hypothesis
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ccproxy.errors import ProxyError
from ccproxy.translate.response import fromOpenAI
from ccproxy.translate.stream import _JOIN_LIMIT, StreamTranslator, _Call, eventsForMessage
from ccproxy.translate.thinking import ThinkTagSplitter, splitThinkTags
from tests.support.examples import examples

MESSAGE_ID = "msg_test"
MODEL = "claude-test"
FIXTURES = Path(__file__).parent / "fixtures" / "claude-code" / "responses"

Event = dict[str, Any]

# -- the grammar Claude Code needs ---------------------------------------------------

STOP_REASONS = {"end_turn", "max_tokens", "stop_sequence", "tool_use", "pause_turn", "refusal"}
DELTAS_BY_BLOCK = {
    "text": {"text_delta"},
    "tool_use": {"input_json_delta"},
    "thinking": {"thinking_delta", "signature_delta"},
}


def checkGrammar(events: list[Event], fullUsage: bool = True) -> None:
    """Fail unless `events` is a whole Anthropic stream Claude Code accepts.

    `message_start` first; blocks opened one at a time with indices 0, 1, 2, …, each
    getting deltas of its own type and exactly one `content_block_stop`; no empty text
    block; `message_delta` with a stop reason and usage; `message_stop` last.
    `fullUsage=False` accepts Anthropic's own `message_delta` usage, which may carry
    `output_tokens` alone.
    """
    assert events, "no events at all"
    assert events[0]["type"] == "message_start", f"first event is {events[0]['type']}"
    start = events[0]["message"]
    assert start["type"] == "message" and start["role"] == "assistant", start
    assert start["content"] == [] and start["stop_reason"] is None, start
    assert isinstance(start["id"], str) and start["id"], start
    for key in ("input_tokens", "output_tokens"):
        assert isinstance(start["usage"][key], int), start["usage"]
    state = "blocks"
    nextIndex = 0
    current: dict[str, Any] | None = None  # the open block
    for position, event in enumerate(events[1:], 1):
        kind = event["type"]
        where = f"event {position} ({kind})"
        assert state != "stopped", f"{where} after message_stop"
        if kind == "ping":
            continue
        if kind == "content_block_start":
            assert state == "blocks", f"{where} after message_delta"
            assert current is None, f"{where} while block {current and current['index']} is open"
            assert event["index"] == nextIndex, f"{where}: index {event['index']} != {nextIndex}"
            block = event["content_block"]
            assert block["type"] in DELTAS_BY_BLOCK, f"{where}: block type {block['type']}"
            if block["type"] == "text":
                assert block["text"] == "", f"{where}: text must come in deltas"
            if block["type"] == "tool_use":
                assert isinstance(block["id"], str) and block["id"], f"{where}: tool id {block}"
                assert isinstance(block["name"], str) and block["name"], f"{where}: name {block}"
                assert block["input"] == {}, f"{where}: input must come in deltas"
            current = {"index": nextIndex, "type": block["type"], "text": False}
            nextIndex += 1
        elif kind == "content_block_delta":
            assert current is not None, f"{where} with no open block"
            assert event["index"] == current["index"], f"{where}: index {event['index']}"
            delta = event["delta"]
            allowed = DELTAS_BY_BLOCK[current["type"]]
            assert delta["type"] in allowed, f"{where}: {delta['type']} in a {current['type']}"
            if delta["type"] == "text_delta":
                assert isinstance(delta["text"], str), where
                current["text"] = current["text"] or bool(delta["text"])
            elif delta["type"] == "input_json_delta":
                assert isinstance(delta["partial_json"], str), where
        elif kind == "content_block_stop":
            assert current is not None, f"{where} with no open block"
            assert event["index"] == current["index"], f"{where}: index {event['index']}"
            if current["type"] == "text":
                assert current["text"], f"{where}: empty text block {current['index']}"
            current = None
        elif kind == "message_delta":
            assert state == "blocks", f"{where}: a second message_delta"
            assert current is None, f"{where} while block {current['index']} is open"
            assert event["delta"]["stop_reason"] in STOP_REASONS, f"{where}: {event['delta']}"
            assert "stop_sequence" in event["delta"], where
            usage = event["usage"]
            assert isinstance(usage.get("output_tokens"), int), f"{where}: usage {usage}"
            if fullUsage:
                assert isinstance(usage.get("input_tokens"), int), f"{where}: usage {usage}"
            state = "delta"
        elif kind == "message_stop":
            assert state == "delta", f"{where} without message_delta"
            state = "stopped"
        else:
            raise AssertionError(f"{where}: unknown event type")
    assert state == "stopped", "the stream does not end with message_stop"


def accumulate(events: list[Event]) -> dict[str, Any]:
    """The Anthropic message a client rebuilds from the events."""
    message = {**events[0]["message"], "content": []}
    message["usage"] = dict(message["usage"])
    partial: dict[int, list[str]] = {}
    for event in events[1:]:
        kind = event["type"]
        if kind == "content_block_start":
            block = dict(event["content_block"])
            message["content"].append(block)
            if block["type"] == "tool_use":
                partial[event["index"]] = []
        elif kind == "content_block_delta":
            block = message["content"][event["index"]]
            delta = event["delta"]
            if delta["type"] == "text_delta":
                block["text"] += delta["text"]
            elif delta["type"] == "input_json_delta":
                partial[event["index"]].append(delta["partial_json"])
            elif delta["type"] == "thinking_delta":
                block["thinking"] += delta["thinking"]
            elif delta["type"] == "signature_delta":
                block["signature"] += delta["signature"]
        elif kind == "content_block_stop":
            block = message["content"][event["index"]]
            if block["type"] == "tool_use":
                text = "".join(partial[event["index"]])
                block["input"] = json.loads(text) if text else {}
        elif kind == "message_delta":
            message["stop_reason"] = event["delta"]["stop_reason"]
            message["stop_sequence"] = event["delta"]["stop_sequence"]
            message["usage"].update(event["usage"])
    return message


# -- running the translator ----------------------------------------------------------


def translate(chunks: list[Any], sawDone: bool = True, **kwargs: Any) -> list[Event]:
    """All events for a recorded stream; they must be grammatical."""
    return drive(StreamTranslator(MESSAGE_ID, MODEL, **kwargs), chunks, sawDone)


def drive(translator: Any, chunks: list[Any], sawDone: bool) -> list[Event]:
    """All events `translator` makes of `chunks`, start to finish; grammatical."""
    events = translator.start()
    for chunk in chunks:
        events += translator.feed(chunk)
    events += translator.finish(sawDone)
    checkGrammar(events)
    return events


DELTA_FIELDS = {
    "text_delta": "text",
    "input_json_delta": "partial_json",
    "thinking_delta": "thinking",
    "signature_delta": "signature",
}


def summary(events: list[Event]) -> list[tuple[Any, ...]]:
    """Events as short tuples: (type, index, delta type, content)."""
    out: list[tuple[Any, ...]] = []
    for event in events:
        kind = event["type"]
        if kind == "content_block_start":
            block = event["content_block"]
            extra = (block["id"], block["name"]) if block["type"] == "tool_use" else ()
            out.append((kind, event["index"], block["type"], *extra))
        elif kind == "content_block_delta":
            delta = event["delta"]
            key = DELTA_FIELDS.get(delta["type"], "")
            out.append((kind, event["index"], delta["type"], delta.get(key)))
        elif kind == "content_block_stop":
            out.append((kind, event["index"]))
        elif kind == "message_delta":
            usage = event["usage"]
            out.append(
                (kind, event["delta"]["stop_reason"], usage["input_tokens"], usage["output_tokens"])
            )
        else:
            out.append((kind,))
    return out


def golden(chunks: list[Any], sawDone: bool = True) -> list[tuple[Any, ...]]:
    return summary(translate(chunks, sawDone))


def chunk(delta: Any = None, finish: Any = None, **extra: Any) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": {} if delta is None else delta, "finish_reason": finish}],
        **extra,
    }


_ABSENT: Any = object()


def call(
    index: Any = _ABSENT,
    id: Any = _ABSENT,
    name: Any = _ABSENT,
    arguments: Any = _ABSENT,
    **extra: Any,
) -> dict[str, Any]:
    """One tool-call fragment; fields left out are absent from it."""
    fragment: dict[str, Any] = {**extra}
    if index is not _ABSENT:
        fragment["index"] = index
    if id is not _ABSENT:
        fragment["id"] = id
        fragment["type"] = "function"
    function: dict[str, Any] = {}
    if name is not _ABSENT:
        function["name"] = name
    if arguments is not _ABSENT:
        function["arguments"] = arguments
    fragment["function"] = function
    return fragment


def calls(*fragments: dict[str, Any], **delta: Any) -> dict[str, Any]:
    return chunk({"tool_calls": list(fragments), **delta})


START = ("message_start",)
STOP = ("message_stop",)


def textStart(index: int) -> tuple[Any, ...]:
    return ("content_block_start", index, "text")


def toolStart(index: int, callId: str, name: str) -> tuple[Any, ...]:
    return ("content_block_start", index, "tool_use", callId, name)


def text(index: int, value: str) -> tuple[Any, ...]:
    return ("content_block_delta", index, "text_delta", value)


def jsonPart(index: int, value: str) -> tuple[Any, ...]:
    return ("content_block_delta", index, "input_json_delta", value)


def stop(index: int) -> tuple[Any, ...]:
    return ("content_block_stop", index)


def end(reason: str, inputTokens: int = 0, outputTokens: int = 0) -> list[tuple[Any, ...]]:
    return [("message_delta", reason, inputTokens, outputTokens), STOP]


def synthetic(position: int) -> str:
    return f"toolu_{MESSAGE_ID.removeprefix('msg_')}_{position}"


def inputs(events: list[Event]) -> list[Any]:
    """The tool inputs of the accumulated message, in block order."""
    return [b["input"] for b in accumulate(events)["content"] if b["type"] == "tool_use"]


# -- the checker itself ----------------------------------------------------------------


def _good() -> list[Event]:
    return translate(
        [
            chunk({"content": "Hi"}),
            calls(call(index=0, id="c1", name="Read", arguments='{"a": 1}')),
            chunk(finish="tool_calls"),
        ]
    )


def test_checkerAcceptsAGoodStream() -> None:
    events = _good()
    checkGrammar(events)
    assert accumulate(events)["content"] == [
        {"type": "text", "text": "Hi"},
        {"type": "tool_use", "id": "c1", "name": "Read", "input": {"a": 1}},
    ]


def _drop(events: list[Event], kind: str, nth: int = 0) -> list[Event]:
    positions = [i for i, e in enumerate(events) if e["type"] == kind]
    return events[: positions[nth]] + events[positions[nth] + 1 :]


def _emptyTextBlock(events: list[Event]) -> list[Event]:
    out = [dict(e) for e in events]
    out[2] = {**out[2], "delta": {"type": "text_delta", "text": ""}}
    return out


def _wrongDelta(events: list[Event]) -> list[Event]:
    out = list(events)
    out[2] = {**out[2], "delta": {"type": "input_json_delta", "partial_json": "{}"}}
    return out


def _twoOpen(events: list[Event]) -> list[Event]:
    return _drop(events, "content_block_stop", 0)


def _skippedIndex(events: list[Event]) -> list[Event]:
    out = []
    for e in events:
        if e.get("index") == 1:
            e = {**e, "index": 2}
        out.append(e)
    return out


def _twoStops(events: list[Event]) -> list[Event]:
    return [*events[:4], events[3], *events[4:]]


def _noInputUsage(events: list[Event]) -> list[Event]:
    out = list(events)
    out[-2] = {**out[-2], "usage": {"output_tokens": 3}}
    return out


def _noStopReason(events: list[Event]) -> list[Event]:
    out = list(events)
    out[-2] = {**out[-2], "delta": {"stop_reason": None, "stop_sequence": None}}
    return out


@pytest.mark.parametrize(
    "breakIt",
    [
        lambda e: e[1:],
        lambda e: e[:-1],
        lambda e: _drop(e, "message_delta"),
        lambda e: [*e[:1], *e[-2:-1], *e[1:-2], *e[-1:]],
        _twoOpen,
        _skippedIndex,
        _twoStops,
        _emptyTextBlock,
        _wrongDelta,
        _noInputUsage,
        _noStopReason,
        lambda e: [*e, {"type": "ping"}],
    ],
    ids=[
        "no-message_start",
        "no-message_stop",
        "no-message_delta",
        "message_delta-first",
        "two-blocks-open",
        "index-skipped",
        "two-stops",
        "empty-text-block",
        "json-delta-in-text",
        "usage-without-input_tokens",
        "no-stop-reason",
        "event-after-message_stop",
    ],
)
def test_checkerRejects(breakIt: Any) -> None:
    with pytest.raises(AssertionError):
        checkGrammar(breakIt(_good()))


def _fixtureStreams() -> list[Path]:
    if not FIXTURES.is_dir():
        return []
    return sorted(p for p in FIXTURES.glob("*.sse") if "error" not in p.name)


def _readSSE(path: Path) -> list[Event]:
    events = []
    for frame in path.read_text().split("\n\n"):
        lines = [line for line in frame.splitlines() if line]
        if not lines:
            continue
        name = next(line[len("event: ") :] for line in lines if line.startswith("event: "))
        data = "\n".join(line[len("data: ") :] for line in lines if line.startswith("data: "))
        event = json.loads(data)
        assert event["type"] == name
        events.append(event)
    return events


@pytest.mark.parametrize("path", _fixtureStreams(), ids=lambda p: p.name)
def test_checkerAcceptsStreamsClaudeCodeAccepted(path: Path) -> None:
    """The checker is no stricter than real Anthropic streams (whose message_delta
    usage holds output_tokens alone)."""
    events = _readSSE(path)
    checkGrammar(events, fullUsage=False)
    assert accumulate(events)["stop_reason"] in STOP_REASONS


# -- golden streams ----------------------------------------------------------------------


def test_messageStart() -> None:
    events = translate([chunk({"content": "x"}, "stop")])
    assert events[0] == {
        "type": "message_start",
        "message": {
            "id": MESSAGE_ID,
            "type": "message",
            "role": "assistant",
            "model": MODEL,
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
    assert events[-2] == {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn", "stop_sequence": None},
        "usage": {
            "input_tokens": 0,
            "output_tokens": 0,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        },
    }


def test_plainText() -> None:
    assert golden(
        [
            chunk({"content": "Hel"}),
            chunk({"content": "lo ✓"}),
            chunk({"content": "!"}, "stop"),
            {"choices": [], "usage": {"prompt_tokens": 20, "completion_tokens": 3}},
        ]
    ) == [
        START,
        textStart(0),
        text(0, "Hel"),
        text(0, "lo ✓"),
        text(0, "!"),
        stop(0),
        *end("end_turn", 20, 3),
    ]


def test_roleChunkWithContentNullOpensNoBlock() -> None:
    assert golden(
        [
            chunk({"role": "assistant", "content": None}),
            chunk({"role": "assistant", "content": ""}),
            chunk({"role": "assistant", "content": "Hi"}),
            chunk({"content": ""}, "stop"),
        ]
    ) == [START, textStart(0), text(0, "Hi"), stop(0), *end("end_turn")]


def test_emptyAnswerHasNoBlocks() -> None:
    assert golden([chunk({"role": "assistant", "content": None}), chunk(finish="stop")]) == [
        START,
        *end("end_turn"),
    ]


def test_contentAsListOfParts() -> None:
    assert golden(
        [chunk({"content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}, "stop")]
    ) == [START, textStart(0), text(0, "ab"), stop(0), *end("end_turn")]


def test_toolCallWithIndexMissing() -> None:
    assert golden(
        [
            calls(call(id="call_1", name="Read", arguments="")),
            calls(call(arguments='{"path":')),
            calls(call(arguments=' "/a"}')),
            chunk(finish="tool_calls"),
        ]
    ) == [
        START,
        toolStart(0, "call_1", "Read"),
        jsonPart(0, '{"path":'),
        jsonPart(0, ' "/a"}'),
        stop(0),
        *end("tool_use"),
    ]


def test_indexAlwaysZeroNewIdStartsNewCall() -> None:
    events = translate(
        [
            calls(call(index=0, id="call_a", name="Read", arguments='{"p":')),
            calls(call(index=0, arguments='"/a"}')),
            calls(call(index=0, id="call_b", name="Grep", arguments='{"q":')),
            calls(call(index=0, arguments='"x"}')),
            chunk(finish="tool_calls"),
        ]
    )
    assert summary(events) == [
        START,
        toolStart(0, "call_a", "Read"),
        jsonPart(0, '{"p":'),
        jsonPart(0, '"/a"}'),
        stop(0),
        toolStart(1, "call_b", "Grep"),
        jsonPart(1, '{"q":'),
        jsonPart(1, '"x"}'),
        stop(1),
        *end("tool_use"),
    ]
    assert inputs(events) == [{"p": "/a"}, {"q": "x"}]


@pytest.mark.parametrize("laterId", [_ABSENT, "", None], ids=["absent", "empty", "null"])
def test_idOnlyOnFirstFragment(laterId: Any) -> None:
    """vLLM: later fragments carry `index` and an `id` that is '' or absent."""
    assert golden(
        [
            calls(call(index=0, id="chatcmpl-tool-1", name="Bash", arguments="")),
            calls(call(index=0, id=laterId, arguments='{"command"')),
            calls(call(index=0, id=laterId, arguments=': "ls"}')),
            chunk(finish="tool_calls"),
        ]
    ) == [
        START,
        toolStart(0, "chatcmpl-tool-1", "Bash"),
        jsonPart(0, '{"command"'),
        jsonPart(0, ': "ls"}'),
        stop(0),
        *end("tool_use"),
    ]


def test_firstFragmentWithoutIdGetsASyntheticOne() -> None:
    assert golden(
        [
            calls(call(index=0, name="Bash", arguments='{"command": "ls"}')),
            chunk(finish="tool_calls"),
        ]
    ) == [
        START,
        toolStart(0, synthetic(0), "Bash"),
        jsonPart(0, '{"command": "ls"}'),
        stop(0),
        *end("tool_use"),
    ]


def test_idAndNameRepeatedOnEveryFragment() -> None:
    """llama-cpp-python: the name is the same name, never concatenated (also for a
    call whose block opens only after it got several fragments)."""
    events = translate(
        [
            calls(call(index=0, id="call_x", name="Write", arguments="")),
            calls(call(index=0, id="call_x", name="Write", arguments='{"file":')),
            calls(call(index=1, id="call_y", name="Grep", arguments='{"q"')),
            calls(call(index=1, id="call_y", name="Grep", arguments=': "z"}')),
            calls(call(index=0, id="call_x", name="Write", arguments=' "a.txt"}')),
            chunk(finish="tool_calls"),
        ]
    )
    assert summary(events) == [
        START,
        toolStart(0, "call_x", "Write"),
        jsonPart(0, '{"file":'),
        jsonPart(0, ' "a.txt"}'),
        stop(0),
        toolStart(1, "call_y", "Grep"),
        jsonPart(1, '{"q": "z"}'),
        stop(1),
        *end("tool_use"),
    ]
    assert accumulate(events)["content"] == [
        {"type": "tool_use", "id": "call_x", "name": "Write", "input": {"file": "a.txt"}},
        {"type": "tool_use", "id": "call_y", "name": "Grep", "input": {"q": "z"}},
    ]


def test_argumentsInOnePiece() -> None:
    assert golden(
        [
            calls(call(index=0, id="c", name="Read", arguments="")),
            calls(call(index=0, arguments='{"path": "/etc/hosts"}')),
            chunk(finish="tool_calls"),
        ]
    ) == [
        START,
        toolStart(0, "c", "Read"),
        jsonPart(0, '{"path": "/etc/hosts"}'),
        stop(0),
        *end("tool_use"),
    ]


def test_argumentsInManyPieces() -> None:
    sent = '{"command": "echo \\"héllo\\" ✓", "timeout": 5}'
    pieces = [sent[i : i + 3] for i in range(0, len(sent), 3)]
    events = translate(
        [
            calls(call(index=0, id="c", name="Bash", arguments="")),
            *(calls(call(index=0, arguments=p)) for p in pieces),
            chunk(finish="tool_calls"),
        ]
    )
    assert summary(events) == [
        START,
        toolStart(0, "c", "Bash"),
        *(jsonPart(0, p) for p in pieces),
        stop(0),
        *end("tool_use"),
    ]
    assert inputs(events) == [json.loads(sent)]


def test_argumentsAsJSONObject() -> None:
    events = translate(
        [
            calls(call(index=0, id="c", name="Read", arguments={"path": "/a", "n": [1, 2]})),
            chunk(finish="tool_calls"),
        ]
    )
    assert summary(events) == [
        START,
        toolStart(0, "c", "Read"),
        jsonPart(0, '{"path":"/a","n":[1,2]}'),
        stop(0),
        *end("tool_use"),
    ]


@pytest.mark.parametrize("arguments", ["", None, _ABSENT], ids=["empty", "null", "absent"])
def test_emptyArgumentsGiveNoDeltaAndEmptyInput(arguments: Any) -> None:
    events = translate(
        [
            calls(call(index=0, id="c", name="TodoRead", arguments=arguments)),
            calls(call(index=0, arguments=arguments)),
            chunk(finish="tool_calls"),
        ]
    )
    assert summary(events) == [START, toolStart(0, "c", "TodoRead"), stop(0), *end("tool_use")]
    assert inputs(events) == [{}]


def test_wholeCallInOneChunk() -> None:
    """Ollama and Groq: the whole call in one delta, often with the finish reason."""
    assert golden(
        [
            chunk({"role": "assistant", "content": ""}),
            chunk(
                {
                    "tool_calls": [
                        call(index=0, id="call_o", name="Glob", arguments='{"pattern": "*.py"}')
                    ]
                },
                "tool_calls",
            ),
        ]
    ) == [
        START,
        toolStart(0, "call_o", "Glob"),
        jsonPart(0, '{"pattern": "*.py"}'),
        stop(0),
        *end("tool_use"),
    ]


def test_toolCallsAsAnObject() -> None:
    """Old TGI: `tool_calls` is one object, not a list."""
    assert golden(
        [
            chunk({"tool_calls": call(index=0, id="", name="Read", arguments='{"p": 1}')}),
            chunk(finish="stop"),
        ]
    ) == [
        START,
        toolStart(0, synthetic(0), "Read"),
        jsonPart(0, '{"p": 1}'),
        stop(0),
        *end("tool_use"),
    ]


def test_geminiSeveralCompleteCallsInOneDelta() -> None:
    signature = {"extra_content": {"google": {"thought_signature": "sig"}}}
    events = translate(
        [
            calls(
                call(name="Read", arguments='{"p": "/a"}', **signature),
                call(name="Read", arguments='{"p": "/b"}'),
                call(name="Grep", arguments='{"q": "x"}'),
            ),
            chunk(finish="stop"),
        ]
    )
    assert summary(events) == [
        START,
        toolStart(0, synthetic(0), "Read"),
        jsonPart(0, '{"p": "/a"}'),
        stop(0),
        toolStart(1, synthetic(1), "Read"),
        jsonPart(1, '{"p": "/b"}'),
        stop(1),
        toolStart(2, synthetic(2), "Grep"),
        jsonPart(2, '{"q": "x"}'),
        stop(2),
        *end("tool_use"),
    ]


def test_geminiCompleteCallsInSeparateDeltas() -> None:
    events = translate(
        [
            calls(call(name="Read", arguments='{"p": "/a"}')),
            calls(call(name="Read", arguments='{"p": "/b"}')),
            calls(call(name="Grep", arguments={"q": "x"})),
            chunk(finish="stop"),
        ]
    )
    assert summary(events) == [
        START,
        toolStart(0, synthetic(0), "Read"),
        jsonPart(0, '{"p": "/a"}'),
        stop(0),
        toolStart(1, synthetic(1), "Read"),
        jsonPart(1, '{"p": "/b"}'),
        stop(1),
        toolStart(2, synthetic(2), "Grep"),
        jsonPart(2, '{"q":"x"}'),
        stop(2),
        *end("tool_use"),
    ]


def test_geminiSeveralCallsPerDeltaInSeveralDeltas() -> None:
    """Two deltas of two complete calls each, without index or id: four calls (not
    the second delta's calls matched to the first delta's by position, which drops
    the third and glues the fourth onto the second)."""
    events = translate(
        [
            calls(
                call(name="Read", arguments='{"p": "/a"}'),
                call(name="Read", arguments='{"p": "/b"}'),
            ),
            calls(
                call(name="Grep", arguments='{"q": "c"}'), call(name="Grep", arguments='{"q": "d"}')
            ),
            chunk(finish="stop"),
        ]
    )
    assert [(b["name"], b["input"]) for b in accumulate(events)["content"]] == [
        ("Read", {"p": "/a"}),
        ("Read", {"p": "/b"}),
        ("Grep", {"q": "c"}),
        ("Grep", {"q": "d"}),
    ]


def test_geminiTwoToolsWithTheSameArgumentsInSeparateDeltas() -> None:
    """Gemini: each call whole in its own delta, without index or id; two different
    parameterless tools, so the same arguments `{}`.

    Exposes a bug: the second call is taken for a repeat of the first (same
    arguments), so the client gets one call where the model made two."""
    events = translate(
        [
            calls(call(name="TodoRead", arguments="{}")),
            calls(call(name="LS", arguments="{}")),
            chunk(finish="stop"),
        ]
    )
    assert [(b["name"], b["input"]) for b in accumulate(events)["content"]] == [
        ("TodoRead", {}),
        ("LS", {}),
    ]


def test_indexAlwaysZeroWithoutIdsWholeCalls() -> None:
    """Gateways in front of Gemini: every call index 0, no ids, each call whole (not
    the second call appended to the first one's arguments, `{"p": "/a"}{"q": "x"}`)."""
    events = translate(
        [
            calls(call(index=0, name="Read", arguments='{"p": "/a"}')),
            calls(call(index=0, name="Grep", arguments='{"q": "x"}')),
            chunk(finish="stop"),
        ]
    )
    assert [(b["name"], b["input"]) for b in accumulate(events)["content"]] == [
        ("Read", {"p": "/a"}),
        ("Grep", {"q": "x"}),
    ]


def test_parameterlessCallWithoutIndexOrIdThenAnotherCall() -> None:
    """Index-less whole calls (Ollama, Gemini), the first with empty arguments.

    Exposes a bug: an empty-argument call never counts as complete, so the next
    call's fragment (with its own, different name) is taken as its continuation and
    the second call is lost."""
    events = translate(
        [
            calls(call(name="TodoRead", arguments="")),
            calls(call(name="Read", arguments='{"p": "/a"}')),
            chunk(finish="stop"),
        ]
    )
    assert [(b["name"], b["input"]) for b in accumulate(events)["content"]] == [
        ("TodoRead", {}),
        ("Read", {"p": "/a"}),
    ]


def test_indexMissingEndOfOneCallAndStartOfNextInOneDelta() -> None:
    """No index, id on the first fragment only, and one delta carrying the last
    fragment of a call and the first of the next.

    Exposes a bug: the position in the delta is taken as an index, so the
    continuation becomes a new call with no name, and the first call's JSON is cut."""
    events = translate(
        [
            calls(call(id="call_1", name="Read", arguments='{"p"')),
            calls(
                call(arguments=': "/a"}'), call(id="call_2", name="Grep", arguments='{"q": "x"}')
            ),
            chunk(finish="tool_calls"),
        ]
    )
    assert [(b["id"], b["name"], b["input"]) for b in accumulate(events)["content"]] == [
        ("call_1", "Read", {"p": "/a"}),
        ("call_2", "Grep", {"q": "x"}),
    ]


def test_parallelCallsInterleavedByIndex() -> None:
    sentA = '{"path": "/one", "limit": 10}'
    sentB = '{"pattern": "def ", "glob": "*.py"}'
    sentC = '{"command": "pwd"}'
    events = translate(
        [
            chunk({"role": "assistant", "content": None}),
            calls(call(index=0, id="call_a", name="Read", arguments=sentA[:9])),
            calls(call(index=1, id="call_b", name="Grep", arguments=sentB[:5])),
            calls(call(index=0, arguments=sentA[9:20])),
            calls(call(index=2, id="call_c", name="Bash", arguments=sentC[:3])),
            calls(call(index=1, arguments=sentB[5:])),
            calls(call(index=0, arguments=sentA[20:])),
            calls(call(index=2, arguments=sentC[3:])),
            chunk(finish="tool_calls"),
        ]
    )
    # Each call is its own block, in order; a later call waits until the one before
    # it is complete, then everything it has gathered so far goes out at once.
    assert summary(events) == [
        START,
        toolStart(0, "call_a", "Read"),
        jsonPart(0, sentA[:9]),
        jsonPart(0, sentA[9:20]),
        jsonPart(0, sentA[20:]),
        stop(0),
        toolStart(1, "call_b", "Grep"),
        jsonPart(1, sentB),
        stop(1),
        toolStart(2, "call_c", "Bash"),
        jsonPart(2, sentC[:3]),
        jsonPart(2, sentC[3:]),
        stop(2),
        *end("tool_use"),
    ]
    assert inputs(events) == [json.loads(sentA), json.loads(sentB), json.loads(sentC)]


def test_parallelCallsInOneDeltaByIndex() -> None:
    events = translate(
        [
            calls(
                call(index=0, id="a", name="Read", arguments='{"p":'),
                call(index=1, id="b", name="Read", arguments='{"p":'),
            ),
            calls(call(index=1, arguments='"/b"}'), call(index=0, arguments='"/a"}')),
            chunk(finish="tool_calls"),
        ]
    )
    assert inputs(events) == [{"p": "/a"}, {"p": "/b"}]
    assert [b["id"] for b in accumulate(events)["content"]] == ["a", "b"]


def test_cumulativeArgumentSnapshots() -> None:
    """Servers that resend the whole text so far: only what is new goes out."""
    events = translate(
        [
            calls(call(index=0, id="c", name="Bash", arguments='{"command"')),
            calls(call(index=0, arguments='{"command": "l')),
            calls(call(index=0, arguments='{"command": "ls"}')),
            chunk(finish="tool_calls"),
        ]
    )
    assert summary(events)[1:-2] == [
        toolStart(0, "c", "Bash"),
        jsonPart(0, '{"command"'),
        jsonPart(0, ': "l'),
        jsonPart(0, 's"}'),
        stop(0),
    ]


def test_pieceThatStartsLikeTheTextSoFarIsNotASnapshot() -> None:
    """`{"` then `{": 1}` are two pieces of `{"{": 1}`.

    Exposes a (low-severity) bug: the second piece starts with the text so far, so
    it is taken for a cumulative snapshot and the client gets `{"` + `: 1}`."""
    events = translate(
        [
            calls(call(index=0, id="c", name="Set", arguments='{"')),
            calls(call(index=0, arguments='{": 1}')),
            chunk(finish="tool_calls"),
        ]
    )
    assert inputs(events) == [{"{": 1}]


def test_textThenToolCallInTheSameDelta() -> None:
    assert golden(
        [
            chunk(
                {
                    "content": "Looking.",
                    "tool_calls": [call(index=0, id="c", name="Read", arguments='{"p": 1}')],
                }
            ),
            chunk(finish="tool_calls"),
        ]
    ) == [
        START,
        textStart(0),
        text(0, "Looking."),
        stop(0),
        toolStart(1, "c", "Read"),
        jsonPart(1, '{"p": 1}'),
        stop(1),
        *end("tool_use"),
    ]


def test_textAfterToolCalls() -> None:
    assert golden(
        [
            chunk({"content": "First "}),
            calls(call(index=0, id="a", name="Read", arguments='{"p": 1}')),
            calls(call(index=1, id="b", name="Read", arguments='{"p": 2}')),
            chunk({"content": "then words."}),
            chunk({"content": " More."}),
            chunk(finish="tool_calls"),
        ]
    ) == [
        START,
        textStart(0),
        text(0, "First "),
        stop(0),
        toolStart(1, "a", "Read"),
        jsonPart(1, '{"p": 1}'),
        stop(1),
        toolStart(2, "b", "Read"),
        jsonPart(2, '{"p": 2}'),
        stop(2),
        textStart(3),
        text(3, "then words."),
        text(3, " More."),
        stop(3),
        *end("tool_use"),
    ]


@pytest.mark.parametrize("finish", ["stop", "length", "end_turn", "content_filter", None])
def test_finishReasonWithToolCallsIsToolUse(finish: str | None) -> None:
    events = translate(
        [
            calls(call(index=0, id="c", name="Read", arguments='{"p": 1}')),
            chunk(finish=finish),
        ]
    )
    assert events[-2]["delta"] == {"stop_reason": "tool_use", "stop_sequence": None}


@pytest.mark.parametrize(
    ("finish", "reason"),
    [
        ("stop", "end_turn"),
        ("length", "max_tokens"),
        ("content_filter", "refusal"),
        ("tool_calls", "end_turn"),
        ("something_new", "end_turn"),
    ],
)
def test_finishReasonWithoutToolCalls(finish: str, reason: str) -> None:
    assert golden([chunk({"content": "x"}), chunk(finish=finish)])[-2][1] == reason


USAGE = {"prompt_tokens": 120, "completion_tokens": 7, "total_tokens": 127}


@pytest.mark.parametrize(
    "tail",
    [
        pytest.param(
            [chunk(finish="stop"), {"choices": [], "usage": USAGE}], id="separate-choices-[]-chunk"
        ),
        pytest.param([chunk(finish="stop", usage=USAGE)], id="in-the-finish-chunk"),
        pytest.param(
            [{"choices": [{"index": 0, "delta": {}, "finish_reason": "stop", "usage": USAGE}]}],
            id="in-choices[0].usage",
        ),
        pytest.param(
            [
                chunk({"content": " more"}, usage={"prompt_tokens": 120, "completion_tokens": 1}),
                chunk({"content": "."}, usage={"prompt_tokens": 120, "completion_tokens": 2}),
                chunk(finish="stop", usage=USAGE),
            ],
            id="repeated-on-every-chunk",
        ),
        pytest.param(
            [chunk(finish="stop", x_groq={"id": "req_1", "usage": USAGE})], id="x_groq.usage"
        ),
        pytest.param(
            [chunk(finish="stop"), {"choices": [{"index": 0, "delta": {}}], "usage": USAGE}],
            id="litellm-usage-chunk",
        ),
        pytest.param(
            [chunk(finish="stop", usage=None), {"choices": [], "usage": USAGE}],
            id="sglang-null-then-usage",
        ),
    ],
)
def test_usagePlacements(tail: list[Any]) -> None:
    events = translate([chunk({"content": "Hi"}, usage=None), *tail])
    assert events[-2]["delta"]["stop_reason"] == "end_turn"
    assert events[-2]["usage"] == {
        "input_tokens": 120,
        "output_tokens": 7,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
    }


def test_knownUsage_is_read_again_when_usage_or_rounds_change() -> None:
    """The usage read for `message_delta` is reused by `knownUsage`, a copy each time,
    and read again once a later chunk or another round says more."""
    translator = StreamTranslator(MESSAGE_ID, MODEL)
    translator.feed(chunk({"content": "Hi"}, usage={"prompt_tokens": 10, "completion_tokens": 1}))
    first = translator.totalUsage()
    assert translator.knownUsage() == first and translator.knownUsage() is not first
    first["input_tokens"] = 999  # a caller's copy: the next reading is not changed
    assert translator.knownUsage()["input_tokens"] == 10
    translator.feed(chunk(finish="stop", usage={"prompt_tokens": 10, "completion_tokens": 4}))
    assert translator.knownUsage()["output_tokens"] == 4
    translator.nextRound()
    assert translator.knownUsage()["output_tokens"] == 4  # the round spent, none said yet
    translator.feed(chunk(finish="stop", usage={"prompt_tokens": 20, "completion_tokens": 2}))
    assert translator.knownUsage() == {
        "input_tokens": 30,
        "output_tokens": 6,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
    }


@pytest.mark.parametrize(
    "usage",
    [
        {
            "prompt_tokens": 100,
            "completion_tokens": 5,
            "prompt_tokens_details": {"cached_tokens": 60},
        },
        {"prompt_tokens": 100, "completion_tokens": 5, "prompt_cache_hit_tokens": 60},
    ],
    ids=["openai-cached_tokens", "deepseek-prompt_cache_hit_tokens"],
)
def test_cachedPromptTokens(usage: dict[str, Any]) -> None:
    events = translate([chunk({"content": "Hi"}, "stop"), {"choices": [], "usage": usage}])
    assert events[-2]["usage"] == {
        "input_tokens": 40,
        "output_tokens": 5,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 60,
    }


def test_azureFilterChunks() -> None:
    """Azure: a first chunk with `choices: []`, chunks without `delta`."""
    assert golden(
        [
            {
                "id": "",
                "object": "",
                "model": "",
                "choices": [],
                "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": {}}],
            },
            chunk({"role": "assistant", "content": ""}),
            chunk({"content": "Hi"}),
            {"choices": [{"index": 0, "finish_reason": None, "content_filter_results": {}}]},
            {"choices": [{"index": 0, "content_filter_offsets": {"start_offset": 0}}]},
            chunk({"content": " there"}),
            chunk(finish="stop"),
            {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}},
        ]
    ) == [START, textStart(0), text(0, "Hi"), text(0, " there"), stop(0), *end("end_turn", 3, 2)]


def test_sglangExplicitNulls() -> None:
    nulls = {"role": None, "content": None, "tool_calls": None, "reasoning_content": None}
    assert golden(
        [
            chunk({**nulls, "role": "assistant"}, usage=None),
            chunk({**nulls, "content": "Hi"}, usage=None, matched_stop=None),
            chunk(
                {**nulls, "tool_calls": [call(index=0, id="0", name="Read", arguments=None)]},
                usage=None,
            ),
            chunk(
                {**nulls, "tool_calls": [call(index=0, id=None, name=None, arguments='{"p":1}')]}
            ),
            {
                "choices": [
                    {
                        "index": 0,
                        "delta": nulls,
                        "finish_reason": "tool_calls",
                        "matched_stop": None,
                    }
                ],
                "usage": None,
            },
            {"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 4}},
        ]
    ) == [
        START,
        textStart(0),
        text(0, "Hi"),
        stop(0),
        toolStart(1, "0", "Read"),
        jsonPart(1, '{"p":1}'),
        stop(1),
        *end("tool_use", 9, 4),
    ]


def signature(thinking: str) -> str:
    return "ccproxy-thinking-v1:" + hashlib.sha256(thinking.encode()).hexdigest()[:32]


def thinkingStart(index: int) -> tuple[Any, ...]:
    return ("content_block_start", index, "thinking")


def thinking(index: int, value: str) -> tuple[Any, ...]:
    return ("content_block_delta", index, "thinking_delta", value)


def signed(index: int, whole: str) -> tuple[Any, ...]:
    return ("content_block_delta", index, "signature_delta", signature(whole))


@pytest.mark.parametrize(
    "reasoning",
    [
        lambda t: {"reasoning_content": t},
        lambda t: {"reasoning": t},
        lambda t: {"reasoning_details": [{"type": "reasoning.text", "text": t}]},
    ],
    ids=["reasoning_content", "reasoning", "reasoning_details"],
)
def test_reasoningBecomesAThinkingBlock(reasoning: Any) -> None:
    events = translate(
        [
            chunk({"role": "assistant", "content": None, **reasoning("Let me")}),
            chunk({"content": None, **reasoning(" think.")}),
            chunk({"content": "\n\n"}),
            chunk({"content": "Answer"}, "stop"),
        ]
    )
    assert summary(events) == [
        START,
        thinkingStart(0),
        thinking(0, "Let me"),
        thinking(0, " think."),
        signed(0, "Let me think."),
        stop(0),
        textStart(1),
        text(1, "\n\nAnswer"),
        stop(1),
        *end("end_turn"),
    ]
    assert events[1]["content_block"] == {"type": "thinking", "thinking": "", "signature": ""}
    whole = fromOpenAI(
        {
            "choices": [
                {
                    "message": {"content": "\n\nAnswer", **reasoning("Let me think.")},
                    "finish_reason": "stop",
                }
            ]
        },
        messageId=MESSAGE_ID,
        model=MODEL,
    )
    assert accumulate(events)["content"] == whole["content"]


def test_thinkingThenToolCall() -> None:
    assert golden(
        [
            chunk({"reasoning_content": "Need the file."}),
            calls(call(index=0, id="c", name="Read", arguments='{"p": 1}')),
            chunk(finish="tool_calls"),
        ]
    ) == [
        START,
        thinkingStart(0),
        thinking(0, "Need the file."),
        signed(0, "Need the file."),
        stop(0),
        toolStart(1, "c", "Read"),
        jsonPart(1, '{"p": 1}'),
        stop(1),
        *end("tool_use"),
    ]


def test_thinkTagsCutAcrossDeltas() -> None:
    events = translate(
        [
            chunk({"content": "<thi"}),
            chunk({"content": "nk>hmm"}),
            chunk({"content": " ok</th"}),
            chunk({"content": "ink>\n\nAnswer"}),
            chunk(finish="stop"),
        ],
        thinkTags=True,
    )
    assert summary(events) == [
        START,
        thinkingStart(0),
        thinking(0, "hmm"),
        thinking(0, " ok"),
        signed(0, "hmm ok"),
        stop(0),
        textStart(1),
        text(1, "Answer"),
        stop(1),
        *end("end_turn"),
    ]


def test_thinkTagsOffLeavesTheTextAlone() -> None:
    assert golden([chunk({"content": "<think>x</think>y"}, "stop")]) == [
        START,
        textStart(0),
        text(0, "<think>x</think>y"),
        stop(0),
        *end("end_turn"),
    ]


def test_whitespaceOnlyReasoningOpensNoThinkingBlock() -> None:
    """Reasoning that is only whitespace (`"\n\n"`, as reasoning parsers emit for an
    answer without thinking) is no thinking block, as in `fromOpenAI`.

    Exposes a bug: the stream opens a thinking block holding "\n\n" (and a
    signature) that the same answer sent whole does not have."""
    events = translate([chunk({"reasoning_content": "\n\n"}), chunk({"content": "Hi"}, "stop")])
    whole = fromOpenAI(
        {
            "choices": [
                {"message": {"reasoning_content": "\n\n", "content": "Hi"}, "finish_reason": "stop"}
            ]
        },
        messageId=MESSAGE_ID,
        model=MODEL,
    )
    assert whole["content"] == [{"type": "text", "text": "Hi"}]
    assert accumulate(events)["content"] == whole["content"]


# -- errors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "status", "errorType"),
    [
        ({"message": "Rate limited", "code": 429}, 429, "overloaded_error"),
        ({"message": "Busy", "code": "503"}, 503, "overloaded_error"),
        ({"message": "Overloaded", "code": 529}, 529, "overloaded_error"),
        ({"message": "Bad thing", "code": 400, "type": "BadRequestError"}, 400, "api_error"),
        ({"message": "Crashed", "code": 500}, 500, "api_error"),
        ({"message": "Crashed", "code": None}, 502, "api_error"),
        ({"message": "Crashed", "code": "server_error"}, 502, "api_error"),
    ],
)
def test_midStreamErrorChunk(error: dict[str, Any], status: int, errorType: str) -> None:
    translator = StreamTranslator(MESSAGE_ID, MODEL)
    translator.start()
    assert translator.feed(chunk({"content": "Hel"}))
    with pytest.raises(ProxyError) as caught:
        translator.feed({"error": error})
    assert caught.value.status == status
    assert caught.value.errorType == errorType
    assert error["message"] in caught.value.message


@pytest.mark.parametrize(
    "errorChunk",
    [{"error": "model crashed"}, {"error": {"message": "model crashed"}, "choices": []}],
    ids=["string", "with-empty-choices"],
)
def test_midStreamErrorChunkOtherShapes(errorChunk: dict[str, Any]) -> None:
    translator = StreamTranslator(MESSAGE_ID, MODEL)
    with pytest.raises(ProxyError) as caught:
        translator.feed(errorChunk)
    assert (caught.value.status, caught.value.errorType) == (502, "api_error")
    assert "model crashed" in caught.value.message


def test_finishReasonErrorRaises() -> None:
    translator = StreamTranslator(MESSAGE_ID, MODEL)
    translator.feed(chunk({"content": "Hel"}))
    with pytest.raises(ProxyError) as caught:
        translator.feed(chunk({"content": ""}, "error"))
    assert (caught.value.status, caught.value.errorType) == (502, "api_error")


def test_openRouterErrorChunkKeepsTheUpstreamMessage() -> None:
    """OpenRouter's mid-stream error: an `error` object *and* a choice with
    `finish_reason: "error"` in the same chunk.

    Exposes a bug: the error object is ignored because `choices` is not empty, and
    the client is told only "the upstream ended its answer with an error"."""
    translator = StreamTranslator(MESSAGE_ID, MODEL)
    translator.feed(chunk({"content": "Hel"}))
    with pytest.raises(ProxyError) as caught:
        translator.feed(
            {
                "id": "gen-1",
                "object": "chat.completion.chunk",
                "error": {"code": "server_error", "message": "Provider disconnected unexpectedly"},
                "choices": [{"index": 0, "delta": {"content": ""}, "finish_reason": "error"}],
            }
        )
    assert caught.value.status == 502
    assert "Provider disconnected unexpectedly" in caught.value.message


@pytest.mark.parametrize("notAnObject", [[1, 2], "text", 3, None])
def test_chunkThatIsNotAnObjectRaises(notAnObject: Any) -> None:
    with pytest.raises(ProxyError) as caught:
        StreamTranslator(MESSAGE_ID, MODEL).feed(notAnObject)
    assert caught.value.status == 502


def test_streamCutShortRaises() -> None:
    """Neither a finish reason nor [DONE]: half an answer, not a clean stop."""
    translator = StreamTranslator(MESSAGE_ID, MODEL)
    translator.feed(chunk({"content": "Hel"}))
    with pytest.raises(ProxyError) as caught:
        translator.finish(sawDone=False)
    assert (caught.value.status, caught.value.errorType) == (502, "api_error")
    assert not translator.done


def test_finishReasonWithoutDoneIsAnEnd() -> None:
    assert golden([chunk({"content": "Hi"}), chunk(finish="stop")], sawDone=False) == [
        START,
        textStart(0),
        text(0, "Hi"),
        stop(0),
        *end("end_turn"),
    ]


def test_doneWithoutFinishReasonEndsAsEndTurn() -> None:
    assert golden([chunk({"content": "Hi"})], sawDone=True) == [
        START,
        textStart(0),
        text(0, "Hi"),
        stop(0),
        *end("end_turn"),
    ]


def test_doneWithoutFinishReasonAfterToolCallIsToolUse() -> None:
    events = translate([calls(call(index=0, id="c", name="Read", arguments='{"p"'))])
    # The call is closed even though its JSON was cut: the block grammar holds.
    assert summary(events)[-3:] == [stop(0), *end("tool_use")]


# -- feedInto: the deltas of one read joined ---------------------------------------------


def fedInto(*reads: list[Any]) -> list[list[Event]]:
    """Each read's chunks fed into one queue (emptied after it, as a flush does)."""
    translator = StreamTranslator(MESSAGE_ID, MODEL)
    out = []
    for read in reads:
        queue: list[Event] = []
        for c in read:
            translator.feedInto(c, queue)
        out.append(queue)
    return out


def test_aReadsDeltasOfOneBlockAreJoinedInOrder() -> None:
    text1, args, text2 = fedInto(
        [chunk({"content": "Hel"}), chunk({"content": "lo"}), chunk({"content": " ✓\n"})],
        [
            chunk({"content": "!"}),
            calls(call(index=0, id="c1", name="Read", arguments="")),
            calls(call(index=0, arguments='{"p"')),
            calls(call(index=0, arguments=': "/a"}')),
        ],
        [calls(call(index=0, arguments=" ")), chunk({"content": "x"}), chunk({"content": "y"})],
    )
    assert summary(text1) == [textStart(0), text(0, "Hello ✓\n")]
    assert summary(args) == [
        text(0, "!"),  # a new read: a delta of its own (the last one may be on the wire)
        stop(0),
        toolStart(1, "c1", "Read"),
        jsonPart(1, '{"p": "/a"}'),
    ]
    assert summary(text2) == [jsonPart(1, " "), stop(1), textStart(2), text(2, "xy")]


def test_joinedDeltasStayUnderTheLimit() -> None:
    """Joining many tiny pieces costs linear time: a delta stops growing at
    `_JOIN_LIMIT` characters and the next piece starts another."""
    pieces = [chunk({"content": "ab"[i % 2]}) for i in range(3 * _JOIN_LIMIT + 5)]
    (queue,) = fedInto(pieces)
    deltas = [e["delta"]["text"] for e in queue if e["type"] == "content_block_delta"]
    assert len(deltas) == 4
    assert all(len(d) <= _JOIN_LIMIT for d in deltas)
    assert "".join(deltas) == "ab" * (len(pieces) // 2) + "a"


def test_anErrorChunkAddsNothingToTheQueue() -> None:
    """An error said in the same chunk as text raises before adding its events:
    the queue holds the chunks before it, as they would have gone out alone."""
    translator = StreamTranslator(MESSAGE_ID, MODEL)
    queue: list[Event] = []
    translator.feedInto(chunk({"content": "Hel"}), queue)
    before = copy.deepcopy(queue)
    with pytest.raises(ProxyError):
        translator.feedInto(chunk({"content": "lo"}, finish="error"), queue)
    assert queue == before


# -- property: a streamed answer equals the same answer sent whole ----------------------


@dataclass
class Call:
    id: str | None
    name: str
    arguments: dict[str, Any]


@dataclass
class Answer:
    text: str
    calls: list[Call]
    finish: str | None
    usage: dict[str, Any] | None
    withIds: bool = False
    reasoning: str = ""
    reasoningKey: str = "reasoning_content"
    """Where the reasoning goes: reasoning_content, reasoning, reasoning_details, or
    "tags" for `<think>…</think>` at the start of the content."""

    @property
    def thinkTags(self) -> bool:
        return self.reasoningKey == "tags"

    def content(self) -> str:
        if self.thinkTags and self.reasoning:
            return f"<think>{self.reasoning}</think>\n\n{self.text}"
        return self.text

    def completion(self) -> dict[str, Any]:
        """The same answer as a non-streaming chat completion."""
        message: dict[str, Any] = {"role": "assistant", "content": self.content() or None}
        if self.reasoning and not self.thinkTags:
            message.update(reasoningDelta(self.reasoningKey, self.reasoning))
        if self.calls:
            message["tool_calls"] = [
                {
                    **({"id": c.id} if c.id else {}),
                    "type": "function",
                    "function": {"name": c.name, "arguments": json.dumps(c.arguments)},
                }
                for c in self.calls
            ]
        data: dict[str, Any] = {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "choices": [{"index": 0, "message": message, "finish_reason": self.finish}],
        }
        if self.usage is not None:
            data["usage"] = self.usage
        return data


def reasoningDelta(key: str, text: str) -> dict[str, Any]:
    if key == "reasoning_details":
        return {"reasoning_details": [{"type": "reasoning.text", "text": text}]}
    return {key: text}


NAMES = st.from_regex(r"[A-Za-z_][A-Za-z0-9_-]{0,15}", fullmatch=True)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10)
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)
ARGUMENTS = st.dictionaries(st.text(max_size=8), VALUES, max_size=4)
FINISHES = ["stop", "tool_calls", "length", "content_filter", "end_turn", "weird", None]


@st.composite
def usages(draw: Any) -> dict[str, Any]:
    prompt = draw(st.integers(0, 200_000))
    usage: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": draw(st.integers(0, 32_000)),
    }
    cached = draw(st.none() | st.integers(0, prompt))
    if cached is not None:
        if draw(st.booleans()):
            usage["prompt_tokens_details"] = {"cached_tokens": cached}
        else:
            usage["prompt_cache_hit_tokens"] = cached
    usage["total_tokens"] = prompt + usage["completion_tokens"]
    return usage


@st.composite
def answers(draw: Any, minCalls: int = 0) -> Answer:
    withIds = draw(st.booleans())
    prefix = draw(st.sampled_from(["call_", "chatcmpl-tool-", "functions.tool:", ""]))
    count = draw(st.integers(minCalls, 3))
    toolCalls = [
        Call(f"{prefix}{i}" if withIds else None, draw(NAMES), draw(ARGUMENTS))
        for i in range(count)
    ]
    reasoningKey = draw(
        st.sampled_from(["reasoning_content", "reasoning", "reasoning_details", "tags"])
    )
    # Whitespace-only reasoning has its own test (a known difference).
    reasoning = draw(
        st.just("")
        | st.text(min_size=1, max_size=30).filter(lambda t: t.strip() and "</think>" not in t)
    )
    return Answer(
        text=draw(st.just("") | st.text(min_size=1, max_size=40)),
        calls=toolCalls,
        finish=draw(st.sampled_from(FINISHES)),
        usage=draw(st.none() | usages()),
        withIds=withIds,
        reasoning=reasoning,
        reasoningKey=reasoningKey,
    )


def _split(draw: Any, value: str, maxPieces: int = 6) -> list[str]:
    """`value` cut at random places (empty pieces allowed)."""
    if not value:
        return [value]
    cuts = sorted(
        draw(st.lists(st.integers(0, len(value)), max_size=maxPieces - 1)),
    )
    bounds = [0, *cuts, len(value)]
    return [value[a:b] for a, b in itertools.pairwise(bounds)]


@dataclass
class Style:
    index: str  # "present", "missing", "zero"
    idEvery: bool
    nameEvery: bool
    whole: bool
    interleave: bool
    group: bool
    cumulative: bool


def _fragmentsOf(draw: Any, position: int, c: Call, style: Style) -> list[dict[str, Any]]:
    """One call's fragments in the chosen upstream style."""

    def base(first: bool) -> dict[str, Any]:
        fragment: dict[str, Any] = {}
        if style.index == "present":
            fragment["index"] = position
        elif style.index == "zero":
            fragment["index"] = 0
        if c.id is not None and (first or style.idEvery):
            fragment["id"] = c.id
            fragment["type"] = "function"
        elif c.id is not None and not first and draw(st.booleans()):
            fragment["id"] = ""  # vLLM
        return fragment

    # Empty arguments may come as "", null or no key, except where nothing but the
    # JSON being complete tells one index-less, id-less call from the next (a known
    # ambiguity covered by test_parameterlessCallWithoutIndexOrIdThenAnotherCall).
    emptyForms = ["{}"]
    if not c.arguments and (style.index != "missing" or c.id is not None):
        emptyForms += ["", None, "absent"]
    if style.whole:
        function: dict[str, Any] = {"name": c.name}
        form = draw(st.sampled_from(["object", "text"] + (["empty"] if not c.arguments else [])))
        if form == "object":
            function["arguments"] = c.arguments
        elif form == "empty":
            empty = draw(st.sampled_from(emptyForms))
            if empty != "absent":
                function["arguments"] = empty
        else:
            function["arguments"] = _dumps(draw, c.arguments)
        return [{**base(True), "function": function}]
    if not c.arguments and draw(st.booleans()):
        argumentsText = draw(st.sampled_from(emptyForms))
        if argumentsText in (None, "absent"):
            first = {**base(True), "function": {"name": c.name}}
            if argumentsText is None:
                first["function"]["arguments"] = None
            return [first]
    else:
        argumentsText = _dumps(draw, c.arguments)
    pieces = _split(draw, argumentsText)
    # Without index or id, a named fragment starts a new call only when it brings
    # arguments: there, the first fragment is never empty.
    bare = style.index == "missing" and c.id is None
    while bare and len(pieces) > 1 and not pieces[0]:
        pieces = [pieces[0] + pieces[1], *pieces[2:]]
    if style.cumulative:  # each fragment the whole text so far
        pieces = [argumentsText[: sum(map(len, pieces[: i + 1]))] for i in range(len(pieces))]
    if not bare and draw(st.booleans()):
        pieces = ["", *pieces]  # vLLM: name with arguments "" first
    fragments = []
    for i, piece in enumerate(pieces):
        function = {"arguments": piece}
        if i == 0 or style.nameEvery:
            function["name"] = c.name
        fragments.append({**base(i == 0), "function": function})
    return fragments


def _dumps(draw: Any, value: Any) -> str:
    return json.dumps(
        value,
        ensure_ascii=draw(st.booleans()),
        indent=draw(st.sampled_from([None, 2])),
        separators=draw(st.sampled_from([(",", ":"), (", ", ": ")])),
    )


NOISE = [
    {"choices": [{"index": 0, "finish_reason": None, "content_filter_results": {}}]},
    {"choices": [{"index": 0, "delta": {}, "finish_reason": None}]},
    {"choices": [{"index": 0, "delta": {"role": "assistant"}}]},
    {
        "choices": [
            {
                "index": 0,
                "delta": {"role": None, "content": None, "tool_calls": None},
                "finish_reason": None,
                "matched_stop": None,
            }
        ],
        "usage": None,
    },
]
AZURE_FIRST = {"id": "", "object": "", "model": "", "choices": [], "prompt_filter_results": []}


def render(
    draw: Any, answer: Answer, parallel: bool = False
) -> tuple[list[dict[str, Any]], bool, Style]:
    """The answer as an upstream's chunk sequence, in randomly chosen styles;
    `parallel`: fragmented calls with an index, interleaved."""
    indexStyles = ["present", "missing", "zero"] if answer.withIds else ["present", "missing"]
    indexStyle = "present" if parallel else draw(st.sampled_from(indexStyles))
    idEvery = answer.withIds and draw(st.booleans())
    whole = not parallel and draw(st.booleans())
    style = Style(
        index=indexStyle,
        idEvery=idEvery,
        # Without index or id on a fragment, a name is what starts a new call (a
        # repeated name followed by "" could as well be a new parameterless call).
        nameEvery=(indexStyle != "missing" or idEvery) and draw(st.booleans()),
        whole=whole,
        # Fragments of different calls can only be told apart by index or id.
        interleave=parallel or ((indexStyle == "present" or idEvery) and draw(st.booleans())),
        group=(indexStyle != "missing" or idEvery or whole) and draw(st.booleans()),
        cumulative=not whole and draw(st.booleans()),
    )
    if indexStyle == "missing" and not answer.withIds:
        # Two identical calls in a row, without index or id, read as one call sent twice.
        hypothesis.assume(
            all(
                (a.name, a.arguments) != (b.name, b.arguments)
                for a, b in itertools.pairwise(answer.calls)
            )
        )
    deltas: list[dict[str, Any]] = []
    if draw(st.booleans()):
        deltas.append({"role": "assistant", "content": draw(st.sampled_from([None, ""]))})
    if answer.reasoning and not answer.thinkTags:
        deltas += [
            reasoningDelta(answer.reasoningKey, piece) for piece in _split(draw, answer.reasoning)
        ]
    content = answer.content()
    if content:
        textDeltas = [{"content": piece} for piece in _split(draw, content)]
        if deltas and draw(st.booleans()):  # reasoning and text in one delta
            textDeltas[0] = {**deltas.pop(), **textDeltas[0]}
        deltas += textDeltas
    perCall = [_fragmentsOf(draw, i, c, style) for i, c in enumerate(answer.calls)]
    ordered: list[dict[str, Any]] = []
    if style.interleave:
        # Random merge; each call's fragments stay in order and calls start in order.
        nextFragment = [0] * len(perCall)
        shuffler = draw(st.randoms(use_true_random=False))
        while any(n < len(f) for n, f in zip(nextFragment, perCall, strict=True)):
            started = sum(1 for n in nextFragment if n > 0)
            ready = [
                i
                for i, f in enumerate(perCall)
                if nextFragment[i] < len(f) and (nextFragment[i] > 0 or i == started)
            ]
            i = shuffler.choice(ready)
            if i == started and any(map(operator.lt, nextFragment, map(len, perCall[:i]))):
                hypothesis.event("a call starts before the one before it is whole")
            ordered.append(perCall[i][nextFragment[i]])
            nextFragment[i] += 1
    else:
        ordered = [f for fragments in perCall for f in fragments]
    toolDeltas: list[dict[str, Any]] = []
    position = 0
    while position < len(ordered):
        size = draw(st.integers(1, 3)) if style.group else 1
        toolDeltas.append({"tool_calls": ordered[position : position + size]})
        position += size
    if toolDeltas and deltas and "content" in deltas[-1] and draw(st.booleans()):
        deltas[-1] = {**deltas[-1], **toolDeltas.pop(0)}  # text and a call in one delta
    deltas += toolDeltas
    omitFinishKey = draw(st.booleans())  # LiteLLM leaves the key out
    chunks: list[dict[str, Any]] = []
    for delta in deltas:
        choice: dict[str, Any] = {"index": 0, "delta": delta}
        if not omitFinishKey:
            choice["finish_reason"] = None
        chunks.append({"id": "chatcmpl-1", "object": "chat.completion.chunk", "choices": [choice]})
    for noise in draw(st.lists(st.sampled_from(NOISE), max_size=3)):
        chunks.insert(draw(st.integers(0, len(chunks))), copy.deepcopy(noise))
    if draw(st.booleans()):
        chunks.insert(0, copy.deepcopy(AZURE_FIRST))
    if answer.finish is not None:
        if (
            chunks
            and chunks[-1]["choices"]
            and "delta" in chunks[-1]["choices"][0]
            and draw(st.booleans())
        ):
            chunks[-1]["choices"][0]["finish_reason"] = answer.finish
        else:
            chunks.append({"choices": [{"index": 0, "delta": {}, "finish_reason": answer.finish}]})
    if answer.usage is not None:
        placement = draw(
            st.sampled_from(["separate", "finish", "choice", "every", "groq", "litellm"])
        )
        if not chunks or not chunks[-1]["choices"]:
            chunks.append({"choices": [{"index": 0, "delta": {}}]})
        last = chunks[-1]
        if placement == "separate":
            chunks.append({"choices": [], "usage": answer.usage})
        elif placement == "finish":
            last["usage"] = answer.usage
        elif placement == "choice":
            last["choices"][0]["usage"] = answer.usage
        elif placement == "groq":
            last["x_groq"] = {"id": "req_1", "usage": answer.usage}
        elif placement == "litellm":
            chunks.append({"choices": [{"index": 0, "delta": {}}], "usage": answer.usage})
        else:  # running totals on every chunk; only the last one counts
            for n, c in enumerate(chunks):
                c["usage"] = {
                    "prompt_tokens": answer.usage["prompt_tokens"] + 1,
                    "completion_tokens": n,
                }
            last["usage"] = answer.usage
    sawDone = answer.finish is None or draw(st.booleans())
    return chunks, sawDone, style


PROPERTY = settings(
    max_examples=examples(200),
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def checkAgainstWhole(answer: Answer, data: st.DataObject, parallel: bool = False) -> None:
    """Stream `answer` in random upstream styles; the client must get what
    `fromOpenAI` makes of the same answer sent whole."""
    chunks, sawDone, style = render(data.draw, answer, parallel)
    data.draw(st.just(style), label="style")
    hypothesis.event(f"{len(answer.calls)} calls, index {style.index}")
    for flag in ("idEvery", "nameEvery", "whole", "interleave", "group", "cumulative"):
        if getattr(style, flag):
            hypothesis.event(flag)
    if answer.reasoning:
        hypothesis.event(f"reasoning in {answer.reasoningKey}")
    translator = StreamTranslator(MESSAGE_ID, MODEL, thinkTags=answer.thinkTags)
    events = translator.start()
    perChunk = []
    for c in chunks:
        perChunk.append(translator.feed(json.loads(json.dumps(c))))
        events += perChunk[-1]
    events += translator.finish(sawDone)
    checkGrammar(events)
    checkJoined(answer, chunks, sawDone, perChunk, data)
    got = accumulate(events)
    expected = fromOpenAI(
        answer.completion(), messageId=MESSAGE_ID, model=MODEL, thinkTags=answer.thinkTags
    )
    assert got["content"] == expected["content"]
    assert (got["stop_reason"], got["stop_sequence"]) == (
        expected["stop_reason"],
        expected["stop_sequence"],
    )
    assert got["usage"] == expected["usage"]
    assert (got["id"], got["model"]) == (expected["id"], expected["model"])


def checkJoined(
    answer: Answer,
    chunks: list[dict[str, Any]],
    sawDone: bool,
    perChunk: list[list[Event]],
    data: st.DataObject,
) -> None:
    """The same chunks through `feedInto`, in random reads (each read's events
    queued in one list, emptied as a flush does at the read's end): each read's
    events are the per-chunk events of that read, a block's consecutive deltas
    joined into one (its pieces' concatenation), in the same order."""
    cuts = sorted(data.draw(st.lists(st.integers(0, len(chunks)), max_size=4), label="reads"))
    translator = StreamTranslator(MESSAGE_ID, MODEL, thinkTags=answer.thinkTags)
    events = translator.start()
    queue: list[Event] = []
    for a, b in itertools.pairwise([0, *cuts, len(chunks)]):
        for c in chunks[a:b]:
            translator.feedInto(json.loads(json.dumps(c)), queue)
        assert queue == joinDeltas([e for events in perChunk[a:b] for e in events])
        events += queue
        queue.clear()  # EventWriter.flush
    events += translator.finish(sawDone)
    checkGrammar(events)


def joinDeltas(events: list[Event]) -> list[Event]:
    """`events`, each run of one block's text, thinking or tool-input deltas joined."""
    out: list[Event] = []
    for event in events:
        last = out[-1] if out else None
        if (
            last is not None
            and event["type"] == last["type"] == "content_block_delta"
            and event["index"] == last["index"]
            and event["delta"]["type"] == last["delta"]["type"]
            and event["delta"]["type"] != "signature_delta"
        ):
            field = DELTA_FIELDS[event["delta"]["type"]]
            joined = {**last["delta"], field: last["delta"][field] + event["delta"][field]}
            out[-1] = {**last, "delta": joined}
        else:
            out.append(event)
    return out


@PROPERTY
@given(answers(), st.data())
def test_streamEqualsTheWholeAnswer(answer: Answer, data: st.DataObject) -> None:
    checkAgainstWhole(answer, data)


@PROPERTY
@given(answers(minCalls=2), st.data())
def test_parallelStreamEqualsTheWholeAnswer(answer: Answer, data: st.DataObject) -> None:
    checkAgainstWhole(answer, data, parallel=True)


@PROPERTY
@given(answers())
def test_eventsForMessageIsGrammaticalAndWhole(answer: Answer) -> None:
    message = fromOpenAI(
        answer.completion(), messageId=MESSAGE_ID, model=MODEL, thinkTags=answer.thinkTags
    )
    events = eventsForMessage(message)
    checkGrammar(events)
    assert accumulate(events) == message


def test_eventsForMessageGolden() -> None:
    message = fromOpenAI(
        {
            "choices": [
                {
                    "index": 0,
                    "message": {
                        "content": "Let me look.",
                        "tool_calls": [
                            {"id": "c1", "function": {"name": "Read", "arguments": '{"p": "/a"}'}},
                            {"function": {"name": "Ls", "arguments": ""}},
                        ],
                    },
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 10, "completion_tokens": 4},
        },
        messageId=MESSAGE_ID,
        model=MODEL,
    )
    events = eventsForMessage(message)
    checkGrammar(events)
    assert summary(events) == [
        START,
        textStart(0),
        text(0, "Let me look."),
        stop(0),
        toolStart(1, "c1", "Read"),
        jsonPart(1, '{"p":"/a"}'),
        stop(1),
        toolStart(2, synthetic(1), "Ls"),
        jsonPart(2, "{}"),
        stop(2),
        *end("tool_use", 10, 4),
    ]
    assert accumulate(events) == message


# -- a call's arguments, read piece by piece --------------------------------------------


def wholeJSON(text: str) -> bool:
    """What "complete" means: the text so far is one whole JSON value."""
    try:
        orjson.loads(text)
    except orjson.JSONDecodeError:
        return False
    return bool(text.strip())


def soFar(text: str, piece: str) -> str:
    """The arguments after `piece`: a piece that starts with all the text so far, and
    does not make whole JSON appended to it, is a cumulative snapshot."""
    if text and piece.startswith(text) and not wholeJSON(text + piece):
        return piece
    return text + piece


ARGUMENT_TEXTS = [
    '{"command": "ls -la", "timeout": 5}',
    '{"content": "say(\\"hi\\")\\n\\\\n\\\\\\"", "u": "\\u00e9\\ud83d\\ude00"}',
    '{"a": [1, {"b": [[]]}, "]}"], "c": {}}',
    '  \n{"a": 1}  \n ',
    "[]",
    '"a string"',
    '"\\\\"',
    "{}{}",
    '{"a": 1} x',
    '{"a": tru}',
    '{"a": 1]',
    "]",
    "12",
    "-1.5e3",
    "true",
    "nul",
    " \t ",
    '{"key": "value"',
]


def _cuts(text: str) -> Iterator[list[str]]:
    """`text` in pieces: cut once anywhere, twice anywhere, and in 1-character pieces."""
    for a in range(1, len(text)):
        yield [text[:a], text[a:]]
        for b in range(a + 1, len(text)):
            yield [text[:a], text[a:b], text[b:]]
    yield list(text)


@pytest.mark.parametrize("text", ARGUMENT_TEXTS)
def test_completeness_is_read_piece_by_piece(text: str) -> None:
    """Read once, piece by piece, the arguments are complete exactly when the text so
    far parses (as when the whole text was parsed again on every fragment)."""
    for pieces in _cuts(text):
        call = _Call("c")
        sofar = sent = ""
        for piece in pieces:
            call.add(piece)
            sofar = soFar(sofar, piece)
            assert call.complete() == wholeJSON(sofar), (pieces, sofar)
            sent += call.unsent()  # a live call sends each piece as it comes
        assert call.arguments() == sent == sofar


@settings(max_examples=examples(100), deadline=None, derandomize=True, database=None)
@given(VALUES, st.data())
def test_completeness_of_any_value_in_any_pieces(value: Any, data: st.DataObject) -> None:
    text = _dumps(data.draw, {"v": value})
    call = _Call("c")
    sofar = ""
    for piece in _split(data.draw, text, maxPieces=12):
        call.add(piece)
        sofar = soFar(sofar, piece)
        assert call.complete() == wholeJSON(sofar)
    assert call.unsent() == call.arguments() == sofar  # a waiting call sends it all at once


def test_a_long_top_level_scalar_is_never_complete() -> None:
    """Arguments are an object; a bare number is read whole only while it is short (a
    known difference: 65 digits parse, but are not taken as a complete call)."""
    call = _Call("c")
    call.add("1" * 64)
    assert call.complete()
    call.add("1")
    assert not call.complete()


THINK_TAG_CONTENTS = [
    "  \n <think>why</think>\n\nanswer",
    "   \n  plain text",
    " \t\n ",
    "  <thin",
    " \n<think>never closed",
    "\n\n<think></think>x",
    "  <b>bold</b>",
]


@pytest.mark.parametrize("content", THINK_TAG_CONTENTS)
def test_think_tags_after_whitespace_in_any_pieces(content: str) -> None:
    """Leading whitespace is held as pieces until a tag or text decides; cut anywhere,
    one character a delta included, the content splits as it does whole."""
    cuts = [[content[:a], content[a:]] for a in range(len(content) + 1)] + [list(content)]
    for pieces in cuts:
        splitter = ThinkTagSplitter()
        out = [part for piece in pieces for part in splitter.feed(piece)] + splitter.finish()
        thinking = "".join(t for kind, t in out if kind == "thinking")
        assert (thinking, "".join(t for kind, t in out if kind == "text")) == splitThinkTags(
            content
        ), pieces
