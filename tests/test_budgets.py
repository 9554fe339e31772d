"""Budgets and model access per client, in memory on a Clock (which starts at
1970-01-01 00:00 UTC): the 429 `billing_error` and the usage-limit headers of
Claude Code's gateway protocol, counters seeded from the ledger, `models` globs.
The same over Redis, with two daemons: test_shared_state."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ccproxy.config import ConfigError
from ccproxy.config.model import Config
from tests.support.fakes import completion, jsonReply, sseReply
from tests.support.harness import Harness, message, parseSSE
from tests.support.ledger import MemoryLedger

DAY = 86400

CONFIG = """
upstreams:
  up: {url: "http://upstream.test/v1", api_key: sk-up, retries: 0}
models:
  claude-haiku-4-5: up/small-model
  claude-sonnet-4-5: up/big-model
  claude-*: up/big-model
prices:
  big-model: {input: 3, output: 15}
clients:
  - name: alice
    key: alice-key
    budget: {tokens_per_day: 100}
  - name: bob
    key: bob-key
  - name: carol
    key: carol-key
    models: ["claude-haiku-*"]
  - name: dave
    key: dave-key
    budget: {tokens_per_day: 1000000, cost_per_month: 1.5}
"""

ALICE = {"x-api-key": "alice-key"}
BOB = {"x-api-key": "bob-key"}
CAROL = {"x-api-key": "carol-key"}
DAVE = {"x-api-key": "dave-key"}

USED_150 = completion("hi", usage={"prompt_tokens": 120, "completion_tokens": 30})

REJECTED_HEADERS = {
    "retry-after",
    "x-should-retry",
    "anthropic-ratelimit-unified-status",
    "anthropic-ratelimit-unified-reset",
    "anthropic-ratelimit-unified-overage-reset",
    "anthropic-ratelimit-unified-overage-utilization",
    "anthropic-ratelimit-unified-overage-surpassed-threshold",
    "anthropic-ratelimit-unified-overage-period",
    "anthropic-ratelimit-unified-overage-disabled-reason",
}


def build(ledger: MemoryLedger | None = None) -> Harness:
    return Harness.build(CONFIG, ledger=lambda clock: ledger)


def limitHeaders(headers: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k.startswith("anthropic-ratelimit")}


def test_a_client_over_its_daily_tokens_is_refused_until_midnight_utc() -> None:
    h = build()
    h.clock.advance(10 * 3600)  # 10:00 UTC
    h.upstream.queue(jsonReply(USED_150))
    first = h.post(message(), headers=ALICE)
    assert first.status == 200
    assert limitHeaders(first.headers) == {
        "anthropic-ratelimit-unified-status": "allowed",
        "anthropic-ratelimit-unified-representative-claim": "overage",
        "anthropic-ratelimit-unified-overage-status": "allowed",
        "anthropic-ratelimit-unified-overage-utilization": "0.00",
        "anthropic-ratelimit-unified-reset": str(DAY),
        "anthropic-ratelimit-unified-overage-reset": str(DAY),
    }
    refused = h.post(message(), headers=ALICE)
    assert refused.status == 429
    assert len(h.upstream.received) == 1  # nothing went upstream
    error = refused.json()["error"]
    assert error["type"] == "billing_error"
    assert error["message"] == (
        "daily token budget reached (150 of 100 tokens used) · resets Jan 2 00:00 UTC"
    )
    assert {k for k in refused.headers if k in REJECTED_HEADERS} == REJECTED_HEADERS
    assert refused.headers["retry-after"] == str(14 * 3600)
    assert refused.headers["x-should-retry"] == "false"
    assert limitHeaders(refused.headers) == {
        "anthropic-ratelimit-unified-status": "rejected",
        "anthropic-ratelimit-unified-reset": str(DAY),
        "anthropic-ratelimit-unified-overage-reset": str(DAY),
        "anthropic-ratelimit-unified-overage-utilization": "1",
        "anthropic-ratelimit-unified-overage-surpassed-threshold": "1",
        "anthropic-ratelimit-unified-overage-period": "daily",
        "anthropic-ratelimit-unified-overage-disabled-reason": "org_spend_cap_reached",
    }
    assert h.post(message(), headers=BOB).status == 200  # others unaffected
    h.clock.advance(14 * 3600)  # midnight: a new day
    assert h.post(message(), headers=ALICE).status == 200


def test_a_client_without_a_cap_gets_no_usage_headers_not_even_the_upstreams() -> None:
    h = build()
    h.upstream.queue(
        jsonReply(completion("hi"), headers={"anthropic-ratelimit-unified-status": "rejected"})
    )
    reply = h.post(message(), headers=BOB)
    assert reply.status == 200
    assert limitHeaders(reply.headers) == {}


def test_the_counter_starts_from_what_the_ledger_says_was_spent_today() -> None:
    ledger = MemoryLedger()
    ledger.spend("alice", time=3600.0, tokens=80)
    ledger.spend("alice", time=-3600.0, tokens=500)  # yesterday
    ledger.spend("bob", time=3600.0, tokens=500)
    h = build(ledger)
    h.clock.advance(7200)
    reply = h.post(message(), headers=ALICE)
    assert reply.status == 200
    headers = limitHeaders(reply.headers)
    assert headers["anthropic-ratelimit-unified-status"] == "allowed_warning"
    assert headers["anthropic-ratelimit-unified-overage-status"] == "allowed_warning"
    assert headers["anthropic-ratelimit-unified-overage-utilization"] == "0.80"
    assert headers["anthropic-ratelimit-unified-overage-surpassed-threshold"] == "0.75"
    assert ledger.asked == [("alice", 0.0, None)]
    # 80 + the 18 tokens of that answer: 98, still under 100.
    assert h.post(message(), headers=ALICE).status == 200
    assert ledger.asked == [("alice", 0.0, None)]  # seeded once
    assert h.post(message(), headers=ALICE).status == 429  # 116


@pytest.mark.parametrize(
    ("spent", "status", "utilization", "threshold"),
    [
        (74, 200, "0.74", None),
        (95, 200, "0.95", "0.95"),
        (99.9, 200, "0.99", "0.95"),  # kept below 1 while allowed
        (100, 429, None, None),
    ],
)
def test_utilization_and_thresholds(
    spent: float, status: int, utilization: str | None, threshold: str | None
) -> None:
    ledger = MemoryLedger()
    ledger.spend("dave", time=0.0, cost=spent / 100 * 1.5)
    h = build(ledger)
    reply = h.post(message(), headers=DAVE)
    assert reply.status == status
    headers = limitHeaders(reply.headers)
    if utilization is not None:
        assert headers["anthropic-ratelimit-unified-overage-utilization"] == utilization
        assert headers.get("anthropic-ratelimit-unified-overage-surpassed-threshold") == threshold


def test_a_cost_budget_counts_prices_of_the_upstream_model_per_month() -> None:
    h = build()
    h.clock.advance(20 * DAY)
    # 100k input at 3/M + 80k output at 15/M = 0.30 + 1.20 = 1.50
    big = completion("hi", usage={"prompt_tokens": 100_000, "completion_tokens": 80_000})
    h.upstream.queue(jsonReply(big))
    assert h.post(message(), headers=DAVE).status == 200
    refused = h.post(message(), headers=DAVE)
    assert refused.status == 429
    assert refused.json()["error"]["message"] == (
        "monthly cost budget reached (1.50 of 1.50 USD used) · resets Feb 1 00:00 UTC"
    )
    assert refused.headers["anthropic-ratelimit-unified-overage-period"] == "monthly"
    assert refused.headers["retry-after"] == str(11 * DAY)
    assert refused.headers["anthropic-ratelimit-unified-reset"] == str(31 * DAY)


def test_a_model_without_a_price_costs_nothing() -> None:
    h = build()
    big = completion("hi", usage={"prompt_tokens": 900_000, "completion_tokens": 0})
    h.upstream.queue(jsonReply(big))
    assert h.post(message(model="claude-haiku-4-5"), headers=DAVE).status == 200  # small-model
    assert h.post(message(), headers=DAVE).status == 200


def test_a_stream_that_crosses_the_budget_finishes_and_the_next_request_is_refused() -> None:
    h = build()
    chunks: list[Any] = [
        {"choices": [{"index": 0, "delta": {"content": f"{i} "}}]} for i in range(3)
    ]
    chunks.append({"choices": [], "usage": {"prompt_tokens": 90, "completion_tokens": 60}})
    h.upstream.queue(sseReply(chunks))
    stream = h.post(message(stream=True), headers=ALICE)
    assert stream.status == 200
    assert parseSSE(stream.body)[-1][0] == "message_stop"
    assert limitHeaders(stream.headers)["anthropic-ratelimit-unified-status"] == "allowed"
    assert h.post(message(stream=True), headers=ALICE).status == 429


def test_counting_tokens_is_not_refused_over_budget() -> None:
    h = build()
    h.upstream.queue(jsonReply(USED_150))
    h.post(message(), headers=ALICE)
    assert h.post(message(), headers=ALICE).status == 429
    assert h.post(message(), "/v1/messages/count_tokens", headers=ALICE).status == 200


def test_a_ledger_that_does_not_answer_leaves_budgets_unchecked_not_requests_refused() -> None:
    ledger = MemoryLedger(fail=OSError("database is down"))
    h = build(ledger)
    reply = h.post(message(), headers=ALICE)
    assert reply.status == 200
    assert limitHeaders(reply.headers) == {}
    h.clock.advance(10)
    assert h.post(message(), headers=ALICE).status == 200
    assert len(ledger.asked) == 1  # not asked again for a while
    ledger.fail = None
    h.clock.advance(30)
    assert h.post(message(), headers=ALICE).status == 200
    assert len(ledger.asked) == 2


# -- models -----------------------------------------------------------------------


def test_a_client_asking_for_a_model_it_may_not_use_gets_400_naming_it() -> None:
    h = build()
    reply = h.post(message(model="claude-sonnet-4-5"), headers=CAROL)
    assert reply.status == 400
    error = reply.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert "'claude-sonnet-4-5'" in error["message"]
    assert "claude-haiku-*" in error["message"]
    assert h.upstream.received == []
    counted = h.post(message(model="claude-sonnet-4-5"), "/v1/messages/count_tokens", headers=CAROL)
    assert counted.status == 400
    assert h.post(message(model="claude-haiku-4-5"), headers=CAROL).status == 200


def test_models_lists_only_what_the_client_may_use() -> None:
    h = build()
    ids = [m["id"] for m in h.call("GET", "/v1/models", headers=CAROL).json()["data"]]
    assert ids == ["claude-haiku-4-5"]
    ids = [m["id"] for m in h.call("GET", "/v1/models", headers=BOB).json()["data"]]
    assert ids == ["claude-haiku-4-5", "claude-sonnet-4-5"]
    assert h.call("GET", "/v1/models/claude-haiku-4-5", headers=CAROL).status == 200
    refused = h.call("GET", "/v1/models/claude-sonnet-4-5", headers=CAROL)
    assert refused.status == 400
    assert "'claude-sonnet-4-5'" in refused.json()["error"]["message"]
    assert h.call("GET", "/v1/models/claude-sonnet-4-5", headers=BOB).status == 200


# -- config -------------------------------------------------------------------------


def clientsConfig(client: str, extra: str = "") -> str:
    return (
        'upstreams: {up: {url: "http://u.test/v1"}}\nmodels: {"*": up}\n'
        f"clients:\n  - {{name: a, key: k, {client}}}\n{extra}"
    )


PROBLEMS = {
    # a client's keys, or (after a |) a top-level key: the start of the message
    "budget: {}": "clients.0.budget: names no limit",
    "budget: {tokens_per_day: 0}": "clients.0.budget.tokens_per_day: must be a positive",
    "budget: {tokens_per_week: 5}": "clients.0.budget.tokens_per_week: unknown key",
    "budget: {cost_per_day: -1}": "clients.0.budget.cost_per_day: must be a positive",
    "budget: {cost_per_day: 5}": "clients.0.budget: a cost budget needs prices:",
    "models: []": "clients.0.models: must be a list",
    "models: claude-*": "clients.0.models: must be a list",
    'models: [""]': "clients.0.models.0: must be a model name or glob",
    '|state: {redis: "http://h"}': "state.redis: must be redis://",
    '|state: {redis: "redis://h/x"}': "state.redis: the database after the slash",
    '|state: {redis: "redis://h:99999"}': "state.redis: not a redis:// URL",
    "|state: {memcached: x}": "state.memcached: unknown key",
}


@pytest.mark.parametrize("keys", list(PROBLEMS))
def test_config_problems(keys: str) -> None:
    client, _, extra = keys.partition("|")
    with pytest.raises(ConfigError) as e:
        Config.fromYAML(clientsConfig(client, extra), {})
    assert str(e.value).startswith(PROBLEMS[keys])


def test_config_values() -> None:
    config = Config.fromYAML(
        clientsConfig(
            "budget: {tokens_per_month: 5, cost_per_day: 2}, models: [claude-haiku-*]",
            'prices: {m: {input: 1}}\nstate: {redis: "redis://:${PW}@10.0.0.5:6380/3"}\n',
        ),
        {"PW": "a-long-redis-password"},
    )
    client = config.clients[0]
    assert [(c.period, c.tokens, c.cost) for c in client.budget.caps] == [
        ("day", None, 2.0),
        ("month", 5, None),
    ]
    assert client.mayUse("claude-haiku-4-5") and not client.mayUse("claude-sonnet-4-5")
    assert config.redis is not None
    assert (config.redis.host, config.redis.port, config.redis.db) == ("10.0.0.5", 6380, 3)
    assert "a-long-redis-password" not in repr(config)
    assert config.redactor.redact("auth a-long-redis-password") == "auth [redacted]"
    assert config.literalSecrets == ("clients.0.key",)  # the password came from ${PW}


def test_the_example_config_shows_a_budget_that_loads() -> None:
    """etc/ccproxy.yaml's commented clients, login, managed_settings and state
    blocks, uncommented, load."""
    path = Path(__file__).parent.parent / "etc" / "ccproxy.yaml"
    lines = path.read_text().splitlines()
    start = lines.index("# clients:")
    end = lines.index('#   redis: "redis://:${REDIS_PASSWORD}@10.0.0.5:6379/0"')
    block = [  # the YAML, not the prose around it
        line[2:]
        if line[2:].startswith((" ", "clients:", "state:", "login:", "managed_settings:"))
        else line
        for line in lines[start : end + 1]
    ]
    text = "\n".join([*lines[:start], *block, *lines[end + 1 :]])
    config = Config.fromYAML(text, {"ALICE_PROXY_KEY": "k" * 20, "REDIS_PASSWORD": "p"})
    (alice,) = config.clients
    assert alice.budget is not None and alice.budget.tokensPerDay == 2_000_000
    assert alice.models == ("claude-haiku-*", "claude-sonnet-*")
    assert config.redis is not None and config.redis.host == "10.0.0.5"
    assert alice.unixUser == "alice" and alice.managedSettings is not None
    assert config.login.accessTokenSeconds == 28800
    assert config.login.approveSocket == "/run/ccproxy/approve.sock"
    assert config.managedSettings == {
        "env": {"CLAUDE_CODE_GATEWAY_HINT_HEADERS": "1"},
        "permissions": {"deny": ["Bash(curl:*)"]},
    }


def test_without_state_the_backend_is_always_up() -> None:
    assert b"\nccproxy_state_backend_up 1.0\n" in build().app.metrics.render()


def test_a_restart_keeps_the_budget_spent_through_the_real_ledger(tmp_path: Path) -> None:
    """The day's spend is in the SQLite ledger, not only in the counters: a new
    app on the same database (the daemon restarted) refuses Alice at once."""
    from ccproxy.config.ledger import LedgerURL
    from ccproxy.ledger.sql import Database
    from ccproxy.ledger.store import SQLLedger
    from ccproxy.ledger.worker import Inline

    path = tmp_path / "ccproxy.db"

    def ledger(clock: Any) -> SQLLedger:
        return SQLLedger(Database(LedgerURL.sqlite(str(path))), clock, Inline())

    first = Harness.build(CONFIG, ledger=ledger)
    assert first.app.ledger is not None
    first.app.ledger.start()  # type: ignore[attr-defined]
    first.upstream.queue(jsonReply(USED_150))
    assert first.post(message(), headers=ALICE).status == 200
    first.clock.advance(1)  # the batch is written a second after its first row
    second = Harness.build(CONFIG, ledger=ledger)
    second.app.ledger.start()  # type: ignore[union-attr]
    reply = second.post(message(), headers=ALICE)
    assert reply.status == 429
    assert reply.json()["error"]["type"] == "billing_error"
    assert second.upstream.received == []
