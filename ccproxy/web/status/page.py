"""`/status`: the live status page for the person who runs ccproxy.

Who may see it: an admin client, whose key (whatever `authenticate` accepts) is
given once as `x-api-key` or `Authorization: Bearer` (the sign-in form's script
sends it so) and is then a session cookie (`session`); or anyone when the config
has no clients (the API itself is then open to whoever can reach it). Everyone
else gets 401 (the sign-in page) or 403.

What it costs: the data is computed once per `TICK` for every viewer (`current`),
and pushed to at most `MAX_STREAMS` server-sent event streams; a tab past that
polls `/status/snapshot` every `TICK` instead, which reads the same computed
snapshot. Today's usage is read from the ledger (on the ledger's own thread) at
most once per `LEDGER_EVERY`, only while someone looks.

Every answer carries a strict Content-Security-Policy (scripts, styles and images
from ccproxy only, no inline script), cannot be framed and is not cached.
"""

from __future__ import annotations

import importlib.resources
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar

import orjson
from attrs import define, field
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.web.iweb import IRequest

from ccproxy import __version__
from ccproxy.config.model import Client, Config
from ccproxy.config.periods import DAY, periodStart
from ccproxy.errors import ProxyError
from ccproxy.ledger.model import Ledger, Usage
from ccproxy.ledger.store import LedgerUnavailable
from ccproxy.observe.usage import UsageBook
from ccproxy.observe.watch import Watch
from ccproxy.upstream.dispatch import UpstreamHealth
from ccproxy.web.auth import authenticate, callerKey
from ccproxy.web.call import lockedPage
from ccproxy.web.status import render
from ccproxy.web.status.session import COOKIE, Sessions
from ccproxy.web.status.view import Reload, StatusView, detail, statusView

TICK = 2.0
"""Seconds between two snapshots (and two events of each stream)."""
MAX_STREAMS = 8
"""Status event streams served at once; a tab past them polls."""
LEDGER_EVERY = 10.0
"""Seconds between two reads of today's usage from the ledger."""
LEDGER_TIMEOUT = 5.0

HTML = b"text/html; charset=utf-8"
POLICY = (
    b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    b"connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
ASSETS = {
    "status.js": b"text/javascript; charset=utf-8",
    "status.css": b"text/css; charset=utf-8",
    "icon.svg": b"image/svg+xml",
}


def _asset(name: str) -> bytes:
    """A file of `assets/`, shipped in the package (setup.cfg's package_data)."""
    return importlib.resources.files("ccproxy.web.status").joinpath("assets", name).read_bytes()


class NotSignedIn(Exception):
    """No session and no key: the sign-in page."""


@define
class StatusPage:
    """The page, its data and its viewers, for one app."""

    clock: IReactorTime
    config: Callable[[], Config]
    """The current config."""
    generation: Callable[[], int]
    health: Callable[[], dict[str, UpstreamHealth]]
    watch: Watch
    usageBook: UsageBook
    ledger: Ledger | None = None
    startedAt: float = 0.0
    sessions: Sessions = field(factory=Sessions)
    reload: Reload | None = None
    identify: Identify | None = None
    """How the API checks a caller (`SignIn.identify`: a client key or a gateway
    token); without it, client keys only (`authenticate`)."""
    streams: dict[IRequest, Deferred[None]] = field(factory=dict)
    _snapshot: tuple[float, StatusView, bytes] | None = None
    _tick: IDelayedCall | None = None
    _usage: Usage | None = None
    _usageAt: float | None = None
    _usageNote: str | None = None
    _reading: Deferred[Usage] | None = None
    _assets: dict[str, bytes] = field(factory=lambda: {name: _asset(name) for name in ASSETS})

    log: ClassVar[Logger] = Logger()

    # -- what the routes answer ------------------------------------------------------

    async def page(self, request: IRequest) -> bytes:
        """`GET /status`: the page, or the sign-in page (401), or 403."""
        _secure(request)
        try:
            client = await self._signIn(request)
        except NotSignedIn:
            request.setResponseCode(401)
            return _html(request, render.signIn())
        except ProxyError as error:
            request.setResponseCode(error.status)
            if error.status == 401:
                return _html(request, render.signIn(error.message))
            return _html(request, render.refused(error.status, error.message))
        view, _ = self.current()
        return _html(request, render.page(view, client.name if client else None))

    async def login(self, request: IRequest) -> bytes:
        """`POST /status/login`, the sign-in form's request (made by the page's
        script): the key as `x-api-key`, never in a body (the site reads no body
        from a caller without a valid key), for a session cookie (204). Refused: an
        error envelope, whose message the form shows."""
        _secure(request)
        if callerKey(request) is None:
            raise ProxyError(401, "no key given: send it as x-api-key")
        await self._signIn(request)
        request.setResponseCode(204)
        return b""

    def logout(self, request: IRequest) -> bytes:
        """`POST /status/logout`: this session is refused from now on."""
        _secure(request)
        cookie = request.getCookie(COOKIE)
        if cookie:
            self.sessions.revoke(cookie.decode("latin-1"), self.clock.seconds())
        _setCookie(request, "", 0)
        request.setResponseCode(303)
        request.setHeader(b"location", b"/status")
        return b""

    def snapshot(self, request: IRequest) -> bytes:
        """`GET /status/snapshot`: the sections as JSON (the polling tab's read)."""
        _secure(request)
        self._mustSee(request)
        request.setHeader(b"content-type", b"application/json")
        return self.current()[1]

    def events(self, request: IRequest) -> Deferred[None] | bytes:
        """`GET /status/events`: the sections as a server-sent event each `TICK`."""
        _secure(request)
        self._mustSee(request)
        if len(self.streams) >= MAX_STREAMS:
            raise ProxyError(
                503,
                f"{MAX_STREAMS} status streams are open: poll /status/snapshot",
                "overloaded_error",
            )
        request.setHeader(b"content-type", b"text/event-stream")
        request.setHeader(b"x-accel-buffering", b"no")
        request.write(b"retry: 2000\n\n" + _event(self.current()[1]))

        def gone(_: Deferred[None]) -> None:
            self.streams.pop(request, None)

        done: Deferred[None] = Deferred(gone)
        self.streams[request] = done
        self._schedule()
        return done

    def requestDetail(self, request: IRequest, requestId: str) -> bytes:
        """`GET /status/requests/<id>`: one recent request's access record."""
        _secure(request)
        try:
            self._viewer(request)
        except (NotSignedIn, ProxyError):
            request.setResponseCode(303)
            request.setHeader(b"location", b"/status")
            return b""
        finished = self.watch.find(requestId)
        if finished is None:
            request.setResponseCode(404)
            return _html(
                request,
                render.refused(404, "no such request among the recent ones"),
            )
        return _html(request, render.detailPage(detail(finished, self.config().logPayloads)))

    def asset(self, request: IRequest, name: str) -> bytes:
        """`GET /status/static/<name>`: the page's script, style and icon."""
        _secure(request)
        body = self._assets.get(name)
        if body is None:
            raise ProxyError(404, f"no such file: {name[:100]}")
        request.setHeader(b"content-type", ASSETS[name])
        request.setHeader(b"cache-control", b"no-cache")
        return body

    # -- the daemon's side -----------------------------------------------------------

    def noteReload(self, ok: bool, message: str) -> None:
        """The last SIGHUP's outcome, shown on the page."""
        self.reload = Reload(ok, self.clock.seconds(), message)
        self._snapshot = None

    def closeStreams(self) -> None:
        """End every status stream (the daemon is draining: they would hold it)."""
        streams, self.streams = self.streams, {}
        for done in streams.values():
            done.callback(None)
        self._unschedule()

    # -- the data --------------------------------------------------------------------

    def current(self) -> tuple[StatusView, bytes]:
        """The view now and its sections as JSON, computed at most once per `TICK`
        whoever asks."""
        now = self.clock.seconds()
        last = self._snapshot
        if last is None or not 0 <= now - last[0] < TICK * 0.9:
            view = self.build(now)
            data = orjson.dumps({"sections": render.fragments(view)})
            self._snapshot = (now, view, data)
        return self._snapshot[1], self._snapshot[2]

    def build(self, now: float) -> StatusView:
        """The view model at `now` (today's usage as last read)."""
        config = self.config()
        self._refreshUsage(now)
        if self.ledger is None:
            usage: Usage | None = self.usageBook.usage()
        else:
            usage = self._usage
        return statusView(
            now,
            version=__version__,
            generation=self.generation(),
            startedAt=self.startedAt,
            reload=self.reload,
            watch=self.watch,
            health=self.health(),
            clients=config.clients,
            usage=usage,
            usageToday=self.ledger is not None,
            usageNote=self._usageNote,
            currency=config.prices.currency,
        )

    def _refreshUsage(self, now: float) -> None:
        """Read today's usage from the ledger (its own thread) unless a read is under
        way or the last is recent; the page shows the last one meanwhile."""
        ledger = self.ledger
        if ledger is None or self._reading is not None:
            return
        if self._usageAt is not None and 0 <= now - self._usageAt < LEDGER_EVERY:
            return
        self._usageAt = now
        reading = self._reading = Deferred.fromCoroutine(_read(ledger, periodStart(now, DAY)))
        timer = self.clock.callLater(LEDGER_TIMEOUT, reading.cancel)

        def read(usage: Usage) -> None:
            self._usage, self._usageNote = usage, None

        def failed(failure: Any) -> None:
            if failure.check(CancelledError):
                self._usageNote = f"the ledger did not answer within {LEDGER_TIMEOUT:g} s"
            elif failure.check(LedgerUnavailable):
                self._usageNote = f"the ledger is unavailable: {failure.value}"
            else:
                self.log.failure("reading today's usage for the status page", failure)
                self._usageNote = "the ledger could not be read (see the log)"

        def over(_: object) -> None:
            self._reading = None
            if timer.active():
                timer.cancel()

        reading.addCallbacks(read, failed)
        reading.addBoth(over)

    def _schedule(self) -> None:
        if self._tick is None and self.streams:
            self._tick = self.clock.callLater(TICK, self._push)

    def _unschedule(self) -> None:
        tick, self._tick = self._tick, None
        if tick is not None and tick.active():
            tick.cancel()

    def _push(self) -> None:
        """One tick: one snapshot, written to every stream."""
        self._tick = None
        if not self.streams:
            return
        self._snapshot = None  # the streams get this tick's, however recent a poll's was
        frame = _event(self.current()[1])
        for request in list(self.streams):
            request.write(frame)
        self._schedule()

    # -- who is looking --------------------------------------------------------------

    def _mustSee(self, request: IRequest) -> None:
        try:
            self._viewer(request)
        except NotSignedIn:
            raise ProxyError(401, "sign in at /status first") from None

    def _viewer(self, request: IRequest) -> Client | None:
        """The admin client looking (None: the config has no clients, all may look).
        A key given now (header) makes a session cookie; else the cookie must hold."""
        config = self.config()
        if not config.clients:
            return None
        now = self.clock.seconds()
        if callerKey(request) is not None:
            return self._admit(request, authenticate(request, config), now)
        cookie = request.getCookie(COOKIE)
        if cookie:
            client = self.sessions.check(cookie.decode("latin-1"), config.clients, now)
            if client is not None:
                return client
        raise NotSignedIn()

    async def _signIn(self, request: IRequest) -> Client | None:
        """`_viewer`, with a key given now checked as the API checks it: a client
        key or a gateway token from `/login` (looked up off the reactor)."""
        config = self.config()
        if self.identify is None or not config.clients or callerKey(request) is None:
            return self._viewer(request)
        client, _ = await self.identify(request, config)
        return self._admit(request, client, self.clock.seconds())

    def _admit(self, request: IRequest, client: Client | None, now: float) -> Client:
        """An admin client's session cookie; 403 for any other client."""
        if client is None or not client.admin:
            raise ProxyError(403, "the status page is for admin clients", "permission_error")
        _setCookie(request, self.sessions.make(client, now), self.sessions.ttl)
        return client


Identify = Callable[[IRequest, Config], Awaitable[tuple[Client | None, bool]]]


async def _read(ledger: Ledger, since: float) -> Usage:
    return await ledger.usage(since)


def _event(data: bytes) -> bytes:
    return b"event: status\ndata: " + data + b"\n\n"


def _secure(request: IRequest) -> None:
    """The headers of every status answer: its strict CSP, and a locked page's."""
    lockedPage(request, POLICY)


def _html(request: IRequest, body: bytes) -> bytes:
    request.setHeader(b"content-type", HTML)
    return body


def _setCookie(request: IRequest, value: str, maxAge: int) -> None:
    """The session cookie: HttpOnly, SameSite=Strict, for /status only; Secure when
    the page came over https."""
    request.addCookie(
        COOKIE,
        value.encode("ascii"),
        path=b"/status",
        max_age=str(maxAge).encode(),
        httpOnly=True,
        secure=request.isSecure(),
        sameSite=b"strict",
    )
