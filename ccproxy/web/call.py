"""One API request while it is served, and the HTTP shapes of what it answers.

A `Call` is what every handler gets: the request, the config it began with (a
reload does not change it midway), the caller, and the access record that the
request leaves behind whatever becomes of it. The functions below read JSON bodies
and query strings and write JSON answers and Anthropic error envelopes.
"""

from __future__ import annotations

import ipaddress
import os
import time
from collections.abc import Callable
from io import BytesIO
from typing import Any

import orjson
from attrs import define
from twisted.web.iweb import IRequest

from ccproxy.compat import keepOnlyHeaders, setOwnHeader
from ccproxy.config.model import Client, Config
from ccproxy.errors import NOT_SUPPORTED, ProxyError, Redact, errorBody, invalidRequest
from ccproxy.observe.accesslog import AccessRecord
from ccproxy.relay.relay import StreamRelay
from ccproxy.web.auth import callerKey

JSON = b"application/json"
_setContentType = setOwnHeader(b"content-type")
_setContentLength = setOwnHeader(b"content-length")
_setRequestId = setOwnHeader(b"request-id")
"""Headers whose values ccproxy makes, set without Twisted's sanitizing (see
`compat.setOwnHeader`): about a microsecond each, three per request."""


class Ids:
    """Request ids: 24 hex digits, the first 11 the time in milliseconds, the other
    13 random (52 bits). `now`: the wall clock, in seconds.

    Time first: ids made later sort after, so the ledger's rows, keyed by their
    request's id, go in at the end of its index, a few pages a batch; 96 random
    bits put each row in a page of its own and cost 3.4 page writes and 1.8 page
    reads a row (see `ccproxy.ledger.sql`). Random within a millisecond, from
    `os.urandom` drawn `POOL` bytes at a time, not a `getrandom` call per request;
    a forked process draws its own (`os.register_at_fork`), or parent and child
    would make the same ids. Two requests of the same millisecond share an id once
    in 2**52 pairs (a row the ledger would keep once): never, in practice."""

    POOL = 4096
    """Random bytes drawn at once: 630 ids."""

    def __init__(self, now: Callable[[], float] = time.time) -> None:
        self._now = now
        self._random = ""
        self._at = 0
        os.register_at_fork(after_in_child=self._forget)

    def __call__(self) -> str:
        at = self._at
        if at + 13 > len(self._random):
            self._random = os.urandom(self.POOL).hex()
            at = 0
        self._at = at + 13
        return "%011x" % (int(self._now() * 1000) & _MS) + self._random[at : at + 13]

    def _forget(self) -> None:
        self._random = ""


_MS = 16**11 - 1
"""Milliseconds in 11 hex digits (until the year 2527, then again from 0)."""


newId = Ids()
"""The daemon's request ids (`Ids`)."""


@define
class Call:
    """One API request being served."""

    request: IRequest
    config: Config
    """The configuration when the request began."""
    record: AccessRecord
    client: Client | None = None
    """Who called, when `clients` is set."""
    relay: StreamRelay | None = None
    """The relay of the answer being streamed, if one is (`max_duration` ends it)."""
    expired: bool = False
    """`max_duration` ran out (a timeout, not a client that left)."""
    bodySize: int = 0
    """Bytes of the request body, once read."""
    viaToken: bool = False
    """The caller came with a `/login` token, not a client key."""

    @property
    def forwardedKey(self) -> str | None:
        """The key an upstream without a key of its own is sent: the caller's
        client key, never a gateway token (it is ccproxy's, not the upstream's)."""
        return None if self.viaToken else callerKey(self.request)

    def redact(self, text: str) -> str:
        """`text` fit for the client or a log: see `redactFor`."""
        return redactFor(self.request, self.config)(text)


def redactFor(request: IRequest, config: Config) -> Redact:
    """What takes secrets out of text about `request`: the config's own, anything
    key-shaped, and the key the caller sent (which an upstream without a key of its
    own was given, and may echo back)."""
    key = callerKey(request)
    return lambda text: config.redactor.redact(text, key)


def releaseBody(call: Call) -> None:
    """Tell the site this request no longer holds its body (nor what it was parsed
    into), so the room it took among the bodies in memory comes free."""
    release = getattr(call.request, "releaseBody", None)
    if release is not None:
        release()


HEADERS_READ_LATER = (b"connection", b"x-api-key", b"authorization")
"""The request headers read once its upstream request has left: `Connection` by
twisted.web as the answer's head goes out (whether the connection stays open),
the caller's key by `redactFor` (an upstream's error may echo it back)."""


def forgetHeaders(call: Call) -> None:
    """Keep only the request headers read once its upstream request has left
    (`HEADERS_READ_LATER`): a stream lives for minutes, and Claude Code's twenty
    headers took some 3 KB of it in twisted.web's lists (issue 18: memory per
    live stream)."""
    keepOnlyHeaders(call.request.requestHeaders, HEADERS_READ_LATER)


IPV6_PREFIX = 64
"""An IPv6 peer is counted by its /64: one host is commonly given a whole /64,
and counted address by address it would have no bound at all."""


def peerKey(host: str) -> str:
    """What every per-address limit counts a peer by (connections at the door,
    sign-ins started, verification attempts): its IPv4 address, or its IPv6
    address's /64 (an IPv4-mapped one as the IPv4 address it is)."""
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, IPV6_PREFIX), strict=False))
    return host


def noStore(request: IRequest) -> None:
    """Never cached: OAuth's token answers (RFC 6749 §5.1) and every page of secrets."""
    request.setHeader(b"cache-control", b"no-store")
    request.setHeader(b"pragma", b"no-cache")


def lockedPage(request: IRequest, policy: bytes) -> None:
    """The headers of an HTML page ccproxy serves (sign-in, status): its own
    Content-Security-Policy, never framed, sniffed, cached, or named in a Referer."""
    request.setHeader(b"content-security-policy", policy)
    request.setHeader(b"x-frame-options", b"DENY")
    request.setHeader(b"x-content-type-options", b"nosniff")
    request.setHeader(b"referrer-policy", b"no-referrer")
    noStore(request)


def requestId(request: IRequest, makeId: Callable[[], str] = newId) -> str:
    """The request's id, made on first use and sent as the `request-id` header."""
    value = request.responseHeaders.getRawHeaders(b"request-id")
    if value:
        return value[0].decode()
    made = f"req_{makeId()}"
    encoded = made.encode()
    if b"\r" in encoded or b"\n" in encoded:  # a makeId of tests' or a plugin's
        request.setHeader(b"request-id", encoded)
    else:
        _setRequestId(request, encoded)
    return made


def jsonReply(request: IRequest, value: Any) -> bytes:
    """`value` as the JSON body of the answer."""
    body = orjson.dumps(value)
    _setContentType(request, JSON)
    _setContentLength(request, b"%d" % len(body))
    return body


def errorHeaders(error: ProxyError) -> dict[bytes, bytes]:
    """The headers an error answer carries: its own (`retry-after`, a billing
    error's `x-should-retry: false`), `x-should-retry: true` where Claude Code
    should try again, and `x-should-retry: false` where it would try again in vain:
    a key that is missing or wrong (401: without the header Claude Code retries
    with backoff for minutes before it says so) and an endpoint this backend does
    not have (501 `not_supported`: without it, Claude Code asks once more)."""
    headers = {name.encode(): value.encode() for name, value in error.headers.items()}
    if error.status == 401 or error.errorType == NOT_SUPPORTED:
        headers.setdefault(b"x-should-retry", b"false")
    elif error.status in (408, 429) or error.status >= 500:
        headers.setdefault(b"x-should-retry", b"true")
    return headers


OAUTH_PATHS = b"/oauth/"
"""Where errors are RFC 6749's `{"error", "error_description"}` (the gateway
protocol's OAuth endpoints), not the Anthropic envelope."""


def oauthBody(error: str, description: str) -> dict[str, str]:
    """An RFC 6749 §5.2 error body."""
    return {"error": error, "error_description": description}


def oauthCode(status: int) -> str:
    """The RFC 6749 / 8628 error code for a failure that is not the grant's own."""
    if status == 429:
        return "slow_down"
    if status == 503:
        return "temporarily_unavailable"
    return "server_error" if status >= 500 else "invalid_request"


def errorBodyFor(path: bytes, error: ProxyError, message: str, made: str) -> dict[str, Any]:
    """The error body `path`'s clients read: RFC 6749's on the OAuth endpoints,
    the Anthropic envelope everywhere else."""
    if path.startswith(OAUTH_PATHS):
        return oauthBody(oauthCode(error.status), message)
    return errorBody(error.errorType, message, made)


def errorReply(request: IRequest, error: ProxyError, redact: Redact) -> bytes:
    """An error answer with the error's status: an Anthropic envelope, or on the
    OAuth endpoints RFC 6749's (`errorBodyFor`). The message goes through
    `redact`: an upstream's words may hold the key it was sent."""
    request.setResponseCode(error.status)
    for name, value in errorHeaders(error).items():
        request.setHeader(name, value)
    body = errorBodyFor(request.path, error, redact(error.message), requestId(request))
    return jsonReply(request, body)


def readJSON(call: Call) -> dict[str, Any]:
    """The request's JSON object body, read once (a long stream need not keep it)."""
    return parseJSON(readRaw(call))


def readRaw(call: Call) -> bytes:
    """The request's body as it came, read once, within `max_body_bytes`."""
    request, config = call.request, call.config
    if getattr(request, "bodyTooLarge", False):
        raise bodyTooLarge(config)
    raw = request.content.read()
    request.content.close()  # a temporary file when twisted.web spooled a large body
    request.content = BytesIO()
    if len(raw) > config.maxBodyBytes:
        raise bodyTooLarge(config)
    call.bodySize = len(raw)
    if config.logPayloads:
        call.record.requestPayload = raw
    return raw


def parseJSON(raw: bytes) -> dict[str, Any]:
    """A request body as a JSON object, or a 400."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise invalidRequest(f"the request body is not valid JSON ({e})") from None
    if not isinstance(body, dict):
        raise invalidRequest("the request body must be a JSON object")
    return body


def overTime(config: Config) -> ProxyError:
    """`max_duration` ran out before the answer was done."""
    return ProxyError(504, f"the request took longer than {config.maxDuration:g} s", "api_error")


def bodyTooLarge(config: Config) -> ProxyError:
    return ProxyError(
        413, f"the request body is larger than {config.maxBodyBytes} bytes", "request_too_large"
    )


MAX_MODEL_CHARS = 256
"""The longest model name taken. Real ones are far shorter: Anthropic's run to about
30 characters, a Bedrock inference-profile ARN to about 100, a Hugging Face
`org/name:quant` id to about 200 (96 + 96 + a tag). A name ends up in log lines,
error messages and the request sent upstream: five megabytes of one is only ever
a mistake or an attack."""


def modelName(body: dict[str, Any]) -> str:
    """The request's `model`, required, and not over `MAX_MODEL_CHARS`."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise invalidRequest("model: is required (a string)")
    return boundedModelName(model)


def boundedModelName(model: str) -> str:
    """`model`, or a 400 (not naming it) when it is over `MAX_MODEL_CHARS`."""
    if len(model) > MAX_MODEL_CHARS:
        raise invalidRequest(
            f"model: is {len(model)} characters long, over the limit of {MAX_MODEL_CHARS}"
        )
    return model


def queryText(request: IRequest, name: bytes) -> str | None:
    values = request.args.get(name)
    return values[0].decode("utf-8", "replace") if values else None


def queryInt(request: IRequest, name: bytes, default: int, low: int, high: int) -> int:
    text = queryText(request, name)
    if text is None:
        return default
    try:
        return max(low, min(high, int(text)))
    except ValueError:
        raise invalidRequest(f"{name.decode()}: must be an integer") from None
