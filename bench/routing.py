"""What `routes:` costs a request: ``python -m bench.routing``.

In-process, no HTTP: the CPU time (``time.process_time``) of choosing a route the
way ``MessagesAPI`` does (``RequestFacts`` read from the parsed body, then
``ModelRouter.choose``, the token estimate only when a rule asks for it), on

- the bench's six Claude-Code-shaped bodies of 36-60 KB (``bench.corpus``), with a
  realistic rule set of six rules that none of them meets, so every rule is tried
  (the worst case for a request that falls through to ``models:``), beside the
  ``models:`` lookup alone that every request paid before;
- a long conversation over an ``input_tokens_over`` threshold: the estimate the
  first time its texts are seen, and on the next turn (the same body and one more
  message), when only the new text is counted;
- hostile shapes: a content array of n and 10n blocks, and a deeply nested tool
  input (which is not walked): linear work gives a ratio of about 10.

Each figure is the best of ``--runs`` runs of ``--n`` evaluations (per request:
the total divided by n). A tight loop over six bodies runs hotter than a daemon
does (its caches hold nothing else), so these times are some 2-3 times under
what the daemon pays for the same work; ``--instructions`` adds the count of
the first two rows' work under valgrind's callgrind, which does not move with
the host and is what ``python -m bench.instructions --routes on`` finds in the
daemon (its delta over ``--routes off``: the same path, and nothing else).
Exit status: 0.
"""

from __future__ import annotations

import argparse
import copy
import gc
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import orjson

from bench.corpus import bodies, large_body
from ccproxy.config import Config
from ccproxy.config.routing import NEEDS_TOKENS
from ccproxy.translate import tokens
from ccproxy.translate.dialect import Profile
from ccproxy.translate.facts import RequestFacts
from ccproxy.translate.tokens import requestTokens

CONFIG = """
clients: [{name: alice, key: a}, {name: bob, key: b}]
upstreams:
  corp: {url: "http://corp.test/v1"}
  small: {url: "http://small.test/v1"}
  vision: {url: "http://vision.test/v1"}
  longctx: {url: "http://longctx.test/v1"}
routes:
  - name: background
    when: {background: true}
    target: small/mini
  - name: vision
    when: {model: "claude-*", images: true}
    target: [vision/qwen2.5-vl-72b, corp/gpt-4.1]
  - name: long
    when: {model: "claude-*", input_tokens_over: 120000}
    target: longctx/gemini-2.5-pro
  - name: think
    when: {thinking: true, model: "claude-opus-*"}
    target: corp/o4-mini
  - name: search
    when: {tools: ["web_search*", "mcp__search__*"]}
    target: corp/gpt-4.1-search
  - name: team
    when: {client: [alice, bob], model: "claude-opus-*"}
    target: corp/gpt-5
models:
  claude-haiku-*: small/mini
  claude-*: corp/gpt-4.1
"""


def choose(config: Config, body: dict[str, Any], size: int, client: str | None) -> str:
    """What `MessagesAPI._route` does, without the web."""
    router = config.router
    model = body["model"]
    router.find(model)
    facts = RequestFacts(body, size)
    route = router.choose(model, facts, client)
    if route is NEEDS_TOKENS:
        facts.inputTokens = requestTokens(body, model, Profile(), config.defaultMaxTokens)
        route = router.choose(model, facts, client)
    assert route is not None
    return route.pattern


def best(runs: int, n: int, work: Callable[[], object]) -> float:
    """Seconds of CPU per call of `work`, the best of `runs` runs of `n` calls."""
    times = []
    for _ in range(runs):
        start = time.process_time()
        for _ in range(n):
            work()
        times.append((time.process_time() - start) / n)
    return min(times)


def _counted(work: str, rounds: int) -> None:
    """`rounds` rounds over the corpus of `work` (`find` alone, or `choose`), after
    a warm-up: what `_instructions` runs under callgrind."""
    config = Config.fromYAML(CONFIG, {})
    corpus = [(orjson.loads(raw), len(raw)) for raw in bodies()]
    router = config.router
    for i in range(5 + rounds):
        if i == 5:
            gc.collect()
            gc.freeze()  # as the daemon does after its start
        for body, size in corpus:
            if work == "find":
                router.find(body["model"])
            else:
                choose(config, body, size, "carol")


def _instructions(work: str) -> float:
    """Instructions per request of `work`: the difference of two runs of
    `_counted` under callgrind (10 and 60 rounds) over the requests between."""
    totals = []
    for rounds in (10, 60):
        with tempfile.TemporaryDirectory() as tmp:
            done = subprocess.run(
                [
                    "valgrind",
                    "--tool=callgrind",
                    f"--callgrind-out-file={os.path.join(tmp, 'out')}",
                    sys.executable,
                    "-m",
                    "bench.routing",
                    "--count",
                    work,
                    str(rounds),
                ],
                capture_output=True,
                text=True,
                env={**os.environ, "PYTHONHASHSEED": "0"},
            )
        found = re.search(r"refs:\s+([\d,]+)", done.stderr)
        if done.returncode or found is None:
            raise SystemExit(f"bench.routing: callgrind failed: {done.stderr[-500:]}")
        totals.append(int(found.group(1).replace(",", "")))
    return (totals[1] - totals[0]) / (50 * len(bodies()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=2000, help="evaluations per run")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument(
        "--instructions",
        action="store_true",
        help="also count the first rows' instructions with valgrind (about a minute)",
    )
    parser.add_argument("--count", nargs=2, metavar=("WORK", "ROUNDS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.count:
        _counted(args.count[0], int(args.count[1]))
        return 0
    config = Config.fromYAML(CONFIG, {})
    corpus = [(orjson.loads(raw), len(raw)) for raw in bodies()]
    rows: list[tuple[str, str]] = []

    def perRequest(work: Callable[[dict[str, Any], int], object]) -> float:
        def all6() -> None:
            for body, size in corpus:
                work(body, size)

        return best(args.runs, args.n // len(corpus), all6) / len(corpus)

    labels = {choose(config, b, s, "carol") for b, s in corpus}
    before = perRequest(lambda b, s: config.router.find(b["model"]))
    after = perRequest(lambda b, s: choose(config, b, s, "carol"))
    sizes = f"{min(s for _, s in corpus) // 1024}-{max(s for _, s in corpus) // 1024} KB"
    rows.append((f"models: lookup alone (before), {sizes} bodies", f"{before * 1e3:.4f} ms"))
    rows.append(
        (
            f"6 rules tried + models: ({', '.join(sorted(labels))} chosen)",
            f"{after * 1e3:.4f} ms (**+{(after - before) * 1e3:.4f} ms**, target ≤ +0.05 ms)",
        )
    )

    if args.instructions:
        found, chosen = _instructions("find"), _instructions("choose")
        rows.append(
            (
                "instructions: models: lookup alone / 6 rules tried + models:",
                f"{found:,.0f} / {chosen:,.0f} (**+{chosen - found:,.0f}**)",
            )
        )

    raw = large_body(500_000, "claude-sonnet-4-5")
    long = orjson.loads(raw)
    tokens._memo.clear()
    start = time.process_time()
    label = choose(config, long, len(raw), None)
    cold = time.process_time() - start
    nextTurn = copy.deepcopy(long)
    nextTurn["messages"].append({"role": "user", "content": "And the tests? " * 40})
    start = time.process_time()
    choose(config, nextTurn, len(raw) + 600, None)
    warm = time.process_time() - start
    rows.append(
        (
            f"a {len(raw) // 1024} KB conversation, input_tokens_over 120000 ({label})",
            f"{cold * 1e3:.1f} ms first seen, {warm * 1e3:.1f} ms on its next turn",
        )
    )

    block = {"type": "tool_result", "tool_use_id": "t", "content": [{"type": "text", "text": "x"}]}
    timesByN = []
    for n in (20_000, 200_000):
        body = {"model": "claude-x", "messages": [{"role": "user", "content": [block] * n}]}
        timesByN.append(best(args.runs, 1, lambda body=body: RequestFacts(body, 10**9).images))
    rows.append(
        (
            "facts of a content array of 20000 / 200000 tool results",
            f"{timesByN[0] * 1e3:.2f} ms / {timesByN[1] * 1e3:.2f} ms "
            f"(ratio {timesByN[1] / timesByN[0]:.1f})",
        )
    )
    deep: dict[str, Any] = {}
    inner = deep
    for _ in range(100_000):
        inner["a"] = {}
        inner = inner["a"]
    use = {"type": "tool_use", "id": "t", "name": "x", "input": deep}
    nested = {"model": "claude-x", "messages": [{"role": "assistant", "content": [use]}]}
    cost = best(args.runs, args.n, lambda: choose(config, nested, 10_000, None))
    rows.append(("a tool input nested 100000 levels deep", f"{cost * 1e3:.4f} ms"))

    print("| routes: figure | CPU per request |")
    print("|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
