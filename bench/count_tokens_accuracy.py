"""How far `POST /v1/messages/count_tokens` is from what a real upstream counts.

    CCPROXY_LLAMA_SERVER=/path/to/llama-server \\
    CCPROXY_LLAMA_MODEL_DIR=/path/to/models \\
    python -m bench.count_tokens_accuracy [--ctx 32768] [--only=SUBSTRING] [--json FILE]
                                          [--vocab-dir DIR]

Starts llama.cpp's `llama-server` (SmolLM2-135M-Instruct with the Qwen2.5 chat
template, from CCPROXY_LLAMA_MODEL_DIR) and ccproxy in front of it (`twistd -n`, on
free loopback ports), then for each request:

- asks ccproxy's `/v1/messages/count_tokens` for its estimate;
- sends the same request through ccproxy's `/v1/messages` with `max_tokens: 1` and
  reads the real prompt size from the answer: `usage.input_tokens` +
  `cache_read_input_tokens` (+ `cache_creation_input_tokens`);
- cross-checks that figure against llama-server's own `/apply-template` +
  `/tokenize` of the body ccproxy sends (so a wrong usage mapping in the proxy
  would show up as a mismatch rather than as estimator error);
- computes, on the same translated body, ccproxy's estimator (which must equal the
  `/count_tokens` answer) and the rules it replaced (`BEFORE` below), to show what
  the calibration changed.

The requests: every body in tests/fixtures/claude-code/requests/*.json that has
`messages` (their `"<text: N chars>"` placeholders are filled with English prose,
code or command output of exactly N characters, generated deterministically, so
that the counts mean something), plus a few synthetic ones (short chat, code-heavy,
JSON-heavy, non-English).

What is measured is SmolLM2's tokenizer (a 49k-token GPT-2-style BPE, English- and
code-centric) rendered through the Qwen2.5 chat template (which adds its own tool
preamble, and a default system prompt when there is none). Other upstreams'
tokenizers (o200k, Qwen, Llama 3) differ by some per cent on English and code, and
by much more on non-English text.

`--vocab-dir DIR` (llama.cpp's `models/` folder, which the llama-cpp-python sdist
carries) also counts every rendered prompt with the Qwen2 and Llama 3 vocabularies,
through `llama-tokenize` (`cmake --build build-llama --target llama-tokenize`), as a
check that a calibration is not peculiar to SmolLM2.

llama-server is started with `-c 32768` (the Claude Code bodies are 12-21k tokens)
and `--override-kv llama.context_length=...` (SmolLM2's own 8192 would cap it),
`--cache-reuse 256`, and the requests are sent in the order that lets each reuse
most of the previous one's KV cache. The first request still processes ~12k tokens:
a full run took 75 minutes on two busy cores, the 8 synthetic requests alone
(`--only=synthetic`) 80 seconds.

Exit status 0 when every request was measured, 1 when some failed, 2 when the run
could not start.
"""

# The non-English sample sentences are meant to hold non-ASCII look-alikes.
# ruff: noqa: RUF001
from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from ccproxy.translate.tokens import estimateTokens

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "claude-code" / "requests"
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
TEMPLATE_FILE = "Qwen-Qwen2.5-7B-Instruct.jinja"
PLACEHOLDER = re.compile(r"^<text: (\d+) chars>$")

# ---------------------------------------------------------------------------------------
# Deterministic filler text
# ---------------------------------------------------------------------------------------

# Sentences in the register of Claude Code's system prompt and tool descriptions.
_PROSE = [
    "You are an interactive command line tool that helps users with software engineering tasks.",
    "Use the instructions below and the tools available to you to assist the user.",
    "IMPORTANT: Assist with defensive security tasks only.",
    "Refuse to create, modify, or improve code that may be used maliciously.",
    "If the user asks for help or wants to give feedback, tell them about the /help command.",
    "When you are unsure, ask a clarifying question instead of guessing.",
    "You should be concise, direct, and to the point.",
    "Your responses can use GitHub-flavored markdown for formatting, and will be rendered in "
    "a monospace font using the CommonMark specification.",
    "Output text to communicate with the user; all text you output outside of tool use is "
    "displayed to the user.",
    "Only use tools to complete tasks.",
    "Never use tools like Bash or code comments as means to communicate with the user "
    "during the session.",
    "If you cannot or will not help the user with something, please do not say why or what "
    "it could lead to.",
    "Only use emojis if the user explicitly requests it.",
    "Avoid using emojis in all communication unless asked.",
    "You MUST answer concisely with fewer than 4 lines of text (not including tool use or "
    "code generation), unless the user asks for detail.",
    "IMPORTANT: You should minimize output tokens as much as possible while maintaining "
    "helpfulness, quality, and accuracy.",
    "Do not add additional code explanation summary unless requested by the user.",
    "After working on a file, just stop, rather than providing an explanation of what you did.",
    "When you run a non-trivial bash command, you should explain what the command does and "
    "why you are running it, to make sure the user understands what you are doing.",
    "This is especially important when you are running a command that will make changes to "
    "the user's system.",
    "Remember that your output will be displayed on a command line interface.",
    "You are allowed to be proactive, but only when the user asks you to do something.",
    "Doing the right thing when asked, including taking actions and follow-up actions, is "
    "more important than being clever.",
    "Not surprising the user with actions you take without asking matters too.",
    "When making changes to files, first understand the file's code conventions.",
    "Mimic code style, use existing libraries and utilities, and follow existing patterns.",
    "NEVER assume that a given library is available, even if it is well known.",
    "Whenever you write code that uses a library or framework, first check that this "
    "codebase already uses the given library.",
    "For example, you might look at neighboring files, or check the package.json (or "
    "cargo.toml, and so on depending on the language).",
    "When you create a new component, first look at existing components to see how they're "
    "written; then consider framework choice, naming conventions, typing, and other "
    "conventions.",
    "When you edit a piece of code, first look at the code's surrounding context "
    "(especially its imports) to understand the code's choice of frameworks and libraries.",
    "Always follow security best practices.",
    "Never introduce code that exposes or logs secrets and keys.",
    "Never commit secrets or keys to the repository.",
    "IMPORTANT: DO NOT ADD ***ANY*** COMMENTS unless asked.",
    "Use the TodoWrite tool to plan the task if required.",
    "Use the available search tools to understand the codebase and the user's query; you "
    "are encouraged to use the search tools extensively both in parallel and sequentially.",
    "Implement the solution using all tools available to you.",
    "Verify the solution if possible with tests.",
    "NEVER assume a specific test framework or test script; check the README or search the "
    "codebase to determine the testing approach.",
    "When you have completed a task, you MUST run the lint and typecheck commands (eg. npm "
    "run lint, npm run typecheck, ruff, etc.) with Bash if they were provided to you to "
    "ensure your code is correct.",
    "NEVER commit changes unless the user explicitly asks you to.",
    "It is VERY IMPORTANT to only commit when explicitly asked, otherwise the user will feel "
    "that you are being too proactive.",
    "Tool results and user messages may include <system-reminder> tags.",
    "They contain useful information and reminders; they are NOT part of the user's "
    "provided input or the tool result.",
    "When doing file search, prefer to use the Task tool in order to reduce context usage.",
    "You have the capability to call multiple tools in a single response.",
    "When multiple independent pieces of information are requested, batch your tool calls "
    "together for optimal performance.",
    "When making multiple bash tool calls, you MUST send a single message with multiple "
    "tools calls to run the calls in parallel.",
    'For example, if you need to run "git status" and "git diff", send a single message '
    "with two tool calls to run the calls in parallel.",
    "Here is useful information about the environment you are running in:",
    "Working directory: /home/dev/project",
    "Is directory a git repo: Yes",
    "Platform: linux",
    "OS Version: Linux 6.8.0-45-generic",
    "Today's date: 2025-11-24",
    "You are powered by the model named Opus 4.5.",
    "The exact model ID is claude-opus-4-5-20251101.",
    "Assistant knowledge cutoff is January 2025.",
    "IMPORTANT: Always use the TodoWrite tool to plan and track tasks throughout the conversation.",
    "When referencing specific functions or pieces of code include the pattern "
    "`file_path:line_number` to allow the user to easily navigate to the source code "
    "location.",
    "Example: Clients are marked as failed in the `connectToServer` function in "
    "src/services/process.ts:712.",
    "Reads a file from the local filesystem.",
    "You can access any file directly by using this tool.",
    "Assume this tool is able to read all files on the machine.",
    "The file_path parameter must be an absolute path, not a relative path.",
    "By default, it reads up to 2000 lines starting from the beginning of the file.",
    "You can optionally specify a line offset and limit (especially handy for long files), "
    "but it's recommended to read the whole file by not providing these parameters.",
    "Any lines longer than 2000 characters will be truncated.",
    "Results are returned using cat -n format, with line numbers starting at 1.",
    "This tool allows Claude Code to read images (eg PNG, JPG, etc).",
    "When reading an image file the contents are presented visually as Claude Code is a "
    "multimodal LLM.",
    "Executes a given bash command in a persistent shell session with optional timeout, "
    "ensuring proper handling and security measures.",
    "Before executing the command, please follow these steps:",
    "Directory Verification: If the command will create new directories or files, first use "
    "`ls` to verify the parent directory exists and is the correct location.",
    "Always quote file paths that contain spaces with double quotes (e.g., cd "
    '"path with spaces/file.txt").',
    "You can specify an optional timeout in milliseconds (up to 600000ms / 10 minutes).",
    "If not specified, commands will timeout after 120000ms (2 minutes).",
    "If the output exceeds 30000 characters, output will be truncated before being returned "
    "to you.",
    "VERY IMPORTANT: You MUST avoid using search commands like `find` and `grep`.",
    "Instead use Grep, Glob, or Task to search.",
    "Try to maintain your current working directory throughout the session by using "
    "absolute paths and avoiding usage of `cd`.",
    "Performs exact string replacements in files.",
    "The edit will FAIL if `old_string` is not unique in the file.",
    "Use `replace_all` for replacing and renaming strings across the file.",
    "A powerful search tool built on ripgrep; supports full regex syntax (eg. "
    '"log.*Error", "function\\s+\\w+").',
    'Filter files with the glob parameter (eg. "*.js", "**/*.tsx") or the type '
    'parameter (eg. "js", "py", "rust").',
    'Output modes: "content" shows matching lines, "files_with_matches" shows only file '
    'paths (default), "count" shows match counts.',
    "Launch a new agent to handle complex, multi-step tasks autonomously.",
    "When the agent is done, it will return a single message back to you.",
    "The result returned by the agent is not visible to the user.",
    "Each agent invocation is stateless.",
]

_HEADINGS = [
    "# Tone and style",
    "# Proactiveness",
    "# Following conventions",
    "# Code style",
    "# Task Management",
    "# Doing tasks",
    "# Tool usage policy",
    "## Usage notes",
    "## Committing changes with git",
    "## Creating pull requests",
    "<example>",
    "</example>",
    "<env>",
    "</env>",
]

_CODE = [
    "import { useEffect, useState } from 'react';",
    "export async function fetchUser(id: string): Promise<User | null> {",
    "  const res = await fetch(`/api/users/${id}`, { headers: { Accept: 'application/json' } });",
    "  if (!res.ok) throw new Error(`HTTP ${res.status}: ${res.statusText}`);",
    "  return (await res.json()) as User;",
    "}",
    "def parse_config(path: Path) -> dict[str, Any]:",
    '    """Load the YAML config and expand ${VAR} references."""',
    '    with path.open(encoding="utf-8") as f:',
    "        data = yaml.safe_load(f) or {}",
    "    return {key: os.path.expandvars(value) for key, value in data.items()}",
    "class RetryPolicy:",
    "    def __init__(self, attempts: int = 3, backoff: float = 0.5) -> None:",
    "        self.attempts = attempts",
    "        self.backoff = backoff",
    "    def delays(self):",
    "        return [self.backoff * 2**i for i in range(self.attempts)]",
    "for (let i = 0; i < items.length; i++) {",
    "  total += items[i].price * items[i].quantity;",
    "}",
    "$ npm run test -- --watch=false",
    "$ git diff --stat HEAD~1",
    "$ pytest -q tests/test_config.py::test_expand_env",
    "SELECT id, email, created_at FROM users WHERE deleted_at IS NULL ORDER BY id LIMIT 50;",
    "if err != nil {",
    '\treturn fmt.Errorf("open %s: %w", path, err)',
    "}",
    "fn main() -> Result<(), Box<dyn Error>> {",
    "    let args: Vec<String> = env::args().collect();",
    '    println!("{:?}", args);',
    "    Ok(())",
    "}",
]

_OUTPUT = [
    "total 48",
    "drwxr-xr-x  6 dev dev 4096 Nov 24 10:02 .",
    "drwxr-xr-x 12 dev dev 4096 Nov 20 08:41 ..",
    "-rw-r--r--  1 dev dev  220 Nov 20 08:41 .editorconfig",
    "drwxr-xr-x  8 dev dev 4096 Nov 24 10:02 .git",
    "-rw-r--r--  1 dev dev  512 Nov 21 14:13 .gitignore",
    "-rw-r--r--  1 dev dev 1067 Nov 20 08:41 LICENSE",
    "-rw-r--r--  1 dev dev 2311 Nov 23 17:55 README.md",
    "-rw-r--r--  1 dev dev   26 Nov 24 09:58 hello.txt",
    "-rw-r--r--  1 dev dev  845 Nov 22 11:30 package.json",
    "drwxr-xr-x  4 dev dev 4096 Nov 23 17:55 src",
    "drwxr-xr-x  2 dev dev 4096 Nov 22 11:30 tests",
    "ls: cannot access '/nonexistent-dir': No such file or directory",
    "On branch main",
    "Your branch is up to date with 'origin/main'.",
    "Changes not staged for commit:",
    "\tmodified:   src/config.ts",
    "\tmodified:   tests/config.test.ts",
    "===== 42 passed, 1 skipped in 3.17s =====",
    "FAILED tests/test_config.py::test_expand_env - KeyError: 'HOME'",
    "Error: Command failed with exit code 2",
    "npm ERR! code ELIFECYCLE",
]


def fillText(length: int, kind: str, key: str) -> str:
    """Text of exactly `length` characters for the placeholder at `key`.

    `kind` is "prose" (English with markdown and a few code lines, like Claude Code's
    system prompt and tool descriptions) or "output" (command output and file lines,
    like a tool result). The text is the first `length` characters of one endless
    stream per (kind, key): the same slot in two requests (the system prompt, the Bash
    tool's description) gets the same text, shorter or longer, as Claude Code's own
    requests do. That also lets llama-server reuse its KV cache from one request to the
    next, which makes the run minutes rather than hours on two cores."""
    rng = random.Random(zlib.crc32(f"{kind}:{key}".encode()))
    parts: list[str] = []
    size = 0
    while size < length:
        if kind == "output":
            if rng.random() < 0.6:
                chunk = rng.choice(_OUTPUT)
            else:
                chunk = f"{rng.randint(1, 400)}\t{rng.choice(_CODE)}"
            chunk += "\n"
        else:
            roll = rng.random()
            if roll < 0.05:
                chunk = "\n\n" + rng.choice(_HEADINGS) + "\n"
            elif roll < 0.10:
                lines = [rng.choice(_CODE) for _ in range(rng.randint(2, 5))]
                chunk = "\n```\n" + "\n".join(lines) + "\n```\n"
            elif roll < 0.25:
                chunk = "\n- " + rng.choice(_PROSE) + "\n"
            else:
                chunk = rng.choice(_PROSE) + " "
        parts.append(chunk)
        size += len(chunk)
    return "".join(parts)[:length]


def fillPlaceholders(value: Any, kind: str = "prose", key: str = "") -> Any:
    """A copy of a fixture body with every "<text: N chars>" replaced by text of N chars:
    command output inside tool results, prose elsewhere. Tools are keyed by name, so
    the 12-tool and 21-tool variants of a request describe Bash the same way."""
    if isinstance(value, str):
        match = PLACEHOLDER.match(value)
        return fillText(int(match.group(1)), kind, key) if match else value
    if isinstance(value, list):
        out = []
        for i, item in enumerate(value):
            name = item.get("name") if isinstance(item, dict) and key == "tools" else None
            out.append(fillPlaceholders(item, kind, f"{key}.{name or i}"))
        return out
    if isinstance(value, dict):
        inner = "output" if value.get("type") == "tool_result" else kind
        return {k: fillPlaceholders(v, inner, f"{key}.{k}" if key else k) for k, v in value.items()}
    return value


# ---------------------------------------------------------------------------------------
# Synthetic requests
# ---------------------------------------------------------------------------------------

_GERMAN = [
    "Bitte lies die Konfigurationsdatei und erkläre mir, warum der Dienst nicht startet.",
    "Die Anwendung speichert ihre Einstellungen im Verzeichnis des Benutzers.",
    "Wenn der Test fehlschlägt, zeige mir die vollständige Fehlermeldung.",
    "Ich möchte, dass du die Funktion so änderst, dass sie auch leere Listen verarbeitet.",
    "Danach sollten wir die Änderungen überprüfen und einen Commit vorbereiten.",
    "Die Datenbankverbindung wird beim Start geöffnet und erst beim Beenden geschlossen.",
    "Könntest du außerdem die Dokumentation für die neue Schnittstelle ergänzen?",
]
_CHINESE = [
    "请阅读配置文件，并解释为什么服务无法启动。",
    "这个函数在处理空列表时会抛出异常，我们需要修复它。",
    "测试失败时，请把完整的错误信息显示给我。",
    "数据库连接在启动时打开，在退出时关闭。",
    "请为新的接口补充文档，并说明每个参数的含义。",
    "修改完成后，我们再检查一遍代码风格，然后提交。",
]
_RUSSIAN = [
    "Пожалуйста, прочитай файл конфигурации и объясни, почему сервис не запускается.",
    "Эта функция выбрасывает исключение, когда получает пустой список.",
    "Если тест упадёт, покажи мне полное сообщение об ошибке.",
    "Соединение с базой данных открывается при запуске и закрывается при выходе.",
    "Добавь, пожалуйста, документацию для нового интерфейса.",
]
_JAPANESE = [
    "設定ファイルを読んで、サービスが起動しない理由を説明してください。",
    "この関数は空のリストを受け取ると例外を投げます。",
    "テストが失敗したら、エラーメッセージをすべて表示してください。",
    "変更が終わったら、コードスタイルを確認してからコミットしましょう。",
]

_TOOLS_SMALL = [
    {
        "name": "Bash",
        "description": "Executes a given bash command in a persistent shell session.",
        "input_schema": {
            "type": "object",
            "properties": {
                "command": {"type": "string", "description": "The command to execute"},
                "timeout": {"type": "number", "description": "Optional timeout in ms"},
            },
            "required": ["command"],
            "additionalProperties": False,
        },
    },
    {
        "name": "Read",
        "description": "Reads a file from the local filesystem.",
        "input_schema": {
            "type": "object",
            "properties": {
                "file_path": {"type": "string", "description": "The absolute path to read"},
                "offset": {"type": "number"},
                "limit": {"type": "number"},
            },
            "required": ["file_path"],
        },
    },
]


def _sentences(pool: list[str], count: int, seed: str, sep: str = " ") -> str:
    rng = random.Random(zlib.crc32(seed.encode()))
    return sep.join(rng.choice(pool) for _ in range(count))


def _codeFile(lines: int, seed: str) -> str:
    rng = random.Random(zlib.crc32(seed.encode()))
    return "\n".join(rng.choice(_CODE) for _ in range(lines))


def _jsonDocument(items: int, seed: str) -> str:
    rng = random.Random(zlib.crc32(seed.encode()))
    words = ["alpha", "beta", "gamma", "delta", "release", "staging", "eu-west-1", "pending"]
    records = [
        {
            "id": f"{rng.getrandbits(64):016x}",
            "name": f"{rng.choice(words)}-{rng.randint(1, 999)}",
            "createdAt": f"2025-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}T"
            f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:00Z",
            "status": rng.choice(["active", "disabled", "pending"]),
            "replicas": rng.randint(1, 12),
            "cpu": round(rng.uniform(0.05, 4.0), 2),
            "labels": {"team": rng.choice(words), "tier": rng.choice(["web", "db", "cache"])},
            "ports": [rng.choice([80, 443, 5432, 6379, 8080]) for _ in range(rng.randint(1, 3))],
            "healthy": rng.random() < 0.8,
        }
        for _ in range(items)
    ]
    return json.dumps({"items": records, "total": items, "next": None}, indent=2)


def syntheticRequests() -> list[tuple[str, dict[str, Any]]]:
    """Small hand-made requests covering what the fixtures do not."""
    model = "claude-sonnet-4-5"
    code = _codeFile(160, "code-heavy")
    doc = _jsonDocument(25, "json-heavy")
    return [
        (
            "synthetic: short chat",
            {"model": model, "messages": [{"role": "user", "content": "What is a monad?"}]},
        ),
        (
            "synthetic: multi-turn chat",
            {
                "model": model,
                "system": "You are a concise assistant.",
                "messages": [
                    {"role": "user", "content": "How do I undo my last git commit?"},
                    {
                        "role": "assistant",
                        "content": "Run `git reset --soft HEAD~1`: the commit is undone and "
                        "its changes stay staged.",
                    },
                    {"role": "user", "content": "And if I already pushed it?"},
                ],
            },
        ),
        (
            "synthetic: code-heavy",
            {
                "model": model,
                "system": "You are a senior engineer reviewing code.",
                "messages": [
                    {
                        "role": "user",
                        "content": "Refactor this file, keep the behaviour:\n\n```\n"
                        + code
                        + "\n```",
                    }
                ],
            },
        ),
        (
            "synthetic: JSON-heavy tool result",
            {
                "model": model,
                "tools": _TOOLS_SMALL,
                "messages": [
                    {"role": "user", "content": "Which deployments are unhealthy?"},
                    {
                        "role": "assistant",
                        "content": [
                            {
                                "type": "tool_use",
                                "id": "toolu_01",
                                "name": "Bash",
                                "input": {"command": "kubectl get deploy -o json"},
                            }
                        ],
                    },
                    {
                        "role": "user",
                        "content": [
                            {"type": "tool_result", "tool_use_id": "toolu_01", "content": doc}
                        ],
                    },
                ],
            },
        ),
        (
            "synthetic: German",
            {
                "model": model,
                "messages": [
                    {"role": "user", "content": _sentences(_GERMAN, 30, "de")},
                ],
            },
        ),
        (
            "synthetic: Russian",
            {
                "model": model,
                "messages": [
                    {"role": "user", "content": _sentences(_RUSSIAN, 25, "ru")},
                ],
            },
        ),
        (
            "synthetic: Chinese",
            {
                "model": model,
                "messages": [
                    {"role": "user", "content": _sentences(_CHINESE, 30, "zh", "")},
                ],
            },
        ),
        (
            "synthetic: Japanese",
            {
                "model": model,
                "messages": [
                    {"role": "user", "content": _sentences(_JAPANESE, 30, "ja", "")},
                ],
            },
        ),
    ]


def fixtureRequests() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in sorted(FIXTURES.glob("*.json")):
        body = json.loads(path.read_text())["body"]
        if isinstance(body, dict) and "messages" in body:
            name = path.stem.replace("-POST-v1_messages", "").replace("_count_tokens", " (ct)")
            out.append((name, fillPlaceholders(body)))
    return out


# ---------------------------------------------------------------------------------------
# Estimators
# ---------------------------------------------------------------------------------------


class BeforeCalibration:
    """The rules ccproxy/translate/tokens.py used before this script calibrated it
    (kept to show the difference; ccproxy's own estimator is what is measured)."""

    PIECE = re.compile(r"[A-Za-z]+|\d{1,3}|\s+|[^\sA-Za-z\d]")
    PER_MESSAGE = 4
    PER_TOOL = 8
    PER_IMAGE = 1000

    def estimate(self, request: dict[str, Any]) -> int:
        total = 0
        for message in request.get("messages", ()):
            total += self.PER_MESSAGE + self.content(message.get("content"))
            for call in message.get("tool_calls", ()):
                function = call.get("function", {})
                total += self.PER_TOOL + self.text(function.get("name", ""))
                total += self.text(function.get("arguments", ""))
        for tool in request.get("tools", ()):
            total += self.PER_TOOL + self.text(orjson.dumps(tool.get("function", {})).decode())
        return max(total, 1)

    def content(self, content: Any) -> int:
        if isinstance(content, str):
            return self.text(content)
        total = 0
        for part in content or ():
            if part.get("type") == "text":
                total += self.text(part.get("text", ""))
            else:
                total += self.PER_IMAGE
        return total

    def text(self, text: str) -> int:
        total = 0
        for match in self.PIECE.finditer(text):
            piece = match.group()
            if piece[0].isalpha():
                total += 1 + (len(piece) - 1) // 6
            elif piece[0].isspace():
                total += 0 if len(piece) == 1 else 1
            else:
                total += 1
        return total


BEFORE = BeforeCalibration()


# ---------------------------------------------------------------------------------------
# Processes
# ---------------------------------------------------------------------------------------


def freePort() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def httpJSON(url: str, body: Any | None = None, timeout: float = 600) -> tuple[int, Any]:
    data = None if body is None else orjson.dumps(body)
    request = urllib.request.Request(url, data=data, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        with error:
            raw = error.read()
        try:
            return error.code, json.loads(raw)
        except ValueError:
            return error.code, raw.decode(errors="replace")


def waitHTTP(url: str, process: subprocess.Popen[bytes], what: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with status {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (OSError, urllib.error.HTTPError):
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{what} not ready after {seconds:.0f} s ({url})")


@contextlib.contextmanager
def running(
    command: list[str], url: str, what: str, log: Path, seconds: float = 60, **kwargs: Any
) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, **kwargs)
    try:
        try:
            waitHTTP(url, process, what, seconds)
        except RuntimeError as error:
            tail = log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{error}\n--- {log} ---\n{tail}") from None
        yield process
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def llamaCommand(binary: str, models: Path, port: int, ctx: int, threads: int) -> list[str]:
    return [
        binary,
        "-m",
        str(models / MODEL_FILE),
        "-a",
        "smollm2",
        "--chat-template-file",
        str(models / TEMPLATE_FILE),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "-c",
        str(ctx),
        "-np",
        "1",
        "-t",
        str(threads),
        "--offline",
        # SmolLM2 was trained with 8192 positions and llama-server caps the context
        # there; prompt processing for counting does not care, so lift the cap.
        "--override-kv",
        f"llama.context_length=int:{max(ctx, 8192)}",
        # Reuse cached chunks after a difference (KV shifting), not just the common
        # prefix: consecutive fixtures differ in a few places only.
        "--cache-reuse",
        "256",
    ]


PROXY_CONFIG = """\
listen: "tcp:{port}:interface=127.0.0.1"
upstreams:
  llama:
    url: "http://127.0.0.1:{upstream}/v1"
    timeout: 1800
    retries: 0
    vision: false
models:
  "*": llama/smollm2
"""


# ---------------------------------------------------------------------------------------
# Measuring
# ---------------------------------------------------------------------------------------


@dataclass
class Row:
    name: str
    bodyBytes: int
    proxy: int | None = None  # ccproxy's /count_tokens answer
    current: int | None = None  # ccproxy's estimateTokens on the translated body
    before: int | None = None  # the rules before the calibration, same body
    actual: int | None = None  # usage through ccproxy: input + cache read (+ creation)
    tokenized: int | None = None  # llama-server's /apply-template + /tokenize
    others: dict[str, int] = field(default_factory=dict)  # other vocabularies, same prompt
    error: str = ""

    def reference(self, name: str) -> int | None:
        return self.actual if name == ACTUAL else self.others.get(name)


ACTUAL = "SmolLM2 (llama-server usage)"
OTHER_VOCABS = {"qwen2": "Qwen2 vocab", "llama-bpe": "Llama 3 vocab"}


def countWith(tokenize: str, vocab: Path, text: str) -> int:
    """Tokens of `text` (special tokens parsed, no BOS) with llama-tokenize --vocab-only."""
    done = subprocess.run(
        [tokenize, "-m", str(vocab), "--stdin", "--ids", "--log-disable", "--no-bos"],
        input=text.encode(),
        capture_output=True,
        timeout=120,
        check=True,
    )
    return len(json.loads(done.stdout.decode().strip().splitlines()[-1]))


def measure(
    name: str,
    body: dict[str, Any],
    proxy: str,
    llama: str,
    translate: Callable[[dict[str, Any]], dict[str, Any]],
    vocabs: dict[str, tuple[str, Path]],
) -> Row:
    row = Row(name, len(orjson.dumps(body)))
    counted = {k: v for k, v in body.items() if k not in ("stream", "max_tokens")}
    status, answer = httpJSON(f"{proxy}/v1/messages/count_tokens", counted, timeout=60)
    if status != 200:
        row.error = f"count_tokens {status}: {json.dumps(answer)[:300]}"
        return row
    row.proxy = answer["input_tokens"]

    sent = translate(counted)  # what ccproxy sends upstream, as count_tokens sees it
    row.current = estimateTokens(sent)
    row.before = BEFORE.estimate(sent)
    status, rendered = httpJSON(
        f"{llama}/apply-template", {k: sent[k] for k in ("messages", "tools") if k in sent}
    )
    if status == 200:
        prompt = rendered["prompt"]
        status, tokens = httpJSON(
            f"{llama}/tokenize", {"content": prompt, "add_special": True, "parse_special": True}
        )
        if status == 200:
            row.tokenized = len(tokens["tokens"])
        for label, (tokenize, vocab) in vocabs.items():
            row.others[label] = countWith(tokenize, vocab, prompt)

    # Without auto mode's `safeguards`, as Claude Code sends it again once ccproxy
    # has refused them (no upstream can run that check).
    resent = {k: v for k, v in body.items() if k != "safeguards"}
    status, answer = httpJSON(
        f"{proxy}/v1/messages",
        {**resent, "max_tokens": 1, "stream": False, "temperature": 0},
        timeout=1800,
    )
    if status != 200:
        row.error = f"messages {status}: {json.dumps(answer)[:300]}"
        return row
    usage = answer["usage"]
    row.actual = (
        usage["input_tokens"]
        + (usage.get("cache_read_input_tokens") or 0)
        + (usage.get("cache_creation_input_tokens") or 0)
    )
    return row


def pct(estimate: int | None, reference: int | None) -> float | None:
    if estimate is None or not reference:
        return None
    return 100.0 * (estimate - reference) / reference


def summarize(rows: list[Row], attribute: str, reference: str) -> dict[str, float] | None:
    pairs = [(getattr(r, attribute), r.reference(reference)) for r in rows]
    pairs = [(e, a) for e, a in pairs if e is not None and a]
    if not pairs:
        return None
    errors = [100.0 * (e - a) / a for e, a in pairs]
    return {
        "n": len(errors),
        "median_abs": statistics.median(abs(e) for e in errors),
        "mean_abs": statistics.fmean(abs(e) for e in errors),
        "worst": max(errors, key=abs),
        "bias": statistics.fmean(errors),
        "aggregate": 100.0 * (sum(e for e, _ in pairs) / sum(a for _, a in pairs) - 1),
    }


def fmtPct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.1f}%"


NON_ENGLISH = ("German", "Russian", "Chinese", "Japanese")


def groups(rows: list[Row]) -> dict[str, list[Row]]:
    synthetic = [r for r in rows if r.name.startswith("synthetic")]
    foreign = [r for r in synthetic if r.name.endswith(NON_ENGLISH)]
    return {
        "all": rows,
        "Claude Code fixtures": [r for r in rows if r not in synthetic],
        "synthetic, English and code": [r for r in synthetic if r not in foreign],
        "synthetic, non-English": foreign,
    }


def report(rows: list[Row], out: Any = sys.stdout) -> None:
    def p(line: str = "") -> None:
        print(line, file=out)

    p(
        "| request | body bytes | actual | ccproxy estimate | error "
        "| before calibration | its error |"
    )
    p("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        if r.error:
            p(f"| {r.name} | {r.bodyBytes} | failed: {r.error[:160]} | {r.proxy} | | | |")
            continue
        p(
            f"| {r.name} | {r.bodyBytes} | {r.actual} "
            f"| {r.proxy} | {fmtPct(pct(r.proxy, r.actual))} "
            f"| {r.before} | {fmtPct(pct(r.before, r.actual))} |"
        )
    p()
    p("actual = usage.input_tokens + cache_read_input_tokens through ccproxy from llama-server")
    p("(SmolLM2-135M's tokenizer, Qwen2.5 chat template); error = (estimate - actual) / actual.")
    p()
    references = [ACTUAL] + [
        label for label in OTHER_VOCABS.values() if any(label in r.others for r in rows)
    ]
    p(
        "| reference | set | estimator | n | median abs error | mean abs error | worst "
        "| mean signed bias | sum(estimate)/sum(actual) - 1 |"
    )
    p("|---|---|---|---:|---:|---:|---:|---:|---:|")
    for reference in references:
        for group, members in groups(rows).items():
            for label, attribute in (("ccproxy", "proxy"), ("before calibration", "before")):
                s = summarize(members, attribute, reference)
                if s is None:
                    continue
                p(
                    f"| {reference} | {group} | {label} | {s['n']} | {s['median_abs']:.1f}% "
                    f"| {s['mean_abs']:.1f}% | {s['worst']:+.1f}% | {s['bias']:+.1f}% "
                    f"| {s['aggregate']:+.1f}% |"
                )
    p()
    mismatched = [r for r in rows if r.actual and r.tokenized and r.actual != r.tokenized]
    unchecked = [r for r in rows if r.actual and not r.tokenized]
    replica = [r for r in rows if r.proxy is not None and r.current != r.proxy]
    verdict = "yes, for every request" if not mismatched else f"NO for {len(mismatched)}"
    p(f"usage through ccproxy == llama-server's own count of the rendered prompt: {verdict}")
    for r in mismatched:
        p(f"  {r.name}: usage {r.actual}, tokenized {r.tokenized}")
    for r in unchecked:
        p(f"  {r.name}: not cross-checked (/apply-template failed)")
    verdict = "yes, for every request" if not replica else f"NO for {len(replica)}"
    p(f"estimateTokens on the translated body == ccproxy's /count_tokens: {verdict}")
    for r in replica:
        p(f"  {r.name}: /count_tokens {r.proxy}, estimateTokens {r.current}")


def cacheOrder(
    translate: Callable[[dict[str, Any]], dict[str, Any]],
) -> Callable[[tuple[str, dict[str, Any]]], str]:
    """Sort key: the translated request in the order chat templates render it."""

    def key(item: tuple[str, dict[str, Any]]) -> str:
        sent = translate({k: v for k, v in item[1].items() if k != "stream"})
        messages = sent["messages"]
        system = [m for m in messages[:1] if m.get("role") in ("system", "developer")]
        rest = messages[len(system) :]
        return orjson.dumps([system, sent.get("tools", []), rest]).decode()

    return key


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m bench.count_tokens_accuracy",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--ctx", type=int, default=32768, help="llama-server context (-c)")
    ap.add_argument("--threads", type=int, default=2, help="llama-server threads (-t)")
    ap.add_argument("--only", default="", help="only requests whose name contains this")
    ap.add_argument("--json", default="", help="also write the rows to this JSON file")
    ap.add_argument("--python", default=sys.executable, help="interpreter for ccproxy")
    ap.add_argument(
        "--vocab-dir",
        default="",
        help="also count the same rendered prompts with the Qwen2 and Llama 3 vocabularies "
        "found here (llama.cpp's models/ggml-vocab-{qwen2,llama-bpe}.gguf); needs llama-tokenize",
    )
    ap.add_argument(
        "--tokenize",
        default="",
        help="llama-tokenize binary for --vocab-dir (default: beside llama-server)",
    )
    args = ap.parse_args(argv)

    binary = os.environ.get("CCPROXY_LLAMA_SERVER", "")
    modelDir = os.environ.get("CCPROXY_LLAMA_MODEL_DIR", "")
    if not binary or not modelDir:
        print(
            "set CCPROXY_LLAMA_SERVER (the llama-server binary) and CCPROXY_LLAMA_MODEL_DIR "
            f"(the folder with {MODEL_FILE} and {TEMPLATE_FILE}); "
            "docs/real-upstream.md says how to build them",
            file=sys.stderr,
        )
        return 2
    models = Path(modelDir)
    needed = [Path(binary), models / MODEL_FILE, models / TEMPLATE_FILE]
    vocabs: dict[str, tuple[str, Path]] = {}
    if args.vocab_dir:
        tokenize = args.tokenize or str(Path(binary).with_name("llama-tokenize"))
        needed.append(Path(tokenize))
        for name, label in OTHER_VOCABS.items():
            vocabs[label] = (tokenize, Path(args.vocab_dir) / f"ggml-vocab-{name}.gguf")
            needed.append(vocabs[label][1])
    missing = [str(path) for path in needed if not path.is_file()]
    if missing:
        print(f"missing: {', '.join(missing)}", file=sys.stderr)
        return 2

    # A SIGTERM must still stop llama-server and ccproxy (the `running` blocks).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sys.path.insert(0, str(ROOT))
    from ccproxy.config import Config
    from ccproxy.translate.request import toOpenAI

    requests = fixtureRequests() + syntheticRequests()
    if args.only:
        requests = [(n, b) for n, b in requests if args.only in n]

    work = Path(tempfile.mkdtemp(prefix="ccproxy-count-tokens-"))
    rows: list[Row] = []
    llamaPort, proxyPort = freePort(), freePort()
    config = work / "ccproxy.yaml"
    config.write_text(PROXY_CONFIG.format(port=proxyPort, upstream=llamaPort))
    parsed = Config.fromPath(str(config))
    profile = parsed.upstreams["llama"].profile

    def translate(body: dict[str, Any]) -> dict[str, Any]:
        return toOpenAI(
            body, model="smollm2", profile=profile, defaultMaxTokens=parsed.defaultMaxTokens
        )

    llama = f"http://127.0.0.1:{llamaPort}"
    proxy = f"http://127.0.0.1:{proxyPort}"
    twistd = [
        args.python,
        "-c",
        "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()",
        "-n",
        "--pidfile=",
        "ccproxy",
        "--config",
        str(config),
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    log(
        f"llama-server -c {args.ctx} -t {args.threads} on :{llamaPort}, ccproxy on "
        f":{proxyPort}; {len(requests)} requests; logs in {work}"
    )
    try:
        with (
            running(
                llamaCommand(binary, models, llamaPort, args.ctx, args.threads),
                f"{llama}/health",
                "llama-server",
                work / "llama-server.log",
            ),
            running(twistd, f"{proxy}/healthz", "ccproxy", work / "ccproxy.log", env=env, cwd=work),
        ):
            # Measured in the order of what llama-server will see (system, tools, turns),
            # so that each prompt shares as long a prefix as possible with the one before
            # and the KV cache spares most of the prompt processing; reported in file order.
            byName: dict[str, Row] = {}
            for i, (name, body) in enumerate(sorted(requests, key=cacheOrder(translate)), 1):
                started = time.monotonic()
                row = byName[name] = measure(name, body, proxy, llama, translate, vocabs)
                log(
                    f"[{i}/{len(requests)}] {name}: estimate {row.proxy}, actual {row.actual}"
                    f" ({time.monotonic() - started:.1f} s){' ' + row.error if row.error else ''}"
                )
            rows = [byName[name] for name, _ in requests]
    except (RuntimeError, OSError, subprocess.SubprocessError) as error:
        log(f"could not run: {error}")
        return 2
    report(rows)
    if args.json:
        Path(args.json).write_text(json.dumps([r.__dict__ for r in rows], indent=1))
    if any(r.error for r in rows):
        log(f"some requests failed; logs kept in {work}")
        return 1
    shutil.rmtree(work, ignore_errors=True)
    return 0


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
