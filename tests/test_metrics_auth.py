"""Who may look inside: `/metrics` names every client with its models, statuses and
tokens, and `/healthz`'s details name the upstreams; neither is for whoever asks."""

from __future__ import annotations

from typing import Any

import pytest

from ccproxy.config import Config
from ccproxy.config.load import literalSecrets
from ccproxy.config.schema import ConfigError
from tests.support.harness import BASE_CONFIG, ClientReply, Harness, message

TEAM = (
    BASE_CONFIG
    + """
clients:
  - {name: alice, key: alice-key-0001}
  - {name: root, key: root-key-0002, admin: true}
"""
)
TOKEN = "scrape-token-5f1e9a"
ALICE = {"x-api-key": "alice-key-0001"}
ROOT = {"x-api-key": "root-key-0002"}


def team(extra: str = "") -> Harness:
    h = Harness.build(TEAM + extra)
    h.post(message(), headers=ALICE)  # alice and her model are now in the metrics
    return h


def assertEnvelope(reply: ClientReply, status: int, errorType: str) -> None:
    assert reply.status == status
    body = reply.json()
    assert body["type"] == "error" and body["error"]["type"] == errorType
    assert body["request_id"] == reply.headers["request-id"]
    assert b"alice" not in reply.body and b"claude" not in reply.body


# -- /metrics -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "status", "errorType"),
    [
        pytest.param({}, 401, "authentication_error", id="no-key"),
        pytest.param({"x-api-key": "wrong-key-0003"}, 401, "authentication_error", id="wrong"),
        pytest.param(ALICE, 403, "permission_error", id="not-an-admin"),
        pytest.param({"authorization": f"Bearer {TOKEN}"}, 401, "authentication_error", id="tok"),
    ],
)
def test_metrics_are_refused_to_all_but_an_admin(
    headers: dict[str, str], status: int, errorType: str
) -> None:
    h = team()
    assertEnvelope(h.call("GET", "/metrics", headers=headers), status, errorType)


def test_metrics_for_an_admin_key() -> None:
    h = team()
    for headers in (ROOT, {"authorization": "Bearer root-key-0002"}):
        reply = h.call("GET", "/metrics", headers=headers)
        assert reply.status == 200
        assert reply.headers["content-type"].startswith("text/plain; version=0.0.4")
        assert 'client="alice"' in reply.body.decode()


@pytest.mark.parametrize(
    "headers",
    [{"authorization": f"Bearer {TOKEN}"}, {"x-api-key": TOKEN}],
)
def test_metrics_for_the_scrape_token(headers: dict[str, str]) -> None:
    h = team(f"metrics_token: {TOKEN}\n")
    reply = h.call("GET", "/metrics", headers=headers)
    assert reply.status == 200 and 'client="alice"' in reply.body.decode()
    assert h.call("GET", "/metrics", headers=ROOT).status == 200  # the admin still may
    assertEnvelope(h.call("GET", "/metrics", headers=ALICE), 403, "permission_error")
    # The token is for looking, not for the API.
    assertEnvelope(h.post(message(), headers=headers), 401, "authentication_error")


def test_metrics_open_with_metrics_auth_none() -> None:
    h = team("metrics_auth: none\n")
    assert h.call("GET", "/metrics").status == 200


def test_without_clients_metrics_are_open_until_a_token_is_set() -> None:
    """An open daemon (no clients: loopback, or `allow_open`) serves its API to whoever
    reaches it and has no client names to give away: its metrics are as open. A
    `metrics_token` closes them."""
    assert Harness.build().call("GET", "/metrics").status == 200
    h = Harness.build(BASE_CONFIG + f"metrics_token: {TOKEN}\n")
    assertEnvelope(h.call("GET", "/metrics"), 401, "authentication_error")
    assertEnvelope(h.call("GET", "/metrics", headers=ALICE), 401, "authentication_error")
    reply = h.call("GET", "/metrics", headers={"authorization": f"Bearer {TOKEN}"})
    assert reply.status == 200
    assert h.post(message()).status == 200  # the API stays open, as configured


# -- /healthz -------------------------------------------------------------------------


def test_healthz_without_a_key_says_only_ok() -> None:
    h = team()
    reply = h.call("GET", "/healthz")
    assert reply.status == 200 and reply.json() == {"status": "ok"}
    assert h.call("HEAD", "/healthz").status == 200


@pytest.mark.parametrize(
    "headers", [ALICE, ROOT, {"authorization": f"Bearer {TOKEN}"}], ids=["client", "admin", "tok"]
)
def test_healthz_details_with_a_valid_key(headers: dict[str, str]) -> None:
    h = team(f"metrics_token: {TOKEN}\n")
    health = h.call("GET", "/healthz", headers=headers).json()
    assert health["status"] == "ok" and health["generation"] == 1
    assert set(health["upstreams"]) == {"up", "other"}
    assert {"in_flight", "streams_in_flight"} <= set(health)


def test_healthz_with_a_wrong_key_is_refused() -> None:
    h = team()
    assertEnvelope(
        h.call("GET", "/healthz", headers={"x-api-key": "wrong-key-0003"}),
        401,
        "authentication_error",
    )


@pytest.mark.parametrize(
    "text", [BASE_CONFIG, TEAM + "metrics_auth: none\n"], ids=["no-clients", "auth-none"]
)
def test_healthz_details_where_metrics_are_open(text: str) -> None:
    health = Harness.build(text).call("GET", "/healthz").json()
    assert set(health["upstreams"]) == {"up", "other"}


# -- the config -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "problem"),
    [
        ("metrics_auth: clients\n", "metrics_auth: must be admin or none"),
        ("metrics_auth: none\nmetrics_token: x\n", "metrics_token: is never asked for"),
    ],
)
def test_metrics_keys_are_checked(extra: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        Config.fromYAML(TEAM + extra, {})


def test_the_metrics_token_is_a_secret() -> None:
    text = TEAM + "metrics_token: ${TOKEN}\n"
    config = Config.fromYAML(text, {"TOKEN": TOKEN})
    assert (config.metricsAuth, config.metricsToken) == ("admin", TOKEN)
    assert TOKEN in config.redactor.secrets
    assert TOKEN not in repr(config)
    assert config.redactor.redact(f"scraped with {TOKEN}") == "scraped with [redacted]"
    literal: Any = {"metrics_token": TOKEN}
    assert literalSecrets(literal) == ["metrics_token"]
    assert literalSecrets({"metrics_token": "${TOKEN}"}) == []
