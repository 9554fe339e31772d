"""A real PostgreSQL server for the tests: `initdb` in a temporary directory,
`pg_ctl` on a free 127.0.0.1 port, stopped (and its directory removed) after.

The server binaries are Debian's (`postgresql-15`: /usr/lib/postgresql/15/bin),
which .ci/run installs when they are missing; without them the tests that need a
server are skipped, saying why (they fail in CI, where `CI` is set). PostgreSQL
refuses to run as root, so as root (CI) the server runs as the `postgres` user
that the Debian package creates.
Every wait is bounded (`pg_ctl -w -t`).
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from attrs import define

from tests.support.processes import freePort

PREFERRED = "15"
"""The major version taken when several are installed (what .ci/run installs)."""
USER = "ccproxy"
"""The database superuser the server is made with (trust authentication, loopback only)."""


def binaries() -> Path | None:
    """The directory holding initdb and pg_ctl, if the server is installed."""
    preferred = Path(f"/usr/lib/postgresql/{PREFERRED}/bin")
    if (preferred / "initdb").exists():
        return preferred
    others = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if others:
        return others[-1].parent
    found = shutil.which("initdb")
    return Path(found).parent if found else None


@define
class PostgresServer:
    """One PostgreSQL cluster of the test's own."""

    bin: Path
    home: Path
    port: int
    runAs: str | None
    """The OS user it runs as (when the tests run as root), else None."""

    @property
    def data(self) -> Path:
        return self.home / "data"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{database}"

    def _run(self, *command: str, timeout: float = 60) -> None:
        result = subprocess.run(
            [str(self.bin / command[0]), *command[1:]],
            user=self.runAs,
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, "LC_ALL": "C", "TZ": "UTC"},
        )
        if result.returncode != 0:
            log = self.home / "server.log"
            tail = log.read_text()[-3000:] if log.exists() else ""
            raise AssertionError(
                f"{' '.join(command)} failed ({result.returncode}):\n"
                f"{result.stdout}{result.stderr}\n{tail}"
            )

    def initialize(self) -> None:
        self._run(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            USER,
            "--auth=trust",
            "--encoding=UTF8",
            "--no-sync",
        )

    def start(self) -> None:
        """Start it and wait until it accepts connections (at most 30 s)."""
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.home} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        self._run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-l",
            str(self.home / "server.log"),
            "-o",
            options,
            "-w",
            "-t",
            "30",
            "start",
        )

    def stop(self) -> None:
        """Stop it now (`-m fast`: open connections are cut, as in an outage)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "30", "stop")

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def createDatabase(self, name: str) -> str:
        """A new, empty database; its URL."""
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


def startPostgres() -> PostgresServer:
    """A new cluster, started; skips the test when PostgreSQL is not installed."""
    directory = binaries()
    if directory is None:
        missing = "PostgreSQL is not installed (.ci/run installs postgresql-15)"
        if os.environ.get("CI"):
            pytest.fail(missing)  # in CI, a skip would hide a missing install step
        pytest.skip(missing)
    runAs = None
    home = Path(tempfile.mkdtemp(prefix="ccproxy-pg-"))
    if os.geteuid() == 0:
        runAs = "postgres"
        try:
            account = pwd.getpwnam(runAs)
        except KeyError:
            shutil.rmtree(home)
            pytest.skip("running as root, and there is no postgres user to run the server as")
        os.chown(home, account.pw_uid, account.pw_gid)
    server = PostgresServer(directory, home, freePort(), runAs)
    try:
        server.initialize()
        server.start()
    except BaseException:
        shutil.rmtree(home, ignore_errors=True)
        raise
    return server


@pytest.fixture(scope="module", name="postgres")
def postgresFixture() -> Iterator[PostgresServer]:
    """A PostgreSQL server for a test module (import this into it); each test makes
    its own database (`createDatabase`)."""
    server = startPostgres()
    try:
        yield server
    finally:
        try:
            if server.running():
                server.stop()
        finally:
            shutil.rmtree(server.home, ignore_errors=True)
