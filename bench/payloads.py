"""What the mock upstream answers, and what a correct proxy turns it into.

Everything here is fixed and deterministic: the validator compares the proxy's
answers with these values byte for byte.

The streamed answer (OpenAI chat.completion.chunk SSE) is, in order:

- one role chunk (``delta: {role: assistant, content: ""}``),
- ``n_text`` content deltas of a few characters each, with unicode, quotes,
  backslashes, tabs, newlines and text that looks like SSE framing,
- one tool-call header chunk (id, name ``Edit``, empty arguments),
- the arguments of that call in ~20 fragments, cut anywhere (inside escapes
  and multi-byte characters' neighbourhoods, as real gateways do),
- a finish chunk (``finish_reason: tool_calls``),
- a usage chunk (``choices: []``), and ``data: [DONE]``.

With the defaults (200 text deltas) that is ~57 KB of SSE.
"""

from __future__ import annotations

import json

MODEL = "gpt-mock-1"
COMPLETION_ID = "chatcmpl-bench000000000000000000000001"
CREATED = 1761955200
TOOL_CALL_ID = "call_bench_0000000000000000000001"
TOOL_NAME = "Edit"
PROMPT_TOKENS = 15873
COMPLETION_TOKENS = 734
FAST_TEXT_DELTAS = 200
ARG_FRAGMENTS = 20

# Text fragments of a plausible coding-assistant answer. They cycle to make
# as many deltas as asked. Chosen to break naive escaping: JSON specials,
# backslashes (Windows paths, regexes), non-ASCII in 2-, 3- and 4-byte UTF-8,
# U+2028 (valid JSON, a line break for JavaScript), tabs, blank lines, and text
# that would end or forge an SSE event if it were not escaped.
_FRAGMENTS = [
    "Let me",
    " check",
    " why",
    " `test_refresh_token`",
    " fails",
    ".",
    "\n\n",
    "The",
    " traceback",
    " says",
    ' "KeyError:',
    " 'expires_at'\"",
    " —",
    " so",
    " the",
    " cache",
    " entry",
    " is",
    " written",
    " before",
    " the",
    " token",
    " is",
    " parsed",
    ".",
    "\n",
    "In",
    " `auth/cache.py`",
    " the",
    " key",
    " is",
    " built",
    " with",
    ' `f"{user}:{scope}"`',
    ",",
    " but",
    " the",
    " reader",
    " uses",
    " `scope.split(',')`",
    ".",
    "\n\n",
    "Steps",
    ":",
    "\n",
    "1.",
    " Parse",
    " before",
    " caching",
    "\n",
    "2.",
    " Normalise",
    " paths",
    " like",
    " C:\\Users\\dev\\app",
    " and",
    " \\\\server\\share",
    "\n",
    "3.",
    " Keep",
    " the",
    " regex",
    " `^\\d{4}-\\d{2}$`",
    " as",
    " is",
    "\n\n",
    "Résumé",
    " of",
    " naïve",
    " assumptions",
    ":",
    " ünïcödé",
    " → ",
    "fine",
    ",",
    " 漢字",
    " and",
    " 🙂",
    " too",
    ".",
    "\t(tab)",
    " line\u2028sep",
    "\n",
    "Note",
    ":",
    " a",
    " line",
    " with",
    "\n\ndata: [DONE]\n\n",
    " inside",
    " text",
    " must",
    " stay",
    " text",
    ".",
    "\r\n",
    "event: ping",
    "\n",
    "Now",
    " the",
    " edit",
    ":",
]


def text_deltas(n: int) -> list[str]:
    """The first n text fragments (cycling)."""
    return [_FRAGMENTS[i % len(_FRAGMENTS)] for i in range(n)]


def expected_text(n: int) -> str:
    return "".join(text_deltas(n))


TOOL_ARGS = {
    "file_path": "/home/dev/app/auth/cache.py",
    "old_string": (
        "def store(user, scope, raw):\n"
        '    key = f"{user}:{scope}"\n'
        "    CACHE[key] = raw  # parsed later\n"
    ),
    "new_string": (
        "def store(user, scope, raw):\n"
        '    token = parse_token(raw)  # may raise "InvalidToken"\n'
        "    key = f\"{user}:{','.join(sorted(scope))}\"\n"
        "    CACHE[key] = token  # naïve → parsed, path C:\\tmp\\x\n"
    ),
    "replace_all": False,
}
TOOL_ARGS_JSON = json.dumps(TOOL_ARGS, ensure_ascii=False)


def arg_fragments(n: int = ARG_FRAGMENTS) -> list[str]:
    """TOOL_ARGS_JSON cut into n pieces at fixed, uneven offsets.

    Cuts may fall inside a JSON escape (between a backslash and its letter):
    OpenAI-compatible servers stream arguments as raw text, so a proxy must
    pass the pieces through, never parse them one by one.
    """
    s = TOOL_ARGS_JSON
    cuts = sorted({len(s) * i // n + (i * 7) % 5 - 2 for i in range(1, n)})
    pieces = [s[a:b] for a, b in zip([0, *cuts], [*cuts, len(s)], strict=True)]
    return [p for p in pieces if p]


def _chunk(delta: dict, finish: str | None = None) -> dict:
    return {
        "id": COMPLETION_ID,
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": MODEL,
        "system_fingerprint": "fp_bench01",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }


def stream_payloads(n_text: int = FAST_TEXT_DELTAS) -> list[str]:
    """The `data:` payloads of the upstream stream, in order."""
    events = [_chunk({"role": "assistant", "content": "", "refusal": None})]
    events += [_chunk({"content": t}) for t in text_deltas(n_text)]
    events.append(
        _chunk(
            {
                "tool_calls": [
                    {
                        "index": 0,
                        "id": TOOL_CALL_ID,
                        "type": "function",
                        "function": {"name": TOOL_NAME, "arguments": ""},
                    }
                ]
            }
        )
    )
    events += [
        _chunk({"tool_calls": [{"index": 0, "function": {"arguments": a}}]})
        for a in arg_fragments()
    ]
    events.append(_chunk({}, finish="tool_calls"))
    usage = {
        "id": COMPLETION_ID,
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": MODEL,
        "system_fingerprint": "fp_bench01",
        "choices": [],
        "usage": {
            "prompt_tokens": PROMPT_TOKENS,
            "completion_tokens": COMPLETION_TOKENS,
            "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS,
            "prompt_tokens_details": {"cached_tokens": 0},
        },
    }
    out = [json.dumps(e, ensure_ascii=False, separators=(",", ":")) for e in events]
    out.append(json.dumps(usage, ensure_ascii=False, separators=(",", ":")))
    out.append("[DONE]")
    return out


def sse_frames(n_text: int = FAST_TEXT_DELTAS) -> list[bytes]:
    """One `data: ...\\n\\n` frame per payload, UTF-8."""
    return [b"data: " + p.encode() + b"\n\n" for p in stream_payloads(n_text)]


RESPONSE_ID = "resp_bench000000000000000000000001"


def responses_payloads(n_text: int = FAST_TEXT_DELTAS) -> list[dict]:
    """The same answer as an OpenAI Responses stream (`api: responses`): a message
    item of `n_text` output_text deltas, then a function_call item of the same
    argument fragments, then `response.completed` with the same usage."""
    message = {"id": "msg_bench1", "type": "message", "role": "assistant", "status": "completed"}
    text = {"type": "output_text", "text": expected_text(n_text), "annotations": []}
    call = {
        "id": "fc_bench1",
        "type": "function_call",
        "call_id": TOOL_CALL_ID,
        "name": TOOL_NAME,
        "arguments": TOOL_ARGS_JSON,
        "status": "completed",
    }
    where = {"item_id": "msg_bench1", "output_index": 0, "content_index": 0}
    events: list[dict] = [
        {"type": "response.created", "response": {"id": RESPONSE_ID, "status": "in_progress"}},
        {"type": "response.output_item.added", "output_index": 0,
         "item": {**message, "status": "in_progress", "content": []}},
    ]  # fmt: skip
    events += [
        {"type": "response.output_text.delta", **where, "delta": t, "logprobs": []}
        for t in text_deltas(n_text)
    ]
    done = {**message, "content": [text]}
    events.append({"type": "response.output_item.done", "output_index": 0, "item": done})
    events.append(
        {"type": "response.output_item.added", "output_index": 1,
         "item": {**call, "arguments": "", "status": "in_progress"}}
    )  # fmt: skip
    events += [
        {"type": "response.function_call_arguments.delta", "item_id": "fc_bench1",
         "output_index": 1, "delta": a}
        for a in arg_fragments()
    ]  # fmt: skip
    events.append({"type": "response.output_item.done", "output_index": 1, "item": call})
    usage = {
        "input_tokens": PROMPT_TOKENS,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": COMPLETION_TOKENS,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS,
    }
    response = {
        "id": RESPONSE_ID,
        "object": "response",
        "model": MODEL,
        "status": "completed",
        "output": [{**message, "content": [text]}, call],
        "usage": usage,
    }
    events.append({"type": "response.completed", "response": response})
    return [{**e, "sequence_number": n} for n, e in enumerate(events)]


def responses_frames(n_text: int = FAST_TEXT_DELTAS) -> list[bytes]:
    """One `event: TYPE` + `data: ...` frame per Responses event, UTF-8 (no [DONE])."""
    return [
        b"event: " + e["type"].encode() + b"\ndata: "
        + json.dumps(e, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"
        for e in responses_payloads(n_text)
    ]  # fmt: skip


# Frames of a stream that are not text deltas: role, tool header, argument
# fragments, finish, usage, [DONE].
NON_TEXT_FRAMES = 5 + len(arg_fragments())


def drip_text_deltas(rate: float, seconds: float) -> int:
    """Text deltas in a drip stream of rate*seconds frames in all."""
    return max(1, round(rate * seconds) - NON_TEXT_FRAMES)


def completion(n_text: int = FAST_TEXT_DELTAS) -> dict:
    """The non-streamed answer: the same text and tool call in one message."""
    return {
        "id": COMPLETION_ID,
        "object": "chat.completion",
        "created": CREATED,
        "model": MODEL,
        "system_fingerprint": "fp_bench01",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": expected_text(n_text),
                    "refusal": None,
                    "tool_calls": [
                        {
                            "id": TOOL_CALL_ID,
                            "type": "function",
                            "function": {"name": TOOL_NAME, "arguments": TOOL_ARGS_JSON},
                        }
                    ],
                },
                "logprobs": None,
                "finish_reason": "tool_calls",
            }
        ],
        "usage": {
            "prompt_tokens": PROMPT_TOKENS,
            "completion_tokens": COMPLETION_TOKENS,
            "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS,
            "prompt_tokens_details": {"cached_tokens": 0},
        },
    }


def completion_bytes(n_text: int = FAST_TEXT_DELTAS) -> bytes:
    return json.dumps(completion(n_text), ensure_ascii=False, separators=(",", ":")).encode()


PASS_MODEL = "claude-pass-sonnet-4-5"
"""The model of the passthrough runs: routed to an `api: messages` upstream (the
mock's `/v1/messages`) under its own name, so the answer names it too."""


def anthropic_message(n_text: int = FAST_TEXT_DELTAS) -> dict:
    """The mock's Anthropic answer: the same text and tool call as `completion`."""
    return {
        "id": "msg_bench000000000000000001",
        "type": "message",
        "role": "assistant",
        "model": PASS_MODEL,
        "content": [
            {"type": "text", "text": expected_text(n_text)},
            {"type": "tool_use", "id": "toolu_bench01", "name": TOOL_NAME, "input": TOOL_ARGS},
        ],
        "stop_reason": "tool_use",
        "stop_sequence": None,
        "usage": {
            "input_tokens": PROMPT_TOKENS,
            "output_tokens": COMPLETION_TOKENS,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        },
    }


def anthropic_sse_frames(n_text: int = FAST_TEXT_DELTAS) -> list[bytes]:
    """The same answer as Anthropic's event stream: one frame per event, as many
    text deltas and argument fragments as the chat stream has."""
    whole = anthropic_message(n_text)
    start = {
        **whole,
        "content": [],
        "stop_reason": None,
        "usage": {**whole["usage"], "output_tokens": 1},
    }
    tool = {**whole["content"][1], "input": {}}
    events: list[dict] = [
        {"type": "message_start", "message": start},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    ]
    events += [
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": t}}
        for t in text_deltas(n_text)
    ]
    events += [
        {"type": "content_block_stop", "index": 0},
        {"type": "content_block_start", "index": 1, "content_block": tool},
    ]
    events += [
        {
            "type": "content_block_delta",
            "index": 1,
            "delta": {"type": "input_json_delta", "partial_json": a},
        }
        for a in arg_fragments()
    ]
    events += [
        {"type": "content_block_stop", "index": 1},
        {
            "type": "message_delta",
            "delta": {"stop_reason": "tool_use", "stop_sequence": None},
            "usage": {"output_tokens": COMPLETION_TOKENS},
        },
        {"type": "message_stop"},
    ]
    return [
        b"event: "
        + e["type"].encode()
        + b"\ndata: "
        + json.dumps(e, ensure_ascii=False, separators=(",", ":")).encode()
        + b"\n\n"
        for e in events
    ]


class Expect:
    """What a correct answer holds, for one stream length."""

    def __init__(self, n_text: int = FAST_TEXT_DELTAS, model: str = "") -> None:
        self.n_text = n_text
        self.text = expected_text(n_text)
        self.text_bytes = self.text.encode()
        self.tool_name = TOOL_NAME
        self.tool_args = TOOL_ARGS
        self.tool_args_json = TOOL_ARGS_JSON
        self.model = model  # the model the client asked for ("" = don't check)
        self.input_tokens = PROMPT_TOKENS
        self.output_tokens = COMPLETION_TOKENS
