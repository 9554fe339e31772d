"""Claude-Code-shaped Messages API requests, generated deterministically.

Each body holds what Claude Code sends on a working session: ``system`` as text
blocks with ``cache_control``, ~15 tools with JSON-schema ``input_schema`` (Task,
Bash, Glob, Grep, Read, Edit, MultiEdit, Write, TodoWrite, ...), a multi-turn
conversation of assistant ``tool_use`` turns answered by user ``tool_result``
turns (string and block-list contents, some ``is_error``), a rolling
``cache_control`` breakpoint on the last turn, ``metadata.user_id``,
``max_tokens: 32000`` and ``temperature: 1``. Sizes spread evenly over
``min_kb``..``max_kb`` (36-60 KB by default). Same seed, same bytes.

``python -m bench.corpus DIR`` writes the bodies out for inspection.
"""

from __future__ import annotations

import json
import os
import random
import sys

SEED = 20251124

# Claude Code's headers (a key is sent both ways; ccproxy accepts either).
HEADERS = {
    "Accept": "application/json",
    "Content-Type": "application/json",
    "User-Agent": "claude-cli/2.0.37 (external, cli)",
    "X-App": "cli",
    "Anthropic-Version": "2023-06-01",
    "Anthropic-Beta": "claude-code-20250219,interleaved-thinking-2025-05-14,"
    "fine-grained-tool-streaming-2025-05-14",
    "Anthropic-Dangerous-Direct-Browser-Access": "true",
    "X-Stainless-Lang": "js",
    "X-Stainless-Package-Version": "0.60.0",
    "X-Stainless-Os": "Linux",
    "X-Stainless-Arch": "x64",
    "X-Stainless-Runtime": "node",
    "X-Stainless-Runtime-Version": "v22.11.0",
    "X-Stainless-Retry-Count": "0",
    "X-Stainless-Timeout": "600",
}

_GUIDANCE = [
    "You help people with software engineering work from a terminal.",
    "Use the tools below to read, search and change the user's code.",
    "Keep answers short; the terminal renders GitHub-flavoured markdown.",
    "Never invent URLs; only use ones the user gave or that are in the code.",
    "Prefer editing existing files over creating new ones.",
    "Do not add comments unless the user asks for them.",
    "Check the project's lint and test commands before saying a task is done.",
    "When several independent reads are needed, call the tools in parallel.",
    "Refer to code as path:line so the user can jump to it.",
    "Track multi-step work with the TodoWrite tool and keep it current.",
    "Mark a todo completed as soon as it is done, one at a time.",
    "Ask before committing; never push unless told to.",
    "Paths passed to tools must be absolute, not relative.",
    'Quote paths with spaces in shell commands, e.g. "my dir/file.txt".',
    "Prefer Grep and Glob over find and grep in Bash.",
    "An Edit fails when old_string is not unique; give more context then.",
    "Results longer than 30000 characters are cut; read in ranges.",
    "Hooks may run shell commands on events; treat their output as the user's.",
    "Security: help with defensive tasks only.",
    "Be factual; say when something is uncertain instead of guessing.",
    "Explain non-trivial shell commands before running them.",
    "Tests that fail for unrelated reasons should be reported, not silenced.",
    "Use the Task tool for open-ended searches to save context.",
    "Keep the user's code style: naming, imports, formatting.",
]

_CODE = [
    "import asyncio",
    "import json",
    "from dataclasses import dataclass, field",
    "from typing import Any",
    "",
    "CACHE: dict[str, Any] = {}",
    "",
    "@dataclass",
    "class Token:",
    "    value: str",
    "    expires_at: float",
    "    scopes: list[str] = field(default_factory=list)",
    "",
    "def parse_token(raw: str) -> Token:",
    "    data = json.loads(raw)",
    '    return Token(data["value"], data["expires_at"], data.get("scopes", []))',
    "",
    "def store(user, scope, raw):",
    '    key = f"{user}:{scope}"',
    "    CACHE[key] = raw  # parsed later",
    "",
    "async def refresh(client, user, scope):",
    '    raw = await client.post("/oauth/token", json={"user": user})',
    "    store(user, scope, raw)",
    '    return parse_token(CACHE[f"{user}:{scope}"])',
    "",
    "def win_path(p: str) -> str:",
    '    return p.replace("/", "\\\\")  # C:\\Users\\dev',
]

# name, {property: (kind, description)}, required, sentences of description
_TOOLS = [
    (
        "Task",
        {
            "description": ("string", "A short (3-5 word) description of the task"),
            "prompt": ("string", "The task for the agent to perform"),
            "subagent_type": ("string", "The type of specialized agent to use"),
        },
        ["description", "prompt", "subagent_type"],
        10,
    ),
    (
        "Bash",
        {
            "command": ("string", "The command to execute"),
            "timeout": ("number", "Optional timeout in milliseconds (max 600000)"),
            "description": ("string", "What this command does, in 5-10 words"),
            "run_in_background": ("boolean", "Run the command in the background"),
        },
        ["command"],
        16,
    ),
    (
        "Glob",
        {
            "pattern": ("string", "The glob pattern to match files against"),
            "path": ("string", "The directory to search in; defaults to the working directory"),
        },
        ["pattern"],
        4,
    ),
    (
        "Grep",
        {
            "pattern": ("string", "The regular expression to search for"),
            "path": ("string", "File or directory to search in"),
            "glob": ("string", 'Glob to filter files, e.g. "*.{ts,tsx}"'),
            "output_mode": ("enum", "content, files_with_matches or count"),
            "-i": ("boolean", "Case insensitive search"),
            "-n": ("boolean", "Show line numbers"),
            "-A": ("number", "Lines to show after each match"),
            "head_limit": ("number", "Limit output to the first N lines"),
            "multiline": ("boolean", "Let . match newlines"),
        },
        ["pattern"],
        7,
    ),
    ("ExitPlanMode", {"plan": ("string", "The plan to show the user for approval")}, ["plan"], 3),
    (
        "Read",
        {
            "file_path": ("string", "The absolute path of the file to read"),
            "offset": ("number", "The line number to start reading from"),
            "limit": ("number", "The number of lines to read"),
        },
        ["file_path"],
        6,
    ),
    (
        "Edit",
        {
            "file_path": ("string", "The absolute path of the file to modify"),
            "old_string": ("string", "The text to replace"),
            "new_string": ("string", "The text to replace it with"),
            "replace_all": ("boolean", "Replace every occurrence (default false)"),
        },
        ["file_path", "old_string", "new_string"],
        6,
    ),
    (
        "MultiEdit",
        {
            "file_path": ("string", "The absolute path of the file to modify"),
            "edits": ("edits", "Edits applied one after the other"),
        },
        ["file_path", "edits"],
        5,
    ),
    (
        "Write",
        {
            "file_path": ("string", "The absolute path of the file to write"),
            "content": ("string", "The content to write"),
        },
        ["file_path", "content"],
        4,
    ),
    (
        "NotebookEdit",
        {
            "notebook_path": ("string", "Absolute path of the notebook"),
            "cell_id": ("string", "The ID of the cell to edit"),
            "new_source": ("string", "The new source of the cell"),
            "edit_mode": ("enum", "replace, insert or delete"),
        },
        ["notebook_path", "new_source"],
        3,
    ),
    (
        "WebFetch",
        {
            "url": ("string", "The URL to fetch"),
            "prompt": ("string", "What to extract from the page"),
        },
        ["url", "prompt"],
        4,
    ),
    ("TodoWrite", {"todos": ("todos", "The updated todo list")}, ["todos"], 14),
    (
        "WebSearch",
        {
            "query": ("string", "The search query"),
            "allowed_domains": ("array", "Only results from these domains"),
            "blocked_domains": ("array", "Never results from these domains"),
        },
        ["query"],
        4,
    ),
    (
        "BashOutput",
        {
            "bash_id": ("string", "The ID of the background shell"),
            "filter": ("string", "Regular expression to filter output lines"),
        },
        ["bash_id"],
        3,
    ),
    (
        "KillShell",
        {"shell_id": ("string", "The ID of the background shell to kill")},
        ["shell_id"],
        2,
    ),
]

_ENUMS = {
    "output_mode": ["content", "files_with_matches", "count"],
    "edit_mode": ["replace", "insert", "delete"],
}


def _para(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(_GUIDANCE) for _ in range(n))


def _prop(name: str, kind: str, desc: str) -> dict:
    if kind == "array":
        return {"type": "array", "items": {"type": "string"}, "description": desc}
    if kind == "enum":
        return {"type": "string", "enum": _ENUMS[name], "description": desc}
    if kind == "todos":
        return {
            "type": "array",
            "description": desc,
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["content", "status", "activeForm"],
                "properties": {
                    "content": {"type": "string", "minLength": 1},
                    "status": {"type": "string", "enum": ["pending", "in_progress", "completed"]},
                    "activeForm": {"type": "string", "minLength": 1},
                },
            },
        }
    if kind == "edits":
        return {
            "type": "array",
            "minItems": 1,
            "description": desc,
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["old_string", "new_string"],
                "properties": {
                    "old_string": {"type": "string"},
                    "new_string": {"type": "string"},
                    "replace_all": {"type": "boolean", "default": False},
                },
            },
        }
    return {"type": kind, "description": desc}


def _tools(rng: random.Random) -> list[dict]:
    tools = []
    for name, props, required, sentences in _TOOLS:
        desc = _para(rng, sentences)
        if name in ("Bash", "Grep"):
            desc += "\n\nUsage notes:\n" + "\n".join(
                f"  - {rng.choice(_GUIDANCE)}" for _ in range(6)
            )
        tools.append(
            {
                "name": name,
                "description": desc,
                "input_schema": {
                    "type": "object",
                    "properties": {k: _prop(k, kind, d) for k, (kind, d) in props.items()},
                    "required": required,
                    "additionalProperties": False,
                    "$schema": "http://json-schema.org/draft-07/schema#",
                },
            }
        )
    return tools


def _tool_id(rng: random.Random) -> str:
    alphabet = "ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz0123456789"
    return "toolu_01" + "".join(rng.choice(alphabet) for _ in range(22))


def _listing(first: int, n: int) -> str:
    return "\n".join(f"{first + i:6d}\u2192{_CODE[(first + i) % len(_CODE)]}" for i in range(n))


def _exchange(rng: random.Random, k: int) -> list[dict]:
    """An assistant turn calling one tool, and the user turn with its result."""
    tid = _tool_id(rng)
    kind = k % 5
    if kind == 0:
        use = {"name": "Read", "input": {"file_path": f"/home/dev/app/auth/mod{k}.py"}}
        result: object = _listing(1 + 29 * k, rng.randint(40, 110))
        extra = {}
    elif kind == 1:
        use = {
            "name": "Grep",
            "input": {
                "pattern": r"def (store|refresh)\(",
                "path": "/home/dev/app",
                "output_mode": "content",
                "-n": True,
            },
        }
        result = "\n".join(
            f"/home/dev/app/auth/mod{rng.randint(0, 30)}.py:{rng.randint(1, 300)}:"
            f"{rng.choice(_CODE)}"
            for _ in range(rng.randint(12, 40))
        )
        extra = {}
    elif kind == 2:
        use = {
            "name": "Bash",
            "input": {
                "command": "cd /home/dev/app && python -m pytest -q tests/test_auth.py",
                "description": "Run the auth tests",
                "timeout": 120000,
            },
        }
        lines = "\n".join(
            f"tests/test_auth.py::test_case_{i} {'PASSED' if rng.random() > 0.15 else 'FAILED'}"
            for i in range(rng.randint(20, 60))
        )
        result = [{"type": "text", "text": lines + "\nE   KeyError: 'expires_at'\n"}]
        extra = {"is_error": rng.random() < 0.4}
    elif kind == 3:
        use = {
            "name": "TodoWrite",
            "input": {
                "todos": [
                    {
                        "content": rng.choice(_GUIDANCE)[:50],
                        "status": rng.choice(["pending", "in_progress", "completed"]),
                        "activeForm": f"Working on step {j}",
                    }
                    for j in range(rng.randint(3, 6))
                ]
            },
        }
        result = (
            "Todos have been modified successfully. Ensure that you continue to use the todo "
            "list to track your progress. Please proceed with the current tasks if applicable"
        )
        extra = {}
    else:
        use = {
            "name": "Edit",
            "input": {
                "file_path": f"/home/dev/app/auth/mod{k}.py",
                "old_string": rng.choice(_CODE[13:20]),
                "new_string": rng.choice(_CODE[20:]),
            },
        }
        result = [
            {
                "type": "text",
                "text": f"The file /home/dev/app/auth/mod{k}.py has been updated. "
                "Here's the result of running `cat -n` on a snippet:\n"
                + _listing(10 + k, rng.randint(8, 20)),
            }
        ]
        extra = {}
    assistant = {
        "role": "assistant",
        "content": [
            {"type": "text", "text": _para(rng, rng.randint(1, 3))},
            {"type": "tool_use", "id": tid, **use},
        ],
    }
    user = {
        "role": "user",
        "content": [{"type": "tool_result", "tool_use_id": tid, "content": result, **extra}],
    }
    return [assistant, user]


def build(
    rng: random.Random, index: int, target_bytes: int, model: str, max_pairs: int = 1000
) -> dict:
    """One request body, grown turn by turn to about target_bytes."""
    system = [
        {
            "type": "text",
            "text": "You are Claude Code, Anthropic's official CLI for Claude.",
            "cache_control": {"type": "ephemeral"},
        },
        {
            "type": "text",
            "text": "\n\n".join(_para(rng, 7) for _ in range(10))
            + "\n\n<env>\nWorking directory: /home/dev/app\nIs directory a git repo: Yes\n"
            "Platform: linux\nOS Version: Linux 6.8.0\nToday's date: 2025-11-24\n</env>",
            "cache_control": {"type": "ephemeral"},
        },
    ]
    messages: list[dict] = [
        {
            "role": "user",
            "content": [
                {
                    "type": "text",
                    "text": "<system-reminder>\nAs you answer, you can use this context:\n"
                    "# claudeMd\n" + _para(rng, 8) + "\n</system-reminder>",
                },
                {
                    "type": "text",
                    "text": f"test_refresh_token fails with KeyError 'expires_at' (run {index}). "
                    "Find the cause and fix it.",
                },
            ],
        }
    ]
    body = {
        "model": model,
        "max_tokens": 32000,
        "temperature": 1,
        "system": system,
        "messages": messages,
        "tools": _tools(rng),
        "metadata": {
            "user_id": f"user_{rng.getrandbits(256):064x}_account__session_"
            f"{index:08x}-1111-4222-8333-{index:012x}"
        },
        "stream": False,
    }
    # Grow by whole exchanges while the body stays under the target (the
    # closing turns below add ~300 bytes).
    size = len(json.dumps(body, ensure_ascii=False).encode())
    for k in range(max_pairs):
        pair = _exchange(rng, k)
        grown = size + len(json.dumps(pair, ensure_ascii=False).encode()) + 2
        if k >= 4 and grown > target_bytes - 400:
            break
        messages.extend(pair)
        size = grown
    messages.append(
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "The tests still fail; let me look at the cache writer."}
            ],
        }
    )
    messages.append(
        {
            "role": "user",
            "content": [
                {
                    "type": "text",
                    "text": "Go ahead and fix it in place.",
                    "cache_control": {"type": "ephemeral"},
                }
            ],
        }
    )
    return body


def bodies(
    n: int = 6,
    min_kb: int = 36,
    max_kb: int = 60,
    stream: bool = False,
    model: str = "claude-sonnet-4-5-20250929",
    seed: int = SEED,
) -> list[bytes]:
    """n request bodies (UTF-8 JSON) spread over min_kb..max_kb."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        target = 1024 * (min_kb + (max_kb - min_kb) * i // max(1, n - 1))
        body = build(rng, i, target, model)
        body["stream"] = stream
        out.append(json.dumps(body, ensure_ascii=False).encode())
    return out


def large_body(target_bytes: int, model: str, count_tokens: bool = False) -> bytes:
    """One body of about target_bytes, grown without a cap on its turns (30 MiB is
    some 16,000 tool_use/tool_result pairs): for `/v1/messages`, not streamed, or
    with `count_tokens` the fields Claude Code sends to `/v1/messages/count_tokens`
    (model, system, messages, tools)."""
    body = build(random.Random(SEED), 0, target_bytes, model, max_pairs=sys.maxsize)
    if count_tokens:
        body = {k: body[k] for k in ("model", "system", "messages", "tools")}
    return json.dumps(body, ensure_ascii=False).encode()


def main() -> None:
    outdir = sys.argv[1] if len(sys.argv) > 1 else "bench-corpus"
    os.makedirs(outdir, exist_ok=True)
    for stream in (False, True):
        for i, b in enumerate(bodies(stream=stream)):
            name = os.path.join(outdir, f"messages-{i}-{'stream' if stream else 'json'}.json")
            with open(name, "wb") as f:
                f.write(b)
            print(name, len(b))


if __name__ == "__main__":
    main()
