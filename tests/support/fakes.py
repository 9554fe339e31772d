"""A scripted OpenAI-compatible upstream for tests: it answers what a test queues
and records what it received, including whether its client hung up."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import orjson
from attrs import define, field
from klein import Klein
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.web.iweb import IRequest

Responder = Callable[[IRequest, "FakeOpenAI"], Any]


@define
class Received:
    path: str
    headers: dict[str, str]
    body: Any


@define
class FakeOpenAI:
    """Answers every request with the next queued reply (POST …/chat/completions,
    or any path), and records what it received."""

    clock: IReactorTime | None = None
    replies: list[Responder] = field(factory=list)
    received: list[Received] = field(factory=list)
    disconnected: int = 0
    finished: int = 0
    otherwise: Responder | None = None
    """The reply when none is queued; by default a plain completion saying "hello"."""
    path: bytes = b"/chat/completions"
    """What the path of the API it plays ends with (`/responses`: OpenAI's Responses)."""

    router = Klein()

    def resource(self) -> Any:
        return self.router.resource()

    def queue(self, *replies: Responder) -> FakeOpenAI:
        self.replies.extend(replies)
        return self

    @router.route("/", branch=True, methods=["POST", "GET"])
    def anything(self, request: IRequest) -> Any:
        raw = request.content.read()
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            body = raw
        self.received.append(
            Received(
                path=request.uri.decode(),
                headers={
                    k.decode().lower(): v[-1].decode()
                    for k, v in request.requestHeaders.getAllRawHeaders()
                },
                body=body,
            )
        )
        request.notifyFinish().addCallbacks(self._finished, self._disconnected)
        if self.replies:
            reply = self.replies.pop(0)
        else:
            reply = self.otherwise or jsonReply(completion("hello"))
        return reply(request, self)

    def _finished(self, _: object) -> None:
        self.finished += 1

    def _disconnected(self, _: object) -> None:
        self.disconnected += 1

    @property
    def last(self) -> Any:
        return self.received[-1].body


def completion(
    text: str | None = None,
    toolCalls: Sequence[dict[str, Any]] = (),
    finish: str | None = "stop",
    usage: dict[str, Any] | None = None,
    **message: Any,
) -> dict[str, Any]:
    msg: dict[str, Any] = {"role": "assistant", "content": text, **message}
    if toolCalls:
        msg["tool_calls"] = list(toolCalls)
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "up-model",
        "choices": [{"index": 0, "message": msg, "finish_reason": finish}],
        "usage": usage
        if usage is not None
        else {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18},
    }


def toolCall(name: str, arguments: Any, callId: str | None = "call_1") -> dict[str, Any]:
    call: dict[str, Any] = {"type": "function", "function": {"name": name, "arguments": arguments}}
    if callId is not None:
        call["id"] = callId
    return call


def jsonReply(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Responder:
    def reply(request: IRequest, fake: FakeOpenAI) -> bytes:
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"application/json")
        for k, v in (headers or {}).items():
            request.setHeader(k.encode(), v.encode())
        return body if isinstance(body, bytes) else orjson.dumps(body)

    return reply


def rawReply(body: bytes, status: int = 200, contentType: str = "text/plain") -> Responder:
    def reply(request: IRequest, fake: FakeOpenAI) -> bytes:
        request.setResponseCode(status)
        request.setHeader(b"content-type", contentType.encode())
        return body

    return reply


def stallReply() -> Responder:
    """Never answers: the proxy's timeout or its client's disconnect must end it."""

    def reply(request: IRequest, fake: FakeOpenAI) -> Any:
        return Deferred()

    return reply


def sseReply(
    events: Sequence[Any],
    delay: float = 0.0,
    done: bool = True,
    status: int = 200,
    close: bool = True,
) -> Responder:
    """Streams `events` (dicts become `data: {json}` frames; bytes go as they are),
    then `data: [DONE]`. With a `delay`, the headers go at once and each frame
    `delay` seconds after the one before, on the fake's clock."""

    def reply(request: IRequest, fake: FakeOpenAI) -> Any:
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"text/event-stream")
        frames = [
            e if isinstance(e, bytes) else b"data: " + orjson.dumps(e) + b"\n\n" for e in events
        ]
        if done:
            frames.append(b"data: [DONE]\n\n")
        # Klein finishes the response when the returned Deferred fires.
        finished: Deferred[None] = Deferred()
        if delay == 0 or fake.clock is None:
            for frame in frames:
                request.write(frame)
            if close:
                finished.callback(None)
            return finished
        state = {"gone": False}
        request.notifyFinish().addErrback(lambda _: state.update(gone=True))
        request.write(b": stream open\n\n")  # the status and headers go out now

        def send(i: int) -> None:
            if state["gone"]:
                return
            request.write(frames[i])
            if i + 1 < len(frames):
                fake.clock.callLater(delay, send, i + 1)
            elif close:
                finished.callback(None)

        fake.clock.callLater(delay, send, 0)
        return finished

    return reply


def lateReply(delay: float, reply: Responder) -> Responder:
    """`reply`, headers and all, only after `delay` seconds on the fake's clock: a
    gateway (LiteLLM) that sends nothing until its model's first token, or that
    takes its time to refuse. A client that leaves first cancels it."""

    def late(request: IRequest, fake: FakeOpenAI) -> Any:
        assert fake.clock is not None, "a late reply needs the fake's clock"

        def answer() -> None:
            result = reply(request, fake)
            if isinstance(result, Deferred):
                result.chainDeferred(answered)
            else:
                answered.callback(result)

        call = fake.clock.callLater(delay, answer)
        answered: Deferred[Any] = Deferred(lambda _: call.cancel() if call.active() else None)
        return answered

    return late
