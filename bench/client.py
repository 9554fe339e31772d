"""A small HTTP/1.1 keep-alive client on asyncio protocols, and the load loops.

Each worker owns one connection and sends its requests one after the other on
it (keep-alive; reconnecting only if the server closed). Timings are taken in
``data_received`` (time.perf_counter):

- ``t_first_byte``: the first byte of the response (status line);
- ``t_head``: the response head complete;
- ``t_first_text``: the first non-empty text, as seen by the validator;
- ``t_done``: the response complete.

All are relative to the moment the request was written. Every response body is
handed to a validator (bench/validate.py) as it arrives.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from bench.validate import Validator

now = time.perf_counter


class Exchange:
    __slots__ = (
        "done",
        "nbytes",
        "problems",
        "status",
        "stream",
        "t0",
        "t_done",
        "t_first_byte",
        "t_first_text",
        "t_head",
        "validator",
    )

    def __init__(self, validator: Validator, stream: bool) -> None:
        self.validator = validator
        self.stream = stream
        self.status = 0
        self.problems: list[str] = []
        self.t0 = 0.0
        self.t_first_byte: float | None = None
        self.t_head: float | None = None
        self.t_first_text: float | None = None
        self.t_done: float | None = None
        self.nbytes = 0
        self.done: asyncio.Future[None] | None = None

    @property
    def ok(self) -> bool:
        return not self.problems and self.status == 200


class Connection(asyncio.Protocol):
    """One client connection, one exchange at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.ex: Exchange | None = None
        self.lost = False
        self.keep_alive = True
        self._reset()

    def _reset(self) -> None:
        self.state = "head"  # head, length, chunk_size, chunk_data, chunk_crlf, trailer, eof
        self.left = 0
        self.ctype = b""

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        ex = self.ex
        if ex is not None:
            if self.state == "eof":
                self._complete(now())
            else:
                self._fail("conn_closed_" + self.state)

    def data_received(self, data: bytes) -> None:
        t = now()
        ex = self.ex
        if ex is None:
            return  # stray bytes after a failed exchange
        if ex.t_first_byte is None:
            ex.t_first_byte = t - ex.t0
        self.buf += data
        try:
            self._parse(t)
        except (ValueError, IndexError):
            self._fail("http_malformed")
            self.close()

    # sending
    def send(self, request: bytes, ex: Exchange) -> asyncio.Future[None]:
        assert self.ex is None and self.transport is not None
        self.ex = ex
        self._reset()
        self.buf.clear()
        ex.done = asyncio.get_running_loop().create_future()
        ex.t0 = now()
        self.transport.write(request)
        return ex.done

    def close(self) -> None:
        if self.transport is not None and not self.lost:
            self.transport.close()
        self.lost = True

    # parsing
    def _body(self, data: bytes, t: float) -> None:
        ex = self.ex
        ex.nbytes += len(data)
        v = ex.validator
        v.feed(data, t - ex.t0)
        if ex.t_first_text is None and v.t_first_text is not None:
            ex.t_first_text = v.t_first_text

    def _parse(self, t: float) -> None:
        buf = self.buf
        while self.ex is not None:
            st = self.state
            if st == "head":
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    return
                lines = bytes(buf[:end]).split(b"\r\n")
                del buf[: end + 4]
                status = int(lines[0].split(b" ", 2)[1])
                if 100 <= status < 200:
                    continue
                ex = self.ex
                ex.status = status
                ex.t_head = t - ex.t0
                length = None
                chunked = False
                self.keep_alive = not lines[0].startswith(b"HTTP/1.0")
                for line in lines[1:]:
                    k, _, v = line.partition(b":")
                    k = k.strip().lower()
                    v = v.strip()
                    if k == b"content-length":
                        length = int(v)
                    elif k == b"transfer-encoding":
                        chunked = b"chunked" in v.lower()
                    elif k == b"connection":
                        self.keep_alive = v.lower() != b"close"
                    elif k == b"content-type":
                        self.ctype = v.lower()
                if ex.stream and status == 200 and not self.ctype.startswith(b"text/event-stream"):
                    ex.problems.append("content_type_not_sse")
                if chunked:
                    self.state = "chunk_size"
                elif length is not None:
                    self.state, self.left = "length", length
                    if length == 0:
                        self._complete(t)
                        return
                else:
                    self.state = "eof"
                    self.keep_alive = False
            elif st == "length":
                if not buf:
                    return
                n = min(self.left, len(buf))
                self._body(bytes(buf[:n]), t)
                del buf[:n]
                self.left -= n
                if self.left == 0:
                    self._complete(t)
                    return
            elif st == "chunk_size":
                eol = buf.find(b"\r\n")
                if eol < 0:
                    return
                size = int(bytes(buf[:eol]).split(b";")[0], 16)
                del buf[: eol + 2]
                if size == 0:
                    self.state = "trailer"
                else:
                    self.state, self.left = "chunk_data", size
            elif st == "chunk_data":
                if not buf:
                    return
                n = min(self.left, len(buf))
                self._body(bytes(buf[:n]), t)
                del buf[:n]
                self.left -= n
                if self.left == 0:
                    self.state = "chunk_crlf"
            elif st == "chunk_crlf":
                if len(buf) < 2:
                    return
                if buf[:2] != b"\r\n":
                    raise ValueError("chunk not followed by CRLF")
                del buf[:2]
                self.state = "chunk_size"
            elif st == "trailer":
                eol = buf.find(b"\r\n")
                if eol < 0:
                    return
                del buf[: eol + 2]
                if eol == 0:
                    self._complete(t)
                    return
            elif st == "eof":
                if buf:
                    self._body(bytes(buf), t)
                    buf.clear()
                return

    def _complete(self, t: float) -> None:
        ex = self.ex
        self.ex = None
        ex.t_done = t - ex.t0
        if ex.status != 200:
            ex.problems.append(f"http_{ex.status}")
        else:
            ex.problems.extend(ex.validator.finish())
        if self.buf:
            ex.problems.append("bytes_after_response")
        if not self.keep_alive:
            self.close()
        if not ex.done.done():
            ex.done.set_result(None)

    def _fail(self, kind: str) -> None:
        ex = self.ex
        self.ex = None
        if ex is None:
            return
        ex.problems.append(kind)
        ex.t_done = now() - ex.t0
        if ex.done is not None and not ex.done.done():
            ex.done.set_result(None)


class Target:
    """Where requests go: a host, a port and prebuilt request bytes per body."""

    def __init__(
        self,
        host: str,
        port: int,
        path: str,
        headers: dict[str, str],
        bodies: list[bytes],
        make_validator: Callable[[], Validator],
        stream: bool,
    ) -> None:
        self.host, self.port = host, port
        self.stream = stream
        self.make_validator = make_validator
        head = f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n" + "".join(
            f"{k}: {v}\r\n" for k, v in headers.items()
        )
        self.requests = [(head + f"Content-Length: {len(b)}\r\n\r\n").encode() + b for b in bodies]


async def _connect(target: Target) -> Connection:
    loop = asyncio.get_running_loop()
    _, proto = await loop.create_connection(Connection, target.host, target.port)
    return proto


async def one(
    target: Target, conn: Connection | None, i: int, timeout: float
) -> tuple[Exchange, Connection | None]:
    """Send request i (round robin over the bodies) and wait for the whole answer."""
    ex = Exchange(target.make_validator(), target.stream)
    t0 = now()
    try:
        if conn is None or conn.lost or not conn.keep_alive:
            if conn is not None:
                conn.close()
            conn = await asyncio.wait_for(_connect(target), timeout)
        fut = conn.send(target.requests[i % len(target.requests)], ex)
        ex.t0 = t0  # count the connect, if any, in the latencies
        await asyncio.wait_for(asyncio.shield(fut), timeout)
    except TimeoutError:
        ex.problems.append("timeout")
        ex.t_done = now() - t0
        if conn is not None:
            conn.ex = None
            conn.close()
        conn = None
    except OSError as e:
        ex.problems.append("connect_" + type(e).__name__)
        ex.t_done = now() - t0
        conn = None
    return ex, conn


async def run(
    target: Target,
    concurrency: int,
    total: int | None = None,
    duration: float | None = None,
    timeout: float = 60.0,
    ramp: float = 0.0,
) -> tuple[list[Exchange], float]:
    """`concurrency` workers, each on its own keep-alive connection, until `total`
    requests have been started or `duration` seconds have passed (requests in
    flight then are finished and counted). `ramp` spreads the workers' starts
    over that many seconds. Returns the exchanges and the elapsed time."""
    results: list[Exchange] = []
    counter = [0]
    t_start = now()
    deadline = t_start + duration if duration else None

    async def worker(w: int) -> None:
        if ramp:
            await asyncio.sleep(ramp * w / concurrency)
        conn = None
        while True:
            if total is not None and counter[0] >= total:
                break
            if deadline is not None and now() >= deadline:
                break
            i = counter[0]
            counter[0] += 1
            ex, conn = await one(target, conn, i, timeout)
            results.append(ex)
        if conn is not None:
            conn.close()

    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    return results, now() - t_start


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100)."""
    if not values:
        return None
    s = sorted(values)
    k = max(0, min(len(s) - 1, int(-(-q * len(s) // 100)) - 1))
    return s[k]


def summarize(results: list[Exchange], elapsed: float) -> dict[str, Any]:
    from collections import Counter

    problems: Counter[str] = Counter()
    for r in results:
        problems.update(set(r.problems))
    ok = [r for r in results if r.ok]
    out: dict[str, Any] = {
        "requests": len(results),
        "ok": len(ok),
        "failed": len(results) - len(ok),
        "problems": dict(problems.most_common()),
        "elapsed_s": elapsed,
        "ok_per_s": len(ok) / elapsed if elapsed else None,
    }
    for name in ("t_first_byte", "t_head", "t_first_text", "t_done"):
        vals = [getattr(r, name) for r in ok if getattr(r, name) is not None]
        for q in (50, 90, 99):
            out[f"{name}_p{q}"] = percentile(vals, q)
        out[f"{name}_max"] = max(vals) if vals else None
        out[f"{name}_mean"] = sum(vals) / len(vals) if vals else None
    return out
