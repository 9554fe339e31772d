"""How the translation core's cost grows with its input: ``python -m bench.growth``.

One daemon serves a whole team, so no request may cost more than its size: work
that grows as the square of a body (a list searched once per element, a string
rebuilt on every fragment, a whole prefix parsed again) freezes the reactor for
everyone. For each dimension of a request or a stream (messages, tools,
tool_use/tool_result pairs, schema nodes and ``$ref`` chains, stream fragments,
argument bytes, ...) this times ccproxy's own translation code (``toOpenAI``,
``estimateTokens``, ``StreamTranslator``; in-process, no HTTP) at n and at 10n and
prints the ratio. Linear work gives about 10; quadratic work about 100. A
dimension the translator refuses (a 400) shows what it said, and how long saying
it took.

Times are CPU seconds of this process (``time.process_time``), the best of up to
``--runs`` runs (fewer when one run takes over 2 s), bodies and chunks built
beforehand. The last column is the outcome at 10n. ``--quick`` divides every n by
4; ``--only SUBSTRING`` picks dimensions. Run it from the repo root: it times the
``ccproxy`` found there, so a checkout of another commit can be measured with the
same file (copy it into that checkout's ``bench/``).

Exit status: 0.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from ccproxy.errors import ProxyError
from ccproxy.translate.dialect import Profile
from ccproxy.translate.request import toOpenAI
from ccproxy.translate.stream import StreamTranslator
from ccproxy.translate.tokens import estimateTokens

MODEL = "claude-sonnet-4-5"
PLAIN = Profile()
GEMINI = Profile(schema="gemini")
SLOW_RUN = 2.0  # seconds: a dimension this slow is not run again


def _env(name: str, default: Any = None) -> Any:
    return os.environ.get("BENCH_" + name.upper(), default)


# -- requests ---------------------------------------------------------------------


def _body(messages: list[dict], tools: list[dict] | None = None) -> dict:
    body: dict[str, Any] = {"model": MODEL, "max_tokens": 32000, "messages": messages}
    if tools:
        body["tools"] = tools
    return body


def _user(content: Any) -> dict:
    return {"role": "user", "content": content}


def _assistant(content: Any) -> dict:
    return {"role": "assistant", "content": content}


def _use(call_id: str) -> dict:
    return {"type": "tool_use", "id": call_id, "name": "Read", "input": {"file_path": "/a.py"}}


def _result(call_id: str) -> dict:
    return {"type": "tool_result", "tool_use_id": call_id, "content": "print('hello')"}


def _tool(name: str, schema: dict) -> dict:
    return {"name": name, "description": f"The {name} tool.", "input_schema": schema}


def _obj(properties: dict, **extra: Any) -> dict:
    return {"type": "object", "properties": properties, **extra}


def conversation(n: int) -> dict:
    """n turns: a question, then calls and their results, one pair a turn."""
    messages = [_user("Look at the code, please.")]
    for i in range(n // 2):
        call_id = f"toolu_{i:024d}"
        messages += [_assistant([_use(call_id)]), _user([_result(call_id)])]
    return _body(messages)


def pairs(n: int) -> dict:
    """One assistant turn with n parallel calls, one user turn with their n results."""
    ids = [f"toolu_{i:024d}" for i in range(n)]
    return _body(
        [
            _user("Read them all."),
            _assistant([_use(i) for i in ids]),
            _user([_result(i) for i in ids]),
        ]
    )


def tools(n: int) -> dict:
    """n tools with a Claude-Code-sized schema each."""
    schema = _obj(
        {
            "file_path": {"type": "string", "description": "Absolute path."},
            "offset": {"type": "integer", "minimum": 0},
            "mode": {"type": "string", "enum": ["r", "w", "a"]},
        },
        required=["file_path"],
        additionalProperties=False,
    )
    return _body([_user("hi")], [_tool(f"tool_{i}", schema) for i in range(n)])


def ref_chain_schema(fan_out: int = 4, depth: int = 8) -> dict:
    """`$defs` D0..D{depth}, each using the next `fan_out` times: fan_out**depth
    nodes once inlined."""
    defs = {
        f"D{i}": _obj({f"p{k}": {"$ref": f"#/$defs/D{i + 1}"} for k in range(fan_out)})
        for i in range(depth)
    }
    defs[f"D{depth}"] = {"type": "string", "description": "A leaf."}
    return _obj({"root": {"$ref": "#/$defs/D0"}}, **{"$defs": defs})


def ref_tools(n: int) -> dict:
    """n tools whose schemas each inline to ~87,000 nodes (gemini schema mode)."""
    schema = ref_chain_schema()
    return _body([_user("hi")], [_tool(f"tool_{i}", schema) for i in range(n)])


def short_ref_tools(n: int) -> dict:
    """n tools whose schemas each inline to 127 nodes (gemini schema mode)."""
    schema = ref_chain_schema(fan_out=2, depth=6)
    return _body([_user("hi")], [_tool(f"tool_{i}", schema) for i in range(n)])


def wide_schema(n: int) -> dict:
    """One tool, n properties (gemini schema mode)."""
    properties = {f"p{i}": {"type": "string", "description": f"Field {i}."} for i in range(n)}
    return _body([_user("hi")], [_tool("wide", _obj(properties))])


def required_names(n: int) -> dict:
    """One tool naming n properties, all required (gemini schema mode)."""
    names = [f"p{i}" for i in range(n)]
    schema = _obj({name: {"type": "string"} for name in names}, required=names)
    return _body([_user("hi")], [_tool("wide", schema)])


def any_of_branches(n: int) -> dict:
    """One property that is any of n distinct strings (gemini schema mode)."""
    branches = [{"type": "string", "minLength": i} for i in range(n)]
    return _body([_user("hi")], [_tool("pick", _obj({"p": {"anyOf": branches}}))])


def shared_keywords(n: int) -> dict:
    """An object of n properties that is also any of n shapes: each of the n
    branches gets the n properties (gemini schema mode)."""
    properties = {f"q{i}": {"type": "string"} for i in range(n)}
    branches = [{"minProperties": i} for i in range(n)]
    shape = {**_obj(properties), "anyOf": branches}
    return _body([_user("hi")], [_tool("shape", _obj({"p": shape}))])


def translate(body: dict, profile: Profile) -> Callable[[], Any]:
    def run() -> Any:
        return toOpenAI(body, model="up", profile=profile, defaultMaxTokens=32000)

    return run


def count_tokens(body: dict, profile: Profile) -> Callable[[], Any]:
    """What `POST /v1/messages/count_tokens` does with a body."""

    def run() -> Any:
        return estimateTokens(toOpenAI(body, model="up", profile=profile, defaultMaxTokens=32000))

    return run


# -- streams ----------------------------------------------------------------------


def _chunk(delta: dict, finish: str | None = None) -> dict:
    return {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def _fragment(index: int, arguments: str) -> dict:
    return _chunk({"tool_calls": [{"index": index, "function": {"arguments": arguments}}]})


def _opening(index: int) -> dict:
    """A call's first fragment: its id and name, no arguments yet."""
    function = {"name": "Write", "arguments": ""}
    call = {"index": index, "id": f"call_{index}", "type": "function", "function": function}
    return _chunk({"tool_calls": [call]})


_LINE = '    print("hello, world")  # a line of code\n'


def _file_arguments(size: int) -> list[str]:
    """A Write call's arguments: a `size`-byte file of code, cut in 4-byte fragments."""
    content = (_LINE * (size // len(_LINE) + 1))[:size]
    text = orjson.dumps({"file_path": "/big.py", "content": content}).decode()
    return [text[i : i + 4] for i in range(0, len(text), 4)]


def _ending() -> list[dict]:
    return [_chunk({}, "tool_calls"), {"choices": [], "usage": {"prompt_tokens": 1}}]


def two_calls(size: int) -> list[dict]:
    """Two parallel calls writing `size` bytes each, the second announced before the
    first streams its arguments (so the first is checked for completeness often)."""
    chunks = [_chunk({"role": "assistant"}), _opening(0), _opening(1)]
    for piece in _file_arguments(size):
        chunks.append(_fragment(0, piece))
        chunks.append(_fragment(1, piece))
    return chunks + _ending()


def one_call(size: int) -> list[dict]:
    """One call writing `size` bytes."""
    chunks = [_chunk({"role": "assistant"}), _opening(0)]
    chunks += [_fragment(0, piece) for piece in _file_arguments(size)]
    return chunks + _ending()


def many_calls(n: int) -> list[dict]:
    """n parallel calls, each opened, then each given its arguments."""
    chunks = [_chunk({"role": "assistant"})]
    chunks += [_opening(i) for i in range(n)]
    chunks += [_fragment(i, '{"file_path": "/a"}') for i in range(n)]
    return chunks + _ending()


def blank_deltas(n: int) -> list[dict]:
    """n whitespace-only text deltas before the text."""
    chunks = [_chunk({"role": "assistant"})]
    chunks += [_chunk({"content": " "}) for _ in range(n)]
    return [*chunks, _chunk({"content": "done"}, "stop")]


def stream(chunks: list[dict], think_tags: bool = False) -> Callable[[], Any]:
    def run() -> Any:
        translator = StreamTranslator("msg_bench", MODEL, thinkTags=think_tags)
        events = translator.start()
        for chunk in chunks:
            events += translator.feed(chunk)
        return events + translator.finish()

    return run


# -- the table --------------------------------------------------------------------


@dataclass
class Dimension:
    name: str
    n: int
    unit: str
    make: Callable[[int], Callable[[], Any]]
    size: Callable[[int], int]
    """Bytes of the body or the stream at n (JSON, as the upstream or client sends it)."""


def _request(build: Callable[[int], dict], how: Callable = translate, profile: Profile = PLAIN):
    return (
        lambda n: how(build(n), profile),
        lambda n: len(orjson.dumps(build(n))),
    )


def _stream(build: Callable[[int], list[dict]], think_tags: bool = False):
    return (
        lambda n: stream(build(n), think_tags),
        lambda n: sum(len(orjson.dumps(c)) + 8 for c in build(n)),
    )


def sse_line(size: int) -> Callable[[], Any]:
    """One `data:` line of `size` bytes (a file a tool call writes) read as an
    upstream's stream arrives: in TCP-sized reads, through ccproxy's SSE parser."""
    from twisted.internet.task import Clock
    from twisted.internet.testing import StringTransport

    from ccproxy.relay.sse import SSEParser

    line = b"data: " + b"x" * size + b"\n\n"
    reads = [line[i : i + 1460] for i in range(0, len(line), 1460)]

    def run() -> None:
        parser = SSEParser(lambda data: None, Clock(), 30.0, "up", maxLineLength=64 << 20)
        parser.makeConnection(StringTransport())
        for read in reads:
            parser.dataReceived(read)

    return run


def overflow_error(n: int) -> Callable[[], Any]:
    """An upstream's error body read for a context overflow (`readOverflow`, on the
    reactor): n repetitions of the phrase and no number after it, the shape on which
    an unbounded `[^0-9]*` rescans the rest of the body from every occurrence."""
    from ccproxy.translate.overflow import readOverflow

    text = "prompt is too long " * n

    def run() -> None:
        readOverflow(text)

    return run


DIMENSIONS = [
    Dimension("messages", 2000, "messages", *_request(conversation)),
    Dimension("tools", 200, "tools", *_request(tools)),
    Dimension("tool_use/tool_result pairs", 2000, "pairs", *_request(pairs)),
    Dimension("pairs, count_tokens", 2000, "pairs", *_request(pairs, count_tokens)),
    Dimension("gemini: schema nodes", 2000, "properties", *_request(wide_schema, profile=GEMINI)),
    Dimension("gemini: required names", 1000, "names", *_request(required_names, profile=GEMINI)),
    Dimension(
        "gemini: anyOf branches", 500, "branches", *_request(any_of_branches, profile=GEMINI)
    ),
    Dimension(
        "gemini: anyOf sharing keywords",
        60,
        "properties and branches",
        *_request(shared_keywords, profile=GEMINI),
    ),
    Dimension(
        "gemini: tools with short $ref chains",
        10,
        "tools",
        *_request(short_ref_tools, profile=GEMINI),
    ),
    Dimension("gemini: tools with $ref chains", 2, "tools", *_request(ref_tools, profile=GEMINI)),
    Dimension("stream: fragments, 2 calls", 16 * 1024, "bytes/call", *_stream(two_calls)),
    Dimension("stream: argument bytes, 1 call", 64 * 1024, "bytes", *_stream(one_call)),
    Dimension("stream: tool calls", 500, "calls", *_stream(many_calls)),
    Dimension("stream: blank text deltas", 20_000, "deltas", *_stream(blank_deltas)),
    Dimension("stream: blank deltas, think tags", 20_000, "deltas", *_stream(blank_deltas, True)),
    Dimension("sse: one long line, 1460-byte reads", 256 * 1024, "bytes", sse_line, lambda n: n),
    Dimension(
        "upstream error: overflow phrase repeated",
        350,
        "phrases",
        overflow_error,
        lambda n: 19 * n,
    ),
]


def cpu_time(run: Callable[[], Any], runs: int) -> tuple[float, str]:
    """Best CPU time of up to `runs` runs, and the outcome (ok, or the 4xx said)."""
    best = float("inf")
    outcome = "ok"
    for _ in range(runs):
        started = time.process_time()
        try:
            run()
        except ProxyError as e:
            outcome = f"{e.status}: {e.message}"
        elapsed = time.process_time() - started
        best = min(best, elapsed)
        if elapsed > SLOW_RUN:
            break
    return best, outcome


def _seconds(value: float) -> str:
    return f"{value * 1000:.1f} ms" if value < 1 else f"{value:.2f} s"


def _bytes(value: int) -> str:
    return f"{value / 1024:.0f} KiB" if value < 1024 * 1024 else f"{value / 2**20:.1f} MiB"


def _on(name: str) -> bool:
    return _env(name, "") not in ("", "0", "false", "no")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m bench.growth",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--quick", action="store_true", default=_on("quick"), help="n / 4")
    ap.add_argument("--runs", type=int, default=int(_env("runs", 3)), help="best of [3]")
    ap.add_argument("--only", default=_env("only", ""), help="dimensions whose name holds this")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    print("| dimension | n → 10n | body at 10n | CPU at n | CPU at 10n | ratio | at 10n |")
    print("|---|---|---|---|---|---|---|")
    for dim in DIMENSIONS:
        if args.only not in dim.name:
            continue
        n = max(1, dim.n // 4) if args.quick else dim.n
        small, _ = cpu_time(dim.make(n), args.runs)
        large, outcome = cpu_time(dim.make(10 * n), args.runs)
        ratio = large / small if small > 0 else float("inf")
        if len(outcome) > 90:
            outcome = outcome[:87] + "..."
        print(
            f"| {dim.name} | {n:,} → {10 * n:,} {dim.unit} | {_bytes(dim.size(10 * n))} "
            f"| {_seconds(small)} | {_seconds(large)} | {ratio:.1f}x | {outcome} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
