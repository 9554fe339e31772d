"""The status page's sign-in: an admin's key is given once, and the browser keeps a
session cookie that is not the key and cannot be turned back into it.

The cookie is `NAME.EXPIRY.NONCE.MAC`: the MAC is an HMAC-SHA256 keyed by the
client's key digest (what the config holds), so every ccproxy process on the same
config accepts it (`reuse_port` spreads a page's connections between processes)
and none keeps a table of sessions. A session ends when it expires (`SESSION_TTL`),
when it is signed out (its nonce is refused from then on, by this process), when
the client stops being an admin or is removed, and when its key changes: a reload
with a new key ends every session made with the old one.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Sequence

from attrs import define, field

from ccproxy.config.model import Client

COOKIE = b"ccproxy_status"
SESSION_TTL = 12 * 3600
"""Seconds a sign-in lasts."""
MAX_REVOKED = 4096
"""Signed-out sessions remembered until they expire (the oldest forgotten first:
past this many sign-outs in `SESSION_TTL`, an early one would be accepted again)."""
_CONTEXT = b"ccproxy status session\0"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(client: Client, name: str, expiry: int, nonce: str) -> str:
    message = _CONTEXT + f"{name}\0{expiry}\0{nonce}".encode()
    return _b64(hmac.new(client.digest, message, hashlib.sha256).digest())


@define
class Sessions:
    """Makes and checks session cookies (see the module)."""

    ttl: int = SESSION_TTL
    _revoked: dict[str, int] = field(factory=dict)
    """Nonce -> expiry, of the sessions signed out here."""

    def make(self, client: Client, now: float) -> str:
        """A new session for `client`, an admin whose key was just given."""
        expiry = int(now) + self.ttl
        nonce = secrets.token_urlsafe(18)
        name = _b64(client.name.encode())
        return f"{name}.{expiry}.{nonce}.{_mac(client, client.name, expiry, nonce)}"

    def check(self, value: str, clients: Sequence[Client], now: float) -> Client | None:
        """The admin client whose session `value` is, if it still holds."""
        parsed = _parse(value)
        if parsed is None:
            return None
        name, expiry, nonce, mac = parsed
        if expiry <= now or nonce in self._revoked:
            return None
        found = None
        for client in clients:
            if client.name == name and client.admin:
                found = client
        if found is None or not hmac.compare_digest(mac, _mac(found, name, expiry, nonce)):
            return None
        return found

    def revoke(self, value: str, now: float) -> None:
        """Sign a session out: its cookie is refused from now on."""
        parsed = _parse(value)
        if parsed is None:
            return
        _, expiry, nonce, _ = parsed
        self._revoked = {n: x for n, x in self._revoked.items() if x > now}
        while len(self._revoked) >= MAX_REVOKED:
            del self._revoked[min(self._revoked, key=self._revoked.__getitem__)]
        self._revoked[nonce] = expiry


def _parse(value: str) -> tuple[str, int, str, str] | None:
    parts = value.split(".")
    if len(parts) != 4 or len(value) > 1024:
        return None
    name, expiry, nonce, mac = parts
    try:
        return _unb64(name).decode("utf-8"), int(expiry), nonce, mac
    except (ValueError, UnicodeDecodeError):
        return None
