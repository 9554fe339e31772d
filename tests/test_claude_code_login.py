"""The real Claude Code 2.1.330 signs in to ccproxy as to a Cloud gateway, then works
through the token it got: no key exported, no ANTHROPIC_BASE_URL.

Claude Code offers the gateway sign-in where settings name the gateway
(`forceLoginMethod: "gateway"`, `forceLoginGatewayUrl`; a user's own
settings.json does on a machine without managed settings). `/login` drives it
in the TUI; `claude auth login --gateway-json` drives the same sign-in state
machine for a program that answers its questions as JSON lines on stdin (what
the VS Code extension uses), which this test does: it accepts the gateway URL
and the loopback "certificate" (http on loopback has none), reads the user code
off the polling state, and approves it with `python -m ccproxy approve CODE` from
another process, as the user on the jump host would (their Unix account is the
client's `unix_user`). The interactive `/login`, typed into a tmux terminal, is
the test at the end.

Then `claude -p` runs a prompt through the gateway token (the access log names
the client, not a key), takes the managed settings (their
`ANTHROPIC_DEFAULT_SONNET_MODEL` decides the model name Claude Code sends for
`--model sonnet`), answers the second session's `If-None-Match` with a 304 (the
checksum Claude Code computed over the settings equals ccproxy's), and, for a
client near its budget, emits the usage notice (`rate_limit_event`,
`allowed_warning`, past 0.75).
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.processes import Processes, checkoutEnvironment, tail
from tests.test_claude_code import installClaudeCode, minimalEnv

MANAGED_MODEL = "claude-sonnet-managed-by-ccproxy"
ANSWER = "GATEWAY-SIGNED-IN SCRIPTED-END"
ME = pwd.getpwuid(os.getuid()).pw_name


def gatewayConfig(upstreamPort: int, home: Path) -> Any:
    return lambda port: (
        f"""
listen: "tcp:{port}:interface=127.0.0.1"
clients:
  - name: jump-host-user
    key: "{os.urandom(16).hex()}"
    unix_user: "{ME}"
    budget: {{tokens_per_day: 170}}
upstreams:
  scripted:
    url: "http://127.0.0.1:{upstreamPort}/v1"
    api_key: upstream-key
    timeout: 60
models:
  "*": scripted/scripted-model
ledger: "sqlite:///{home}/ccproxy.db"
login:
  approve_socket: "{home}/approve.sock"
  poll_interval: 1
  login_notice: "ccproxy on this jump host"
managed_settings:
  env:
    ANTHROPIC_DEFAULT_SONNET_MODEL: "{MANAGED_MODEL}"
"""
    )


def signIn(claude: Path, home: Path, workspace: Path, socket: Path) -> list[dict[str, Any]]:
    """`claude auth login --gateway-json`, every question answered yes, the code
    approved on the approve socket; the states it went through."""
    with subprocess.Popen(
        [str(claude), "auth", "login", "--gateway-json"],
        cwd=workspace,
        env=minimalEnv(home, CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1"),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    ) as process:
        return _answer(process, socket)


def _answer(process: subprocess.Popen[str], socket: Path) -> list[dict[str, Any]]:
    assert process.stdin is not None and process.stdout is not None
    states: list[dict[str, Any]] = []
    try:
        for line in process.stdout:
            question = json.loads(line)
            states.append(question)
            state = question["state"]
            if state in ("url_input", "trust_prompt", "confirm_account"):
                answer = {"state": state, "shown": question.get("shown"), "accept": True}
                process.stdin.write(json.dumps(answer) + "\n")
                process.stdin.flush()
            elif state == "polling" and not any(s.get("approved") for s in states):
                done = subprocess.run(
                    [
                        sys.executable,
                        "-m",
                        "ccproxy",
                        "approve",
                        question["userCode"],
                        "--socket",
                        str(socket),
                    ],
                    capture_output=True,
                    text=True,
                    timeout=30,
                    env=checkoutEnvironment(),
                )
                states.append({"approved": done.returncode == 0, "said": done.stdout + done.stderr})
            elif state in ("done", "error", "cancelled"):
                break
        process.stdin.close()
        process.wait(30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    return states


def runSignedIn(claude: Path, home: Path, workspace: Path, prompt: str) -> list[dict[str, Any]]:
    """`claude -p` with nothing but the saved sign-in: its stream-json events."""
    done = subprocess.run(
        [
            str(claude),
            "-p",
            prompt,
            "--model",
            "sonnet",
            "--output-format",
            "stream-json",
            "--verbose",
        ],
        cwd=workspace,
        env=minimalEnv(home, CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1"),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )
    events = []
    for line in done.stdout.splitlines():
        if line.startswith("{"):
            events.append(json.loads(line))
    assert events, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return events


def gatewaySetup(processes: Processes, tmp_path: Path) -> tuple[Path, Path, Path, str]:
    """Claude Code, a workspace with notes.txt, a HOME whose settings name the
    gateway, ccproxy before the scripted upstream: (claude, workspace, home, URL)."""
    claude = installClaudeCode()
    workspace, home = tmp_path / "workspace", tmp_path / "home"
    workspace.mkdir()
    (home / ".claude").mkdir(parents=True)
    notes = workspace / "notes.txt"
    notes.write_text("The secret word is PERIWINKLE-4711.\n")
    upstream = processes.scriptedUpstream("--file", str(notes), "--answer", ANSWER)
    port = processes.ccproxy(gatewayConfig(upstream, tmp_path))
    gateway = f"http://127.0.0.1:{port}"
    (home / ".claude" / "settings.json").write_text(
        json.dumps({"forceLoginMethod": "gateway", "forceLoginGatewayUrl": gateway})
    )
    return claude, workspace, home, gateway


def accessLines(processes: Processes, path: str) -> list[str]:
    return [line for line in processes.proxyLog.read_text().splitlines() if f" {path} " in line]


@pytest.mark.claude_code
def test_claude_code_signs_in_with_login_and_works_through_the_gateway_token(
    processes: Processes, tmp_path: Path
) -> None:
    claude, workspace, home, gateway = gatewaySetup(processes, tmp_path)

    def explain(what: str, more: Any = "") -> str:
        return f"{what}\n{more}\n--- ccproxy log\n{tail(processes.proxyLog)}"

    states = signIn(claude, home, workspace, tmp_path / "approve.sock")
    names = [s.get("state") for s in states]
    assert names[-1] == "done", explain("the sign-in did not finish", states)
    polling = next(s for s in states if s.get("state") == "polling")
    assert polling["verificationUri"] == f"{gateway}/device"
    assert any(s.get("approved") for s in states), explain("ccproxy approve failed", states)
    credentials = (home / ".claude" / ".credentials.json").read_text()
    assert "ccpx_at_" in credentials  # the gateway token, kept by Claude Code

    events = runSignedIn(claude, home, workspace, "Read the file notes.txt and tell me the word.")
    result = events[-1]
    assert result.get("type") == "result" and not result.get("is_error"), explain(
        "the signed-in run failed", events[-3:]
    )
    assert "SCRIPTED-END" in result.get("result", "")
    messages = accessLines(processes, "/v1/messages")
    assert messages and all("jump-host-user POST" in line for line in messages), explain(
        "the requests did not come in as the signed-in client"
    )
    # The managed settings took effect: --model sonnet became their model name.
    assert all(f" {MANAGED_MODEL} -> " in line for line in messages), explain(
        "the managed ANTHROPIC_DEFAULT_SONNET_MODEL did not reach the requests"
    )
    # Near the budget: Claude Code turned the headers into its usage notice.
    notices = [e["rate_limit_info"] for e in events if e.get("type") == "rate_limit_event"]
    assert any(
        n.get("status") == "allowed_warning" and n.get("surpassedThreshold") in (0.75, 0.95)
        for n in notices
    ), explain("no usage notice", notices)

    # A second session asks with If-None-Match: Claude Code's own checksum of the
    # settings it holds, which is ccproxy's: 304.
    runSignedIn(claude, home, workspace, "Again.")
    fetches = accessLines(processes, "/managed/settings")
    assert len(fetches) >= 2 and " 200 " in fetches[0], explain("no settings fetch", fetches)
    assert any(" 304 " in line for line in fetches[1:]), explain(
        "the second session's If-None-Match did not match ccproxy's checksum", fetches
    )
    log = processes.proxyLog.read_text()
    assert "ccpx_at_" not in log and "ccpx_rt_" not in log  # no token in the log


# -- the interactive /login, under tmux ---------------------------------------------------


class Screen:
    """A terminal of tmux's own running one command; read as text, typed into."""

    def __init__(self, tmux: str, socket: str, command: str) -> None:
        self.tmux, self.socket = tmux, socket
        self.run("new-session", "-d", "-s", "cc", "-x", "160", "-y", "50", command)

    def run(self, *args: str) -> str:
        done = subprocess.run(
            [self.tmux, "-L", self.socket, *args], capture_output=True, text=True, timeout=30
        )
        return done.stdout

    def text(self) -> str:
        return self.run("capture-pane", "-p", "-t", "cc")

    def keys(self, *keys: str) -> None:
        for key in keys:
            self.run("send-keys", "-t", "cc", key)
            time.sleep(1.0)  # a TUI reads keys typed at once as one paste

    def waitFor(self, text: str, seconds: float = 30) -> str:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            screen = self.text()
            if text in screen:
                return screen
            time.sleep(0.5)
        raise AssertionError(f"{text!r} never showed; the screen:\n{self.text()}")

    def close(self) -> None:
        self.run("kill-server")


@pytest.mark.claude_code
def test_interactive_login_under_tmux(processes: Processes, tmp_path: Path) -> None:
    """`/login` in the TUI, keys typed into a tmux terminal (about 12 s)."""
    tmux = shutil.which("tmux")
    if tmux is None:
        missing = "tmux is not installed (.ci/run installs it)"
        if os.environ.get("CI"):
            pytest.fail(missing)  # in CI, a skip would hide a missing install step
        pytest.skip(missing)
    claude, workspace, home, gateway = gatewaySetup(processes, tmp_path)
    (home / ".claude.json").write_text(
        json.dumps(
            {
                "hasCompletedOnboarding": True,
                "theme": "dark",
                "projects": {str(workspace): {"hasTrustDialogAccepted": True}},
            }
        )
    )
    env = " ".join(
        f"{k}={v}"
        for k, v in minimalEnv(home, CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1").items()
    )
    screen = Screen(
        tmux,
        f"ccproxy-{os.getpid()}",
        f"cd {workspace} && env -i {env} TERM=xterm-256color {claude}; sleep 60",
    )
    try:
        screen.waitFor("\u276f")  # the prompt
        screen.keys("/login", "Enter")
        assert gateway in screen.waitFor("Enter to connect")
        screen.keys("Enter")
        screen.waitFor("Yes, trust this gateway")
        screen.keys("Up", "Enter")
        shown = screen.waitFor("Code:")
        assert "ccproxy on this jump host" in shown  # login_notice
        code = shown.split("Code:", 1)[1].split()[0]
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "ccproxy",
                "approve",
                code,
                "--socket",
                str(tmp_path / "approve.sock"),
            ],
            capture_output=True,
            text=True,
            timeout=30,
            env=checkoutEnvironment(),
        )
        assert done.returncode == 0, done.stderr
        screen.waitFor("Connected to Cloud gateway")
        screen.keys("Enter")
        screen.waitFor("Cloud gateway", 20)
        screen.keys("Read notes.txt and tell me the word.", "Enter")
        screen.waitFor("SCRIPTED-END", 30)
    finally:
        screen.close()
    messages = accessLines(processes, "/v1/messages")
    assert messages and all("jump-host-user POST" in line for line in messages)
