"""Model names are the clients' to choose, so nothing may grow with them: a name has a
length limit, and metrics and usage count by the config's names, not the clients'.

Before: 20 requests with 5 MB names kept 230 MB, made `/metrics` a 210 MB page that
took 4 s to render (the reactor blocked meanwhile) and wrote 5 MB log lines.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from twisted.logger import formatEvent, globalLogPublisher

from ccproxy.web.call import MAX_MODEL_CHARS
from tests.support.harness import BASE_CONFIG, Harness, message

ADMIN = BASE_CONFIG + "clients:\n  - {name: root, key: root-key-0002, admin: true}\n"
ROOT = {"x-api-key": "root-key-0002"}


def accessLines(action: Any) -> list[str]:
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        action()
    finally:
        globalLogPublisher.removeObserver(events.append)
    return [formatEvent(e) for e in events if e.get("log_namespace") == "ccproxy.access"]


def requestSeries(h: Harness) -> dict[str, int]:
    """`model` label -> how many `ccproxy_requests_total` series carry it."""
    page = h.call("GET", "/metrics", headers=ROOT).body.decode()
    found: dict[str, int] = {}
    for model in re.findall(r'^ccproxy_requests_total\{[^}]*model="([^"]*)"', page, re.M):
        found[model] = found.get(model, 0) + 1
    return found


# -- the length limit ----------------------------------------------------------------


LONG = "claude-" + "x" * (MAX_MODEL_CHARS - 6)


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/v1/messages", message(model=LONG)),
        ("POST", "/v1/messages", message(model=LONG, stream=True)),
        ("POST", "/v1/messages/count_tokens", message(model=LONG)),
        ("GET", f"/v1/models/{LONG}", None),
    ],
    ids=["messages", "stream", "count_tokens", "models"],
)
def test_a_name_over_the_limit_is_refused(method: str, path: str, body: Any) -> None:
    h = Harness.build(ADMIN)
    replies = []
    lines = accessLines(lambda: replies.append(h.call(method, path, body, headers=ROOT)))
    (reply,) = replies
    assert reply.status == 400
    error = reply.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["message"].startswith("model: ") and str(MAX_MODEL_CHARS) in error["message"]
    assert "xxxxxxxxxx" not in error["message"]
    assert not h.upstream.received
    (line,) = lines
    assert f" {LONG} " not in line  # not the model field (the path of /v1/models/… has it)


def test_a_name_at_the_limit_is_served() -> None:
    h = Harness.build(ADMIN)
    name = LONG[:MAX_MODEL_CHARS]
    assert h.post(message(model=name), headers=ROOT).status == 200
    assert h.post(message(model=name), "/v1/messages/count_tokens", headers=ROOT).status == 200
    assert h.call("GET", f"/v1/models/{name}", headers=ROOT).status == 200


def test_megabyte_names_leave_nothing_behind() -> None:
    h = Harness.build(ADMIN)
    lines = []
    for i in range(5):
        name = f"claude-{i}-" + "m" * 1_000_000
        lines += accessLines(lambda: h.post(message(model=name), headers=ROOT))  # noqa: B023
    assert max(len(line) for line in lines) < 2000
    assert len(h.call("GET", "/metrics", headers=ROOT).body) < 20_000
    assert len(h.call("GET", "/v1/usage", headers=ROOT).body) < 2000


# -- labels and usage keys are the config's --------------------------------------------


def test_many_names_count_under_their_route() -> None:
    h = Harness.build(ADMIN)
    for i in range(200):
        assert h.post(message(model=f"claude-sonnet-{i}"), headers=ROOT).status == 200
        assert h.post(message(model=f"claude-haiku-{i}"), headers=ROOT).status == 200
        count = message(model=f"claude-opus-{i}")
        assert h.post(count, "/v1/messages/count_tokens", headers=ROOT).status == 200
        assert h.post(message(model=f"gpt-{i}"), headers=ROOT).status == 404  # unrouted
    h.post(message(model="passthrough"), headers=ROOT)  # an exact name in the config
    series = requestSeries(h)
    assert set(series) == {"claude-*", "claude-haiku-*", "passthrough", "-"}
    assert sum(series.values()) == 5  # claude-* for messages and for count_tokens
    usage = h.call("GET", "/v1/usage", headers=ROOT).json()["clients"]["root"]["models"]
    assert set(usage) == {"claude-*", "claude-haiku-*", "passthrough", "-"}
    assert usage["claude-*"]["requests"] == 200
    assert usage["-"]["requests"] == 200 and usage["-"]["errors"] == 200


def test_the_log_still_names_the_model_sent() -> None:
    """The access log is per request, not a set that grows: it keeps the name sent."""
    h = Harness.build(ADMIN)
    (line,) = accessLines(lambda: h.post(message(model="claude-sonnet-4-5"), headers=ROOT))
    assert "claude-sonnet-4-5 -> up/big-model" in line
