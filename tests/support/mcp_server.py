"""A stdio MCP server with many tools, for Claude Code's tool search (test_claude_code.py).

    python tests/support/mcp_server.py [--tools N]

Newline-delimited JSON-RPC 2.0 on stdin/stdout, standard library only: it answers
`initialize`, `tools/list` (N tools, 100 by default, each with a description and a
few described parameters, like a real MCP server's) and `tools/call`, whose text
names the tool and its arguments. One of them, `weather_forecast`, is the tool a
scripted model finds and calls; its answer holds `FORECAST_SECRET`.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

FORECAST_SECRET = "Sunny, 23 degrees, wind ABRICOT-9 from the west."

_AREAS = [
    ("github", "a GitHub repository"),
    ("jira", "a Jira project"),
    ("slack", "a Slack workspace"),
    ("sentry", "a Sentry organization"),
    ("grafana", "a Grafana instance"),
    ("postgres", "a PostgreSQL database"),
    ("s3", "an S3 bucket"),
    ("calendar", "a shared calendar"),
    ("billing", "the billing system"),
    ("crm", "the customer relationship manager"),
]
_ACTIONS = [
    ("list", "Lists the {what} items of {area}, newest first, with paging."),
    ("get", "Fetches one item of {area} by its identifier, with all its fields."),
    ("create", "Creates a new item in {area} from the given fields and returns it."),
    ("update", "Changes the given fields of an existing item in {area}."),
    ("delete", "Deletes an item of {area}; it cannot be undone."),
    ("search", "Searches {area} for items whose text matches a query."),
    ("export", "Exports the items of {area} as CSV or JSON for a date range."),
    ("comment", "Adds a comment to an item of {area}, visible to its watchers."),
    ("assign", "Assigns an item of {area} to a person, who is notified."),
    ("archive", "Archives an item of {area} so it no longer shows in lists."),
]


def _parameter(kind: str, description: str) -> dict[str, Any]:
    return {"type": kind, "description": description}


def catalog(count: int = 100) -> list[dict[str, Any]]:
    """`count` tools: `weather_forecast` first, then area_action tools."""
    tools = [
        {
            "name": "weather_forecast",
            "description": "Weather forecast for a city: temperature, wind and sky for the"
            " coming days.",
            "inputSchema": {
                "type": "object",
                "properties": {
                    "city": _parameter("string", "The city, e.g. Lyon or Osaka."),
                    "days": _parameter("integer", "How many days ahead, 1 to 7."),
                },
                "required": ["city"],
            },
        }
    ]
    for area, where in _AREAS:
        for action, text in _ACTIONS:
            if len(tools) >= count:
                return tools
            tools.append(
                {
                    "name": f"{area}_{action}",
                    "description": text.format(area=where, what="recent"),
                    "inputSchema": {
                        "type": "object",
                        "properties": {
                            "id": _parameter("string", f"The identifier of the item in {where}."),
                            "fields": {
                                "type": "object",
                                "description": "Field names and values to use.",
                                "additionalProperties": {"type": "string"},
                            },
                            "limit": _parameter("integer", "At most this many results (1-100)."),
                            "cursor": _parameter("string", "Where the previous page ended."),
                            "dry_run": _parameter("boolean", "Only say what would be done."),
                        },
                        "required": ["id"],
                    },
                }
            )
    return tools[:count]


def answer(request: dict[str, Any], tools: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The JSON-RPC response to `request` (None for a notification)."""
    method = request.get("method")
    if "id" not in request:
        return None
    if method == "initialize":
        params = request.get("params") or {}
        result: Any = {
            "protocolVersion": params.get("protocolVersion", "2025-06-18"),
            "capabilities": {"tools": {}},
            "serverInfo": {"name": "many-tools", "version": "1.0.0"},
        }
    elif method == "tools/list":
        result = {"tools": tools}
    elif method == "tools/call":
        params = request.get("params") or {}
        name = params.get("name")
        arguments = params.get("arguments") or {}
        text = (
            f"Forecast for {arguments.get('city', '?')}: {FORECAST_SECRET}"
            if name == "weather_forecast"
            else f"{name} done with {json.dumps(arguments, sort_keys=True)}"
        )
        result = {"content": [{"type": "text", "text": text}], "isError": False}
    elif method == "ping":
        result = {}
    else:
        return {
            "jsonrpc": "2.0",
            "id": request["id"],
            "error": {"code": -32601, "message": f"method not found: {method}"},
        }
    return {"jsonrpc": "2.0", "id": request["id"], "result": result}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tools", type=int, default=100)
    args = parser.parse_args(argv)
    tools = catalog(args.tools)
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            request = json.loads(line)
        except json.JSONDecodeError:
            continue
        response = answer(request, tools) if isinstance(request, dict) else None
        if response is not None:
            sys.stdout.write(json.dumps(response) + "\n")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
