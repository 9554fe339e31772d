"""Python heap (and RSS) held per live stream, in process (issue 18's 30 KB target).

    python -m bench.streammem [N] [--chunks 3] [--top 30] [--frames 1] [--rss]
                              [--ccproxy-root PATH]

ccproxy runs in this process as the daemon builds it (`buildService`: the site,
app, dispatcher, pooled upstream client, access log), listening on a free
loopback port; a peer process (this module with `--peer`, standard library
only) is both the mock upstream and the clients, over real sockets. After a
warm-up (complete streams, so the caches and the upstream pool are as a
running daemon's), the peer opens N streams at once, each a Claude Code
request of the corpus (36-60 KB, `stream: true`, Claude Code's headers); its
upstream sends its head and `--chunks` SSE chunks, then stays silent, as the
reference harness's drip does between two chunks. Once every client has its
text delta, this process holds for each stream two TCP connections (client,
upstream), the twisted.web request, the upstream's HTTP11ClientProtocol and
response, the relay, translator, writer, SSE parser, the coroutines and
Deferreds waiting, and the timers (silence, ping, max_duration).

It prints the growth of the traced Python heap between the warmed-up process
and N live streams, per stream, the top allocation sites (file:line, bytes per
stream), live objects per stream by type, and the reactor's timers per stream.
`--rss`: no tracemalloc (it costs RSS of its own), the RSS growth per stream
alone. `--ccproxy-root`: import ccproxy from another checkout (e.g. main's).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from typing import Any

PEER_BATCH = 100
"""Clients connecting at once (the proxy's listen backlog is Twisted's 50)."""


# -- the peer: mock upstream and clients (its own process) ------------------------


class _Peer:
    def __init__(self, chunks: int) -> None:
        from bench import corpus, payloads

        self.frames = payloads.sse_frames(20)
        self.chunks = chunks
        self.complete = True
        self.held: list[Any] = []
        self.bodies = corpus.bodies(6, 36, 60, stream=True)
        self.headers = "".join(f"{k}: {v}\r\n" for k, v in corpus.HEADERS.items())

    async def upstream(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """An OpenAI chat upstream: a stream's head and its first `chunks` chunks
        (all of them while warming up), in HTTP chunks, then silence."""
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                await reader.readexactly(length)
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                    b"Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n"
                )
                frames = self.frames if self.complete else self.frames[: self.chunks]
                writer.write(b"".join(b"%x\r\n%s\r\n" % (len(f), f) for f in frames))
                if not self.complete:
                    self.held.append(writer)
                    return
                writer.write(b"0\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    async def client(self, port: int, i: int, whole: bool) -> None:
        """One Claude Code request; `whole`: read to its end and close, else until
        its first text delta, and keep the connection."""
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        body = self.bodies[i % len(self.bodies)]
        writer.write(
            (
                f"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{self.headers}"
                f"X-Api-Key: sk-bench-0000\r\nContent-Length: {len(body)}\r\n\r\n"
            ).encode()
            + body
        )
        seen = b""
        until = b"\r\n0\r\n\r\n" if whole else b"content_block_delta"
        while until not in seen:
            data = await reader.read(65536)
            if not data:
                raise SystemExit(f"stream {i}: the proxy closed it: {seen[-500:]!r}")
            seen = seen[-200:] + data
        if whole:
            writer.close()
        else:
            self.held.append(writer)

    async def run(self) -> None:
        from bench.procs import raise_nofile

        raise_nofile()
        server = await asyncio.start_server(self.upstream, "127.0.0.1", 0, backlog=4096)
        print("mock", server.sockets[0].getsockname()[1], flush=True)
        loop = asyncio.get_running_loop()
        stdin = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
        while line := (await stdin.readline()).split():
            verb, port, n = line[0], int(line[1]), int(line[2])
            self.complete = verb == b"warm"
            for start in range(0, n, PEER_BATCH):
                await asyncio.gather(
                    *(
                        self.client(port, i, self.complete)
                        for i in range(start, min(n, start + PEER_BATCH))
                    )
                )
            print(verb.decode(), n, flush=True)


# -- ccproxy, measured (this process) ---------------------------------------------

CONFIG = """
listen: "tcp:0:interface=127.0.0.1"
upstreams:
  mock: {{url: "http://127.0.0.1:{port}/v1", api_key: sk-upstream}}
max_connections_per_address: 100000
ledger: off
models:
  "*": mock/mock-model
"""


def _rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def _timers(reactor: Any, before: dict[str, int]) -> dict[str, int]:
    """The reactor's pending timers by what they call, and the cancelled ones
    still held (by the reactor's queue until they would have been due), less
    `before`."""
    import gc

    from twisted.internet.base import DelayedCall

    counts = {k: -v for k, v in before.items()}
    for call in gc.get_objects():
        if isinstance(call, DelayedCall) and (call.cancelled or call.active()):
            if call.cancelled:  # what it would have called is dropped
                name = "(cancelled, still queued)"
            else:
                name = getattr(call.func, "__qualname__", type(call.func).__qualname__)
            counts[name] = counts.get(name, 0) + 1
    return counts


def _dicts(types: dict[str, int], n: int) -> list[tuple[str, int, int]]:
    """For each type with about one new instance per stream or more: the instance
    dict of its last instance, (type, attributes, bytes). An instance whose
    attributes its class's shared keys cannot hold (CPython shares at most 30
    names per class, the first ones set on any instance) gets a dict of its own
    (800-1600 bytes, where a shared one shows 300 or less)."""
    import gc
    import sys

    wanted = {k for k, v in types.items() if v >= n * 0.9}
    last: dict[str, Any] = {}
    for o in gc.get_objects():
        name = type(o).__qualname__
        if name in wanted and isinstance(getattr(o, "__dict__", None), dict):
            last[name] = o
    sized = [(k, len(vars(o)), sys.getsizeof(vars(o))) for k, o in last.items()]
    return sorted(sized, key=lambda x: -x[2])


def _types() -> dict[str, int]:
    import gc

    counts: dict[str, int] = {}
    for o in gc.get_objects():
        name = type(o).__qualname__
        counts[name] = counts.get(name, 0) + 1
    return counts


def measure(args: argparse.Namespace) -> None:
    if os.environ.get("HOOK"):
        exec(open(os.environ["HOOK"]).read(), {})
    import gc
    import subprocess
    import tracemalloc

    from bench.procs import raise_nofile

    openFiles = raise_nofile()
    if not args.rss:
        tracemalloc.start(args.frames)
    from twisted.internet import reactor
    from twisted.internet.defer import Deferred
    from twisted.internet.threads import deferToThread
    from twisted.logger import globalLogBeginner

    import ccproxy
    from ccproxy.config import Config
    from ccproxy.daemon.heap import settleHeap
    from ccproxy.daemon.logs import quietLevels, textObserver
    from ccproxy.daemon.wiring import buildService

    print(f"ccproxy from {os.path.dirname(os.path.dirname(ccproxy.__file__))}")
    devnull = open(os.devnull, "w")
    globalLogBeginner.beginLoggingTo(
        [quietLevels(textObserver(devnull))], discardBuffer=True, redirectStandardIO=False
    )
    peer = subprocess.Popen(
        [sys.executable, "-m", "bench.streammem", "--peer", "--chunks", str(args.chunks)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        env={**os.environ, "PYTHONPATH": ""},
    )
    assert peer.stdin is not None and peer.stdout is not None
    mockPort = int(peer.stdout.readline().split()[1])
    service = buildService(
        Config.fromYAML(CONFIG.format(port=mockPort), {}), reactor, openFiles=openFiles
    )
    service.privilegedStartService()
    service.startService()

    async def ask(verb: str, n: int) -> None:
        peer.stdin.write(f"{verb} {result['port']} {n}\n".encode())  # type: ignore[union-attr]
        peer.stdin.flush()  # type: ignore[union-attr]
        answer = await deferToThread(peer.stdout.readline)  # type: ignore[union-attr]
        if answer.split() != [verb.encode(), str(n).encode()]:
            raise SystemExit(f"the peer failed ({verb} {n}): {answer!r}")

    def pause(seconds: float) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        reactor.callLater(seconds, d.callback, None)
        return d

    result: dict[str, Any] = {}

    async def run() -> None:
        result["port"] = (await service.listeningPort()).getHost().port
        await ask("warm", 200)
        await pause(0.5)
        settleHeap()
        base = tracemalloc.take_snapshot() if not args.rss else None
        rss0, types0, timers0 = _rss(), _types(), len(reactor.getDelayedCalls())
        result["timersBy"] = _timers(reactor, {})
        await ask("open", args.n)
        await pause(1.0)
        gc.collect()
        result["rss"] = _rss() - rss0
        result["timers"] = len(reactor.getDelayedCalls()) - timers0
        result["timersBy"] = _timers(reactor, result["timersBy"])
        result["types"] = {k: v - types0.get(k, 0) for k, v in _types().items()}
        if base is not None:
            result["diff"] = tracemalloc.take_snapshot().compare_to(
                base, "traceback" if args.frames > 1 else "lineno"
            )
        result["dicts"] = _dicts(result["types"], args.n)  # after: `vars` makes dicts

    def done(outcome: Any) -> None:
        result["outcome"] = outcome
        reactor.stop()

    Deferred.fromCoroutine(run()).addBoth(done)
    reactor.run()
    peer.kill()
    if hasattr(result.get("outcome"), "raiseException"):
        result["outcome"].raiseException()
    n = args.n
    print(f"{n} live streams: RSS growth {result['rss'] / n / 1024:.1f} KB per stream", end="")
    print(" (tracemalloc on)" if not args.rss else "")
    print(f"reactor timers per stream: {result['timers'] / n:.2f}", end=" (by what they call, ")
    timers = sorted(result["timersBy"].items(), key=lambda kv: -kv[1])
    print(", ".join(f"{k} {v / n:.2f}" for k, v in timers if v > n / 20) + ")")
    if "diff" in result:
        diff = [
            d for d in result["diff"] if not d.traceback[-1].filename.endswith("tracemalloc.py")
        ]
        total = sum(d.size_diff for d in diff)
        print(f"python heap growth: {total / n / 1024:.2f} KB per stream")
        print("top allocation sites, bytes (and blocks) per stream:")
        for size, count, where in _sites(diff, args.owner)[: args.top]:
            print(f"  {size / n:8.0f} B {count / n:6.2f}  {where}")
    print("instance dicts (type attributes bytes), of one stream:")
    print("  " + ", ".join(f"{k} {a} {b}" for k, a, b in result["dicts"]))
    print("live gc-tracked objects per stream, by type:")
    types = sorted(result["types"].items(), key=lambda kv: -kv[1])
    print("  " + ", ".join(f"{k} {v / n:.2f}" for k, v in types[: args.top] if v > n / 10))


def _sites(diff: list[Any], owner: bool) -> list[tuple[int, int, str]]:
    """(bytes, blocks, where) by site, largest first; `owner`: by the innermost
    frame in ccproxy's code (the allocating frame when none is), which shows what
    ccproxy's own code keeps alive inside the libraries it calls."""
    sites: dict[str, list[int]] = {}
    for d in diff:
        frames = list(reversed(d.traceback))  # the most recent first
        if owner:
            mine = [f for f in frames if "/ccproxy/" in f.filename]
            where = _frame((mine or frames)[0])
            if mine and mine[0] is not frames[0]:
                where += " (in " + _frame(frames[0]) + ")"
        else:
            where = " <- ".join(_frame(f) for f in frames)
        site = sites.setdefault(where, [0, 0])
        site[0] += d.size_diff
        site[1] += d.count_diff
    return sorted(((s, c, w) for w, (s, c) in sites.items()), key=lambda x: -abs(x[0]))


def _frame(frame: Any) -> str:
    return f"{_short(frame.filename)}:{frame.lineno}"


def _short(path: str) -> str:
    """A source path from its package (`twisted/web/http.py`, `ccproxy/relay/relay.py`)."""
    for prefix in sorted([*sys.path, os.path.dirname(os.__file__)], key=len, reverse=True):
        if prefix and path.startswith(prefix + "/"):
            return path[len(prefix) + 1 :]
    return path


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.streammem", description=__doc__.split("\n")[0]
    )
    parser.add_argument("n", nargs="?", type=int, default=1000, help="live streams (1000)")
    parser.add_argument("--chunks", type=int, default=3, help="SSE chunks each upstream sends (3)")
    parser.add_argument("--top", type=int, default=30, help="allocation sites shown (30)")
    parser.add_argument("--frames", type=int, default=1, help="tracemalloc frames per site (1)")
    parser.add_argument(
        "--owner", action="store_true", help="sites by their innermost ccproxy frame"
    )
    parser.add_argument("--rss", action="store_true", help="RSS only, without tracemalloc")
    parser.add_argument("--ccproxy-root", help="import ccproxy from this checkout")
    parser.add_argument("--peer", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.peer:
        asyncio.run(_Peer(args.chunks).run())
        return
    if args.owner and args.frames == 1:
        args.frames = 30
    if args.ccproxy_root:
        sys.path.insert(0, os.path.abspath(args.ccproxy_root))
    measure(args)


if __name__ == "__main__":
    main()
