"""Input tokens per request with 100 MCP tools, with tool search and without.

    python -m bench.toolsearch_tokens

ccproxy's estimate (`ccproxy.translate.tokens`) of the upstream request it makes
from the Claude Code 2.1.330 requests captured with an MCP server of 100 tools
(tests/fixtures/claude-code/requests/070-073):

- tool search off (`ENABLE_TOOL_SEARCH=false`): every MCP schema on every request;
- tool search on (Claude Code's default): Claude Code sends only the schemas its
  `ToolSearch` has loaded, each with `defer_loading: true`; ccproxy today (deferred
  tools held back until a `tool_reference` loads them) and as before (every tool
  sent, `defer_loading` ignored);
- a client of Anthropic's server-side search (`tool_search_tool_regex_20251119`)
  marking the same 100 tools `defer_loading: true`: ccproxy runs the search, so
  held back, against every schema sent.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from ccproxy.translate.dialect import Profile
from ccproxy.translate.request import toOpenAI
from ccproxy.translate.tokens import estimateTokens

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "claude-code" / "requests"
SEARCH = {"type": "tool_search_tool_regex_20251119", "name": "tool_search_tool_regex"}


def fixture(number: str) -> dict[str, Any]:
    (path,) = FIXTURES.glob(f"{number}-*.json")
    body: dict[str, Any] = json.loads(path.read_text())["body"]
    return body


def measure(body: dict[str, Any]) -> tuple[int, int]:
    """(tools defined upstream, estimated input tokens) for `body`."""
    sent = toOpenAI(body, model="up-model", profile=Profile(), defaultMaxTokens=32000)
    return len(sent.get("tools", [])), estimateTokens(sent)


def undeferred(body: dict[str, Any]) -> dict[str, Any]:
    """`body` as ccproxy read it before: `defer_loading` ignored."""
    tools = [{k: v for k, v in t.items() if k != "defer_loading"} for t in body["tools"]]
    return {**body, "tools": tools}


def serverSearch(body: dict[str, Any]) -> dict[str, Any]:
    """`body` with its MCP tools deferred and Anthropic's regex search offered."""
    tools = [
        {**t, "defer_loading": True} if t["name"].startswith("mcp__") else t for t in body["tools"]
    ]
    return {**body, "tools": [SEARCH, *tools]}


def rows() -> list[tuple[str, dict[str, Any]]]:
    off = fixture("073")
    return [
        ("tool search off (073), every request", off),
        ("tool search on, turn 1 (070), ccproxy now", fixture("070")),
        ("tool search on, turn 1 (070), ccproxy before", undeferred(fixture("070"))),
        ("tool search on, turn 2 (071), ccproxy now", fixture("071")),
        ("tool search on, turn 2 (071), ccproxy before", undeferred(fixture("071"))),
        ("server-side search, 100 deferred, ccproxy now", serverSearch(off)),
        ("server-side search, 100 deferred, all sent", undeferred(serverSearch(off))),
    ]


def main(argv: list[str]) -> None:
    print(f"{'request':<48} {'tools upstream':>14} {'input tokens':>12}")
    for label, body in rows():
        tools, tokens = measure(body)
        print(f"{label:<48} {tools:>14} {tokens:>12}")


if __name__ == "__main__":
    main(sys.argv[1:])
