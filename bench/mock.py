"""A mock OpenAI-compatible upstream: stdlib asyncio, HTTP/1.1 with keep-alive.

    python -m bench.mock --port 18080 [--host 127.0.0.1]

``POST <prefix>/v1/chat/completions`` answers with fixed content (bench/payloads.py):

- without ``"stream": true`` in the body: the JSON completion (one tool call);
- with it: the ~57 KB SSE stream, chunked, written at once;
- ``POST <prefix>/v1/responses`` with ``"stream": true``: the same answer as an
  OpenAI Responses stream (``api: responses``), written at once;
- under a ``/drip/RATE/SECONDS`` prefix, the stream is sent one frame every
  1/RATE s, RATE*SECONDS frames in all (same structure, fewer text deltas).

A ``/direct`` prefix marks the bench's baseline requests (sent straight here,
bypassing the proxy): those are not checked. Other requests come from the proxy
and a sample of them (the first 20 of each kind, then one in 25) is parsed and
checked as an OpenAI chat request (model, a leading system message, 15 function
tools, tool messages answering the calls, a token limit); every request is
checked for leaked Anthropic headers. Problems are counted by kind. ``--no-check``
checks nothing (bench/heavy.py's mock for 30 MiB bodies).

``POST <prefix>/v1/messages`` answers the same content in Anthropic's shape (one
JSON message, or its event stream), for the passthrough runs (`api: messages`).

``GET /__stats`` returns the counters as JSON; ``GET /v1/models`` lists the model.
Listens on loopback unless told otherwise. Uses uvloop when importable.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import time
from collections import Counter

from bench import payloads

_STREAM_TRUE = re.compile(rb'"stream"\s*:\s*true')
_MAX_HEAD = 64 * 1024


class Stats:
    def __init__(self) -> None:
        self.requests = 0
        self.json = 0
        self.streams = 0
        self.drips = 0
        self.active = 0
        self.peak_active = 0
        self.checked = 0
        self.started = time.time()
        self.problems: Counter[str] = Counter()
        self._seen: Counter[str] = Counter()

    def should_check(self, kind: str) -> bool:
        self._seen[kind] += 1
        n = self._seen[kind]
        return n <= 20 or n % 25 == 0

    def as_dict(self) -> dict:
        return {
            "requests": self.requests,
            "json": self.json,
            "streams": self.streams,
            "drips": self.drips,
            "active_streams": self.active,
            "peak_active_streams": self.peak_active,
            "checked": self.checked,
            "request_problems": dict(self.problems),
        }


def _parsed(body: bytes) -> tuple[dict | None, list[str]]:
    """A request the proxy sent, decoded, and what is wrong with it so far."""
    try:
        req = json.loads(body)
    except ValueError:
        return None, ["not_json"]
    if not isinstance(req, dict):
        return None, ["not_an_object"]
    return req, [] if req.get("model") == payloads.MODEL else ["model"]


def check_openai_request(body: bytes, stream: bool) -> list[str]:
    """What is wrong with a chat/completions request the proxy sent (sampled)."""
    req, problems = _parsed(body)
    if req is None:
        return problems
    msgs = req.get("messages")
    if not isinstance(msgs, list) or not msgs:
        return [*problems, "messages_missing"]
    if msgs[0].get("role") != "system":
        problems.append("system_not_first")
    if any(m.get("role") == "system" for m in msgs[1:]):
        problems.append("system_not_single")
    if any(m.get("role") not in ("system", "user", "assistant", "tool") for m in msgs):
        problems.append("bad_role")
    # each assistant tool call is answered by tool messages right after it
    for i, m in enumerate(msgs):
        calls = m.get("tool_calls") if m.get("role") == "assistant" else None
        if not calls:
            continue
        ids = [c.get("id") for c in calls]
        answered = []
        for n in msgs[i + 1 :]:
            if n.get("role") != "tool":
                break
            answered.append(n.get("tool_call_id"))
        if answered[: len(ids)] != ids:
            problems.append("tool_results_misplaced")
        for c in calls:
            fn = c.get("function") or {}
            if c.get("type") != "function" or not isinstance(fn.get("arguments"), str):
                problems.append("tool_call_shape")
                break
    tools = req.get("tools")
    if not isinstance(tools, list) or len(tools) != 15:
        problems.append("tools_count")
    elif any(
        t.get("type") != "function"
        or not (t.get("function") or {}).get("name")
        or not isinstance((t.get("function") or {}).get("parameters"), dict)
        for t in tools
    ):
        problems.append("tool_shape")
    if not any(k in req for k in ("max_completion_tokens", "max_tokens")):
        problems.append("no_token_limit")
    if bool(req.get("stream")) != stream:
        problems.append("stream_flag")
    return problems


def check_responses_request(body: bytes) -> list[str]:
    """What is wrong with a Responses request the proxy sent (sampled)."""
    req, problems = _parsed(body)
    if req is None:
        return problems
    if not isinstance(req.get("instructions"), str):
        problems.append("no_instructions")
    items = req.get("input")
    if not isinstance(items, list) or not items:
        return [*problems, "input_missing"]
    calls = [i.get("call_id") for i in items if i.get("type") == "function_call"]
    outputs = [i.get("call_id") for i in items if i.get("type") == "function_call_output"]
    if calls != outputs:
        problems.append("tool_results_misplaced")
    tools = req.get("tools")
    if not isinstance(tools, list) or len(tools) != 15:
        problems.append("tools_count")
    elif any(t.get("type") != "function" or not t.get("name") for t in tools):
        problems.append("tool_shape")
    if not isinstance(req.get("max_output_tokens"), int):
        problems.append("no_token_limit")
    if req.get("store") is not False or req.get("stream") is not True:
        problems.append("store_or_stream")
    return problems


class Upstream(asyncio.Protocol):
    """One client connection; requests are served one at a time, in order."""

    def __init__(self, server: MockServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.busy = False  # a drip stream is being sent
        self.timer: asyncio.TimerHandle | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
            self.server.stats.active -= 1

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.busy:
            self._serve()

    def _serve(self) -> None:
        while not self.busy and not self.closed:
            req = self._take_request()
            if req is None:
                return
            self._handle(*req)

    def _take_request(self) -> tuple[bytes, bytes, dict[bytes, bytes], bytes] | None:
        buf = self.buf
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if len(buf) > _MAX_HEAD:
                self._reply(431, b"text/plain", b"head too large", close=True)
            return None
        lines = bytes(buf[:end]).split(b"\r\n")
        try:
            method, target, _version = lines[0].split(b" ", 2)
        except ValueError:
            self._reply(400, b"text/plain", b"bad request line", close=True)
            return None
        headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(b":")
            headers[k.strip().lower()] = v.strip()
        start = end + 4
        if b"chunked" in headers.get(b"transfer-encoding", b"").lower():
            body, used = _dechunk(buf, start)
            if body is None:
                return None
        else:
            length = int(headers.get(b"content-length", b"0") or 0)
            if len(buf) < start + length:
                if headers.get(b"expect", b"").lower() == b"100-continue" and len(buf) == start:
                    self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                return None
            body, used = bytes(buf[start : start + length]), start + length
        del buf[:used]
        return method, target, headers, body

    def _reply(self, status: int, ctype: bytes, body: bytes, close: bool = False) -> None:
        reason = {
            200: b"OK",
            400: b"Bad Request",
            404: b"Not Found",
            431: b"Request Header Fields Too Large",
        }.get(status, b"Error")
        head = b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n%s\r\n" % (
            status,
            reason,
            ctype,
            len(body),
            b"Connection: close\r\n" if close else b"",
        )
        self.transport.write(head + body)
        if close:
            self.transport.close()
            self.closed = True

    def _handle(
        self, method: bytes, target: bytes, headers: dict[bytes, bytes], body: bytes
    ) -> None:
        server, stats = self.server, self.server.stats
        path = target.split(b"?", 1)[0]
        close = headers.get(b"connection", b"").lower() == b"close"
        if method == b"GET" and path == b"/__stats":
            self._reply(200, b"application/json", json.dumps(stats.as_dict()).encode(), close)
            return
        if method == b"GET" and path.endswith(b"/models"):
            self._reply(200, b"application/json", server.models, close)
            return
        if method == b"POST" and path.endswith(b"/responses"):
            self._responses(headers, body, close)
            return
        if method == b"POST" and path.endswith(b"/messages"):
            stats.requests += 1
            if _STREAM_TRUE.search(body) is not None:
                stats.streams += 1
                self.transport.write(server.anthropic_stream)
            else:
                stats.json += 1
                self.transport.write(server.anthropic_json)
            if close:
                self.transport.close()
            return
        if method != b"POST" or not path.endswith(b"/chat/completions"):
            self._reply(404, b"application/json", b'{"error":{"message":"not found"}}', close)
            return
        stats.requests += 1
        segments = path.split(b"/")
        stream = _STREAM_TRUE.search(body) is not None
        if b"direct" not in segments and server.check:
            if any(h.startswith(b"anthropic-") or h == b"x-api-key" for h in headers):
                stats.problems["anthropic_header_forwarded"] += 1
            kind = "stream" if stream else "json"
            if stats.should_check(kind):
                stats.checked += 1
                stats.problems.update(check_openai_request(body, stream))
        drip = None
        if b"drip" in segments:
            i = segments.index(b"drip")
            try:
                drip = (float(segments[i + 1]), float(segments[i + 2]))
            except (IndexError, ValueError):
                self._reply(400, b"text/plain", b"drip needs /drip/RATE/SECONDS", True)
                return
        if not stream:
            stats.json += 1
            self.transport.write(server.json_response)
            if close:
                self.transport.close()
            return
        if drip is None or drip[0] <= 0:
            stats.streams += 1
            self.transport.write(server.stream_response)
            if close:
                self.transport.close()
            return
        stats.drips += 1
        stats.active += 1
        stats.peak_active = max(stats.peak_active, stats.active)
        frames = server.drip_frames(*drip)
        self.busy = True
        self.transport.write(server.stream_head + frames[0])
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        interval = 1.0 / drip[0]

        def send(i: int) -> None:
            if self.closed:
                return
            if i < len(frames):
                self.transport.write(frames[i])
                self.timer = loop.call_at(t0 + (i + 1) * interval, send, i + 1)
                return
            self.timer = None
            stats.active -= 1
            self.transport.write(b"0\r\n\r\n")
            self.busy = False
            if close:
                self.transport.close()
                self.closed = True
            elif self.buf:
                self._serve()

        self.timer = loop.call_at(t0 + interval, send, 1)

    def _responses(self, headers: dict[bytes, bytes], body: bytes, close: bool) -> None:
        """A Responses API request: its stream (streams only, as the bench sends)."""
        server, stats = self.server, self.server.stats
        stats.requests += 1
        if _STREAM_TRUE.search(body) is None:
            self._reply(400, b"application/json", b'{"error":{"message":"stream only"}}', close)
            return
        if server.check and stats.should_check("responses"):
            stats.checked += 1
            stats.problems.update(check_responses_request(body))
        stats.streams += 1
        self.transport.write(server.responses_response)
        if close:
            self.transport.close()


def _dechunk(buf: bytearray, pos: int) -> tuple[bytes | None, int]:
    """A whole chunked body starting at pos, and where it ends; (None, 0) if incomplete."""
    parts = []
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return None, 0
        size = int(bytes(buf[pos:eol]).split(b";")[0], 16)
        pos = eol + 2
        if size == 0:
            end = buf.find(b"\r\n", pos)
            while end >= 0 and end != pos:  # skip trailers
                pos = end + 2
                end = buf.find(b"\r\n", pos)
            if end < 0:
                return None, 0
            return b"".join(parts), end + 2
        if len(buf) < pos + size + 2:
            return None, 0
        parts.append(bytes(buf[pos : pos + size]))
        pos += size + 2


def _chunked(frame: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(frame), frame)


class MockServer:
    def __init__(self, check: bool = True) -> None:
        self.check = check
        self.stats = Stats()
        body = payloads.completion_bytes()
        self.json_response = (
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body)
        ) + body
        self.stream_head = (
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            b"Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        self.stream_response = (
            self.stream_head + b"".join(_chunked(f) for f in payloads.sse_frames()) + b"0\r\n\r\n"
        )
        self.responses_response = (
            self.stream_head
            + b"".join(_chunked(f) for f in payloads.responses_frames())
            + b"0\r\n\r\n"
        )
        message = json.dumps(
            payloads.anthropic_message(), ensure_ascii=False, separators=(",", ":")
        ).encode()
        self.anthropic_json = (
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(message)
        ) + message
        self.anthropic_stream = (
            self.stream_head
            + b"".join(_chunked(f) for f in payloads.anthropic_sse_frames())
            + b"0\r\n\r\n"
        )
        self.models = json.dumps(
            {
                "object": "list",
                "data": [
                    {
                        "id": payloads.MODEL,
                        "object": "model",
                        "created": payloads.CREATED,
                        "owned_by": "bench",
                    }
                ],
            }
        ).encode()
        self._drips: dict[tuple[float, float], list[bytes]] = {}

    def drip_frames(self, rate: float, seconds: float) -> list[bytes]:
        key = (rate, seconds)
        if key not in self._drips:
            n_text = payloads.drip_text_deltas(rate, seconds)
            self._drips[key] = [_chunked(f) for f in payloads.sse_frames(n_text)]
        return self._drips[key]


async def serve(host: str, port: int, check: bool = True) -> None:
    server = MockServer(check)
    loop = asyncio.get_running_loop()
    srv = await loop.create_server(
        lambda: Upstream(server), host, port, backlog=4096, reuse_address=True
    )
    print(f"mock upstream on http://{host}:{port}", flush=True)
    async with srv:
        await srv.serve_forever()


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=18080)
    ap.add_argument("--no-uvloop", action="store_true")
    ap.add_argument(
        "--no-check",
        action="store_true",
        help="check no request (bench.heavy's mock for 30 MiB bodies: parsing one costs "
        "the load side's core half a second)",
    )
    args = ap.parse_args()
    if not args.no_uvloop:
        try:
            import uvloop  # type: ignore[import-not-found]

            uvloop.install()
        except ImportError:
            pass
    try:
        asyncio.run(serve(args.host, args.port, not args.no_check))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
