"""Control characters from clients and upstreams are escaped in text logs.

A model name, a path or an upstream's error message is someone else's text. Raw in
a log that an admin reads with `tail`, an ESC sequence clears or rewrites their
terminal, a BEL rings, a CR hides what came before it on the line, and an LF starts
a line that looks like the daemon's own. Text logs show them as `\\x1b`, `\\r`,
`\\n`; JSON logs keep the fields exactly as sent (JSON escapes them itself).
"""

from __future__ import annotations

import io
import json
import os
import re
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from twisted.logger import (
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    capturedLogs,
    eventsFromJSONLogFile,
    formatEventAsClassicLogText,
    formatTime,
    timeFormatRFC3339,
)
from twisted.python.failure import Failure

from ccproxy.config import LogSettings
from ccproxy.daemon.logs import (
    PrettyObserver,
    escapeControls,
    fileObserver,
    openLogFile,
    quietLevels,
    textObserver,
    textSafe,
)
from tests.support.fakes import jsonReply
from tests.support.harness import Harness, message
from tests.support.realdaemon import (
    UNREACHABLE,
    Daemon,
    daemonsFixture,  # noqa: F401 (the `daemons` fixture)
    startDaemon,
)

HOSTILE = "claude\x1b[2J\r\x07 x\n2026-01-01T00:00:00+0000 [ccproxy.access#info] forged\x9b\x7f"
SHOWN = "claude\\x1b[2J\\r\\x07 x\\n2026-01-01T00:00:00+0000 [ccproxy.access#info] forged\\x9b\\x7f"
RAW = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
"""What a text log may never hold (LF and TAB are its own layout)."""


def lines(text: str) -> list[str]:
    return text.splitlines()


def assertSafe(text: str) -> None:
    assert not RAW.search(text), RAW.findall(text)
    for line in text.split("\n"):  # every line is an event's, or a TAB continuation
        assert line == "" or line.startswith(("\t", "20")), line


def test_escape_controls() -> None:
    assert escapeControls(HOSTILE) == SHOWN
    assert escapeControls("tab\there\u2028") == "tab\\there\\u2028"
    assert escapeControls("plain: é ü 日本 \\x1b") == "plain: é ü 日本 \\x1b"


def accessEventFor(**reply: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    h = Harness.build()
    h.upstream.queue(jsonReply(**reply))
    with capturedLogs() as events:
        h.post(message(model="claude-" + HOSTILE))
    access = [e for e in events if e.get("log_namespace") == "ccproxy.access"]
    assert len(access) == 1
    return access[0], list(events)


def render(events: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    observer = textObserver(out)
    for event in events:
        observer(event)
    return out.getvalue()


def test_an_access_line_stays_one_safe_line() -> None:
    message = "context too long\x1b]8;;https://evil.example\x07click\x1b]8;;\x07\r\nforged"
    access, events = accessEventFor(body={"error": {"message": message}}, status=400)
    text = render([access])
    assertSafe(text)
    assert len(lines(text)) == 1
    assert "claude-" + SHOWN in text
    assert "\\x1b]8;;https://evil.example\\x07click" in text
    assert access["model"] == "claude-" + HOSTILE  # the event itself is left alone
    assertSafe(render(events))


def test_json_records_keep_the_fields_as_sent(tmp_path: Path) -> None:
    access, _ = accessEventFor(body={"error": {"message": "no\x1b[2J"}}, status=400)
    settings = LogSettings(file=str(tmp_path / "ccproxy.json"), format="json")
    logFile = openLogFile(settings)
    fileObserver(settings, logFile)(access)
    logFile.close()
    raw = (tmp_path / "ccproxy.json").read_text()
    assert "\x1b" not in raw and "\\u001b" in raw
    with open(settings.file) as f:
        (record,) = eventsFromJSONLogFile(f)
    assert record["model"] == "claude-" + HOSTILE
    assert record["error_message"].endswith("no\x1b[2J")


def test_the_quick_line_is_twisteds_line() -> None:
    """Plain formats are rendered by `str.format_map` (`classicLine`), others by
    Twisted: the text is the same either way, unformattable events included."""
    access, events = accessEventFor(body={"error": {"message": "no\x1b[2J"}}, status=400)
    base = {"log_namespace": "t", "log_level": LogLevel.info, "log_time": 1.8e9 + 0.5}
    cases = [
        access,
        *events,
        {**base, "log_format": "plain"},
        {**base, "log_format": "{a!r} {b:>5} {c[0]} {d.real}", "a": "x", "b": 1, "c": [2], "d": 3},
        {**base, "log_format": "two\nlines {x}", "x": "y\nz"},
        {**base, "log_format": "a tab {x} {y}", "x": "y\tz", "y": "\u2028"},
        {**base, "log_format": "{missing} field"},
        {**base, "log_format": "called {f()}", "f": lambda: "yes"},
        {**base, "log_format": "{{braces}} {x}", "x": 1},
        {**base, "log_system": "sys", "log_format": "with a system"},
        {"log_format": "no namespace, level or time"},
        {**base, "log_format": ""},
        {**base, "log_format": None},
        {**base},
    ]
    for event in cases:
        expected = formatEventAsClassicLogText(
            textSafe(event), formatTime=lambda when: formatTime(when, timeFormatRFC3339)
        )
        expected = None if expected is None else expected.replace("\x1b", "\\x1b")
        assert render([event]) == (expected or ""), event


def test_quiet_levels_keep_what_twisteds_level_filter_keeps() -> None:
    """`quietLevels` keeps what `FilteringLogObserver` with a `LogLevelFilterPredicate`
    at the same level keeps: an event at that level or above, with a namespace."""
    cases = [
        {"log_level": level, "log_namespace": namespace}
        for level in [*LogLevel.iterconstants(), None]
        for namespace in ("ccproxy.access", "", None)
    ] + [{"log_namespace": "ccproxy"}, {"log_level": LogLevel.error}, {}]
    for level in LogLevel.iterconstants():
        ours: list[Any] = []
        twisteds: list[Any] = []
        quiet = quietLevels(ours.append, level)
        filtering = FilteringLogObserver(twisteds.append, [LogLevelFilterPredicate(level)])
        for event in cases:
            event = {k: v for k, v in event.items() if v is not None}
            quiet(event)
            filtering(event)
        assert ours == twisteds and ours, level


class Shouting(Exception):
    pass


def test_objects_and_tracebacks_are_escaped_and_keep_their_layout() -> None:
    try:
        raise Shouting("upstream said \x1b[2J\rboo")
    except Shouting:
        failure = Failure()
    event = {"log_namespace": "t", "log_level": LogLevel.critical, "log_time": 1.8e9}
    text = render(
        [
            {**event, "log_format": "object {thing}", "thing": Shouting("\x1b[31mred\x07")},
            {
                **event,
                "log_format": "while relaying {model}",
                "log_failure": failure,
                "model": HOSTILE,
            },
        ]
    )
    assertSafe(text)
    assert "object \\x1b[31mred\\x07" in text
    assert "while relaying " + SHOWN in text
    assert "\n\tTraceback (most recent call last):" in text  # twistd's layout kept
    assert "Shouting: upstream said \\x1b[2J\\rboo" in text


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_panels_escape_and_read_no_markup() -> None:
    access, _ = accessEventFor(body={"error": {"message": "no"}}, status=400)
    access = {**access, "model": "[link=https://evil.example]m[/link]" + HOSTILE}
    terminal = _Terminal()
    PrettyObserver(terminal)(access)
    shown = terminal.getvalue()
    assert "\x1b[2J" not in shown and "\x07" not in shown and "\r" not in shown
    assert "\x1b]8;" not in shown  # no terminal hyperlink made from the name
    assert "[link=https://evil.example]m[/link]" in shown
    assert "\\x1b[2J" in shown


# -- the real daemon: each place its text log can go -----------------------------------


def postHostile(daemon: Daemon) -> str:
    body = json.dumps(
        {"model": HOSTILE, "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
    )
    request = urllib.request.Request(
        daemon.base + "/v1/messages",
        data=body.encode(),
        headers={"content-type": "application/json"},
    )
    with pytest.raises(urllib.error.HTTPError) as refused:  # the upstream is not there
        urllib.request.urlopen(request, timeout=10)
    refused.value.close()
    return refused.value.headers["request-id"]


@pytest.mark.parametrize(
    ("block", "options", "logName"),
    [
        ("log: {file: ccproxy.log}\n", (), "ccproxy.log"),
        ("", ("--logfile", "twistd.log"), "twistd.log"),
        ("", (), "stdout"),  # twistd -n: the terminal
    ],
)
def test_the_daemon_escapes_a_hostile_model_name(
    tmp_path: Path, daemons: list[Daemon], block: str, options: tuple[str, ...], logName: str
) -> None:
    daemons.append(startDaemon(tmp_path, UNREACHABLE + block, *options))
    rid = postHostile(daemons[-1])
    daemons[-1].stop()
    text = (tmp_path / logName).read_text()
    assertSafe(text)
    (line,) = [line for line in lines(text) if rid in line and "[ccproxy.access#" in line]
    assert SHOWN in line
    assert not [line for line in lines(text) if "forged" in line and rid not in line]


def test_the_daemon_keeps_json_fields_as_sent(tmp_path: Path, daemons: list[Daemon]) -> None:
    daemons.append(startDaemon(tmp_path, UNREACHABLE + "log: {file: ccproxy.log, format: json}\n"))
    rid = postHostile(daemons[-1])
    daemons[-1].stop()
    with (tmp_path / "ccproxy.log").open() as f:
        (access,) = [r for r in eventsFromJSONLogFile(f) if r.get("request_id") == rid]
    assert access["model"] == HOSTILE
    assert access["log_level"] == LogLevel.warn


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ([], "twistd.log"),  # daemonized: twistd's default
        (["--logfile", "logs/ccproxy.log"], "logs/ccproxy.log"),
        (["-n", "--logfile", "ccproxy.log"], "ccproxy.log"),
        (["-n"], None),  # stdout
        (["-n", "--logfile", "-"], None),
        (["--syslog"], None),  # the syslog daemon escapes what it receives
        (["--logger", "twisted.logger.globalLogPublisher"], None),  # the user's own
    ],
)
def test_twistd_log_file_is_read_from_its_options(
    tmp_path: Path, options: list[str], expected: str | None
) -> None:
    from twisted.scripts.twistd import ServerOptions

    from ccproxy.daemon.tap import _twistdLogFile

    config = tmp_path / "ccproxy.yaml"
    config.write_text('listen: "tcp:0:interface=127.0.0.1"\n' + UNREACHABLE)
    parsed = ServerOptions()
    parsed.parseOptions([*options, "ccproxy", "--config", str(config)])
    found = _twistdLogFile(parsed.subOptions)
    assert found == (None if expected is None else os.path.abspath(expected))
