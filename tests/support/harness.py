"""In-memory harness: the proxy app between two StubTreqs, driven by a Clock."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
from attrs import define
from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from ccproxy.config import Config
from ccproxy.ledger.model import Ledger
from ccproxy.upstream.client import HTTPClient, UpstreamClient
from ccproxy.upstream.dispatch import Dispatcher, UpstreamState
from ccproxy.web.app import ProxyApp
from tests.support.fakes import FakeOpenAI

BASE_CONFIG = """
upstreams:
  up:
    url: http://upstream.test/v1
    api_key: sk-upstream-secret
    timeout: 30
    retries: 0
  other:
    url: http://other.test/v1/chat/completions
models:
  claude-haiku-*: other/small-model
  claude-*: up/big-model
  passthrough: up
"""


def resultOf(d: Deferred[Any]) -> Any:
    """The result of a Deferred that has already fired (raises its failure)."""
    results: list[Any] = []

    def grab(result: Any) -> Any:
        results.append(result)
        return None if isinstance(result, Failure) else result  # a failure is consumed

    d.addBoth(grab)
    assert results, "the Deferred has not fired"
    if isinstance(results[0], Failure):
        results[0].raiseException()
    return results[0]


def fired(d: Deferred[Any]) -> bool:
    """Whether a Deferred has a result yet (without consuming it)."""
    seen: list[Any] = []

    def look(result: Any) -> Any:
        seen.append(True)
        return result

    d.addBoth(look)
    return bool(seen)


@define
class ClientReply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)


@define
class Harness:
    """A proxy app wired to a fake upstream, both in memory, on one Clock."""

    app: ProxyApp
    upstream: FakeOpenAI
    client: StubTreq
    upstreamTreq: StubTreq
    clock: Clock

    @classmethod
    def build(
        cls,
        configText: str = BASE_CONFIG,
        env: dict[str, str] | None = None,
        http: Callable[[Clock, StubTreq], HTTPClient] | None = None,
        ledger: Callable[[Clock], Ledger] | None = None,
    ) -> Harness:
        """The app on `configText`, its upstreams served by a `FakeOpenAI`; `http`
        makes the upstream HTTP client instead (from the clock and the fake's
        StubTreq), for tests of what a real connection does that a stub cannot;
        `ledger` makes the app's ledger on the clock, where each request leaves its
        row and budgets read what was spent before (without it, none: the config's
        `ledger:` is not opened, and `/v1/usage` counts in memory)."""
        clock = Clock()
        upstream = FakeOpenAI(clock=clock)
        upstreamTreq = StubTreq(upstream.resource())
        config = Config.fromYAML(configText, env or {})
        client = UpstreamClient(upstreamTreq if http is None else http(clock, upstreamTreq), clock)
        app = ProxyApp(
            config=config,
            dispatcher=Dispatcher(client, clock, UpstreamState(clock), random=lambda: 0.5),
            clock=clock,
            ledger=None if ledger is None else ledger(clock),
        )
        return cls(app, upstream, StubTreq(app.resource()), upstreamTreq, clock)

    def flush(self) -> None:
        for _ in range(3):
            self.upstreamTreq.flush()
            self.client.flush()

    def request(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> Deferred[ClientReply]:
        data = None
        if body is not None:
            data = body if isinstance(body, bytes) else orjson.dumps(body)
        d = self.client.request(
            method, "http://proxy.test" + path, data=data, headers=headers or {}
        )

        async def collect(response: Any) -> ClientReply:
            raw = await self.client.content(response)
            return ClientReply(
                response.code,
                {
                    k.decode().lower(): v[-1].decode()
                    for k, v in response.headers.getAllRawHeaders()
                },
                raw,
            )

        return d.addCallback(lambda r: Deferred.fromCoroutine(collect(r)))

    def call(self, method: str, path: str, body: Any = None, **kw: Any) -> ClientReply:
        d = self.request(method, path, body, **kw)
        self.flush()
        return resultOf(d)

    def post(self, body: Any, path: str = "/v1/messages", **kw: Any) -> ClientReply:
        return self.call("POST", path, body, **kw)


def message(text: str = "hi", **extra: Any) -> dict[str, Any]:
    """A minimal Messages request."""
    return {
        "model": "claude-sonnet-4-5",
        "max_tokens": 100,
        "messages": [{"role": "user", "content": text}],
        **extra,
    }


def parseSSE(body: bytes) -> list[tuple[str, Any]]:
    """A client's view of an SSE body: (event name, decoded data) per frame."""
    frames = []
    for block in body.decode().split("\n\n"):
        if not block.strip():
            continue
        name, data = None, []
        for line in block.split("\n"):
            if line.startswith("event: "):
                name = line[len("event: ") :]
            elif line.startswith("data: "):
                data.append(line[len("data: ") :])
        assert name is not None, f"frame without an event line: {block!r}"
        frames.append((name, orjson.loads("\n".join(data))))
    return frames
