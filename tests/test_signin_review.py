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
