"""The status page (`/status`): its data as a view model (`ccproxy.web.status.view`,
fed by `ccproxy.observe.watch`), who may see it, its session cookie, its headers,
and its live stream's cost. The page in a real browser: test_status_browser.py."""

from __future__ import annotations

import re
from typing import Any

import orjson
import pytest
from treq.testing import StubTreq
from twisted.internet.defer import Deferred

from ccproxy.config import Config
from ccproxy.config.model import Budget, Client
from ccproxy.ledger.model import Group, Tally, Usage
from ccproxy.ledger.store import LedgerUnavailable
from ccproxy.observe.accesslog import AccessRecord, Attempt
from ccproxy.observe.watch import HOUR, MAX_UPSTREAMS, RECENT, TTFB_SAMPLES, Watch
from ccproxy.upstream.dispatch import UpstreamHealth
from ccproxy.web.status import page as statuspage
from ccproxy.web.status.render import e, fragments
from ccproxy.web.status.session import Sessions
from ccproxy.web.status.view import IN_FLIGHT_SHOWN, detail, percentile, statusView
from tests.support.fakes import jsonReply, sseReply
from tests.support.harness import BASE_CONFIG, ClientReply, Harness, message, resultOf

T0 = 1_780_000_020.0  # a minute's start
ROOT_KEY, ALICE_KEY = "root-key-0002-abcdef", "alice-key-0001-abcdef"
ROOT, ALICE = {"x-api-key": ROOT_KEY}, {"x-api-key": ALICE_KEY}
TEAM = (
    BASE_CONFIG
    + f"""
clients:
  - {{name: alice, key: {ALICE_KEY}, budget: {{tokens_per_day: 1000}}}}
  - {{name: root, key: {ROOT_KEY}, admin: true}}
"""
)


def record(
    rid: str,
    *attempts: Attempt,
    started: float = T0,
    upstream: str | None = "up",
    ttfb: float | None = 0.2,
    status: int = 200,
    error: str | None = None,
) -> AccessRecord:
    r = AccessRecord(rid, "POST", "/v1/messages", started, client="alice", model="claude-x")
    r.upstream, r.status = upstream, status
    r.firstByte = None if ttfb is None else started + ttfb
    r.attempts = list(attempts) or [Attempt("up", status)]
    if error:
        r.fail(status, "api_error", error)
    return r


def finish(watch: Watch, r: AccessRecord, now: float) -> None:
    watch.begin(r, lambda: 0)
    watch.end(r, now, r.fields(now))


def view(watch: Watch, now: float, **kw: Any) -> Any:
    args: dict[str, Any] = {
        "version": "9.9",
        "generation": 3,
        "startedAt": T0 - 100,
        "reload": None,
        "watch": watch,
        "health": {"up": UpstreamHealth("closed", 1, 0), "other": UpstreamHealth("open", 0, 2)},
        "clients": (),
        "usage": None,
        "usageToday": True,
    }
    args.update(kw)
    return statusView(now, **args)


# -- the view model -----------------------------------------------------------------------


def test_requests_in_flight_show_their_age_and_tokens_so_far() -> None:
    watch = Watch()
    r = AccessRecord("req_1", "POST", "/v1/messages", T0, client="alice", model="m", stream=True)
    tokens = [0]
    watch.begin(r, lambda: tokens[0])
    r.upstream = "up"
    tokens[0] = 17
    v = view(watch, T0 + 12.5)
    (live,) = v.inFlight
    assert (live.client, live.model, live.upstream, live.stream) == ("alice", "m", "up", True)
    assert live.ageSeconds == 12.5 and live.tokens == 17
    assert v.uptimeSeconds == 112.5 and v.generation == 3 and v.version == "9.9"
    watch.end(r, T0 + 13, r.fields(T0 + 13))
    assert view(watch, T0 + 14).inFlight == ()


def test_only_the_oldest_requests_in_flight_are_listed() -> None:
    watch = Watch()
    count = IN_FLIGHT_SHOWN + 20
    for i in range(count):
        watch.begin(AccessRecord(f"r{i}", "POST", "/v1/messages", T0 + count - i), lambda: 0)
    v = view(watch, T0 + 1000)
    assert v.inFlightCount == count and len(v.inFlight) == IN_FLIGHT_SHOWN
    assert v.inFlight[0].requestId == f"r{count - 1}"  # the oldest first
    assert "and 20 more" in fragments(v)["inflight"]


def test_an_upstream_shows_its_last_five_minutes_and_its_last_error() -> None:
    watch = Watch()
    finish(watch, record("old", started=T0 - 600, ttfb=9.0), T0 - 600)  # outside the window
    for i in range(19):
        finish(watch, record(f"ok{i}", started=T0 + i, ttfb=(i + 1) / 100), T0 + i)
    failed = record(
        "bad",
        Attempt("up", 502, "api_error"),
        Attempt("other", 200),
        started=T0 + 30,
        upstream="other",
        ttfb=1.0,
    )
    finish(watch, failed, T0 + 30)
    v = view(watch, T0 + 59)
    up = next(u for u in v.upstreams if u.name == "up")
    assert (up.breaker, up.active, up.attempts, up.errors) == ("closed", 1, 20, 1)
    assert up.errorRate == 0.05
    assert (up.ttfbP50, up.ttfbP95) == (100, 190)  # 10..190 ms; the old 9 s is out
    assert up.lastError == "up: 502 api_error" and up.lastErrorAgo == 29
    assert len(up.perMinute) == HOUR and up.perMinute[-1] == 20 and up.perMinute[-11] == 1
    assert up.ttfbPerMinute[-11] == 9000 and up.ttfbPerMinute[-2] is None
    other = next(u for u in v.upstreams if u.name == "other")
    assert (other.breaker, other.queued, other.attempts, other.errors) == ("open", 2, 1, 0)
    assert other.ttfbP50 == 1000 and other.lastError is None


def test_the_last_error_is_the_record_s_own_message_when_that_upstream_answered_last() -> None:
    watch = Watch()
    r = record("e", Attempt("up", 500, "api_error"), status=500, error="upstream up said: boom")
    finish(watch, r, T0)
    (up,) = [u for u in view(watch, T0).upstreams if u.name == "up"]
    assert up.lastError == "upstream up said: boom"


def test_skipped_upstreams_are_not_counted_as_tried() -> None:
    watch = Watch()
    r = record("s", Attempt("other", None, note="skipped, circuit open"), Attempt("up", 200))
    finish(watch, r, T0)
    v = view(watch, T0)
    assert [u.attempts for u in v.upstreams] == [0, 1]  # other, up
    assert detail(watch.recent[-1], False).failover is False


def test_the_watch_stays_bounded_whatever_the_traffic() -> None:
    watch = Watch()
    count = max(RECENT, TTFB_SAMPLES) + 50
    for i in range(count):
        finish(watch, record(f"r{i}"), T0)
    assert len(watch.recent) == RECENT and watch.find("r0") is None
    assert watch.find(f"r{count - 1}") is not None
    assert len(watch.upstreams["up"].minutes[-1].ttfbMs) == TTFB_SAMPLES
    for minute in range(HOUR * 3):
        finish(watch, record(f"m{minute}", started=T0 + 60 * minute), T0 + 60 * minute)
    assert len(watch.upstreams["up"].minutes) == HOUR
    for i in range(MAX_UPSTREAMS * 2):
        finish(watch, record(f"u{i}", Attempt(f"up{i}", 200), upstream=f"up{i}"), T0)
    assert len(watch.upstreams) == MAX_UPSTREAMS
    assert watch.live == {}


def test_clients_today_with_their_budget_used() -> None:
    alice = Client("alice", "k1", budget=Budget(tokensPerDay=1000, costPerDay=2.0))
    bob = Client("bob", "k2")
    root = Client("root", "k3", admin=True)
    usage = Usage(
        (
            Group("alice", "claude-*", "2026-06-01", Tally(3, 1, 100, 50, 0, 50, 1.5)),
            Group("alice", "other", "2026-06-01", Tally(1, 0, 100, 0, 0, 0, 0.0)),
            Group("gone", "claude-*", "2026-06-01", Tally(1, 0, 1, 1, 0, 0, 0.0)),
        )
    )
    v = view(Watch(), T0, clients=(alice, bob, root), usage=usage)
    byName = {c.name: c for c in v.clients}
    assert list(byName) == ["alice", "bob", "gone", "root"]
    a = byName["alice"]
    assert (a.requests, a.errors, a.tokens, a.cost) == (4, 1, 300, 1.5)
    assert a.budgetUsed == 0.75  # the cost cap is the nearer: 1.5 of 2.0
    assert byName["bob"].budgetUsed is None and byName["bob"].requests == 0
    assert byName["root"].admin
    since = view(Watch(), T0, clients=(alice,), usage=usage, usageToday=False)
    assert since.clients[0].budgetUsed is None  # a total since start is no day's
    assert view(Watch(), T0, usage=None, usageNote="the ledger is away").clients is None


def test_the_detail_of_a_request_has_its_attempts_and_never_a_body_unless_logged() -> None:
    watch = Watch()
    r = record(
        "d",
        Attempt("up", 502, "api_error"),
        Attempt("up", 502, "api_error"),
        Attempt("other", 200),
        upstream="other",
    )
    r.route, r.inputTokens, r.outputTokens = "claude-*", 11, 22
    watch.begin(r, lambda: 0)
    watch.end(r, T0 + 1, r.fields(T0 + 1), ("the request", "the answer"))
    finished = watch.find("d")
    assert finished is not None
    d = detail(finished, logPayloads=False)
    assert (d.retries, d.failover) == (1, True)
    rows = dict(d.rows)
    assert rows["route"] == "claude-*" and rows["output tokens"] == "22"
    assert rows["duration (ms)"] == "1000" and rows["stream"] == "no"
    assert d.attempts == ("up: 502 api_error", "up: 502 api_error", "other: 200")
    assert d.requestPayload is None and d.responsePayload is None
    shown = detail(finished, logPayloads=True)
    assert (shown.requestPayload, shown.responsePayload) == ("the request", "the answer")


def test_percentiles_by_nearest_rank() -> None:
    assert percentile([], 0.5) is None
    assert percentile([7], 0.95) == 7
    assert percentile(list(range(1, 101)), 0.5) == 50
    assert percentile(list(range(1, 101)), 0.95) == 95
    assert percentile([1, 2], 0.5) == 1


def test_every_value_is_escaped_in_the_sections() -> None:
    watch = Watch()
    hostile = '<script>alert("x")</script>'
    r = record("h", Attempt("up", 500, "api_error"), status=500, error=hostile)
    r.model = hostile
    finish(watch, r, T0)
    live = AccessRecord("l", "POST", "/v1/messages", T0, client=hostile, model=hostile)
    watch.begin(live, lambda: 0)
    html = "".join(fragments(view(watch, T0 + 1)).values())
    assert "<script>" not in html and e(hostile) in html


# -- sessions ---------------------------------------------------------------------------


def test_a_session_holds_no_key_and_ends_as_it_should() -> None:
    sessions = Sessions(ttl=100)
    root = Client("root", "root-secret-key", admin=True)
    cookie = sessions.make(root, T0)
    assert "root-secret-key" not in cookie
    assert sessions.check(cookie, [root], T0 + 50) == root
    assert sessions.check(cookie, [root], T0 + 100) is None  # expired
    assert sessions.check(cookie, [Client("root", "a-new-key", admin=True)], T0) is None
    assert sessions.check(cookie, [Client("root", "root-secret-key")], T0) is None  # no admin
    assert sessions.check(cookie, [], T0) is None
    forged = cookie.rsplit(".", 1)[0] + ".AAAA"
    assert sessions.check(forged, [root], T0) is None
    for junk in ("", "a.b.c", "a.b.c.d", "!!.1.n.m", "x" * 5000):
        assert sessions.check(junk, [root], T0) is None
    other = sessions.make(root, T0)
    sessions.revoke(cookie, T0)
    assert sessions.check(cookie, [root], T0) is None
    assert sessions.check(other, [root], T0) == root


# -- over HTTP -----------------------------------------------------------------------------


def fresh(
    h: Harness, method: str, path: str, body: bytes | None = None, **headers: str
) -> ClientReply:
    """One request from a new browser: no cookie but `headers`'s, no redirect followed."""
    client = StubTreq(h.app.resource())
    d = client.request(
        method,
        "http://proxy.test" + path,
        data=body,
        headers={k.replace("_", "-"): v for k, v in headers.items()},
        allow_redirects=False,
    )

    async def collect(response: Any) -> ClientReply:
        raw = await client.content(response)
        return ClientReply(
            response.code,
            {k.decode().lower(): v[-1].decode() for k, v in response.headers.getAllRawHeaders()},
            raw,
        )

    d.addCallback(lambda r: Deferred.fromCoroutine(collect(r)))
    client.flush()
    return resultOf(d)


def cookieOf(reply: ClientReply) -> str:
    match = re.match(r"ccproxy_status=([^;]*)", reply.headers["set-cookie"])
    assert match
    return match.group(1)


def sectionsOf(reply: ClientReply) -> dict[str, str]:
    assert reply.status == 200, reply.body
    return orjson.loads(reply.body)["sections"]


def assertLocked(reply: ClientReply) -> None:
    policy = reply.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert "unsafe-inline" not in policy and "default-src 'none'" in policy
    assert reply.headers["x-frame-options"] == "DENY"
    assert reply.headers["x-content-type-options"] == "nosniff"
    assert reply.headers["referrer-policy"] == "no-referrer"
    assert reply.headers["cache-control"] == "no-store"


def test_the_page_is_for_admins_only_and_its_cookie_holds_no_key() -> None:
    h = Harness.build(TEAM)
    signIn = h.call("GET", "/status")
    assert signIn.status == 401 and b'id="login"' in signIn.body
    assert "set-cookie" not in signIn.headers
    assertLocked(signIn)
    assert h.call("GET", "/status", headers={"x-api-key": "wrong-key-0009"}).status == 401
    refused = h.call("GET", "/status", headers=ALICE)
    assert refused.status == 403 and "set-cookie" not in refused.headers
    assertLocked(refused)
    assert h.call("GET", "/status/snapshot", headers=ALICE).status == 403
    page = h.call("GET", "/status", headers={"authorization": f"Bearer {ROOT_KEY}"})
    assert page.status == 200 and page.headers["content-type"].startswith("text/html")
    assertLocked(page)
    setCookie = page.headers["set-cookie"]
    assert "HttpOnly" in setCookie and "SameSite=strict" in setCookie
    assert "Path=/status" in setCookie and "Secure" not in setCookie  # plain http
    assert ROOT_KEY not in setCookie
    assert b"<script>" not in page.body and b'src="/status/static/status.js"' in page.body
    cookie = f"ccproxy_status={cookieOf(page)}"
    assert fresh(h, "GET", "/status", cookie=cookie).status == 200
    assert set(sectionsOf(fresh(h, "GET", "/status/snapshot", cookie=cookie))) == {
        "summary",
        "inflight",
        "upstreams",
        "clients",
        "recent",
    }
    assert fresh(h, "GET", "/status/snapshot").status == 401
    assert fresh(h, "GET", "/status/snapshot", cookie=cookie + "x").status == 401


def test_the_sign_in_form_s_request_and_signing_out() -> None:
    h = Harness.build(TEAM)
    assert fresh(h, "POST", "/status/login", x_api_key=ALICE_KEY).status == 403
    wrong = fresh(h, "POST", "/status/login", x_api_key="nope-nope-nope")
    assert wrong.status == 401 and wrong.json()["error"]["message"] == "invalid API key"
    assert fresh(h, "POST", "/status/login").status == 401
    signed = fresh(h, "POST", "/status/login", x_api_key=ROOT_KEY)
    assert signed.status == 204
    assertLocked(signed)
    cookie = f"ccproxy_status={cookieOf(signed)}"
    assert fresh(h, "GET", "/status/snapshot", cookie=cookie).status == 200
    out = fresh(h, "POST", "/status/logout", cookie=cookie)
    assert out.status == 303 and "Max-Age=0" in out.headers["set-cookie"]
    assert fresh(h, "GET", "/status/snapshot", cookie=cookie).status == 401


def test_a_reload_that_changes_the_admin_s_key_ends_its_sessions() -> None:
    h = Harness.build(TEAM)
    cookie = f"ccproxy_status={cookieOf(fresh(h, 'GET', '/status', x_api_key=ROOT_KEY))}"
    assert fresh(h, "GET", "/status/snapshot", cookie=cookie).status == 200
    h.app.reconfigure(Config.fromYAML(TEAM.replace(ROOT_KEY, "root-key-rotated-0003"), {}))
    assert fresh(h, "GET", "/status/snapshot", cookie=cookie).status == 401
    assert h.app.status.build(h.clock.seconds()).generation == 2


def test_without_clients_the_page_is_open() -> None:
    h = Harness.build()
    reply = h.call("GET", "/status")
    assert reply.status == 200 and b"open (no clients configured)" in reply.body
    assert "set-cookie" not in reply.headers


def test_the_assets_come_from_the_package() -> None:
    h = Harness.build()
    for name, kind in (
        ("status.js", "text/javascript"),
        ("status.css", "text/css"),
        ("icon.svg", "image/svg+xml"),
    ):
        reply = h.call("GET", f"/status/static/{name}")
        assert reply.status == 200 and reply.headers["content-type"].startswith(kind)
        assert reply.body and reply.headers["content-security-policy"]
    assert h.call("GET", "/status/static/../app.py").status == 404
    assert h.call("GET", "/status/static/nothing.js").status == 404


def test_a_failing_request_and_a_hostile_model_name_on_the_page() -> None:
    h = Harness.build(TEAM)
    h.upstream.queue(jsonReply({"error": {"message": "the gateway <b>broke</b>"}}, status=500))
    hostile = "claude-<script>alert(1)</script>"
    failed = h.post(message(model=hostile), headers=ALICE)
    assert failed.status >= 500
    sections = sectionsOf(h.call("GET", "/status/snapshot", headers=ROOT))
    assert "<script>" not in "".join(sections.values())
    assert "claude-&lt;script&gt;alert(1)&lt;/script&gt;" in sections["recent"]
    assert "&lt;b&gt;broke&lt;/b&gt;" in sections["upstreams"]
    rid = failed.headers["request-id"]
    assert f'href="/status/requests/{rid}"' in sections["recent"]
    page = h.call("GET", f"/status/requests/{rid}", headers=ROOT)
    assert page.status == 200 and b"<script>" not in page.body
    assert b"up: 500 api_error" in page.body and ALICE_KEY.encode() not in page.body
    assert h.call("GET", "/status/requests/req_nothing", headers=ROOT).status == 404
    assert fresh(h, "GET", f"/status/requests/{rid}").status == 303  # not signed in


def test_a_stream_in_flight_with_its_tokens_so_far() -> None:
    h = Harness.build(TEAM)
    chunks = [
        {"choices": [{"index": 0, "delta": {"content": f"w{i} "}, "finish_reason": None}]}
        for i in range(5)
    ]
    h.upstream.queue(sseReply(chunks, delay=1.0))
    streaming = h.request("POST", "/v1/messages", orjson.dumps(message(stream=True)), headers=ALICE)
    h.flush()
    for _ in range(3):
        h.clock.advance(1.0)
        h.flush()
    h.clock.advance(0.5)
    sections = sectionsOf(h.call("GET", "/status/snapshot", headers=ROOT))
    assert (
        "<td>alice</td><td>claude-sonnet-4-5</td><td>up</td><td>stream</td>" in sections["inflight"]
    )
    assert '<td class="n">3s</td><td class="n">3</td>' in sections["inflight"]
    for _ in range(5):
        h.clock.advance(1.0)
        h.flush()
    assert resultOf(streaming).status == 200
    h.clock.advance(2.0)
    sections = sectionsOf(h.call("GET", "/status/snapshot", headers=ROOT))
    assert "nothing in flight" in sections["inflight"]


def test_one_snapshot_per_tick_for_every_viewer(monkeypatch: pytest.MonkeyPatch) -> None:
    h = Harness.build(TEAM)
    built: list[float] = []
    build = statuspage.statusView
    monkeypatch.setattr(
        statuspage, "statusView", lambda now, **kw: built.append(now) or build(now, **kw)
    )
    for _ in range(5):
        assert h.call("GET", "/status/snapshot", headers=ROOT).status == 200
    assert len(built) == 1
    h.clock.advance(statuspage.TICK)
    h.call("GET", "/status/snapshot", headers=ROOT)
    assert len(built) == 2


def test_status_streams_are_bounded_share_one_snapshot_and_end_on_drain(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    h = Harness.build(TEAM)
    built: list[float] = []
    build = statuspage.statusView
    monkeypatch.setattr(
        statuspage, "statusView", lambda now, **kw: built.append(now) or build(now, **kw)
    )
    streams: list[Deferred[ClientReply]] = []
    for _ in range(statuspage.MAX_STREAMS):
        streams.append(h.request("GET", "/status/events", headers=ROOT))
        h.flush()
    assert len(h.app.status.streams) == statuspage.MAX_STREAMS
    refused = h.call("GET", "/status/events", headers=ROOT)
    assert refused.status == 503 and refused.json()["error"]["type"] == "overloaded_error"
    for _ in range(3):
        h.clock.advance(statuspage.TICK)
        h.flush()
    assert len(built) == 4  # the first, then one a tick, for every stream at once
    h.app.status.closeStreams()
    h.flush()
    for stream in streams:
        reply = resultOf(stream)
        assert reply.status == 200 and reply.headers["content-type"] == "text/event-stream"
        assert reply.body.count(b"event: status\ndata: {") == 4
    assert h.app.status.streams == {} and not h.clock.getDelayedCalls()


def test_a_stream_whose_viewer_leaves_is_let_go() -> None:
    h = Harness.build(TEAM)
    h.request("GET", "/status/events", headers=ROOT)
    h.flush()
    (waiting,) = h.app.status.streams.values()
    waiting.cancel()  # what Klein does when the client goes away
    waiting.addErrback(lambda _: None)
    h.clock.advance(statuspage.TICK)
    assert h.app.status.streams == {} and not h.clock.getDelayedCalls()


def test_the_last_reload_is_shown() -> None:
    h = Harness.build(TEAM)
    h.app.status.noteReload(False, "ccproxy.yaml: upstreams.up.url: <not a URL>")
    sections = sectionsOf(h.call("GET", "/status/snapshot", headers=ROOT))
    assert "refused" in sections["summary"] and "&lt;not a URL&gt;" in sections["summary"]


class AskedLedger:
    """A ledger whose `usage` answers when the test says (`answer`), or never."""

    def __init__(self) -> None:
        self.asked: list[float] = []
        self.pending: list[Deferred[Usage]] = []

    def record(self, row: Any) -> None:
        pass

    async def spent(self, client: str, since: float, until: float | None = None) -> Any:
        raise AssertionError("not asked here")

    async def usage(
        self, since: float, until: float | None = None, client: str | None = None
    ) -> Usage:
        self.asked.append(since)
        waiting: Deferred[Usage] = Deferred()
        self.pending.append(waiting)
        return await waiting


def test_today_s_usage_is_read_from_the_ledger_at_most_every_ten_seconds() -> None:
    ledger = AskedLedger()
    h = Harness.build(TEAM, ledger=lambda clock: ledger)  # type: ignore[arg-type, return-value]
    h.clock.advance(T0)
    assert ledger.asked == []  # nobody looked yet
    first = sectionsOf(h.call("GET", "/status/snapshot", headers=ROOT))["clients"]
    assert "reading the ledger" in first and ledger.asked == [T0 - T0 % 86400]
    today = Usage((Group("alice", "claude-*", "2026-06-01", Tally(2, 0, 400, 100, 0, 0, 0.0)),))
    ledger.pending[0].callback(today)
    for _ in range(4):  # ticks within ten seconds: no new read
        h.clock.advance(statuspage.TICK)
        sections = sectionsOf(h.call("GET", "/status/snapshot", headers=ROOT))
    assert len(ledger.asked) == 1
    assert "<meter" in sections["clients"] and "50%" in sections["clients"]  # 500 of 1000
    h.clock.advance(statuspage.TICK)
    h.call("GET", "/status/snapshot", headers=ROOT)
    assert len(ledger.asked) == 2  # ten seconds on
    # A read that never comes back: said so after LEDGER_TIMEOUT, the last figures kept.
    h.clock.advance(statuspage.LEDGER_TIMEOUT)
    sections = sectionsOf(h.call("GET", "/status/snapshot", headers=ROOT))
    assert "did not answer within 5 s" in sections["clients"] and "<meter" in sections["clients"]
    h.clock.advance(statuspage.LEDGER_EVERY)
    h.call("GET", "/status/snapshot", headers=ROOT)
    assert len(ledger.asked) == 3


def test_a_ledger_that_is_down_is_said_so() -> None:
    ledger = AskedLedger()
    h = Harness.build(TEAM, ledger=lambda clock: ledger)  # type: ignore[arg-type, return-value]
    h.call("GET", "/status/snapshot", headers=ROOT)
    ledger.pending[0].errback(LedgerUnavailable("the database is away"))
    h.clock.advance(statuspage.TICK)
    sections = sectionsOf(h.call("GET", "/status/snapshot", headers=ROOT))
    assert "the ledger is unavailable: the database is away" in sections["clients"]
