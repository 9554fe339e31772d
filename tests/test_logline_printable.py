"""The text log's quick look at a line (`str.isprintable`, then the control search)
writes exactly what the search alone wrote: a line with an unprintable character
that is no control (a no-break space, a zero-width space, a private-use
character) goes as it is; one with a control character is escaped."""

from __future__ import annotations

import io

import pytest
from twisted.logger import LogLevel

from ccproxy.daemon.logs import escapeControls, textObserver

FORMAT = "{request_id} {model} -> {status}"


def _line(model: str) -> str:
    out = io.StringIO()
    textObserver(out)(
        {
            "log_format": FORMAT,
            "log_level": LogLevel.info,
            "log_namespace": "ccproxy.access",
            "log_time": 1765000000.0,
            "request_id": "req_1",
            "model": model,
            "status": 200,
        }
    )
    return out.getvalue()


@pytest.mark.parametrize(
    "model",
    ["claude", "claude\xa0x", "claude\u200bx", "claude\ue000x", "claude\u3000x", "é€😀"],
)
def test_unprintable_but_not_control_goes_as_it_is(model: str) -> None:
    line = _line(model)
    assert line.endswith(f"[ccproxy.access#info] req_1 {model} -> 200\n")


@pytest.mark.parametrize(
    "model", ["a\x1bb", "a\rb", "a\x07", "a\x85b", "a\u2028b", "a\x7f", "a\nb", "a\tb"]
)
def test_control_characters_are_escaped(model: str) -> None:
    line = _line(model)
    assert line.endswith(f"[ccproxy.access#info] req_1 {escapeControls(model)} -> 200\n")
    assert line.count("\n") == 1
