"""`head_wait` against a real gateway that withholds its headers: a LiteLLM proxy.

client -> ccproxy (twistd) -> LiteLLM proxy -> the scripted upstream, all on
127.0.0.1. The scripted upstream sends its headers at once but holds its first
chunk until the test lets it go (a model slow to start); LiteLLM sends no header
of its own until that chunk. The client must still get `200` and
`message_start` within `head_wait`, while LiteLLM is still silent, and the whole
answer once the model starts.

Skipped only where LiteLLM is not installed (tests/support/litellm.py; .ci/run
installs it).
"""

from __future__ import annotations

import http.client
import json
import socket
import time
from typing import Any

import pytest

from tests.support.litellm import litellmCommand, litellmConfig, litellmEnvironment
from tests.support.processes import Processes, answers, freePort, waitFor

HEAD_WAIT = 1.0
MODEL = "scripted-model"

pytestmark = pytest.mark.skipif(litellmCommand() is None, reason="LiteLLM is not installed")


def startLiteLLM(processes: Processes, upstreamPort: int, provider: str = "openai") -> int:
    """LiteLLM in front of the scripted upstream; `provider`: LiteLLM's name for
    it (its `/v1/messages` sends an `openai` model to `/v1/responses`, a
    `hosted_vllm` one to `/v1/chat/completions`)."""
    command = litellmCommand()
    assert command is not None
    directory = processes.directory
    config = directory / "litellm.yaml"
    config.write_text(litellmConfig(upstreamPort, MODEL, provider))
    port = freePort()
    log = directory / "litellm.log"
    home = directory / "litellm-home"
    home.mkdir()
    process = processes.spawn(
        [*command, "--config", str(config), "--host", "127.0.0.1", "--port", str(port)],
        log,
        cwd=directory,
        env=litellmEnvironment(home),
    )
    waitFor(
        lambda: answers(f"http://127.0.0.1:{port}/health/liveliness"),
        "LiteLLM to answer",
        180,
        process=process,
        log=log,
    )
    return port


def ccproxyConfig(litellmPort: int, headWait: float, api: str = "chat") -> Any:
    return lambda port: (
        f"""
listen: "tcp:{port}:interface=127.0.0.1"
ledger: "off"
upstreams:
  gateway:
    url: http://127.0.0.1:{litellmPort}/v1
    api: {api}
    api_key: sk-anything
    preset: litellm
    timeout: 120
    retries: 0
    head_wait: {headWait}
models:
  "*": gateway/{MODEL}
"""
    )


def streamRequest() -> bytes:
    return json.dumps(
        {
            "model": "claude-sonnet-4-5",
            "max_tokens": 100,
            "stream": True,
            "messages": [{"role": "user", "content": "say hi"}],
        }
    ).encode()


def readUntil(response: http.client.HTTPResponse, marker: bytes) -> bytes:
    seen = b""
    while marker not in seen:
        line = response.readline()
        if not line:
            break
        seen += line
    return seen


def headersWithin(port: int, seconds: float) -> bytes:
    """What LiteLLM sends, directly asked for a stream, within `seconds`."""
    body = json.dumps(
        {"model": MODEL, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    ).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=seconds) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Authorization: Bearer sk-anything\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body) + body
        )
        try:
            return sock.recv(65536)
        except TimeoutError:
            return b""


def test_message_start_arrives_while_litellm_withholds_its_head(processes: Processes) -> None:
    hold = processes.directory / "let-the-model-start"
    upstream = processes.scriptedUpstream("--hold-file", str(hold))
    litellm = startLiteLLM(processes, upstream)
    proxy = processes.ccproxy(ccproxyConfig(litellm, HEAD_WAIT), seconds=60)

    connection = http.client.HTTPConnection("127.0.0.1", proxy, timeout=60)
    started = time.monotonic()
    connection.request(
        "POST", "/v1/messages", streamRequest(), {"Content-Type": "application/json"}
    )
    response = connection.getresponse()
    head = time.monotonic() - started
    assert response.status == 200
    assert readUntil(response, b"event: message_start").endswith(b"\n")
    firstEvent = time.monotonic() - started
    print(f"\nClaude-Code-side head after {head:.2f} s, message_start after {firstEvent:.2f} s")

    # LiteLLM, asked directly, still says nothing: the model has not started.
    assert headersWithin(litellm, 2 * HEAD_WAIT) == b""
    assert not hold.exists()

    hold.touch()
    rest = response.read()
    connection.close()
    assert b"event: message_stop" in rest
    text = "".join(
        json.loads(line[len(b"data: ") :])["delta"].get("text", "")
        for line in rest.splitlines()
        if line.startswith(b"data: ") and b'"content_block_delta"' in line
    )
    assert text == "Scripted reply."
    assert rest.count(b"event: message_start") == 0  # one, before the model started


def test_litellm_s_own_messages_endpoint_is_passed_through(processes: Processes) -> None:
    """`api: messages` in front of LiteLLM's `/v1/messages` (which translates to the
    scripted chat upstream itself): a stream and a whole answer come back as
    LiteLLM wrote them, count_tokens is LiteLLM's."""
    upstream = processes.scriptedUpstream()
    litellm = startLiteLLM(processes, upstream, "hosted_vllm")
    proxy = processes.ccproxy(ccproxyConfig(litellm, 5, "messages"), seconds=60)

    connection = http.client.HTTPConnection("127.0.0.1", proxy, timeout=60)
    headers = {"Content-Type": "application/json", "anthropic-version": "2023-06-01"}
    connection.request("POST", "/v1/messages", streamRequest(), headers)
    response = connection.getresponse()
    streamed = response.read()
    assert response.status == 200, streamed
    events = [
        line[len(b"event: ") :] for line in streamed.splitlines() if line.startswith(b"event: ")
    ]
    assert events[0] == b"message_start" and events[-1] == b"message_stop"
    assert b"event: error" not in streamed
    text = "".join(
        json.loads(line[len(b"data: ") :])["delta"].get("text", "")
        for line in streamed.splitlines()
        if line.startswith(b"data: ") and b'"content_block_delta"' in line
    )
    assert text == "Scripted reply."

    whole = json.loads(streamRequest())
    del whole["stream"]
    connection.request("POST", "/v1/messages", json.dumps(whole).encode(), headers)
    response = connection.getresponse()
    answer = json.loads(response.read())
    assert response.status == 200
    assert answer["type"] == "message"
    assert answer["content"][0]["text"] == "Scripted reply."
    assert answer["usage"]["input_tokens"] > 0

    connection.request("POST", "/v1/messages/count_tokens", json.dumps(whole).encode(), headers)
    response = connection.getresponse()
    counted = json.loads(response.read())
    connection.close()
    assert response.status == 200, counted
    assert isinstance(counted["input_tokens"], int)

    paths = [r["path"] for r in processes.received()]
    assert paths.count("/v1/chat/completions") >= 2  # LiteLLM translated, not ccproxy
