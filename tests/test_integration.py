"""The real service over loopback sockets: the proxy, a fake upstream, real clients.

These use the global reactor (run by pytest-twisted) and bind only to 127.0.0.1 on
ports the OS picks.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import anthropic
import orjson
import pytest
import pytest_twisted
import treq
from twisted.internet import reactor, tcp
from twisted.internet.threads import deferToThread
from twisted.web.iweb import UNKNOWN_LENGTH

from tests.support.fakes import FakeOpenAI, completion, jsonReply, sseReply, toolCall
from tests.support.fixtures import TOOLS
from tests.support.loopback import startLoopback


@pytest_twisted.async_yield_fixture()
async def running() -> AsyncIterator[tuple[str, FakeOpenAI]]:
    """A fake upstream and the proxy in front of it, both listening on loopback."""
    loopback = await startLoopback(
        lambda upstream: (
            f"""
listen: "tcp:0:interface=127.0.0.1"
upstreams:
  fake:
    url: "{upstream}"
    api_key: upstream-key
    timeout: 20
models:
  claude-*: fake/fake-model
"""
        )
    )
    try:
        yield loopback.base, loopback.upstream
    finally:
        await loopback.stop()


def body(**extra: Any) -> dict[str, Any]:
    return {
        "model": "claude-sonnet-5-5",
        "max_tokens": 64,
        "messages": [{"role": "user", "content": "hello"}],
        **extra,
    }


@pytest_twisted.ensureDeferred
async def test_messages_over_sockets(running: tuple[str, FakeOpenAI]) -> None:
    base, upstream = running
    upstream.queue(jsonReply(completion("Hi from upstream")))
    response = await treq.post(
        f"{base}/v1/messages?beta=true", data=orjson.dumps(body()), headers={"x-api-key": "k"}
    )
    raw = await response.content()
    assert response.code == 200
    assert response.length == len(raw)  # sent with a Content-Length
    assert orjson.loads(raw)["content"] == [{"type": "text", "text": "Hi from upstream"}]
    assert upstream.received[-1].headers["authorization"] == "Bearer upstream-key"


@pytest_twisted.ensureDeferred
async def test_stream_over_sockets(running: tuple[str, FakeOpenAI]) -> None:
    base, upstream = running
    chunks = [{"choices": [{"index": 0, "delta": {"content": f"part{i} "}}]} for i in range(5)]
    chunks.append({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    upstream.queue(sseReply(chunks))
    response = await treq.post(f"{base}/v1/messages", data=orjson.dumps(body(stream=True)))
    raw = await response.content()
    assert response.code == 200
    assert response.length is UNKNOWN_LENGTH  # chunked, written as it comes
    assert raw.startswith(b"event: message_start\n")
    assert raw.endswith(b'event: message_stop\ndata: {"type":"message_stop"}\n\n')


@pytest_twisted.ensureDeferred
async def test_upstream_connections_are_kept_alive(running: tuple[str, FakeOpenAI]) -> None:
    base, upstream = running
    for _ in range(3):
        response = await treq.post(f"{base}/v1/messages", data=orjson.dumps(body()))
        await response.content()
    assert len(upstream.received) == 3
    assert all(r.headers.get("connection") != "close" for r in upstream.received)


@pytest_twisted.ensureDeferred
async def test_answers_leave_without_the_reactor_watching_the_proxys_sockets(
    running: tuple[str, FakeOpenAI],
) -> None:
    """A request and a stream (the upstream connection kept alive from a first
    request): each send goes out at once, no socket of the proxy's is watched for
    room (`compat.SendTogether`), and its upstream connection is never dropped from
    the poll set between an answer's head and its body (`compat.ClientProtocol`):
    each would be an `epoll_ctl` pair."""
    base, upstream = running
    chunks = [{"choices": [{"index": 0, "delta": {"content": f"part{i} "}}]} for i in range(5)]
    chunks.append({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    upstream.queue(jsonReply(completion("warm-up")))
    await (await treq.post(f"{base}/v1/messages", data=orjson.dumps(body()))).content()
    asked: list[tuple[str, Any]] = []

    port = int(base.rsplit(":", 1)[1])

    def proxys(selectable: Any) -> bool:
        """The proxy's side of a client's connection, or its upstream connection
        (every other client connection here is the test's, to the proxy)."""
        if isinstance(selectable, tcp.Server):
            return bool(selectable.getHost().port == port)
        return isinstance(selectable, tcp.Client) and selectable.getPeer().port != port

    def spy(name: str) -> Callable[[Any], None]:
        real = getattr(reactor, name)

        def call(selectable: Any) -> None:
            if proxys(selectable):
                asked.append((name, selectable))
            real(selectable)

        return call

    reactor.addWriter = spy("addWriter")  # type: ignore[method-assign]
    reactor.removeReader = spy("removeReader")  # type: ignore[method-assign]
    try:
        upstream.queue(jsonReply(completion("Hi")))
        answer = await treq.post(f"{base}/v1/messages", data=orjson.dumps(body()))
        assert orjson.loads(await answer.content())["content"][0]["text"] == "Hi"
        upstream.queue(sseReply(chunks))
        streamed = await treq.post(f"{base}/v1/messages", data=orjson.dumps(body(stream=True)))
        assert (await streamed.content()).endswith(b'data: {"type":"message_stop"}\n\n')
    finally:
        del reactor.addWriter
        del reactor.removeReader
    assert asked == []


@pytest.fixture
def sdk() -> Iterator[Callable[[str], anthropic.Anthropic]]:
    """Anthropic SDK clients for a base URL, closed after the test."""
    clients: list[anthropic.Anthropic] = []

    def make(base: str) -> anthropic.Anthropic:
        clients.append(
            anthropic.Anthropic(base_url=base, api_key="sdk-key", max_retries=0, timeout=20)
        )
        return clients[-1]

    yield make
    for client in clients:
        client.close()


TOOL_ANSWER = [
    {"choices": [{"index": 0, "delta": {"role": "assistant", "content": "Checking."}}]},
    {
        "choices": [
            {
                "index": 0,
                "delta": {
                    "tool_calls": [
                        {
                            "index": 0,
                            "id": "call_x",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": ""},
                        }
                    ]
                },
            }
        ]
    },
    {
        "choices": [
            {
                "index": 0,
                "delta": {"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]},
            }
        ]
    },
    {
        "choices": [
            {
                "index": 0,
                "delta": {"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]},
            }
        ]
    },
    {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
    {"choices": [], "usage": {"prompt_tokens": 42, "completion_tokens": 12}},
]


def blocks(message: Any) -> list[tuple[Any, ...]]:
    return [
        (
            b.type,
            getattr(b, "text", None),
            getattr(b, "id", None),
            getattr(b, "name", None),
            getattr(b, "input", None),
        )
        for b in message.content
    ]


@pytest_twisted.ensureDeferred
async def test_sdk_stream_and_create_agree(running: tuple[str, FakeOpenAI], sdk: Any) -> None:
    base, upstream = running
    upstream.queue(
        sseReply(TOOL_ANSWER),
        jsonReply(
            completion(
                "Checking.",
                [toolCall("get_weather", '{"city": "Paris"}', "call_x")],
                "tool_calls",
                usage={"prompt_tokens": 42, "completion_tokens": 12},
            )
        ),
    )
    client = sdk(base)
    request = {
        "model": "claude-sonnet-5-5",
        "max_tokens": 100,
        "tools": TOOLS,
        "messages": [{"role": "user", "content": "Weather in Paris?"}],
    }

    def viaStream() -> Any:
        with client.messages.stream(**request) as stream:
            return stream.get_final_message()

    streamed = await deferToThread(viaStream)
    created = await deferToThread(client.messages.create, **request)
    assert blocks(streamed) == blocks(created)
    assert [b.type for b in created.content] == ["text", "tool_use"]
    assert created.content[1].input == {"city": "Paris"}
    assert streamed.stop_reason == created.stop_reason == "tool_use"
    assert streamed.usage.output_tokens == created.usage.output_tokens == 12
    assert streamed.usage.input_tokens == created.usage.input_tokens == 42
    assert streamed.model == created.model == "claude-sonnet-5-5"
    assert upstream.received[0].headers["authorization"] == "Bearer upstream-key"


@pytest_twisted.ensureDeferred
async def test_sdk_count_tokens_and_models(running: tuple[str, FakeOpenAI], sdk: Any) -> None:
    base, _ = running
    client = sdk(base)
    counted = await deferToThread(
        client.messages.count_tokens,
        model="claude-sonnet-5-5",
        messages=[{"role": "user", "content": "hello there"}],
    )
    assert counted.input_tokens > 0
    models = await deferToThread(lambda: list(client.models.list()))
    assert models == []  # the config has only globs


@pytest_twisted.ensureDeferred
async def test_sdk_sees_anthropic_errors(running: tuple[str, FakeOpenAI], sdk: Any) -> None:
    base, upstream = running
    slowDown = jsonReply({"error": {"message": "slow down"}}, 429, {"retry-after": "0"})
    upstream.queue(slowDown, slowDown)  # the proxy retries once (retries: 1), then gives up
    client = sdk(base)
    with pytest.raises(anthropic.RateLimitError) as raised:
        await deferToThread(client.messages.create, **body())
    assert "fake: slow down" in str(raised.value)
    assert len(upstream.received) == 2
    with pytest.raises(anthropic.NotFoundError):
        await deferToThread(client.messages.create, **body(model="gpt-4o"))


def searchAnswer(name: str, arguments: str, callId: str) -> list[dict[str, Any]]:
    """An upstream stream that calls one function."""
    call = {"index": 0, "id": callId, "type": "function", "function": {"name": name}}
    return [
        {"choices": [{"index": 0, "delta": {"role": "assistant", "tool_calls": [call]}}]},
        {
            "choices": [
                {
                    "index": 0,
                    "delta": {"tool_calls": [{"index": 0, "function": {"arguments": arguments}}]},
                }
            ]
        },
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
        {"choices": [], "usage": {"prompt_tokens": 40, "completion_tokens": 5}},
    ]


@pytest_twisted.ensureDeferred
async def test_sdk_reads_the_tool_search_ccproxy_runs(
    running: tuple[str, FakeOpenAI], sdk: Any
) -> None:
    """The Anthropic SDK's beta client, offering the regex tool search with a deferred
    tool: streamed and whole, the same blocks, parsed into the SDK's own types."""
    base, upstream = running
    search = ("tool_search_tool_regex", '{"query": "weather"}', "call_s")
    weather = ("get_weather", '{"city": "Paris"}', "call_w")
    upstream.queue(
        sseReply(searchAnswer(*search)),
        sseReply(searchAnswer(*weather)),
        jsonReply(completion(None, [toolCall(*search)], "tool_calls")),
        jsonReply(completion(None, [toolCall(*weather)], "tool_calls")),
    )
    client = sdk(base)
    request = {
        "model": "claude-sonnet-5-5",
        "max_tokens": 100,
        "betas": ["advanced-tool-use-2025-11-20"],
        "tools": [
            {"type": "tool_search_tool_regex_20251119", "name": "tool_search_tool_regex"},
            {"name": "Bash", "description": "Run", "input_schema": {"type": "object"}},
            {**TOOLS[0], "defer_loading": True},
        ],
        "messages": [{"role": "user", "content": "Weather in Paris?"}],
    }

    def viaStream() -> Any:
        with client.beta.messages.stream(**request) as stream:
            return stream.get_final_message()

    streamed = await deferToThread(viaStream)
    created = await deferToThread(client.beta.messages.create, **request)
    for message in (streamed, created):
        assert [type(b).__name__ for b in message.content] == [
            "BetaServerToolUseBlock",
            "BetaToolSearchToolResultBlock",
            "BetaToolUseBlock",
        ]
        assert message.content[0].input == {"query": "weather"}
        assert [r.tool_name for r in message.content[1].content.tool_references] == ["get_weather"]
        assert message.content[2].input == {"city": "Paris"}
        assert message.stop_reason == "tool_use"
    assert streamed.usage.input_tokens == 80
    assert len(upstream.received) == 4
