"""The status page's HTML, from its view model (`view`): the page, the fragments
the live stream replaces, the sign-in page and a request's detail page.

Every value is escaped here, once, as it is written (model names, client names
and error messages come from users and upstreams); the script (`assets/status.js`)
only puts these server-made fragments in place. The charts are inline SVG drawn
here: no script draws anything, and no asset comes from anywhere but ccproxy.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from html import escape
from time import gmtime, strftime

from ccproxy.web.status.view import Detail, Recent, StatusView, UpstreamView

SECTIONS = ("summary", "inflight", "upstreams", "clients", "recent")
"""The ids of the page's live parts, in order."""

BASE = "/status"


def e(value: object) -> str:
    """`value` as HTML text (quotes too, so it may stand in an attribute)."""
    return escape(str(value), quote=True)


def page(view: StatusView, client: str | None) -> bytes:
    """The whole page, its sections as they are now (the stream then replaces them)."""
    parts = fragments(view)
    sections = "".join(
        f'<section id="{name}" class="part">{parts[name]}</section>' for name in SECTIONS
    )
    who = f"signed in as {e(client)}" if client else "open (no clients configured)"
    return _document(
        "ccproxy status",
        f'<header><h1>ccproxy status</h1><p class="who">{who} · '
        f'<span id="conn" class="conn">connecting…</span></p>'
        f'<form id="logout" method="post" action="{BASE}/logout">'
        f'<button type="submit">sign out</button></form></header>'
        f"<main>{sections}</main>",
        live=True,
    )


def fragments(view: StatusView) -> dict[str, str]:
    """Each live section's inner HTML."""
    return {
        "summary": _summary(view),
        "inflight": _inflight(view),
        "upstreams": _upstreams(view),
        "clients": _clients(view),
        "recent": _recent(view),
    }


def signIn(message: str | None = None) -> bytes:
    """The sign-in page: one field for the key, sent once by the script (as
    `x-api-key`: ccproxy reads no body from a caller without a key) for a session
    cookie."""
    return _document(
        "ccproxy status: sign in",
        '<main class="narrow"><h1>ccproxy status</h1>'
        "<p>Sign in with an admin client's key. It is sent once; the browser then "
        "keeps a session cookie, never the key.</p>"
        f'<form id="login" method="post" action="{BASE}/login">'
        '<label>key <input type="password" name="key" autocomplete="current-password" '
        'required autofocus></label> <button type="submit">sign in</button></form>'
        f'<p class="error" id="login-error">{e(message or "")}</p>'
        "<noscript><p>Signing in here needs JavaScript; or send the key once as "
        "<code>x-api-key</code> with <code>GET /status</code>.</p></noscript></main>",
        live=True,
    )


def refused(status: int, message: str) -> bytes:
    """A page for a caller who may not see the status (403) or asked for what is gone."""
    return _document(
        f"ccproxy status: {status}",
        f'<main class="narrow"><h1>{status}</h1><p class="error">{e(message)}</p>'
        f'<p><a href="{BASE}">status</a></p></main>',
    )


def detailPage(d: Detail) -> bytes:
    """One finished request's access record."""
    rows = "".join(f"<tr><th>{e(label)}</th><td>{e(value)}</td></tr>" for label, value in d.rows)
    attempts = "".join(f"<li>{e(a)}</li>" for a in d.attempts) or "<li>none</li>"
    payloads = ""
    if d.requestPayload is not None:
        payloads = (
            "<h2>request (log_payloads)</h2>"
            f'<pre class="payload">{e(d.requestPayload)}</pre>'
            "<h2>response (log_payloads)</h2>"
            f'<pre class="payload">{e(d.responsePayload or "")}</pre>'
        )
    return _document(
        f"ccproxy request {d.requestId}",
        f'<main><p><a href="{BASE}">← status</a></p>'
        f"<h1>request {e(d.requestId)}</h1>"
        f'<p class="dim">began {e(_clock(d.started))} UTC · retries {d.retries} · '
        f"failover {'yes' if d.failover else 'no'}</p>"
        f'<table class="record">{rows}</table>'
        f"<h2>attempts</h2><ol>{attempts}</ol>{payloads}</main>",
    )


# -- sections --------------------------------------------------------------------------


def _summary(v: StatusView) -> str:
    reload = "none since start"
    if v.reload is not None:
        outcome = "applied" if v.reload.ok else "refused"
        reload = (
            f'<span class="{"ok" if v.reload.ok else "bad"}">{outcome}</span> '
            f"{e(_clock(v.reload.at))} UTC: {e(v.reload.message)}"
        )
    return (
        '<dl class="facts">'
        f"<div><dt>version</dt><dd>{e(v.version)}</dd></div>"
        f"<div><dt>config generation</dt><dd>{v.generation}</dd></div>"
        f"<div><dt>uptime</dt><dd>{e(_span(v.uptimeSeconds))}</dd></div>"
        f"<div><dt>in flight</dt><dd>{v.inFlightCount}</dd></div>"
        f"<div><dt>last reload</dt><dd>{reload}</dd></div>"
        f"<div><dt>updated</dt><dd>{e(_clock(v.now))} UTC</dd></div>"
        "</dl>"
    )


def _inflight(v: StatusView) -> str:
    rows = [
        (
            f'<tr data-request="{e(r.requestId)}">'
            f"<td>{e(r.client)}</td><td>{e(r.model)}</td><td>{e(r.upstream)}</td>"
            f"<td>{'stream' if r.stream else 'whole'}</td>"
            f'<td class="n">{e(_span(r.ageSeconds))}</td><td class="n">{r.tokens:,}</td></tr>'
        )
        for r in v.inFlight
    ]
    more = v.inFlightCount - len(v.inFlight)
    tail = f'<p class="dim">and {more:,} more</p>' if more > 0 else ""
    return (
        "<h2>In flight</h2>"
        + _table(
            ("client", "model", "upstream", "kind", "age", "tokens so far"),
            rows,
            "nothing in flight",
        )
        + tail
    )


def _upstreams(v: StatusView) -> str:
    rows = [_upstreamRow(u) for u in v.upstreams]
    return "<h2>Upstreams <small>(last 5 minutes; chart: the last hour)</small></h2>" + _table(
        (
            "upstream",
            "breaker",
            "active",
            "attempts",
            "errors",
            "TTFB p50",
            "TTFB p95",
            "last error",
            "requests/min · TTFB",
        ),
        rows,
        "no upstreams",
    )


def _upstreamRow(u: UpstreamView) -> str:
    rate = "-" if u.errorRate is None else f"{u.errors} ({u.errorRate:.0%})"
    lastError = "-"
    if u.lastError is not None:
        ago = "" if u.lastErrorAgo is None else f" ({_span(u.lastErrorAgo)} ago)"
        lastError = f'<span class="bad">{e(u.lastError)}</span>{e(ago)}'
    breaker = f'<span class="breaker {e(u.breaker)}">{e(u.breaker.replace("_", "-"))}</span>'
    active = f"{u.active}" + (f" +{u.queued} queued" if u.queued else "")
    return (
        f'<tr><td>{e(u.name)}</td><td>{breaker}</td><td class="n">{e(active)}</td>'
        f'<td class="n">{u.attempts}</td><td class="n">{rate}</td>'
        f'<td class="n">{_ms(u.ttfbP50)}</td><td class="n">{_ms(u.ttfbP95)}</td>'
        f'<td class="err">{lastError}</td>'
        f"<td>{chart(u.perMinute, u.ttfbPerMinute, u.name)}</td></tr>"
    )


def _clients(v: StatusView) -> str:
    period = "today (UTC, from the ledger)" if v.usageToday else "since start (ledger: off)"
    title = f"<h2>Clients <small>{e(period)}</small></h2>"
    if v.clients is None:
        return title + f'<p class="dim">{e(v.usageNote or "reading the ledger…")}</p>'
    rows = []
    for c in v.clients:
        if c.budgetUsed is None:
            bar = '<span class="dim">no daily budget</span>'
        else:
            shown = min(c.budgetUsed, 1.0)
            bar = (
                f'<meter min="0" max="1" low="0.7" high="0.9" optimum="0" value="{shown:.3f}">'
                f"{c.budgetUsed:.0%}</meter> {c.budgetUsed:.0%}"
            )
        rows.append(
            f"<tr><td>{e(c.name)}{' (admin)' if c.admin else ''}</td>"
            f'<td class="n">{c.requests:,}</td><td class="n">{c.errors:,}</td>'
            f'<td class="n">{c.tokens:,}</td><td class="n">{c.cost:.4f} {e(v.currency)}</td>'
            f"<td>{bar}</td></tr>"
        )
    note = f'<p class="dim">{e(v.usageNote)}</p>' if v.usageNote else ""
    headings = ("client", "requests", "errors", "tokens", "cost", "daily budget")
    return title + _table(headings, rows, "no usage") + note


def _recent(v: StatusView) -> str:
    rows = [
        (
            f'<tr data-request="{e(r.requestId)}" class="{_failed(r)}">'
            f'<td><a href="{BASE}/requests/{e(r.requestId)}">{e(_clock(r.started))}</a></td>'
            f"<td>{e(r.client)}</td><td>{e(r.model)}</td><td>{e(r.upstream)}</td>"
            f'<td class="n">{r.status}</td><td class="n">{_ms(r.durationMs)}</td>'
            f"<td>{e(r.errorType or '')}</td></tr>"
        )
        for r in v.recent
    ]
    return "<h2>Recent requests</h2>" + _table(
        ("began (UTC)", "client", "model", "upstream", "status", "duration", "error"),
        rows,
        "no requests yet",
    )


def _failed(r: Recent) -> str:
    return "bad" if r.status >= 400 or r.errorType else ""


# -- pieces ----------------------------------------------------------------------------

CHART_W, CHART_H = 180, 40


def chart(perMinute: Sequence[int], ttfb: Sequence[int | None], name: str) -> str:
    """Requests per minute as bars and the median TTFB as a line, over `perMinute`'s
    minutes (the oldest on the left), each scaled to its own maximum."""
    n = max(1, len(perMinute))
    step = CHART_W / n
    top = max(perMinute, default=0) or 1
    bars = "".join(
        f'<rect x="{i * step:.1f}" y="{CHART_H - count / top * CHART_H:.1f}" '
        f'width="{max(step - 0.5, 0.5):.1f}" height="{count / top * CHART_H:.1f}"/>'
        for i, count in enumerate(perMinute)
        if count
    )
    slowest = max((t for t in ttfb if t is not None), default=0) or 1
    points = " ".join(
        f"{(i + 0.5) * step:.1f},{CHART_H - t / slowest * (CHART_H - 2) - 1:.1f}"
        for i, t in enumerate(ttfb)
        if t is not None
    )
    line = ""
    if " " in points:
        line = f'<polyline class="ttfb" points="{points}"/>'
    elif points:  # one minute with answers: a dot
        x, y = points.split(",")
        line = f'<circle class="ttfb-dot" cx="{x}" cy="{y}" r="1.5"/>'

    label = (
        f"{name}: up to {max(perMinute, default=0)} requests a minute, "
        f"median TTFB up to {max((t for t in ttfb if t is not None), default=0)} ms"
    )
    return (
        f'<svg class="chart" viewBox="0 0 {CHART_W} {CHART_H}" width="{CHART_W}" '
        f'height="{CHART_H}" role="img" aria-label="{e(label)}"><title>{e(label)}</title>'
        f'<g class="bars">{bars}</g>{line}</svg>'
    )


def _table(headings: Iterable[str], rows: Sequence[str], empty: str) -> str:
    if not rows:
        return f'<p class="dim">{e(empty)}</p>'
    head = "".join(f"<th>{e(h)}</th>" for h in headings)
    body = "".join(rows)
    return (
        f'<div class="scroll"><table><thead><tr>{head}</tr></thead>'
        f"<tbody>{body}</tbody></table></div>"
    )


def _document(title: str, body: str, live: bool = False) -> bytes:
    script = f'<script src="{BASE}/static/status.js" defer></script>' if live else ""
    return (
        "<!doctype html>"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{e(title)}</title>"
        f'<link rel="icon" href="{BASE}/static/icon.svg" type="image/svg+xml">'
        f'<link rel="stylesheet" href="{BASE}/static/status.css">{script}'
        f"</head><body>{body}</body></html>"
    ).encode()


def _ms(value: int | None) -> str:
    return "-" if value is None else f"{value:,} ms"


def _span(seconds: float) -> str:
    """A duration as people read it: 42s, 3m 04s, 5h 02m, 2d 03h."""
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 86400}d {s % 86400 // 3600:02d}h"


def _clock(moment: float) -> str:
    return strftime("%Y-%m-%d %H:%M:%S", gmtime(moment))
