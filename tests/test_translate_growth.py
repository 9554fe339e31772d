"""No request or stream may cost more than its size (issue 11, "Hardening").

One daemon serves a whole team: work that grows as the square of a body freezes the
reactor for everyone. Time is not asserted here (`python -m bench.growth` prints
it); work is counted, deterministically, at n and at 10n for each dimension of a
request or a stream, and must grow about 10 times, not 100 times:

- comparisons: every string of the input is a `Counted`, whose `==` counts itself
  (searching a list compares with each element; a set or a dict, with one);
- characters concatenated with `+` onto a `Counted` (rebuilding a growing text on
  every fragment copies all of it each time; a list of pieces, joined once, none);
- bytes handed to orjson by the translation modules (parsing a growing prefix again
  on every fragment);
- bytecode instructions run in `ccproxy/translate` (any loop in Python).

Work that is quadratic by nature (a `$ref` inlined many times, keywords shared by
many branches) is bounded instead: the request is refused once its tool schemas
take `MAX_SCHEMA_STEPS`, whatever their size or number.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

import orjson
import pytest

import ccproxy.translate
from ccproxy.errors import ProxyError
from ccproxy.translate import request, response, schema, stream, tokens
from ccproxy.translate.dialect import Profile
from ccproxy.translate.request import toOpenAI
from ccproxy.translate.stream import StreamTranslator
from ccproxy.translate.tokens import estimateTokens
from ccproxy.translate.toolsearch import Blocks, Entry, bm25Search

GROWTH = 10
# Linear work grows 10 times (a little more for a fixed start-up cost that is amortized
# at 10n, or an n log n sort); quadratic work 100 times.
LINEAR = 15
TRANSLATE = str(Path(ccproxy.translate.__file__).parent)
GEMINI = Profile(schema="gemini")


class Counted(str):
    """A string that counts the comparisons and the concatenations it takes part in."""

    comparisons = 0
    concatenated = 0

    def __eq__(self, other: object) -> bool:
        Counted.comparisons += 1
        return str.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        Counted.comparisons += 1
        return str.__ne__(self, other)

    __hash__ = str.__hash__

    def __add__(self, other: str) -> str:
        joined = str.__add__(self, other)
        Counted.concatenated += len(joined)
        return joined

    def __radd__(self, other: str) -> str:
        joined = str.__add__(other, self)
        Counted.concatenated += len(joined)
        return joined


def counted(value: Any) -> Any:
    """`value` with every string value (not the keys) a `Counted`, each its own object."""
    if isinstance(value, dict):
        return {k: counted(v) for k, v in value.items()}
    if isinstance(value, list):
        return [counted(v) for v in value]
    if isinstance(value, str):
        return Counted(value)
    return value


class _CountingOrjson:
    """orjson, counting the bytes it reads and writes for the translation modules."""

    def __init__(self) -> None:
        self.bytes = 0

    def loads(self, data: Any) -> Any:
        self.bytes += len(data)
        return orjson.loads(data)

    def dumps(self, value: Any, *args: Any, **kwargs: Any) -> bytes:
        out = orjson.dumps(value, *args, **kwargs)
        self.bytes += len(out)
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(orjson, name)


@contextmanager
def meter(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, int]]:
    """Counts the work done inside the block, by kind."""
    parser = _CountingOrjson()
    instructions = 0

    def local(frame: FrameType, event: str, arg: Any) -> Any:
        nonlocal instructions
        if event == "opcode":
            instructions += 1
        return local

    def tracer(frame: FrameType, event: str, arg: Any) -> Any:
        if not frame.f_code.co_filename.startswith(TRANSLATE):
            return None
        frame.f_trace_lines = False
        frame.f_trace_opcodes = True
        return local

    Counted.comparisons = Counted.concatenated = 0
    work: dict[str, int] = {}
    previous = sys.gettrace()
    with monkeypatch.context() as patched:
        for module in (request, response, stream, tokens):
            patched.setattr(module, "orjson", parser)
        sys.settrace(tracer)
        try:
            yield work
        finally:
            sys.settrace(previous)
    work.update(
        comparisons=Counted.comparisons,
        concatenated=Counted.concatenated,
        parsed=parser.bytes,
        instructions=instructions,
    )


def measure(monkeypatch: pytest.MonkeyPatch, run: Callable[[], Any]) -> dict[str, int]:
    with meter(monkeypatch) as work:
        run()
    return work


def assertLinear(monkeypatch: pytest.MonkeyPatch, make: Callable[[int], Callable], n: int) -> None:
    """Each kind of work grows at most LINEAR times when the input grows 10 times."""
    small = measure(monkeypatch, make(n))
    large = measure(monkeypatch, make(GROWTH * n))
    assert small["instructions"] > 0
    grown = {kind: large[kind] / max(small[kind], 1) for kind in large}
    assert all(ratio <= LINEAR for ratio in grown.values()), (grown, small, large)


# -- requests -------------------------------------------------------------------------


def body(messages: list[Any], tools: list[Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"model": "claude", "max_tokens": 1000, "messages": messages}
    if tools is not None:
        out["tools"] = tools
    return counted(out)


def useBlock(callId: str) -> dict[str, Any]:
    return {"type": "tool_use", "id": callId, "name": "Read", "input": {"path": "/a"}}


def resultBlock(callId: str) -> dict[str, Any]:
    return {"type": "tool_result", "tool_use_id": callId, "content": "ok"}


def conversation(n: int) -> dict[str, Any]:
    messages: list[Any] = [{"role": "user", "content": "go"}]
    for i in range(n):
        messages.append({"role": "assistant", "content": [useBlock(f"c{i}")]})
        messages.append({"role": "user", "content": [resultBlock(f"c{i}")]})
    return body(messages)


def pairs(n: int) -> dict[str, Any]:
    ids = [f"c{i}" for i in range(n)]
    return body(
        [
            {"role": "user", "content": "go"},
            {"role": "assistant", "content": [useBlock(i) for i in ids]},
            {"role": "user", "content": [resultBlock(i) for i in ids]},
        ]
    )


def tool(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "description": "A tool.", "input_schema": schema}


def obj(properties: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"type": "object", "properties": properties, **extra}


PLAIN = obj({"path": {"type": "string"}, "n": {"type": "integer"}}, required=["path"])


def tools(n: int) -> dict[str, Any]:
    return body([{"role": "user", "content": "hi"}], [tool(f"t{i}", PLAIN) for i in range(n)])


def properties(n: int) -> dict[str, Any]:
    schema = obj({f"p{i}": {"type": "string", "description": f"p{i}"} for i in range(n)})
    return body([{"role": "user", "content": "hi"}], [tool("t", schema)])


def requiredNames(n: int) -> dict[str, Any]:
    names = [f"p{i}" for i in range(n)]
    schema = obj({name: {"type": "string"} for name in names}, required=names)
    return body([{"role": "user", "content": "hi"}], [tool("t", schema)])


def branches(n: int) -> dict[str, Any]:
    anyOf = [{"type": "string", "description": f"shape {i}"} for i in range(n)]
    return body([{"role": "user", "content": "hi"}], [tool("t", obj({"p": {"anyOf": anyOf}}))])


CHAIN = {f"D{i}": {"$ref": f"#/$defs/D{i + 1}"} for i in range(6)} | {"D6": obj({"v": PLAIN})}


def refChains(n: int) -> dict[str, Any]:
    """n properties, each a chain of six references."""
    schema = obj({f"p{i}": {"$ref": "#/$defs/D0"} for i in range(n)}, **{"$defs": CHAIN})
    return body([{"role": "user", "content": "hi"}], [tool("t", schema)])


def refChainTools(n: int) -> dict[str, Any]:
    """n tools, each a chain of six references."""
    schema = obj({"p": {"$ref": "#/$defs/D0"}}, **{"$defs": CHAIN})
    return body([{"role": "user", "content": "hi"}], [tool(f"t{i}", schema) for i in range(n)])


PLAIN_PROFILE = Profile()


def sized(build: Callable[[int], Any], run: Callable[[Any], Any]) -> Callable:
    """`make` for a dimension: the input for n built beforehand, then `run` on it."""

    def make(n: int) -> Callable[[], Any]:
        value = build(n)
        return lambda: run(value)

    return make


def translated(
    build: Callable[[int], dict[str, Any]], profile: Profile = PLAIN_PROFILE, count: bool = False
) -> Callable:
    """Translating the body (and, with `count`, estimating its tokens, as
    count_tokens does)."""

    def run(value: dict[str, Any]) -> Any:
        out = toOpenAI(value, model="up", profile=profile, defaultMaxTokens=1000)
        return estimateTokens(out) if count else out

    return sized(build, run)


REQUESTS = [
    pytest.param(translated(conversation), 30, id="messages"),
    pytest.param(translated(tools), 20, id="tools"),
    pytest.param(translated(pairs), 100, id="tool_use-tool_result-pairs"),
    pytest.param(translated(pairs, count=True), 100, id="pairs-through-count_tokens"),
    pytest.param(translated(tools, GEMINI), 10, id="gemini-tools"),
    pytest.param(translated(properties, GEMINI), 20, id="gemini-schema-nodes"),
    pytest.param(translated(requiredNames, GEMINI), 50, id="gemini-required-names"),
    pytest.param(translated(branches, GEMINI), 30, id="gemini-anyOf-branches"),
    pytest.param(translated(refChains, GEMINI), 10, id="gemini-ref-chains"),
    pytest.param(translated(refChainTools, GEMINI), 5, id="gemini-tools-with-ref-chains"),
]


@pytest.mark.parametrize(("make", "n"), REQUESTS)
def test_request_work_is_linear(monkeypatch: pytest.MonkeyPatch, make: Callable, n: int) -> None:
    assertLinear(monkeypatch, make, n)


# Tool schemas whose reduced form is far larger than they are: a reference used
# several times at each of 8 levels; n properties shared by n branches; a long text
# inlined at n places. Their work is bounded, not linear.
def referenceFanOut(n: int) -> dict[str, Any]:
    defs = {
        f"D{i}": obj({f"p{k}": {"$ref": f"#/$defs/D{i + 1}"} for k in range(n)}) for i in range(8)
    }
    schema = obj({"root": {"$ref": "#/$defs/D0"}}, **{"$defs": defs | {"D8": PLAIN}})
    return body([{"role": "user", "content": "hi"}], [tool(f"t{i}", schema) for i in range(n)])


def sharedKeywords(n: int) -> dict[str, Any]:
    shape = obj({f"q{i}": {"type": "string"} for i in range(n)})
    shape["anyOf"] = [{"minProperties": i} for i in range(n)]
    return body([{"role": "user", "content": "hi"}], [tool("t", obj({"p": shape}))])


def inlinedText(n: int) -> dict[str, Any]:
    defs = {"Long": {"type": "string", "description": "word " * 100 * n}}
    schema = obj({f"p{i}": {"$ref": "#/$defs/Long"} for i in range(n)}, **{"$defs": defs})
    return body([{"role": "user", "content": "hi"}], [tool("t", schema)])


# What one step of the budget may cost at most: what makes the steps a bound on the
# time, whatever the shape.
INSTRUCTIONS_PER_STEP = 500
COMPARISONS_PER_STEP = 10
STEPS = 5000


@pytest.mark.parametrize("build", [referenceFanOut, sharedKeywords, inlinedText])
def test_schema_blowup_is_refused_after_bounded_work(
    monkeypatch: pytest.MonkeyPatch, build: Callable[[int], dict[str, Any]]
) -> None:
    for n in (8, 8 * GROWTH):
        value = build(n)
        # (raising=False: a translator without the budget fails on the work instead)
        monkeypatch.setattr(schema, "MAX_SCHEMA_STEPS", STEPS, raising=False)
        with meter(monkeypatch) as work:
            try:
                toOpenAI(value, model="up", profile=GEMINI, defaultMaxTokens=1000)
            except ProxyError as e:
                refused: ProxyError | None = e
            else:
                refused = None
        assert work["instructions"] <= INSTRUCTIONS_PER_STEP * STEPS, work
        assert work["comparisons"] <= COMPARISONS_PER_STEP * STEPS, work
    assert refused is not None and refused.status == 400
    assert "too large or complex for this upstream's schema mode" in refused.message


# -- streams --------------------------------------------------------------------------


def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return counted({"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})


def opening(index: int) -> dict[str, Any]:
    function = {"name": "Write", "arguments": ""}
    return chunk({"tool_calls": [{"index": index, "id": f"call_{index}", "function": function}]})


def fragment(index: int, arguments: str) -> dict[str, Any]:
    return chunk({"tool_calls": [{"index": index, "function": {"arguments": arguments}}]})


def fileArguments(size: int) -> list[str]:
    """Arguments writing a `size`-byte file, in 4-byte fragments."""
    text = orjson.dumps({"path": "/f", "content": 'say("hi")\n' * (size // 10)}).decode()
    return [text[i : i + 4] for i in range(0, len(text), 4)]


def twoCalls(size: int) -> list[dict[str, Any]]:
    """Two calls, the second waiting while the first streams its arguments."""
    out = [opening(0), opening(1)]
    for piece in fileArguments(size):
        out += [fragment(0, piece), fragment(1, piece)]
    return out


def oneCall(size: int) -> list[dict[str, Any]]:
    return [opening(0)] + [fragment(0, piece) for piece in fileArguments(size)]


def manyCalls(n: int) -> list[dict[str, Any]]:
    return [opening(i) for i in range(n)] + [fragment(i, '{"a": 1}') for i in range(n)]


def snapshots(size: int) -> list[dict[str, Any]]:
    """Cumulative arguments: ten fragments, each the whole text so far."""
    text = "".join(fileArguments(size))
    return [opening(0)] + [fragment(0, text[: len(text) * k // 10]) for k in range(1, 11)]


def textDeltas(n: int) -> list[dict[str, Any]]:
    return [chunk({"content": f"word {i} "}) for i in range(n)]


def blankDeltas(n: int, key: str = "content") -> list[dict[str, Any]]:
    return [chunk({key: " "}) for _ in range(n)] + [chunk({key: "done"})]


def streamed(build: Callable[[int], list[Any]], **options: Any) -> Callable:
    """Feeding the chunks, then a finish, to a StreamTranslator."""

    def run(chunks: list[Any]) -> list[Any]:
        translator = StreamTranslator("msg_1", "claude", **options)
        events = translator.start()
        for c in chunks:
            events += translator.feed(c)
        return events + translator.finish()

    return sized(lambda n: [*build(n), chunk({}, "stop")], run)


def rebuilt(build: Callable[[int], list[Any]]) -> Callable:
    """The same, with the events rebuilt into content blocks as ccproxy's tool search
    does to continue an answer (`toolsearch.Blocks`)."""

    def run(chunks: list[Any]) -> list[Any]:
        translator = StreamTranslator("msg_1", "claude")
        blocks = Blocks()
        for events in (translator.start(), *(translator.feed(c) for c in chunks)):
            blocks.add(events)
        blocks.add(translator.finish())
        return blocks.content

    return sized(lambda n: [*build(n), chunk({}, "stop")], run)


STREAMS = [
    pytest.param(streamed(twoCalls), 400, id="fragments-two-calls"),
    pytest.param(streamed(oneCall), 400, id="argument-bytes"),
    pytest.param(streamed(snapshots), 1000, id="argument-snapshots"),
    pytest.param(streamed(manyCalls), 50, id="tool-calls"),
    pytest.param(streamed(textDeltas, stopSequences=["STOP"]), 100, id="text-deltas"),
    pytest.param(streamed(blankDeltas), 100, id="blank-text-deltas"),
    pytest.param(streamed(lambda n: blankDeltas(n, "reasoning")), 100, id="blank-reasoning"),
    pytest.param(streamed(blankDeltas, thinkTags=True), 100, id="blank-deltas-think-tags"),
    pytest.param(rebuilt(textDeltas), 100, id="tool-search-text-blocks"),
    pytest.param(rebuilt(lambda n: blankDeltas(n, "reasoning")), 100, id="tool-search-thinking"),
    pytest.param(rebuilt(oneCall), 400, id="tool-search-tool-input"),
]


@pytest.mark.parametrize(("make", "n"), STREAMS)
def test_stream_work_is_linear(monkeypatch: pytest.MonkeyPatch, make: Callable, n: int) -> None:
    assertLinear(monkeypatch, make, n)


# -- ccproxy's tool search --------------------------------------------------------------


def bm25Searched(n: int) -> Callable[[], Any]:
    """A BM25 search of n query terms (the model's, unbounded) over n deferred tools
    (the client's): the work must follow the words read, not terms x tools."""
    catalog = [Entry(f"tool_{i}", f"tool_{i}\ndoes thing{i} for project{i}") for i in range(n)]
    query = " ".join(f"word{k}" for k in range(n)) + " thing1"
    return lambda: bm25Search(query, catalog)


def test_tool_search_work_is_linear(monkeypatch: pytest.MonkeyPatch) -> None:
    assertLinear(monkeypatch, bm25Searched, 200)
