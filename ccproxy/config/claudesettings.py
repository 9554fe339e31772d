"""Claude Code's own settings: `~/.claude/settings.json` and the variables it sets.

Claude Code takes `ANTHROPIC_BASE_URL`, its keys and model names from the `env`
block of settings.json before the shell, silently. Both the daemon (a start-up
warning about its own user) and the doctor read it, so the reading lives here,
below both. Key values are never shown: at most their first 4 characters.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from attrs import frozen

OK = "ok"
WARNING = "warning"
PROBLEM = "problem"

BASE_URL = "ANTHROPIC_BASE_URL"
AUTH_TOKEN = "ANTHROPIC_AUTH_TOKEN"
API_KEY = "ANTHROPIC_API_KEY"
MODEL = "ANTHROPIC_MODEL"
SMALL_FAST_MODEL = "ANTHROPIC_SMALL_FAST_MODEL"
OPUS_MODEL = "ANTHROPIC_DEFAULT_OPUS_MODEL"
SONNET_MODEL = "ANTHROPIC_DEFAULT_SONNET_MODEL"
HAIKU_MODEL = "ANTHROPIC_DEFAULT_HAIKU_MODEL"
MODEL_VARIABLES = (MODEL, SMALL_FAST_MODEL, OPUS_MODEL, SONNET_MODEL, HAIKU_MODEL)
KEY_VARIABLES = (AUTH_TOKEN, API_KEY)
HTTP_PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy")
NO_PROXY_VARIABLES = ("NO_PROXY", "no_proxy")
MAX_OUTPUT_TOKENS = "CLAUDE_CODE_MAX_OUTPUT_TOKENS"
AUTO_COMPACT_WINDOW = "CLAUDE_CODE_AUTO_COMPACT_WINDOW"
MAX_CONTEXT_TOKENS = "CLAUDE_CODE_MAX_CONTEXT_TOKENS"
LIMIT_VARIABLES = (MAX_OUTPUT_TOKENS, AUTO_COMPACT_WINDOW, MAX_CONTEXT_TOKENS)
"""What Claude Code (2.1.330) believes of a model's limits, where a route's differ."""
VARIABLES = (
    BASE_URL,
    *KEY_VARIABLES,
    *MODEL_VARIABLES,
    *HTTP_PROXY_VARIABLES,
    *NO_PROXY_VARIABLES,
    *LIMIT_VARIABLES,
)
"""The variables that decide whether Claude Code reaches the proxy, and how much it
sends and asks for; Claude Code reads them from the shell and settings.json."""
_SHOWN = frozenset((BASE_URL, *MODEL_VARIABLES, *NO_PROXY_VARIABLES, *LIMIT_VARIABLES))
"""Variables whose values are not secrets and help the user when shown."""


@frozen
class Finding:
    """One line of advice: a verdict, what was found, and how to fix it (the doctor
    prints them all; the daemon logs those about settings.json at start-up)."""

    level: str
    what: str
    fix: str = ""

    def line(self) -> str:
        return f"{self.level:<8} {self.what}" + (f"  -> fix: {self.fix}" if self.fix else "")


# -- showing values without leaking them ---------------------------------------------


def mask(value: str) -> str:
    """A key as it may be shown: enough to tell two keys apart, never enough to use."""
    if not value:
        return "empty"
    if len(value) >= 12:
        return value[:4] + "…"
    return "set (hidden)"


def show(name: str, value: str) -> str:
    if name in _SHOWN:
        return repr(displayURL(value) if name == BASE_URL else value)
    return mask(value)


def displayURL(url: str) -> str:
    """A URL without user:password and query values, which may hold credentials."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "(not a URL)"
    if not parts.scheme or not parts.hostname:
        return url if "@" not in url and "?" not in url else "(not a URL)"
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    netloc = host + (f":{port}" if port is not None else "")
    return f"{parts.scheme}://{netloc}{parts.path}" + ("?…" if parts.query else "")


# -- settings.json and the environment -------------------------------------------------


def defaultSettingsPath(environ: Mapping[str, str]) -> str:
    """Where Claude Code reads the user's settings (CLAUDE_CONFIG_DIR moves ~/.claude)."""
    directory = environ.get("CLAUDE_CONFIG_DIR") or os.path.join(
        environ.get("HOME") or os.path.expanduser("~"), ".claude"
    )
    return os.path.join(directory, "settings.json")


def settingsEnv(
    document: Any, where: str = "settings.json"
) -> tuple[dict[str, str], list[Finding]]:
    """The `env` object of a parsed settings.json: the variables Claude Code sets from it."""
    if document is None:
        return {}, []
    if not isinstance(document, dict):
        return {}, [Finding(WARNING, f"{where} is not a JSON object", 'make it {"env": {…}}')]
    env = document.get("env")
    if env is None:
        return {}, []
    if not isinstance(env, dict):
        return {}, [
            Finding(WARNING, f'{where}: "env" is not an object', 'make it {"NAME": "value"}')
        ]
    values: dict[str, str] = {}
    findings = []
    for name, value in env.items():
        if isinstance(value, str):
            values[name] = value
        elif name in VARIABLES:
            findings.append(
                Finding(
                    WARNING,
                    f"{where}: env.{name} is not a string; Claude Code may ignore it",
                    "put the value in double quotes",
                )
            )
    return values, findings


def overrideFindings(
    settings: Mapping[str, str], environ: Mapping[str, str], where: str = "settings.json"
) -> list[Finding]:
    """Variables the shell exports that settings.json silently replaces."""
    findings = []
    for name, value in settings.items():
        shell = environ.get(name)
        if shell is None or shell == value:
            continue
        if name in _SHOWN:
            said = f"sets {show(name, value)} but your shell has {show(name, shell)}"
        else:
            said = f"sets another value ({mask(value)}) than your shell ({mask(shell)})"
        findings.append(
            Finding(
                WARNING,
                f"{name}: {where} {said}; Claude Code uses the settings.json value",
                f'remove {name} from the "env" block of {where}, or set the value you want there',
            )
        )
    return findings


def readSettings(path: str) -> tuple[Any, list[Finding]]:
    """The parsed settings.json (None when absent), and why it could not be read."""
    try:
        with open(path, "rb") as f:
            text = f.read()
    except FileNotFoundError:
        return None, [Finding(OK, f"no {path}: nothing overrides your shell")]
    except OSError as e:
        return None, [Finding(WARNING, f"cannot read {path} ({e.strerror})", "")]
    if not text.strip():
        return {}, []
    try:
        return json.loads(text), []
    except ValueError as e:
        where = f" (line {e.lineno})" if isinstance(e, json.JSONDecodeError) else ""
        return None, [
            Finding(
                WARNING,
                f"{path} is not valid JSON{where}: Claude Code cannot use its settings",
                "fix the JSON",
            )
        ]


def settingsWarnings(
    settingsPath: str | os.PathLike[str], environ: Mapping[str, str]
) -> list[Finding]:
    """For the daemon's start-up log: where settings.json overrides its user's shell."""
    path = os.fspath(settingsPath)
    document, findings = readSettings(path)
    settings, more = settingsEnv(document, path)
    return [f for f in findings + more + overrideFindings(settings, environ, path) if f.level != OK]
