"""Signing in through `/login`'s endpoints, as Claude Code does, on a `Harness`
whose ledger is a real SQLite file (or PostgreSQL database) run inline."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from twisted.internet.task import Clock

from ccproxy.config.ledger import LedgerURL
from ccproxy.ledger.sql import Database
from ccproxy.ledger.store import SQLLedger
from ccproxy.ledger.worker import Inline
from tests.support.harness import ClientReply, Harness

FORM = {"content-type": "application/x-www-form-urlencoded", "user-agent": "claude-code/2.1.330"}
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"

SIGNIN_CONFIG = """
upstreams:
  up:
    url: http://upstream.test/v1
    api_key: sk-upstream-secret
    retries: 0
models:
  claude-sonnet-4-5: {{target: up/big-model, context_window: 200000}}
  claude-*: up/big-model
clients:
  - name: alice
    key: alice-key
    unix_user: alice
  - name: bob
    key: bob-key
    budget: {{tokens_per_day: 1000}}
    managed_settings: {{env: {{CLAUDE_CODE_GATEWAY_HINT_HEADERS: "1"}}}}
ledger: "{ledger}"
{extra}
"""


def inlineLedger(url: LedgerURL) -> Any:
    """The app's ledger on `url`, its SQL run inline on the test's thread."""
    return lambda clock: SQLLedger(Database(url), clock, Inline(), batchRows=1)


def signInHarness(url: LedgerURL, extra: str = "", clock: Clock | None = None) -> Harness:
    ledger = f"sqlite:///{url.target}" if url.kind == "sqlite" else url.target
    h = Harness.build(SIGNIN_CONFIG.format(ledger=ledger, extra=extra), ledger=inlineLedger(url))
    if clock is not None:  # a second daemon on the first one's time
        h.clock.advance(clock.seconds())
    return h


def form(h: Harness, path: str, fields: dict[str, str]) -> ClientReply:
    return h.call("POST", path, urlencode(fields).encode(), headers=FORM)


def startDevice(h: Harness, **fields: str) -> dict[str, Any]:
    reply = form(h, "/oauth/device_authorization", {"surface": "claude_code", **fields})
    assert reply.status == 200, reply.body
    answer: dict[str, Any] = reply.json()
    return answer


def poll(h: Harness, deviceCode: str) -> ClientReply:
    return form(h, "/oauth/token", {"grant_type": DEVICE_GRANT, "device_code": deviceCode})


def approveOnPage(
    h: Harness, userCode: str, key: str = "alice-key", action: str = "approve"
) -> ClientReply:
    return form(h, "/device", {"user_code": userCode, "key": key, "action": action})


def signIn(h: Harness, key: str = "alice-key") -> dict[str, Any]:
    """A whole device sign-in approved on the page: the token answer."""
    device = startDevice(h)
    assert approveOnPage(h, device["user_code"], key).status == 200
    reply = poll(h, device["device_code"])
    assert reply.status == 200, reply.body
    tokens: dict[str, Any] = reply.json()
    return tokens


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}", "content-type": "application/json"}
