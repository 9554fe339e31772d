"""`/login` tokens on the real PostgreSQL the tests start: two daemons sharing one
database take each other's codes and tokens, a restart keeps them, and a
revocation through one reaches the other (within the cache's seconds)."""

from __future__ import annotations

from ccproxy.config.ledger import LedgerURL
from ccproxy.web.signin import CACHE_SECONDS
from tests.support.fakes import completion, jsonReply
from tests.support.harness import Harness, message
from tests.support.postgres import PostgresServer, postgresFixture
from tests.support.signin import (
    approveOnPage,
    bearer,
    form,
    poll,
    signInHarness,
    startDevice,
)

__all__ = ["postgresFixture"]


def answer(h: Harness, token: str) -> int:
    h.upstream.queue(jsonReply(completion("hello")))
    return h.post(message(), headers=bearer(token)).status


def test_two_daemons_on_one_postgresql_share_sign_ins(postgres: PostgresServer) -> None:
    url = LedgerURL("postgresql", postgres.createDatabase("signin"))
    daemons = [signInHarness(url)]
    try:
        scenario(url, daemons)
    finally:
        for daemon in daemons:
            daemon.app.ledger.database.close()  # type: ignore[union-attr]


def scenario(url: LedgerURL, daemons: list[Harness]) -> None:
    a = daemons[0]
    b = signInHarness(url, clock=a.clock)
    daemons.append(b)
    device = startDevice(a)
    assert poll(b, device["device_code"]).json()["error"] == "authorization_pending"
    assert approveOnPage(b, device["user_code"]).status == 200
    a.clock.advance(5)
    reply = poll(a, device["device_code"])
    assert reply.status == 200, reply.body
    tokens = reply.json()
    assert poll(b, device["device_code"]).json()["error"] == "invalid_grant"  # single use
    assert answer(a, tokens["access_token"]) == 200
    assert answer(b, tokens["access_token"]) == 200
    # a restart: a third daemon on the same database, later
    c = signInHarness(url, clock=a.clock)
    daemons.append(c)
    c.clock.advance(3600)
    assert answer(c, tokens["access_token"]) == 200
    fresh = form(
        c, "/oauth/token", {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]}
    )
    assert fresh.status == 200
    assert answer(a, fresh.json()["access_token"]) == 200
    assert form(a, "/oauth/revoke", {"token": tokens["refresh_token"]}).status == 200
    assert answer(a, fresh.json()["access_token"]) == 401
    c.clock.advance(CACHE_SECONDS + 1)
    assert answer(c, tokens["access_token"]) == 401
