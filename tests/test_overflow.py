"""Every server's way of saying the prompt does not fit, said the way Claude Code
compacts on: `prompt is too long: N tokens > M maximum`.

One row per wording, each as the server sends it (from its source or its own
documentation); `estimate` and `window` stand for ccproxy's count of the prompt and
the route's `context_window`, used only where the upstream gives no number.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from ccproxy.translate.overflow import Overflow, readOverflow
from tests.support.fakes import jsonReply, lateReply, rawReply, sseReply
from tests.support.harness import BASE_CONFIG, Harness, message, parseSSE
from tests.support.overflow_wordings import LLAMA_SERVER, WORDINGS, body, openAI
from tests.test_head_wait import CONFIG as HEAD_WAIT_CONFIG
from tests.test_head_wait import Stream

# Claude Code 2.1.330's own readers of the message (from its binary):
CLAUDE_CODE_NUMBERS = re.compile(r"prompt is too long[^0-9]*(\d+)\s*tokens?\s*>\s*(\d+)", re.I)
CLAUDE_CODE_ANTHROPIC = re.compile(r"^prompt is too long: \d+ tokens > \d+ maximum$")
CLAUDE_CODE_OUTPUT = re.compile(
    r"input length and `max_tokens` exceed context limit: (\d+) \+ (\d+) > (\d+)"
)


@pytest.mark.parametrize(("server", "text", "said"), WORDINGS, ids=[w[0] for w in WORDINGS])
def test_each_servers_overflow_in_claude_codes_words(server: str, text: str, said: str) -> None:
    overflow = readOverflow(text)
    assert overflow is not None
    estimate = 30000 if server == "dashscope" else 9000
    assert overflow.message(estimate, window=8192) == said
    if said.startswith("prompt is too long"):
        assert CLAUDE_CODE_ANTHROPIC.fullmatch(said)
        tokens, limit = map(int, CLAUDE_CODE_NUMBERS.search(said).groups())  # type: ignore[union-attr]
        assert tokens > limit  # the gap Claude Code drops older messages by
    elif said.startswith("input length"):
        assert CLAUDE_CODE_OUTPUT.search(said)


@pytest.mark.parametrize(
    "text",
    [
        openAI(
            "Invalid 'messages[1].content': string too long. Expected a string with maximum"
            " length 1048576, but got a string with length 2000000 instead.",
            code="string_above_max_length",
        ),
        openAI("Rate limit reached for gpt-4.1 on tokens per min (TPM)", code="rate_limit"),
        body({"error": {"message": "context too long", "code": 413}}),
        body({"error": {"message": "the prompt is too long: policy_blocked"}}),
        body({"error": {"message": "CUDA out of memory", "code": 500}}),
        "Internal Server Error",
        "",
    ],
)
def test_other_errors_are_no_overflow(text: str) -> None:
    assert readOverflow(text) is None


@pytest.mark.parametrize(
    ("overflow", "estimate", "window", "said"),
    [
        (Overflow(), 5000, 4096, "prompt is too long: 5000 tokens > 4096 maximum"),
        (Overflow(), 100, 4096, "prompt is too long: 4097 tokens > 4096 maximum"),
        (Overflow(), None, 4096, "prompt is too long: 4097 tokens > 4096 maximum"),
        (Overflow(), 5000, None, "prompt is too long: 5000 tokens"),
        (Overflow(), None, None, "prompt is too long"),
        (Overflow(limit=2048), 5000, 4096, "prompt is too long: 5000 tokens > 2048 maximum"),
        (Overflow(6000, 4096), 5000, 8192, "prompt is too long: 6000 tokens > 4096 maximum"),
        (
            Overflow(3000, 4096, completion=2000),
            None,
            None,
            "input length and `max_tokens` exceed context limit: 3000 + 2000 > 4096,"
            " decrease input length or `max_tokens` and try again",
        ),
    ],
)
def test_missing_numbers_come_from_the_estimate_and_the_window(
    overflow: Overflow, estimate: int | None, window: int | None, said: str
) -> None:
    """The upstream's numbers first; else ccproxy's estimate and the route's window.
    The upstream refused the prompt, so it is said to be over the window even when
    the estimate is not; with no window known, no maximum is made up."""
    assert overflow.message(estimate, window) == said


def test_a_long_error_is_read_in_bounded_time() -> None:
    text = openAI("maximum context length " + "9" * 200_000 + " x" * 100_000)
    assert readOverflow(text) is not None


# -- over the app ---------------------------------------------------------------------

WINDOW_CONFIG = BASE_CONFIG.replace(
    "  claude-*: up/big-model\n",
    "  claude-*: {target: up/big-model, context_window: 20}\n",
)


def chunk(delta: dict[str, Any]) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": delta, "finish_reason": None}]}


def refusal(text: str, status: int = 400) -> Any:
    return rawReply(text.encode(), status, "application/json")


@pytest.mark.parametrize("stream", [False, True])
def test_an_upstream_overflow_reaches_claude_code_as_prompt_is_too_long(stream: bool) -> None:
    h = Harness.build()
    h.upstream.queue(refusal(WORDINGS[1][1]))  # OpenAI's
    reply = h.post(message(stream=stream))
    assert reply.status == 400
    assert reply.json()["error"] == {
        "type": "invalid_request_error",
        "message": "prompt is too long: 130532 tokens > 128000 maximum",
    }


def test_missing_numbers_are_the_estimate_and_the_routes_window() -> None:
    """N is ccproxy's count of what was sent (the same count `count_tokens` gives),
    M the target's `context_window`."""
    h = Harness.build(WINDOW_CONFIG)
    prompt = message("a fairly long prompt " * 20)
    counted = h.post(prompt, "/v1/messages/count_tokens").json()["input_tokens"]
    assert counted > 20
    h.upstream.queue(refusal(WORDINGS[2][1]))  # OpenAI's, without numbers
    reply = h.post(prompt)
    assert reply.json()["error"]["message"] == f"prompt is too long: {counted} tokens > 20 maximum"


def test_count_tokens_says_the_estimate_even_above_the_window() -> None:
    """The window is no cap on the count: Claude Code measures the conversation with
    it, and a refusal would hide how large it is."""
    h = Harness.build(WINDOW_CONFIG)
    counted = h.post(message("word " * 200), "/v1/messages/count_tokens")
    assert counted.status == 200
    assert counted.json()["input_tokens"] > 20


def test_an_overflow_said_with_a_5xx_is_not_retried_elsewhere() -> None:
    """Another attempt cannot make the prompt fit: one call, and the client's 400."""
    config = WINDOW_CONFIG.replace("retries: 0", "retries: 2")
    h = Harness.build(config)
    h.upstream.queue(refusal(body(LLAMA_SERVER), 500))
    reply = h.post(message())
    assert reply.status == 400
    assert reply.json()["error"]["message"] == "prompt is too long: 4476 tokens > 4096 maximum"
    assert len(h.upstream.received) == 1


def test_an_overflow_inside_a_2xx_answer_is_translated_too() -> None:
    h = Harness.build()
    h.upstream.queue(jsonReply(LLAMA_SERVER))
    reply = h.post(message())
    assert reply.status == 400
    assert reply.json()["error"]["message"] == "prompt is too long: 4476 tokens > 4096 maximum"


@pytest.mark.parametrize(
    ("error", "said"),
    [
        (LLAMA_SERVER, "prompt is too long: 4476 tokens > 4096 maximum"),
        (
            {
                "type": "error",
                "error": {"type": "invalid_request_error", "message": WORDINGS[0][2]},
            },
            WORDINGS[0][2],
        ),
        (
            {"error": {"message": "maximum context length exceeded"}},
            "prompt is too long: 21 tokens > 20 maximum",
        ),
    ],
)
def test_an_overflow_inside_the_stream_is_an_unprefixed_error_event(
    error: dict[str, Any], said: str
) -> None:
    """Mid-stream (llama-server checks the context once the stream has begun) the
    same words go in the `event: error`, with no upstream name in front."""
    h = Harness.build(WINDOW_CONFIG)
    h.upstream.queue(sseReply([chunk({"role": "assistant", "content": ""}), error], done=False))
    reply = h.post(message(stream=True))
    frames = parseSSE(reply.body)
    assert reply.status == 200
    assert frames[-1] == (
        "error",
        {"type": "error", "error": {"type": "invalid_request_error", "message": said}},
    )


def test_other_refusals_keep_the_upstreams_name_and_words() -> None:
    h = Harness.build()
    h.upstream.queue(refusal(openAI("Rate limit reached", code="rate_limit"), 400))
    assert h.post(message()).json()["error"]["message"] == "up: Rate limit reached"


def test_an_overflow_says_only_numbers_whatever_else_the_upstream_said() -> None:
    """Gateways echo keys and account ids; the translated refusal keeps none of it."""
    h = Harness.build()
    words = (
        "This model's maximum context length is 8192 tokens. However, your messages"
        " resulted in 9003 tokens. Key sk-upstream-secret, deployment arn:aws:acct:12345."
    )
    h.upstream.queue(refusal(openAI(words)))
    said = h.post(message()).json()["error"]["message"]
    assert said == "prompt is too long: 9003 tokens > 8192 maximum"


@pytest.mark.parametrize("status", [400, 500])
def test_an_overflow_after_head_wait_committed_the_stream_is_the_same_error_event(
    status: int,
) -> None:
    """A gateway that keeps its headers past `head_wait` and then refuses the prompt
    as too long: the committed stream ends with the words Claude Code compacts on."""
    h = Harness.build(HEAD_WAIT_CONFIG)
    h.upstream.queue(lateReply(8, refusal(body(LLAMA_SERVER), status)))
    stream = Stream(h, message(model="solo", stream=True)).at(9)
    assert stream.status == 200
    assert stream.frames()[-1] == (
        "error",
        {
            "type": "error",
            "error": {
                "type": "invalid_request_error",
                "message": "prompt is too long: 4476 tokens > 4096 maximum",
            },
        },
    )


def _patterns() -> list[re.Pattern[str]]:
    import ccproxy.translate.overflow as module

    found: list[re.Pattern[str]] = []
    for value in vars(module).values():
        if isinstance(value, re.Pattern):
            found.append(value)
        elif isinstance(value, tuple):
            found += [v for v in value if isinstance(v, re.Pattern)]
    return found


def _unboundedBroadRepeats(parsed: Any) -> list[str]:
    """Repetitions without an upper bound of anything but digits, commas, spaces,
    backslashes and quotes: `.*`, `[^0-9]*`, … From each occurrence of the phrase
    before them, they rescan the rest of the body."""
    from re import _constants as c  # type: ignore[attr-defined]
    from re import _parser  # type: ignore[attr-defined]

    narrow = {c.CATEGORY_DIGIT, c.CATEGORY_SPACE}
    found = []
    for op, av in parsed:
        if op in (c.MAX_REPEAT, c.MIN_REPEAT):
            _, high, sub = av
            items = list(sub)

            def isNarrow(o: Any, a: Any) -> bool:
                if o == c.LITERAL:
                    return chr(a) in ',\\"'
                return o == c.IN and all(
                    (x == c.CATEGORY and y in narrow) or x == c.LITERAL for x, y in a
                )

            ok = all(isNarrow(o, a) for o, a in items)
            if high == _parser.MAXREPEAT and not ok:
                found.append(str(items))
            found += _unboundedBroadRepeats(sub)
        elif op == c.SUBPATTERN:
            found += _unboundedBroadRepeats(av[-1])
        elif op == c.BRANCH:
            for branch in av[1]:
                found += _unboundedBroadRepeats(branch)
    return found


@pytest.mark.parametrize("pattern", _patterns(), ids=lambda p: p.pattern[:40])
def test_no_pattern_rescans_the_rest_of_an_error_body(pattern: re.Pattern[str]) -> None:
    """An upstream's error (up to 64 KiB) is read on the reactor: a phrase repeated
    3,500 times with `[^0-9]*` after it took 1.56 s (`python -m bench.growth --only
    "upstream error"`; 7.9 ms bounded). Every broad repetition has a bound."""
    from re import _parser  # type: ignore[attr-defined]

    assert _unboundedBroadRepeats(_parser.parse(pattern.pattern)) == []


def test_only_the_start_of_a_long_error_is_read() -> None:
    """An error inside a stream may be a line of megabytes: the first 64 KiB are read."""
    sentence = "prompt is too long: 5000 tokens > 4096 maximum"
    assert readOverflow("x" * 60_000 + sentence) == Overflow(5000, 4096)
    assert readOverflow("x" * 70_000 + sentence) is None
