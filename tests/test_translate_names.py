"""Reversible tool-name shortening (ccproxy.translate.names)."""

from __future__ import annotations

import hashlib
import re
from typing import Any

import pytest

from ccproxy.translate import names
from ccproxy.translate.names import MAX_NAME_LENGTH, ToolNames, isValidName, shortName

# What OpenAI and Gemini both take as a function name.
UPSTREAM_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,63}")


def digest(name: str, salt: int = 0) -> str:
    data = name.encode("utf-8") + (f"\0{salt}".encode() if salt else b"")
    return hashlib.sha256(data).hexdigest()[:8]


VALID_CASES = [
    pytest.param("Bash", id="builtin"),
    pytest.param("mcp__github__create_issue", id="mcp"),
    pytest.param("a", id="one-char"),
    pytest.param("_private", id="underscore-first"),
    pytest.param("kebab-case-tool", id="dashes"),
    pytest.param("x" * MAX_NAME_LENGTH, id="exactly-64"),
    pytest.param("mcp__" + "s" * 30 + "__" + "t" * 27, id="mcp-exactly-64"),
]


@pytest.mark.parametrize("name", VALID_CASES)
def test_valid_names_stay_as_they_are(name: str) -> None:
    assert isValidName(name)
    table = ToolNames.of([name, "other.tool"])
    assert table.toUpstream(name) == name
    assert table.fromUpstream(name) == name


# (client name, the readable stem before "_<8 hex>")
SHORTENED_CASES = [
    pytest.param("x" * (MAX_NAME_LENGTH + 1), "x" * 20 + "_" + "x" * 34, id="65-chars"),
    pytest.param("my.tool", "my_tool", id="dot"),
    pytest.param("my tool", "my_tool", id="space"),
    pytest.param("a..b  c", "a_b_c", id="runs-collapse"),
    pytest.param("server/tool:v2", "server_tool_v2", id="slash-colon"),
    pytest.param("café", "cafe", id="accent-folded"),
    pytest.param("Ünïcödé tool", "Unicode_tool", id="accents-folded"),
    pytest.param("工具", "tool", id="nothing-ascii"),
    pytest.param("🔧 fix", "_fix", id="emoji"),
    pytest.param("", "tool", id="empty"),
    pytest.param("1password", "_1password", id="digit-first"),
    pytest.param("-dash", "_-dash", id="dash-first"),
    pytest.param(
        "mcp__claude-in-chrome-extension-server__read_page_accessibility_tree_snapshot",
        "mcp__claude-in-chrom_d_page_accessibility_tree_snapshot",
        id="long-mcp-keeps-head-and-tail",
    ),
    pytest.param(
        "mcp__my.server__" + "very_long_tool_name_" * 5,
        "mcp__my_server__very" + "_" + "ong_tool_name_very_long_tool_name_",  # 20 + 1 + 34
        id="long-and-invalid",
    ),
]


@pytest.mark.parametrize(("name", "stem"), SHORTENED_CASES)
def test_invalid_names_get_a_stem_and_a_hash(name: str, stem: str) -> None:
    assert not isValidName(name)
    short = ToolNames.of([name, "Bash"]).toUpstream(name)
    assert short == f"{stem}_{digest(name)}"
    assert UPSTREAM_NAME.fullmatch(short)
    assert len(short) <= MAX_NAME_LENGTH


def test_a_name_over_the_limit_is_cut_to_exactly_the_limit() -> None:
    assert len(shortName("x" * 65)) == MAX_NAME_LENGTH
    assert len(shortName("y" * 1000)) == MAX_NAME_LENGTH


# Pinned values: a proxy restarted on a newer version must still map the names in a
# conversation's history the same way it did before.
GOLDEN_CASES = [
    ("mcp__my.server__do thing", "mcp__my_server__do_thing_bf4d12b6"),
    ("my.tool", "my_tool_bca2c361"),
    ("", "tool_e3b0c442"),
]


@pytest.mark.parametrize(("name", "short"), GOLDEN_CASES)
def test_short_names_are_stable_across_versions(name: str, short: str) -> None:
    assert shortName(name) == short


def test_same_name_same_short_name_across_requests() -> None:
    # Different requests, different tool sets, different orders: one short name.
    name = "mcp__my.server__search"
    tables = [
        ToolNames.of([name]),
        ToolNames.of(["Bash", name, "Read"]),
        ToolNames.of(["z.z", "a.a", name, name]),
        ToolNames.fromRequest({"tools": [{"name": name}]}),
    ]
    assert {t.toUpstream(name) for t in tables} == {shortName(name)}


# (names in one request, {client name: upstream name})
CLASH_CASES = [
    pytest.param(
        ["my.tool", shortName("my.tool")],
        {
            "my.tool": f"my_tool_{digest('my.tool', 1)}",
            shortName("my.tool"): shortName("my.tool"),
        },
        id="short-name-is-another-tools-valid-name",
    ),
    pytest.param(
        ["my.tool", shortName("my.tool"), shortName("my.tool", 1)],
        {
            "my.tool": f"my_tool_{digest('my.tool', 2)}",
            shortName("my.tool"): shortName("my.tool"),
            shortName("my.tool", 1): shortName("my.tool", 1),
        },
        id="salted-name-taken-too",
    ),
]


@pytest.mark.parametrize(("request_names", "expected"), CLASH_CASES)
def test_clash_with_a_valid_name(request_names: list[str], expected: dict[str, str]) -> None:
    for order in (request_names, request_names[::-1]):
        table = ToolNames.of(order)
        assert {n: table.toUpstream(n) for n in order} == expected
        assert {table.fromUpstream(s): s for s in expected.values()} == expected


def test_two_names_with_one_short_name_are_told_apart(monkeypatch: pytest.MonkeyPatch) -> None:
    # A real SHA-256 clash cannot be written down, so every name gets one stem here.
    monkeypatch.setattr(names, "shortName", lambda name, salt=0: f"same_{salt}")
    monkeypatch.setattr(names, "_MEMO", {})  # made here, with the clashing stems
    for order in (["b.b", "a.a", "c.c"], ["c.c", "b.b", "a.a"]):
        table = ToolNames.of(order)
        # Sorted order decides who keeps the unsalted name, whatever the input order.
        assert [table.toUpstream(n) for n in ("a.a", "b.b", "c.c")] == [
            "same_0",
            "same_1",
            "same_2",
        ]
        assert [table.fromUpstream(s) for s in ("same_0", "same_1", "same_2")] == [
            "a.a",
            "b.b",
            "c.c",
        ]


def test_a_tool_set_is_made_once_whatever_its_order() -> None:
    first = ToolNames.of(["Bash", "mcp__my.server__tool", "Read"])
    again = ToolNames.of(["Read", "Bash", "mcp__my.server__tool", "Bash"])
    assert again is first
    assert again.toUpstream("mcp__my.server__tool") == shortName("mcp__my.server__tool")
    other = ToolNames.of(["Bash", "Read"])
    assert other is not first and other.toUpstream("Bash") == "Bash"


def test_the_memo_of_tool_sets_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(names, "_MEMO", {})
    for n in range(names.MEMO_ENTRIES * 3):
        ToolNames.of(["Bash", f"tool{n}"])
        assert len(names._MEMO) <= names.MEMO_ENTRIES
    many = [f"t{n}" for n in range(names.MEMO_NAMES + 1)]
    long = ["Bash", "x" * (names.MEMO_CHARS + 1)]
    names._MEMO.clear()
    for made in (many, long):  # not remembered, yet made the same way
        assert ToolNames.of(made) == ToolNames._made(frozenset(made))
        assert ToolNames.of(made) is not ToolNames.of(made)
    assert names._MEMO == {}


MIXED = [
    "Bash",
    "Read",
    "mcp__github__create_issue",
    "mcp__my.server__tool",
    "mcp__my server__tool",
    "mcp__my-server__tool",
    "x" * 64,
    "x" * 65,
    "x" * 66,
    "café",
    "cafe",
    "工具",
    "道具",
    "",
    "1",
    "tool",
]


def test_round_trip_and_uniqueness() -> None:
    table = ToolNames.of(MIXED)
    ups = [table.toUpstream(n) for n in MIXED]
    assert len(set(ups)) == len(MIXED)
    for name, up in zip(MIXED, ups, strict=True):
        assert UPSTREAM_NAME.fullmatch(up), up
        assert table.fromUpstream(up) == name


# (upstream name, what the client sees)
FROM_UPSTREAM_CASES = [
    pytest.param("Bash", "Bash", id="valid-name"),
    pytest.param(shortName("my.tool"), "my.tool", id="short-name"),
    pytest.param("Invented", "Invented", id="unknown-passes-through"),
    pytest.param(shortName("not.in.request"), shortName("not.in.request"), id="foreign-short"),
    pytest.param("", "", id="empty"),
]


@pytest.mark.parametrize(("upstream", "client"), FROM_UPSTREAM_CASES)
def test_from_upstream(upstream: str, client: str) -> None:
    assert ToolNames.of(["Bash", "my.tool"]).fromUpstream(upstream) == client


def test_to_upstream_of_a_name_outside_the_request_is_still_valid() -> None:
    table = ToolNames.of(["Bash"])
    assert table.toUpstream("Read") == "Read"
    assert table.toUpstream("new.tool") == shortName("new.tool")


def _use(name: Any) -> dict[str, Any]:
    return {"type": "tool_use", "id": "toolu_1", "name": name, "input": {}}


REQUEST_CASES = [
    pytest.param({"tools": [{"name": "a.b"}, {"name": "Bash"}]}, {"a.b", "Bash"}, id="tools"),
    pytest.param(
        {
            "messages": [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": [{"type": "text", "text": "x"}, _use("old.tool")]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1"}]},
            ]
        },
        {"old.tool"},
        id="history-tool-use",
    ),
    pytest.param({"tool_choice": {"type": "tool", "name": "c.d"}}, {"c.d"}, id="tool-choice"),
    pytest.param({"tool_choice": {"type": "auto", "name": "c.d"}}, set(), id="choice-not-tool"),
    pytest.param(
        {
            "tools": [{"name": 1}, "Bash", {"type": "web_search_20250305", "name": "web_search"}],
            "messages": [
                "bad",
                {"role": "assistant", "content": [_use(None), "x", {"type": "text", "name": "t"}]},
                {"role": "assistant"},
            ],
            "tool_choice": "any",
        },
        {"web_search"},
        id="malformed-parts-skipped",
    ),
    pytest.param([], set(), id="not-a-body"),
]


@pytest.mark.parametrize(("body", "expected"), REQUEST_CASES)
def test_from_request_collects_every_name(body: Any, expected: set[str]) -> None:
    assert ToolNames.fromRequest(body) == ToolNames.of(expected)


def test_from_request_maps_history_back() -> None:
    # The tool left the list but its old call is still in the history.
    body = {
        "tools": [{"name": "mcp__srv.v2__x"}],
        "messages": [{"role": "assistant", "content": [_use("mcp__srv.v1__x")]}],
    }
    table = ToolNames.fromRequest(body)
    for name in ("mcp__srv.v2__x", "mcp__srv.v1__x"):
        assert table.fromUpstream(table.toUpstream(name)) == name
    assert table.toUpstream("mcp__srv.v1__x") != table.toUpstream("mcp__srv.v2__x")


@pytest.mark.parametrize(
    ("request_names", "renamed"),
    [
        pytest.param([], False, id="none"),
        pytest.param(["Bash", "Read"], False, id="all-valid"),
        pytest.param(["Bash", "a.b"], True, id="one-renamed"),
    ],
)
def test_renamed(request_names: list[str], renamed: bool) -> None:
    assert ToolNames.of(request_names).renamed is renamed


def test_many_generated_names() -> None:
    alphabet = "aZ_-.: /é工0"
    generated = {
        "".join(alphabet[(i * 7 + j * 3) % len(alphabet)] for j in range(i % 90))
        for i in range(400)
    }
    table = ToolNames.of(generated)
    ups = {table.toUpstream(n) for n in generated}
    assert len(ups) == len(generated)
    assert all(UPSTREAM_NAME.fullmatch(u) for u in ups)
    assert {table.fromUpstream(u) for u in ups} == generated
