"""`/login`: Claude Code signs in to ccproxy as to an LLM gateway (the gateway
protocol's Discovery, Device authorization, Verification page and Token), and
the tokens it then holds are accepted wherever a client key is.

The OAuth grammar here is RFC 8414 metadata, RFC 8628's device grant, RFC 6749's
refresh grant and RFC 7009 revocation, each a handful of form fields, answered
directly (never a redirect) with `{"error", "error_description"}` on failure.
No `client_id` or `scope` is asked for: Claude Code sends neither. Unknown
parameters are ignored (RFC 6749 §3.2, RFC 8628 §3.1).

Who approves a code: the owner of a client key on the verification page
(`/device`), or a Unix account named by `clients[].unix_user` through the
daemon's approve socket (`ccproxy.daemon.approve`).

Tokens and pending codes live in the ledger's database (`ccproxy.ledger.signin`),
read on the ledger's thread: a bearer's lookup never blocks the reactor. A token
verified is remembered here for `CACHE_SECONDS` (at most `CACHE_ENTRIES` of
them), so a token revoked through another process or `python -m ccproxy tokens
revoke` stops working within that; one revoked through this process at once.
"""

from __future__ import annotations

import html
import re
import secrets
import uuid
from collections import OrderedDict, deque
from typing import Any, ClassVar
from urllib.parse import parse_qs

from attrs import define, field, frozen
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.iweb import IRequest

from ccproxy.config.model import Client, Config
from ccproxy.errors import ProxyError, invalidRequest
from ccproxy.ledger.signin import (
    ACCESS,
    PENDING,
    Issued,
    SignInStore,
    digestOf,
)
from ccproxy.ledger.store import LedgerUnavailable
from ccproxy.web.auth import authenticate, callerKey, clientForKey
from ccproxy.web.call import JSON, Call, jsonReply, lockedPage, noStore, oauthBody, peerKey

ACCESS_PREFIX = "ccpx_at_"
REFRESH_PREFIX = "ccpx_rt_"
DEVICE_PREFIX = "ccpx_dc_"
SECRET_BYTES = 32
"""256 random bits in every token and device code."""
USER_CODE_ALPHABET = "BCDFGHJKLMNPQRSTVWXZ"
"""RFC 8628 §6.1's base-20 charset: no vowels (no words), no look-alikes."""
USER_CODE_LENGTH = 8
CACHE_SECONDS = 30.0
CACHE_ENTRIES = 10_000
NEGATIVE_SECONDS = 5.0
"""How long a token found unknown, revoked or expired is refused without asking
the database again (a client retrying with a dead token costs one lookup)."""
DEVICE_CODES_PER_MINUTE = 20
"""Sign-ins one address may start per minute: each is a row in the database."""
PAGE_ADDRESSES = 10_000
"""Addresses whose verification-page attempts are remembered (oldest forgotten)."""
UNAVAILABLE = "sign-in is unavailable for a moment (its database did not answer): try again"
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
REFRESH_GRANT = "refresh_token"
OPEN_PATHS = frozenset(
    (b"/oauth/device_authorization", b"/oauth/token", b"/oauth/revoke", b"/device")
)
"""Paths whose bodies come without a key (sign-in forms)."""
FORM_MAX_BYTES = 16 * 1024
"""The largest body taken on `OPEN_PATHS`: a few form fields."""
_HOST = re.compile(r"[A-Za-z0-9.\-]+(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?")
PAGE_CSP = (
    b"default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
    b"frame-ancestors 'none'; base-uri 'none'"
)


def isGatewayToken(key: str) -> bool:
    """A key shaped like one of our access tokens (looked up, not compared)."""
    return key.startswith(ACCESS_PREFIX)


def newUserCode() -> str:
    """`WDJB-MJHT`: eight letters of the base-20 charset, in two halves."""
    letters = "".join(secrets.choice(USER_CODE_ALPHABET) for _ in range(USER_CODE_LENGTH))
    return f"{letters[:4]}-{letters[4:]}"


def normalUserCode(text: str) -> str:
    """What a person typed, as stored: upper case, the dash where it goes, any
    spaces or dashes they put elsewhere dropped (RFC 8628 §6.1)."""
    letters = "".join(c for c in text.upper() if c.isalnum())[: USER_CODE_LENGTH * 2]
    return f"{letters[:4]}-{letters[4:]}" if len(letters) == USER_CODE_LENGTH else letters


def formValue(request: IRequest, name: str) -> str | None:
    """A parameter of the request's form body or query string (the body's first),
    the first when repeated; None when absent. The site does not parse bodies
    into `request.args` (`ProxySite`): the form, at most `FORM_MAX_BYTES`, is
    read here once and kept on the request."""
    fields = getattr(request, "_ccproxyForm", None)
    if fields is None:
        fields = {}
        raw = request.content.read(FORM_MAX_BYTES + 1) if request.method == b"POST" else b""
        if len(raw) > FORM_MAX_BYTES:
            raise ProxyError(413, f"a sign-in form is at most {FORM_MAX_BYTES} bytes")
        for source in (raw, ([*request.uri.split(b"?", 1), b""])[1]):
            text = source.decode("utf-8", "replace")
            try:
                parsed = parse_qs(text, keep_blank_values=True, max_num_fields=64)
            except ValueError:
                raise invalidRequest("the form has too many fields") from None
            for key, values in parsed.items():
                fields.setdefault(key, values[0])
        request._ccproxyForm = fields  # type: ignore[attr-defined]
    value = fields.get(name)
    return None if value is None else str(value)


@frozen
class Known:
    """A token's verdict, remembered until `until`."""

    client: str | None
    """The client it signs in as; None: refused."""
    until: float


@define
class TokenCache:
    """Verified tokens by digest, for a short while, at most `entries` of them."""

    entries: int = CACHE_ENTRIES
    _known: OrderedDict[str, Known] = field(factory=OrderedDict)

    def get(self, digest: str, now: float) -> Known | None:
        known = self._known.get(digest)
        if known is None:
            return None
        if now >= known.until:
            del self._known[digest]
            return None
        return known

    def put(self, digest: str, known: Known) -> None:
        self._known[digest] = known
        self._known.move_to_end(digest)
        while len(self._known) > self.entries:
            self._known.popitem(last=False)

    def forget(self, digest: str) -> None:
        self._known.pop(digest, None)

    def clear(self) -> None:
        self._known.clear()


@define
class PageLimiter:
    """Attempts per address per minute on the verification page (RFC 8628 §5.1)."""

    perMinute: int
    addresses: int = PAGE_ADDRESSES
    _seen: OrderedDict[str, deque[float]] = field(factory=OrderedDict)

    def allow(self, address: str, now: float) -> bool:
        times = self._seen.get(address)
        if times is None:
            times = self._seen[address] = deque()
            while len(self._seen) > self.addresses:
                self._seen.popitem(last=False)
        while times and now - times[0] >= 60.0:
            times.popleft()
        if len(times) >= self.perMinute:
            return False
        times.append(now)
        self._seen.move_to_end(address)
        return True


def addressOf(request: IRequest) -> str:
    """What the per-address limits count by (`peerKey`)."""
    return peerKey(str(getattr(request.getClientAddress(), "host", "?")))


def oauthError(request: IRequest, status: int, error: str, description: str) -> bytes:
    """An RFC 6749 §5.2 error answer."""
    request.setResponseCode(status)
    noStore(request)
    return jsonReply(request, oauthBody(error, description))


def gatewayURL(request: IRequest, config: Config) -> str:
    """Where the client reached us: `login.public_url`, else the scheme and the
    `Host` it sent (a malformed one: the address it connected to)."""
    if config.login.publicURL:
        return config.login.publicURL
    scheme = "https" if request.isSecure() else "http"
    host = (request.getHeader(b"host") or b"").decode("latin-1")
    if not _HOST.fullmatch(host):
        address = request.getHost()
        host = f"{address.host}:{address.port}"
    return f"{scheme}://{host}"


@define
class SignIn:
    """The sign-in endpoints and the bearer lookups, over a `SignInStore` (None:
    no database ledger, so no sign-in: the endpoints answer 404)."""

    store: SignInStore | None
    clock: IReactorTime
    cache: TokenCache = field(factory=TokenCache)
    limiter: PageLimiter | None = None
    starts: PageLimiter = field(factory=lambda: PageLimiter(DEVICE_CODES_PER_MINUTE))
    """Sign-ins started per address (`/oauth/device_authorization`)."""

    log: ClassVar[Logger] = Logger()

    def serving(self, config: Config) -> bool:
        return self.store is not None and config.signIn

    def _require(self, config: Config) -> SignInStore:
        if self.store is None or not config.signIn:
            raise ProxyError(404, "sign-in (/login) is not served here", "not_found_error")
        return self.store

    # -- who is calling ------------------------------------------------------------

    async def identify(self, request: IRequest, config: Config) -> tuple[Client | None, bool]:
        """The calling client, and whether it came with a gateway token (whose
        value is then not forwarded to an upstream). A client key is checked
        first; a token-shaped key is looked up; 401 otherwise."""
        try:
            return authenticate(request, config), False
        except ProxyError:
            key = callerKey(request)
            if key is None or not isGatewayToken(key) or not self.serving(config):
                raise
        return await self.clientForToken(key, config), True

    async def clientForToken(self, token: str, config: Config) -> Client:
        """The client a live access token signs in as; 401 (which says
        `x-should-retry: false`, see `ccproxy.web.call.errorHeaders`) if it is
        unknown, revoked or expired, or its client is no longer configured."""
        store = self._require(config)
        digest = digestOf(token)
        now = self.clock.seconds()
        known = self.cache.get(digest, now)
        if known is None:
            try:
                row = await store.run(store.tables.token, digest)
            except LedgerUnavailable as e:
                raise ProxyError(503, self._down(e), "api_error") from e
            if row is None or row.kind != ACCESS or row.revoked is not None or now >= row.expires:
                known = Known(None, now + NEGATIVE_SECONDS)
            else:
                known = Known(row.client, min(row.expires, now + CACHE_SECONDS))
            self.cache.put(digest, known)
        client = None if known.client is None else config.clientNamed(known.client)
        if client is None:
            raise ProxyError(
                401,
                "your ccproxy sign-in has expired or was revoked: run /login again",
                "authentication_error",
            )
        return client

    def refusal(self, token: str, config: Config) -> Deferred[ProxyError | None]:
        """The site's question before it reads a token bearer's body: the 401 the
        route would answer, or None (a live token; or the database cannot say
        now, and the route will answer that)."""
        return Deferred.fromCoroutine(self._refusal(token, config))

    async def _refusal(self, token: str, config: Config) -> ProxyError | None:
        try:
            await self.clientForToken(token, config)
        except ProxyError as e:
            return e if e.status == 401 else None
        return None

    # -- discovery -----------------------------------------------------------------

    def metadata(self, request: IRequest, config: Config) -> bytes:
        """RFC 8414 authorization server metadata (no `authorization_endpoint`)."""
        self._require(config)
        base = gatewayURL(request, config)
        return jsonReply(
            request,
            {
                "issuer": base,
                "device_authorization_endpoint": f"{base}/oauth/device_authorization",
                "token_endpoint": f"{base}/oauth/token",
                "revocation_endpoint": f"{base}/oauth/revoke",
                "grant_types_supported": [DEVICE_GRANT, REFRESH_GRANT],
                "response_types_supported": [],
                "token_endpoint_auth_methods_supported": ["none"],
                "revocation_endpoint_auth_methods_supported": ["none"],
            },
        )

    # -- device authorization --------------------------------------------------------

    async def deviceAuthorization(self, call: Call) -> bytes:
        """RFC 8628 §3.2: a device code (256 bits, stored hashed, single use) and
        a user code for the person to approve."""
        request, config = call.request, call.config
        store = self._require(config)
        surface = (formValue(request, "surface") or "")[:64] or None
        now = self.clock.seconds()
        if not self.starts.allow(addressOf(request), now):
            request.setHeader(b"retry-after", b"60")
            return self._refuse(
                call, 429, "slow_down", "too many sign-ins started from this address"
            )
        login = config.login
        deviceCode = DEVICE_PREFIX + secrets.token_urlsafe(SECRET_BYTES)
        for _ in range(5):
            userCode = newUserCode()
            try:
                stored = await store.run(
                    store.tables.newDevice,
                    digestOf(deviceCode),
                    userCode,
                    surface,
                    now,
                    now + login.deviceCodeSeconds,
                )
            except LedgerUnavailable as e:
                return self._unavailable(call, e)
            if stored:
                break
        else:
            return self._unavailable(call, LedgerUnavailable("no free user code"))
        base = gatewayURL(request, config)
        answer: dict[str, Any] = {
            "device_code": deviceCode,
            "user_code": userCode,
            "verification_uri": f"{base}/device",
            "verification_uri_complete": f"{base}/device?user_code={userCode}",
            "expires_in": int(login.deviceCodeSeconds),
            "interval": login.interval,
        }
        if login.loginNotice:
            answer["login_notice"] = login.loginNotice
        call.record.status = 200
        noStore(request)
        return jsonReply(request, answer)

    def _unavailable(self, call: Call, e: Exception) -> bytes:
        said = self._down(e)
        call.record.fail(503, "temporarily_unavailable", said)
        return oauthError(call.request, 503, "temporarily_unavailable", said)

    def _down(self, e: Exception) -> str:
        """The database failed: its words (its host, its user) go to the log, and
        whoever asked, anyone at all on these endpoints, is told only that."""
        self.log.warn("sign-in: the ledger's database failed: {why}", why=str(e))
        return UNAVAILABLE

    def _refuse(self, call: Call, status: int, error: str, description: str) -> bytes:
        call.record.fail(status, error, description)
        return oauthError(call.request, status, error, description)

    # -- token -------------------------------------------------------------------------

    async def token(self, call: Call) -> bytes:
        """The device grant (polled until the code is approved) and the refresh grant."""
        request, config = call.request, call.config
        store = self._require(config)
        grant = formValue(request, "grant_type")
        if grant == DEVICE_GRANT:
            code = formValue(request, "device_code")
            if not code:
                return self._refuse(call, 400, "invalid_request", "device_code is required")
            return await self._deviceGrant(call, store, code)
        if grant == REFRESH_GRANT:
            refresh = formValue(request, "refresh_token")
            if not refresh:
                return self._refuse(call, 400, "invalid_request", "refresh_token is required")
            return await self._refreshGrant(call, store, refresh)
        if grant is None:
            return self._refuse(call, 400, "invalid_request", "grant_type is required")
        return self._refuse(
            call, 400, "unsupported_grant_type", f"grant_type {grant[:80]!r} is not served here"
        )

    async def _deviceGrant(self, call: Call, store: SignInStore, code: str) -> bytes:
        login = call.config.login
        now = self.clock.seconds()
        access = ACCESS_PREFIX + secrets.token_urlsafe(SECRET_BYTES)
        refresh = REFRESH_PREFIX + secrets.token_urlsafe(SECRET_BYTES)
        issued = Issued(digestOf(access), digestOf(refresh), uuid.uuid4().hex)
        try:
            poll = await store.run(
                store.tables.poll,
                digestOf(code),
                now,
                login.interval,
                issued,
                now + login.accessTokenSeconds,
                now + login.refreshTokenSeconds,
            )
        except LedgerUnavailable as e:
            return self._unavailable(call, e)
        if poll.outcome == PENDING:
            return self._refuse(
                call, 400, "authorization_pending", "the code has not been approved yet"
            )
        if poll.outcome == "slow_down":
            return self._refuse(call, 400, "slow_down", "polling faster than the interval")
        if poll.outcome == "denied":
            return self._refuse(call, 400, "access_denied", "the sign-in was refused")
        if poll.outcome == "expired":
            return self._refuse(call, 400, "expired_token", "the code has expired: sign in again")
        if poll.outcome != "issued" or poll.client is None:
            return self._refuse(call, 400, "invalid_grant", "unknown or already used device_code")
        if call.config.clientNamed(poll.client) is None:  # removed since it approved
            try:
                await store.run(store.tables.revoke, issued.refresh, now)
            except LedgerUnavailable as e:
                return self._unavailable(call, e)
            return self._refuse(
                call, 400, "access_denied", "the client that approved is no longer configured"
            )
        call.record.client = poll.client
        self.log.info(
            "sign-in: {client} signed in ({surface})",
            client=poll.client,
            surface=poll.surface or "unknown client",
        )
        return self._tokens(call, access, refresh)

    async def _refreshGrant(self, call: Call, store: SignInStore, refresh: str) -> bytes:
        config, login = call.config, call.config.login
        now = self.clock.seconds()
        access = ACCESS_PREFIX + secrets.token_urlsafe(SECRET_BYTES)
        try:
            row = await store.run(
                store.tables.refresh,
                digestOf(refresh),
                digestOf(access),
                now,
                now + login.accessTokenSeconds,
                now + login.refreshTokenSeconds,
            )
            if row is not None and config.clientNamed(row.client) is None:
                await store.run(store.tables.revoke, digestOf(refresh), now)  # deprovisioned
                row = None
        except LedgerUnavailable as e:
            return self._unavailable(call, e)
        if row is None:
            return self._refuse(
                call, 401, "invalid_grant", "the sign-in has expired or was revoked: sign in again"
            )
        call.record.client = row.client
        return self._tokens(call, access, refresh)

    def _tokens(self, call: Call, access: str, refresh: str) -> bytes:
        call.record.status = 200
        noStore(call.request)
        return jsonReply(
            call.request,
            {
                "access_token": access,
                "token_type": "Bearer",
                "expires_in": int(call.config.login.accessTokenSeconds),
                "refresh_token": refresh,
            },
        )

    # -- revocation --------------------------------------------------------------------

    async def revoke(self, call: Call) -> bytes:
        """RFC 7009: the sign-in the token belongs to ends; 200 whether or not the
        token was known (§2.2)."""
        request, config = call.request, call.config
        store = self._require(config)
        token = formValue(request, "token")
        if not token:
            return self._refuse(call, 400, "invalid_request", "token is required")
        digest = digestOf(token)
        try:
            count = await store.run(store.tables.revoke, digest, self.clock.seconds())
        except LedgerUnavailable as e:
            return self._unavailable(call, e)
        # Every access token of the family may be cached here: forget them all.
        self.cache.clear() if count else self.cache.forget(digest)
        call.record.status = 200
        noStore(request)
        request.setHeader(b"content-type", JSON)
        return b"{}"

    # -- approving a code --------------------------------------------------------------

    async def approve(
        self, config: Config, userCode: str, client: Client, allow: bool = True
    ) -> str:
        """Approve `userCode` for `client` (or, not `allow`, refuse it): a sentence
        for the person who asked; 404 or 409 when there is no such pending code."""
        store = self._require(config)
        code = normalUserCode(userCode)
        outcome = await store.run(
            store.tables.decide, code, client.name if allow else None, self.clock.seconds()
        )
        if outcome == "done":
            self.log.info(
                "sign-in: code {code} {verdict} by {client}",
                code=code,
                verdict="approved" if allow else "refused",
                client=client.name,
            )
            if not allow:
                return "refused: that sign-in will not go through"
            return f"approved: Claude Code is signed in as {client.name}"
        if outcome == "decided":
            raise ProxyError(409, f"code {code} was already approved or refused")
        raise ProxyError(404, f"no pending code {code} (mistyped, or expired: run /login again)")

    def approverFor(self, config: Config, unixUser: str) -> Client:
        """The client a Unix account approves as (`clients[].unix_user`)."""
        found = next((c for c in config.clients if c.unixUser == unixUser), None)
        if found is None:
            raise ProxyError(
                403, f"the Unix user {unixUser!r} is no client's unix_user", "permission_error"
            )
        return found

    # -- the verification page ---------------------------------------------------------

    def page(self, request: IRequest, config: Config) -> bytes:
        """GET /device: a form for the code (pre-filled from `user_code`, never
        sent by itself: RFC 8628 §5.4) and the client key."""
        self._require(config)
        code = normalUserCode(formValue(request, "user_code") or "")
        return self._render(request, 200, code, None)

    async def pageSubmit(self, request: IRequest, config: Config) -> bytes:
        """POST /device: the key names the client; the code is approved for it."""
        self._require(config)
        code = normalUserCode(formValue(request, "user_code") or "")
        limiter = self.limiter
        if limiter is None or limiter.perMinute != config.login.pageAttemptsPerMinute:
            limiter = self.limiter = PageLimiter(config.login.pageAttemptsPerMinute)
        if not limiter.allow(addressOf(request), self.clock.seconds()):
            request.setHeader(b"retry-after", b"60")
            return self._render(request, 429, code, "Too many attempts: wait a minute.")
        key = formValue(request, "key") or ""
        client = clientForKey(key, config) if key else None
        if client is None:
            return self._render(request, 401, code, "That key is not a client key of this ccproxy.")
        try:
            allow = formValue(request, "action") != "deny"
            message = await self.approve(config, code, client, allow)
        except ProxyError as e:
            return self._render(request, e.status, code, e.message)
        except LedgerUnavailable as e:
            return self._render(request, 503, code, self._down(e))
        return self._render(request, 200, "", f"{message.capitalize()}. Go back to Claude Code.")

    def _render(self, request: IRequest, status: int, code: str, note: str | None) -> bytes:
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        lockedPage(request, PAGE_CSP)
        said = f"<p class=note>{html.escape(note)}</p>" if note else ""
        body = _PAGE.format(note=said, code=html.escape(code, quote=True)).encode()
        request.setHeader(b"content-length", b"%d" % len(body))
        return body


_PAGE = """<!doctype html>
<html lang=en><head><meta charset=utf-8><title>ccproxy sign-in</title>
<meta name=viewport content="width=device-width">
<style>body{{font:16px system-ui,sans-serif;max-width:32em;margin:3em auto;padding:0 1em}}
input{{font:inherit;padding:.3em;width:100%;box-sizing:border-box;margin:.2em 0 1em}}
.note{{padding:.6em;background:#eef}}</style></head>
<body><h1>Sign Claude Code in to ccproxy</h1>{note}
<p>Check that the code below is the one Claude Code shows, then give your ccproxy
client key (or run <code>python -m ccproxy approve CODE</code> on the host instead).</p>
<form method=post action=/device autocomplete=off>
<label>Code<input name=user_code value="{code}" required></label>
<label>Client key<input name=key type=password required></label>
<button type=submit name=action value=approve>Approve</button>
<button type=submit name=action value=deny>Refuse</button></form></body></html>
"""
