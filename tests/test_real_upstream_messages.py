"""`api: messages` against a real server: ccproxy (`twistd -n`) passing requests
through to llama.cpp's `llama-server`, which serves Anthropic's `/v1/messages`
and `/v1/messages/count_tokens` itself (SmolLM2-135M-Instruct, the Qwen2.5 chat
template).

The same question asked of llama-server directly and through ccproxy must give
the same answer (greedy decoding): ccproxy changes only the model name on the
way up, and nothing on the way down. Opt-in as tests/test_real_upstream.py is
(CCPROXY_LLAMA_SERVER, CCPROXY_LLAMA_MODEL_DIR), whose llama-server this module
shares.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.processes import Processes
from tests.test_real_upstream import REQUEST_TIMEOUT, TOOL_TURN, WEATHER, llamaServer, workdir

__all__ = ["llamaServer", "workdir"]  # the fixtures this module shares

KEY = "sk-real-upstream-messages-key"
CONFIG = """\
listen: "tcp:{port}:interface=127.0.0.1"
upstreams:
  llama:
    url: "{upstream}"
    api: messages
    preset: llama.cpp
    timeout: {timeout}
    retries: 0
models:
  "*": llama/smollm2
"""
ASK = {
    "model": "claude-haiku-4-5",
    "max_tokens": 24,
    "temperature": 0,
    "system": "You answer in one short sentence.",
    "messages": [{"role": "user", "content": "What is the capital of France?"}],
}
HEADERS = {
    "content-type": "application/json",
    "anthropic-version": "2023-06-01",
    "anthropic-beta": "claude-code-20250219,interleaved-thinking-2025-05-14",
}


@pytest.fixture(scope="module")
def passthrough(workdir: Path, llamaServer: str) -> Iterator[str]:
    """ccproxy with llama-server as an `api: messages` upstream: its base URL."""
    directory = workdir / "messages"
    directory.mkdir(exist_ok=True)
    processes = Processes(directory)
    try:
        port = processes.ccproxy(
            lambda port: CONFIG.format(
                port=port, upstream=llamaServer, timeout=int(REQUEST_TIMEOUT)
            )
        )
        yield f"http://127.0.0.1:{port}"
    finally:
        processes.close()


def post(url: str, body: dict[str, Any]) -> tuple[int, str, bytes]:
    """(status, content type, body) of a POST."""
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers=HEADERS)
    try:
        with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT) as response:
            return response.status, response.headers["content-type"], response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers["content-type"], e.read()


def frames(body: bytes) -> list[tuple[str, dict[str, Any]]]:
    found = []
    for frame in body.decode().split("\n\n"):
        lines = frame.strip().splitlines()
        if lines:
            name = next(line[6:].strip() for line in lines if line.startswith("event:"))
            data = "".join(line[5:].strip() for line in lines if line.startswith("data:"))
            found.append((name, json.loads(data)))
    return found


def streamedText(events: list[tuple[str, dict[str, Any]]]) -> str:
    return "".join(
        data["delta"].get("text", "") for name, data in events if name == "content_block_delta"
    )


def test_a_whole_answer_is_the_server_s_own(passthrough: str, llamaServer: str) -> None:
    status, kind, through = post(f"{passthrough}/v1/messages", ASK)
    assert status == 200 and kind.startswith("application/json"), through
    direct = json.loads(post(f"{llamaServer}/messages", {**ASK, "model": "smollm2"})[2])
    answer = json.loads(through)
    assert answer["type"] == "message" and answer["content"]
    assert answer["content"] == direct["content"]  # greedy: the same words
    assert answer["stop_reason"] == direct["stop_reason"]
    assert answer["usage"]["output_tokens"] > 0


def test_a_stream_is_the_server_s_own(passthrough: str, llamaServer: str) -> None:
    status, kind, through = post(f"{passthrough}/v1/messages", {**ASK, "stream": True})
    assert status == 200 and kind.startswith("text/event-stream"), through
    events = frames(through)
    names = [name for name, _ in events]
    assert names[0] == "message_start" and names[-1] == "message_stop"
    assert "error" not in names
    assert not events[0][1]["message"]["id"].startswith("msg_req_")  # the server's, not ours
    direct = frames(post(f"{llamaServer}/messages", {**ASK, "model": "smollm2", "stream": True})[2])
    assert streamedText(events) == streamedText(direct) != ""


def test_count_tokens_is_the_server_s_own(passthrough: str, llamaServer: str) -> None:
    status, _, through = post(f"{passthrough}/v1/messages/count_tokens", ASK)
    assert status == 200, through
    direct = json.loads(post(f"{llamaServer}/messages/count_tokens", ASK)[2])
    assert json.loads(through) == direct
    assert direct["input_tokens"] > 10


def test_a_prompt_over_the_context_keeps_the_server_s_refusal(passthrough: str) -> None:
    huge = {**ASK, "messages": [{"role": "user", "content": "word " * 6000}]}
    status, kind, body = post(f"{passthrough}/v1/messages", huge)
    assert 400 <= status < 500 and kind.startswith("application/json"), body
    error = json.loads(body)
    assert error["type"] == "error" and error["error"]["message"]


def test_a_streamed_tool_call_is_the_server_s_own(passthrough: str, llamaServer: str) -> None:
    ask = {
        **ASK,
        "max_tokens": 120,
        "tools": [WEATHER],
        "tool_choice": {"type": "any"},
        "messages": TOOL_TURN,
        "stream": True,
    }
    status, _, through = post(f"{passthrough}/v1/messages", ask)
    assert status == 200, through
    events = frames(through)
    direct = frames(post(f"{llamaServer}/messages", {**ask, "model": "smollm2"})[2])
    starts = [d["content_block"] for n, d in events if n == "content_block_start"]
    assert any(block["type"] == "tool_use" for block in starts), events
    assert [n for n, _ in events] == [n for n, _ in direct]
    partial = [
        d["delta"]["partial_json"]
        for n, d in events
        if n == "content_block_delta" and d["delta"]["type"] == "input_json_delta"
    ]
    assert partial == [
        d["delta"]["partial_json"]
        for n, d in direct
        if n == "content_block_delta" and d["delta"]["type"] == "input_json_delta"
    ]
