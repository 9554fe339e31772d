"""StreamTranslator.feedPayloads reads a run of consecutive content-only chunks of
the learned shape with one `orjson.loads` of their texts (`_textRun`) and joins
their texts into the open block's delta at once (`_texts`). Against the plain
path (each payload parsed by orjson, then `feedInto`), on runs of every kind of
text, hostile ones included: the events, their cuts at `_JOIN_LIMIT`, the
errors and the state after them must be the same."""

from __future__ import annotations

import itertools
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ccproxy.errors import ProxyError
from ccproxy.translate.stream import _JOIN_LIMIT, StreamTranslator
from tests.support.examples import examples
from tests.test_translate_payloads import BASE, PREFIX, SUFFIX, TOKENS, C, T, feedEach, make


def shaped(token: bytes) -> bytes:
    return PREFIX + token + SUFFIX


def text(value: str) -> bytes:
    return orjson.dumps(T(value))


def outcome(reads: list[list[bytes]], feedRead: Any, flushed: bool, **kwargs: Any) -> list[Any]:
    """What a translator comes to fed `reads`, each by `feedRead`; `flushed`: the
    events of each read taken away after it (as the relay's writer sends its
    queue), else all kept in one list (a delta joins across reads)."""
    translator = make(**kwargs)
    sent: list[Any] = []
    events: list[Any] = []
    error = None
    try:
        for read in reads:
            feedRead(translator, read, events)
            if flushed:
                sent.append(orjson.dumps(events))  # as written then
                events.clear()
    except ProxyError as e:
        error = (e.status, e.errorType, e.message)
    sent.append(orjson.dumps(events))
    try:
        end: Any = translator.finish(True)
    except ProxyError as e:
        end = ("end error", e.status, e.message)
    return [sent, error, end, translator.usage, translator.finishReason, translator._textTail]


def same(payloads: list[bytes], also: Any = None) -> None:
    """Fed as one read, one per read, in two reads and in reads of three, events
    flushed after each read or kept, with and without stop sequences: by
    `feedPayloads` and by the plain path (and by `also(reads, flushed, **kwargs)`
    when given, another path that must read them the same)."""
    cuts = [
        [payloads],
        [[p] for p in payloads],
        [payloads[: len(payloads) // 2], payloads[len(payloads) // 2 :]],
        [payloads[i : i + 3] for i in range(0, len(payloads), 3)],
    ]
    for kwargs in ({}, {"stopSequences": ("STOP", "\n\n")}, {"thinkTags": True}):
        for reads in cuts:
            for flushed in (False, True):
                fed = outcome(reads, StreamTranslator.feedPayloads, flushed, **kwargs)
                plain = outcome(reads, feedEach, flushed, **kwargs)
                assert fed == plain, (payloads, reads, kwargs, flushed)
                if also is not None:
                    assert fed == also(reads, flushed, **kwargs), (payloads, reads, kwargs)


@pytest.mark.parametrize("token", TOKENS)
def test_aHostileTextInARunReadsAsThePlainPath(token: bytes) -> None:
    """Anything between the prefix and the suffix, first, amid or last in a run."""
    x, y = shaped(b'"x"'), shaped(b'"y"')
    same([BASE, shaped(token), x, y])
    same([BASE, x, shaped(token), y])
    same([BASE, x, y, shaped(token)])
    same([BASE, x, shaped(token), shaped(token), y, text("after")])


PIECES = [
    b'"a"',
    b'""',
    b'" "',
    b'"\\n"',
    b'"\\ud83d"',  # a pair's halves in two chunks: neither is JSON alone
    b'"\\ude00"',
    b'"\\ud83d\\ude00"',
    b'"\\"',
    b'"\\\\"',
    b'"a\\',
    b'\\n"',
    b'"a\n"',
    b'"a"\n',
    b'"a",',
    b',"a"',
    b'"a","b"',
    b'"a"]',
    b'["a"',
    b"[",
    b"]",
    b"\n",
    b"\n,",
    b'"\xc3',
    b'\xa9"',
    b"null",
    b"1",
    b'"STOP"',
    b'"ST"',
    b'"OP"',
    b'"<think>"',
]


def test_everyPairAndTripleOfHostilePiecesReadsAsThePlainPath() -> None:
    """Pieces that are not a string alone but could make strings when joined
    (an escape, a surrogate pair or a UTF-8 character cut in two, a comma, a
    bracket, a newline): in twos and threes, after a learned shape."""
    for pair in itertools.product(PIECES, repeat=2):
        same([BASE, *map(shaped, pair)])
    for triple in itertools.combinations(PIECES, 3):
        same([BASE, shaped(b'"x"'), *map(shaped, triple)])


PIECE = st.one_of(
    st.sampled_from(PIECES),
    st.text(max_size=6).map(orjson.dumps),
    st.binary(max_size=6).map(lambda b: b'"' + b + b'"'),
)


@settings(max_examples=examples(400), deadline=None, derandomize=True, database=None)
@given(st.lists(st.one_of(PIECE, PIECE.map(lambda b: b" " + b + b"\t")), max_size=12))
def test_anyRunReadsAsThePlainPath(pieces: list[bytes]) -> None:
    same([BASE, *map(shaped, pieces), text("end")])


def test_runsAcrossTheJoinLimitReadAsThePlainPath() -> None:
    """A run whose texts reach `_JOIN_LIMIT` in the block's delta (at, before,
    after the last piece; empty pieces last) is cut where the plain path cuts."""
    for first in (0, 1, _JOIN_LIMIT - 10, _JOIN_LIMIT - 1, _JOIN_LIMIT, _JOIN_LIMIT + 5):
        for sizes in ((1, 1), (4, 5, 1), (9, 0), (10, 0, 0), (11,), (3000, 2000, 1), (5000,)):
            for size in sizes:
                pieces = [text("f" * max(first, 1)), *(text("x" * s) for s in sizes)]
                pieces += [text(""), text("z" * size)]
                same([BASE, *pieces])


def test_runsThatOpenTheBlockReadAsThePlainPath() -> None:
    """A run begun before a text block is open: blank texts held back, then the
    block opened, after a tool call, after thinking."""
    function = {"name": "R", "arguments": "{}"}
    call = orjson.dumps(C({"tool_calls": [{"index": 0, "id": "call_1", "function": function}]}))
    reasoning = orjson.dumps(C({"reasoning_content": "hm"}))
    blanks = [text(" "), text("\n"), text(""), text("  ")]
    for before in ([], [call], [reasoning], [call, reasoning], [text("a"), call]):
        same([BASE, *before, *blanks, text("x"), text("y")])
        same([BASE, *before, *blanks])
        same([BASE, *before, text("x"), *blanks, text("y"), call, text("z"), text("w")])


def test_aRunThatFailsLeavesRunsOffAndReadsAsThePlainPath() -> None:
    translator = make()
    events: list[Any] = []
    translator.feedPayloads([BASE, shaped(b'"a"'), shaped(b"null"), shaped(b'"b"')], events)
    assert translator._shapes is not None and translator._shapes.runs is False
    translator.feedPayloads([shaped(b'"c"'), shaped(b'"d"')], events)
    assert [e["delta"]["text"] for e in events if e["type"] == "content_block_delta"] == [
        "firstabcd"
    ]


NEAR = [
    PREFIX + b'"x"',  # the prefix, not the suffix
    PREFIX + b'"x"}',
    PREFIX[:-2] + b"X:" + b'"x"' + SUFFIX,  # the prefix's last byte, another prefix
    PREFIX.replace(b'"content"', b'"contenx"') + b'"x"' + SUFFIX,  # ... JSON
    b"{" + PREFIX[2:] + b'"x"' + SUFFIX,  # ... one byte short
    PREFIX + b'"x"' + SUFFIX[:-1] + b"X",
    PREFIX + b'"x"' + SUFFIX[1:],
    PREFIX + SUFFIX,
    PREFIX[:-1] + SUFFIX,
    b"{}",  # too short to tell where a prefix would end
    b"",
    orjson.dumps(C({}, "stop")),
]


@pytest.mark.parametrize("other", NEAR)
def test_payloadsNearTheShapeAmidRunsReadAsThePlainPath(other: bytes) -> None:
    """A run's end is first guessed from each payload's byte where the prefix
    ends, then the run checked whole: a payload with that byte but not the
    shape ends the run where the plain path would, and later runs still go."""
    x, y = shaped(b'"x"'), shaped(b'"y"')
    same([BASE, x, other, y, x, other, x, y, other])
    same([BASE, x, y, other, other, x, y])
    same([BASE, other, x, y])
    translator = make()
    try:
        translator.feedPayloads([BASE, x, y, other, x, y, other, y, x], [])
    except ProxyError:
        pass  # (`other` is not JSON: the read stops there, as the plain path's)
    assert translator._shapes is not None
    assert translator._shapes.runs is (other != PREFIX + SUFFIX)


def test_marksTellEachPayloadsByteWhereThePrefixEnds() -> None:
    from ccproxy.translate.stream import _marks

    x = shaped(b'"x"')
    other = orjson.dumps(C({}, "stop"))
    assert other[len(PREFIX) - 1] != PREFIX[-1]
    assert _marks([x, other, NEAR[3], x], PREFIX) == b"\x01\x00\x01\x01"
    assert _marks([x, b"{}"], PREFIX) is None


def test_marksThatToldARunWrongAreNotAskedAgainInThatRead(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each check of a run its marks tell reads on to where they end: after one
    told wrong, the read's other runs are found payload by payload."""
    from ccproxy.translate import stream

    given: list[bool] = []
    real = stream._run

    def spy(*args: Any) -> Any:
        given.append(args[2] is not None)
        return real(*args)

    monkeypatch.setattr(stream, "_run", spy)
    x, wrong = shaped(b'"x"'), NEAR[3]  # (its byte where the prefix ends is the mark)
    make().feedPayloads([BASE, *[x, x, wrong] * 4], [])
    assert given == [True, False, False, False]
