"""End to end with the real Claude Code: claude -p → ccproxy (twistd) → a scripted upstream.

The scripted upstream (tests/support/scripted_upstream.py) first streams a call of the Read
tool on a file of the workspace, its arguments in several fragments, then, once it
gets the tool's result, a text answer. Claude Code must run the tool, send its
result back, and print the text.

Claude Code (npm @anthropic-ai/claude-code@2.1.330, ~360 MB) is installed once into
$CCPROXY_TEST_CACHE/claude-code-2.1.330 (default ~/.cache/ccproxy-tests/…) and
reused while its `claude --version` says 2.1.330. Skipped only where `npm` is not on
PATH; a failing install fails the test. Select with `-m claude_code`, leave out with
`-m "not claude_code"`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.support.mcp_server import FORECAST_SECRET
from tests.support.processes import Processes, tail, testCache

VERSION = "2.1.330"
PACKAGE = f"@anthropic-ai/claude-code@{VERSION}"
SECRET = "The secret word is PERIWINKLE-4711."
ANSWER = "The file says the secret word is PERIWINKLE-4711. SCRIPTED-END"
MARKER = "SCRIPTED-END"
CLIENT_KEY = "test-client-key"
MCP_SERVER = Path(__file__).resolve().parent / "support" / "mcp_server.py"


def cacheDir() -> Path:
    path = testCache() / f"claude-code-{VERSION}"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        path = Path(tempfile.gettempdir()) / f"ccproxy-tests-{os.getuid()}" / path.name
        path.mkdir(parents=True, exist_ok=True)
    return path


def minimalEnv(home: Path, **extra: str) -> dict[str, str]:
    """Like `env -i`: only what Claude Code needs, so no user setting leaks in."""
    node = shutil.which("node")
    dirs = [str(Path(node).parent)] if node else []
    dirs += [d for d in ("/usr/local/bin", "/usr/bin", "/bin") if d not in dirs]
    return {"PATH": os.pathsep.join(dirs), "HOME": str(home), "TERM": "dumb", **extra}


def claudeVersion(claude: Path) -> str:
    if not claude.exists():
        return ""
    with tempfile.TemporaryDirectory() as home:
        try:
            done = subprocess.run(
                [str(claude), "--version"],
                env=minimalEnv(Path(home)),
                capture_output=True,
                text=True,
                timeout=60,
            )
        except (OSError, subprocess.TimeoutExpired):
            return ""
    return done.stdout.strip()


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive lock, so parallel runs do not install into the same directory."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    with path.open("w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def installClaudeCode() -> Path:
    """The `claude` of a cached install of PACKAGE, installing it when needed."""
    npm = shutil.which("npm")
    if npm is None:
        pytest.skip(f"npm is not on PATH: cannot install {PACKAGE} for the end-to-end test")
    directory = cacheDir()
    claude = directory / "node_modules" / ".bin" / "claude"
    with locked(directory.parent / f"{directory.name}.lock"):
        if VERSION in claudeVersion(claude):
            return claude
        shutil.rmtree(directory)
        directory.mkdir()
        (directory / "package.json").write_text(
            '{"name": "ccproxy-claude-code", "private": true}\n'
        )
        # The postinstall copies the native binary from the optional dependency
        # @anthropic-ai/claude-code-linux-x64: no --ignore-scripts, no --omit=optional.
        command = [npm, "install", "--no-audit", "--no-fund", "--loglevel=warn", PACKAGE]
        done = subprocess.run(
            command,
            cwd=directory,
            capture_output=True,
            text=True,
            timeout=900,
        )
        version = claudeVersion(claude)
        if done.returncode != 0 or VERSION not in version:
            pytest.fail(
                f"installing {PACKAGE} into {directory} failed (npm exit {done.returncode},"
                f" `claude --version` said {version!r}):\n"
                f"--- npm stdout\n{done.stdout}\n--- npm stderr\n{done.stderr}"
            )
    return claude


def proxyConfig(
    upstreamPort: int, upstreamKeys: str = "", window: int | None = None
) -> Callable[[int], str]:
    """ccproxy's config for a port: one client key, everything to the scripted upstream
    (with `upstreamKeys`, one more line of its YAML keys, e.g. `count_tokens: false`;
    its model holding `window` tokens, when given)."""
    target = "scripted/scripted-model"
    if window is not None:
        target = f"{{target: {target}, context_window: {window}}}"
    return lambda port: (
        f"""
listen: "tcp:{port}:interface=127.0.0.1"
clients:
  - name: claude-code-test
    key: "{CLIENT_KEY}"
upstreams:
  scripted:
    url: "http://127.0.0.1:{upstreamPort}/v1"
    api_key: upstream-key
    timeout: 60
    {upstreamKeys}
models:
  "*": {target}
"""
    )


def runClaude(
    claude: Path,
    workspace: Path,
    home: Path,
    port: int,
    prompt: str,
    *args: str,
    timeout: float = 180,
    environ: Mapping[str, str | None] | None = None,
    **extra: str,
) -> tuple[int, str, str]:
    """`claude -p prompt` with more `args`, and `extra` environment variables;
    `environ` also takes variables out (None)."""
    env = minimalEnv(
        home,
        ANTHROPIC_BASE_URL=f"http://127.0.0.1:{port}",
        ANTHROPIC_AUTH_TOKEN=CLIENT_KEY,
        CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1",
        CLAUDE_CODE_MAX_RETRIES="1",
        **extra,
    )
    for name, value in (environ or {}).items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    process = subprocess.Popen(
        [str(claude), "-p", prompt, "--output-format", "json", *args],
        cwd=workspace,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # so a timeout can end it with anything it started
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        stderr += f"\n<killed after {timeout:g} s>"
        return -9, stdout, stderr
    return process.returncode, stdout, stderr


def toolMessages(received: list[dict[str, Any]]) -> list[str]:
    """The content of every role "tool" message the upstream got, as text."""
    found = []
    for record in received:
        body = record["body"]
        if not isinstance(body, dict):
            continue
        for message in body.get("messages") or []:
            if message.get("role") != "tool":
                continue
            content = message.get("content")
            if isinstance(content, list):
                content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
            found.append(str(content))
    return found


def explanation(
    what: str, run: tuple[int, str, str], processes: Processes, received: list[dict[str, Any]]
) -> str:
    """A failure's message: what went wrong, Claude Code's output, the logs, the
    requests the upstream got."""
    code, stdout, stderr = run
    requests = "\n".join(json.dumps(r)[:4000] for r in received)
    return (
        f"{what}\n--- claude exit code {code}\n--- claude stdout\n{stdout}\n"
        f"--- claude stderr\n{stderr}\n--- ccproxy log\n{tail(processes.proxyLog)}\n"
        f"--- upstream output\n{tail(processes.upstreamOutput)}\n"
        f"--- upstream requests ({len(received)})\n{requests}"
    )


def claudeResult(run: tuple[int, str, str], explain: Callable[[str], str]) -> dict[str, Any]:
    """The JSON result of a `claude -p` run that must have ended well."""
    code, stdout, _ = run
    assert code == 0, explain("claude exited with an error")
    try:
        result = json.loads(stdout)
    except json.JSONDecodeError:
        pytest.fail(explain("claude's stdout is not one JSON object"))
    assert result.get("is_error") is False, explain("claude reports an error")
    return result


def notesWorkspace(tmp_path: Path) -> tuple[Path, Path, Path]:
    """Claude Code's workspace holding notes.txt with SECRET, and its home."""
    workspace = tmp_path / "workspace"
    home = tmp_path / "home"
    workspace.mkdir()
    home.mkdir()
    notes = workspace / "notes.txt"
    notes.write_text(SECRET + "\n")
    return workspace, home, notes


@pytest.mark.claude_code
def test_claude_code_runs_a_tool_loop_through_ccproxy(processes: Processes, tmp_path: Path) -> None:
    claude = installClaudeCode()
    workspace, home, notes = notesWorkspace(tmp_path)

    upstreamPort = processes.scriptedUpstream("--file", str(notes), "--answer", ANSWER)
    proxyPort = processes.ccproxy(proxyConfig(upstreamPort))
    code, stdout, stderr = runClaude(
        claude,
        workspace,
        home,
        proxyPort,
        "Read the file notes.txt and tell me the secret word.",
    )
    received = processes.received()

    def explain(what: str) -> str:
        return explanation(what, (code, stdout, stderr), processes, received)

    result = claudeResult((code, stdout, stderr), explain)
    assert result.get("num_turns", 0) >= 2, explain("fewer than two turns")
    assert MARKER in result.get("result", ""), explain("the final text is not the upstream's")
    assert any(SECRET in content for content in toolMessages(received)), explain(
        "the upstream never got the file's content in a tool message"
    )
    # The main loop was streamed all along: no silent fallback to non-streaming.
    mainLoop = [
        r["body"] for r in received if isinstance(r["body"], dict) and r["body"].get("tools")
    ]
    assert mainLoop and all(b.get("stream") is True for b in mainLoop), explain(
        "Claude Code fell back to non-streaming requests"
    )


@pytest.mark.claude_code
def test_claude_code_runs_a_tool_loop_through_a_responses_upstream(
    processes: Processes, tmp_path: Path
) -> None:
    """The same tool loop against an `api: responses` upstream (the scripted one
    playing OpenAI's Responses API): every main-loop request streamed to
    `/responses`, the tool's result back as a `function_call_output`, and the
    reasoning item of the Read turn back with its encrypted content."""
    claude = installClaudeCode()
    workspace, home, notes = notesWorkspace(tmp_path)

    upstreamPort = processes.scriptedUpstream(
        "--api", "responses", "--file", str(notes), "--answer", ANSWER
    )
    keys = "api: responses\n    reasoning: reasoning_effort"
    proxyPort = processes.ccproxy(proxyConfig(upstreamPort, keys))
    run = runClaude(
        claude, workspace, home, proxyPort, "Read the file notes.txt and tell me the secret word."
    )
    received = processes.received()

    def explain(what: str) -> str:
        return explanation(what, run, processes, received)

    result = claudeResult(run, explain)
    assert MARKER in result.get("result", ""), explain("the final text is not the upstream's")
    assert "(reasoning kept)" in result.get("result", ""), explain(
        "the reasoning item did not come back with its encrypted content"
    )
    bodies = [r["body"] for r in received if isinstance(r["body"], dict)]
    assert all(r["path"].endswith("/v1/responses") for r in received), explain("not /responses")
    outputs = [
        str(item.get("output"))
        for body in bodies
        for item in body.get("input") or []
        if item.get("type") == "function_call_output"
    ]
    assert any(SECRET in output for output in outputs), explain(
        "the upstream never got the file's content in a function_call_output"
    )
    mainLoop = [b for b in bodies if b.get("tools")]
    assert mainLoop and all(b.get("stream") is True for b in mainLoop), explain(
        "Claude Code fell back to non-streaming requests"
    )
    assert all(b.get("store") is False for b in bodies), explain("a request was stored")


@pytest.mark.claude_code
def test_claude_code_finds_and_calls_a_deferred_mcp_tool(
    processes: Processes, tmp_path: Path
) -> None:
    """Tool search (`ENABLE_TOOL_SEARCH=true`) with an MCP server of 100 tools.

    Claude Code marks the MCP tools `defer_loading: true` and offers its own
    `ToolSearch`; ccproxy holds the deferred schemas back from the upstream. The
    scripted model calls ToolSearch, Claude Code answers with `tool_reference`
    blocks, ccproxy defines the tools found on the next request, the model calls
    the MCP tool, Claude Code runs it on the MCP server, and the model answers
    with what it returned."""
    claude = installClaudeCode()
    workspace = tmp_path / "workspace"
    home = tmp_path / "home"
    workspace.mkdir()
    home.mkdir()
    wanted = "weather_forecast"
    upstreamPort = processes.scriptedUpstream(
        "--tool-search",
        wanted,
        "--tool-input",
        '{"city": "Lyon"}',
        "--answer-after",
        "ABRICOT-9",
        "--answer",
        f"Sunny in Lyon, the wind is ABRICOT-9. {MARKER}",
    )
    proxyPort = processes.ccproxy(proxyConfig(upstreamPort))
    servers = {"mcpServers": {"many-tools": {"command": sys.executable, "args": [str(MCP_SERVER)]}}}
    code, stdout, stderr = runClaude(
        claude,
        workspace,
        home,
        proxyPort,
        "What is the weather forecast for Lyon?",
        "--mcp-config",
        json.dumps(servers),
        "--allowedTools",
        "mcp__many-tools",
        ENABLE_TOOL_SEARCH="true",
    )
    received = processes.received()

    def explain(what: str) -> str:
        return explanation(what, (code, stdout, stderr), processes, received)

    assert code == 0, explain("claude exited with an error")
    result = json.loads(stdout)
    assert result.get("is_error") is False, explain("claude reports an error")
    assert MARKER in result.get("result", ""), explain("the final text is not the upstream's")
    mainLoop = [
        r["body"]
        for r in received
        if isinstance(r["body"], dict) and "ToolSearch" in functionNames(r["body"])
    ]
    assert len(mainLoop) == 3, explain("not three turns: search, MCP tool, answer")
    first, second, _ = (functionNames(b) for b in mainLoop)
    assert not [n for n in first if n.startswith("mcp__")], explain("deferred schemas sent")
    assert [n for n in second if n.startswith("mcp__")] == [f"mcp__many-tools__{wanted}"], explain(
        "the tool found is not the one defined"
    )
    assert any(FORECAST_SECRET in text for text in toolMessages(received)), explain(
        "the MCP tool's result never reached the upstream"
    )


def functionNames(body: dict[str, Any]) -> list[str]:
    return [(t.get("function") or {}).get("name", "") for t in body.get("tools") or []]


# -- compaction on an upstream's overflow ---------------------------------------------

OVERFLOW_OVER = 60000
"""Characters of tool results the scripted upstream takes; the third Read is refused."""


def readingSession(
    processes: Processes, tmp_path: Path, upstreamArgs: list[str], prompt: str, **env: str
) -> tuple[int, str, str, list[str]]:
    """Claude Code asked to read a 20 KB file again and again, through ccproxy, from
    the scripted upstream in its overflowing mode (`upstreamArgs`): its exit code,
    output, and the messages of each request the upstream got (as JSON)."""
    claude = installClaudeCode()
    workspace, home = tmp_path / "workspace", tmp_path / "home"
    workspace.mkdir()
    home.mkdir()
    big = workspace / "big.txt"
    big.write_text(
        "".join(f"line {i}: the quick brown fox jumps over the dog\n" for i in range(400))
    )
    upstreamPort = processes.scriptedUpstream("--file", str(big), "--answer", ANSWER, *upstreamArgs)
    proxyPort = processes.ccproxy(proxyConfig(upstreamPort, window=20000))
    code, stdout, stderr = runClaude(claude, workspace, home, proxyPort, prompt, **env)
    said = [
        json.dumps(r["body"].get("messages"))
        for r in processes.received()
        if isinstance(r["body"], dict)
    ]
    return code, stdout, stderr, said


@pytest.mark.claude_code
@pytest.mark.parametrize(
    ("server", "inStream"),
    [
        # Wordings Claude Code 2.1.330 also recognized before ccproxy translated them:
        ("anthropic", False),
        ("openai", False),
        ("llama-server", False),
        ("gemini", False),
        ("litellm", False),
        ("llama-server", True),  # inside the stream: it falls back to a plain request
        # Wordings it did not: before the translation, its session ended in an error.
        ("ollama-no-shift", False),
        ("llama-cpp-python", False),
    ],
)
def test_claude_code_compacts_when_the_upstream_refuses_a_long_prompt(
    processes: Processes, tmp_path: Path, server: str, inStream: bool
) -> None:
    """The upstream refuses any request holding more than OVERFLOW_OVER characters of
    tool results, in `server`'s words (before the stream, or inside it); Claude Code,
    told `prompt is too long`, summarizes the conversation and the session goes on
    to its answer."""
    from tests.support.scripted_upstream import SUMMARIZE, SUMMARY_MARK

    upstreamArgs = ["--overflow-wording", server, "--overflow-over", str(OVERFLOW_OVER)]
    if inStream:
        upstreamArgs.append("--overflow-in-stream")
    code, stdout, stderr, said = readingSession(
        processes, tmp_path, upstreamArgs, "Read big.txt five times, then say what it holds."
    )

    def explain(what: str) -> str:
        return (
            f"{what}\n--- claude exit code {code}\n--- claude stdout\n{stdout}\n"
            f"--- claude stderr\n{stderr}\n--- ccproxy log\n{tail(processes.proxyLog)}"
        )

    refused = [s for s in said if s.count('"role": "tool"') >= 3]
    assert refused, explain("the conversation never grew past the upstream's window")
    assert any(SUMMARIZE in s.lower() for s in said), explain("Claude Code did not compact")
    assert code == 0, explain("claude exited with an error")
    result = json.loads(stdout)
    assert result.get("is_error") is False, explain("claude reports an error")
    assert MARKER in result.get("result", ""), explain("the session did not go on")
    assert SUMMARY_MARK in said[-1], explain("the last request did not carry the summary")


@pytest.mark.claude_code
def test_claude_code_compacts_at_the_window_the_doctor_advises(
    processes: Processes, tmp_path: Path
) -> None:
    """`CLAUDE_CODE_AUTO_COMPACT_WINDOW` is what Claude Code 2.1.330 reads: with
    100000 it summarizes the conversation long before the 1M it believes a Claude
    name holds (it keys on the prompt tokens the upstream reports). The upstream here
    refuses nothing."""
    from tests.support.scripted_upstream import SUMMARIZE, SUMMARY_MARK

    code, stdout, stderr, said = readingSession(
        processes,
        tmp_path,
        ["--overflow-wording", "openai", "--overflow-over", str(10**9)],
        "Read big.txt many times, then say what it holds.",
        CLAUDE_CODE_AUTO_COMPACT_WINDOW="100000",
    )
    explain = f"--- claude exit code {code}\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
    summaries = [i for i, s in enumerate(said) if SUMMARIZE in s.lower()]
    assert summaries, explain
    # Some 62000 tokens (4 characters each) in: well under 100000, far under 1M.
    assert len(said[summaries[0]]) < 400_000, explain
    assert code == 0 and MARKER in json.loads(stdout).get("result", ""), explain
    assert SUMMARY_MARK in said[-1], explain
