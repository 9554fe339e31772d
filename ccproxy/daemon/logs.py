"""Where the daemon's log goes: a size-rotated file with a bounded number kept, as
plain text or JSON lines, and readable panels on a terminal.

twistd's own `--logfile` rotates at 1 MB and keeps every old file forever; a daemon
that runs for months on a shared host needs `log: {file, max_bytes, keep}`. The
observer is handed to twistd as the application's `ILogObserver` component, the
documented way for an application to choose its logging.
"""

from __future__ import annotations

import io
import os
from typing import IO, Any

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    formatEvent,
    jsonFileLogObserver,
    textFileLogObserver,
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
    """Text lines (twistd's format) or JSON records (RFC 7464, one per line)."""
    if settings.format == "json":
        return jsonFileLogObserver(logFile)
    return textFileLogObserver(logFile)


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
            status = event.get("status", 0)
            style = "green" if status and status < 400 else "red"
            title = f"{event.get('request_id')}  {event.get('client')}  {event.get('model')}"
            body = Text(formatEvent(event))
            self._console.print(Panel(body, title=title, border_style=style, expand=False))
        elif namespace == "ccproxy.payload":
            body = Text()
            body.append("request  ", style="bold")
            body.append(str(event.get("request_body", "")) + "\n")
            body.append("response ", style="bold")
            body.append(str(event.get("response_body", "")))
            self._console.print(
                Panel(body, title=f"{event.get('request_id')} payloads", expand=False)
            )


def terminalObserver(stream: IO[str]) -> ILogObserver:
    """twistd's own log lines on a terminal, with each exchange as a panel in place
    of its line (not beside it: that printed every exchange twice)."""
    return PrettyObserver(stream, others=textFileLogObserver(stream))


def quietLevels(observer: ILogObserver, level: LogLevel = LogLevel.info) -> ILogObserver:
    """Drop debug events before they are formatted."""
    return FilteringLogObserver(observer, [LogLevelFilterPredicate(defaultLogLevel=level)])


def isTerminal(stream: IO[Any]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError, io.UnsupportedOperation):
        return False
