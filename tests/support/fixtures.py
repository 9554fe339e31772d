"""Test data: the requests captured from Claude Code, and a tool to offer.

tests/fixtures/claude-code/requests holds what Claude Code sent through a proxy,
one JSON file a request (`{"body": …, …}`), named `NNN-POST-v1_messages….json` and
the like. The tests that read them parametrize over `requestBodies()` with ids
`NNN`, and pick one with `requestBody("NNN")`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

REQUESTS = Path(__file__).resolve().parents[1] / "fixtures" / "claude-code" / "requests"


def capturedBodies(pattern: str = "*.json") -> list[Any]:
    """The body of every captured request whose file matches `pattern`, in name order."""
    return [json.loads(path.read_text())["body"] for path in sorted(REQUESTS.glob(pattern))]


def requestBodies() -> list[Any]:
    """Every captured Messages request body (one with `messages`), as a pytest param
    with the id of its number."""
    params = []
    for path in sorted(REQUESTS.glob("*.json")):
        body = json.loads(path.read_text())["body"]
        if isinstance(body, dict) and "messages" in body:
            params.append(pytest.param(body, id=path.stem.split("-POST")[0]))
    return params


def requestBody(number: str) -> dict[str, Any]:
    """The body of captured request `number` (e.g. "027")."""
    (path,) = REQUESTS.glob(f"{number}-*.json")
    body: dict[str, Any] = json.loads(path.read_text())["body"]
    return body


def requestHeaders(number: str) -> dict[str, str]:
    """The headers of captured request `number`, by lower-case name."""
    (path,) = REQUESTS.glob(f"{number}-*.json")
    return {name.lower(): value for name, value in json.loads(path.read_text())["headers"]}


TOOLS = [
    {
        "name": "get_weather",
        "description": "Weather for a city",
        "input_schema": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    }
]
"""One Anthropic tool, for a request that offers one."""
