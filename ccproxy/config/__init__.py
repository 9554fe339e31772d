"""The configuration: YAML (or the seed environment) in, frozen values out.

`model` holds the values every other layer reads; `load` reads and validates the
YAML; `schema` is the typed reader that names key paths in errors; `profile`,
`policy`, `routing`, `prices` and `ledger` (where the ledger lives) parse one
concern each, `periods` holds the UTC day and month; `endpoints` is the one reader of
Twisted endpoint descriptions; `seed` maps the original proxy's environment
variables onto the same YAML; `claudesettings` reads Claude Code's own
settings.json, for the daemon and the doctor both. Nothing here touches a reactor.
"""

from ccproxy.config.model import (
    DEFAULT_LISTEN,
    Client,
    Config,
    LogSettings,
    Upstream,
    keyDigest,
)
from ccproxy.config.schema import ConfigError

__all__ = [
    "DEFAULT_LISTEN",
    "Client",
    "Config",
    "ConfigError",
    "LogSettings",
    "Upstream",
    "keyDigest",
]
