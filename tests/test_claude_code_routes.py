"""End to end with the real Claude Code: `routes:` sends the turn holding an image elsewhere.

claude -p → ccproxy (twistd) → two scripted upstreams. The first serves Claude
Code's main loop (a rule on the Read tool being offered) and answers with a call of
Read on a PNG of the workspace; Claude Code sends the image back inside a
`tool_result`, and the `images` rule, tried first, sends that turn to the second
upstream, which answers the text Claude Code prints. Each upstream logs what it
got, and ccproxy's access log names both rules.
"""

from __future__ import annotations

import json
import struct
import sys
import zlib
from pathlib import Path
from typing import Any

import pytest

from tests.support.processes import SCRIPTED_UPSTREAM, Processes, tail, waitFor
from tests.test_claude_code import CLIENT_KEY, installClaudeCode, runClaude

SEEN = "The picture is a red square. IMAGE-ROUTED-END"
WRONG = "This answer came from the main upstream. WRONG-UPSTREAM"


def redPNG(size: int = 16) -> bytes:
    """A valid PNG: a red square."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)
    rows = b"".join(b"\x00" + b"\xff\x00\x00" * size for _ in range(size))
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def scripted(processes: Processes, name: str, *args: str) -> tuple[int, Path]:
    """A scripted upstream of its own (its port, and the log of what it got)."""
    portFile = processes.directory / f"{name}.port"
    log = processes.directory / f"{name}-requests.jsonl"
    output = processes.directory / f"{name}-output.log"
    command = [sys.executable, str(SCRIPTED_UPSTREAM), "--port-file", str(portFile)]
    process = processes.spawn([*command, "--log", str(log), *args], output)
    port = waitFor(
        lambda: portFile.exists() and portFile.read_text().strip(),
        f"the {name} upstream to listen",
        process=process,
        log=output,
    )
    return int(port), log


def received(log: Path) -> list[dict[str, Any]]:
    if not log.exists():
        return []
    return [json.loads(line)["body"] for line in log.read_text().splitlines() if line]


def holdsImage(body: Any) -> bool:
    """Whether an OpenAI request carries an image part (where ccproxy puts a tool
    result's image)."""
    for message in body.get("messages") or [] if isinstance(body, dict) else []:
        content = message.get("content")
        if isinstance(content, list) and any(p.get("type") == "image_url" for p in content):
            return True
    return False


@pytest.mark.claude_code
def test_the_tool_result_with_an_image_goes_to_the_vision_upstream(
    processes: Processes, tmp_path: Path
) -> None:
    claude = installClaudeCode()
    workspace, home = tmp_path / "workspace", tmp_path / "home"
    workspace.mkdir()
    home.mkdir()
    picture = workspace / "red.png"
    picture.write_bytes(redPNG())

    mainPort, mainLog = scripted(processes, "main", "--file", str(picture), "--answer", WRONG)
    eyesPort, eyesLog = scripted(processes, "eyes", "--file", str(picture), "--answer", SEEN)

    def config(port: int) -> str:
        return f"""
listen: "tcp:{port}:interface=127.0.0.1"
ledger: off
clients:
  - name: claude-code-test
    key: "{CLIENT_KEY}"
upstreams:
  main: {{url: "http://127.0.0.1:{mainPort}/v1", api_key: k, timeout: 60}}
  eyes: {{url: "http://127.0.0.1:{eyesPort}/v1", api_key: k, timeout: 60}}
routes:
  - name: vision
    when: {{images: true}}
    target: eyes/vision-model
  - name: main
    when: {{tools: [Read]}}
    target: main/main-model
models:
  "*": main/other-model
"""

    proxyPort = processes.ccproxy(config)
    run = runClaude(
        claude, workspace, home, proxyPort, "Look at red.png and tell me what it shows."
    )
    code, stdout, stderr = run
    toMain, toEyes = received(mainLog), received(eyesLog)

    def explain(what: str) -> str:
        return (
            f"{what}\n--- claude exit code {code}\n--- claude stdout\n{stdout}\n"
            f"--- claude stderr\n{stderr}\n--- ccproxy log\n{tail(processes.proxyLog)}\n"
            f"--- main upstream got\n{json.dumps(toMain)[:6000]}\n"
            f"--- vision upstream got\n{json.dumps(toEyes)[:6000]}"
        )

    assert code == 0, explain("claude exited with an error")
    try:
        result = json.loads(stdout)
    except json.JSONDecodeError:
        pytest.fail(explain("claude's stdout is not one JSON object"))
    assert "IMAGE-ROUTED-END" in result.get("result", ""), explain("the answer is not eyes'")
    # The first turn (offering Read, no image yet) went to main, as main-model.
    assert toMain and toMain[0]["model"] == "main-model", explain("main got no first turn")
    assert not any(holdsImage(b) for b in toMain), explain("main got the image")
    # The turn holding Read's image went to eyes, as vision-model.
    assert toEyes and all(b["model"] == "vision-model" for b in toEyes), explain("eyes")
    assert any(holdsImage(b) for b in toEyes), explain("eyes never got the image")
    log = processes.proxyLog.read_text()
    assert " route=main -> main/main-model (stream) 200" in log, explain("no main route")
    assert " route=vision -> eyes/vision-model (stream) 200" in log, explain("no vision route")
