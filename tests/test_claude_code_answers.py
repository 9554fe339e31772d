"""What the real Claude Code 2.1.330 does with ccproxy's answers (claude -p → ccproxy
(twistd) → the scripted upstream of tests/support/scripted_upstream.py), for the
rules of its gateway protocol that change what the user sees:

- a wrong key: its 401 carries `x-should-retry: false`, so Claude Code says so at
  once, where it used to retry with backoff for minutes first;
- auto mode: the request carrying `safeguards` gets a 400 naming them, Claude Code
  sends it again without them, sends them no more, and the session completes;
- `count_tokens: false`: its 501 `not_supported` (with `x-should-retry: false`)
  makes Claude Code estimate on its own (`/context` still answers).

The install and the run are those of tests/test_claude_code.py.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.processes import Processes
from tests.test_claude_code import (
    ANSWER,
    MARKER,
    SECRET,
    explanation,
    installClaudeCode,
    proxyConfig,
    runClaude,
)

WRONG_KEY_BOUND = 60
"""Seconds a wrong key may take to reach the user. Measured with 2.1.330 in print
mode and its default retries: 179-185 s before the 401 said `x-should-retry:
false` (eleven requests), 1.4-1.6 s after (one request), with either variable."""


PROMPT = "Read the file notes.txt and tell me the secret word."


def session(
    processes: Processes,
    tmp_path: Path,
    *args: str,
    extraConfig: str = "",
    upstreamKeys: str = "",
    prompt: str = PROMPT,
    **kwargs: Any,
) -> tuple[int, str, str]:
    """Claude Code asked `prompt`, with `args`, through ccproxy (its config with
    `extraConfig` added, and `upstreamKeys` in its upstream's) to the scripted
    upstream, in a workspace holding notes.txt."""
    claude = installClaudeCode()
    workspace, home = tmp_path / "workspace", tmp_path / "home"
    workspace.mkdir()
    home.mkdir()
    notes = workspace / "notes.txt"
    notes.write_text(SECRET + "\n")
    upstream = processes.scriptedUpstream("--file", str(notes), "--answer", ANSWER)
    config = proxyConfig(upstream, upstreamKeys)
    port = processes.ccproxy(lambda port: config(port) + extraConfig)
    return runClaude(claude, workspace, home, port, prompt, *args, **kwargs)


@pytest.mark.claude_code
@pytest.mark.parametrize("variable", ["ANTHROPIC_AUTH_TOKEN", "ANTHROPIC_API_KEY"])
def test_a_wrong_key_reaches_the_user_at_once(
    processes: Processes, tmp_path: Path, variable: str
) -> None:
    started = time.monotonic()
    code, stdout, stderr = session(
        processes,
        tmp_path,
        timeout=WRONG_KEY_BOUND,
        # Claude Code's own retries, as a user has them.
        environ={
            "ANTHROPIC_AUTH_TOKEN": None,
            variable: "not-the-client-key",
            "CLAUDE_CODE_MAX_RETRIES": None,
        },
    )
    took = time.monotonic() - started
    why = explanation(
        f"after {took:.1f} s", (code, stdout, stderr), processes, processes.received()
    )
    assert code not in (0, -9), why  # it ended, in error, within the bound
    result = json.loads(stdout)
    assert result.get("is_error") is True, why
    assert result.get("api_error_status") == 401, why
    assert "invalid API key" in result.get("result", ""), why
    assert processes.received() == [], why  # nothing reached the upstream


ACCESS = re.compile(r"ccproxy\.access#info\] \S+ \S+ POST /v1/messages .*? (\d{3}) \(upstream")
PAYLOAD = re.compile(r"ccproxy\.payload#info\] \S+ request (\{.*)$", re.MULTILINE)


@pytest.mark.claude_code
def test_auto_mode_runs_its_check_itself_once_safeguards_are_refused(
    processes: Processes, tmp_path: Path
) -> None:
    code, stdout, stderr = session(
        processes,
        tmp_path,
        "--permission-mode",
        "auto",
        extraConfig="log_payloads: true\nlog_payload_max_chars: 10000000\n",
    )
    why = explanation("", (code, stdout, stderr), processes, processes.received())
    assert code == 0, why
    result = json.loads(stdout)
    assert result.get("is_error") is False and MARKER in result.get("result", ""), why

    log = processes.proxyLog.read_text()
    statuses = [int(s) for s in ACCESS.findall(log)]
    bodies: list[dict[str, Any]] = [json.loads(raw) for raw in PAYLOAD.findall(log)]
    carried = ["safeguards" in body for body in bodies]
    # The first request asked for the server-side check and was refused, naming it;
    # the same request went again without, and so did every later one.
    assert statuses[0] == 400 and all(s == 200 for s in statuses[1:]), why
    assert len(statuses) >= 3, why  # the retry, the tool's turn, the answer
    assert carried == [True] + [False] * (len(bodies) - 1), why
    assert "invalid_request_error: safeguards:" in log, why


COUNT = re.compile(r"POST /v1/messages/count_tokens\S* \S+ -> \S+ (\d{3}) \(upstream")


@pytest.mark.claude_code
def test_count_tokens_switched_off_makes_claude_code_count_on_its_own(
    processes: Processes, tmp_path: Path
) -> None:
    """`/context` asks count_tokens some 25 times at once; every answer is a 501, and
    Claude Code shows its own estimate instead of failing."""
    code, stdout, stderr = session(
        processes,
        tmp_path,
        prompt="/context",
        upstreamKeys="count_tokens: false",
        environ={"CLAUDE_CODE_MAX_RETRIES": None},
    )
    why = explanation("", (code, stdout, stderr), processes, processes.received())
    assert code == 0, why
    result = json.loads(stdout)
    assert result.get("is_error") is False and "Context Usage" in result.get("result", ""), why
    statuses = COUNT.findall(processes.proxyLog.read_text())
    assert len(statuses) >= 10 and set(statuses) == {"501"}, why
