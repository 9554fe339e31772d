"""What fault tests share: a bounded client (over real sockets, or on a `MemoryNet`)
and the checks of what a client must see (an Anthropic error envelope, a stream that
ends in `event: error`, or a whole normal answer)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.web.client import Agent, HTTPConnectionPool

from ccproxy.upstream.client import BytesProducer
from tests.support.harness import ClientReply, parseSSE
from tests.support.processes import freePort

BOUND = 10.0
"""Seconds any single wait may take before the test fails instead of hanging."""


def within(d: Deferred[Any], seconds: float = BOUND) -> Deferred[Any]:
    """`d`, failing with `TimeoutError` if it takes longer than `seconds`."""
    return d.addTimeout(seconds, reactor)


async def waitUntil(condition: Callable[[], bool], what: str, seconds: float = BOUND) -> None:
    """Lets the reactor run until `condition` holds (a bounded wait for a state, not a
    timing assertion)."""
    deadline = reactor.seconds() + seconds
    while not condition():
        if reactor.seconds() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await deferLater(reactor, 0.01)


def closedPort() -> int:
    """A loopback port that was bound and closed again: connecting to it is refused."""
    return freePort()


def request(model: str, stream: bool, text: str = "hello", **extra: Any) -> dict[str, Any]:
    """A small Messages request."""
    return {
        "model": model,
        "max_tokens": 64,
        "stream": stream,
        "messages": [{"role": "user", "content": text}],
        **extra,
    }


class Client:
    """A treq client on its own non-persistent pool, every wait bounded.

    By default on the global reactor, each wait bounded by `within`; on a `MemoryNet`,
    `Client(net.reactor, net.run)`: each wait runs the network until it is over. Bodies
    are written at once (treq's default producer would wait for the global reactor's
    cooperator, which does not run while a `MemoryNet` runs)."""

    def __init__(
        self,
        reactor: Any = reactor,
        wait: Callable[[Deferred[Any]], Deferred[Any]] = within,
    ) -> None:
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        self.http = HTTPClient(Agent(reactor, pool=self.pool), data_to_body_producer=BytesProducer)
        self.wait = wait

    async def post(self, url: str, body: dict[str, Any] | bytes) -> ClientReply:
        data = body if isinstance(body, bytes) else orjson.dumps(body)
        response = await self.wait(self.http.post(url, data=data))
        raw = await self.wait(response.content())
        headers = {
            k.decode().lower(): v[-1].decode() for k, v in response.headers.getAllRawHeaders()
        }
        return ClientReply(response.code, headers, raw)

    async def close(self) -> None:
        await self.wait(self.pool.closeCachedConnections())


def assertEnvelope(
    reply: ClientReply,
    status: int,
    errorType: str,
    says: str,
    headers: dict[str, str] | None = None,
) -> None:
    """An Anthropic error envelope with this status, type and words in its message."""
    assert reply.status == status, reply.body
    assert reply.headers["content-type"] == "application/json"
    assert b"Traceback" not in reply.body
    body = reply.json()
    assert body["type"] == "error"
    assert body["error"]["type"] == errorType
    assert says in body["error"]["message"]
    assert "<twisted." not in body["error"]["message"]  # no Python reprs
    assert body["request_id"] == reply.headers["request-id"]
    for name, value in (headers or {}).items():
        assert reply.headers.get(name) == value


def assertStreamError(reply: ClientReply, says: str) -> list[tuple[str, Any]]:
    """A stream that started and then failed: `event: error` last, no `message_stop`."""
    assert reply.status == 200, reply.body
    assert reply.headers["content-type"].startswith("text/event-stream")
    assert b"Traceback" not in reply.body
    frames = parseSSE(reply.body)
    names = [name for name, _ in frames]
    assert names[0] == "message_start"
    assert names[-1] == "error"
    assert "message_stop" not in names
    error = frames[-1][1]
    assert error["type"] == "error"
    assert error["error"]["type"] == "api_error"
    assert says in error["error"]["message"]
    return frames


def textOf(reply: ClientReply, stream: bool, stopReason: str = "end_turn") -> str:
    """The answer's text, after checking that it is a whole, normal answer."""
    return "".join(b["text"] for b in blocksOf(reply, stream, stopReason) if b["type"] == "text")


def blocksOf(
    reply: ClientReply, stream: bool, stopReason: str | None = None
) -> list[dict[str, Any]]:
    """The content blocks of a whole, normal answer (a stream's rebuilt from its events)."""
    assert reply.status == 200, reply.body
    assert b"Traceback" not in reply.body
    if not stream:
        message = reply.json()
        assert message["type"] == "message"
        if stopReason is not None:
            assert message["stop_reason"] == stopReason
        return list(message["content"])
    frames = parseSSE(reply.body)
    names = [name for name, _ in frames]
    assert names[0] == "message_start"
    assert names[-2:] == ["message_delta", "message_stop"]
    assert "error" not in names
    if stopReason is not None:
        assert frames[-2][1]["delta"]["stop_reason"] == stopReason
    blocks: list[dict[str, Any]] = []
    partial: dict[int, str] = {}
    for name, data in frames:
        if name == "content_block_start":
            blocks.append(dict(data["content_block"]))
            partial[data["index"]] = ""
        elif name == "content_block_delta":
            d = data["delta"]
            if d["type"] == "text_delta":
                blocks[data["index"]]["text"] = blocks[data["index"]].get("text", "") + d["text"]
            elif d["type"] == "input_json_delta":
                partial[data["index"]] += d["partial_json"]
        elif name == "content_block_stop" and blocks[data["index"]]["type"] == "tool_use":
            raw = partial[data["index"]]
            blocks[data["index"]]["input"] = orjson.loads(raw) if raw else {}
    return blocks


def words(text: str) -> list[str]:
    return text.split()
