"""Signing Claude Code in with `/login` (the gateway protocol's device flow), and
the managed settings a signed-in client reads: `login:` and `managed_settings:`
in the YAML, `clients[].unix_user` and `clients[].managed_settings`.

The checksum of a settings document is Claude Code's: `sha256:` and the hex
SHA-256 of its JSON with the keys sorted at every level and no whitespace (what
it sends back in `If-None-Match` and `x-claude-code-managed-settings-checksum`).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

from attrs import evolve, frozen

from ccproxy.config.claudesettings import (
    AUTO_COMPACT_WINDOW,
    HAIKU_MODEL,
    OPUS_MODEL,
    SONNET_MODEL,
)
from ccproxy.config.routing import ModelRouter
from ccproxy.config.schema import (
    ConfigError,
    Node,
    boolean,
    positiveInt,
    positiveNumber,
    string,
)

ACCESS_TOKEN_SECONDS = 8 * 3600.0
"""A working day: Claude Code refreshes it by itself before it runs out."""
REFRESH_TOKEN_SECONDS = 30 * 86400.0
"""How long a sign-in lasts without use; each refresh starts it again."""
DEVICE_CODE_SECONDS = 600.0
POLL_INTERVAL = 5
PAGE_ATTEMPTS_PER_MINUTE = 10
"""Codes one address may try on the verification page per minute (RFC 8628 §5.1)."""
MAX_NOTICE_CHARS = 500
COMPACT_WINDOW_MINIMUM = 100_000
"""The smallest compaction window Claude Code takes (a smaller one reads as this)."""
FAMILY_SLOTS = (("opus", OPUS_MODEL), ("sonnet", SONNET_MODEL), ("haiku", HAIKU_MODEL))
"""Claude Code's model slots, by the family word a model name holds."""
ASKED_NAMES = {
    "opus": "claude-opus-5-5",
    "sonnet": "claude-sonnet-5-5",
    "haiku": "claude-haiku-5-5",
}
"""What Claude Code 2.1.330 sends for each slot when nothing points it elsewhere."""


@frozen
class LoginSettings:
    """`login:`: the device sign-in and the tokens it hands out."""

    enabled: bool = True
    """`login: off` turns the OAuth endpoints off (they answer 404)."""
    accessTokenSeconds: float = ACCESS_TOKEN_SECONDS
    refreshTokenSeconds: float = REFRESH_TOKEN_SECONDS
    deviceCodeSeconds: float = DEVICE_CODE_SECONDS
    interval: int = POLL_INTERVAL
    loginNotice: str | None = None
    """Shown by Claude Code next to the code on its sign-in screen."""
    approveSocket: str | None = None
    """The Unix socket `python -m ccproxy approve CODE` talks to (None: none)."""
    pageAttemptsPerMinute: int = PAGE_ATTEMPTS_PER_MINUTE
    publicURL: str | None = None
    """The gateway's URL as users reach it (behind a reverse proxy); None: the
    scheme and `Host` each request came with."""


TELEMETRY_IN_FLIGHT = 8
TELEMETRY_TIMEOUT = 10.0


@frozen
class TelemetrySettings:
    """`telemetry:`: where Claude Code's OTLP/HTTP exports go (None: dropped)."""

    forward: str | None = None
    """An OTLP/HTTP collector's base URL; each signal goes to `{forward}/v1/{signal}`."""
    maxInFlight: int = TELEMETRY_IN_FLIGHT
    """Exports being forwarded at once; past it, new ones are dropped."""
    timeout: float = TELEMETRY_TIMEOUT


def parseTelemetry(value: Any, path: str) -> TelemetrySettings:
    node = Node(value, path)
    settings = TelemetrySettings(
        forward=node.get("forward", _collectorURL, None),
        maxInFlight=node.get("max_in_flight", positiveInt, TELEMETRY_IN_FLIGHT),
        timeout=node.get("timeout", positiveNumber, TELEMETRY_TIMEOUT),
    )
    node.finish()
    return settings


def _collectorURL(value: Any, path: str) -> str:
    return baseURL(value, path).removesuffix("/v1")


def baseURL(value: Any, path: str) -> str:
    """An http(s) URL with no query and no credentials, without a trailing slash."""
    url = string(value, path).strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query:
        raise ConfigError(path, "must be an http(s) URL without a query (https://gw.example.com)")
    if "@" in parts.netloc:
        raise ConfigError(path, "holds credentials (user:pass@): not supported")
    return url


def parseLogin(value: Any, path: str) -> LoginSettings:
    """`login:`: off, or a mapping of the settings above."""
    if value is False or (isinstance(value, str) and value.strip().lower() == "off"):
        return LoginSettings(enabled=False)
    node = Node(value, path)
    default = LoginSettings()
    settings = LoginSettings(
        enabled=node.get("enabled", boolean, True),
        accessTokenSeconds=node.get(
            "access_token_lifetime", positiveNumber, default.accessTokenSeconds
        ),
        refreshTokenSeconds=node.get(
            "refresh_token_lifetime", positiveNumber, default.refreshTokenSeconds
        ),
        deviceCodeSeconds=node.get(
            "device_code_lifetime", positiveNumber, default.deviceCodeSeconds
        ),
        interval=node.get("poll_interval", positiveInt, default.interval),
        loginNotice=node.get("login_notice", _notice, None),
        approveSocket=node.get("approve_socket", string, None),
        pageAttemptsPerMinute=node.get(
            "page_attempts_per_minute", positiveInt, default.pageAttemptsPerMinute
        ),
        publicURL=node.get("public_url", baseURL, None),
    )
    node.finish()
    if settings.refreshTokenSeconds < settings.accessTokenSeconds:
        raise ConfigError(f"{path}.refresh_token_lifetime", "is shorter than access_token_lifetime")
    if settings.approveSocket is not None:
        # Absolute now: twistd changes directory when it daemonizes.
        return evolve(settings, approveSocket=os.path.abspath(settings.approveSocket))
    return settings


def _notice(value: Any, path: str) -> str:
    text = string(value, path)
    if len(text) > MAX_NOTICE_CHARS:
        raise ConfigError(path, f"is over {MAX_NOTICE_CHARS} characters")
    return text


def parseSettings(value: Any, path: str) -> Mapping[str, Any]:
    """A Claude Code `managed-settings.json` document, as YAML: a mapping whose
    values JSON can hold (checked here, so the checksum never fails later)."""
    if not isinstance(value, dict):
        raise ConfigError(path, "must be a mapping (Claude Code's managed-settings.json keys)")
    _checkJSON(value, path)
    return value


def _checkJSON(value: Any, path: str) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ConfigError(f"{path}.{key}", "keys must be strings")
            _checkJSON(item, f"{path}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _checkJSON(item, f"{path}.{i}")
    elif isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(path, "infinity and NaN cannot be written in JSON")
    elif value is not None and not isinstance(value, str | int | float | bool):
        raise ConfigError(path, f"a {type(value).__name__} cannot be written in JSON")


def canonicalJSON(settings: Mapping[str, Any]) -> bytes:
    """Keys sorted at every level, no whitespace, UTF-8 as it is (JavaScript's
    `JSON.stringify` escapes nothing beyond ASCII), numbers as JavaScript writes
    them (`1`, not `1.0`; `0.00001`, `1.5e-7`): the bytes Claude Code hashes."""
    parts: list[str] = []
    _writeJSON(settings, parts)
    return "".join(parts).encode()


def _writeJSON(value: Any, parts: list[str]) -> None:
    if isinstance(value, Mapping):
        parts.append("{")
        for n, key in enumerate(sorted(value)):
            parts.append(("," if n else "") + json.dumps(str(key), ensure_ascii=False) + ":")
            _writeJSON(value[key], parts)
        parts.append("}")
    elif isinstance(value, list | tuple):
        parts.append("[")
        for n, item in enumerate(value):
            if n:
                parts.append(",")
            _writeJSON(item, parts)
        parts.append("]")
    elif isinstance(value, float):
        parts.append(jsNumber(value))
    else:  # strings, ints, booleans, null: Python's text is JavaScript's
        parts.append(json.dumps(value, ensure_ascii=False))


def jsNumber(value: float) -> str:
    """A float as JavaScript's `Number.prototype.toString` writes it: the shortest
    digits that read back (Python's `repr` finds the same), positional from 1e-6
    up to 1e21, else `1.5e-7` / `1e+21` (no padded exponent)."""
    if not math.isfinite(value):
        return "null"
    if value == 0:
        return "0"
    shortest = repr(value)
    if 1e-6 <= abs(value) < 1e21:
        return format(Decimal(shortest).normalize(), "f")
    mantissa, _, exponent = shortest.partition("e")
    power = int(exponent)
    return f"{mantissa}e{'+' if power >= 0 else '-'}{abs(power)}"


def settingsChecksum(settings: Mapping[str, Any]) -> str:
    """`sha256:` + hex SHA-256 of `canonicalJSON(settings)`."""
    return "sha256:" + hashlib.sha256(canonicalJSON(settings)).hexdigest()


def merged(base: Mapping[str, Any], own: Mapping[str, Any]) -> dict[str, Any]:
    """`own` over `base`: mappings merge key by key (so a client adds to the base
    `env` rather than replacing it), anything else of `own` wins."""
    result = dict(base)
    for key, value in own.items():
        if isinstance(value, Mapping) and isinstance(result.get(key), Mapping):
            result[key] = merged(result[key], value)
        else:
            result[key] = value
    return result


def defaultSettings(router: ModelRouter) -> dict[str, Any]:
    """What an admin who wrote no `managed_settings:` gets: each of Claude Code's
    model slots pointed at a model name the routes serve exactly (when one holds
    the slot's family word), and the compaction window at the smallest
    `context_window` of the routes those slots take. Empty when the routes say
    nothing of either."""
    env: dict[str, str] = {}
    names = router.exactNames()
    windows = []
    for family, variable in FAMILY_SLOTS:
        served = next((n for n in names if family in n.lower()), None)
        if served is not None:
            env[variable] = served
        route = router.find(served or ASKED_NAMES[family])
        if family != "haiku" and route is not None and route.contextWindow is not None:
            windows.append(route.contextWindow)
    if windows:
        env[AUTO_COMPACT_WINDOW] = str(max(COMPACT_WINDOW_MINIMUM, min(windows)))
    return {"env": env} if env else {}


def settingsFor(
    base: Mapping[str, Any] | None,
    isDefault: bool,
    router: ModelRouter,
    own: Mapping[str, Any] | None,
) -> dict[str, Any] | None:
    """A client's managed settings: `managed_settings:` (or, where none was
    written, `defaultSettings`) with the client's own merged over it; None when
    there is no policy for it at all (404)."""
    if isDefault:
        base = defaultSettings(router) or None
    if base is None and own is None:
        return None
    return merged(base or {}, own or {})
