"""End to end against a real OpenAI-compatible server: the Anthropic Python SDK →
ccproxy (`twistd -n`, a subprocess) → llama.cpp's `llama-server` running
SmolLM2-135M-Instruct with the Qwen2.5 chat template.

The fakes elsewhere in this suite agree with the translator's author; this server
does not know ccproxy exists. It streams real SSE (role chunk, content deltas, a
usage chunk with `prompt_tokens_details.cached_tokens`), streams real parallel tool
calls with arguments in fragments, answers a context overflow with a real 400, and
fails mid-stream with a real `data: {"error": …}` after HTTP 200.

Opt-in, because building llama-server takes ~8 minutes (see
docs/real-upstream.md, "llama.cpp's llama-server"): set

    CCPROXY_LLAMA_SERVER=/path/to/build-llama/bin/llama-server
    CCPROXY_LLAMA_MODEL_DIR=/path/to/models   # SmolLM2-135M-Instruct.Q4_1.gguf and
                                               # Qwen-Qwen2.5-7B-Instruct.jinja

Without them (or with a file missing) the whole module is skipped, saying why.
llama-server and ccproxy are started once for the module, on free loopback ports.
The model is tiny and the machine may be slow: every request has a generous but
bounded timeout, and outputs are kept short.
"""

from __future__ import annotations

import json
import os
import re
import urllib.request
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from tests.support.processes import Processes, answers, freePort, waitFor

MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
TEMPLATE_FILE = "Qwen-Qwen2.5-7B-Instruct.jinja"
CONTEXT = 4096
REQUEST_TIMEOUT = 300.0  # seconds, per request: a 135M model on 2 busy cores


def _llamaFiles() -> tuple[Path, Path, Path] | str:
    """(binary, model, template), or why the module is skipped."""
    binary = os.environ.get("CCPROXY_LLAMA_SERVER", "")
    modelDir = os.environ.get("CCPROXY_LLAMA_MODEL_DIR", "")
    if not binary or not modelDir:
        return (
            "real-upstream tests are opt-in: set CCPROXY_LLAMA_SERVER (a llama-server binary) "
            f"and CCPROXY_LLAMA_MODEL_DIR (a folder with {MODEL_FILE} and {TEMPLATE_FILE}); "
            "see docs/real-upstream.md to build them"
        )
    files = (Path(binary), Path(modelDir) / MODEL_FILE, Path(modelDir) / TEMPLATE_FILE)
    missing = [str(path) for path in files if not path.is_file()]
    if missing:
        return f"real-upstream tests: missing {', '.join(missing)}"
    if not os.access(files[0], os.X_OK):
        return f"real-upstream tests: {files[0]} is not executable"
    return files


_FILES = _llamaFiles()
if isinstance(_FILES, str):
    pytest.skip(_FILES, allow_module_level=True)

anthropic = pytest.importorskip("anthropic")

MODEL = "smollm2-via-ccproxy"  # any name: the route is "*"
# This SDK version has no `temperature` argument; the Messages API still takes it.
GREEDY = {"temperature": 0}
WEATHER = {
    "name": "get_weather",
    "description": "Get the current weather for a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string", "description": "The city name"}},
        "required": ["city"],
    },
}
# Per real-upstream.md, the tiny model calls tools reliably only when made to
# ("any" -> "required") and when its turn already starts with the Qwen2.5 tag.
TOOL_TURN = [
    {"role": "user", "content": "What is the weather in Paris and in London?"},
    {"role": "assistant", "content": "<tool_call>\n"},
]


# -- processes -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("real-upstream")


@pytest.fixture(scope="module")
def llamaServer(workdir: Path) -> Iterator[str]:
    """llama-server on a free loopback port: its OpenAI base URL."""
    assert not isinstance(_FILES, str)
    binary, model, template = _FILES
    port = freePort()
    command = [
        str(binary),
        "-m",
        str(model),
        "-a",
        "smollm2",
        "--chat-template-file",
        str(template),
        "-c",
        str(CONTEXT),
        "-np",
        "1",
        "-t",
        "2",
        "--offline",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    processes = Processes(workdir)
    try:
        log = workdir / "llama-server.log"
        process = processes.spawn(command, log)
        url = f"http://127.0.0.1:{port}/health"
        waitFor(partial(answers, url), url, 120, process=process, log=log)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        processes.close()


CONFIG = """\
listen: "tcp:{port}:interface=127.0.0.1"
upstreams:
  llama:
    url: "{upstream}"
    timeout: {timeout}
models:
  "*": llama/smollm2
"""


@pytest.fixture(scope="module")
def proxy(workdir: Path, llamaServer: str) -> Iterator[str]:
    """ccproxy as a real daemon in front of llama-server: its base URL."""
    processes = Processes(workdir)
    try:
        port = processes.ccproxy(
            lambda port: CONFIG.format(
                port=port, upstream=llamaServer, timeout=int(REQUEST_TIMEOUT)
            )
        )
        yield f"http://127.0.0.1:{port}"
    finally:
        processes.close()


@pytest.fixture(scope="module")
def client(proxy: str) -> Iterator[Any]:
    sdk = anthropic.Anthropic(
        base_url=proxy, api_key="test-key", max_retries=0, timeout=REQUEST_TIMEOUT
    )
    yield sdk
    sdk.close()


def rawEvents(proxy: str, body: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """Every SSE frame of a streamed /v1/messages answer, as (event, data), read to the end.

    `body` is in the SDK's terms: its `extra_body` is merged in."""
    body = {**{k: v for k, v in body.items() if k != "extra_body"}, **body.get("extra_body", {})}
    request = urllib.request.Request(
        f"{proxy}/v1/messages",
        data=json.dumps({**body, "stream": True}).encode(),
        headers={"content-type": "application/json", "anthropic-version": "2023-06-01"},
    )
    with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT) as response:
        assert response.status == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        text = response.read().decode()
    events = []
    for frame in text.split("\n\n"):
        lines = frame.strip().splitlines()
        if not lines:
            continue
        name = next(line[6:].strip() for line in lines if line.startswith("event:"))
        data = "".join(line[5:].strip() for line in lines if line.startswith("data:"))
        events.append((name, json.loads(data)))
    return events


# -- (a) text ---------------------------------------------------------------------------------


def assertRealUsage(usage: Any) -> None:
    # llama-server re-evaluates at least the last prompt token even on a full cache
    # hit, so input_tokens (the uncached part) is never 0; the whole prompt (Qwen2.5
    # template's default system prompt included) is well over 20 tokens.
    assert usage.input_tokens > 0
    assert usage.output_tokens > 0
    assert usage.input_tokens + (usage.cache_read_input_tokens or 0) > 20


def test_text_answer(client: Any) -> None:
    message = client.messages.create(
        model=MODEL,
        max_tokens=24,
        extra_body=GREEDY,
        messages=[{"role": "user", "content": "What is the capital of France?"}],
    )
    assert message.model == MODEL
    assert message.role == "assistant"
    assert [block.type for block in message.content] == ["text"]
    assert message.content[0].text.strip()
    assert message.stop_reason in ("end_turn", "max_tokens")
    assertRealUsage(message.usage)


def test_text_answer_streamed(client: Any) -> None:
    deltas: list[str] = []
    with client.messages.stream(
        model=MODEL,
        max_tokens=24,
        extra_body=GREEDY,
        messages=[{"role": "user", "content": "Name three colours of the rainbow."}],
    ) as stream:
        for event in stream:
            if event.type == "text":
                deltas.append(event.text)
        message = stream.get_final_message()
    assert len(deltas) > 1, "the answer should arrive in several deltas"
    assert [block.type for block in message.content] == ["text"]
    assert message.content[0].text == "".join(deltas)
    assert message.content[0].text.strip()
    assert message.stop_reason in ("end_turn", "max_tokens")
    assertRealUsage(message.usage)


# -- (b) tool calls ---------------------------------------------------------------------------


def assertToolCalls(message: Any) -> None:
    assert message.stop_reason == "tool_use"
    calls = [block for block in message.content if block.type == "tool_use"]
    # At temperature 0 this model answers with two parallel calls (index 0 and 1
    # upstream), which is the case worth testing: two blocks, each complete.
    assert len(calls) >= 2, message.content
    assert len({call.id for call in calls}) == len(calls)
    for call in calls:
        assert call.name == "get_weather"
        assert isinstance(call.input, dict)
        # llama-server constrains "required" calls to the schema: exactly its keys.
        assert set(call.input) == {"city"}, call.input
        assert isinstance(call.input["city"], str) and call.input["city"]
    assert message.usage.output_tokens > 0


def test_tool_calls(client: Any) -> None:
    message = client.messages.create(
        model=MODEL,
        max_tokens=160,
        extra_body=GREEDY,
        tools=[WEATHER],
        tool_choice={"type": "any"},
        messages=TOOL_TURN,
    )
    assertToolCalls(message)


def test_tool_calls_streamed(client: Any) -> None:
    fragments: dict[int, int] = {}
    with client.messages.stream(
        model=MODEL,
        max_tokens=160,
        extra_body=GREEDY,
        tools=[WEATHER],
        tool_choice={"type": "any"},
        messages=TOOL_TURN,
    ) as stream:
        for event in stream:
            if event.type == "content_block_delta" and event.delta.type == "input_json_delta":
                fragments[event.index] = fragments.get(event.index, 0) + 1
        message = stream.get_final_message()
    assertToolCalls(message)
    calls = [i for i, block in enumerate(message.content) if block.type == "tool_use"]
    assert set(calls) <= set(fragments), fragments
    # The arguments arrived in pieces and were put back together by the SDK.
    assert max(fragments.values()) > 1, fragments


# -- (c) prompt caching -----------------------------------------------------------------------

LONG_PROMPT = (
    "Here are the project's contribution rules. "
    + " ".join(
        f"Rule {i}: every change to module number {i} needs a test, a changelog entry and "
        f"a review by someone who did not write it."
        for i in range(1, 41)
    )
    + " Summarise the rules in one sentence."
)


def test_repeated_prompt_is_read_from_cache(client: Any) -> None:
    request = {
        "model": MODEL,
        "max_tokens": 8,
        "extra_body": GREEDY,
        "messages": [{"role": "user", "content": LONG_PROMPT}],
    }
    first = client.messages.create(**request)
    with client.messages.stream(**request) as stream:
        second = stream.get_final_message()
    third = client.messages.create(**request)

    def total(usage: Any) -> int:
        return usage.input_tokens + (usage.cache_read_input_tokens or 0)

    assert total(first.usage) > 500, first.usage
    for later in (second, third):
        # The same prompt again: llama-server reuses its KV cache and says so in
        # prompt_tokens_details.cached_tokens, which ccproxy reports as
        # cache_read_input_tokens, with input_tokens the uncached rest.
        assert later.usage.cache_read_input_tokens > 0, later.usage
        assert later.usage.cache_read_input_tokens > total(later.usage) // 2, later.usage
        assert later.usage.input_tokens > 0, later.usage
        assert total(later.usage) == total(first.usage), (first.usage, later.usage)


# -- (d) a real mid-stream error ---------------------------------------------------------------

# With tool_choice auto and the tool-call prefill, llama-server answers 200, sends
# its role chunk, then fails to parse the model's output and sends
# `data: {"error": {...}}` and closes, without [DONE].
MIDSTREAM_ERROR = {
    "model": MODEL,
    "max_tokens": 12,
    "extra_body": GREEDY,
    "tools": [WEATHER],
    "tool_choice": {"type": "auto"},
    "messages": TOOL_TURN,
}


def test_midstream_error_reaches_the_sdk(client: Any) -> None:
    seen: list[str] = []
    with pytest.raises(anthropic.APIStatusError) as raised:
        with client.messages.stream(**MIDSTREAM_ERROR) as stream:
            for event in stream:
                seen.append(event.type)
    assert seen[:1] == ["message_start"], seen
    assert "message_stop" not in seen
    body = raised.value.body
    assert isinstance(body, dict), body
    assert body["type"] == "error"
    assert body["error"]["type"] == "api_error"
    assert body["error"]["message"]


def test_midstream_error_ends_the_stream_with_an_error_event(proxy: str) -> None:
    events = rawEvents(proxy, MIDSTREAM_ERROR)
    names = [name for name, _ in events]
    assert names[0] == "message_start", names
    assert names[-1] == "error", names
    assert "message_stop" not in names
    assert "message_delta" not in names
    _, error = events[-1]
    assert error["type"] == "error"
    assert error["error"]["type"] == "api_error"
    assert error["error"]["message"]


# -- (e) a real 400 ---------------------------------------------------------------------------

TOO_LONG = {
    "model": MODEL,
    "max_tokens": 8,
    "messages": [{"role": "user", "content": "lorem ipsum dolor sit amet " * 1200}],
}


def assertContextOverflow(error: Any) -> None:
    assert error.status_code == 400
    body = error.body
    assert body["type"] == "error"
    assert body["error"]["type"] == "invalid_request_error"
    message = body["error"]["message"]
    # llama-server's own words ("request (12034 tokens) exceeds the available context
    # size (4096 tokens), try increasing it") said as Claude Code compacts on, with
    # the server's own numbers (translate/overflow.py).
    match = re.fullmatch(r"prompt is too long: (\d+) tokens > (\d+) maximum", message)
    assert match, message
    assert int(match[2]) == CONTEXT and int(match[1]) > CONTEXT, message
    assert error.response.headers.get("request-id")


def test_context_overflow_is_a_400(client: Any) -> None:
    with pytest.raises(anthropic.BadRequestError) as raised:
        client.messages.create(**TOO_LONG)
    assertContextOverflow(raised.value)


def test_context_overflow_is_a_400_when_streaming(client: Any) -> None:
    # llama-server refuses before streaming, so the client gets the status, not an event.
    with pytest.raises(anthropic.BadRequestError) as raised:
        with client.messages.stream(**TOO_LONG) as stream:
            stream.get_final_message()
    assertContextOverflow(raised.value)


def test_still_serving_after_the_errors(client: Any) -> None:
    message = client.messages.create(
        model=MODEL,
        max_tokens=8,
        extra_body=GREEDY,
        messages=[{"role": "user", "content": "Say hello."}],
    )
    assert message.content and message.content[0].type == "text"
    assertRealUsage(message.usage)
