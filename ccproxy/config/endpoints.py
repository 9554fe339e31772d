"""Twisted endpoint descriptions (`tcp:8000:interface=127.0.0.1`): the one place
that reads them, for validation, the open-port rule, the accept queue and
`reuse_port`. Parsing only; nothing here binds a port.
"""

from __future__ import annotations

import re
import socket
from typing import Any

from twisted.internet.endpoints import serverFromString

from ccproxy.config.schema import ConfigError, string

LISTEN_BACKLOG = 1024


def withBacklog(listen: str) -> str:
    """A TCP listen description with a deep accept queue unless it sets its own.

    Twisted's default of 50 drops connections when a team's sessions reconnect at
    once (a thousand new streams in a few seconds), and a dropped SYN costs the
    client a second or more before it retries.
    """
    kind, _, rest = listen.partition(":")
    if kind not in ("tcp", "tcp6", "ssl") or "backlog=" in rest:
        return listen
    positional = [a for a in rest.split(":") if "=" not in a]
    if len(positional) > 1:  # tcp:PORT:BACKLOG[:INTERFACE]
        return listen
    return f"{listen}:backlog={LISTEN_BACKLOG}"


def reusePortProblem(listen: str) -> str | None:
    """Why `reuse_port` cannot serve this listen description (None: it can)."""
    if not hasattr(socket, "SO_REUSEPORT"):
        return "this system has no SO_REUSEPORT"
    if tcpAddress(listen) is None:
        return 'needs a plain tcp listen such as "tcp:8000:interface=127.0.0.1"'
    return None


def tcpAddress(listen: str) -> tuple[int, str, int] | None:
    """(port, interface, backlog) of a `tcp:` description, None for other kinds."""
    kind, *args = listen.replace("\\:", "\x00").split(":")
    if kind not in ("tcp", "tcp6") or not args or not args[0].isdigit():
        return None
    interface, backlog = "", LISTEN_BACKLOG
    for arg in args[1:]:
        name, _, value = arg.partition("=")
        if name == "interface":
            interface = value.replace("\x00", ":")
        elif name == "backlog" and value.isdigit():
            backlog = int(value)
        elif not _:
            return None  # positional forms: keep to the plain one
    return int(args[0]), interface, backlog


def endpoint(value: Any, path: str) -> str:
    """A Twisted server endpoint description, checked by parsing it (no I/O)."""
    listen = string(value, path)
    try:
        serverFromString(None, listen)
    except (ValueError, TypeError, KeyError, IndexError) as e:
        raise ConfigError(path, f"not a valid endpoint {listen!r} ({e})") from None
    return listen


def listenIsLocal(listen: str) -> bool:
    """Whether an endpoint description only listens on loopback (or a unix socket)."""
    kind, *args = _UNESCAPED_COLON.split(listen)
    if kind in ("unix", "systemd"):
        return True
    interface = None
    positional = [a for a in args if "=" not in a]
    if kind in ("tcp", "tcp6", "ssl") and len(positional) >= 3:
        interface = positional[2]  # tcp:PORT:BACKLOG:INTERFACE
    for arg in args:
        name, _, value = arg.partition("=")
        if name == "interface":
            interface = value
    if interface is None:
        return False
    interface = interface.replace("\\:", ":").strip("[]")
    return interface in ("localhost", "::1") or interface.startswith("127.")


_UNESCAPED_COLON = re.compile(r"(?<!\\):")
