"""The soak's upstream: an OpenAI-compatible server that drips its streams and faults
on request. Standard library only (asyncio), HTTP/1.1 with keep-alive.

    python -m bench.soak_upstream --port-file PATH [--drip 0.1] [--idle 2]

It listens on two loopback ports the OS picks and writes them to --port-file as
`PRIMARY BACKUP` once listening. The primary does what the request's model name
says, `[PREFIX-]DIRECTIVE-N` (ccproxy passes the client's model name through):

- `ok-N`: N text deltas, one every --drip seconds, a finish chunk, a usage chunk,
  `[DONE]` (non-streaming requests: one JSON completion after N x drip / 4 s);
- `close-N` / `rst-N`: N // 2 deltas, then a clean close (FIN) or a reset (RST) in the
  middle of the chunked body;
- `stall-N`: N // 2 deltas, then silence until the proxy hangs up;
- `503-N`, `429-N`: that status at once (429 with `retry-after: 1`), keep-alive;
- `reset-N`: a reset before any byte of the answer.

The backup ignores the directive and always answers like `ok-N`. Text deltas are
`w0 w1 …` from the primary and `b0 b1 …` from the backup, so the client can tell who
served it. A connection idle between requests for --idle seconds is closed, as real
gateways do. `GET /stats` on either port answers the server's counters as JSON:
open connections, requests in progress, streams the peer abandoned, stalls ended.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import socket
import struct
from collections import Counter
from typing import Any

HEAD_LIMIT = 64 * 1024


class Stats:
    def __init__(self) -> None:
        self.connections = 0
        self.active = 0
        self.requests: Counter[str] = Counter()
        self.abandoned = 0
        """Streams whose peer went away before the answer was whole."""
        self.stallsEnded = 0
        self.idleClosed = 0

    def report(self) -> dict[str, Any]:
        return {
            "open_connections": self.connections,
            "active_requests": self.active,
            "requests": dict(self.requests),
            "abandoned_by_peer": self.abandoned,
            "stalls_ended_by_peer": self.stallsEnded,
            "idle_closed": self.idleClosed,
        }


STATS = Stats()


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def sse(value: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(value, separators=(",", ":")).encode() + b"\n\n"


def delta(text: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-soak",
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}],
    }


def words(prefix: str, n: int) -> list[str]:
    return [f"{prefix}{i} " for i in range(n)]


def jsonResponse(status: str, body: dict[str, Any], *headers: str) -> bytes:
    raw = json.dumps(body).encode()
    head = [f"HTTP/1.1 {status}", "Content-Type: application/json", *headers]
    head.append(f"Content-Length: {len(raw)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + raw


SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
    b"Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n"
)


class Gone(Exception):
    """The peer closed the connection while we were answering."""


class Server:
    def __init__(self, backup: bool, drip: float, idle: float) -> None:
        self.backup = backup
        self.drip = drip
        self.idle = idle

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        STATS.connections += 1
        try:
            while True:
                try:
                    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self.idle)
                except TimeoutError:
                    STATS.idleClosed += 1
                    return
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                method, path = lines[0].split(" ")[:2]
                length = 0
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value)
                body = await reader.readexactly(length) if length else b""
                if method == "GET" and path == "/stats":
                    writer.write(jsonResponse("200 OK", STATS.report()))
                    await writer.drain()
                    continue
                STATS.active += 1
                try:
                    keep = await self.answer(method, path, body, reader, writer)
                except (Gone, OSError):
                    return
                finally:
                    STATS.active -= 1
                if not keep:
                    return
        finally:
            STATS.connections -= 1
            writer.close()

    async def answer(
        self,
        method: str,
        path: str,
        raw: bytes,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> bool:
        """Answers one request; False when the connection must not be reused."""
        body = json.loads(raw)
        # "PREFIX-DIRECTIVE-N" (the prefix picks ccproxy's route) or "DIRECTIVE-N".
        parts = str(body.get("model", "ok-10")).split("-")
        directive = parts[-2] if len(parts) >= 2 else "ok"
        n = int(parts[-1]) if parts[-1].isdigit() else 10
        if self.backup:
            directive = "ok"
        STATS.requests[("backup:" if self.backup else "") + directive] += 1
        stream = bool(body.get("stream"))
        prefix = "b" if self.backup else "w"
        if directive == "reset":
            reset(writer)
            return False
        if directive == "503":
            writer.write(jsonResponse("503 Service Unavailable", {"error": {"message": "busy"}}))
            await writer.drain()
            return True
        if directive == "429":
            writer.write(
                jsonResponse(
                    "429 Too Many Requests",
                    {"error": {"message": "slow down"}},
                    "Retry-After: 1",
                )
            )
            await writer.drain()
            return True
        if not stream:
            await asyncio.sleep(n * self.drip / 4)
            text = "".join(words(prefix, n))
            writer.write(
                jsonResponse(
                    "200 OK",
                    {
                        "id": "chatcmpl-soak",
                        "object": "chat.completion",
                        "choices": [
                            {
                                "index": 0,
                                "message": {"role": "assistant", "content": text},
                                "finish_reason": "stop",
                            }
                        ],
                        "usage": {"prompt_tokens": 10, "completion_tokens": n},
                    },
                )
            )
            await writer.drain()
            return True
        writer.write(SSE_HEAD)
        upTo = n if directive == "ok" else n // 2
        for word in words(prefix, n)[:upTo]:
            await self.send(reader, writer, chunk(sse(delta(word))))
            await asyncio.sleep(self.drip)
        if gone(reader, writer):
            STATS.abandoned += 1
            raise Gone()
        if directive == "close":
            await writer.drain()
            return False
        if directive == "rst":
            reset(writer)
            return False
        if directive == "stall":
            await writer.drain()
            try:
                await reader.read()  # until the peer hangs up
            finally:
                STATS.stallsEnded += 1
            return False
        finish = {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
        usage = {"choices": [], "usage": {"prompt_tokens": 10, "completion_tokens": n}}
        await self.send(
            reader,
            writer,
            chunk(sse(finish)) + chunk(sse(usage)) + chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n",
        )
        return True

    async def send(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes
    ) -> None:
        if gone(reader, writer):
            STATS.abandoned += 1
            raise Gone()
        writer.write(data)
        try:
            await writer.drain()
        except OSError:
            STATS.abandoned += 1
            raise Gone() from None


def gone(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
    """Whether the peer has closed or reset the connection."""
    return reader.at_eof() or reader.exception() is not None or writer.is_closing()


def reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST rather than a FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--port-file", required=True)
    ap.add_argument("--drip", type=float, default=0.1, help="seconds between stream chunks")
    ap.add_argument("--idle", type=float, default=2.0, help="keep-alive idle timeout")
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    servers = []
    for backup in (False, True):
        server = Server(backup, args.drip, args.idle)
        servers.append(
            await asyncio.start_server(
                server.handle, "127.0.0.1", 0, backlog=1024, limit=HEAD_LIMIT
            )
        )
    ports = [s.sockets[0].getsockname()[1] for s in servers]
    partial = args.port_file + ".part"
    with open(partial, "w") as f:
        f.write(f"{ports[0]} {ports[1]}\n")
    os.replace(partial, args.port_file)
    await asyncio.gather(*(s.serve_forever() for s in servers))


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
