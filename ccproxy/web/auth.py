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
    """The calling client when `clients` is set (None when it is not); 401 otherwise.

    A request is judged twice, by the site before its body is read and by its
    route: the client found the first time is kept on the request
    (`knownCaller`, with the config it was found in) and is the answer the second
    time under the same config, rather than reading the key, hashing it and
    comparing it with every client's again (issue 18). A reload in between
    (another config) finds it afresh."""
    if not config.clients:
        return None
    known: tuple[Config, Client] | None = getattr(request, "knownCaller", None)
    if known is not None and known[0] is config:
        return known[1]
    key = callerKey(request)
    if not key:
        raise ProxyError(401, "no API key: send it as x-api-key or Authorization: Bearer")
    found = clientForKey(key, config)
    if found is None:
        raise ProxyError(401, "invalid API key")
    request.knownCaller = (config, found)  # type: ignore[attr-defined]
    return found


def clientForKey(key: str, config: Config) -> Client | None:
    """The client whose key `key` is, compared in constant time (None: no client)."""
    digest = keyDigest(key)
    found = None
    for client in config.clients:  # no early exit: the time must not tell which matched
        if hmac.compare_digest(digest, client.digest):
            found = client
    return found
