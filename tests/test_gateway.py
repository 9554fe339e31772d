"""What a signed-in Claude Code reads beside Messages: `/managed/settings`
(checksum as Claude Code computes it, ETag, 304, 404), `/api/oauth/usage`
(cents and percents of the budget the usage-limit headers describe) and the
OTLP telemetry endpoints (200, dropped)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from attrs import evolve
from treq.testing import StubTreq
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from ccproxy.config import Config
from ccproxy.config.ledger import LedgerURL
from ccproxy.config.model import Budget
from ccproxy.config.signin import canonicalJSON, defaultSettings, merged, settingsChecksum
from tests.support.fakes import completion, jsonReply
from tests.support.harness import message
from tests.support.signin import bearer, signIn, signInHarness

ALICE = {"x-api-key": "alice-key"}
BOB = {"x-api-key": "bob-key"}


@pytest.fixture
def url(tmp_path: Path) -> LedgerURL:
    return LedgerURL.sqlite(str(tmp_path / "ccproxy.db"))


def claudeCodeChecksum(settings: object) -> str:
    """As Claude Code 2.1.330 computes it: keys sorted at every level, no
    whitespace, non-ASCII as is (JSON.stringify), sha256 in hex."""

    def ordered(value: object) -> object:
        if isinstance(value, dict):
            return {k: ordered(value[k]) for k in sorted(value)}
        if isinstance(value, list):
            return [ordered(v) for v in value]
        return value

    text = json.dumps(ordered(settings), separators=(",", ":"), ensure_ascii=False)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def test_the_checksum_is_claude_codes() -> None:
    settings = {
        "z": 1,
        "env": {"B": "é", "A": "1"},
        "permissions": {"deny": ["x", {"b": 1, "a": 2}]},
    }
    assert settingsChecksum(settings) == claudeCodeChecksum(settings)
    assert canonicalJSON(settings).startswith(b'{"env":{"A":"1","B":"\xc3\xa9"}')


def test_a_client_gets_the_base_merged_with_its_own(url: LedgerURL) -> None:
    h = signInHarness(url, "managed_settings: {env: {DISABLE_TELEMETRY: '1'}, model: sonnet}")
    bob = h.call("GET", "/managed/settings", headers=BOB)
    assert bob.status == 200
    doc = bob.json()
    assert set(doc) == {"uuid", "checksum", "settings"}
    assert doc["settings"] == {
        "env": {"DISABLE_TELEMETRY": "1", "CLAUDE_CODE_GATEWAY_HINT_HEADERS": "1"},
        "model": "sonnet",
    }
    assert doc["checksum"] == claudeCodeChecksum(doc["settings"])
    assert bob.headers["etag"] == f'"{doc["checksum"]}"'
    alice = h.call("GET", "/managed/settings", headers=ALICE).json()
    assert alice["settings"] == {"env": {"DISABLE_TELEMETRY": "1"}, "model": "sonnet"}
    assert alice["uuid"] != doc["uuid"]


def test_304_only_to_a_matching_if_none_match(url: LedgerURL) -> None:
    h = signInHarness(url, "managed_settings: {model: sonnet}")
    first = h.call("GET", "/managed/settings", headers=ALICE).json()
    tag = f'"{first["checksum"]}"'
    same = h.call("GET", "/managed/settings", headers={**ALICE, "if-none-match": tag})
    assert same.status == 304 and same.body == b""
    other = h.call("GET", "/managed/settings", headers={**ALICE, "if-none-match": '"sha256:00"'})
    assert other.status == 200
    star = h.call("GET", "/managed/settings", headers={**ALICE, "if-none-match": "*"})
    assert star.status == 200 and star.json()["checksum"] == first["checksum"]


def test_404_where_there_is_no_policy_and_200_for_an_empty_one(url: LedgerURL) -> None:
    h = signInHarness(url, "managed_settings: off")
    assert h.call("GET", "/managed/settings", headers=ALICE).status == 404
    assert h.call("GET", "/managed/settings", headers=BOB).status == 200
    empty = signInHarness(url, "managed_settings: {}")
    reply = empty.call("GET", "/managed/settings", headers=ALICE)
    assert reply.status == 200 and reply.json()["settings"] == {}


def test_the_default_points_the_model_slots_and_window_at_the_routes(url: LedgerURL) -> None:
    h = signInHarness(url)
    doc = h.call("GET", "/managed/settings", headers=ALICE).json()
    assert doc["settings"] == {
        "env": {
            "ANTHROPIC_DEFAULT_SONNET_MODEL": "claude-sonnet-4-5",
            "CLAUDE_CODE_AUTO_COMPACT_WINDOW": "200000",
        }
    }
    config = Config.fromYAML("upstreams: {up: {url: 'http://u/v1'}}\nmodels: {'*': up}\n")
    assert defaultSettings(config.router) == {}


def test_a_gateway_token_reads_its_own_settings(url: LedgerURL) -> None:
    h = signInHarness(url)
    tokens = signIn(h, key="bob-key")
    doc = h.call("GET", "/managed/settings", headers=bearer(tokens["access_token"])).json()
    assert doc["settings"]["env"]["CLAUDE_CODE_GATEWAY_HINT_HEADERS"] == "1"
    assert h.call("GET", "/managed/settings").status == 401


def test_merge_adds_to_mappings_and_replaces_the_rest() -> None:
    assert merged({"env": {"A": "1"}, "x": [1]}, {"env": {"B": "2"}, "x": [2]}) == {
        "env": {"A": "1", "B": "2"},
        "x": [2],
    }


# -- usage ---------------------------------------------------------------------------


def test_usage_of_a_client_with_a_budget_matches_the_headers(url: LedgerURL) -> None:
    h = signInHarness(url)
    h.clock.advance(10 * 3600)
    usage = {"prompt_tokens": 800, "completion_tokens": 10, "total_tokens": 810}
    h.upstream.queue(jsonReply(completion("hi", usage=usage)))
    assert h.post(message(), headers=BOB).status == 200
    h.upstream.queue(jsonReply(completion("hi")))
    second = h.post(message(), headers=BOB)
    assert second.headers["anthropic-ratelimit-unified-overage-surpassed-threshold"] == "0.75"
    reply = h.call("GET", "/api/oauth/usage", headers=BOB)
    assert reply.status == 200 and reply.headers["cache-control"] == "no-store"
    body = reply.json()
    assert body["limits"] == [
        {
            "kind": "spend",
            "group": "daily",
            "percent": body["extra_usage"]["utilization"],
            "resets_at": "1970-01-02T00:00:00.000Z",
            "severity": "warning",
            "is_active": True,
        }
    ]
    assert body["extra_usage"]["utilization"] >= 81
    assert body["extra_usage"]["monthly_limit"] is None  # a token budget: no cents
    assert isinstance(body["extra_usage"]["used_credits"], int)
    reset = int(second.headers["anthropic-ratelimit-unified-overage-reset"])
    assert reset == 86400  # the same instant as resets_at


def test_usage_without_a_cap_is_the_spend_of_month_day_and_week(url: LedgerURL) -> None:
    h = signInHarness(url)
    body = h.call("GET", "/api/oauth/usage", headers=ALICE).json()
    assert body["limits"] == []
    extra = body["extra_usage"]
    assert extra["monthly_limit"] is None and extra["utilization"] is None
    assert extra["daily"] == {"limit": None, "used_credits": 0, "utilization": None}
    assert extra["weekly"] == {"limit": None, "used_credits": 0, "utilization": None}


def test_cost_budgets_are_cents(tmp_path: Path) -> None:
    url = LedgerURL.sqlite(str(tmp_path / "c.db"))
    h = signInHarness(
        url,
        "prices: {big-model: {input: 1000000, output: 0}}\ncurrency: USD\n",
    )
    # bob's budget is in tokens; alice gets a cost one
    config = h.app.config
    alice = evolve(config.clients[0], budget=Budget(costPerMonth=500.0))
    h.app.reconfigure(evolve(config, clients=(alice, config.clients[1])))
    h.upstream.queue(
        jsonReply(
            completion(
                "hi", usage={"prompt_tokens": 100, "completion_tokens": 1, "total_tokens": 101}
            )
        )
    )
    assert h.post(message(), headers=ALICE).status == 200
    body = h.call("GET", "/api/oauth/usage", headers=ALICE).json()
    assert body["extra_usage"]["monthly_limit"] == 50000
    assert body["extra_usage"]["used_credits"] == 10000
    assert body["extra_usage"]["utilization"] == 20
    assert body["limits"][0]["group"] == "monthly"


# -- telemetry ---------------------------------------------------------------------------


@pytest.mark.parametrize("signal", ["metrics", "logs", "traces"])
def test_telemetry_is_taken_and_dropped(url: LedgerURL, signal: str) -> None:
    h = signInHarness(url)
    reply = h.call(
        "POST",
        f"/v1/{signal}",
        b"\x0a\x00",
        headers={**ALICE, "content-type": "application/x-protobuf"},
    )
    assert reply.status == 200 and reply.headers["content-type"] == "application/x-protobuf"
    as_json = h.call(
        "POST",
        f"/v1/{signal}",
        b'{"resourceMetrics":[]}',
        headers={**ALICE, "content-type": "application/json"},
    )
    assert as_json.status == 200 and as_json.json() == {}
    assert h.call("POST", f"/v1/{signal}", b"{}").status == 401
    assert h.upstream.received == []


class Collector(Resource):
    """An OTLP/HTTP collector that records each export and, while `hold`, answers none."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.got: list[tuple[bytes, dict[bytes, list[bytes]], bytes]] = []
        self.hold = False
        self.waiting: list[Any] = []

    def render_POST(self, request: Any) -> Any:
        self.got.append(
            (request.path, dict(request.requestHeaders.getAllRawHeaders()), request.content.read())
        )
        if self.hold:
            self.waiting.append(request)
            return NOT_DONE_YET
        return b"{}"


def test_telemetry_is_forwarded_without_the_bearer_and_bounded(url: LedgerURL) -> None:
    h = signInHarness(
        url, "telemetry: {forward: 'http://collector.test:4318', max_in_flight: 2, timeout: 5}"
    )
    collector = Collector()
    stub = StubTreq(collector)
    h.app.gateway.http = stub
    tokens = signIn(h)
    headers = {**bearer(tokens["access_token"]), "content-type": "application/x-protobuf"}
    assert h.call("POST", "/v1/logs", b"\x0a\x02hi", headers=headers).status == 200
    stub.flush()
    ((path, sent, body),) = collector.got
    assert path == b"/v1/logs" and body == b"\x0a\x02hi"
    assert sent[b"Content-Type"] == [b"application/x-protobuf"]
    assert b"Authorization" not in sent and b"X-Api-Key" not in sent
    assert h.app.gateway.forwarding == 0
    collector.hold = True
    for _ in range(4):
        assert h.call("POST", "/v1/traces", b"x", headers=headers).status == 200
        stub.flush()
    assert len(collector.got) == 3 and h.app.gateway.dropped == 2  # two held, two dropped
    h.clock.advance(5)  # the collector never answers: each forward ends at its timeout
    assert h.app.gateway.forwarding == 0
