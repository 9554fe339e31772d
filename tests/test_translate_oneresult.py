"""A user turn of one tool result after one call (`_MessageWriter._oneResult`)
translates as the general loop translates it.

The shortcut takes the usual turn (a string or one text block, no error,
answering the open call) and leaves every other to `_user`'s loop; here every
mix of content, error flag and id goes both ways, the shortcut on and off, and
must give the same body or the same error.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from ccproxy.errors import ProxyError
from ccproxy.translate.request import _MessageWriter, toOpenAI
from tests.translatecases import PROFILES

_ABSENT = object()
CONTENTS: list[Any] = [
    "done",
    "",
    "  ",
    [{"type": "text", "text": "done"}],
    [{"type": "text", "text": ""}],
    [{"type": "text", "text": 5}],
    [{"type": "text"}],
    [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
    [{"type": "image", "source": {"type": "url", "url": "http://x/i.png"}}],
    [{"type": "tool_reference", "tool_name": "Bash"}],
    [{"type": 5, "text": "x"}],
    [5],
    ["x"],
    [],
    None,
    5,
    {},
    _ABSENT,
]
ERRORS: list[Any] = [_ABSENT, None, False, True, 0, 1, "x"]
IDS: list[Any] = ["t1", "t2", 5, _ABSENT]


def _body(content: Any, isError: Any, callId: Any) -> dict[str, Any]:
    result: dict[str, Any] = {"type": "tool_result"}
    for key, value in (("tool_use_id", callId), ("content", content), ("is_error", isError)):
        if value is not _ABSENT:
            result[key] = value
    return {
        "model": "m",
        "messages": [
            {"role": "user", "content": "go"},
            {
                "role": "assistant",
                "content": [{"type": "tool_use", "id": "t1", "name": "Bash", "input": {}}],
            },
            {"role": "user", "content": [result]},
        ],
        "tools": [{"name": "Bash"}],
    }


def _outcome(body: dict[str, Any], profile: Any) -> Any:
    try:
        return toOpenAI(body, model="m", profile=profile, defaultMaxTokens=1)
    except ProxyError as e:
        return (e.status, e.message)


@pytest.mark.parametrize("profile", PROFILES.values(), ids=PROFILES.keys())
def test_one_result_as_the_loop_makes_it(profile: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    bodies = [_body(*case) for case in itertools.product(CONTENTS, ERRORS, IDS)]
    bodies += [
        {
            **_body("x", _ABSENT, "t1"),
            "messages": [*_body("x", _ABSENT, "t1")["messages"][:2], turn],
        }
        for turn in (
            {"role": "user", "content": ["x"]},
            {"role": "user", "content": [5]},
            {"role": "user", "content": [{"type": "text", "text": "hi"}]},
        )
    ]
    quick = [_outcome(body, profile) for body in bodies]
    monkeypatch.setattr(_MessageWriter, "_oneResult", lambda self, block: False)
    assert [_outcome(body, profile) for body in bodies] == quick


def test_the_usual_turns_take_the_shortcut(monkeypatch: pytest.MonkeyPatch) -> None:
    """The shortcut is taken for a string and for one text block (else the test
    above proves nothing)."""
    taken: list[bool] = []
    original = _MessageWriter._oneResult

    def spy(self: _MessageWriter, block: Any) -> bool:
        taken.append(original(self, block))
        return taken[-1]

    monkeypatch.setattr(_MessageWriter, "_oneResult", spy)
    for content in ("done", [{"type": "text", "text": "done"}]):
        translated = toOpenAI(
            _body(content, False, "t1"), model="m", profile=PROFILES["plain"], defaultMaxTokens=1
        )
        assert translated["messages"][-1] == {
            "role": "tool",
            "tool_call_id": "t1",
            "content": "done",
        }
    assert taken == [True, True]
