"""A caller's key is read, hashed and compared with every client's once per request,
though the site (before the body is read) and the route both judge it; a reload in
between judges it afresh, and a refused key is kept nowhere."""

from __future__ import annotations

import orjson
import pytest
from twisted.web.test.requesthelper import DummyRequest

from ccproxy.config.model import Config
from ccproxy.errors import ProxyError
from ccproxy.web import auth
from ccproxy.web.site import ProxySite
from tests.support.fakes import completion, jsonReply
from tests.support.harness import Harness, message
from tests.test_admission_leases import CONFIG, client
from tests.test_site import Conn, _oneRead


def test_a_caller_found_once_is_the_answer_again_under_the_same_config(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = Config.fromYAML(CONFIG, {})
    request = DummyRequest([b"v1", b"messages"])
    request.requestHeaders.setRawHeaders(b"x-api-key", [b"bob-key"])
    hashed: list[str] = []
    digest = auth.keyDigest
    monkeypatch.setattr(auth, "keyDigest", lambda key: hashed.append(key) or digest(key))
    assert auth.authenticate(request, config) is client(config, "bob")
    assert auth.authenticate(request, config) is client(config, "bob")
    assert hashed == ["bob-key"]
    reloaded = Config.fromYAML(CONFIG.replace("bob-key", "bob-new-key"), {})
    with pytest.raises(ProxyError) as refused:  # another config: judged afresh
        auth.authenticate(request, reloaded)
    assert refused.value.status == 401
    assert hashed == ["bob-key", "bob-key"]


def test_a_refused_caller_is_not_kept() -> None:
    config = Config.fromYAML(CONFIG, {})
    request = DummyRequest([b"v1", b"messages"])
    request.requestHeaders.setRawHeaders(b"x-api-key", [b"wrong"])
    for _ in range(2):
        with pytest.raises(ProxyError):
            auth.authenticate(request, config)
    assert getattr(request, "knownCaller", None) is None


def test_the_site_and_the_route_hash_the_key_once(monkeypatch: pytest.MonkeyPatch) -> None:
    h = Harness.build(CONFIG.replace("alice, key: alice-key", "alice, key: other"))
    site = ProxySite.serving(h.app, h.clock, maxConnections=5)
    hashed: list[str] = []
    digest = auth.keyDigest
    monkeypatch.setattr(auth, "keyDigest", lambda key: hashed.append(key) or digest(key))
    h.upstream.queue(jsonReply(completion("hi")))
    body = orjson.dumps(message())
    conn = Conn(site).send(_oneRead(body, key="carol-key"))
    h.flush()
    assert conn.status() == 200
    assert hashed == ["carol-key"]
    conn = Conn(site).send(_oneRead(body, key="alice-key"))  # a key of the old config
    h.flush()
    assert conn.status() == 401
