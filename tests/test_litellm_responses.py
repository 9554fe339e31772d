"""`api: responses` against a real server: LiteLLM 1.82.6's proxy serving
`/v1/responses` itself in front of a chat/completions model (the scripted
upstream), all on 127.0.0.1.

client -> ccproxy (twistd, `api: responses`) -> LiteLLM `/v1/responses` ->
the scripted chat upstream. A streamed tool loop (a call of Read, then the
answer once its result is back) and a whole answer must reach the client as
clean Anthropic answers; what LiteLLM does differently from OpenAI is in
docs/upstream-quirks.md. Skipped only where LiteLLM is not installed
(tests/support/litellm.py; .ci/run installs it); LiteLLM starts in seconds.
"""

from __future__ import annotations

import http.client
import json
from pathlib import Path
from typing import Any

import pytest

from tests.support.harness import parseSSE
from tests.support.litellm import litellmCommand
from tests.support.processes import Processes
from tests.test_litellm_gateway import MODEL, startLiteLLM
from tests.test_translate_stream import accumulate, checkGrammar

pytestmark = pytest.mark.skipif(litellmCommand() is None, reason="LiteLLM is not installed")

ANSWER = "The secret word is PERIWINKLE."
TOOLS = [
    {
        "name": "Read",
        "description": "Reads a file",
        "input_schema": {"type": "object", "properties": {"file_path": {"type": "string"}}},
    }
]


def ccproxyConfig(litellmPort: int) -> Any:
    return lambda port: (
        f"""
listen: "tcp:{port}:interface=127.0.0.1"
ledger: "off"
upstreams:
  gateway:
    api: responses
    url: http://127.0.0.1:{litellmPort}/v1
    api_key: sk-anything
    timeout: 120
    retries: 0
models:
  "*": gateway/{MODEL}
"""
    )


def post(port: int, body: dict[str, Any]) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        connection.request(
            "POST", "/v1/messages", json.dumps(body), {"Content-Type": "application/json"}
        )
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def streamed(raw: bytes) -> dict[str, Any]:
    events = [data for _, data in parseSSE(raw)]
    checkGrammar(events)
    return accumulate(events)


def test_a_tool_loop_through_litellms_responses_api(processes: Processes, tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    upstream = processes.scriptedUpstream("--file", str(notes), "--answer", ANSWER)
    litellm = startLiteLLM(processes, upstream, provider="custom_openai")
    proxy = processes.ccproxy(ccproxyConfig(litellm), seconds=60)
    ask = {"role": "user", "content": "Read notes.txt"}
    request = {"model": "claude-sonnet-4-5", "max_tokens": 200, "stream": True, "tools": TOOLS}

    status, raw = post(proxy, {**request, "messages": [ask]})
    assert status == 200, raw
    first = streamed(raw)
    assert first["stop_reason"] == "tool_use", first
    call = first["content"][-1]
    assert (call["type"], call["name"], call["input"]) == (
        "tool_use",
        "Read",
        {"file_path": str(notes)},
    )
    assert first["usage"]["input_tokens"] == 120 and first["usage"]["output_tokens"] == 12

    result = {"type": "tool_result", "tool_use_id": call["id"], "content": "PERIWINKLE"}
    turns = [ask, {"role": "assistant", "content": first["content"]}]
    turns.append({"role": "user", "content": [result]})
    status, raw = post(proxy, {**request, "messages": turns})
    assert status == 200, raw
    second = streamed(raw)
    assert second["content"] == [{"type": "text", "text": ANSWER}]
    assert second["stop_reason"] == "end_turn"

    # The chat model behind LiteLLM got the tool's result as a tool message.
    chat = [r["body"] for r in processes.received() if r["path"].endswith("/chat/completions")]
    assert chat[-1]["messages"][-1]["role"] == "tool"

    # A whole answer: LiteLLM's `text: null` beside the call is no text block.
    status, raw = post(proxy, {**request, "stream": False, "messages": [ask]})
    assert status == 200, raw
    whole = json.loads(raw)
    assert [b["type"] for b in whole["content"]] == ["tool_use"]
    assert whole["stop_reason"] == "tool_use"
