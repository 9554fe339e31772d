"""Twisted endpoint descriptions (`tcp:8000:interface=127.0.0.1`): the one place
that reads them, for validation, the open-port rule, the accept queue,
`reuse_port`, and the URL the proxy is reached at (`originOfListen`, which the
doctor compares with Claude Code's base URL). Parsing only; nothing here binds a
port.
"""

from __future__ import annotations

import socket
from typing import Any
from urllib.parse import urlsplit

from attrs import frozen
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
    kind, *args = _split(listen)
    if kind in ("unix", "systemd"):
        return True
    interface = _interface(args, positionalToo=kind in ("tcp", "tcp6", "ssl"))
    if interface is None:
        return False
    interface = interface.strip("[]")
    return interface in ("localhost", "::1") or interface.startswith("127.")


@frozen
class Origin:
    """Scheme, host and port: what Claude Code's base URL and the proxy must agree on."""

    scheme: str
    host: str | None
    """None: the proxy listens on every interface, so any host name of it will do."""
    port: int

    def url(self) -> str:
        """The URL to reach it at from this machine (loopback for "every interface")."""
        host = self.host or "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"{self.scheme}://{host}:{self.port}"

    def accepts(self, other: Origin) -> bool:
        return (
            self.scheme == other.scheme
            and self.port == other.port
            and (self.host is None or self.host == other.host)
        )


def originOf(url: str) -> Origin | None:
    """The origin of an http(s) URL, or None when it is not one."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    host = parts.hostname.lower()
    return Origin(
        parts.scheme,
        _LOOPBACK.get(host, host),
        port if port is not None else (443 if parts.scheme == "https" else 80),
    )


def originOfListen(listen: str) -> Origin | None:
    """Where a `tcp:`/`tcp6:`/`ssl:` listen description can be reached; None for others."""
    parts = _split(listen)
    kind = parts[0].lower()
    if kind.isdigit():  # the old "8000" form means tcp
        kind, parts = "tcp", ["tcp", *parts]
    if kind not in ("tcp", "tcp6", "ssl"):
        return None
    positional = [p for p in parts[1:] if "=" not in p]
    options = dict(p.split("=", 1) for p in parts[1:] if "=" in p)
    port = options.get("port") or (positional[0] if positional else "")
    if not port.isdigit():
        return None
    interface = (_interface(parts[1:]) or "").lower()
    host = None if interface in _WILDCARDS else _LOOPBACK.get(interface, interface)
    return Origin("https" if kind == "ssl" else "http", host, int(port))


_LOOPBACK = {"localhost": "127.0.0.1"}
_WILDCARDS = frozenset(("", "0.0.0.0", "::"))


def _split(description: str) -> list[str]:
    """A description split at unescaped colons, escapes removed, as Twisted reads it."""
    parts, current, escaped = [], [], False
    for char in description:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == ":":
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def _interface(args: list[str], positionalToo: bool = True) -> str | None:
    """The interface named by `interface=` (the last one wins), else by the third
    positional argument (`tcp:PORT:BACKLOG:INTERFACE`); None when neither names one."""
    interface = None
    positional = [a for a in args if "=" not in a]
    if positionalToo and len(positional) >= 3:
        interface = positional[2]
    for arg in args:
        name, _, value = arg.partition("=")
        if name == "interface":
            interface = value
    return interface
