"""Who is calling: the caller's key, compared as a digest, in constant time,
against every configured client (no early exit). What each client may then do
(its limits, budget and models) is `ccproxy.web.admission`'s."""

from __future__ import annotations

import hmac

from twisted.web.iweb import IRequest

from ccproxy.config.model import Client, Config, keyDigest
from ccproxy.errors import ProxyError


def callerKey(request: IRequest) -> str | None:
    """The key a caller sent, as `x-api-key` or `Authorization: Bearer`."""
    key = request.getHeader(b"x-api-key")
    if key:
        return key.decode("latin-1").strip()
    auth = request.getHeader(b"authorization")
    if auth:
        scheme, _, token = auth.decode("latin-1").partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    return None


def authenticate(request: IRequest, config: Config) -> Client | None:
    """The calling client when `clients` is set (None when it is not); 401 otherwise."""
    if not config.clients:
        return None
    key = callerKey(request)
    if not key:
        raise ProxyError(401, "no API key: send it as x-api-key or Authorization: Bearer")
    found = clientForKey(key, config)
    if found is None:
        raise ProxyError(401, "invalid API key")
    return found


def clientForKey(key: str, config: Config) -> Client | None:
    """The client whose key `key` is, compared in constant time (None: no client)."""
    digest = keyDigest(key)
    found = None
    for client in config.clients:  # no early exit: the time must not tell which matched
        if hmac.compare_digest(digest, client.digest):
            found = client
    return found
