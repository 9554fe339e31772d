"""A `/login` gateway token where the features built beside sign-in take a caller's
key: the status page (an admin's token signs in to it, a cookie follows, the token
never does) and a passed-through `count_tokens` (the token is ccproxy's own: it
never reaches an `api: messages` upstream, even one that forwards callers' keys)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ccproxy.config.ledger import LedgerURL
from tests.support.fakes import jsonReply
from tests.support.harness import Harness, message
from tests.support.signin import SIGNIN_CONFIG, bearer, inlineLedger, signIn


def harness(url: LedgerURL, extra: str = "") -> Harness:
    config = SIGNIN_CONFIG.replace("unix_user: alice", "unix_user: alice\n    admin: true")
    return Harness.build(
        config.format(ledger=f"sqlite:///{url.target}", extra=extra), ledger=inlineLedger(url)
    )


@pytest.fixture
def url(tmp_path: Path) -> LedgerURL:
    return LedgerURL.sqlite(str(tmp_path / "ccproxy.db"))


def test_an_admin_s_gateway_token_signs_in_to_the_status_page(url: LedgerURL) -> None:
    h = harness(url)
    token = signIn(h, key="alice-key")["access_token"]
    page = h.call("GET", "/status", headers={"authorization": f"Bearer {token}"})
    assert page.status == 200, page.body
    cookie = page.headers["set-cookie"]
    assert cookie.startswith("ccproxy_status=") and token not in cookie
    login = h.call("POST", "/status/login", headers={"x-api-key": token})
    assert login.status == 204, login.body


def test_a_non_admin_s_gateway_token_is_refused_by_the_status_page(url: LedgerURL) -> None:
    h = harness(url)
    token = signIn(h, key="bob-key")["access_token"]
    refused = h.call("GET", "/status", headers={"authorization": f"Bearer {token}"})
    assert refused.status == 403 and "set-cookie" not in refused.headers
    revoked = h.call("GET", "/status", headers={"authorization": "Bearer ccpx_not-a-token"})
    assert revoked.status == 401


def test_a_gateway_token_never_reaches_an_api_messages_upstream(url: LedgerURL) -> None:
    # keyless: a caller's own key would be forwarded, but a token is no caller's key
    config = SIGNIN_CONFIG.replace(
        "    url: http://upstream.test/v1\n    api_key: sk-upstream-secret\n",
        "    url: http://upstream.test/v1\n    api: messages\n",
    )
    assert "api: messages" in config and "sk-upstream-secret" not in config
    h = Harness.build(
        config.format(ledger=f"sqlite:///{url.target}", extra=""), ledger=inlineLedger(url)
    )
    token = signIn(h, key="alice-key")["access_token"]
    h.upstream.queue(jsonReply({"input_tokens": 7}))
    counted = h.post(message(), path="/v1/messages/count_tokens", headers=bearer(token))
    assert counted.status == 200, counted.body
    assert counted.json() == {"input_tokens": 7}
    sent = h.upstream.received[-1]
    assert sent.path.endswith("/messages/count_tokens")
    assert token not in repr(sent.headers)
