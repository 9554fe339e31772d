"""CPU per request of the handler's path to the upstream and back, in-process.

``python -m bench.translatecost [--rounds N] [--profile STAGE]``

On the reference corpus (six Claude-Code-shaped bodies of 36-60 KB, `bench.corpus`),
times each stage ccproxy runs for one non-streaming request between "the body is
parsed" and "the upstream request is on the wire", and in reading the answer:

- ``plan``: `Plan.forRequest` (stop sequences, tool names, tool search)
- ``translate``: `ChatAPI.translated` (`toOpenAI`), and ``body``: that encoded
- ``post``: `UpstreamClient.post` through the daemon's own client stack (the pool,
  its endpoints, a real `HTTP11ClientProtocol` on an in-memory transport): the
  request written, the answer's head parsed; then ``read``: `readBody`
- ``message``: `Rendering.message` of a chat answer holding text and a tool call
- ``dispatch``: all of it as a request goes: a plan, then `Dispatcher.send` (its
  breaker and slots, the body made, posted, the answer read and rendered)

Each figure is the best of `--rounds` runs of every body, in microseconds per
request, the heap settled as the daemon's (`ccproxy.daemon.heap`). `--profile STAGE`
prints a cProfile of that stage instead; `--only` times some stages; `--gemini`
translates for an upstream whose tool schemas are reduced for Gemini.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time
from collections.abc import Callable
from typing import Any

import orjson
from attrs import evolve
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from bench.corpus import bodies
from ccproxy.config.model import Upstream
from ccproxy.config.routing import Target
from ccproxy.daemon.heap import settleHeap
from ccproxy.translate.dialect import Profile
from ccproxy.upstream.dispatch import Dispatcher, UpstreamState
from ccproxy.upstream.plan import APIS, Plan

ANSWER = orjson.dumps(
    {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "gpt-bench",
        "choices": [
            {
                "index": 0,
                "finish_reason": "tool_calls",
                "message": {
                    "role": "assistant",
                    "content": "I'll read the file to see what it holds before changing it.",
                    "tool_calls": [
                        {
                            "id": "call_1",
                            "type": "function",
                            "function": {
                                "name": "Read",
                                "arguments": '{"file_path": "/src/app/models.py"}',
                            },
                        }
                    ],
                },
            }
        ],
        "usage": {"prompt_tokens": 12000, "completion_tokens": 40, "total_tokens": 12040},
    }
)
HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nDate: Sun, 06 Dec 2026 08:00:00 GMT\r\n"
    b"Content-Length: %d\r\n\r\n" % len(ANSWER)
)
UPSTREAM = Upstream(
    name="mock", url="http://127.0.0.1:9/v1/chat/completions", apiKey="k", timeout=60
)
TARGET = Target("mock", "gpt-bench")


class _Endpoint:
    """Connects the pool's protocol to an in-memory transport (kept for the answer)."""

    def __init__(self, wire: list[Any]) -> None:
        self._wire = wire

    def connect(self, factory: Any) -> Deferred[Any]:
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        self._wire.append(protocol)
        return succeed(protocol)


class _Endpoints:
    def __init__(self, wire: list[Any]) -> None:
        self._endpoint = _Endpoint(wire)

    def endpointForURI(self, uri: Any) -> Any:
        return self._endpoint


def _clientStack(clock: Clock) -> tuple[Any, list[Any]]:
    """The daemon's upstream client (`daemon.wiring` builds the same), its pool's
    connections on in-memory transports."""
    from ccproxy.upstream.client import PooledClient, UpstreamClient
    from ccproxy.upstream.pool import UpstreamPool

    wire: list[Any] = []
    http = PooledClient(UpstreamPool(clock, 10), _Endpoints(wire))
    return UpstreamClient(http, clock), wire


def _stages(clock: Clock) -> dict[str, Callable[[dict[str, Any]], Any]]:
    api = APIS["chat"]
    client, wire = _clientStack(clock)

    def plan(body: dict[str, Any]) -> Plan:
        return Plan.forRequest(
            body,
            body["model"],
            "msg_bench",
            targets=(TARGET,),
            upstreams={"mock": UPSTREAM},
            defaultMaxTokens=4096,
            maxResponseBytes=8 << 20,
            size=1,
            cacheKey="0b7e1c2a-5d7e-4f51-9a43-3c3f0a1e2b44",
        )

    plans: dict[int, Plan] = {}

    def planned(body: dict[str, Any]) -> Plan:
        if id(body) not in plans:
            plans[id(body)] = plan(body)
        return plans[id(body)]

    def translate(body: dict[str, Any]) -> Any:
        return api.translated(planned(body), UPSTREAM, TARGET)

    def encode(body: dict[str, Any]) -> Any:
        return planned(body).bodyFor(UPSTREAM, TARGET)

    sent: dict[int, bytes] = {}

    def post(body: dict[str, Any]) -> Any:
        data = sent.get(id(body))
        if data is None:
            data = sent[id(body)] = encode(body)
        result: list[Any] = []
        d = Deferred.fromCoroutine(client.post(UPSTREAM, data, "key"))
        d.addCallback(result.append)
        wire[-1].dataReceived(HEAD)
        response = result[0]
        done: list[bytes] = []
        Deferred.fromCoroutine(client.readBody(UPSTREAM, response, 8 << 20)).addCallback(
            done.append
        )
        wire[-1].dataReceived(ANSWER)
        assert done == [ANSWER], done
        wire[-1].transport.clear()  # what the socket would have taken
        return response

    def message(body: dict[str, Any]) -> Any:
        return planned(body).rendering.message(UPSTREAM, ANSWER)

    dispatcher = Dispatcher(client, clock, UpstreamState(clock))

    async def dispatching(body: dict[str, Any]) -> Any:
        attempts: list[Any] = []
        async with dispatcher.send(plan(dict(body)), "key", None, attempts) as answer:
            return answer.message

    def dispatch(body: dict[str, Any]) -> Any:
        result: list[Any] = []
        d = Deferred.fromCoroutine(dispatching(body))
        d.addBoth(result.append)
        wire[-1].dataReceived(HEAD)
        wire[-1].dataReceived(ANSWER)
        assert result and result[0]["content"], result
        wire[-1].transport.clear()
        return result[0]

    return {
        "plan": plan,
        "translate": translate,
        "body": encode,
        "post": post,
        "message": message,
        "dispatch": dispatch,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--loops", type=int, default=200, help="requests per body per round")
    ap.add_argument("--profile", help="cProfile this stage instead of timing")
    ap.add_argument("--only", help="comma list of the stages to time [all]")
    ap.add_argument("--gemini", action="store_true", help="an upstream with `schema: gemini`")
    args = ap.parse_args()
    if args.gemini:
        global UPSTREAM
        UPSTREAM = evolve(UPSTREAM, profile=Profile(schema="gemini"))
    decoded = [orjson.loads(b) for b in bodies()]
    stages = _stages(Clock())
    for stage in stages.values():  # warm: memos, the pool's connection, imports
        for body in decoded:
            stage(body)
    settleHeap()  # as the daemon does once started: the bodies are old objects
    if args.profile:
        fn = stages[args.profile]
        profile = cProfile.Profile()
        profile.enable()
        for _ in range(args.loops):
            for body in decoded:
                fn(body)
        profile.disable()
        pstats.Stats(profile).sort_stats("tottime").print_stats(25)
        return
    sizes = [len(b) for b in bodies()]
    print(f"{len(decoded)} bodies, {min(sizes)}-{max(sizes)} bytes; best of {args.rounds}")
    for name, fn in stages.items():
        if args.only and name not in args.only.split(","):
            continue
        best = float("inf")
        for _ in range(args.rounds):
            start = time.perf_counter()
            for _ in range(args.loops):
                for body in decoded:
                    fn(body)
            best = min(best, time.perf_counter() - start)
        print(f"{name:10} {best / (args.loops * len(decoded)) * 1e6:8.1f} us/request")


if __name__ == "__main__":
    main()
