"""Hostile clients, for the soak's hostile phase (`python -m bench.soak --hostile`
starts this in a process of its own), or alone against a ccproxy whose config
sets `clients`:

    python -m bench.hostile --port N --key KEY --seconds S [--source 127.0.0.2]
        [--mix slow_headers=100,count_tokens=0,...] [--interval 3] [--json FILE]

Every connection comes from --source, a loopback address other than the normal
load's 127.0.0.1, so that ccproxy's per-address cap sees them as the other peer
they would be. Each kind is a number of clients (--mix, defaults in MIX), each
looping until --seconds are over, one connection an attempt:

- slow_headers: a request head, a byte every --interval s. Expected: 408 once
  header_timeout (20 s) has passed since the first byte, and the connection closed.
- slow_bodies: a whole head with a key, announcing 2000 bytes, then the body a
  byte every --interval s. Expected: 408 once body_timeout (60 s) has passed.
- big_unauth: no key, 30 MiB announced and sent at full speed but for the last
  byte. Expected: 401 at once, then the connection cut (5 s later: ccproxy reads
  and drops what comes for a while, so that the client sees its answer).
- too_large: a key, 40 MiB announced (over max_body_bytes, 32 MiB), 1 MiB sent.
  Expected: 413 at once.
- huge_model: a key, a 5 MB model name. Expected: 400, a short answer (the name
  is not echoed).
- many_models: a key, non-streaming requests with a 250-character model name of
  their own each (routed to the upstream, which answers). Expected: 200 and the
  upstream's text.
- count_tokens: a key, a 30 MiB Claude-Code-shaped body (bench/corpus.py) to
  /v1/messages/count_tokens. Expected: 200 with input_tokens.
- keyed_withheld (none by default): a key, max_body_bytes (32 MiB) announced and
  sent but for the last byte. Expected: 408 at body_timeout; meanwhile its room in
  body_memory_bytes (256 MiB) is held: eight of them fill it.

big_unauth, too_large and huge_model pause --pause s between attempts;
many_models and count_tokens go back to back. The report (JSON, to --json or
stdout) gives per kind: clients, attempts, outcomes as seen (expected or not),
seconds to the answer (p50, max), to the cut (big_unauth), attempts still under
way when the time was up, and an example of each unexpected outcome.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from bench import corpus
from bench.procs import argument_parser
from bench.soak import (
    Answer,
    Invalid,
    Tally,
    classify,
    envelope,
    exchange,
    percentile,
    readAnswer,
    requestHead,
)

MIX = {
    "slow_headers": 100,
    "slow_bodies": 100,
    "big_unauth": 2,
    "too_large": 1,
    "huge_model": 1,
    "many_models": 4,
    "count_tokens": 1,
    "keyed_withheld": 0,
}
EXPECTED = {
    "slow_headers": 408,
    "slow_bodies": 408,
    "big_unauth": 401,
    "too_large": 413,
    "huge_model": 400,
    "many_models": 200,
    "count_tokens": 200,
    "keyed_withheld": 408,
}
MIB = 2**20
BIG = 30 * MIB
MAX_BODY = 32 * MIB  # ccproxy's default max_body_bytes
COUNT_TOKENS = "/v1/messages/count_tokens?beta=true"
MODEL = "claude-sonnet-4-5"
LINGER = 5.0  # ccproxy.web.site.LINGER


@dataclass
class KindTally(Tally):
    """The soak's tally for one hostile kind: `started` counts attempts, `invalid`
    the unexpected outcomes, `latencies` the seconds to the answer."""

    clients: int = 0
    toCut: list[float] = field(default_factory=list)
    """Seconds from the answer to the connection's end (withheld bodies)."""
    unfinished: int = 0
    """Attempts under way when the time was up."""

    def report(self) -> dict[str, Any]:
        def spread(values: list[float]) -> dict[str, float] | None:
            if not values:
                return None
            return {"p50": round(percentile(values, 50), 3), "max": round(max(values), 3)}

        return {
            "clients": self.clients,
            "attempts": self.started,
            "outcomes": dict(self.outcomes.most_common()),
            "unexpected": dict(self.invalid),
            "examples": self.examples,
            "seconds_to_answer": spread(self.latencies),
            "seconds_to_cut": spread(self.toCut),
            "unfinished_at_the_end": self.unfinished,
        }


Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class Hostile:
    def __init__(self, a: argparse.Namespace, mix: dict[str, int]) -> None:
        self.a = a
        self.mix = mix
        self.tallies = {kind: KindTally(clients=n) for kind, n in mix.items() if n}
        self.rng = random.Random(a.seed)
        self.payloads: dict[str, bytes] = {}

    def prepare(self) -> None:
        """The large bodies, made once (or read from --count-tokens-body)."""
        if self.mix.get("count_tokens"):
            if self.a.count_tokens_body:
                with open(self.a.count_tokens_body, "rb") as f:
                    self.payloads["count_tokens"] = f.read()
            else:
                self.payloads["count_tokens"] = corpus.large_body(BIG, MODEL, count_tokens=True)
        if self.mix.get("big_unauth"):
            self.payloads["big_unauth"] = requestHead(BIG) + b" " * (BIG - 1)
        if self.mix.get("keyed_withheld"):
            self.payloads["keyed_withheld"] = requestHead(MAX_BODY, self.a.key) + b" " * (
                MAX_BODY - 1
            )
        if self.mix.get("huge_model"):
            self.payloads["huge_model"] = json.dumps(
                {
                    "model": "m" * 5_000_000,
                    "max_tokens": 16,
                    "messages": [{"role": "user", "content": "hi"}],
                }
            ).encode()

    async def connect(self) -> Streams:
        return await asyncio.open_connection(
            "127.0.0.1", self.a.port, local_addr=(self.a.source, 0), limit=1 << 20
        )

    # -- one attempt of each kind: (status, seconds to the answer) ------------------------

    async def slowly(self, conn: Streams, data: bytes) -> Answer:
        """Writes `data` a byte every --interval s until an answer comes."""
        answer = asyncio.ensure_future(readAnswer(*conn))
        try:
            for i in range(len(data)):
                conn[1].write(data[i : i + 1])
                done, _ = await asyncio.wait({answer}, timeout=self.a.interval)
                if done:
                    break
            return await answer
        finally:
            answer.cancel()

    async def slowHeaders(self, conn: Streams, tally: KindTally) -> Answer:
        return await self.slowly(conn, requestHead(2000, self.a.key))

    async def slowBodies(self, conn: Streams, tally: KindTally) -> Answer:
        conn[1].write(requestHead(2000, self.a.key))
        await conn[1].drain()
        return await self.slowly(conn, b" " * 2000)

    async def withheld(self, conn: Streams, tally: KindTally, kind: str) -> Answer:
        """All of a large request but its last byte, at full speed; then how long
        until ccproxy cuts the connection once it has answered."""
        answer = asyncio.ensure_future(readAnswer(*conn))
        conn[1].write(self.payloads[kind])
        try:
            await conn[1].drain()
        except OSError:
            pass  # cut while sending: the answer, if any, is read below
        got = await answer
        try:
            await asyncio.wait_for(conn[0].read(), LINGER + 10)
            tally.toCut.append(time.monotonic() - got.headAt)
        except OSError:  # a reset
            tally.toCut.append(time.monotonic() - got.headAt)
        except TimeoutError:
            raise Invalid("not_cut", f"open {LINGER + 10:g} s after the answer") from None
        return got

    async def bigUnauth(self, conn: Streams, tally: KindTally) -> Answer:
        return await self.withheld(conn, tally, "big_unauth")

    async def keyedWithheld(self, conn: Streams, tally: KindTally) -> Answer:
        return await self.withheld(conn, tally, "keyed_withheld")

    async def tooLarge(self, conn: Streams, tally: KindTally) -> Answer:
        conn[1].write(requestHead(40 * MIB, self.a.key) + b" " * MIB)
        return await readAnswer(*conn)

    async def hugeModel(self, conn: Streams, tally: KindTally) -> Answer:
        answer = await exchange(*conn, self.payloads["huge_model"], None, False, self.a.key)
        if len(answer.body) > 4096 or b"m" * 256 in answer.body:
            raise Invalid("model_name_echoed", f"{len(answer.body)} bytes of answer")
        return answer

    async def manyModels(self, conn: Streams, tally: KindTally) -> Answer:
        name = f"{tally.started:08x}-"
        name += "".join(self.rng.choices("abcdefghijklmnopqrstuvwxyz", k=250 - len(name) - 5))
        body = json.dumps(
            {
                "model": name + "-ok-4",
                "max_tokens": 64,
                "messages": [{"role": "user", "content": "a name of my own"}],
            }
        ).encode()
        answer = await exchange(*conn, body, None, False, self.a.key)
        if answer.status == 200:
            classify(answer, "p", "ok", False, 4)
        return answer

    async def countTokens(self, conn: Streams, tally: KindTally) -> Answer:
        body = self.payloads["count_tokens"]
        answer = await exchange(*conn, body, None, False, self.a.key, COUNT_TOKENS)
        if answer.status == 200:
            tokens = json.loads(answer.body).get("input_tokens")
            if not isinstance(tokens, int) or tokens <= 0:
                raise Invalid("no_input_tokens", repr(answer.body[:200]))
        return answer

    # -- the loop ----------------------------------------------------------------------------

    def attempt(self, kind: str) -> Callable[[Streams, KindTally], Awaitable[Answer]]:
        return {
            "slow_headers": self.slowHeaders,
            "slow_bodies": self.slowBodies,
            "big_unauth": self.bigUnauth,
            "too_large": self.tooLarge,
            "huge_model": self.hugeModel,
            "many_models": self.manyModels,
            "count_tokens": self.countTokens,
            "keyed_withheld": self.keyedWithheld,
        }[kind]

    async def worker(self, kind: str, until: float, delay: float) -> None:
        await asyncio.sleep(delay)
        tally, attempt = self.tallies[kind], self.attempt(kind)
        pause = self.a.pause if kind in ("big_unauth", "too_large", "huge_model") else 0
        while time.monotonic() < until:
            tally.started += 1
            began = time.monotonic()
            conn: Streams | None = None
            try:
                conn = await asyncio.wait_for(self.connect(), 30)
                answer = await asyncio.wait_for(attempt(conn, tally), until - began)
                tally.latencies.append(answer.headAt - began)
                self.judge(kind, tally, answer)
            except TimeoutError:
                tally.unfinished += 1  # the time is up (or the connect hung)
            except Invalid as e:
                self.unexpected(tally, e.kind, str(e))
            except (OSError, asyncio.IncompleteReadError, ValueError) as e:
                self.unexpected(tally, f"connection {type(e).__name__}", str(e))
            finally:
                if conn is not None:
                    conn[1].transport.abort()
            if pause:
                await asyncio.sleep(pause)

    def judge(self, kind: str, tally: KindTally, answer: Answer) -> None:
        if answer.status == 200:
            outcome = "200"
        else:
            errorType, _ = envelope(answer)
            outcome = f"{answer.status} {errorType}"
            if answer.status != 400 and answer.keepAlive:
                outcome += " (connection kept open)"
        if answer.status == EXPECTED[kind] and "kept open" not in outcome:
            tally.outcomes[outcome] += 1
        else:
            self.unexpected(tally, outcome, answer.body[:300].decode("utf-8", "replace"))

    def unexpected(self, tally: KindTally, outcome: str, detail: str) -> None:
        tally.outcomes[outcome + " (unexpected)"] += 1
        tally.fail(outcome, detail)

    async def run(self) -> dict[str, Any]:
        until = time.monotonic() + self.a.seconds
        workers = []
        for kind, tally in self.tallies.items():
            for i in range(tally.clients):
                # Spread the slow ones over one interval, so their bytes do not come in bursts.
                workers.append(self.worker(kind, until, self.a.interval * i / tally.clients))
        await asyncio.gather(*workers)
        return {kind: tally.report() for kind, tally in self.tallies.items()}


def parseMix(text: str) -> dict[str, int]:
    mix = dict(MIX)
    for item in filter(None, (part.strip() for part in text.split(","))):
        kind, _, count = item.partition("=")
        if kind not in MIX or not count.isdigit():
            raise SystemExit(f"hostile: --mix takes KIND=N with KIND one of {', '.join(MIX)}")
        mix[kind] = int(count)
    return mix


def main(argv: list[str] | None = None) -> int:
    ap = argument_parser("python -m bench.hostile", __doc__)
    ap.add_argument("--port", type=int, required=True, help="ccproxy's port on 127.0.0.1")
    ap.add_argument("--key", required=True, help="a client's key (the kinds that send one)")
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--source", default="127.0.0.2", help="address to connect from [127.0.0.2]")
    ap.add_argument("--mix", default="", help="KIND=N,... over the defaults (see above)")
    ap.add_argument("--interval", type=float, default=3.0, help="seconds between slow bytes [3]")
    ap.add_argument("--pause", type=float, default=1.0, help="seconds between attempts [1]")
    ap.add_argument("--count-tokens-body", default="", help="the 30 MiB body, made if not given")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", default="", help="where the report goes [stdout]")
    a = ap.parse_args(argv)
    hostile = Hostile(a, parseMix(a.mix))
    hostile.prepare()
    report = asyncio.run(hostile.run())
    text = json.dumps(report, indent=1)
    if a.json:
        with open(a.json, "w") as f:
            f.write(text)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
