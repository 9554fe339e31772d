"""The status page in a real browser: a real `twistd -n ccproxy` with a scripted
upstream, and Debian's headless Chromium driven by Playwright for Python.

Why Playwright: it installs from PyPI alone (its wheel carries its own driver) and
drives any Chromium given as `executable_path`, so the browser is Debian's
`chromium` package (`.ci/run` installs it); Playwright's own browser download is
never used. It waits by polling the DOM, so nothing here sleeps.

The test signs in through the form, runs a stream (held open by the upstream) and
a failing request, and checks that the page shows both within 3 s, that a model
name holding `<script>` is shown as text, and that the browser logged no error
(a CSP violation is one). It saves a screenshot: to `$CCPROXY_STATUS_SCREENSHOT`
when set (the README's `docs/status.png` is made so), else in the test's tmp dir.

Without Chromium or Playwright the test fails, saying what to install; it is
skipped only when asked, with `CCPROXY_SKIP_BROWSER=1`.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.processes import Processes

ADMIN_KEY = "status-admin-key-7d41c9e2"
USER_KEY = "status-user-key-0b8e51fa"
HOSTILE = "claude-<script>alert(1)</script>"
SHOWN_WITHIN_MS = 3000

if os.environ.get("CCPROXY_SKIP_BROWSER") == "1":
    pytest.skip("CCPROXY_SKIP_BROWSER=1: the browser test is skipped", allow_module_level=True)


def chromium() -> str:
    """Debian's Chromium (or `$CCPROXY_CHROMIUM`); a failure saying how to get it."""
    for candidate in (os.environ.get("CCPROXY_CHROMIUM"), "chromium", "chromium-browser"):
        found = candidate and shutil.which(candidate)
        if found:
            return found
    pytest.fail(
        "no Chromium for the status page's browser test: apt-get install chromium "
        "(.ci/run does), or set CCPROXY_SKIP_BROWSER=1 to skip it"
    )


@pytest.fixture
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("playwright is missing: pip install '.[test]'")
    args = ["--no-sandbox"] if os.geteuid() == 0 else []  # root (CI) has no user namespace
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=chromium(), args=args)
        try:
            yield launched
        finally:
            launched.close()


def post(base: str, key: str, body: dict[str, Any]) -> tuple[int, bytes]:
    request = urllib.request.Request(
        base + "/v1/messages",
        data=json.dumps(body).encode(),
        headers={"x-api-key": key, "content-type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def ask(model: str, stream: bool = False) -> dict[str, Any]:
    return {
        "model": model,
        "max_tokens": 50,
        "stream": stream,
        "messages": [{"role": "user", "content": "hello"}],
    }


def config(upstreamPort: int) -> Any:
    def text(port: int) -> str:
        return f"""
listen: "tcp:{port}:interface=127.0.0.1"
upstreams:
  scripted: {{url: "http://127.0.0.1:{upstreamPort}/v1", retries: 0}}
  broken: {{url: "http://127.0.0.1:9/v1", retries: 0}}
models:
  "broken-*": broken
  "*": scripted
clients:
  - {{name: root, key: {ADMIN_KEY}, admin: true}}
  - {{name: alice, key: {USER_KEY}, budget: {{tokens_per_day: 1000}}}}
"""

    return text


def screenshotPath(tmp_path: Path) -> Path:
    target = os.environ.get("CCPROXY_STATUS_SCREENSHOT")
    return Path(target).resolve() if target else tmp_path / "status.png"


def test_the_status_page_in_chromium(browser: Any, processes: Processes, tmp_path: Path) -> None:
    hold = tmp_path / "release-the-stream"
    upstream = processes.scriptedUpstream("--hold-file", str(hold), "--answer", "ok")
    base = f"http://127.0.0.1:{processes.ccproxy(config(upstream))}"
    for _ in range(3):  # some traffic for the chart
        assert post(base, USER_KEY, ask("claude-sonnet-4-5"))[0] == 200

    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.set_default_timeout(SHOWN_WITHIN_MS)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(f"page error: {error}"))

    # Signing in: the form, then the page with a session cookie (never the key).
    page.goto(base + "/status", timeout=15000)
    page.fill("input[name=key]", ADMIN_KEY)
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.click("button[type=submit]")
    page.wait_for_selector("#conn.ok")  # the live stream answers
    cookies = page.context.cookies()
    (session,) = [c for c in cookies if c["name"] == "ccproxy_status"]
    assert session["httpOnly"] and session["sameSite"] == "Strict"
    assert ADMIN_KEY not in session["value"]

    # A stream held open by the upstream, and a request that fails.
    streaming = threading.Thread(
        target=post, args=(base, USER_KEY, ask(HOSTILE, stream=True)), daemon=True
    )
    streaming.start()
    status, body = post(base, USER_KEY, ask("broken-model"))
    assert status == 502, body
    try:
        page.wait_for_function(
            "t => document.querySelector('#inflight').textContent.includes(t)", arg=HOSTILE
        )
        page.wait_for_function(
            "() => document.querySelector('#recent').textContent.includes('broken-model')"
        )
        page.wait_for_function(
            "() => document.querySelector('#upstreams').textContent.includes('cannot connect')"
        )
        inflight = page.locator("#inflight tbody tr", has_text=HOSTILE)
        assert inflight.count() == 1 and "stream" in inflight.inner_text()
        assert page.locator("#inflight script, #recent script").count() == 0
        assert page.locator("#upstreams svg.chart").count() == 2
        assert page.locator("#clients meter").count() == 1  # alice's daily budget
        failed = page.locator("#recent tbody tr.bad", has_text="broken-model")
        assert "502" in failed.inner_text()
        shot = screenshotPath(tmp_path)
        shot.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 10_000

        # The failing request's detail, from the recent list.
        failed.locator("a").click()
        page.wait_for_selector("table.record")
        record = page.inner_text("table.record")
        assert "broken-model" in record and "502" in record
        assert USER_KEY not in page.content() and ADMIN_KEY not in page.content()
        assert "broken: 502" in page.inner_text("ol")
    finally:
        hold.touch()  # the stream may end
        streaming.join(30)
    assert not streaming.is_alive()
    page.go_back()
    page.wait_for_function(
        "t => !document.querySelector('#inflight').textContent.includes(t)", arg=HOSTILE
    )
    assert errors == []
