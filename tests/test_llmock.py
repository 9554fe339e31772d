"""The fault scenarios against a real fault-injecting server: llmock 0.2.2.

llmock (`pip install 'llmock==0.2.2'`) is an OpenAI-compatible server written by
others, run here as a subprocess on 127.0.0.1: `llmock serve --stream-fault
KIND=1.0` breaks every stream after 1 to 6 chunks (truncate: a clean end with no
finish reason and no `[DONE]`; malformed: one `data:` line cut mid-JSON;
disconnect: the connection dropped; stall: silence), and `--error-rate 429=1.0`
answers every request 429 with `retry-after: 1`. Its journal (`/_llmock/requests`)
says what it received and how each answer ended.

One llmock with faults per test (~1.3 s to start), one healthy llmock per module as
the failover partner, and the real `ProxyService` in this process. Skipped, with the
reason, when llmock cannot be imported or run.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from functools import partial
from typing import Any

import pytest
import pytest_twisted
from attrs import define, field
from twisted.internet.threads import deferToThread

from ccproxy.config import Config
from ccproxy.daemon.service import ProxyService
from tests.support.faultkit import (
    Client,
    ClientReply,
    assertEnvelope,
    assertStreamError,
    blocksOf,
    request,
    textOf,
    within,
)
from tests.support.fixtures import TOOLS
from tests.support.loopback import startProxy
from tests.support.processes import Exited, answers, freePort, stop, waitFor

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("llmock") is None,
    reason="llmock is not installed (pip install 'llmock==0.2.2')",
)

UPSTREAM_TIMEOUT = 1.0
STALL_SECONDS = 30
# Long enough that llmock's answer (it echoes the prompt) has more chunks than the
# 6 after which a sampled fault may strike: every stream is broken.
PROMPT = " ".join(f"word{i}" for i in range(24))

CONFIG = """
listen: "tcp:0:interface=127.0.0.1"
max_duration: 20
ping_interval: 30
upstreams:
  faulty:
    url: "{faulty}/v1"
    timeout: {timeout}
    connect_timeout: 1
    retries: 1
    max_retry_wait: {maxRetryWait}
    breaker_failures: 100
  healthy:
    url: "{healthy}/v1"
    timeout: 10
    retries: 0
models:
  partnered: [faulty/mock-model, healthy/mock-model]
  solo: faulty/mock-model
  good: healthy/mock-model
"""


@define
class LLMock:
    """A running `llmock serve` subprocess."""

    process: subprocess.Popen[bytes]
    url: str

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=10) as response:
            return json.loads(response.read())

    def journal(self) -> list[dict[str, Any]]:
        """Every request it served, oldest first (it waits for ones in flight)."""
        return list(self.get("/_llmock/requests")["requests"])

    def reset(self) -> None:
        request = urllib.request.Request(self.url + "/_llmock/reset", method="POST")
        with urllib.request.urlopen(request, timeout=10):
            pass

    def stop(self) -> None:
        stop(self.process)
        if self.process.stderr is not None:
            self.process.stderr.close()


def startLLMock(*flags: str) -> LLMock:
    """`llmock serve` on a free loopback port, once it answers (bounded wait)."""
    port = freePort()
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from llmock.cli import app; sys.argv[0] = 'llmock'; app()",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
            *flags,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    mock = LLMock(process, f"http://127.0.0.1:{port}")
    try:
        waitFor(partial(answers, mock.url + "/_llmock/scenario"), "llmock to answer", 20, process)
    except Exited as e:
        stderr = process.stderr.read().decode(errors="replace") if process.stderr else ""
        mock.stop()
        pytest.skip(f"llmock could not run: exit {e.returncode}: {stderr[-500:]}")
    except AssertionError:
        mock.stop()
        raise
    return mock


@pytest.fixture(scope="module")
def healthy() -> Iterator[LLMock]:
    mock = startLLMock()
    try:
        yield mock
    finally:
        mock.stop()


@pytest.fixture
def faulty(request: pytest.FixtureRequest) -> Iterator[LLMock]:
    """An llmock started with the flags the test gives (indirect parametrization)."""
    mock = startLLMock(*getattr(request, "param", ()))
    try:
        yield mock
    finally:
        mock.stop()


@define
class Proxy:
    service: ProxyService
    base: str
    client: Client = field(factory=Client)

    async def post(self, model: str, stream: bool, **extra: Any) -> ClientReply:
        return await self.client.post(
            f"{self.base}/v1/messages", request(model, stream, PROMPT, **extra)
        )


@pytest_twisted.async_yield_fixture()
async def proxyFor() -> AsyncIterator[Callable[..., Any]]:
    """Starts the proxy in front of a faulty and a healthy llmock."""
    started: list[Proxy] = []

    async def start(faulty: LLMock, healthy: LLMock, maxRetryWait: float = 0.2) -> Proxy:
        config = Config.fromYAML(
            CONFIG.format(
                faulty=faulty.url,
                healthy=healthy.url,
                timeout=UPSTREAM_TIMEOUT,
                maxRetryWait=maxRetryWait,
            ),
            {},
        )
        proxy = Proxy(*await startProxy(config))
        started.append(proxy)
        return proxy

    try:
        yield start
    finally:
        for proxy in started:
            await proxy.client.close()
            await within(proxy.service.stopService())


async def journal(mock: LLMock) -> list[dict[str, Any]]:
    return await within(deferToThread(mock.journal))


# -- broken streams ------------------------------------------------------------------


STREAM_FAULTS = [
    pytest.param(
        ("--stream-fault", "truncate=1.0"),
        "truncate",
        "the upstream ended the stream before finishing its answer",
        id="truncate",
    ),
    pytest.param(
        ("--stream-fault", "malformed=1.0"),
        "malformed",
        "the stream holds a line that is not JSON",
        id="malformed",
    ),
    pytest.param(
        ("--stream-fault", "disconnect=1.0"),
        "disconnect",
        "the connection was lost in the middle of the stream",
        id="disconnect",
    ),
    pytest.param(
        ("--stream-fault", "stall=1.0", "--stream-stall-seconds", str(STALL_SECONDS)),
        "stall",
        f"no data for {UPSTREAM_TIMEOUT:g} s in the middle of the stream",
        id="stall",
    ),
]


@pytest.mark.parametrize(("faulty", "kind", "says"), STREAM_FAULTS, indirect=["faulty"])
@pytest_twisted.ensureDeferred
async def test_broken_stream(
    faulty: LLMock, healthy: LLMock, proxyFor: Any, kind: str, says: str
) -> None:
    """A stream llmock breaks after it started: the client gets `event: error` and no
    `message_stop`, the partner is not tried (a stream never fails over once it
    started), and the proxy still answers normally afterwards."""
    healthy.reset()
    proxy = await proxyFor(faulty, healthy)
    prefixes = []
    for route in ("solo", "partnered"):
        frames = assertStreamError(await proxy.post(route, True), says)
        prefixes.append(
            "".join(d["delta"].get("text", "") for n, d in frames if n == "content_block_delta")
        )
    records = await journal(faulty)
    # One attempt each (no retry of a started stream); llmock journals a request once
    # it ended, so a stalled stream the proxy never hung up on is missing here.
    assert len(records) == 2, records
    assert all(r["fault"].startswith(f"stream:{kind}@") for r in records)
    if kind == "stall":
        # The proxy hung up after its silence timeout, not after llmock's 30 s.
        assert all(r["stall_waited"] < STALL_SECONDS / 2 for r in records)
    assert await journal(healthy) == []  # never failed over
    # Stream faults break only streams: the same route answers a non-streaming request,
    # and what reached the client before each fault was the start of that answer.
    whole = textOf(await proxy.post("solo", False), False)
    assert "received: word0" in whole
    assert all(whole.startswith(prefix) for prefix in prefixes), (prefixes, whole)
    assert "received: word0" in textOf(await proxy.post("good", True), True)
    app = proxy.service.app
    assert (app.inFlight, app.streamsInFlight) == (0, 0)


# -- 429 with retry-after ------------------------------------------------------------------


RATE_LIMITED = ("--error-rate", "429=1.0")


@pytest.mark.parametrize("faulty", [RATE_LIMITED], indirect=True)
@pytest.mark.parametrize("stream", [False, True])
@pytest_twisted.ensureDeferred
async def test_429_fails_over_or_passes_retry_after(
    faulty: LLMock, healthy: LLMock, proxyFor: Any, stream: bool
) -> None:
    """`retry-after: 1` is beyond `max_retry_wait` (0.2 s): no retry here. Without a
    partner the client gets the 429 with the upstream's retry-after; with one, the
    partner answers."""
    healthy.reset()
    proxy = await proxyFor(faulty, healthy)
    reply = await proxy.post("solo", stream)
    assertEnvelope(
        reply,
        429,
        "rate_limit_error",
        "faulty: ",
        {"retry-after": "1", "x-should-retry": "true"},
    )
    assert "received: word0" in textOf(await proxy.post("partnered", stream), stream)
    records = await journal(faulty)
    assert [r["status"] for r in records] == [429, 429]
    assert len(await journal(healthy)) == 1


@pytest.mark.parametrize("faulty", [RATE_LIMITED], indirect=True)
@pytest_twisted.ensureDeferred
async def test_429_retry_honours_retry_after(
    faulty: LLMock, healthy: LLMock, proxyFor: Any
) -> None:
    """With `max_retry_wait: 2` the proxy retries once after the second llmock asked
    for, and llmock's own verdict finds no retry-after ignored."""
    proxy = await proxyFor(faulty, healthy, maxRetryWait=2)
    assertEnvelope(await proxy.post("solo", False), 429, "rate_limit_error", "faulty: ")
    records = await journal(faulty)
    assert len(records) == 2
    assert records[1]["started_at"] - records[0]["ended_at"] >= 1.0 - 0.05
    verdict = await within(deferToThread(faulty.get, "/_llmock/verdict"))
    assert verdict["attempts"] == 2
    assert verdict["findings"] == []  # no retry_after_ignored, no retry storm


# -- a clean run with tools -----------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
@pytest_twisted.ensureDeferred
async def test_tool_round_trip(healthy: LLMock, proxyFor: Any, stream: bool) -> None:
    """llmock calls the first tool, then answers in text once a tool result is back:
    both turns through the proxy, with what llmock received checked in its journal."""
    healthy.reset()
    proxy = await proxyFor(healthy, healthy)
    first = await proxy.post("good", stream, tools=TOOLS)
    blocks = blocksOf(first, stream, "tool_use")
    calls = [b for b in blocks if b["type"] == "tool_use"]
    assert len(calls) == 1
    call = calls[0]
    assert call["name"] == "get_weather"
    assert isinstance(call["input"]["city"], str)
    followUp = {
        "tools": TOOLS,
        "messages": [
            {"role": "user", "content": PROMPT},
            {"role": "assistant", "content": blocks},
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": call["id"], "content": "18 C, sunny"}
                ],
            },
        ],
    }
    second = await proxy.client.post(
        f"{proxy.base}/v1/messages",
        {"model": "good", "max_tokens": 64, "stream": stream, **followUp},
    )
    assert textOf(second, stream).strip()
    sent = [r["body"] for r in await journal(healthy)]
    assert len(sent) == 2
    assert sent[0]["tools"][0]["function"]["name"] == "get_weather"
    assert sent[0].get("stream", False) is stream
    tool = [m for m in sent[1]["messages"] if m["role"] == "tool"]
    assert tool == [{"role": "tool", "tool_call_id": call["id"], "content": "18 C, sunny"}]
    assistant = [m for m in sent[1]["messages"] if m["role"] == "assistant"]
    assert assistant[0]["tool_calls"][0]["id"] == call["id"]


@pytest_twisted.ensureDeferred
async def test_tool_round_trip_with_the_anthropic_sdk(healthy: LLMock, proxyFor: Any) -> None:
    """The same two turns with the Anthropic SDK, streamed, as Claude Code would."""
    anthropic = pytest.importorskip("anthropic")
    proxy = await proxyFor(healthy, healthy)
    client = anthropic.Anthropic(base_url=proxy.base, api_key="k", max_retries=0, timeout=20)
    try:

        def conversation() -> tuple[Any, Any]:
            messages: list[dict[str, Any]] = [{"role": "user", "content": "Weather in Paris?"}]
            with client.messages.stream(
                model="good", max_tokens=64, tools=TOOLS, messages=messages
            ) as stream:
                first = stream.get_final_message()
            call = next(b for b in first.content if b.type == "tool_use")
            messages += [
                {"role": "assistant", "content": [b.model_dump() for b in first.content]},
                {
                    "role": "user",
                    "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "sun"}],
                },
            ]
            with client.messages.stream(
                model="good", max_tokens=64, tools=TOOLS, messages=messages
            ) as stream:
                second = stream.get_final_message()
            return first, second

        first, second = await within(deferToThread(conversation), 30)
    finally:
        client.close()
    assert first.stop_reason == "tool_use"
    assert [b.type for b in first.content if b.type == "tool_use"] == ["tool_use"]
    assert second.stop_reason == "end_turn"
    assert second.content[0].type == "text" and second.content[0].text.strip()
    assert second.model == "good"
