"""`/login`: the gateway protocol's Discovery, Device authorization, Verification
page, Token and revocation endpoints, and the tokens they hand out, accepted
wherever a client key is, on a real SQLite ledger (tests/test_signin_servers.py:
PostgreSQL, two daemons)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import orjson
import pytest

from ccproxy.__main__ import main
from ccproxy.config.ledger import LedgerURL
from ccproxy.web.signin import CACHE_SECONDS, FORM_MAX_BYTES, USER_CODE_ALPHABET
from ccproxy.web.site import ProxySite
from tests.support.fakes import completion, jsonReply
from tests.support.harness import Harness, message
from tests.support.signin import (
    DEVICE_GRANT,
    FORM,
    SIGNIN_CONFIG,
    approveOnPage,
    bearer,
    form,
    poll,
    signIn,
    signInHarness,
    startDevice,
)
from tests.test_site import Conn


@pytest.fixture
def url(tmp_path: Path) -> LedgerURL:
    return LedgerURL.sqlite(str(tmp_path / "ccproxy.db"))


@pytest.fixture
def h(url: LedgerURL) -> Harness:
    return signInHarness(url, "login: {login_notice: 'Use your corp account.'}")


def answer(h: Harness, token: str) -> Any:
    h.upstream.queue(jsonReply(completion("hello")))
    return h.post(message(), headers=bearer(token))


# -- discovery -------------------------------------------------------------------


def test_discovery_names_the_endpoints_on_the_origin_the_client_used(h: Harness) -> None:
    reply = h.call("GET", "/.well-known/oauth-authorization-server")
    assert reply.status == 200
    meta = reply.json()
    assert meta["issuer"] == "http://proxy.test"
    assert meta["device_authorization_endpoint"] == "http://proxy.test/oauth/device_authorization"
    assert meta["token_endpoint"] == "http://proxy.test/oauth/token"
    assert meta["revocation_endpoint"] == "http://proxy.test/oauth/revoke"
    assert meta["grant_types_supported"] == [DEVICE_GRANT, "refresh_token"]
    assert "authorization_endpoint" not in meta


def test_public_url_names_the_endpoints_behind_a_reverse_proxy(url: LedgerURL) -> None:
    h = signInHarness(url, "login: {public_url: 'https://gw.corp.example.com/'}")
    meta = h.call("GET", "/.well-known/oauth-authorization-server").json()
    assert meta["token_endpoint"] == "https://gw.corp.example.com/oauth/token"
    device = startDevice(h)
    assert device["verification_uri"] == "https://gw.corp.example.com/device"


def test_sign_in_is_off_without_a_database_ledger() -> None:
    h = Harness.build(
        "upstreams: {up: {url: 'http://u/v1'}}\nmodels: {'*': up}\n"
        "clients: [{name: a, key: k}]\nledger: off\n"
    )
    assert h.call("GET", "/.well-known/oauth-authorization-server").status == 404
    assert form(h, "/oauth/device_authorization", {}).status == 404


def test_login_off_turns_the_endpoints_off(url: LedgerURL) -> None:
    h = signInHarness(url, "login: off")
    assert h.call("GET", "/.well-known/oauth-authorization-server").status == 404


# -- device authorization ----------------------------------------------------------


def test_device_authorization_answers_rfc_8628_fields_and_the_login_notice(h: Harness) -> None:
    device = startDevice(h, client_id="ignored", scope="whatever", unknown="x")
    assert set(device) == {
        "device_code",
        "user_code",
        "verification_uri",
        "verification_uri_complete",
        "expires_in",
        "interval",
        "login_notice",
    }
    code = device["device_code"].removeprefix("ccpx_dc_")
    assert len(code) >= 43  # 256 bits of base64url
    assert re.fullmatch(
        f"[{USER_CODE_ALPHABET}]{{4}}-[{USER_CODE_ALPHABET}]{{4}}", device["user_code"]
    )
    assert device["verification_uri"] == "http://proxy.test/device"
    assert device["verification_uri_complete"] == (
        f"http://proxy.test/device?user_code={device['user_code']}"
    )
    assert device["expires_in"] == 600 and device["interval"] == 5
    assert device["login_notice"] == "Use your corp account."


def test_an_empty_form_is_enough(h: Harness) -> None:
    assert form(h, "/oauth/device_authorization", {}).status == 200


def test_device_codes_differ_each_time(h: Harness) -> None:
    a, b = startDevice(h), startDevice(h)
    assert a["device_code"] != b["device_code"] and a["user_code"] != b["user_code"]


# -- the token endpoint: the device grant's table ---------------------------------------


def test_pending_then_slow_down_then_approved_then_single_use(h: Harness) -> None:
    device = startDevice(h)
    first = poll(h, device["device_code"])
    assert first.status == 400 and first.json()["error"] == "authorization_pending"
    assert first.headers["cache-control"] == "no-store"
    h.clock.advance(1)
    fast = poll(h, device["device_code"])
    assert fast.status == 400 and fast.json()["error"] == "slow_down"
    h.clock.advance(10)
    assert poll(h, device["device_code"]).json()["error"] == "authorization_pending"
    page = approveOnPage(h, device["user_code"].lower().replace("-", " "))
    assert page.status == 200 and b"signed in as alice" in page.body
    h.clock.advance(5)
    done = poll(h, device["device_code"])
    assert done.status == 200
    tokens = done.json()
    assert tokens["token_type"] == "Bearer"
    assert tokens["expires_in"] == 8 * 3600
    assert tokens["access_token"].startswith("ccpx_at_")
    assert tokens["refresh_token"].startswith("ccpx_rt_")
    assert "email" not in tokens
    again = poll(h, device["device_code"])
    assert again.status == 400 and again.json()["error"] == "invalid_grant"


def test_a_refused_code_is_access_denied(h: Harness) -> None:
    device = startDevice(h)
    assert approveOnPage(h, device["user_code"], action="deny").status == 200
    reply = poll(h, device["device_code"])
    assert reply.status == 400 and reply.json()["error"] == "access_denied"


def test_an_expired_code_is_expired_token_and_cannot_be_approved(h: Harness) -> None:
    device = startDevice(h)
    h.clock.advance(601)
    assert approveOnPage(h, device["user_code"]).status == 404
    reply = poll(h, device["device_code"])
    assert reply.status == 400 and reply.json()["error"] == "expired_token"


def test_unknown_codes_and_grants_and_missing_fields(h: Harness) -> None:
    assert poll(h, "ccpx_dc_nope").json()["error"] == "invalid_grant"
    reply = form(h, "/oauth/token", {"grant_type": "password"})
    assert reply.status == 400 and reply.json()["error"] == "unsupported_grant_type"
    assert form(h, "/oauth/token", {}).json()["error"] == "invalid_request"
    assert form(h, "/oauth/token", {"grant_type": DEVICE_GRANT}).json()["error"] == (
        "invalid_request"
    )
    body = form(h, "/oauth/token", {"grant_type": "refresh_token"}).json()
    assert set(body) == {"error", "error_description"}


# -- the token at work ---------------------------------------------------------------


def test_a_token_is_accepted_everywhere_a_client_key_is(h: Harness) -> None:
    tokens = signIn(h)
    token = tokens["access_token"]
    reply = answer(h, token)
    assert reply.status == 200, reply.body
    # ccproxy's token is its own: never sent to an upstream
    assert "ccpx_" not in repr(h.upstream.received[-1].headers)
    assert h.call("GET", "/v1/models", headers=bearer(token)).status == 200
    count = h.post(message(), path="/v1/messages/count_tokens", headers=bearer(token))
    assert count.status == 200
    assert h.call("GET", "/v1/usage", headers=bearer(token)).status == 200


def test_a_token_signs_in_as_the_client_that_approved_it(h: Harness) -> None:
    tokens = signIn(h, key="bob-key")
    reply = answer(h, tokens["access_token"])
    assert reply.status == 200
    # bob has a budget: his standing comes with the answer
    assert reply.headers["anthropic-ratelimit-unified-status"] in ("allowed", "allowed_warning")


def test_an_unknown_token_is_401_without_retry(h: Harness) -> None:
    reply = h.post(message(), headers=bearer("ccpx_at_" + "x" * 43))
    assert reply.status == 401
    assert reply.headers["x-should-retry"] == "false"
    assert reply.json()["error"]["type"] == "authentication_error"


def test_an_expired_token_is_401_without_retry_and_refresh_brings_a_new_one(h: Harness) -> None:
    tokens = signIn(h)
    h.clock.advance(8 * 3600 + 1)
    reply = answer(h, tokens["access_token"])
    assert reply.status == 401 and reply.headers["x-should-retry"] == "false"
    assert "run /login again" in reply.json()["error"]["message"]
    fresh = form(
        h, "/oauth/token", {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]}
    )
    assert fresh.status == 200
    renewed = fresh.json()
    assert set(renewed) == {"access_token", "token_type", "expires_in", "refresh_token"}
    assert renewed["access_token"] != tokens["access_token"]
    assert answer(h, renewed["access_token"]).status == 200


def test_a_refresh_token_past_its_life_is_401_invalid_grant(h: Harness) -> None:
    tokens = signIn(h)
    h.clock.advance(30 * 86400 + 1)
    reply = form(
        h, "/oauth/token", {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]}
    )
    assert reply.status == 401 and reply.json()["error"] == "invalid_grant"


def test_an_access_token_is_no_refresh_token(h: Harness) -> None:
    tokens = signIn(h)
    reply = form(
        h, "/oauth/token", {"grant_type": "refresh_token", "refresh_token": tokens["access_token"]}
    )
    assert reply.status == 401 and reply.json()["error"] == "invalid_grant"


def test_revocation_signs_out_at_once(h: Harness) -> None:
    tokens = signIn(h)
    assert answer(h, tokens["access_token"]).status == 200
    revoked = form(h, "/oauth/revoke", {"token": tokens["access_token"]})
    assert revoked.status == 200
    second = form(
        h, "/oauth/revoke", {"token": tokens["refresh_token"], "token_type_hint": "refresh_token"}
    )
    assert second.status == 200
    reply = h.post(message(), headers=bearer(tokens["access_token"]))
    assert reply.status == 401 and reply.headers["x-should-retry"] == "false"
    refresh = form(h, "/oauth/revoke", {"token": "not-a-token"})
    assert refresh.status == 200  # RFC 7009 §2.2
    again = form(
        h, "/oauth/token", {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]}
    )
    assert again.status == 401 and again.json()["error"] == "invalid_grant"


def test_a_client_removed_from_the_config_is_signed_out(h: Harness, url: LedgerURL) -> None:
    tokens = signIn(h, key="bob-key")
    config = h.app.config
    h.app.reconfigure(
        type(config).fromYAML(
            "upstreams: {up: {url: 'http://upstream.test/v1'}}\nmodels: {'*': up}\n"
            f"clients: [{{name: alice, key: alice-key}}]\nledger: 'sqlite:///{url.target}'\n"
        )
    )
    reply = h.post(message(), headers=bearer(tokens["access_token"]))
    assert reply.status == 401
    refresh = form(
        h, "/oauth/token", {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]}
    )
    assert refresh.status == 401 and refresh.json()["error"] == "invalid_grant"


def test_a_restart_keeps_everyone_signed_in(url: LedgerURL) -> None:
    first = signInHarness(url)
    tokens = signIn(first)
    second = signInHarness(url, clock=first.clock)
    assert answer(second, tokens["access_token"]).status == 200


def test_two_daemons_on_one_database_share_codes_tokens_and_revocation(url: LedgerURL) -> None:
    a = signInHarness(url)
    b = signInHarness(url, clock=a.clock)
    device = startDevice(a)
    assert approveOnPage(b, device["user_code"]).status == 200
    tokens = poll(a, device["device_code"]).json()
    assert answer(b, tokens["access_token"]).status == 200
    assert answer(a, tokens["access_token"]).status == 200
    form(b, "/oauth/revoke", {"token": tokens["refresh_token"]})
    assert answer(b, tokens["access_token"]).status == 401  # at once where it was revoked
    a.clock.advance(CACHE_SECONDS + 1)
    assert answer(a, tokens["access_token"]).status == 401  # within CACHE_SECONDS elsewhere


# -- the verification page -------------------------------------------------------------


def test_the_page_prefills_the_code_escaped_and_never_submits_itself(h: Harness) -> None:
    reply = h.call("GET", '/device?user_code=<script>"x')
    assert reply.status == 200
    page = reply.body.decode()
    assert "<script" not in page.lower()
    assert 'value="SCRIPTX"' in page  # only the code's letters are kept
    assert reply.headers["content-security-policy"].startswith("default-src 'none'")
    assert "frame-ancestors 'none'" in reply.headers["content-security-policy"]
    assert reply.headers["x-frame-options"] == "DENY"
    assert reply.headers["x-content-type-options"] == "nosniff"
    assert reply.headers["cache-control"] == "no-store"
    assert reply.headers["referrer-policy"] == "no-referrer"
    device = startDevice(h)
    shown = h.call("GET", f"/device?user_code={device['user_code']}").body.decode()
    assert f'value="{device["user_code"]}"' in shown
    assert "onload" not in shown and "submit()" not in shown


def test_the_page_escapes_what_it_shows(h: Harness) -> None:
    from twisted.web.test.requesthelper import DummyRequest

    from ccproxy.web.signin import SignIn

    request = DummyRequest([b"device"])
    body = SignIn(None, h.clock)._render(request, 400, '"><img src=x>', "<b>note</b>")
    assert b"<img" not in body and b"<b>note" not in body
    assert b"&quot;&gt;&lt;img src=x&gt;" in body and b"&lt;b&gt;note&lt;/b&gt;" in body


def test_a_note_naming_the_code_is_escaped(h: Harness) -> None:
    reply = approveOnPage(h, "BCDF-GHJK", key="alice-key")
    assert reply.status == 404 and b"BCDF-GHJK" in reply.body
    hostile = form(h, "/device", {"user_code": "<b>", "key": "<i>"})
    assert b"<b>" not in hostile.body and b"<i>" not in hostile.body


def test_a_wrong_key_approves_nothing(h: Harness) -> None:
    device = startDevice(h)
    reply = approveOnPage(h, device["user_code"], key="wrong")
    assert reply.status == 401
    assert poll(h, device["device_code"]).json()["error"] == "authorization_pending"


def test_the_page_limits_attempts_per_address(url: LedgerURL) -> None:
    h = signInHarness(url, "login: {page_attempts_per_minute: 3}")
    codes = [approveOnPage(h, "BCDF-GHJK", key="wrong").status for _ in range(4)]
    assert codes == [401, 401, 401, 429]
    h.clock.advance(61)
    assert approveOnPage(h, "BCDF-GHJK", key="wrong").status == 401


def test_a_code_approved_twice_says_so(h: Harness) -> None:
    device = startDevice(h)
    assert approveOnPage(h, device["user_code"]).status == 200
    assert approveOnPage(h, device["user_code"]).status == 409


def test_forms_are_taken_without_content_type_charset(h: Harness) -> None:
    reply = h.call(
        "POST",
        "/oauth/device_authorization",
        b"surface=claude_code",
        headers={**FORM, "content-type": "application/x-www-form-urlencoded; charset=utf-8"},
    )
    assert reply.status == 200


# -- at the site's door ------------------------------------------------------------------


def _raw(path: str, body: bytes, headers: dict[str, str]) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: proxy.test", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def test_the_site_takes_sign_in_forms_without_a_key_and_bounds_them(h: Harness) -> None:
    site = ProxySite.serving(h.app, h.clock, maxConnections=5)
    conn = Conn(site).send(_raw("/oauth/device_authorization", b"surface=claude_code", FORM))
    h.flush()
    assert conn.status() == 200, conn.written
    big = Conn(site, "10.0.0.2").send(_raw("/oauth/token", b"x" * (FORM_MAX_BYTES + 1), FORM))
    assert big.status() == 413


def test_the_site_reads_the_body_of_a_token_bearer_and_the_route_judges_it(h: Harness) -> None:
    site = ProxySite.serving(h.app, h.clock, maxConnections=5)
    tokens = signIn(h)
    h.upstream.queue(jsonReply(completion("hello")))
    body = orjson.dumps(message())
    good = Conn(site).send(_raw("/v1/messages", body, bearer(tokens["access_token"])))
    h.flush()
    assert good.status() == 200, good.written
    dead = Conn(site, "10.0.0.3").send(_raw("/v1/messages", body, bearer("ccpx_at_dead")))
    h.flush()
    assert dead.status() == 401
    assert b"x-should-retry: false" in dead.written.lower()


# -- python -m ccproxy tokens ------------------------------------------------------------


def test_tokens_list_and_revoke_sign_a_client_out_everywhere(
    h: Harness, url: LedgerURL, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    alice = signIn(h)
    bob = signIn(h, key="bob-key")
    signIn(h)
    path = tmp_path / "ccproxy.yaml"
    path.write_text(SIGNIN_CONFIG.format(ledger=f"sqlite:///{url.target}", extra=""))
    now = h.clock.seconds()
    assert main(["tokens", "--config", str(path), "list"]) == 0  # (now: all long expired)
    assert capsys.readouterr().out == "nobody is signed in\n"
    assert tokenCLI(path, "list", now=now) == 0
    listed = capsys.readouterr().out
    assert "alice\t2 sign-in(s)" in listed and "bob\t1 sign-in(s)" in listed
    assert "ccpx_" not in listed  # never a token
    assert tokenCLI(path, "revoke", "alice", now=now) == 0
    assert "alice: 2 sign-in(s) revoked" in capsys.readouterr().out
    h.clock.advance(CACHE_SECONDS + 1)
    assert answer(h, alice["access_token"]).status == 401
    assert answer(h, bob["access_token"]).status == 200
    refresh = form(
        h, "/oauth/token", {"grant_type": "refresh_token", "refresh_token": alice["refresh_token"]}
    )
    assert refresh.status == 401
    assert tokenCLI(path, "revoke", "nobody", now=now) == 2


def tokenCLI(path: Path, *action: str, now: float) -> int:
    import argparse

    from ccproxy.ledger import signincli

    names = {
        "config": str(path),
        "action": action[0],
        "name": action[1] if len(action) > 1 else None,
    }
    return signincli.run(argparse.Namespace(**names), now=now)


def test_a_hostile_form_is_a_clean_400(h: Harness) -> None:
    reply = h.call("POST", "/oauth/token", b"&".join([b"a=1"] * 100), headers=FORM)
    assert reply.status == 400


BASE = "upstreams: {up: {url: 'http://u/v1'}}\nmodels: {'*': up}\n"


@pytest.mark.parametrize(
    ("extra", "path"),
    [
        (
            "login: {access_token_lifetime: 100, refresh_token_lifetime: 10}",
            "login.refresh_token_lifetime",
        ),
        ("login: {login_notice: '" + "x" * 501 + "'}", "login.login_notice"),
        ("login: {public_url: 'ftp://x'}", "login.public_url"),
        ("login: {poll_interval: 0}", "login.poll_interval"),
        ("login: {nonsense: 1}", "login.nonsense"),
        ("managed_settings: [1]", "managed_settings"),
        ("telemetry: {forward: 'http://u:p@c/'}", "telemetry.forward"),
        (
            "clients: [{name: a, key: k1, unix_user: x}, {name: b, key: k2, unix_user: x}]",
            "clients.1.unix_user",
        ),
        (
            "clients: [{name: a, key: k1, managed_settings: {x: .inf}}]",
            "clients.0.managed_settings.x",
        ),
    ],
)
def test_sign_in_config_errors_name_their_key(extra: str, path: str) -> None:
    from ccproxy.config import Config, ConfigError

    with pytest.raises(ConfigError) as caught:
        Config.fromYAML(BASE + extra)
    assert caught.value.path == path, str(caught.value)


def test_sign_ins_started_per_address_are_bounded(h: Harness) -> None:
    codes = [form(h, "/oauth/device_authorization", {}).status for _ in range(21)]
    assert codes == [200] * 20 + [429]
    refused = form(h, "/oauth/device_authorization", {})
    assert refused.json()["error"] == "slow_down" and refused.headers["retry-after"] == "60"
    h.clock.advance(60)
    assert form(h, "/oauth/device_authorization", {}).status == 200
