"""A scripted OpenAI-compatible upstream, run as a subprocess by test_claude_code.py
and test_daemon.py (with `Processes.scriptedUpstream` of tests/support/processes.py).

    python tests/support/scripted_upstream.py --port-file PATH --log PATH \\
        [--file /abs/path/notes.txt] [--answer TEXT]

It listens on 127.0.0.1 on a port the OS picks and writes that port to --port-file
(atomically) once it is listening. Every request body is appended to --log as one
JSON line (`{"path": …, "body": …}`). Answers to POST …/chat/completions:

- a request holding a `role: "tool"` message: --answer as text;
- otherwise, a request offering the `Read` tool (Claude Code's main loop): a call of
  Read with `file_path` = --file, its arguments split into several fragments,
  `finish_reason: "tool_calls"`;
- anything else (titles, background work): a short plain text.

Streamed requests get SSE chunks (with a usage chunk and `data: [DONE]`), others
one JSON completion. It is `tests.support.fakes.FakeOpenAI` on a real port, with
this script as the reply when none is queued.

With `--overflow-wording SERVER --overflow-over CHARS` it plays a model with a small
context window instead: any request whose tool results hold more than CHARS
characters is refused (400) with SERVER's words for a context overflow (from
tests/support/overflow_wordings.py); a request to summarize the conversation (Claude
Code compacting) gets a `<summary>` holding SUMMARY_MARK; a request after that
summary gets --answer; the main loop otherwise keeps calling Read on --file, so the
conversation grows until it is refused. With `--overflow-in-stream` the refusal comes
inside a 200 stream, after a first chunk (as llama-server sends it).
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
from twisted.web.iweb import IRequest
from twisted.web.server import Site

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.support.fakes import FakeOpenAI, completion, jsonReply, rawReply, sseReply, toolCall
from tests.support.overflow_wordings import BY_SERVER

CALL_ID = "call_read_1"
SUMMARY_MARK = "SUMMARY-OF-THE-READS"
SUMMARIZE = "create a detailed summary"
USAGE = {"prompt_tokens": 120, "completion_tokens": 12, "total_tokens": 132}


def chunk(delta: dict[str, Any] | None = None, finish: str | None = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-scripted",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "scripted-model",
        "choices": [{"index": 0, "delta": delta or {}, "finish_reason": finish}],
    }


def usageChunk(usage: dict[str, int] = USAGE) -> dict[str, Any]:
    return {
        "id": "chatcmpl-scripted",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "scripted-model",
        "choices": [],
        "usage": usage,
    }


def fragments(text: str, parts: int) -> list[str]:
    size = max(1, -(-len(text) // parts))
    return [text[i : i + size] for i in range(0, len(text), size)]


def toolCallChunks(
    arguments: str, callId: str = CALL_ID, usage: dict[str, int] = USAGE
) -> list[dict[str, Any]]:
    pieces = fragments(arguments, 4)
    first = {
        "index": 0,
        "id": callId,
        "type": "function",
        "function": {"name": "Read", "arguments": ""},
    }
    events = [chunk({"role": "assistant", "content": None, "tool_calls": [first]})]
    events += [chunk({"tool_calls": [{"index": 0, "function": {"arguments": p}}]}) for p in pieces]
    events += [chunk(finish="tool_calls"), usageChunk(usage)]
    return events


def textChunks(text: str, usage: dict[str, int] = USAGE) -> list[dict[str, Any]]:
    events = [chunk({"role": "assistant", "content": ""})]
    events += [chunk({"content": p}) for p in fragments(text, 3)]
    events += [chunk(finish="stop"), usageChunk(usage)]
    return events


def offersRead(body: dict[str, Any]) -> bool:
    return any(
        (t.get("function") or {}).get("name") == "Read"
        for t in body.get("tools") or []
        if isinstance(t, dict)
    )


def hasToolMessage(body: dict[str, Any]) -> bool:
    return any(isinstance(m, dict) and m.get("role") == "tool" for m in body.get("messages") or [])


def texts(body: dict[str, Any], role: str | None = None) -> list[str]:
    """The text of each message (of `role`, when given)."""
    found = []
    for m in body.get("messages") or []:
        if not isinstance(m, dict) or (role is not None and m.get("role") != role):
            continue
        content = m.get("content")
        if isinstance(content, list):
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        found.append(str(content or ""))
    return found


def promptUsage(body: dict[str, Any]) -> dict[str, int]:
    """Usage that grows with the prompt (about 4 characters a token), as a real
    model's does: Claude Code's own compaction keys on it."""
    prompt = len(orjson.dumps(body.get("messages"))) // 4
    return {"prompt_tokens": prompt, "completion_tokens": 12, "total_tokens": prompt + 12}


@define
class Overflowing:
    """A model with a small window: `over` characters of tool results are too many."""

    wording: str
    over: int
    inStream: bool = False
    """Refuse inside a 200 stream (as llama-server does once it has begun) instead."""

    def reply(self, body: dict[str, Any], readPath: str, answer: str) -> Any:
        if sum(len(t) for t in texts(body, "tool")) > self.over:
            refusal = BY_SERVER[self.wording][1]
            if self.inStream and body.get("stream"):
                error = orjson.loads(refusal)
                error = error[0] if isinstance(error, list) else error
                return sseReply([chunk({"role": "assistant", "content": ""}), error], done=False)
            return rawReply(refusal.encode(), 400, "application/json")
        everything = "\n".join(texts(body))
        if SUMMARIZE in everything.lower() and SUMMARY_MARK not in everything:
            return f"<summary>{SUMMARY_MARK}: the file was read several times.</summary>"
        if SUMMARY_MARK in everything:
            return answer
        if offersRead(body):
            reads = len(texts(body, "tool"))
            arguments = orjson.dumps({"file_path": readPath}).decode()
            events = toolCallChunks(arguments, f"call_read_{reads + 1}", promptUsage(body))
            return sseReply(events, delay=0.01)
        return "Scripted reply."


@define
class Script:
    """The scripted answers, as the reply of a `FakeOpenAI` that has none queued."""

    readPath: str
    answer: str
    log: IO[bytes]
    overflowing: Overflowing | None = None

    def __call__(self, request: IRequest, fake: FakeOpenAI) -> Any:
        body = fake.last
        logged = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
        self.log.write(orjson.dumps({"path": request.uri.decode(), "body": logged}) + b"\n")
        self.log.flush()
        if not isinstance(body, dict) or not request.path.endswith(b"/chat/completions"):
            return jsonReply({"error": {"message": "scripted upstream: not found"}}, status=404)(
                request, fake
            )
        stream = bool(body.get("stream"))
        if self.overflowing is not None:
            said = self.overflowing.reply(body, self.readPath, self.answer)
            if not isinstance(said, str):
                return said(request, fake)
            if stream:
                return sseReply(textChunks(said), delay=0.01)(request, fake)
            return jsonReply(completion(said, usage=USAGE))(request, fake)
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port-file", required=True, type=Path)
    parser.add_argument("--log", required=True, type=Path)
    parser.add_argument("--file", default=str(Path("notes.txt").resolve()))
    parser.add_argument("--answer", default="The secret word is PERIWINKLE.")
    parser.add_argument("--overflow-wording", choices=sorted(BY_SERVER))
    parser.add_argument("--overflow-over", type=int, default=60000)
    parser.add_argument("--overflow-in-stream", action="store_true")
    args = parser.parse_args(argv)
    overflowing = None
    if args.overflow_wording:
        overflowing = Overflowing(
            args.overflow_wording, args.overflow_over, args.overflow_in_stream
        )
    with args.log.open("ab") as log:
        script = Script(args.file, args.answer, log, overflowing)
        upstream = FakeOpenAI(clock=reactor, otherwise=script)
        port = reactor.listenTCP(0, Site(upstream.resource()), interface="127.0.0.1")
        tmp = args.port_file.with_name(args.port_file.name + ".tmp")
        tmp.write_text(str(port.getHost().port))
        os.replace(tmp, args.port_file)
        reactor.run()


if __name__ == "__main__":
    main()
