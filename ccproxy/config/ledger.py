"""Where the ledger lives: `ledger:` in the YAML, as a URL.

`sqlite:///ccproxy.db` (relative to the directory the daemon starts in) or
`sqlite:////var/lib/ccproxy/ccproxy.db` (absolute), as SQLAlchemy writes them;
`postgresql://user:password@host:5432/db` for a database several hosts share;
`off` for none. Absent, a SQLite file `ccproxy.db` in the directory the daemon
starts in, beside `twistd.log` and `twistd.pid`. A SQLite path is made absolute
here, when the config is read, because twistd changes directory when it
daemonizes.
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import unquote, urlsplit

from attrs import frozen

from ccproxy.config.schema import ConfigError

DEFAULT_FILE = "ccproxy.db"
SQLITE, POSTGRESQL = "sqlite", "postgresql"
_SCHEMES = {"sqlite": SQLITE, "postgresql": POSTGRESQL, "postgres": POSTGRESQL}


@frozen
class LedgerURL:
    """A ledger's database: a SQLite file, or a PostgreSQL connection URL."""

    kind: str
    """`sqlite` or `postgresql`."""
    target: str
    """The SQLite file's absolute path (or `:memory:`), or the PostgreSQL URL as
    written (libpq reads it, with its query string of connection options)."""

    @classmethod
    def sqlite(cls, path: str) -> LedgerURL:
        return cls(SQLITE, path if path == ":memory:" else os.path.abspath(path))

    def secrets(self) -> tuple[str, ...]:
        """A password written in a PostgreSQL URL, as written and decoded (secrets
        to keep out of logs)."""
        if self.kind != POSTGRESQL:
            return ()
        password = urlsplit(self.target).password
        return (password, unquote(password)) if password else ()

    def __str__(self) -> str:
        """The URL fit for a log line: a password written in it is masked."""
        if self.kind == SQLITE:
            return f"sqlite:///{self.target}"
        parts = urlsplit(self.target)
        if parts.password is None:
            return self.target
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
        return parts._replace(netloc=netloc).geturl()


def defaultLedger() -> LedgerURL:
    """`ccproxy.db` in the directory the daemon starts in."""
    return LedgerURL.sqlite(DEFAULT_FILE)


def parseLedger(value: Any, path: str) -> LedgerURL | None:
    """`ledger:`: a URL, or `off` (YAML also reads a bare off as false)."""
    if value is False or (isinstance(value, str) and value.strip().lower() == "off"):
        return None
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(path, 'must be "sqlite:///FILE", "postgresql://…" or off')
    url = value.strip()
    scheme, _, rest = url.partition(":")
    kind = _SCHEMES.get(scheme.lower())
    if kind is None or not rest.startswith("//"):
        raise ConfigError(path, 'must be "sqlite:///FILE", "postgresql://…" or off')
    if kind == POSTGRESQL:
        try:
            parts = urlsplit(url)
            parts.port, parts.password  # noqa: B018 (raise here for a bad port or host)
        except ValueError as e:
            raise ConfigError(path, f"not a valid URL ({e})") from None
        if parts.query and any(
            option.split("=", 1)[0] == "password" for option in parts.query.split("&")
        ):
            # Redaction knows a password in the userinfo, not one in the query.
            raise ConfigError(path, "put the password before the host (user:password@host)")
        return LedgerURL(POSTGRESQL, url)
    # sqlite:///relative/file, sqlite:////absolute/file, as SQLAlchemy reads them.
    if not rest.startswith("///") or len(rest) == 3:
        raise ConfigError(
            path,
            "a SQLite ledger is sqlite:///FILE (relative to where the daemon starts) "
            "or sqlite:////ABSOLUTE/FILE",
        )
    file = rest[3:].split("?", 1)[0]
    return LedgerURL.sqlite(file)


def ledgerProblem(ledger: LedgerURL | None) -> str | None:
    """Why the ledger cannot be opened, when that can be told before the daemon
    starts: a SQLite file in a directory that is missing or not writable, or
    PostgreSQL without its driver. (A database that is down is not a problem
    here: rows wait for it.)"""
    if ledger is None:
        return None
    if ledger.kind == POSTGRESQL:
        try:
            import psycopg  # noqa: F401
        except ImportError:
            return "a PostgreSQL ledger needs the psycopg package (pip install 'psycopg[binary]')"
        return None
    if ledger.target == ":memory:":
        return None
    directory = os.path.dirname(ledger.target)
    if not os.path.isdir(directory):
        return (
            f"the directory {directory} does not exist (an absolute path takes four "
            "slashes: sqlite:////var/lib/ccproxy/ccproxy.db)"
        )
    # SQLite writes its journal beside the file: the directory must be writable too.
    writable = os.access(directory, os.W_OK | os.X_OK)
    if writable and os.path.exists(ledger.target):
        writable = os.access(ledger.target, os.R_OK | os.W_OK)
    if not writable:
        return f"{ledger.target} cannot be written by this user"
    return None
