"""Where the daemon's log goes: a size-rotated file with a bounded number kept, as
plain text or JSON records, and readable panels on a terminal.

twistd's own `--logfile` rotates at 1 MB and keeps every old file forever; a daemon
that runs for months on a shared host needs `log: {file, max_bytes, keep}`. The
observer is handed to twistd as the application's `ILogObserver` component, the
documented way for an application to choose its logging.

Every text this module writes has its control characters escaped: model names,
paths and upstream error messages come from other people, and an admin reads the
log with `tail` on a terminal, where an ESC sequence, a BEL or a CR would act on the
terminal, and an LF would start a line that looks like the daemon's own.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Callable
from operator import itemgetter
from string import Formatter
from typing import IO, Any

from twisted.logger import (
    FileLogObserver,
    ILogObserver,
    LogEvent,
    LogLevel,
    formatEvent,
    formatEventAsClassicLogText,
    formatTime,
    jsonFileLogObserver,
    timeFormatRFC3339,
)
from twisted.python.logfile import LogFile
from zope.interface import implementer

from ccproxy.config import LogSettings


def openLogFile(settings: LogSettings) -> LogFile:
    """The rotating log file; rotated past `max_bytes`, `keep` old files kept."""
    assert settings.file is not None
    path = os.path.abspath(settings.file)
    return LogFile(
        os.path.basename(path),
        os.path.dirname(path),
        rotateLength=settings.maxBytes,
        maxRotatedFiles=settings.keep,
    )


def logFileProblem(settings: LogSettings) -> str | None:
    """Why the log file cannot be opened, if it cannot: said before twistd starts,
    as one line naming the key, where `LogFile` would raise with a traceback."""
    if settings.file is None:
        return None
    try:
        with open(settings.file, "a"):
            pass
    except OSError as e:
        return f"cannot open {settings.file} ({e.strerror})"
    return None


def fileObserver(settings: LogSettings, logFile: IO[Any]) -> ILogObserver:
    """Text lines (twistd's format) or JSON records (RFC 7464, one per line; JSON
    escapes control characters itself, and its fields stay as they were sent)."""
    if settings.format == "json":
        return jsonFileLogObserver(logFile)
    return textObserver(logFile)


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
"""C0, DEL, C1, and the Unicode line and paragraph separators (`str.splitlines`
breaks lines there)."""
_CONTROL_BUT_LAYOUT = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029]")
"""The same, less LF and TAB: twistd's own line layout (a multi-line message or a
traceback goes on lines that begin with a TAB)."""
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    if char in _NAMED:
        return _NAMED[char]
    return f"\\x{ord(char):02x}" if ord(char) <= 0xFF else f"\\u{ord(char):04x}"


def escapeControls(text: str) -> str:
    """`text` with every control character written as an escape: ESC as `\\x1b`,
    CR as `\\r`, LF as `\\n`."""
    return _CONTROL.sub(_escape, text)


def textSafe(event: LogEvent) -> LogEvent:
    """The event for a text log: its string fields with control characters escaped.

    The event itself is left alone (the JSON log and other observers get the
    fields as they were); `log_` keys are Twisted's own, not a caller's text.
    """
    # One search over all the event's text first: the common event (an access
    # line's 30 fields) has no control character anywhere, and a search per
    # field cost a third of writing its line. Joined text has one exactly where
    # a field (or a `log_` key, left to the exact pass below) has one.
    if not _CONTROL.search("".join([value for value in event.values() if isinstance(value, str)])):
        return event
    unsafe = [
        key
        for key, value in event.items()
        if isinstance(value, str) and not key.startswith("log_") and _CONTROL.search(value)
    ]
    if not unsafe:
        return event
    safe = dict(event)
    for key in unsafe:
        safe[key] = escapeControls(safe[key])
    return safe


def _safeLayout(text: str) -> str:
    """What the fields cannot cover (an object's `str`, a traceback's exception
    message, a legacy `log.msg` text): escaped, keeping twistd's line layout."""
    return _CONTROL_BUT_LAYOUT.sub(_escape, text)


def textObserver(outFile: IO[Any]) -> ILogObserver:
    """twistd's text log format (`textFileLogObserver`), with control characters
    escaped: a field's LF shows as `\\n` and cannot forge a line."""
    stamp = _SecondStamp()
    formats = Formats()

    def render(event: LogEvent) -> str | None:
        text = classicLine(event, stamp, formats)
        if text is not None and (
            text[:-1].isprintable() or _CONTROL.search(text, 0, len(text) - 1) is None
        ):
            # The common line (an access line) has nothing to escape: one look at
            # the line says so, for less than escaping its fields one by one.
            # `isprintable` (every control character is unprintable) is that look
            # at a third less than the search, which judges the rest.
            return text
        event = textSafe(event)
        text = classicLine(event, stamp, formats) or formatEventAsClassicLogText(
            event, formatTime=stamp
        )
        return None if text is None else _safeLayout(text)

    return FileLogObserver(outFile, render)


class _SecondStamp:
    """`formatTime` in RFC 3339, whose resolution is a second: made once per second
    (Twisted's works out the time zone's offset on every call)."""

    def __init__(self) -> None:
        self._second: int | None = None
        self._text = "-"

    def __call__(self, when: float | None) -> str:
        if when is None:
            return "-"
        second = int(when)
        if second != self._second:
            self._text = formatTime(when, timeFormatRFC3339)
            self._second = second
        return self._text


class Formats:
    """Plain log formats, each made once into what `str.format_map` does with it.

    `format_map` parses its format at every call and looks each field up by a
    name it makes anew (hashed anew): an access line's twenty fields cost some
    33,000 instructions that way, 17,000 as a `str.format` of the fields read
    by one `itemgetter` of the names. Only a format whose every field is a
    plain name (no conversion, spec, attribute or index) is made so; the others
    keep `format_map`. At most `MAX` formats are kept (they are the code's own:
    a handful); past that, a new one is formatted by `format_map`."""

    MAX = 256

    def __init__(self) -> None:
        self._made: dict[str, Callable[[LogEvent], str] | None] = {}

    def format(self, fmt: str, event: LogEvent) -> str:
        """`fmt.format_map(event)`, exceptions included."""
        made = self._made.get(fmt, _UNMADE)
        if made is _UNMADE:
            made = _made(fmt)
            if len(self._made) < self.MAX:
                self._made[fmt] = made
        if made is None:
            return fmt.format_map(event)
        return made(event)


_UNMADE: Any = object()
_FIELD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_FORMATTER = Formatter()


def _made(fmt: str) -> Callable[[LogEvent], str] | None:
    """`fmt.format_map` as a function of the event: the literal text with its
    braces doubled and `{}` for each field, formatted with the fields' values in
    order (`str.format` formats `{}` as `format_map` formats `{name}`: by
    `format(value, "")`); None when a field is not a plain name."""
    try:
        parts = list(_FORMATTER.parse(fmt))
    except ValueError:
        return None
    template, names = [], []
    for literal, name, spec, conversion in parts:
        template.append(literal.replace("{", "{{").replace("}", "}}"))
        if name is None:
            continue
        if spec or conversion is not None or not _FIELD.fullmatch(name):
            return None
        template.append("{}")
        names.append(name)
    text = "".join(template)
    if not names:
        return None
    if len(names) == 1:  # itemgetter of one name gives the value, not a tuple
        (only,) = names
        return lambda event: text.format(event[only])
    values = itemgetter(*names)
    return lambda event: text.format(*values(event))


def classicLine(event: LogEvent, stamp: Any, formats: Formats | None = None) -> str | None:
    """`formatEventAsClassicLogText`'s line for the common event (one access line
    per request): a plain `str` format without Twisted's `{callable()}` syntax,
    no traceback, formatted by `str.format_map` in C (or as it would, by
    `formats`) rather than Twisted's Python formatter (most of a line's cost).
    None for any other event, or one this cannot format: Twisted's own
    formatting handles (and explains) those."""
    fmt = event.get("log_format")
    if type(fmt) is not str or "()" in fmt or "log_failure" in event or "log_flattened" in event:
        return None
    try:
        message = fmt.format_map(event) if formats is None else formats.format(fmt, event)
    except Exception:  # a missing field, a bad spec: Twisted says what went wrong
        return None
    if not message:
        return None
    system = event.get("log_system")
    if system is None:
        level = event.get("log_level")
        system = f"{event.get('log_namespace', '-')}#{'-' if level is None else level.name}"
    elif type(system) is not str:
        return None
    return f"{stamp(event.get('log_time'))} [{system}] {message}".replace("\n", "\n\t") + "\n"


PANELS = frozenset(("ccproxy.access", "ccproxy.payload"))
"""The log namespaces `PrettyObserver` shows as panels."""


@implementer(ILogObserver)
class PrettyObserver:
    """Each request as a readable panel on a terminal (the `pretty: true` option).

    Only for a terminal: the caller checks `isatty()`, so a daemon's log file
    never gets terminal codes. Events that are not panels go to `others`, if given
    (see `terminalObserver`), and are otherwise left to the other observers.
    """

    def __init__(self, stream: IO[str], others: ILogObserver | None = None) -> None:
        from rich.console import Console

        self._console = Console(file=stream, highlight=False)
        self._others = others

    def __call__(self, event: dict[str, Any]) -> None:
        from rich.panel import Panel
        from rich.text import Text

        namespace = event.get("log_namespace")
        if namespace not in PANELS:
            if self._others is not None:
                self._others(event)
        elif namespace == "ccproxy.access":
            event = textSafe(event)
            status = event.get("status", 0)
            style = "green" if status and status < 400 else "red"
            # A Text title: a string title would read a model name's [brackets] as
            # rich markup (styles, links).
            title = Text(f"{event.get('request_id')}  {event.get('client')}  {event.get('model')}")
            body = Text(_safeLayout(formatEvent(event)))
            self._console.print(Panel(body, title=title, border_style=style, expand=False))
        elif namespace == "ccproxy.payload":
            event = textSafe(event)
            body = Text()
            body.append("request  ", style="bold")
            body.append(_safeLayout(str(event.get("request_body", ""))) + "\n")
            body.append("response ", style="bold")
            body.append(_safeLayout(str(event.get("response_body", ""))))
            title = Text(f"{event.get('request_id')} payloads")
            self._console.print(Panel(body, title=title, expand=False))


def terminalObserver(stream: IO[str]) -> ILogObserver:
    """twistd's own log lines on a terminal, with each exchange as a panel in place
    of its line (not beside it: that printed every exchange twice)."""
    return PrettyObserver(stream, others=textObserver(stream))


def workerObserver(observer: ILogObserver, worker: int) -> ILogObserver:
    """A worker's events, each marked with its number: a `worker` field (JSON),
    and `w2 ` before the namespace on a text line (`[w2 ccproxy.access#info]`)."""

    def tagged(event: LogEvent) -> None:
        system = event.get("log_system")
        if system is None:
            level = event.get("log_level")
            system = f"{event.get('log_namespace', '-')}#{getattr(level, 'name', '-')}"
        observer({**event, "worker": worker, "log_system": f"w{worker} {system}"})

    return tagged


def quietLevels(observer: ILogObserver, level: LogLevel = LogLevel.info) -> ILogObserver:
    """Drop debug events before they are formatted: what
    `FilteringLogObserver(observer, [LogLevelFilterPredicate(level)])` keeps (an
    event with a level at least `level` and a namespace), judged by a set lookup
    where that one splits and joins the namespace, and calls through a predicate
    chain, for every event (a tenth of an access line's cost)."""
    kept = frozenset(each for each in LogLevel.iterconstants() if each >= level)

    def quiet(event: LogEvent) -> None:
        if event.get("log_level") in kept and event.get("log_namespace"):
            observer(event)

    return quiet


def isTerminal(stream: IO[Any]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError, io.UnsupportedOperation):
        return False
