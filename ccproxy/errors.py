"""Errors as Claude Code understands them: the Anthropic error envelope and its status table.

Claude Code decides what to do from the HTTP status (retry 429/5xx, give up on 4xx) and
shows `error.message`, so every failure, ours or an upstream's, ends as a `ProxyError`
carrying a status, an Anthropic error type and a readable message.

An upstream's words may hold a key (gateways echo the `Authorization` header they
were sent), so whatever leaves the proxy as text, to a client or to a log, goes
through a `Redactor` first.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import orjson
from attrs import field, frozen

_TYPE_BY_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    529: "overloaded_error",
}

_MAX_MESSAGE = 1000


def errorTypeForStatus(status: int) -> str:
    """The Anthropic error type that goes with an HTTP status."""
    if status in _TYPE_BY_STATUS:
        return _TYPE_BY_STATUS[status]
    if 400 <= status < 500:
        return "invalid_request_error"
    return "api_error"


class ProxyError(Exception):
    """A failure answered to the client as an Anthropic error with an HTTP status."""

    def __init__(
        self,
        status: int,
        message: str,
        errorType: str | None = None,
        headers: Mapping[str, str] | None = None,
        upstream: str | None = None,
        upstreamStatus: int | None = None,
        verbatim: bool = False,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.errorType = errorType or errorTypeForStatus(status)
        self.headers: Mapping[str, str] = headers or {}
        self.upstream = upstream
        """The upstream the failure came from (for the access log), if any."""
        self.upstreamStatus = upstreamStatus
        self.verbatim = verbatim
        """The client acts on the message's exact words (`prompt is too long: …`):
        nothing is put in front of it."""

    def naming(self, upstream: str) -> ProxyError:
        """This error as one of `upstream`'s: its message starts with the name
        (unless the client reads the message word for word)."""
        return ProxyError(
            self.status,
            self.message if self.verbatim else f"{upstream}: {self.message}",
            self.errorType,
            self.headers,
            upstream,
            self.upstreamStatus,
            self.verbatim,
        )

    def __repr__(self) -> str:
        return f"ProxyError({self.status}, {self.errorType}, {self.message!r})"


def committedErrorType(error: ProxyError) -> str:
    """The `error.type` of the `event: error` that ends a stream committed to `200`
    before `error` came (an upstream that kept its headers past `head_wait`): the
    type its status would have had, except that every 5xx says `overloaded_error`,
    the type Claude Code retries on when it comes inside a stream."""
    return "overloaded_error" if error.status >= 500 else error.errorType


def invalidRequest(message: str) -> ProxyError:
    """A 400 for a request the client got wrong."""
    return ProxyError(400, message, "invalid_request_error")


def promptTooLong(
    message: str,
    upstream: str | None = None,
    upstreamStatus: int | None = None,
    status: int = 400,
) -> ProxyError:
    """The prompt does not fit the model's context window, said in the words Claude
    Code compacts on (`ccproxy.translate.overflow` makes them): an
    `invalid_request_error` (400, or the 413 Bedrock and Vertex use), whatever status
    the upstream used, never prefixed."""
    return ProxyError(
        status,
        message,
        "invalid_request_error",
        upstream=upstream,
        upstreamStatus=upstreamStatus,
        verbatim=True,
    )


NOT_SUPPORTED = "not_supported"
"""The error type of an endpoint this backend does not have (with status 501)."""


def notSupported(message: str) -> ProxyError:
    """A 501 `not_supported`: the endpoint has no backing here. Claude Code then
    falls back to doing without it (`count_tokens`: it estimates locally)."""
    return ProxyError(501, message, NOT_SUPPORTED)


def badGateway(upstream: str, why: str, status: int = 502) -> ProxyError:
    """The upstream failed us (unreachable, silent, cut off, unreadable): a 502 (or
    the given 5xx, e.g. 504 for silence) whose message starts with its name."""
    return brokenAnswer(why, status).naming(upstream)


def brokenAnswer(why: str, status: int = 502) -> ProxyError:
    """An answer the translator cannot use (not an object, no choices, cut short):
    a 502; whoever knows which upstream sent it names it (`ProxyError.naming`)."""
    return ProxyError(status, why, "api_error")


def errorBody(errorType: str, message: str, requestId: str | None = None) -> dict[str, Any]:
    """The Anthropic error envelope."""
    body: dict[str, Any] = {"type": "error", "error": {"type": errorType, "message": message}}
    if requestId is not None:
        body["request_id"] = requestId
    return body


def upstreamError(
    upstream: str, status: int, body: bytes, headers: Mapping[str, str] | None = None
) -> ProxyError:
    """Translate an upstream's non-2xx answer, keeping its status and its own words.

    `retry-after` is passed on so that Claude Code's backoff follows the gateway's.
    """
    passOn = {}
    if headers:
        retryAfter = headers.get("retry-after")
        if retryAfter and _RETRY_AFTER.fullmatch(retryAfter.strip()):
            passOn["retry-after"] = retryAfter.strip()
    message = extractMessage(body) or f"HTTP {status} with an empty body"
    clientStatus = status if 400 <= status <= 599 else 502
    return ProxyError(
        clientStatus,
        f"{upstream}: {message}",
        headers=passOn,
        upstream=upstream,
        upstreamStatus=status,
    )


_ERROR_TYPE = re.compile(r"[a-z_]{1,64}")


def anthropicError(
    data: Any, status: int, upstream: str | None = None, upstreamStatus: int | None = None
) -> ProxyError | None:
    """An Anthropic error envelope (`{"type": "error", "error": {"type", "message"}}`,
    from an upstream that speaks the Messages API) kept as it is: its own type and
    words, with `status`; None for any other shape."""
    if not isinstance(data, dict) or data.get("type") != "error":
        return None
    error = data.get("error")
    if not isinstance(error, dict):
        return None
    errorType, message = error.get("type"), error.get("message")
    if not isinstance(errorType, str) or not _ERROR_TYPE.fullmatch(errorType):
        return None
    text = message if isinstance(message, str) and message else errorType
    if len(text) > _MAX_MESSAGE:
        text = text[:_MAX_MESSAGE] + "…"
    return ProxyError(
        status, text, errorType, upstream=upstream, upstreamStatus=upstreamStatus, verbatim=True
    )


def messagesUpstreamError(
    upstream: str, status: int, body: bytes, headers: Mapping[str, str] | None = None
) -> ProxyError:
    """A non-2xx answer of an upstream speaking the Messages API: its status, and its
    body's type and words where that is an Anthropic envelope; else as any other
    upstream's (`upstreamError`)."""
    error = upstreamError(upstream, status, body, headers)
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return error
    kept = anthropicError(data, error.status, upstream, status)
    if kept is None:
        return error
    kept.headers = error.headers
    return kept


def statusInBody(data: Any) -> int:
    """The HTTP status an error object sent with a 2xx (or inside a stream) claims in
    its `code`, when that is one (vLLM, llama.cpp, OpenRouter put it there); else 502."""
    error = data.get("error") if isinstance(data, dict) else None
    code = error.get("code") if isinstance(error, dict) else None
    if isinstance(code, str) and code.isdigit():
        code = int(code)
    return code if isinstance(code, int) and 400 <= code <= 599 else 502


_RETRY_AFTER = re.compile(r"\d{1,6}(\.\d+)?|[A-Za-z]{3}, \d{2} [A-Za-z]{3} \d{4} [\d:]{8} GMT")
_TAG = re.compile(r"<[^>]*>")
_TITLE = re.compile(r"<title[^>]*>(.*?)</title>", re.IGNORECASE | re.DOTALL)
_SPACE = re.compile(r"\s+")


def extractMessage(body: bytes) -> str:
    """Find the human-readable message in an error body of any shape.

    Real gateways send `{"error": {"message": …}}`, `{"error": "…"}`, top-level
    `message` or `detail`, a JSON array (Gemini), plain text, or an HTML page from a
    load balancer; the message is always one readable line.
    """
    text = body.decode("utf-8", "replace").strip()
    if not text:
        return ""
    try:
        found = _messageFromJSON(orjson.loads(body))
    except orjson.JSONDecodeError:
        found = None
    if found is None:
        found = _messageFromText(text)
    found = _SPACE.sub(" ", found).strip()
    if len(found) > _MAX_MESSAGE:
        found = found[:_MAX_MESSAGE] + "…"
    return found


def _messageFromJSON(value: Any, depth: int = 0) -> str | None:
    if depth > 4:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return _messageFromJSON(value[0], depth + 1) if value else None
    if not isinstance(value, dict):
        return None
    for key in ("error", "message", "detail", "msg", "error_message"):
        if key in value and value[key] not in (None, "", {}, []):
            inner = _messageFromJSON(value[key], depth + 1)
            if inner:
                return inner
    if value and depth == 0:  # an unknown shape: better its JSON than nothing
        return orjson.dumps(value).decode()
    return None


def _messageFromText(text: str) -> str:
    if "<" in text and ">" in text:
        title = _TITLE.search(text)
        if title:
            return html.unescape(_TAG.sub("", title.group(1)))
        return html.unescape(_TAG.sub(" ", text))
    return text


# -- keeping secrets in --------------------------------------------------------------

REDACTED = "[redacted]"
MIN_SECRET_CHARS = 8
"""A configured value shorter than this is not redacted by value: it would also
erase ordinary words ("long" from "prompt is too long"), and a key that short is
no secret anyway. Key-shaped values are redacted whatever their length."""

Redact = Callable[[str], str]

_SHAPED = (
    r"(?P<scheme>(?i:\bbearer)\s+)[A-Za-z0-9._~+/=-]+"  # an Authorization value
    r"|(?<![A-Za-z0-9_-])sk-[A-Za-z0-9_-]{8,}"  # OpenAI-style keys: sk-, sk-proj-, sk-ant-
    r"|\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*"  # a JWT (Entra, OIDC)
)
_SECRET_HEADER = re.compile(
    r"auth|key|token|secret|passw|cookie|credential|signature|session", re.IGNORECASE
)
_RANDOM = re.compile(r"(?=\S*[A-Za-z])(?=\S*\d)\S{16,}")


def headerSecrets(name: str, value: str) -> list[str]:
    """The secrets in one configured upstream header: its whole value and the
    credential after a scheme (`Bearer …`), when its name says it holds one
    (`Authorization`, `X-Api-Key`, `Ocp-Apim-Subscription-Key`, …) or the value
    looks random (16 or more characters, letters and digits, no space)."""
    value = value.strip()
    credential = value.partition(" ")[2].strip()
    found = []
    if _SECRET_HEADER.search(name) or _RANDOM.fullmatch(value):
        found.append(value)
    if credential and (found or _RANDOM.fullmatch(credential)):
        found.append(credential)
    return found


@frozen
class Redactor:
    """Takes secrets out of text that leaves the proxy: an error message to a
    client, an access event or a payload in a log.

    Built once per config from every secret it holds; each use may add the
    caller's own key (forwarded to an upstream without a key of its own).
    """

    secrets: frozenset[str] = field(converter=frozenset, repr=False)
    _pattern: re.Pattern[str] = field(init=False, repr=False, eq=False)

    def __attrs_post_init__(self) -> None:
        literal = sorted((s for s in self.secrets if len(s) >= MIN_SECRET_CHARS), key=len)
        # The longest first, so that a secret holding another goes whole.
        alternatives = [re.escape(s) for s in reversed(literal)] + [_SHAPED]
        object.__setattr__(self, "_pattern", re.compile("|".join(alternatives)))

    @classmethod
    def of(cls, secrets: Iterable[str | None]) -> Redactor:
        return cls(frozenset(s for s in secrets if s))

    def redact(self, text: str, *extra: str | None) -> str:
        """`text` with every secret, every key-shaped value and each of `extra` as
        `[redacted]`."""
        for secret in extra:
            if secret and len(secret) >= MIN_SECRET_CHARS and secret in text:
                text = text.replace(secret, REDACTED)
        return self._pattern.sub(_redacted, text)


KEY_SHAPES = Redactor(frozenset())
"""A redactor knowing no config: key-shaped values only (where none is given)."""


def _redacted(match: re.Match[str]) -> str:
    scheme = match.group("scheme")
    return scheme + REDACTED if scheme else REDACTED
