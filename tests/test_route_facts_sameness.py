"""The cheap reads of `routes:` (the facts' comprehensions, a rule's tool globs, the
rules kept by model name) answer exactly what the plain loops and `fnmatchcase` do,
on the captured Claude Code requests, the bench's bodies, and seeded random shapes
that include every malformed case the loops tell apart."""

from __future__ import annotations

import copy
import random
from fnmatch import fnmatchcase
from typing import Any

import orjson
import pytest

from bench.corpus import bodies
from ccproxy.config import Config
from ccproxy.config.routing import FOUND_MEMO, ToolGlobs
from ccproxy.translate import facts
from ccproxy.translate.facts import RequestFacts
from tests.support.fixtures import capturedBodies

KINDS: list[Any] = [
    "text",
    "tool_use",
    "tool_result",
    "image",
    "document",
    "thinking",
    None,
    5,
    [],
    {},
    "imag",
]


def _part(rng: random.Random) -> Any:
    roll = rng.random()
    if roll < 0.05:
        return rng.choice([1, "x", None, ["image"]])
    part: dict[str, Any] = {"text": "x"}
    if roll > 0.1:
        part["type"] = rng.choice(KINDS)
    return part


def _block(rng: random.Random) -> Any:
    roll = rng.random()
    if roll < 0.04:
        return rng.choice([1, "image", None, [{"type": "image"}]])
    block: dict[str, Any] = {}
    if roll > 0.08:
        block["type"] = rng.choice(KINDS)
    if rng.random() < 0.6:
        inner = rng.random()
        if inner < 0.5:
            block["content"] = [_part(rng) for _ in range(rng.randrange(4))]
        else:
            block["content"] = rng.choice(["result", None, 7, {"type": "image"}])
    return block


def _message(rng: random.Random) -> Any:
    roll = rng.random()
    if roll < 0.04:
        return rng.choice([1, "user", None, [{"type": "image"}]])
    message: dict[str, Any] = {"role": rng.choice(["user", "assistant"])}
    if roll > 0.08:
        content = rng.random()
        if content < 0.75:
            message["content"] = [_block(rng) for _ in range(rng.randrange(5))]
        else:
            message["content"] = rng.choice(["hello", None, 3, {"type": "image"}])
    return message


def _tool(rng: random.Random) -> Any:
    roll = rng.random()
    if roll < 0.05:
        return rng.choice([1, "a type", "name", None, ["type"]])
    tool: dict[str, Any] = {"input_schema": {}}
    if roll > 0.1:
        tool["name"] = rng.choice(["Read", "web_search", "mcp__x__y", 5, None, ["n"]])
    if rng.random() < 0.3:
        tool["type"] = rng.choice(["custom", "web_search_20250305", None, 5, [], {}])
    return tool


def _real() -> list[dict[str, Any]]:
    found = [b for b in capturedBodies() if isinstance(b, dict) and "messages" in b]
    return found + [orjson.loads(raw) for raw in bodies()]


def test_the_real_bodies_are_read_as_the_loops_read_them() -> None:
    real = _real()
    assert any(RequestFacts(b, 0).images for b in real)  # 009: an image in a tool result
    for body in real:
        messages, tools = body["messages"], body.get("tools", [])
        assert facts._images(messages) == facts._walkedImages(messages)
        assert facts._tools(tools) == facts._walkedTools(tools)


def test_an_image_added_anywhere_is_counted() -> None:
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png"}}
    for body in _real():
        for where in range(len(body["messages"])):
            changed = copy.deepcopy(body)
            message = changed["messages"][where]
            if not isinstance(message.get("content"), list):
                message["content"] = [{"type": "text", "text": str(message.get("content"))}]
            before = RequestFacts(changed, 0).images
            message["content"].append(image)
            result = {"type": "tool_result", "tool_use_id": "t", "content": [image, image]}
            message["content"].append(result)
            assert RequestFacts(changed, 0).images == before + 3
            assert facts._walkedImages(changed["messages"]) == before + 3


@pytest.mark.parametrize("seed", range(40))
def test_random_shapes_are_read_as_the_loops_read_them(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(50):
        messages = [_message(rng) for _ in range(rng.randrange(8))]
        tools = [_tool(rng) for _ in range(rng.randrange(6))]
        assert facts._images(messages) == facts._walkedImages(messages), messages
        assert facts._tools(tools) == facts._walkedTools(tools), tools


def test_unhashable_types_are_no_error() -> None:
    """A `type` or `effort` that is a list or an object named nothing; the facts
    raised TypeError on it (and the request failed with a 500) before."""
    body = {
        "model": "m",
        "messages": [
            {"role": "user", "content": [{"type": []}, {"type": {}}]},
            {"role": "user", "content": [{"type": "tool_result", "content": [{"type": []}]}]},
        ],
        "tools": [{"name": "a", "type": []}],
        "thinking": {"type": []},
        "output_config": {"effort": {}},
    }
    found = RequestFacts(body, 10)
    assert (found.images, found.thinking, found.tools) == (0, False, ("a",))
    body["output_config"] = {"effort": "max"}
    assert RequestFacts(body, 10).thinking is True


GLOBS = [
    "web_search*",
    "mcp__search__*",
    "Read",
    "",
    "*",
    "a?c",
    "[ab]*",
    "*x",
    "x*y",
    "ab**",
    "Bash(*)",
    "é*",
]
NAMES = ["web_search", "web_searchX", "web_search\n", "mcp__search__q", "Read", "read", "", "abc"]
NAMES += ["a\nc", "bx", "x\ny", "xy", "Bash(ls)", "éte", "web", "ab", "a*", "[ab]"]


@pytest.mark.parametrize("seed", range(30))
def test_tool_globs_match_as_fnmatchcase(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(40):
        patterns = tuple(rng.sample(GLOBS, rng.randrange(1, 4)))
        names = tuple(rng.sample(NAMES, rng.randrange(0, 6)))
        expected = any(fnmatchcase(n, p) for n in names for p in patterns)
        assert ToolGlobs.of(patterns).anyOf(names) is expected, (patterns, names)


RULES = """
clients: [{name: alice, key: a}, {name: bob, key: b}]
upstreams:
  corp: {url: "http://corp.test/v1"}
  small: {url: "http://small.test/v1"}
routes:
  - name: opus
    when: {model: "claude-opus-*", background: true}
    target: small/mini
  - name: any
    when: {tools: ["web_search*"]}
    target: corp/s
  - name: named
    when: {model: ["claude-*", "gw-*"], client: [alice]}
    target: corp/n
models:
  "*": corp/gpt-4.1
"""


def test_the_rules_kept_by_model_choose_as_every_rule_tried() -> None:
    config = Config.fromYAML(RULES, {})
    router = config.router

    def everyRule(model: str, found: RequestFacts, client: str | None) -> str:
        for rule in router.rules:
            if rule.when.holds(model, found, client):
                return rule.label
        return "*"

    cases = [("claude-opus-4", [], None), ("claude-opus-4", [{"name": "x"}], "alice")]
    cases += [("gw-1", [{"name": "web_search"}], "bob"), ("other", [], "alice")]
    for i in range(FOUND_MEMO * 2):  # past the memo's bound: it starts again
        cases.append((f"claude-opus-{i}", [{"name": "x"}], "alice" if i % 2 else None))
    for model, tools, client in cases * 2:
        body = {"model": model, "messages": [], "tools": tools}
        route = router.choose(model, RequestFacts(body, 10), client)
        assert route is not None
        assert route.pattern == everyRule(model, RequestFacts(body, 10), client)
        assert len(router._taking) <= FOUND_MEMO


def test_the_bench_counts_the_path_it_times() -> None:
    """`python -m bench.routing --instructions` runs this under callgrind."""
    from bench.routing import main as bench

    assert bench(["--count", "find", "1"]) == 0
    assert bench(["--count", "choose", "1"]) == 0
