"""StreamTranslator.feedPayloads (one read's raw `data:` payloads, parsed and fed
in turn, the usual content-only chunk taken straight to its text) against the
plain path: each payload parsed by orjson, then `feedInto`. The events, their
order, the errors and the state after them must be the same for every stream."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench import payloads as benchPayloads
from ccproxy.errors import ProxyError
from ccproxy.translate.stream import StreamTranslator, notJSON
from tests.support.examples import examples


def make(**kwargs: Any) -> StreamTranslator:
    return StreamTranslator("msg_1", "claude-x", contextWindow=1000, **kwargs)


def outcome(translator: StreamTranslator, events: list[Any], error: Any) -> list[Any]:
    """What a run came to: its events, its error, and how the stream ends."""
    try:
        end: Any = translator.finish(True)
    except ProxyError as e:
        end = ("end error", e.status, e.message)
    return [events, error, end, translator.usage, translator.finishReason]


ROUND: list[bytes] = []
"""In a run's reads: the round ends there, and another upstream answer goes on."""


def nextRound(translator: StreamTranslator) -> list[Any]:
    events = translator.endBlocks(True)
    translator.nextRound()
    return events


def feedEach(translator: StreamTranslator, read: list[bytes], events: list[Any]) -> None:
    """Each payload parsed, then fed, as the relay did before `feedPayloads`."""
    for data in read:
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise notJSON(data) from None
        translator.feedInto(chunk, events)


def run(reads: list[list[bytes]], feedRead: Any, **kwargs: Any) -> list[Any]:
    """What a translator comes to fed `reads`, each by `feedRead`."""
    translator, events, error = make(**kwargs), [], None
    try:
        for read in reads:
            if read is ROUND:
                events += nextRound(translator)
                continue
            feedRead(translator, read, events)
    except ProxyError as e:
        error = (e.status, e.errorType, e.message)
    return outcome(translator, events, error)


def plain(reads: list[list[bytes]], **kwargs: Any) -> list[Any]:
    return run(reads, feedEach, **kwargs)


def fed(reads: list[list[bytes]], **kwargs: Any) -> list[Any]:
    return run(reads, StreamTranslator.feedPayloads, **kwargs)


def same(payloads: list[bytes]) -> None:
    """The same on `payloads` in one read, one per read, and in two reads, with and
    without stop sequences and think tags."""
    for kwargs in ({}, {"stopSequences": ("STOP",)}, {"thinkTags": True}):
        for reads in (
            [payloads],
            [[p] for p in payloads],
            [payloads[: len(payloads) // 2], payloads[len(payloads) // 2 :]],
        ):
            assert fed(reads, **kwargs) == plain(reads, **kwargs), (payloads, kwargs)


def C(delta: Any = None, finish: Any = None, **extra: Any) -> dict[str, Any]:
    choice = {"index": 0, "delta": {} if delta is None else delta, "finish_reason": finish}
    return {"id": "c1", "object": "chat.completion.chunk", "choices": [choice], **extra}


def T(text: Any) -> dict[str, Any]:
    return C({"content": text})


STREAMS: dict[str, list[Any]] = {
    "text": [C({"role": "assistant", "content": ""}), T("Hel"), T("lo"), C({}, "stop")],
    "usage": [T("a"), {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}}],
    "blank-first": [T(" "), T("\n"), T("x"), T(""), C({}, "stop")],
    "usage-each": [{**T("a"), "usage": None}, {**T("b"), "usage": {"prompt_tokens": 1}}],
    "usage-empty": [{**T("a"), "usage": {}}, {**T("b"), "usage": 0}, C({}, "stop")],
    "choice-usage": [{"choices": [{"delta": {"content": "a"}, "usage": {"prompt_tokens": 9}}]}],
    "groq": [T("a"), {**T("b"), "x_groq": {"usage": {"prompt_tokens": 5}}}, C({}, "stop")],
    "finish-with-text": [T("a"), C({"content": "b"}, "stop")],
    "finish-empty": [T("a"), C({"content": "b"}, ""), T("c"), C({"content": "d"}, 0)],
    "finish-error": [T("a"), C({"content": "b"}, "error")],
    "error-beside": [T("a"), {**C({}, "error"), "error": {"message": "boom", "code": 503}}],
    "error-chunk": [T("a"), {"error": {"message": "prompt is too long: 2000 tokens > 1000"}}],
    "not-object": [T("a"), [1, 2], T("b")],
    "number": [T("a"), 5],
    "choices-odd": [T("a"), {"choices": "xx"}, {"choices": [1]}, {"choices": {}}, T("b")],
    "choices-more": [{"choices": [{"delta": {"content": "a"}}, {"delta": {"content": "b"}}]}],
    "content-odd": [T(None), T(5), T(["x", {"type": "text", "text": "y"}]), T({"a": 1}), T("z")],
    "delta-odd": [{"choices": [{"message": {"content": "m"}}]}, {"choices": [{"delta": "s"}]}],
    "delta-more": [C({"content": "a", "role": "assistant"}), C({"content": "b", "refusal": None})],
    "content-and-more": [
        C({"content": "a", "reasoning_content": "r"}),
        C({"content": "b", "tool_calls": [{"id": "t", "function": {"name": "R"}}]}),
        C({}, "tool_calls"),
    ],
    "reasoning": [C({"reasoning_content": "hm"}), C({"reasoning": "m"}), T("y"), C({}, "stop")],
    "tools": [
        T("I'll"),
        C({"tool_calls": [{"index": 0, "id": "a", "function": {"name": "R", "arguments": ""}}]}),
        C({"tool_calls": [{"index": 0, "function": {"arguments": '{"a":1}'}}]}),
        T("then"),
        C({}, "tool_calls"),
    ],
    "stops": [T("abc ST"), T("OP more"), C({}, "stop")],
    "think": [T("<think>hm"), T("m</think>"), T("answer"), C({}, "stop")],
    "unicode": [T("café ✓ 😀"), T('\u2028\n\r\t"\\'), T("\x00"), C({}, "stop")],
    "long": [T("x" * 3000), T("y" * 2000), T("z"), C({}, "stop")],
}


@pytest.mark.parametrize("name", list(STREAMS))
def test_streamsReadAsThePlainPath(name: str) -> None:
    chunks = STREAMS[name]
    same([orjson.dumps(c) for c in chunks])
    same([json.dumps(c).encode() for c in chunks])  # spaces, \u escapes


GARBAGE = [b"not json", b"", b'{"a":', b"[1]", b"null", b'"s"', b"\xff", b'{"choices":[]}x']


@pytest.mark.parametrize("garbage", GARBAGE)
def test_aPayloadNotJSONFailsAfterThoseBeforeIt(garbage: bytes) -> None:
    payloads = [orjson.dumps(T("a")), orjson.dumps(T("b")), garbage, orjson.dumps(T("c"))]
    same(payloads)


def test_theBenchStream() -> None:
    frames = benchPayloads.sse_frames(200)
    same([f[6:-2] for f in frames if not f.startswith(b"data: [DONE]")])


_TEXT = st.text(max_size=8)
_VALUE = st.one_of(st.none(), st.integers(-2, 2), st.booleans(), _TEXT, st.just({}), st.just([]))
_DELTA = st.dictionaries(
    st.sampled_from(["content", "role", "reasoning_content", "refusal", "tool_calls"]),
    st.one_of(_TEXT, _VALUE),
    max_size=3,
)
_CHOICE = st.fixed_dictionaries(
    {"delta": st.one_of(_DELTA, _VALUE)},
    optional={
        "index": st.just(0),
        "finish_reason": st.one_of(st.none(), st.sampled_from(["stop", "length", "", "error"])),
        "usage": st.one_of(st.none(), st.just({"prompt_tokens": 2}), st.just({})),
    },
)
_CHUNK = st.fixed_dictionaries(
    {"choices": st.one_of(st.lists(_CHOICE, min_size=1, max_size=2), _VALUE)},
    optional={
        "id": st.sampled_from(["c1", "c2"]),
        "usage": st.one_of(st.none(), st.just({"completion_tokens": 1}), st.just(0)),
        "x_groq": st.one_of(st.just({}), st.just({"usage": {"prompt_tokens": 7}})),
        "error": st.one_of(st.none(), st.just({"message": "boom"})),
    },
)


@settings(max_examples=examples(300), deadline=None, derandomize=True, database=None)
@given(st.lists(st.one_of(_CHUNK, st.just(T("t")), st.just(T(" "))), min_size=1, max_size=8))
def test_anyChunksReadAsThePlainPath(chunks: list[Any]) -> None:
    same([orjson.dumps(c) for c in chunks])


# -- content-only chunks read by their shape -------------------------------------------

BASE = orjson.dumps(T("first"))
PREFIX, SUFFIX = BASE.split(b'"first"')
TOKENS = [
    b'"x"',
    b'""',
    b'"caf\\u00e9 \\ud83d\\ude00 \\n\\"\\\\ \\/"',
    '"café ✓"'.encode(),
    b'"a","role":"assistant"',  # two keys: not content alone
    b'"a"}},{"delta":{"content":"b"',  # two choices
    b'"a" ',
    b' "a"',
    b'"a"\n',
    b"null",
    b"5",
    b'["a"]',
    b'{"a":"b"}',
    b'"',
    b'"\\ud800"',  # a lone surrogate: not JSON
    b'"\xff"',  # not UTF-8
    b'"\\x"',
    b'"a"b"',
    b'"a" "b"',
    b"",
    b'"STOP"',
    b'"<think>x</think>y"',
]


@pytest.mark.parametrize("token", TOKENS)
def test_payloadsOfTheShapeReadAsThePlainPath(token: bytes) -> None:
    """After a chunk has shown its shape, a payload of its prefix and suffix around
    anything: the same as parsing it whole."""
    same([BASE, PREFIX + token + SUFFIX, orjson.dumps(T("after"))])
    same([BASE, PREFIX + token + SUFFIX + SUFFIX, PREFIX + PREFIX + token + SUFFIX])


def test_theBenchStreamsTextIsReadByItsShape(monkeypatch: pytest.MonkeyPatch) -> None:
    """Its content-only chunks after the first: only their text is parsed."""
    from ccproxy.translate import stream

    parsed: list[bytes] = []

    def loads(data: bytes) -> Any:
        parsed.append(data)
        return orjson.loads(data)

    spy = SimpleNamespace(**{name: getattr(orjson, name) for name in dir(orjson)})
    spy.loads = loads
    monkeypatch.setattr(stream, "orjson", spy)
    frames = benchPayloads.sse_frames(200)
    payloads = [f[6:-2] for f in frames if not f.startswith(b"data: [DONE]")]
    translator = make()
    translator.feedPayloads(payloads, [])
    assert translator._shapes is not None and translator._shapes.text is not None
    texts = [p for p in parsed if p.startswith(b'"')]
    # (`_textRun`, then `_argumentRun`)
    runs = [orjson.loads(p) for p in parsed if p.startswith(b"[")]
    assert len(texts) + sum(map(len, runs)) >= 190 and len(parsed) <= len(payloads)
    # the rest of the read's texts at once, then its call's arguments at once
    assert len(runs) == 2 and len(parsed) < 40 and len(runs[1]) >= 19


@pytest.mark.parametrize(
    "first",
    [
        json.dumps(T("a")).encode(),  # spaces: not orjson's writing
        orjson.dumps(T("\u00e9")).replace("\u00e9".encode(), b"\\u00e9"),  # an escape
        # the mark's text, where the text is and before it: which is the text's place?
        orjson.dumps({"k": "\x00ccproxy\x00", **T("\x00ccproxy\x00")}),
    ],
)
def test_aChunkNotWrittenAsOrjsonWouldShowsNoShape(first: bytes) -> None:
    translator = make()
    translator.feedPayloads([first] * 5, [])
    assert translator._shapes is not None
    assert translator._shapes.text is None and translator._shapes.textTries == 3
    same([first, first, orjson.dumps(T("b")), orjson.dumps(T("c"))])


def test_aShapeTooLargeToKeepIsNotLearned() -> None:
    """A shape lives as long as its stream: one of more than `_SHAPE_BYTES` (here a
    chunk with a 5,000-character id) is not kept, and its chunks are read whole."""
    first = orjson.dumps({**T("a"), "id": "x" * 5000})
    translator = make()
    translator.feedPayloads([first] * 5, [])
    assert translator._shapes is not None
    assert translator._shapes.text is None and translator._shapes.textTries == 3
    same([first, orjson.dumps({**T("b"), "id": "x" * 5000})])


def fragment(arguments: Any, index: Any = 0) -> dict[str, Any]:
    return C({"tool_calls": [{"index": index, "function": {"arguments": arguments}}]})


CALL = C({"tool_calls": [{"index": 0, "id": "call_1", "function": {"name": "R", "arguments": ""}}]})
ARGS = orjson.dumps(fragment("first"))
ARGS_PREFIX, ARGS_SUFFIX = ARGS.split(b'"first"')


@pytest.mark.parametrize("token", TOKENS)
def test_argumentFragmentsOfTheShapeReadAsThePlainPath(token: bytes) -> None:
    """After the usual fragment of a call's arguments has shown its shape (a
    fragment with no id, no name, one call in the delta, nothing else)."""
    call = orjson.dumps(CALL)
    same([call, ARGS, ARGS_PREFIX + token + ARGS_SUFFIX, orjson.dumps(fragment("x"))])
    same([call, ARGS, ARGS_PREFIX + token + ARGS_SUFFIX + ARGS_SUFFIX, orjson.dumps(T("t"))])


@pytest.mark.parametrize(
    "other",
    [
        fragment("a", 1),  # another index: no call with it
        fragment("a", True),
        fragment({"a": 1}),
        C({"tool_calls": [{"index": 0, "id": "call_2", "function": {"arguments": "a"}}]}),
        C({"tool_calls": [{"index": 0, "function": {"name": "W", "arguments": "a"}}]}),
        C({"tool_calls": [{"index": 0, "function": {"arguments": "a"}}] * 2}),
        C({"tool_calls": {"index": 0, "function": {"arguments": "a"}}}),
        C({"tool_calls": [{"index": 0, "function": {"arguments": "a"}}], "content": "b"}),
        C({"tool_calls": [{"index": 0, "function": {"arguments": "a"}}]}, "tool_calls"),
    ],
)
def test_otherFragmentsReadAsThePlainPath(other: dict[str, Any]) -> None:
    call = orjson.dumps(CALL)
    for first in (ARGS, orjson.dumps(other)):  # learned from it, or not
        same([call, first, orjson.dumps(other), ARGS, orjson.dumps(other)])


def test_aFragmentOfTheShapeWithoutItsCallReadsAsThePlainPath() -> None:
    """A new round forgets the calls: a fragment of the shape then names none,
    and starts one as the plain path does."""
    call = orjson.dumps(CALL)
    for reads in ([[call, ARGS], ROUND, [ARGS, call, ARGS]], [[call, ARGS, ARGS], ROUND, [ARGS]]):
        for kwargs in ({}, {"thinkTags": True}):
            assert fed(reads, **kwargs) == plain(reads, **kwargs)


def test_theBenchStreamsArgumentsAreReadByTheirShape() -> None:
    frames = benchPayloads.sse_frames(200)
    translator = make()
    translator.feedPayloads([f[6:-2] for f in frames if not f.startswith(b"data: [DONE]")], [])
    shapes = translator._shapes
    assert shapes is not None and shapes.arguments is not None and shapes.arguments[2] == 0


def started(index: int, callId: str, name: str) -> bytes:
    function = {"name": name, "arguments": ""}
    return orjson.dumps(C({"tool_calls": [{"index": index, "id": callId, "function": function}]}))


@pytest.mark.parametrize(
    "stream",
    [
        # learned from a fragment with an id, another call since at its index
        [
            started(0, "call_1", "R"),
            orjson.dumps(C({"tool_calls": [{"index": 0, "id": "call_2", "function": {}}]})),
            orjson.dumps(
                C({"tool_calls": [{"index": 0, "id": "call_2", "function": {"arguments": "a"}}]})
            ),
            started(0, "call_3", "W"),
            orjson.dumps(
                C({"tool_calls": [{"index": 0, "id": "call_2", "function": {"arguments": "b"}}]})
            ),
        ],
        # from a named fragment, whose next whole arguments make another call
        [
            started(0, "call_1", "R"),
            orjson.dumps(
                C({"tool_calls": [{"index": 0, "function": {"name": "W", "arguments": '{"a":1}'}}]})
            ),
            orjson.dumps(
                C({"tool_calls": [{"index": 0, "function": {"name": "W", "arguments": '{"b":2}'}}]})
            ),
        ],
        # from an index that is a boolean (True is 1 as a key, not as an index)
        [
            started(1, "call_9", "R"),
            started(0, "call_1", "W"),
            orjson.dumps(fragment("a", True)),
            orjson.dumps(fragment("b", True)),
        ],
    ],
    ids=["id", "name", "bool-index"],
)
def test_fragmentsNotUsualShowNoShape(stream: list[bytes]) -> None:
    same(stream)


# -- a translator of other chunks ------------------------------------------------------


def test_aResponsesTranslatorReadsEveryPayloadThroughItsOwnFeedInto() -> None:
    """Its events are Responses events: a chat-like chunk among them (a hostile
    upstream's) is read by its `feedInto` too, never by the chat shortcuts."""
    from ccproxy.translate.responsestream import ResponsesStreamTranslator

    assert not ResponsesStreamTranslator._chatChunks and StreamTranslator._chatChunks
    events = [orjson.dumps(e) for e in benchPayloads.responses_payloads(20)]
    chat = [orjson.dumps(T("x")), orjson.dumps(T("y")), orjson.dumps(fragment("z"))]
    for payloads in (events, events[:5] + chat + chat + events[5:], [*chat, b"not json"]):
        results = []
        for feedRead in (feedEach, StreamTranslator.feedPayloads):
            translator = ResponsesStreamTranslator("msg_1", "claude-x", upstream="up")
            got: list[Any] = []
            try:
                feedRead(translator, payloads, got)
            except ProxyError as e:
                got.append((e.status, e.message))
            results.append((got, translator._shapes))
        assert results[0] == results[1]
