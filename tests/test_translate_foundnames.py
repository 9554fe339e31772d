"""A request's tool names found by its translation's walk are those found apart.

`Plan.forRequest` leaves a request's tool names to its first translation
(`PendingNames`: the walk over the history that translating is meets every
`tool_use`), unless they are asked for first. The sameness test asks for them
first; here every case of it (Claude Code's captured requests, the corpus, their
hostile variants) goes the production way round, the body made first, and must
give the same body, the same names and the same error as the other way round,
and `toOpenAI` without names the same as with `ToolNames.fromRequest`'s.
"""

from __future__ import annotations

from typing import Any

import orjson

from ccproxy.config.model import Upstream
from ccproxy.config.routing import Target
from ccproxy.errors import ProxyError
from ccproxy.translate.names import PendingNames, ToolNames
from ccproxy.translate.request import toOpenAI
from tests.translatecases import PROFILES, planFor, requestBodies, variants

LONG = "mcp__" + "a" * 70


def _outcome(body: Any, upstream: Upstream, target: Target, namesFirst: bool) -> bytes:
    try:
        plan = planFor(body, upstream, target)
        names = plan.rendering.names if namesFirst else None
        made = plan.bodyFor(upstream, target)
        names = plan.rendering.names
        return made + orjson.dumps(
            [sorted(names.up.items()), names.renamed, names.fromUpstream("x")]
        )
    except ProxyError as e:
        return b"%d %s" % (e.status, e.message.encode())
    except RecursionError:
        return b"recursion"


def _bodies() -> list[Any]:
    """The sameness test's cases, and names that need renaming in every place a
    name is read: tools, history (assistant and user turns), tool_choice."""
    cases = [changed for _, body in requestBodies() for _, changed in variants(body)]
    turns = [
        {"role": "user", "content": "go"},
        {
            "role": "assistant",
            "content": [
                {"type": "tool_use", "id": "t1", "name": LONG, "input": {}},
                {"type": "tool_use", "id": "t2", "name": "Ä tool", "input": {"a": 1}},
                {"type": "tool_use", "id": "t3", "name": "Bash", "input": {}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "t1", "content": "x"},
                {"type": "tool_use", "id": "t9", "name": LONG + "b", "input": {}},
            ],
        },
    ]
    tools = [{"name": "Bash"}, {"name": LONG + "c"}, {"name": "Ä tool"}]
    cases.append({"model": "m", "messages": turns, "tools": tools})
    cases.append({"model": "m", "messages": turns})
    cases.append(
        {
            "model": "m",
            "messages": turns,
            "tools": tools,
            "tool_choice": {"type": "tool", "name": LONG + "d"},
        }
    )
    return cases


def test_names_found_by_the_translation_are_the_same() -> None:
    target = Target("u", "up-model")
    for profile in PROFILES.values():
        upstream = Upstream(
            name="u", url="http://127.0.0.1:9/v1", apiKey="k", timeout=60, profile=profile
        )
        for body in _bodies():
            first = _outcome(body, upstream, target, namesFirst=True)
            assert _outcome(body, upstream, target, namesFirst=False) == first


def test_translation_without_names_is_the_same() -> None:
    profile = PROFILES["plain"]
    for body in _bodies():
        try:
            given = toOpenAI(
                body,
                model="m",
                profile=profile,
                defaultMaxTokens=1,
                names=ToolNames.fromRequest(body),
            )
        except ProxyError as e:
            given = e.message
        except RecursionError:
            continue
        try:
            found = toOpenAI(body, model="m", profile=profile, defaultMaxTokens=1)
        except ProxyError as e:
            found = e.message
        assert found == given


def test_pending_names_are_handed_over_once() -> None:
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        "tools": [{"name": LONG}],
    }
    pending = PendingNames(body)
    assert pending.known is None
    toOpenAI(body, model="m", profile=PROFILES["plain"], defaultMaxTokens=1, names=pending)
    found = pending.known
    assert found == ToolNames.fromRequest(body)
    assert pending.names is found
    pending.found(ToolNames())  # a later translation's: the first is kept
    assert pending.names is found


def test_names_asked_after_the_request_is_let_go() -> None:
    """A plan whose names no translation found (a route passing the body through)
    still has them after `letGo` empties the request."""
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        "tools": [{"name": LONG}],
    }
    upstream = Upstream(name="u", url="http://127.0.0.1:9/v1", apiKey="k", timeout=60)
    plan = planFor(dict(body), upstream, Target("u", "up-model"))
    plan.letGo()
    assert plan.rendering.names == ToolNames.fromRequest(body)


def test_same_only_when_every_name_goes_as_it_is() -> None:
    """`same` lets a translation skip renaming its calls: never for a set to rename."""
    assert ToolNames.of(["Bash", "Read", "mcp__srv__tool"]).same
    assert not ToolNames.of(["Bash", LONG]).same
    assert not ToolNames.of(["Bash", "Ä tool"]).same
    assert not ToolNames().same


def test_names_handed_over_between_the_check_and_the_body_read_are_kept() -> None:
    """A translation in a thread may hand its names over (`found`) just after
    `names` saw none: the names it handed over are the answer, not a mapping
    found from the body it let go."""
    handed = ToolNames.of(["Bash", "mcp__x__y"])
    reads: list[Any] = []

    class Racing(PendingNames):
        __slots__ = ()

        @property  # type: ignore[override]
        def _names(self) -> ToolNames | None:
            value = PendingNames._names.__get__(self)  # type: ignore[attr-defined]
            if value is None and not reads:
                reads.append(value)
                self.found(handed)  # the thread, between this read and the next
            return value  # type: ignore[no-any-return]

        @_names.setter
        def _names(self, value: ToolNames | None) -> None:
            PendingNames._names.__set__(self, value)  # type: ignore[attr-defined]

    pending = Racing({"messages": [], "tools": [{"name": "Other"}]})
    assert pending.names is handed
    assert pending.names is handed
