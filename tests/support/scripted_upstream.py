"""A scripted OpenAI-compatible upstream, run as a subprocess by test_claude_code.py
and test_daemon.py (with `Processes.scriptedUpstream` of tests/support/processes.py).

    python tests/support/scripted_upstream.py --port-file PATH --log PATH \\
        [--file /abs/path/notes.txt] [--answer TEXT] [--hold-file PATH]

It listens on 127.0.0.1 on a port the OS picks and writes that port to --port-file
(atomically) once it is listening. Every request body is appended to --log as one
JSON line (`{"path": …, "body": …}`). Answers to POST …/chat/completions:

- a request holding a `role: "tool"` message: --answer as text;
- otherwise, a request offering the `Read` tool (Claude Code's main loop): a call of
  Read with `file_path` = --file, its arguments split into several fragments,
  `finish_reason: "tool_calls"`;
- anything else (titles, background work): a short plain text.

Streamed requests get SSE chunks (with a usage chunk and `data: [DONE]`), others
one JSON completion. With --hold-file, a stream's status and headers go at once but
its first chunk only once that file exists: a model slow to start (a gateway in
front of it, such as LiteLLM, then sends no headers of its own until then). It is
`tests.support.fakes.FakeOpenAI` on a real port, with this script as the reply
when none is queued.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import IO, Any

import orjson
from attrs import define
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.web.iweb import IRequest
from twisted.web.server import Site

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.support.fakes import FakeOpenAI, completion, jsonReply, sseReply, toolCall

CALL_ID = "call_read_1"
USAGE = {"prompt_tokens": 120, "completion_tokens": 12, "total_tokens": 132}


def chunk(delta: dict[str, Any] | None = None, finish: str | None = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-scripted",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "scripted-model",
        "choices": [{"index": 0, "delta": delta or {}, "finish_reason": finish}],
    }


def usageChunk() -> dict[str, Any]:
    return {
        "id": "chatcmpl-scripted",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "scripted-model",
        "choices": [],
        "usage": USAGE,
    }


def fragments(text: str, parts: int) -> list[str]:
    size = max(1, -(-len(text) // parts))
    return [text[i : i + size] for i in range(0, len(text), size)]


def toolCallChunks(arguments: str) -> list[dict[str, Any]]:
    pieces = fragments(arguments, 4)
    first = {
        "index": 0,
        "id": CALL_ID,
        "type": "function",
        "function": {"name": "Read", "arguments": ""},
    }
    events = [chunk({"role": "assistant", "content": None, "tool_calls": [first]})]
    events += [chunk({"tool_calls": [{"index": 0, "function": {"arguments": p}}]}) for p in pieces]
    events += [chunk(finish="tool_calls"), usageChunk()]
    return events


def textChunks(text: str) -> list[dict[str, Any]]:
    events = [chunk({"role": "assistant", "content": ""})]
    events += [chunk({"content": p}) for p in fragments(text, 3)]
    events += [chunk(finish="stop"), usageChunk()]
    return events


def offersRead(body: dict[str, Any]) -> bool:
    return any(
        (t.get("function") or {}).get("name") == "Read"
        for t in body.get("tools") or []
        if isinstance(t, dict)
    )


def hasToolMessage(body: dict[str, Any]) -> bool:
    return any(isinstance(m, dict) and m.get("role") == "tool" for m in body.get("messages") or [])


@define
class Script:
    """The scripted answers, as the reply of a `FakeOpenAI` that has none queued."""

    readPath: str
    answer: str
    log: IO[bytes]
    hold: Path | None = None

    def __call__(self, request: IRequest, fake: FakeOpenAI) -> Any:
        body = fake.last
        logged = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
        self.log.write(orjson.dumps({"path": request.uri.decode(), "body": logged}) + b"\n")
        self.log.flush()
        if not isinstance(body, dict) or not request.path.endswith(b"/chat/completions"):
            return jsonReply({"error": {"message": "scripted upstream: not found"}}, status=404)(
                request, fake
            )
        if body.get("stream") and self.hold is not None and not self.hold.exists():
            return self.held(request, fake, body)
        return self.reply(request, fake, body)

    def reply(self, request: IRequest, fake: FakeOpenAI, body: dict[str, Any]) -> Any:
        stream = bool(body.get("stream"))
        if hasToolMessage(body):
            text = self.answer
        elif offersRead(body):
            arguments = orjson.dumps({"file_path": self.readPath}).decode()
            if stream:
                return sseReply(toolCallChunks(arguments), delay=0.01)(request, fake)
            return jsonReply(
                completion(None, [toolCall("Read", arguments, CALL_ID)], finish="tool_calls")
            )(request, fake)
        else:
            text = "Scripted reply."
        if stream:
            return sseReply(textChunks(text), delay=0.01)(request, fake)
        return jsonReply(completion(text, usage=USAGE))(request, fake)

    def held(self, request: IRequest, fake: FakeOpenAI, body: dict[str, Any]) -> Any:
        """The head now, the answer once the hold file exists (looked for every 50
        ms); a client that leaves first cancels it."""
        request.setResponseCode(200)
        request.setHeader(b"content-type", b"text/event-stream")
        request.write(b": held\n\n")
        polling: dict[str, Any] = {"call": None}

        def poll() -> None:
            if self.hold is not None and not self.hold.exists():
                polling["call"] = reactor.callLater(0.05, poll)
                return
            result = self.reply(request, fake, body)
            if isinstance(result, Deferred):
                result.chainDeferred(answered)
            else:
                answered.callback(result)

        def cancel(_: Deferred[Any]) -> None:
            call = polling["call"]
            if call is not None and call.active():
                call.cancel()

        answered: Deferred[Any] = Deferred(cancel)
        poll()
        return answered


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port-file", required=True, type=Path)
    parser.add_argument("--log", required=True, type=Path)
    parser.add_argument("--file", default=str(Path("notes.txt").resolve()))
    parser.add_argument("--answer", default="The secret word is PERIWINKLE.")
    parser.add_argument("--hold-file", type=Path, default=None)
    args = parser.parse_args(argv)
    with args.log.open("ab") as log:
        script = Script(args.file, args.answer, log, args.hold_file)
        upstream = FakeOpenAI(clock=reactor, otherwise=script)
        port = reactor.listenTCP(0, Site(upstream.resource()), interface="127.0.0.1")
        tmp = args.port_file.with_name(args.port_file.name + ".tmp")
        tmp.write_text(str(port.getHost().port))
        os.replace(tmp, args.port_file)
        reactor.run()


if __name__ == "__main__":
    main()
