"""Who may come in: the caller's key, and each client's own limits.

Keys are compared as digests, in constant time, against every configured client
(no early exit). A single client cannot crowd out the others: past its own
concurrency or request rate it gets 429 with `retry-after`.
"""

from __future__ import annotations

import hmac
import math
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager

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
    digest = keyDigest(key)
    found = None
    for client in config.clients:  # no early exit: the time must not tell which matched
        if hmac.compare_digest(digest, client.digest):
            found = client
    if found is None:
        raise ProxyError(401, "invalid API key")
    return found


class ClientLimits:
    """Concurrency and requests-per-minute of one client (a sliding one-minute window).

    Only a request that was let in holds a place: `admitted` gives the place back
    when the request ends, and a refused request never took one.
    """

    def __init__(self) -> None:
        self.active = 0
        self._recent: deque[float] = deque()

    @contextmanager
    def admitted(self, now: float, client: Client) -> Iterator[None]:
        """Hold a place for one request for the length of the block; 429 (with a
        `retry-after`) when the client is over either of its limits."""
        self._admit(now, client)
        self.active += 1
        try:
            yield
        finally:
            self.active -= 1

    def _admit(self, now: float, client: Client) -> None:
        if client.maxConcurrent is not None and self.active >= client.maxConcurrent:
            raise ProxyError(
                429,
                f"client {client.name!r} already has {self.active} requests in flight "
                f"(limit {client.maxConcurrent})",
                "rate_limit_error",
                {"retry-after": "1"},
            )
        perMinute = client.requestsPerMinute
        if perMinute is not None:
            while self._recent and self._recent[0] <= now - 60:
                self._recent.popleft()
            if len(self._recent) >= perMinute:
                wait = math.ceil(self._recent[0] + 60 - now)
                raise ProxyError(
                    429,
                    f"client {client.name!r} is over its limit of {perMinute} requests per minute",
                    "rate_limit_error",
                    {"retry-after": str(max(wait, 1))},
                )
            self._recent.append(now)
