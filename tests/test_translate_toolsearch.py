"""Tool search for chat upstreams: deferred tools (ccproxy.translate.request) and the
server-side search ccproxy runs (ccproxy.translate.toolsearch).

With tool search on (`ENABLE_TOOL_SEARCH`), Claude Code marks its MCP tools
`defer_loading: true` and offers its own `ToolSearch` tool, which answers with
`tool_reference` blocks in a `tool_result`. As at Anthropic, a deferred tool's
schema is held back from the model until the conversation loads it.

A client that offers Anthropic's own search (`tool_search_tool_regex_20251119`,
`…_bm25_…`) has it run by ccproxy: the searches are table-tested here, the loop
over the upstream in test_app_toolsearch.py.
"""

from __future__ import annotations

from typing import Any

import pytest

from ccproxy.errors import ProxyError
from ccproxy.translate.dialect import Profile
from ccproxy.translate.names import shortName
from ccproxy.translate.request import toOpenAI
from ccproxy.translate.toolsearch import Entry, ToolSearch, regexSearch, searchKind
from tests.support.fixtures import requestBody

SCHEMA = {"type": "object", "properties": {"q": {"type": "string"}}}
SEARCH = {"name": "ToolSearch", "description": "Find deferred tools", "input_schema": SCHEMA}
LONG = "mcp__" + "a-very-long-server-name." * 3 + "__weather_forecast"


def deferred(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "description": f"{name} tool",
        "input_schema": SCHEMA,
        "defer_loading": True,
    }


TOOLS = [SEARCH, deferred("mcp__s__weather"), deferred("mcp__s__jira"), deferred(LONG)]


def translate(body: dict[str, Any]) -> dict[str, Any]:
    return toOpenAI(body, model="up", profile=Profile(), defaultMaxTokens=1000)


def request(messages: list[Any], tools: list[Any] = TOOLS, **extra: Any) -> dict[str, Any]:
    return {"model": "m", "max_tokens": 100, "messages": messages, "tools": tools, **extra}


def searched(*names: str, callId: str = "s1") -> list[dict[str, Any]]:
    """A ToolSearch call and Claude Code's answer: a tool_reference per name found."""
    call = {"type": "tool_use", "id": callId, "name": "ToolSearch", "input": {"q": "x"}}
    refs = [{"type": "tool_reference", "tool_name": name} for name in names]
    return [
        {"role": "assistant", "content": [call]},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": callId, "content": refs}],
        },
    ]


def offered(out: dict[str, Any]) -> list[str]:
    return [t["function"]["name"] for t in out.get("tools", [])]


ASK = {"role": "user", "content": "what is the weather?"}

CASES = [
    pytest.param([ASK], TOOLS, {}, ["ToolSearch"], id="deferred-held-back"),
    pytest.param(
        [ASK, *searched("mcp__s__weather")],
        TOOLS,
        {},
        ["ToolSearch", "mcp__s__weather"],
        id="found-by-tool-reference",
    ),
    pytest.param(
        [ASK, *searched("mcp__s__weather"), *searched("mcp__s__jira", callId="s2")],
        TOOLS,
        {},
        ["ToolSearch", "mcp__s__weather", "mcp__s__jira"],
        id="every-earlier-find-stays-loaded",
    ),
    pytest.param(
        [ASK, *searched("mcp__s__nothing-like-it")],
        TOOLS,
        {},
        ["ToolSearch"],
        id="reference-to-an-unknown-tool-defines-nothing",
    ),
    pytest.param(
        [
            ASK,
            {
                "role": "assistant",
                "content": [{"type": "tool_use", "id": "c1", "name": "mcp__s__jira", "input": {}}],
            },
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": "c1", "content": "ok"}],
            },
        ],
        TOOLS,
        {},
        ["ToolSearch", "mcp__s__jira"],
        id="called-in-history",
    ),
    pytest.param(
        [ASK],
        TOOLS,
        {"tool_choice": {"type": "tool", "name": "mcp__s__jira"}},
        ["ToolSearch", "mcp__s__jira"],
        id="named-by-tool-choice",
    ),
    pytest.param(
        [ASK],
        [{"type": "tool_search_tool_regex_20251119", "name": "tool_search_tool_regex"}, *TOOLS],
        {},
        ["tool_search_tool_regex", "ToolSearch"],
        id="server-side-search-becomes-a-function",
    ),
    pytest.param(
        [ASK],
        [{**SEARCH, "defer_loading": False}, {**deferred("X"), "defer_loading": "yes"}],
        {},
        ["ToolSearch", "X"],
        id="only-true-defers",
    ),
]


@pytest.mark.parametrize(("messages", "tools", "extra", "expected"), CASES)
def test_deferred_tools(
    messages: list[Any], tools: list[Any], extra: dict[str, Any], expected: list[str]
) -> None:
    assert offered(translate(request(messages, tools, **extra))) == expected


def test_the_model_reads_what_the_search_loaded_by_the_name_it_calls() -> None:
    out = translate(request([ASK, *searched("mcp__s__weather", LONG)]))
    assert offered(out) == ["ToolSearch", "mcp__s__weather", shortName(LONG)]
    (result,) = [m for m in out["messages"] if m["role"] == "tool"]
    assert result == {
        "role": "tool",
        "tool_call_id": "s1",
        "content": "Tool mcp__s__weather is now available to call.\n\n"
        f"Tool {shortName(LONG)} is now available to call.",
    }


def test_a_tool_reference_needs_a_tool_name() -> None:
    messages = [ASK, *searched("x")]
    messages[2]["content"][0]["content"] = [{"type": "tool_reference"}]
    with pytest.raises(ProxyError) as caught:
        translate(request(messages))
    assert caught.value.status == 400
    assert "messages.2.content.0.content.0.tool_name" in caught.value.message


def test_count_tokens_counts_what_the_upstream_gets() -> None:
    """The estimate is of the upstream's request: deferred schemas are not in it."""
    from ccproxy.translate.tokens import estimateTokens

    many = [SEARCH, *(deferred(f"mcp__s__tool_{i}") for i in range(50))]
    held = estimateTokens(translate(request([ASK], many)))
    sent = estimateTokens(translate(request([ASK], [{**t, "defer_loading": False} for t in many])))
    assert held * 5 < sent


# -- the server-side search: history ------------------------------------------------

REGEX_TOOL = {"type": "tool_search_tool_regex_20251119", "name": "tool_search_tool_regex"}


def serverSearch(callId: str, *found: str) -> list[dict[str, Any]]:
    """What an answer holds for one search ccproxy (or Anthropic) ran."""
    return [
        {
            "type": "server_tool_use",
            "id": callId,
            "name": "tool_search_tool_regex",
            "input": {"query": "weather"},
        },
        {
            "type": "tool_search_tool_result",
            "tool_use_id": callId,
            "content": {
                "type": "tool_search_tool_search_result",
                "tool_references": [{"type": "tool_reference", "tool_name": n} for n in found],
            },
        },
    ]


def test_a_search_in_an_earlier_answer_is_its_call_and_answer_and_loads_its_finds() -> None:
    history = [
        ASK,
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Let me look."},
                *serverSearch("srvtoolu_1", "mcp__s__weather"),
                {"type": "text", "text": "Found it."},
                {"type": "tool_use", "id": "c2", "name": "mcp__s__weather", "input": {"q": "Lyon"}},
            ],
        },
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "c2", "content": "sun"}],
        },
    ]
    out = translate(request(history, [REGEX_TOOL, *TOOLS]))
    assert offered(out) == ["tool_search_tool_regex", "ToolSearch", "mcp__s__weather"]
    assert out["messages"][1:] == [
        {
            "role": "assistant",
            "content": "Let me look.",
            "tool_calls": [
                {
                    "id": "srvtoolu_1",
                    "type": "function",
                    "function": {
                        "name": "tool_search_tool_regex",
                        "arguments": '{"query":"weather"}',
                    },
                }
            ],
        },
        {
            "role": "tool",
            "tool_call_id": "srvtoolu_1",
            "content": "Tool mcp__s__weather is now available to call.",
        },
        {
            "role": "assistant",
            "content": "Found it.",
            "tool_calls": [
                {
                    "id": "c2",
                    "type": "function",
                    "function": {"name": "mcp__s__weather", "arguments": '{"q":"Lyon"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "c2", "content": "sun"},
    ]


def test_a_failed_search_reads_as_an_error_and_loads_nothing() -> None:
    failed = {
        "type": "tool_search_tool_result",
        "tool_use_id": "srvtoolu_1",
        "content": {"type": "tool_search_tool_result_error", "error_code": "invalid_pattern"},
    }
    history = [ASK, {"role": "assistant", "content": [serverSearch("srvtoolu_1")[0], failed]}]
    out = translate(request(history, [REGEX_TOOL, *TOOLS]))
    assert offered(out) == ["tool_search_tool_regex", "ToolSearch"]
    assert out["messages"][-1] == {
        "role": "tool",
        "tool_call_id": "srvtoolu_1",
        "content": "Error: the tool search failed (invalid_pattern).",
    }


# -- the server-side search: the searches ---------------------------------------------


def catalogTool(name: str, description: str, **arguments: str) -> dict[str, Any]:
    properties = {k: {"type": "string", "description": v} for k, v in arguments.items()}
    return {
        "name": name,
        "description": description,
        "input_schema": {"type": "object", "properties": properties},
        "defer_loading": True,
    }


CATALOG = [
    catalogTool("get_weather", "Current weather for a city", city="The city name"),
    catalogTool("weather_alerts", "Storm warnings", region="Where"),
    catalogTool("jira_create_issue", "Create a ticket in Jira", summary="One line title"),
    catalogTool("slack_post", "Post a message to a Slack channel", channel="The #channel"),
    catalogTool("s3_upload", "Upload a file to a bucket", key="Object key, e.g. a weather map"),
    catalogTool("getUserProfile", "A person's profile", userId="Whose"),
]


def search(kind: str, query: Any, tools: list[dict[str, Any]] = CATALOG) -> Any:
    body = {"tools": [{"type": f"tool_search_tool_{kind}_20251119", "name": "s"}, *tools]}
    found = ToolSearch.fromRequest(body)
    assert found is not None
    return found.search(query)


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        pytest.param("weather", ["get_weather", "weather_alerts", "s3_upload"], id="names-first"),
        pytest.param("Weather", [], id="case-sensitive"),
        pytest.param("(?i)WEATHER", ["get_weather", "weather_alerts", "s3_upload"], id="any-case"),
        pytest.param("jira|slack", ["jira_create_issue", "slack_post"], id="alternation"),
        pytest.param("^get_", ["get_weather"], id="anchored-on-the-name"),
        pytest.param("#channel", ["slack_post"], id="argument-description"),
        pytest.param("userId", ["getUserProfile"], id="argument-name"),
        pytest.param(".", [t["name"] for t in CATALOG[:5]], id="at-most-five"),
        pytest.param("(", "invalid_pattern", id="not-a-regex"),
        pytest.param(
            "[[w]eather", ["get_weather", "weather_alerts", "s3_upload"], id="warning-is-no-error"
        ),
        pytest.param("a" * 201, "pattern_too_long", id="too-long"),
        pytest.param("", "invalid_tool_input", id="empty"),
        pytest.param(3, "invalid_tool_input", id="not-a-string"),
        pytest.param("(?=weather)", "invalid_pattern", id="lookahead-refused"),
        pytest.param(r"(w)\1", "invalid_pattern", id="backreference-refused"),
        pytest.param("(a+)+$", [], id="nested-repeat-runs"),
        pytest.param("(?P<verb>get|post)_weather", ["get_weather"], id="named-group"),
    ],
)
def test_regex_search(query: Any, expected: Any) -> None:
    assert search("regex", query) == expected


@pytest.mark.parametrize("pattern", ["a*a*a*a*a*x", ".*.*.*.*.*x", "(a+)+x", "(a|aa)*x"])
def test_patterns_that_backtrack_run_in_linear_time(pattern: str) -> None:
    """The shapes on which a backtracking engine (Python's `re`) takes minutes over
    4,000-character descriptions are answered at once: the search runs on the
    reactor, and the pattern is the model's."""
    catalog = [Entry(f"tool_{i}", "a" * 3990) for i in range(20)]
    assert regexSearch(pattern, catalog) == []


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        pytest.param(
            "weather in a city", ["get_weather", "weather_alerts", "s3_upload"], id="ranked"
        ),
        pytest.param("post to slack", ["slack_post"], id="one-match"),
        pytest.param("user profile", ["getUserProfile"], id="camel-case-split"),
        pytest.param("create ticket", ["jira_create_issue"], id="description-words"),
        pytest.param("zebra", [], id="no-match"),
        pytest.param("  ", "invalid_tool_input", id="blank"),
    ],
)
def test_bm25_search(query: Any, expected: Any) -> None:
    assert search("bm25", query) == expected


def test_only_deferred_tools_are_searched() -> None:
    tools = [{**CATALOG[0], "defer_loading": False}, CATALOG[1]]
    assert search("regex", "weather", tools) == ["weather_alerts"]


@pytest.mark.parametrize(
    ("tool", "kind"),
    [
        (REGEX_TOOL, "regex"),
        ({"type": "tool_search_tool_bm25_20251119", "name": "b"}, "bm25"),
        ({"type": "tool_search_tool_bm25_20991231", "name": "b"}, "bm25"),
        ({"type": "tool_search_tool_bm25"}, None),
        ({"type": "web_search_20250305", "name": "web_search"}, None),
        ({"name": "tool_search_tool_regex_20251119"}, None),
        ("x", None),
    ],
)
def test_search_kind(tool: Any, kind: str | None) -> None:
    assert searchKind(tool) == kind


def test_result_blocks_are_shaped_as_the_messages_api_shapes_them() -> None:
    found = ToolSearch.fromRequest({"tools": [REGEX_TOOL, *CATALOG]})
    assert found is not None
    assert found.result("srvtoolu_a", {"query": "^get_"}) == {
        "type": "tool_search_tool_result",
        "tool_use_id": "srvtoolu_a",
        "content": {
            "type": "tool_search_tool_search_result",
            "tool_references": [{"type": "tool_reference", "tool_name": "get_weather"}],
        },
    }
    assert found.result("srvtoolu_b", {"pattern": "("})["content"] == {
        "type": "tool_search_tool_result_error",
        "error_code": "invalid_pattern",
        "error_message": "the pattern is not a regular expression ccproxy runs",
    }


def test_search_time_grows_with_the_catalog_not_faster() -> None:
    """BM25 over 10x the tools is about 10x the work (counted in words read)."""
    from ccproxy.translate import toolsearch

    read: list[int] = []
    real = toolsearch.words

    def counting(text: str) -> list[str]:
        found = real(text)
        read.append(len(found))
        return found

    toolsearch.words = counting  # type: ignore[assignment]
    totals = []
    try:
        for n in (100, 1000):
            read.clear()
            tools = [catalogTool(f"tool_{i}", f"does thing {i} well") for i in range(n)]
            assert len(search("bm25", "thing well", tools)) == 5
            totals.append(sum(read))
    finally:
        toolsearch.words = real  # type: ignore[assignment]
    assert totals[1] < totals[0] * 12


# -- what Claude Code 2.1.330 sends (tests/fixtures/claude-code/requests/070-073) --------
# With tool search on (its default, and ENABLE_TOOL_SEARCH=true), Claude Code lists
# the deferred tools' names in its system text, sends no MCP schema until its own
# ToolSearch has found one, then sends that one with `defer_loading: true` and the
# `tool_reference` that loads it. Off (073), every MCP tool's schema goes every time.


def test_fixture_first_turn_sends_no_mcp_schema_and_a_placeholder_held_back() -> None:
    body = requestBody("070")
    assert not [t for t in body["tools"] if t["name"].startswith("mcp__")]
    assert not any(t.get("type") for t in body["tools"])  # ToolSearch is a client tool
    deferred = [t["name"] for t in body["tools"] if t.get("defer_loading") is True]
    assert deferred == ["DeferredToolPlaceholder"]
    names = offered(translate(body))
    assert "ToolSearch" in names
    assert "DeferredToolPlaceholder" not in names


def test_fixture_tool_reference_loads_the_tool_found() -> None:
    body = requestBody("071")
    (result,) = [
        b
        for m in body["messages"]
        if isinstance(m["content"], list)
        for b in m["content"]
        if b.get("type") == "tool_result"
    ]
    assert result["content"] == [
        {"type": "tool_reference", "tool_name": "mcp__many-tools__weather_forecast"}
    ]
    out = translate(body)
    assert [n for n in offered(out) if n.startswith("mcp__")] == [
        "mcp__many-tools__weather_forecast"
    ]
    assert "DeferredToolPlaceholder" not in offered(out)
    (message,) = [m for m in out["messages"] if m["role"] == "tool"]
    assert message["content"] == "Tool mcp__many-tools__weather_forecast is now available to call."


def test_fixture_the_tool_called_stays_defined() -> None:
    out = translate(requestBody("072"))
    assert [n for n in offered(out) if n.startswith("mcp__")] == [
        "mcp__many-tools__weather_forecast"
    ]


def test_fixture_tool_search_off_sends_every_mcp_schema() -> None:
    out = translate(requestBody("073"))
    assert len([n for n in offered(out) if n.startswith("mcp__")]) == 100


@pytest.mark.parametrize(
    ("tools", "expected"),
    [
        ([], None),
        ([{"name": "Bash"}, {"name": "Read", "type": None}], None),  # Claude Code's tools
        ([{"name": "x", "type": ""}, {"name": "y", "type": 0}, {"type": False}], None),
        ([{"name": "w", "type": "web_search_20250305"}], None),
        ([{"type": "tool_search_tool_regex_20251119"}], None),  # no name: no search
        ([{"name": "s", "type": "tool_search_tool_bm25_20251119"}], ("s", "bm25")),
        # a tool that is no object is skipped (the translation refuses it), the
        # search after it still found
        (
            ["Bash", None, [1], {"name": "s", "type": "tool_search_tool_regex_20251119"}],
            ("s", "regex"),
        ),
        (
            [
                {"name": "a", "type": "tool_search_tool_regex_20251119"},
                {"name": "b", "type": "tool_search_tool_bm25_20251119"},
            ],
            ("a", "regex"),
        ),
    ],
)
def test_from_request_finds_the_first_search_tool(tools: list[Any], expected: Any) -> None:
    found = ToolSearch.fromRequest({"tools": [*tools, CATALOG[0]]})
    assert (found if found is None else (found.name, found.kind)) == expected
    if found is not None:
        assert [e.name for e in found.catalog] == ["get_weather"]
