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

With --tool-search (Claude Code's tool search, test_claude_code.py), instead:

- a request whose last tool message holds --answer-after (the deferred tool's
  result): --answer as text;
- one whose tool messages say a tool "is now available to call" (ccproxy's reading
  of the `tool_reference` blocks Claude Code's ToolSearch answers with): a call of
  that tool (the first offered whose name ends with --tool-search) with
  --tool-input;
- one offering Claude Code's `ToolSearch`: a call of it, with --tool-search as query.

Streamed requests get SSE chunks (with a usage chunk and `data: [DONE]`), others
one JSON completion. With --hold-file, a stream's status and headers go at once but
its first chunk only once that file exists: a model slow to start (a gateway in
front of it, such as LiteLLM, then sends no headers of its own until then). It is
`tests.support.fakes.FakeOpenAI` on a real port, with this script as the reply
when none is queued.

With `--api responses` it plays an OpenAI Responses API upstream instead (POST
…/responses; `ResponsesScript`): the same Read-then-answer script, as Responses
events with `event:` names and no `[DONE]` (whole `response` objects when not
streamed). Its Read turn opens with a reasoning item (a summary and
`encrypted_content` REASONING_SECRET); the answer after the tool's result says
whether that reasoning item came back (`reasoning kept` / `reasoning LOST`).

With --anthropic it speaks the Anthropic Messages API instead (an `api: messages`
upstream): POST …/messages answers as above (a streamed `tool_use` of Read whose
`input_json_delta`s split its input, then --answer once a `tool_result` came
back, other requests a short text), as Anthropic SSE events or one JSON message;
POST …/messages/count_tokens answers `{"input_tokens": …}`. Each logged line
also holds the request's `anthropic-beta` and `anthropic-version` headers.

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
from attrs import define, field
from twisted.internet import reactor
from twisted.internet.defer import Deferred
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
    arguments: str, name: str = "Read", callId: str = CALL_ID, usage: dict[str, int] = USAGE
) -> list[dict[str, Any]]:
    pieces = fragments(arguments, 4)
    first = {
        "index": 0,
        "id": callId,
        "type": "function",
        "function": {"name": name, "arguments": ""},
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


NOT_FOUND = jsonReply({"error": {"message": "scripted upstream: not found"}}, status=404)


def logged(log: IO[bytes], request: IRequest, fake: FakeOpenAI) -> dict[str, Any] | None:
    """Log the request's body; the body, or None when it is no chat completion."""
    body = fake.last
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    log.write(orjson.dumps({"path": request.uri.decode(), "body": text}) + b"\n")
    log.flush()
    if not isinstance(body, dict) or not request.path.endswith(fake.path):
        return None
    return body


@define
class Logged:
    """A reply of a `FakeOpenAI` that has none queued: each request logged, then
    answered by `reply` (a chat completion) or 404; with `hold`, a stream's answer
    waits for that file."""

    log: IO[bytes]
    hold: Path | None = field(default=None, kw_only=True)

    def __call__(self, request: IRequest, fake: FakeOpenAI) -> Any:
        body = logged(self.log, request, fake)
        if body is None:
            return NOT_FOUND(request, fake)
        if body.get("stream") and self.hold is not None and not self.hold.exists():
            return self.held(body, request, fake)
        return self.reply(body, request, fake)

    def reply(self, body: dict[str, Any], request: IRequest, fake: FakeOpenAI) -> Any:
        raise NotImplementedError

    def held(self, body: dict[str, Any], request: IRequest, fake: FakeOpenAI) -> Any:
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
            result = self.reply(body, request, fake)
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


@define
class Script(Logged):
    """The scripted answers (Read, then --answer)."""

    readPath: str
    answer: str

    def reply(self, body: dict[str, Any], request: IRequest, fake: FakeOpenAI) -> Any:
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


def toolTexts(body: dict[str, Any]) -> list[str]:
    """The text of each tool message, in order."""
    texts = []
    for message in body.get("messages") or []:
        if isinstance(message, dict) and message.get("role") == "tool":
            content = message.get("content")
            if isinstance(content, list):
                content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
            texts.append(str(content))
    return texts


def offered(body: dict[str, Any]) -> list[str]:
    return [
        (t.get("function") or {}).get("name", "")
        for t in body.get("tools") or []
        if isinstance(t, dict)
    ]


@define
class ToolSearchScript(Logged):
    """Claude Code's tool search: ToolSearch, then the tool it found, then text."""

    wanted: str
    """The end of the deferred tool's name, and the query of the search."""
    toolInput: str
    resultHolds: str
    answer: str

    def reply(self, body: dict[str, Any], request: IRequest, fake: FakeOpenAI) -> Any:
        texts = toolTexts(body)
        found = [n for n in offered(body) if n.endswith(self.wanted)]
        if texts and self.resultHolds in texts[-1]:
            return sseReply(textChunks(self.answer), delay=0.01)(request, fake)
        if found and any("is now available to call" in t for t in texts):
            chunks = toolCallChunks(self.toolInput, found[0], "call_found_1")
            return sseReply(chunks, delay=0.01)(request, fake)
        if "ToolSearch" in offered(body):
            query = orjson.dumps({"query": self.wanted.replace("_", " "), "max_results": 5})
            chunks = toolCallChunks(query.decode(), "ToolSearch", "call_search_1")
            return sseReply(chunks, delay=0.01)(request, fake)
        return sseReply(textChunks("Scripted reply."), delay=0.01)(request, fake)


def messageTexts(body: dict[str, Any], role: str | None = None) -> list[str]:
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
class OverflowScript(Logged):
    """A model with a small window: `over` characters of tool results are too many,
    refused in `wording`'s words (inside a 200 stream with `inStream`, as
    llama-server does once it has begun); Read again and again until then."""

    readPath: str
    answer: str
    wording: str
    over: int
    inStream: bool = False

    def reply(self, body: dict[str, Any], request: IRequest, fake: FakeOpenAI) -> Any:
        said = self.said(body)
        if not isinstance(said, str):
            return said(request, fake)
        if body.get("stream"):
            return sseReply(textChunks(said), delay=0.01)(request, fake)
        return jsonReply(completion(said, usage=USAGE))(request, fake)

    def said(self, body: dict[str, Any]) -> Any:
        """The text to answer, or a reply of its own (a refusal, a call of Read)."""
        if sum(len(t) for t in messageTexts(body, "tool")) > self.over:
            refusal = BY_SERVER[self.wording][1]
            if self.inStream and body.get("stream"):
                error = orjson.loads(refusal)
                error = error[0] if isinstance(error, list) else error
                return sseReply([chunk({"role": "assistant", "content": ""}), error], done=False)
            return rawReply(refusal.encode(), 400, "application/json")
        everything = "\n".join(messageTexts(body))
        if SUMMARIZE in everything.lower() and SUMMARY_MARK not in everything:
            return f"<summary>{SUMMARY_MARK}: the file was read several times.</summary>"
        if SUMMARY_MARK in everything:
            return self.answer
        if offersRead(body):
            reads = len(messageTexts(body, "tool"))
            arguments = orjson.dumps({"file_path": self.readPath}).decode()
            calls = toolCallChunks(
                arguments, callId=f"call_read_{reads + 1}", usage=promptUsage(body)
            )
            return sseReply(calls, delay=0.01)
        return "Scripted reply."


REASONING_SECRET = "gAAAAB-scripted-encrypted-reasoning"


def responsesFrames(items: list[dict[str, Any]], deltas: bool = True) -> list[bytes]:
    """A Responses stream of the output `items`, as OpenAI sends it: `event:` lines,
    each item added, its deltas in fragments, done; then `response.completed`."""
    events: list[dict[str, Any]] = [
        {"type": "response.created", "response": {"id": "resp_1", "status": "in_progress"}}
    ]
    for index, item in enumerate(items):
        kind = item["type"]
        added = {**item, "arguments": ""} if kind == "function_call" else {"type": kind}
        events.append({"type": "response.output_item.added", "output_index": index, "item": added})
        where = {"output_index": index, "item_id": item.get("id", f"item_{index}")}
        if kind == "message" and deltas:
            for piece in fragments(item["content"][0]["text"], 3):
                events.append({"type": "response.output_text.delta", **where, "delta": piece})
        elif kind == "reasoning" and deltas:
            for part, summary in enumerate(item["summary"]):
                for piece in fragments(summary["text"], 2):
                    delta = {"summary_index": part, "delta": piece}
                    events.append(
                        {"type": "response.reasoning_summary_text.delta", **where, **delta}
                    )
        elif kind == "function_call" and deltas:
            for piece in fragments(item["arguments"], 4):
                events.append(
                    {"type": "response.function_call_arguments.delta", **where, "delta": piece}
                )
        events.append({"type": "response.output_item.done", "output_index": index, "item": item})
    events.append({"type": "response.completed", "response": responseObject(items)})
    return [
        b"event: " + e["type"].encode() + b"\ndata: " + orjson.dumps(
            {**e, "sequence_number": n}
        ) + b"\n\n"
        for n, e in enumerate(events)
    ]  # fmt: skip


def responseObject(items: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "id": "resp_1",
        "object": "response",
        "status": "completed",
        "error": None,
        "output": items,
        "usage": {
            "input_tokens": 120,
            "input_tokens_details": {"cached_tokens": 100},
            "output_tokens": 12,
            "total_tokens": 132,
        },
    }


def outputText(text: str) -> dict[str, Any]:
    content = [{"type": "output_text", "text": text, "annotations": []}]
    return {"type": "message", "id": "msg_1", "role": "assistant", "content": content}


@define
class ResponsesScript(Logged):
    """The scripted answers (a reasoning item and a call of Read, then --answer and
    whether the reasoning came back) as an OpenAI Responses API upstream."""

    readPath: str
    answer: str

    def reply(self, body: dict[str, Any], request: IRequest, fake: FakeOpenAI) -> Any:
        items = [i for i in body.get("input") or [] if isinstance(i, dict)]
        tools = [t.get("name") for t in body.get("tools") or [] if isinstance(t, dict)]
        if any(i.get("type") == "function_call_output" for i in items):
            kept = any(i.get("encrypted_content") == REASONING_SECRET for i in items)
            output = [outputText(f"{self.answer} (reasoning {'kept' if kept else 'LOST'})")]
        elif "Read" in tools:
            arguments = orjson.dumps({"file_path": self.readPath}).decode()
            output = [
                {
                    "type": "reasoning",
                    "id": "rs_1",
                    "summary": [{"type": "summary_text", "text": "I should read the file."}],
                    "encrypted_content": REASONING_SECRET,
                },
                {
                    "type": "function_call",
                    "id": "fc_1",
                    "call_id": CALL_ID,
                    "name": "Read",
                    "arguments": arguments,
                    "status": "completed",
                },
            ]
        else:
            output = [outputText("Scripted reply.")]
        if body.get("stream"):
            return sseReply(responsesFrames(output), delay=0.01, done=False)(request, fake)
        return jsonReply(responseObject(output))(request, fake)


ANTHROPIC_USAGE = {"input_tokens": 120, "output_tokens": 12, "cache_read_input_tokens": 0}


def anthropicFrame(event: dict[str, Any]) -> bytes:
    return b"event: " + event["type"].encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"


def anthropicEvents(block: dict[str, Any], stop: str) -> list[bytes]:
    """One content block as Anthropic's event stream, its text or input in pieces."""
    start = {
        "id": "msg_scripted",
        "type": "message",
        "role": "assistant",
        "model": "scripted-model",
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {**ANTHROPIC_USAGE, "output_tokens": 1},
    }
    if block["type"] == "tool_use":
        opening = {**block, "input": {}}
        deltas = [
            {"type": "input_json_delta", "partial_json": p}
            for p in fragments(orjson.dumps(block["input"]).decode(), 4)
        ]
    else:
        opening = {"type": "text", "text": ""}
        deltas = [{"type": "text_delta", "text": p} for p in fragments(block["text"], 3)]
    events: list[dict[str, Any]] = [
        {"type": "message_start", "message": start},
        {"type": "content_block_start", "index": 0, "content_block": opening},
        {"type": "ping"},
        *({"type": "content_block_delta", "index": 0, "delta": d} for d in deltas),
        {"type": "content_block_stop", "index": 0},
        {
            "type": "message_delta",
            "delta": {"stop_reason": stop, "stop_sequence": None},
            "usage": {"output_tokens": ANTHROPIC_USAGE["output_tokens"]},
        },
        {"type": "message_stop"},
    ]
    return [anthropicFrame(e) for e in events]


def hasToolResult(body: dict[str, Any]) -> bool:
    return any(
        isinstance(part, dict) and part.get("type") == "tool_result"
        for message in body.get("messages") or []
        if isinstance(message, dict) and isinstance(message.get("content"), list)
        for part in message["content"]
    )


@define
class AnthropicScript:
    """The scripted answers (Read, then --answer) in the Messages API's own words."""

    log: IO[bytes]
    readPath: str
    answer: str

    def __call__(self, request: IRequest, fake: FakeOpenAI) -> Any:
        body = fake.last
        headers = fake.received[-1].headers
        record = {
            "path": request.uri.decode(),
            "body": body if isinstance(body, dict) else repr(body),
            "anthropic-beta": headers.get("anthropic-beta"),
            "anthropic-version": headers.get("anthropic-version"),
        }
        self.log.write(orjson.dumps(record) + b"\n")
        self.log.flush()
        if not isinstance(body, dict):
            return NOT_FOUND(request, fake)
        if request.path.endswith(b"/messages/count_tokens"):
            counted = len(orjson.dumps(body.get("messages"))) // 4
            return jsonReply({"input_tokens": counted})(request, fake)
        if not request.path.endswith(b"/messages"):
            return NOT_FOUND(request, fake)
        offersRead = any(
            isinstance(t, dict) and t.get("name") == "Read" for t in body.get("tools") or []
        )
        if hasToolResult(body):
            block: dict[str, Any] = {"type": "text", "text": self.answer}
        elif offersRead:
            block = {
                "type": "tool_use",
                "id": "toolu_scripted_1",
                "name": "Read",
                "input": {"file_path": self.readPath},
            }
        else:
            block = {"type": "text", "text": "Scripted reply."}
        stop = "tool_use" if block["type"] == "tool_use" else "end_turn"
        if body.get("stream"):
            return sseReply(anthropicEvents(block, stop), delay=0.01, done=False)(request, fake)
        message = {
            "id": "msg_scripted",
            "type": "message",
            "role": "assistant",
            "model": "scripted-model",
            "content": [block],
            "stop_reason": stop,
            "stop_sequence": None,
            "usage": ANTHROPIC_USAGE,
        }
        return jsonReply(message)(request, fake)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port-file", required=True, type=Path)
    parser.add_argument("--log", required=True, type=Path)
    parser.add_argument("--file", default=str(Path("notes.txt").resolve()))
    parser.add_argument("--answer", default="The secret word is PERIWINKLE.")
    parser.add_argument("--tool-search", default=None)
    parser.add_argument("--tool-input", default="{}")
    parser.add_argument("--answer-after", default="")
    parser.add_argument("--hold-file", type=Path, default=None)
    parser.add_argument("--overflow-wording", choices=sorted(BY_SERVER))
    parser.add_argument("--overflow-over", type=int, default=60000)
    parser.add_argument("--overflow-in-stream", action="store_true")
    parser.add_argument("--api", choices=["chat", "responses"], default="chat")
    parser.add_argument("--anthropic", action="store_true")
    args = parser.parse_args(argv)
    with args.log.open("ab") as log:
        script: Logged = Script(log, args.file, args.answer, hold=args.hold_file)
        if args.api == "responses":
            script = ResponsesScript(log, args.file, args.answer)
        if args.tool_search:
            script = ToolSearchScript(
                log, args.tool_search, args.tool_input, args.answer_after, args.answer
            )
        if args.overflow_wording:
            script = OverflowScript(
                log,
                args.file,
                args.answer,
                args.overflow_wording,
                args.overflow_over,
                args.overflow_in_stream,
            )
        if args.anthropic:
            script = AnthropicScript(log, args.file, args.answer)  # type: ignore[assignment]
        path = b"/responses" if args.api == "responses" else b"/chat/completions"
        upstream = FakeOpenAI(clock=reactor, otherwise=script, path=path)
        port = reactor.listenTCP(0, Site(upstream.resource()), interface="127.0.0.1")
        tmp = args.port_file.with_name(args.port_file.name + ".tmp")
        tmp.write_text(str(port.getHost().port))
        os.replace(tmp, args.port_file)
        reactor.run()


if __name__ == "__main__":
    main()
