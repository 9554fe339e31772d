"""Defects found reviewing `/login` (issue 16): each test failed before its fix."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from ccproxy.config.ledger import LedgerURL
from ccproxy.web.signin import FORM_MAX_BYTES
from ccproxy.web.site import ProxySite
from tests.support.harness import Harness
from tests.support.signin import FORM, signInHarness
from tests.test_site import Conn


@pytest.fixture
def url(tmp_path: Path) -> LedgerURL:
    return LedgerURL.sqlite(str(tmp_path / "ccproxy.db"))


@pytest.fixture
def h(url: LedgerURL) -> Harness:
    return signInHarness(url)


def _raw(path: str, body: bytes, headers: dict[str, str]) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: proxy.test", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def _oauthShaped(body: bytes) -> dict[str, str]:
    """An RFC 6749 §5.2 error: `error` and `error_description`, no Anthropic envelope."""
    answer = orjson.loads(body)
    assert set(answer) == {"error", "error_description"}, answer
    return answer


# -- OAuth endpoints answer every error in RFC 6749's shape --------------------------


def test_a_form_with_too_many_fields_is_an_oauth_invalid_request(h: Harness) -> None:
    reply = h.call("POST", "/oauth/token", b"&".join([b"a=1"] * 100), headers=FORM)
    assert reply.status == 400
    assert _oauthShaped(reply.body)["error"] == "invalid_request"


def test_a_form_too_large_at_the_door_is_an_oauth_error(h: Harness) -> None:
    site = ProxySite.serving(h.app, h.clock, maxConnections=5)
    big = Conn(site).send(_raw("/oauth/token", b"x" * (FORM_MAX_BYTES + 1), FORM))
    assert big.status() == 413
    assert _oauthShaped(big.written.split(b"\r\n\r\n", 1)[1])["error"] == "invalid_request"


def test_the_api_keeps_its_anthropic_envelope_at_the_door(h: Harness) -> None:
    site = ProxySite.serving(h.app, h.clock, maxConnections=5)
    refused = Conn(site).send(_raw("/v1/messages", b"{}", {"x-api-key": "wrong"}))
    assert refused.status() == 401
    assert orjson.loads(refused.written.split(b"\r\n\r\n", 1)[1])["type"] == "error"


# -- per-address limits count an IPv6 /64 as one address --------------------------------


def _fromV6(site: ProxySite, host: str, data: bytes) -> bytes:
    from twisted.internet.address import IPv6Address
    from twisted.internet.testing import StringTransport

    address = IPv6Address("TCP", host, 40000)
    channel = site.buildProtocol(address)
    transport = StringTransport(peerAddress=address)
    channel.makeConnection(transport)
    channel.dataReceived(data)
    return transport.value()


def test_sign_ins_started_from_one_ipv6_64_are_bounded_together(h: Harness) -> None:
    """One host holds a whole /64: counted per address, it could start sign-ins
    (each a database row) without any bound."""
    site = ProxySite.serving(h.app, h.clock, maxConnections=50)
    statuses = []
    for n in range(21):
        written = _fromV6(
            site, f"2001:db8:1:2::{n + 1:x}", _raw("/oauth/device_authorization", b"", FORM)
        )
        h.flush()
        statuses.append(int(written.split(b" ", 2)[1]))
    assert statuses[:20] == [200] * 20
    assert statuses[20] == 429
    other = _fromV6(site, "2001:db8:1:3::1", _raw("/oauth/device_authorization", b"", FORM))
    h.flush()
    assert other.split(b" ", 2)[1] == b"200"  # another /64 is another address


# -- the approve socket limits each account's attempts ------------------------------------


def test_the_approve_socket_limits_attempts_per_account(h: Harness) -> None:
    """The verification page allows `page_attempts_per_minute` codes a minute per
    address (RFC 8628 §5.1); the socket let a local account try codes without end."""
    import socket

    from twisted.internet.defer import succeed
    from twisted.internet.testing import StringTransport

    from ccproxy.daemon.approve import ApproveFactory

    factory = ApproveFactory(h.app, h.clock, accountOf=lambda uid: succeed("alice"))
    answers = []
    for n in range(11):
        ours, theirs = socket.socketpair()
        transport = StringTransport()
        transport.getHandle = lambda sock=ours: sock  # type: ignore[method-assign]
        protocol = factory.buildProtocol(None)
        protocol.makeConnection(transport)
        protocol.dataReceived(f"approve BCDF-GHJ{'KLMNPQRSTVWXZBCDF'[n]}\n".encode())
        h.flush()
        answers.append(transport.value().decode())
        ours.close()
        theirs.close()
    assert all("no pending code" in a for a in answers[:10]), answers
    assert "too many" in answers[10], answers[10]
    h.clock.advance(60)
    ours, theirs = socket.socketpair()
    transport = StringTransport()
    transport.getHandle = lambda: ours  # type: ignore[method-assign]
    protocol = factory.buildProtocol(None)
    protocol.makeConnection(transport)
    protocol.dataReceived(b"approve BCDF-GHJK\n")
    h.flush()
    assert "no pending code" in transport.value().decode()
    ours.close()
    theirs.close()


# -- the database's own words stay in the log --------------------------------------------

DB_WORDS = 'connection to server at "db.internal" (10.9.8.7), port 5432 failed: user "ccproxy"'


def test_a_ledger_outage_does_not_tell_strangers_about_the_database(h: Harness) -> None:
    """The sign-in endpoints answer anyone: a database's error text (its host, its
    user) is for the operator's log, not for the 503."""
    from ccproxy.ledger.store import LedgerUnavailable
    from tests.support.signin import bearer, form

    async def down(*_: object) -> object:
        raise LedgerUnavailable(f"the ledger is unavailable (OperationalError: {DB_WORDS})")

    store = h.app.signIn.store
    assert store is not None
    store.run = down  # type: ignore[method-assign]
    started = form(h, "/oauth/device_authorization", {})
    polled = form(h, "/oauth/token", {"grant_type": "refresh_token", "refresh_token": "x"})
    revoked = form(h, "/oauth/revoke", {"token": "x"})
    looked = h.call("GET", "/v1/models", headers=bearer("ccpx_at_unknown"))
    page = form(h, "/device", {"user_code": "BCDF-GHJK", "key": "alice-key"})
    for reply in (started, polled, revoked, looked, page):
        assert reply.status == 503, reply.body
        assert b"db.internal" not in reply.body and b"10.9.8.7" not in reply.body, reply.body
    assert _oauthShaped(started.body)["error"] == "temporarily_unavailable"


# -- the checksum is JavaScript's, numbers included ---------------------------------------

_NODE_CHECKSUM = """
const sorted = v => Array.isArray(v) ? v.map(sorted)
  : v && typeof v === "object"
    ? Object.fromEntries(Object.keys(v).sort().map(k => [k, sorted(v[k])])) : v;
const text = JSON.stringify(sorted(JSON.parse(require("fs").readFileSync(0, "utf8"))));
console.log("sha256:" + require("crypto").createHash("sha256").update(text).digest("hex"));
"""


def test_the_checksum_writes_numbers_as_javascript_does() -> None:
    """Claude Code hashes `JSON.stringify` of the settings: `1.0` is `1` there,
    `1e-05` is `0.00001`, `1.5e-07` is `1.5e-7`. Python's float text made another
    checksum, so the ETag never matched what the client sends."""
    import json
    import shutil
    import subprocess

    from ccproxy.config.signin import settingsChecksum

    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed (.ci/run installs it)")
    settings = {
        "cleanupPeriodDays": 30.0,
        "env": {"Z": "é", "A": "1"},
        "numbers": [1.0, -2.0, 0.5, 1e-05, 1.5e-07, 2.5e-6, 1e21, 1.5e300, 123456.789, 0.0, -0.0],
        "deep": {"b": [{"y": 1e16, "x": 3}], "a": True, "n": None},
    }
    expected = subprocess.run(
        [node, "-e", _NODE_CHECKSUM],
        input=json.dumps(settings),
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.strip()
    assert settingsChecksum(settings) == expected


def test_a_chunked_sign_in_form_is_411_not_too_large(h: Harness) -> None:
    """A five-byte chunked form was refused as 'at most 16384 bytes' (413): the
    gateway protocol's answer to a body without Content-Length is 411."""
    site = ProxySite.serving(h.app, h.clock, maxConnections=5)
    chunked = Conn(site).send(
        b"POST /oauth/revoke HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\ntoken\r\n0\r\n\r\n"
    )
    assert chunked.status() == 411
    answer = _oauthShaped(chunked.written.split(b"\r\n\r\n", 1)[1])
    assert "Content-Length" in answer["error_description"]


# -- a dead token holds no body memory --------------------------------------------------


def test_a_dead_token_is_refused_before_its_body_holds_memory(h: Harness) -> None:
    """A body is read only for a caller let in; a token-shaped bearer was let in
    unchecked, so anyone could hold `body_memory_bytes` with made-up tokens and
    bodies sent slowly (until `body_timeout`), turning key holders away with 503.
    The token is now looked up before the body is read."""
    site = ProxySite.serving(h.app, h.clock, maxConnections=5)
    head = (
        b"POST /v1/messages HTTP/1.1\r\nHost: proxy.test\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer ccpx_at_madeup\r\nContent-Length: 100000\r\n\r\n"
    )
    slow = Conn(site).send(head + b'{"model":')
    h.flush()
    assert slow.status() == 401, slow.written
    assert b"x-should-retry: false" in slow.written.lower()
    assert site.bodyBytes == 0


def test_a_live_token_still_sends_its_body(h: Harness) -> None:
    from tests.support.fakes import completion, jsonReply
    from tests.support.harness import message
    from tests.support.signin import bearer, signIn

    tokens = signIn(h)
    site = ProxySite.serving(h.app, h.clock, maxConnections=5)
    h.upstream.queue(jsonReply(completion("hello")))
    body = orjson.dumps(message())
    good = Conn(site).send(_raw("/v1/messages", body, bearer(tokens["access_token"])))
    h.flush()
    assert good.status() == 200, good.written


def test_the_body_waits_while_the_database_looks_the_token_up(h: Harness) -> None:
    """A lookup that takes its time: nothing more of the body is read meanwhile;
    a dead token is then refused, and reading resumes (the rest is dropped)."""
    from twisted.internet.defer import Deferred

    store = h.app.signIn.store
    assert store is not None
    answers: list[Deferred[object]] = []

    async def slow(*_: object) -> object:
        answer: Deferred[object] = Deferred()
        answers.append(answer)
        return await answer

    store.run = slow  # type: ignore[method-assign]
    site = ProxySite.serving(h.app, h.clock, maxConnections=5)
    head = (
        b"POST /v1/messages HTTP/1.1\r\nHost: proxy.test\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer ccpx_at_madeup\r\nContent-Length: 100000\r\n\r\n"
    )
    conn = Conn(site).send(head)
    assert conn.transport.producerState == "paused"
    assert conn.written == b""
    answers[0].callback(None)  # no such token
    assert conn.transport.producerState == "producing"
    assert conn.status() == 401
    assert site.bodyBytes == 0


# -- signing a client out covers the sign-in it approved but has not collected --------------


def test_tokens_revoke_also_ends_an_approved_code_not_yet_polled(h: Harness) -> None:
    """`tokens revoke alice` (sign a client out everywhere) left a code alice had
    approved, whose Claude Code had not polled yet: its next poll got fresh tokens."""
    from ccproxy.ledger.signin import SignInTables
    from tests.support.signin import approveOnPage, poll, startDevice

    device = startDevice(h)
    assert approveOnPage(h, device["user_code"]).status == 200
    store = h.app.signIn.store
    assert store is not None
    tables: SignInTables = store.tables
    tables.revokeClient("alice", h.clock.seconds())
    h.clock.advance(5)
    reply = poll(h, device["device_code"])
    assert reply.status == 400, reply.body
    assert reply.json()["error"] == "access_denied"


def test_a_code_approved_by_a_client_since_removed_yields_no_tokens(
    h: Harness, url: LedgerURL
) -> None:
    """bob approved, then was removed from the config before Claude Code polled:
    the poll handed out tokens for a client that no longer exists (tokens that
    would work again were a client named bob ever configured)."""
    from tests.support.signin import approveOnPage, poll, startDevice

    device = startDevice(h)
    assert approveOnPage(h, device["user_code"], key="bob-key").status == 200
    config = h.app.config
    h.app.reconfigure(
        type(config).fromYAML(
            "upstreams: {up: {url: 'http://upstream.test/v1'}}\nmodels: {'*': up}\n"
            f"clients: [{{name: alice, key: alice-key}}]\nledger: 'sqlite:///{url.target}'\n"
        )
    )
    h.clock.advance(5)
    reply = poll(h, device["device_code"])
    assert reply.status == 400, reply.body
    assert reply.json()["error"] == "access_denied"
    store = h.app.signIn.store
    assert store is not None
    assert store.tables.summary(h.clock.seconds()) == []  # nothing live for bob
