"""Validators for every answer the bench times.

Each validator is fed the decoded response body piece by piece (``feed``), notes
when the first non-empty text arrives (``t_first_text``), and lists what is wrong
at the end (``finish``). Problem kinds are short strings, counted by the bench.

Anthropic answers (through the proxy):

- JSON: a ``message`` from the assistant with the asked model, one text block
  equal to the mock's text, one ``tool_use`` block named Edit whose input equals
  the mock's arguments, ``stop_reason: tool_use``, the mock's token counts.
- SSE: ``event:`` and ``data:`` on every frame with matching names; the grammar
  message_start, then blocks (content_block_start with the next index, deltas
  of the block's own kind, content_block_stop; one block open at a time),
  message_delta, message_stop last; ``ping`` anywhere in between; the text
  rebuilt from ``text_delta``s equal byte for byte to the mock's, the tool input
  rebuilt from ``input_json_delta``s equal to the mock's arguments, text before
  the tool, ``stop_reason: tool_use``, the mock's output token count.

OpenAI answers (the direct baseline, straight from the mock) get the same
checks in their own shape.
"""

from __future__ import annotations

import json
from typing import Any

from bench.payloads import Expect


class Validator:
    t_first_text: float | None = None

    def feed(self, data: bytes, t: float) -> None:
        raise NotImplementedError

    def finish(self) -> list[str]:
        raise NotImplementedError


def _json_args(raw: Any, expect: Expect, problems: list[str]) -> None:
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError:
            problems.append("tool_input_not_json")
            return
    if raw != expect.tool_args:
        problems.append("tool_input_mismatch")


class _Body(Validator):
    def __init__(self, expect: Expect) -> None:
        self.expect = expect
        self.parts: list[bytes] = []

    def feed(self, data: bytes, t: float) -> None:
        self.parts.append(data)
        if self.t_first_text is None:
            self.t_first_text = t

    def _load(self, problems: list[str]) -> Any:
        try:
            return json.loads(b"".join(self.parts))
        except ValueError:
            problems.append("body_not_json")
            return None


class AnthropicJSON(_Body):
    def finish(self) -> list[str]:
        p: list[str] = []
        msg = self._load(p)
        if msg is None:
            return p
        if not isinstance(msg, dict) or msg.get("type") != "message":
            return [*p, "not_a_message"]
        exp = self.expect
        if msg.get("role") != "assistant":
            p.append("role")
        if exp.model and msg.get("model") != exp.model:
            p.append("model_mismatch")
        blocks = msg.get("content")
        if not isinstance(blocks, list):
            return [*p, "content_not_a_list"]
        texts = [b for b in blocks if b.get("type") == "text"]
        tools = [b for b in blocks if b.get("type") == "tool_use"]
        if len(texts) != 1:
            p.append(f"text_blocks_{len(texts)}")
        if "".join(b.get("text", "") for b in texts).encode() != exp.text_bytes:
            p.append("text_mismatch")
        if len(tools) != 1:
            p.append(f"tool_blocks_{len(tools)}")
        if tools:
            t = tools[0]
            if t.get("name") != exp.tool_name:
                p.append("tool_name")
            if not t.get("id"):
                p.append("tool_id_missing")
            _json_args(t.get("input"), exp, p)
            if texts and blocks.index(texts[0]) > blocks.index(t):
                p.append("block_order")
        if msg.get("stop_reason") != "tool_use":
            p.append(f"stop_reason_{msg.get('stop_reason')}")
        usage = msg.get("usage") or {}
        if (
            usage.get("output_tokens") != exp.output_tokens
            or usage.get("input_tokens") != exp.input_tokens
        ):
            p.append("usage_mismatch")
        return p


class OpenAIJSON(_Body):
    def finish(self) -> list[str]:
        p: list[str] = []
        obj = self._load(p)
        if obj is None:
            return p
        try:
            choice = obj["choices"][0]
            msg = choice["message"]
        except (KeyError, IndexError, TypeError):
            return [*p, "not_a_completion"]
        exp = self.expect
        if (msg.get("content") or "").encode() != exp.text_bytes:
            p.append("text_mismatch")
        calls = msg.get("tool_calls") or []
        if len(calls) != 1:
            p.append(f"tool_calls_{len(calls)}")
        if calls:
            fn = calls[0].get("function") or {}
            if fn.get("name") != exp.tool_name:
                p.append("tool_name")
            _json_args(fn.get("arguments"), exp, p)
        if choice.get("finish_reason") != "tool_calls":
            p.append(f"finish_{choice.get('finish_reason')}")
        return p


class _SSE(Validator):
    """SSE framing shared by both shapes: events split on blank lines."""

    def __init__(self, expect: Expect) -> None:
        self.expect = expect
        self.buf = b""
        self.problems: list[str] = []
        self.events = 0

    def feed(self, data: bytes, t: float) -> None:
        buf = self.buf + data
        if b"\r" in buf:
            buf = buf.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        start = 0
        while True:
            end = buf.find(b"\n\n", start)
            if end < 0:
                break
            block = buf[start:end]
            start = end + 2
            if block.strip(b"\n"):
                self._block(block.strip(b"\n"), t)
        self.buf = buf[start:]

    def _block(self, block: bytes, t: float) -> None:
        name = None
        data: list[bytes] = []
        for line in block.split(b"\n"):
            if line.startswith(b"data:"):
                v = line[5:]
                data.append(v[1:] if v.startswith(b" ") else v)
            elif line.startswith(b"event:"):
                v = line[6:]
                name = (v[1:] if v.startswith(b" ") else v).decode("utf-8", "replace")
            elif line.startswith(b":"):
                continue  # comment
            elif line.startswith((b"id:", b"retry:")):
                continue
            else:
                self.problems.append("sse_bad_line")
        if not data:
            if name is not None:
                self.problems.append("sse_event_without_data")
            return
        self.events += 1
        self._event(name, b"\n".join(data), t)

    def _event(self, name: str | None, data: bytes, t: float) -> None:
        raise NotImplementedError

    def _end_problems(self) -> list[str]:
        p = list(dict.fromkeys(self.problems))  # each kind once per answer
        if self.buf.strip():
            p.append("sse_trailing_partial_event")
        return p


class AnthropicSSE(_SSE):
    def __init__(self, expect: Expect) -> None:
        super().__init__(expect)
        self.state = "start"  # start, idle, block, delta, stopped
        self.next_index = 0
        self.open: dict | None = None
        self.blocks: list[dict] = []
        self.stop_reason = None
        self.usage: dict = {}

    def _bad(self, kind: str) -> None:
        self.problems.append(kind)

    def _event(self, name: str | None, data: bytes, t: float) -> None:
        try:
            ev = json.loads(data)
        except ValueError:
            self._bad("sse_data_not_json")
            return
        kind = ev.get("type") if isinstance(ev, dict) else None
        if name is None:
            self._bad("sse_no_event_line")
        elif name != kind:
            self._bad("sse_event_name_mismatch")
        if self.state == "stopped":
            self._bad("event_after_message_stop")
            return
        if kind == "ping":
            if self.state == "start":
                self._bad("ping_before_message_start")
            return
        if kind == "error":
            self._bad("error_event:" + str((ev.get("error") or {}).get("type")))
            return
        if self.state == "start":
            if kind != "message_start":
                self._bad("first_event_not_message_start")
                return
            msg = ev.get("message") or {}
            if (
                msg.get("role") != "assistant"
                or msg.get("type") != "message"
                or msg.get("content") != []
            ):
                self._bad("message_start_shape")
            if self.expect.model and msg.get("model") != self.expect.model:
                self._bad("model_mismatch")
            self.state = "idle"
        elif kind == "content_block_start":
            if self.state != "idle":
                self._bad(
                    "block_start_while_open"
                    if self.state == "block"
                    else "block_after_message_delta"
                )
                return
            if ev.get("index") != self.next_index:
                self._bad("block_index")
            cb = ev.get("content_block") or {}
            self.open = {
                "type": cb.get("type"),
                "name": cb.get("name"),
                "id": cb.get("id"),
                "index": ev.get("index"),
                "parts": [cb.get("text") or ""] if cb.get("type") == "text" else [],
            }
            if cb.get("type") == "tool_use" and cb.get("input") not in ({}, None):
                self._bad("tool_start_input_not_empty")
            self.next_index += 1
            self.state = "block"
        elif kind == "content_block_delta":
            b = self.open
            if self.state != "block" or b is None:
                self._bad("delta_outside_block")
                return
            if ev.get("index") != b["index"]:
                self._bad("delta_index")
            d = ev.get("delta") or {}
            dt = d.get("type")
            if b["type"] == "text" and dt == "text_delta":
                text = d.get("text", "")
                b["parts"].append(text)
                if text and self.t_first_text is None:
                    self.t_first_text = t
            elif b["type"] == "tool_use" and dt == "input_json_delta":
                b["parts"].append(d.get("partial_json", ""))
            elif b["type"] == "thinking" and dt in ("thinking_delta", "signature_delta"):
                pass
            else:
                self._bad("delta_kind_mismatch")
        elif kind == "content_block_stop":
            if self.state != "block" or self.open is None:
                self._bad("stop_outside_block")
                return
            if ev.get("index") != self.open["index"]:
                self._bad("stop_index")
            self.blocks.append(self.open)
            self.open = None
            self.state = "idle"
        elif kind == "message_delta":
            if self.state != "idle":
                self._bad(
                    "message_delta_while_block_open"
                    if self.state == "block"
                    else "message_delta_twice"
                )
            self.stop_reason = (ev.get("delta") or {}).get("stop_reason")
            self.usage = ev.get("usage") or {}
            self.state = "delta"
        elif kind == "message_stop":
            if self.state != "delta":
                self._bad("message_stop_without_message_delta")
            self.state = "stopped"
        else:
            self._bad(f"unknown_event_{kind}")

    def finish(self) -> list[str]:
        p = self._end_problems()
        exp = self.expect
        if self.state != "stopped":
            p.append("no_message_stop")
        texts = [b for b in self.blocks if b["type"] == "text"]
        tools = [b for b in self.blocks if b["type"] == "tool_use"]
        if len(texts) != 1:
            p.append(f"text_blocks_{len(texts)}")
        if "".join("".join(b["parts"]) for b in texts).encode() != exp.text_bytes:
            p.append("text_mismatch")
        if len(tools) != 1:
            p.append(f"tool_blocks_{len(tools)}")
        if tools:
            t = tools[0]
            if t["name"] != exp.tool_name:
                p.append("tool_name")
            if not t["id"]:
                p.append("tool_id_missing")
            _json_args("".join(t["parts"]), exp, p)
            if texts and texts[0]["index"] > t["index"]:
                p.append("block_order")
        if self.state in ("delta", "stopped"):
            if self.stop_reason != "tool_use":
                p.append(f"stop_reason_{self.stop_reason}")
            if self.usage.get("output_tokens") != exp.output_tokens:
                p.append("usage_mismatch")
        return p


class OpenAISSE(_SSE):
    def __init__(self, expect: Expect) -> None:
        super().__init__(expect)
        self.text: list[str] = []
        self.args: list[str] = []
        self.names: set[str] = set()
        self.finish_reason = None
        self.done = False
        self.usage = False

    def _event(self, name: str | None, data: bytes, t: float) -> None:
        if self.done:
            self.problems.append("data_after_done")
            return
        if data == b"[DONE]":
            self.done = True
            return
        try:
            ev = json.loads(data)
        except ValueError:
            self.problems.append("sse_data_not_json")
            return
        if ev.get("usage"):
            self.usage = True
        for ch in ev.get("choices") or ():
            d = ch.get("delta") or {}
            c = d.get("content")
            if c:
                self.text.append(c)
                if self.t_first_text is None:
                    self.t_first_text = t
            for tc in d.get("tool_calls") or ():
                fn = tc.get("function") or {}
                if fn.get("name"):
                    self.names.add(fn["name"])
                self.args.append(fn.get("arguments") or "")
            if ch.get("finish_reason"):
                self.finish_reason = ch["finish_reason"]

    def finish(self) -> list[str]:
        p = self._end_problems()
        exp = self.expect
        if not self.done:
            p.append("no_done")
        if "".join(self.text).encode() != exp.text_bytes:
            p.append("text_mismatch")
        if self.names != {exp.tool_name}:
            p.append("tool_name")
        if "".join(self.args) != exp.tool_args_json:
            p.append("tool_input_mismatch")
        if self.finish_reason != "tool_calls":
            p.append(f"finish_{self.finish_reason}")
        if not self.usage:
            p.append("usage_missing")
        return p


def make(openai: bool, stream: bool, expect: Expect) -> Validator:
    if openai:
        return OpenAISSE(expect) if stream else OpenAIJSON(expect)
    return AnthropicSSE(expect) if stream else AnthropicJSON(expect)
