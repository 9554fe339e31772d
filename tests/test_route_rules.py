"""`routes:`: rules on what a request holds, tried in file order before `models:`."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import orjson
import pytest
from twisted.logger import LogLevel, formatEvent

from ccproxy.__main__ import main
from ccproxy.config import Config, ConfigError
from ccproxy.config.routing import NEEDS_TOKENS, When
from ccproxy.translate.dialect import Profile
from ccproxy.translate.facts import RequestFacts
from ccproxy.translate.tokens import tokensAtMost
from ccproxy.web import messages
from ccproxy.web.messages import estimateInputTokens
from tests.support.fakes import jsonReply
from tests.support.fixtures import REQUESTS, TOOLS, requestBodies, requestBody
from tests.support.harness import Harness, message
from tests.support.ledger import MemoryLedger
from tests.test_operations import accessEvents, loggedEvents, serviceFor

UPSTREAMS = """
upstreams:
  corp: {url: "http://corp.test/v1"}
  small: {url: "http://small.test/v1"}
  vision: {url: "http://vision.test/v1"}
  longctx: {url: "http://longctx.test/v1"}
  search: {url: "http://search.test/v1"}
"""

RULES = (
    UPSTREAMS
    + """
routes:
  - name: background
    when: {background: true}
    target: small/mini
  - name: haiku
    when: {model: "claude-haiku-*"}
    target: small/mini
  - name: vision
    when: {images: true}
    target: [vision/qwen2.5-vl-72b, corp/gpt-4.1]
  - name: long
    when: {input_tokens_over: 100000}
    target: longctx/gemini-2.5-pro
  - name: search
    when: {tools: ["web_search*"]}
    target: search/gpt-4.1-search
  - when: {thinking: true, model: "claude-opus-*"}
    target: corp/o4-mini
models:
  "*": corp/gpt-4.1
"""
)


def choose(config: Config, body: dict[str, Any], client: str | None = None) -> str | None:
    """The label of the route `body` takes, as the daemon chooses it (the token
    estimate computed only when a rule asks for it)."""
    facts = RequestFacts(body, len(orjson.dumps(body)))
    route = config.router.choose(body["model"], facts, client)
    if route is NEEDS_TOKENS:
        facts.inputTokens = estimateInputTokens(body, body["model"], Profile(), 32000)
        route = config.router.choose(body["model"], facts, client)
    return None if route is None else route.pattern


def padded(body: dict[str, Any], chars: int) -> dict[str, Any]:
    """`body` with a user text of `chars` characters of prose before its last message."""
    longer = copy.deepcopy(body)
    words = "the quick brown fox reads a file and writes a test for it; "
    text = (words * (chars // len(words) + 1))[:chars]
    longer["messages"].insert(-1, {"role": "user", "content": text})
    longer["messages"].insert(-1, {"role": "assistant", "content": "ok"})
    return longer


def withImage(body: dict[str, Any]) -> dict[str, Any]:
    """`body` with a screenshot in its last user message."""
    shot = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AA"}}
    changed = copy.deepcopy(body)
    last = [m for m in changed["messages"] if m["role"] == "user"][-1]
    if isinstance(last["content"], str):
        last["content"] = [{"type": "text", "text": last["content"]}]
    last["content"].append(shot)
    return changed


SEARCH_TOOL = {"type": "web_search_20250305", "name": "web_search", "max_uses": 5}


# -- the captured Claude Code requests, and long ones made from them -----------------


CASES = [
    ("001", lambda b: b, "routes.5"),  # opus, adaptive thinking: the thinking rule
    ("009", lambda b: b, "vision"),  # the image is inside a tool_result (Read on a PNG)
    ("012", lambda b: b, "haiku"),  # --model haiku: tools and thinking, but haiku first
    ("013", lambda b: b, "*"),  # sonnet 4.5, thinking enabled, not opus
    ("014", lambda b: b, "*"),  # effort high, a custom model name
    ("023", lambda b: b, "background"),  # the session's title: no tools
    ("028", lambda b: b, "*"),  # /compact on gw-opus: no rule for it
    ("032", lambda b: b, "*"),  # thinking off, effort medium
    ("035", lambda b: b, "routes.5"),
    ("039", lambda b: b, "background"),  # the Python SDK without tools
    ("040", lambda b: b, "*"),  # the Python SDK offering a tool
    ("028", lambda b: padded(b, 600_000), "long"),  # a long conversation to compact
    ("001", lambda b: padded(b, 600_000), "long"),
    ("001", lambda b: padded(b, 300_000), "routes.5"),  # ~60K tokens: not long
    ("001", lambda b: withImage(padded(b, 600_000)), "vision"),  # the first rule wins
    ("012", lambda b: withImage(b), "haiku"),
    ("001", lambda b: {**b, "tools": [*b["tools"], SEARCH_TOOL]}, "search"),
    ("023", lambda b: {**b, "thinking": {"type": "enabled", "budget_tokens": 1024}}, "background"),
]


@pytest.mark.parametrize(
    ("number", "change", "label"),
    CASES,
    ids=[f"{n}-{label}-{i}" for i, (n, _, label) in enumerate(CASES)],
)
def test_captured_requests_take_the_first_rule_that_holds(
    number: str, change: Any, label: str
) -> None:
    config = Config.fromYAML(RULES, {})
    assert choose(config, change(requestBody(number))) == label


def test_the_long_threshold_is_the_count_tokens_estimate() -> None:
    body = padded(requestBody("001"), 400_000)
    estimate = estimateInputTokens(body, body["model"], Profile(), 32000)
    over = Config.fromYAML(RULES.replace("100000", str(estimate - 1)), {})
    at = Config.fromYAML(RULES.replace("100000", str(estimate)), {})
    assert choose(over, body) == "long"
    assert choose(at, body) == "routes.5"


@pytest.mark.parametrize(
    ("thinking", "effort", "holds"),
    [
        ({"type": "enabled", "budget_tokens": 1024}, None, True),
        ({"type": "adaptive"}, "low", True),
        ({"type": "disabled"}, None, False),
        (None, "medium", False),
        (None, "high", True),
        (None, "xhigh", True),
        ({"type": "disabled"}, "max", True),
        ("enabled", None, False),  # not an object: no thinking said
    ],
)
def test_thinking_is_on_or_a_high_effort(thinking: Any, effort: Any, holds: bool) -> None:
    body = message()
    if thinking is not None:
        body["thinking"] = thinking
    if effort is not None:
        body["output_config"] = {"effort": effort}
    assert RequestFacts(body, 100).thinking is holds


@pytest.mark.parametrize("body", requestBodies())
def test_no_estimate_exceeds_the_bound_routing_skips_counting_under(body: dict[str, Any]) -> None:
    for each in (body, padded(body, 50_000), withImage(body)):
        facts = RequestFacts(each, len(orjson.dumps(each)))
        estimate = estimateInputTokens(each, each["model"], Profile(), 32000)
        assert estimate <= facts.tokenBound


def test_image_blocks_of_a_url_count_in_the_bound() -> None:
    url = {"type": "image", "source": {"type": "url", "url": "https://x.test/a.png"}}
    body = message()
    body["messages"][0]["content"] = [url] * 50
    facts = RequestFacts(body, len(orjson.dumps(body)))
    assert facts.images == 50
    assert estimateInputTokens(body, "m", Profile(), 100) <= facts.tokenBound
    assert facts.tokenBound == tokensAtMost(facts.size, 50)


def test_a_small_request_is_never_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under the bound, the rules decide without the estimate: most requests cost no
    counting at all."""
    counted: list[int] = []

    def spy(*args: Any) -> int:
        counted.append(1)
        return estimateInputTokens(*args)

    monkeypatch.setattr(messages, "estimateInputTokens", spy)
    h = Harness.build(RULES)
    assert h.post(requestBody("001")).status == 200
    assert counted == []
    assert h.post(padded(requestBody("001"), 600_000)).status == 200
    assert counted == [1]  # once, for every rule that asks
    assert h.upstream.received[-1].body["model"] == "gemini-2.5-pro"


# -- what a hostile body costs: its length, and nothing it can break ------------------


def test_facts_of_malformed_bodies_are_absent_not_errors() -> None:
    for body in (
        {"model": "m", "messages": "not a list", "tools": {"a": 1}, "thinking": []},
        {"model": "m", "messages": [1, None, {"content": 5}, {"content": [1, "x", None]}]},
        {"model": "m", "messages": [{"content": [{"type": "tool_result", "content": 7}]}]},
        {"model": "m", "tools": [1, {"name": 5, "type": None}], "output_config": "high"},
    ):
        facts = RequestFacts(body, 10)
        assert (facts.images, facts.thinking, facts.tools, facts.background) == (0, False, (), True)


def test_deep_nesting_is_not_walked() -> None:
    deep: dict[str, Any] = {}
    inner = deep
    for _ in range(100_000):  # far past the recursion limit
        inner["a"] = {}
        inner = inner["a"]
    body = message()
    use = {"type": "tool_use", "id": "t", "name": "x", "input": deep}
    body["messages"].append({"role": "assistant", "content": [use]})
    body["tools"] = [{"name": "x", "input_schema": deep}]
    facts = RequestFacts(body, 1000)
    assert (facts.images, facts.tools) == (0, ("x",))


def test_a_huge_content_array_is_read_once() -> None:
    block = {"type": "tool_result", "tool_use_id": "t", "content": [{"type": "text", "text": "x"}]}
    body = message()
    body["messages"][0]["content"] = [block] * 200_000 + [
        {"type": "tool_result", "tool_use_id": "u", "content": [{"type": "document"}]}
    ]
    facts = RequestFacts(body, 10_000_000)
    assert facts.images == 1
    assert facts.images == 1  # kept: a second rule asking reads nothing


# -- the config -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("routes", "error"),
    [
        ("[{when: {imagez: true}, target: corp}]", "routes.0.when.imagez: unknown key"),
        ("[{when: {images: yes-please}, target: corp}]", "routes.0.when.images: must be true"),
        ("[{when: {input_tokens_over: 0}, target: corp}]", "routes.0.when.input_tokens_over:"),
        ("[{when: {tools: []}, target: corp}]", "routes.0.when.tools: the list is empty"),
        ("[{when: {model: [3]}, target: corp}]", "routes.0.when.model.0: must be a name"),
        ("[{when: {}, target: corp}]", "routes.0.when: names no condition (one of model, images"),
        ("[{when: {images: true}, target: nowhere}]", "routes.0.target: unknown upstream"),
        ("[{when: {images: true}, target: [corp, nowhere/x]}]", "routes.0.target.1: unknown"),
        ("[{when: {images: true}, target: []}]", "routes.0.target: the list of targets is empty"),
        ("[{when: {images: true}}]", "routes.0.target: is required"),
        ("[{target: corp}]", "routes.0.when: is required"),
        ("[{when: {images: true}, target: corp, then: x}]", "routes.0.then: unknown key"),
        ("[{name: 'a b', when: {images: true}, target: corp}]", "routes.0.name: rule names"),
        (
            "[{name: v, when: {images: true}, target: corp}, {name: v, when: {images: true},"
            " target: corp}]",
            "routes.1.name: two rules are named 'v'",
        ),
        ("[{when: {client: [mallory]}, target: corp}]", "routes.0.when.client: unknown client"),
        ("{images: corp}", "routes: must be a list"),
    ],
)
def test_a_bad_rule_is_refused_with_its_key_path(routes: str, error: str) -> None:
    clients = "clients: [{name: alice, key: k1}]\n"
    text = UPSTREAMS + clients + "routes: " + routes + "\nmodels: {'*': corp}\n"
    with pytest.raises(ConfigError) as raised:
        Config.fromYAML(text, {})
    assert str(raised.value).startswith(error), str(raised.value)


def test_the_documented_examples_load() -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    start = readme.index('routes:\n  - when: {model: "claude-*", images: true}')
    example = readme[start : readme.index("```", start)]
    clients = "clients: [{name: alice, key: a}, {name: bob, key: b}]\n"
    config = Config.fromYAML(UPSTREAMS + clients + example + "models: {'*': corp}\n", {})
    assert len(config.router.rules) == 5
    shipped = Path(__file__).resolve().parents[1] / "etc" / "ccproxy.yaml"
    assert Config.fromPath(str(shipped), {"CORP_API_KEY": "k"}).router.rules


RELOAD_RULES = """
listen: "tcp:0:interface=127.0.0.1"
ledger: off
upstreams:
  a: {url: "http://a.test/v1"}
  b: {url: "http://b.test/v1"}
routes:
  - when: {images: true}
    target: b/vision
models:
  claude-*: a/first
"""


def test_a_reload_takes_new_rules_and_refuses_bad_ones(
    tmp_path: Path, noLoggedFailures: list[dict[str, Any]]
) -> None:
    service, path = serviceFor(tmp_path, RELOAD_RULES)
    path.write_text(RELOAD_RULES.replace("images: true", "background: true"))
    assert service.reload() is True
    (rule,) = service.app.config.router.rules
    assert rule.when.background is True and rule.when.images is None
    good = service.app.config
    path.write_text(RELOAD_RULES.replace("images: true", "pictures: true"))
    with loggedEvents() as events:
        assert service.reload() is False
    assert service.app.config is good
    errors = [formatEvent(e) for e in events if e.get("log_level") == LogLevel.error]
    assert any("routes.0.when.pictures: unknown key" in line for line in errors)
    noLoggedFailures.clear()  # the refusal is logged as an error on purpose


# -- the route named in the access log, the metrics and the ledger --------------------


APP = """
clients:
  - {name: alice, key: alice-key, admin: true}
  - {name: bob, key: bob-key}
upstreams:
  up: {url: "http://up.test/v1", retries: 0}
  eyes: {url: "http://eyes.test/v1", retries: 0}
  solo: {url: "http://solo.test/v1", retries: 0, count_tokens: false}
routes:
  - name: vision
    when: {images: true}
    target: eyes/vision-model
  - when: {client: bob, model: "claude-opus-*"}
    target: solo/bobs-model
models:
  claude-*: up/big-model
"""


def test_the_chosen_rule_is_named_in_the_log_the_metrics_and_the_ledger() -> None:
    ledger = MemoryLedger()
    h = Harness.build(APP, ledger=lambda clock: ledger)
    alice, bob = {"x-api-key": "alice-key"}, {"x-api-key": "bob-key"}

    def send() -> None:
        assert h.post(requestBody("009"), headers=alice).status == 200  # image in a result
        assert h.post(message(), headers=alice).status == 200
        assert h.post(message(model="claude-opus-4"), headers=bob).status == 200
        assert h.post(message(model="claude-opus-4"), headers=alice).status == 200

    events = accessEvents(send)
    assert [e["route"] for e in events] == ["vision", "claude-*", "routes.1", "claude-*"]
    assert [h.upstream.received[i].body["model"] for i in range(4)] == [
        "vision-model",
        "big-model",
        "bobs-model",
        "big-model",
    ]
    assert "route=vision -> eyes/vision-model" in formatEvent(events[0])
    assert "route=" not in formatEvent(events[1])
    assert [r.route for r in ledger.rows] == ["vision", "claude-*", "routes.1", "claude-*"]
    page = h.call("GET", "/metrics", headers=alice).body.decode()
    assert (
        'ccproxy_requests_total{client="alice",endpoint="messages",model="claude-*",'
        'route="vision",status="200",upstream="eyes"} 1.0'
    ) in page
    assert 'model="claude-*",route="routes.1",status="200",upstream="solo"' in page


def test_count_tokens_follows_the_rules() -> None:
    h = Harness.build(APP)
    bob = {"x-api-key": "bob-key"}
    reply = h.post(message(model="claude-opus-4"), "/v1/messages/count_tokens", headers=bob)
    assert reply.status == 501  # routes.1 sends it to solo, which has count_tokens: false
    reply = h.post(message(model="claude-sonnet-4"), "/v1/messages/count_tokens", headers=bob)
    assert reply.status == 200 and reply.json()["input_tokens"] > 0


def test_a_model_only_a_rule_serves_is_served_and_else_404() -> None:
    h = Harness.build(APP)
    alice = {"x-api-key": "alice-key"}
    body = withImage(message(model="gpt-4o"))
    assert h.post(body, headers=alice).status == 200  # no models: entry, but the rule
    h.upstream.queue(jsonReply({"error": {"message": "never asked"}}, 500))
    reply = h.post(message(model="gpt-4o"), headers=alice)
    assert reply.status == 404 and "'gpt-4o'" in reply.json()["error"]["message"]


def test_explain_names_the_offered_tools_the_globs_match() -> None:
    when = When(tools=("Read", "mcp__search__*", "web_?earch*"))
    offered = [{"name": n} for n in ("Bash", "Read", "mcp__search__q", "mcp__other__q")]
    facts = RequestFacts({"tools": [*offered, {"type": "web_search_20250305"}]}, 100)
    assert list(when.explain("m", facts, None)) == [
        (
            "tools ['Read', 'mcp__search__*', 'web_?earch*']",
            "Read, mcp__search__q, web_search_20250305",
            True,
        )
    ]
    none = RequestFacts({"tools": offered[:1]}, 100)
    assert list(when.explain("m", none, None)) == [
        ("tools ['Read', 'mcp__search__*', 'web_?earch*']", "none of 1 offered", False)
    ]


# -- python -m ccproxy route ----------------------------------------------------------


def test_route_command_explains_the_choice(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "ccproxy.yaml"
    path.write_text(RULES)
    (capture_,) = REQUESTS.glob("009-*.json")
    assert main(["route", "--config", str(path), str(capture_)]) == 0
    out = capsys.readouterr().out
    assert "background: no\n  no   background true: 12 tools offered" in out
    assert "vision: matches" in out
    assert "  yes  images true: 1 image or document blocks" in out
    assert "input_tokens_over 100000: at most" not in out  # counted: the tool shows it
    assert "tokens (estimated)" in out
    assert out.endswith("chosen: vision -> vision/qwen2.5-vl-72b (failover: corp/gpt-4.1)\n")

    body = tmp_path / "body.json"
    body.write_bytes(orjson.dumps(message(model="gpt-4o", tools=TOOLS)))
    path.write_text(RULES.replace('"*": corp/gpt-4.1', "claude-*: corp/gpt-4.1"))
    assert main(["route", "--config", str(path), str(body)]) == 1
    assert "chosen: none, the client gets 404" in capsys.readouterr().out

    body.write_text("[1]")
    assert main(["route", "--config", str(path), str(body)]) == 2


def test_the_bench_row_runs(capsys: pytest.CaptureFixture[str]) -> None:
    from bench.routing import main as bench

    assert bench(["--n", "6", "--runs", "1"]) == 0
    out = capsys.readouterr().out
    assert "6 rules tried + models: (claude-* chosen)" in out  # every rule was tried
    assert "input_tokens_over 120000 (long)" in out


def test_the_daemon_logs_its_rules_first(tmp_path: Path) -> None:
    service, path = serviceFor(tmp_path, RELOAD_RULES)
    path.write_text(RELOAD_RULES.replace("images: true", "images: true, tools: [a*]"))
    with loggedEvents() as events:
        assert service.reload() is True
    lines = [formatEvent(e) for e in events if formatEvent(e).startswith("route ")]
    assert lines == [
        "route routes.0 when {images: true, tools: [a*]} -> b/vision",
        "route claude-* -> a/first",
    ]


def test_the_bound_holds_where_every_character_is_a_token() -> None:
    """Digits are a token each: the densest text there is still fits the bound."""
    use = {"type": "tool_use", "id": "t", "name": "f", "input": {"a": "1" * 5000}}
    result = {"type": "tool_result", "tool_use_id": "t", "content": "1," * 3000, "is_error": True}
    body = message("1 " * 20_000)
    body["messages"] += [
        {"role": "assistant", "content": [use]},
        {"role": "user", "content": [result, *[{"type": "text", "text": "9"}] * 500]},
    ]
    facts = RequestFacts(body, len(orjson.dumps(body)))
    assert 20_000 < estimateInputTokens(body, "m", Profile(), 100) <= facts.tokenBound
