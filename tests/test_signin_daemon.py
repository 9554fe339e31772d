"""`/login` on a real `twistd ccproxy`: `python -m ccproxy approve CODE` on its
Unix socket signs the account running it in (SO_PEERCRED, `clients[].unix_user`),
the token works, a restart keeps it, and an account that is no client's
`unix_user` is refused."""

from __future__ import annotations

import json
import os
import pwd
import stat
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from tests.support.processes import checkoutEnvironment
from tests.support.realdaemon import UNREACHABLE, Daemon, daemonsFixture, startDaemon

__all__ = ["daemonsFixture"]

ME = pwd.getpwuid(os.getuid()).pw_name


def config(home: Path, user: str) -> str:
    return (
        UNREACHABLE
        + f"""
clients:
  - {{name: alice, key: alice-key, unix_user: "{user}"}}
ledger: "sqlite:///{home}/ccproxy.db"
login: {{approve_socket: "{home}/approve.sock"}}
"""
    )


def post(daemon: Daemon, path: str, fields: dict[str, str]) -> tuple[int, Any]:
    request = urllib.request.Request(
        daemon.base + path,
        data=urlencode(fields).encode(),
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def models(daemon: Daemon, token: str) -> int:
    request = urllib.request.Request(
        daemon.base + "/v1/models", headers={"authorization": f"Bearer {token}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as e:
        return e.code


def approve(home: Path, code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ccproxy", "approve", code, "--config", str(home / "ccproxy.yaml")],
        capture_output=True,
        text=True,
        timeout=30,
        env=checkoutEnvironment(),
    )


def test_approve_on_the_socket_signs_the_unix_user_in(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    daemon = startDaemon(tmp_path, config(tmp_path, ME))
    daemons.append(daemon)
    sock = tmp_path / "approve.sock"
    assert stat.S_IMODE(sock.stat().st_mode) == 0o666
    status, device = post(daemon, "/oauth/device_authorization", {"surface": "claude_code"})
    assert status == 200
    grant = {"grant_type": "urn:ietf:params:oauth:grant-type:device_code"}
    grant["device_code"] = device["device_code"]
    assert post(daemon, "/oauth/token", grant) == (
        400,
        {
            "error": "authorization_pending",
            "error_description": "the code has not been approved yet",
        },
    )
    done = approve(tmp_path, device["user_code"].lower())
    assert done.returncode == 0, done.stderr
    assert "signed in as alice" in done.stdout
    again = approve(tmp_path, device["user_code"])
    assert again.returncode == 1 and "already" in again.stderr
    status, tokens = post(daemon, "/oauth/token", grant)
    assert status == 200, tokens
    assert models(daemon, tokens["access_token"]) == 200
    assert daemon.stop() == 0
    assert not sock.exists()  # removed on stop
    # a restart keeps the sign-in
    second = startDaemon(tmp_path, config(tmp_path, ME))
    daemons.append(second)
    assert models(second, tokens["access_token"]) == 200
    log = (tmp_path / "stdout").read_text()
    assert tokens["access_token"] not in log and device["device_code"] not in log


def test_an_account_that_is_no_clients_unix_user_is_refused(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    daemons.append(startDaemon(tmp_path, config(tmp_path, "somebody-else")))
    _status, device = post(daemons[0], "/oauth/device_authorization", {})
    refused = approve(tmp_path, device["user_code"])
    assert refused.returncode == 1
    assert f"the Unix user {ME!r} is no client's unix_user" in refused.stderr


def test_with_workers_the_first_worker_holds_the_approve_socket(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    """`workers: 2`: one approve socket (a second process binding it would refuse to
    start), and a sign-in approved there is good on whichever worker answers."""
    daemon = startDaemon(tmp_path, config(tmp_path, ME) + "workers: 2\n")
    daemons.append(daemon)
    status, device = post(daemon, "/oauth/device_authorization", {"surface": "claude_code"})
    assert status == 200
    done = approve(tmp_path, device["user_code"])
    assert done.returncode == 0, done.stderr
    grant = {"grant_type": "urn:ietf:params:oauth:grant-type:device_code"}
    status, tokens = post(daemon, "/oauth/token", {**grant, "device_code": device["device_code"]})
    assert status == 200, tokens
    # new connections: the kernel hands them to both workers over a few tries
    assert all(models(daemon, tokens["access_token"]) == 200 for _ in range(8))
    log = (tmp_path / "stdout").read_text()
    assert "worker 1 started" in log and "worker 2 started" in log
    assert "CannotListenError" not in log and "Cannot acquire lock" not in log
    assert log.count("worker 1 started") == 1 and log.count("worker 2 started") == 1
    assert daemon.stop() == 0
    assert not (tmp_path / "approve.sock").exists()
