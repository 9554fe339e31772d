"""End to end with the real Claude Code through an `api: messages` upstream:
claude -p → ccproxy (twistd) → a scripted upstream speaking the Messages API
(tests/support/scripted_upstream.py --anthropic), which streams a `tool_use` of
Read, then, once the `tool_result` is back, a text answer. ccproxy translates
nothing: Claude Code must still run its tool loop, every main-loop request
streamed, its betas reaching the upstream.

Installs and skips as tests/test_claude_code.py does (`-m claude_code`).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.processes import Processes
from tests.test_claude_code import (
    ANSWER,
    MARKER,
    SECRET,
    claudeResult,
    explanation,
    installClaudeCode,
    proxyConfig,
    runClaude,
)


@pytest.mark.claude_code
def test_claude_code_runs_a_tool_loop_through_a_messages_upstream(
    processes: Processes, tmp_path: Path
) -> None:
    claude = installClaudeCode()
    workspace = tmp_path / "workspace"
    home = tmp_path / "home"
    workspace.mkdir()
    home.mkdir()
    notes = workspace / "notes.txt"
    notes.write_text(SECRET + "\n")

    upstreamPort = processes.scriptedUpstream(
        "--anthropic", "--file", str(notes), "--answer", ANSWER
    )
    proxyPort = processes.ccproxy(proxyConfig(upstreamPort, "api: messages"))
    run = runClaude(
        claude,
        workspace,
        home,
        proxyPort,
        "Read the file notes.txt and tell me the secret word.",
    )
    received = processes.received()

    def explain(what: str) -> str:
        return explanation(what, run, processes, received)

    result = claudeResult(run, explain)
    assert result.get("num_turns", 0) >= 2, explain("fewer than two turns")
    assert MARKER in result.get("result", ""), explain("the final text is not the upstream's")
    mainLoop = [
        r
        for r in received
        if r["path"].endswith("/v1/messages") and isinstance(r["body"], dict)
        if r["body"].get("tools")
    ]
    assert len(mainLoop) >= 2, explain("fewer than two main-loop requests")
    assert all(r["body"].get("stream") is True for r in mainLoop), explain(
        "Claude Code fell back to non-streaming requests"
    )
    # Passed through: the model routed, the tool result as Claude Code wrote it.
    assert all(r["body"]["model"] == "scripted-model" for r in mainLoop), explain("model")
    results = [
        part
        for message in mainLoop[-1]["body"]["messages"]
        if isinstance(message.get("content"), list)
        for part in message["content"]
        if part.get("type") == "tool_result"
    ]
    assert results and SECRET in json.dumps(results), explain("no tool_result with the file")
    assert all(r["anthropic-version"] for r in mainLoop), explain("no anthropic-version")
    assert any("claude-code-" in (r["anthropic-beta"] or "") for r in mainLoop), explain(
        "Claude Code's betas did not reach the upstream"
    )
