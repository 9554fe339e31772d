"""`Formats` (the text log's formats, each made once) formats as `str.format_map`
does: the same text, or the same exception, for every kind of format and value."""

from __future__ import annotations

import enum
from decimal import Decimal
from typing import Any

import pytest

from ccproxy.daemon.logs import Formats, _made
from ccproxy.observe.accesslog import _FORMAT


class Colour(enum.IntEnum):
    RED = 1


class Shown:
    def __format__(self, spec: str) -> str:
        return f"formatted[{spec}]"

    def __str__(self) -> str:
        return "str"


class Missing(dict):  # type: ignore[type-arg]
    def __missing__(self, key: str) -> str:
        return f"<{key}>"


VALUES: dict[str, Any] = {
    "a": "text",
    "b": 12,
    "c": None,
    "d": True,
    "e": 1.5,
    "f": Colour.RED,
    "g": Shown(),
    "h": Decimal("1.10"),
    "i": ["x", 1],
    "j": "é\n{x}",
    "_k9": b"bytes",
}

FORMATS = [
    _FORMAT,
    "{a}",
    "{a} {b} {c} {d} {e} {f} {g} {h} {i} {j} {_k9}",
    "{a}{a}{b}",
    "{{literal}} {a} }}{{",
    "no fields",
    "{{only braces}}",
    "",
    "{a!r}",
    "{b:>5}",
    "{i[0]}",
    "{e.real}",
    "{}",
    "{0}",
    "{missing}",
    "{a} {missing}",
    "{",
    "}",
    "{a",
    "a}b",
    "{é}",
    "{a:{b}}",
]


def _outcome(call: Any) -> Any:
    try:
        return call()
    except Exception as e:  # the same exception type, as classicLine sees it
        return type(e)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("kind", [dict, Missing])
def test_a_format_comes_out_as_format_map_makes_it(fmt: str, kind: type) -> None:
    event = kind(VALUES)
    formats = Formats()
    for _ in range(2):  # made, then kept
        assert _outcome(lambda: formats.format(fmt, event)) == _outcome(
            lambda: fmt.format_map(event)
        )


def test_only_plain_names_are_made() -> None:
    assert _made(_FORMAT) is not None and _made("{a} {b}") is not None
    for fmt in ("{a!r}", "{b:>5}", "{i[0]}", "{e.real}", "{}", "{0}", "plain", "{"):
        assert _made(fmt) is None, fmt


def test_past_its_bound_a_format_is_formatted_without_being_kept() -> None:
    formats = Formats()
    for n in range(Formats.MAX + 10):
        assert formats.format(f"{n} {{a}}", {"a": "x"}) == f"{n} x"
    assert len(formats._made) == Formats.MAX
