"""StreamTranslator.feedPayloads reads a run of consecutive argument fragments of
the learned shape, of a known call, with one `orjson.loads` of their arguments
(`_argumentRun`), each then added and placed as alone. Against the plain path
(each payload parsed by orjson, then `feedInto`), on runs of every kind of
fragment, hostile ones included: the events, their cuts at `_JOIN_LIMIT`,
cumulative snapshots, the errors and the state after them must be the same."""

from __future__ import annotations

import itertools
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench import payloads as benchPayloads
from ccproxy.translate.stream import _JOIN_LIMIT, StreamTranslator
from tests.support.examples import examples
from tests.test_translate_payloads import (
    ARGS,
    ARGS_PREFIX,
    ARGS_SUFFIX,
    CALL,
    TOKENS,
    C,
    T,
    fragment,
    make,
    started,
)
from tests.test_translate_textruns import PIECE, PIECES, outcome
from tests.test_translate_textruns import same as textRunsSame


def shaped(token: bytes) -> bytes:
    return ARGS_PREFIX + token + ARGS_SUFFIX


def args(value: str, index: int = 0) -> bytes:
    return orjson.dumps(fragment(value, index))


CALLED = [orjson.dumps(CALL), ARGS]
"""A call begun, and its usual fragment (the shape learned)."""


def oldSteps(self: StreamTranslator, call: Any, arguments: str, events: list[Any]) -> None:
    """A fragment's steps before `_addArguments`' shortcut: added, then placed."""
    call.add(arguments)
    self._advance(events)


def plainOld(reads: list[list[bytes]], flushed: bool, **kwargs: Any) -> list[Any]:
    """The plain path, with each fragment's steps as before the shortcut."""
    from tests.test_translate_payloads import feedEach

    real = StreamTranslator._addArguments
    StreamTranslator._addArguments = oldSteps  # type: ignore[method-assign]
    try:
        return outcome(reads, feedEach, flushed, **kwargs)
    finally:
        StreamTranslator._addArguments = real  # type: ignore[method-assign]


def same(payloads: list[bytes]) -> None:
    """Read in every cut of `tests.test_translate_textruns.same`, by `feedPayloads`,
    by the plain path, and by the plain path before `_addArguments`' shortcut."""
    textRunsSame(payloads, also=plainOld)


@pytest.mark.parametrize("token", TOKENS)
def test_aHostileFragmentInARunReadsAsThePlainPath(token: bytes) -> None:
    x, y = shaped(b'"x"'), shaped(b'"y"')
    same([*CALLED, shaped(token), x, y])
    same([*CALLED, x, shaped(token), y])
    same([*CALLED, x, y, shaped(token)])
    same([*CALLED, x, shaped(token), shaped(token), y, orjson.dumps(T("after"))])


def test_everyPairAndTripleOfHostilePiecesReadsAsThePlainPath() -> None:
    """Pieces that are not a string alone but could make strings when joined
    (an escape, a surrogate pair or a UTF-8 character cut in two, a comma, a
    bracket, a newline): in twos and threes, after a learned shape."""
    for pair in itertools.product(PIECES, repeat=2):
        same([*CALLED, *map(shaped, pair)])
    for triple in itertools.combinations(PIECES, 3):
        same([*CALLED, shaped(b'"x"'), *map(shaped, triple)])


@settings(max_examples=examples(400), deadline=None, derandomize=True, database=None)
@given(st.lists(st.one_of(PIECE, PIECE.map(lambda b: b" " + b + b"\t")), max_size=12))
def test_anyRunReadsAsThePlainPath(pieces: list[bytes]) -> None:
    same([*CALLED, *map(shaped, pieces), orjson.dumps(T("end"))])


def test_cumulativeSnapshotsInARunReadAsThePlainPath() -> None:
    """Gateways that send the whole arguments so far in each fragment: each is
    told a snapshot (or not) as alone, JSON-complete ones included."""
    snapshots = ['{"a"', '{"a": 1', '{"a": 1, "b"', '{"a": 1, "b": 2}', '{"a": 1, "b": 2}']
    for cut in range(len(snapshots)):
        same([orjson.dumps(CALL), *map(args, snapshots[cut:])])
        same([*CALLED, *map(args, snapshots[cut:]), *map(args, snapshots)])
    same([orjson.dumps(CALL), args("{}"), args("{}"), args('{"a"'), args('{"a":2}')])


def test_runsAcrossTheJoinLimitReadAsThePlainPath() -> None:
    for first in (1, _JOIN_LIMIT - 10, _JOIN_LIMIT - 1, _JOIN_LIMIT, _JOIN_LIMIT + 5):
        for sizes in ((1, 1), (4, 5, 1), (9, 0), (10, 0, 0), (3000, 2000, 1), (5000,)):
            pieces = [args("f" * first), *(args("x" * s) for s in sizes), args(""), args("z")]
            same([orjson.dumps(CALL), *pieces])


def test_runsOfParallelCallsReadAsThePlainPath() -> None:
    """Fragments of a call still waiting (a later index), of the live one while
    another waits, and of a call made complete by them (the next goes live)."""
    one, two = started(0, "call_1", "R"), started(1, "call_2", "W")
    same([one, args("{"), two, args('"a": 1', 1), args("}", 1), args('"b": 2'), args("}")])
    same([one, args("{"), two, args('"a": 1'), args("}"), args("{", 1), args("}", 1)])
    same([one, two, args("{}"), args("{", 1), args("}", 1), args("{"), args("}")])
    same([one, args("{"), args("}"), two, args("{", 1), args('"c": 3}', 1), args("x", 1)])


def test_runsWithTextAndOtherChunksBetweenReadAsThePlainPath() -> None:
    other = orjson.dumps(C({}, "tool_calls"))
    text = orjson.dumps(T("t"))
    for between in (text, other, b"{", shaped(b"null"), ARGS_PREFIX + b'"x"'):
        same([*CALLED, args("a"), between, args("b"), args("c"), between, args("d")])


def test_aRunThatFailsLeavesArgumentRunsOffAndReadsAsThePlainPath() -> None:
    translator = make()
    events: list[Any] = []
    translator.feedPayloads([*CALLED, shaped(b'"a"'), shaped(b"null"), shaped(b'"b"')], events)
    assert translator._shapes is not None and translator._shapes.argumentRuns is False
    translator.feedPayloads([shaped(b'"c"'), shaped(b'"d"')], events)
    deltas = [e["delta"]["partial_json"] for e in events if e["type"] == "content_block_delta"]
    assert "".join(deltas) == "firstabcd"  # (null arguments add nothing)


def test_theBenchStreamsArgumentsAreReadAsOneRun(monkeypatch: pytest.MonkeyPatch) -> None:
    """Its 20 fragments of one read go through one `_argumentRun` (the path is
    taken), and read as the plain path."""
    frames = benchPayloads.sse_frames(200)
    payloads = [f[6:-2] for f in frames if not f.startswith(b"data: [DONE]")]
    runs: list[int] = []
    real = StreamTranslator._argumentRun

    def spy(self: Any, index: int, run: list[bytes], *rest: Any) -> Any:
        runs.append(len(run))
        return real(self, index, run, *rest)

    monkeypatch.setattr(StreamTranslator, "_argumentRun", spy)
    events: list[Any] = []
    make().feedPayloads(payloads, events)
    assert runs and sum(runs) >= 19
    monkeypatch.undo()
    same(payloads)


_ARGUMENT = st.sampled_from(
    ["", "{", "}", '"a"', ":", "1", '{"a"', '{"a": 1', '{"a": 1}', "x" * 40]
)


@settings(max_examples=examples(400), deadline=None, derandomize=True, database=None)
@given(
    st.lists(
        st.one_of(
            st.tuples(st.sampled_from([0, 1]), _ARGUMENT),
            st.sampled_from(["text", "call0", "call1", "call2", "finish"]),
        ),
        max_size=14,
    )
)
def test_anyFragmentsOfAnyCallsReadAsBeforeTheShortcut(steps: list[Any]) -> None:
    """Fragments of one call or two (the live one, a waiting one), cumulative
    snapshots or pieces, empty ones, whole JSON values, between text, new
    calls (a new id at an index already used) and a finish."""
    payloads = [orjson.dumps(CALL)]
    for step in steps:
        if step == "text":
            payloads.append(orjson.dumps(T("t")))
        elif step == "finish":
            payloads.append(orjson.dumps(C({}, "tool_calls")))
        elif isinstance(step, str):
            n = int(step[-1])
            payloads.append(started(min(n, 1), f"call_{n}{len(payloads)}", "RW"[n % 2]))
        else:
            payloads.append(args(step[1], step[0]))
    same(payloads)


def test_addSentTakesOnlyAPlainPieceOfAnOpenCallWithNothingUnsent() -> None:
    """What `_Call.addSent` refuses (then `add` and `_advance` do the work):
    an empty fragment, one as long as the text so far (maybe a cumulative
    snapshot), a closed call's, and one behind pieces not sent yet."""
    from ccproxy.translate.stream import _Call

    call = _Call("call_1")
    assert not call.addSent("{")  # (nothing so far: as long)
    call.add('{"a": ')
    assert call.unsent() == '{"a": '
    assert not call.addSent("")
    assert not call.addSent('{"a": 1')
    assert call.addSent("1") and call.arguments() == '{"a": 1' and call.unsent() == ""
    call.add(",")
    assert not call.addSent(" ")  # ("," unsent)
    assert call.unsent() == "," and call.addSent(" ") and call.length == len('{"a": 1, ')
    call.closed = True
    assert not call.addSent('"b"') and call.arguments() == '{"a": 1, '


def test_runsAreCutAtTheirMostAndReadAsThePlainPath(monkeypatch: pytest.MonkeyPatch) -> None:
    """A long run of fragments goes in runs of at most `_RUN_MOST` (a failing
    one wastes no more than that), read as the plain path, a failure past
    the first runs included."""
    from ccproxy.translate import stream

    sizes: list[int] = []
    real = StreamTranslator._argumentRun

    def spy(self: Any, index: int, run: list[bytes], *rest: Any) -> Any:
        sizes.append(len(run))
        return real(self, index, run, *rest)

    monkeypatch.setattr(StreamTranslator, "_argumentRun", spy)
    many = [args(str(n % 10)) for n in range(2 * stream._RUN_MOST + 5)]
    make().feedPayloads([*CALLED, *many], [])
    assert sizes == [stream._RUN_MOST, stream._RUN_MOST, 5]
    monkeypatch.undo()
    same([*CALLED, *many])
    same([*CALLED, *many[:200], shaped(b'"\\ud83d"'), *many[:10]])
