"""Running it for a team: reload, drain, logs, redaction, metrics, usage."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest
import pytest_twisted
import treq
from twisted.application.service import Application
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import (
    ILogObserver,
    LogLevel,
    eventAsJSON,
    eventsFromJSONLogFile,
    formatEvent,
    globalLogPublisher,
    textFileLogObserver,
)

from ccproxy.config import Config, LogSettings
from ccproxy.daemon.logs import fileObserver, openLogFile
from ccproxy.daemon.service import ProxyService
from ccproxy.daemon.wiring import buildService
from tests.support.fakes import jsonReply, sseReply
from tests.support.harness import BASE_CONFIG, Harness, message, parseSSE, resultOf
from tests.support.loopback import startLoopback


@contextmanager
def loggedEvents() -> Iterator[list[dict[str, Any]]]:
    """The events logged while the `with` block runs."""
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        yield events
    finally:
        globalLogPublisher.removeObserver(events.append)


def accessEvents(action: Any) -> list[dict[str, Any]]:
    """The access events logged while `action()` runs."""
    with loggedEvents() as events:
        action()
    return [e for e in events if e.get("log_namespace") == "ccproxy.access"]


# -- reload ---------------------------------------------------------------------------


def serviceFor(tmp_path: Path, text: str) -> tuple[ProxyService, Path]:
    path = tmp_path / "ccproxy.yaml"
    path.write_text(text)
    return buildService(Config.fromPath(str(path)), reactor, configPath=str(path)), path


RELOAD = """
listen: "tcp:0:interface=127.0.0.1"
ledger: off
upstreams:
  a: {url: "http://a.test/v1"}
  b: {url: "http://b.test/v1"}
models:
  claude-*: a/first
"""


def test_reload_good_file_swaps_config(tmp_path: Path) -> None:
    service, path = serviceFor(tmp_path, RELOAD)
    path.write_text(RELOAD.replace("claude-*: a/first", "claude-*: b/second"))
    assert service.reload() is True
    assert service.app.generation == 2
    shown = service.app.status.reload  # on the status page
    assert shown is not None and shown.ok and shown.message == "generation 2"
    target = service.app.config.router.resolve("claude-x").targets[0]
    assert (target.upstream, target.model) == ("b", "second")


@pytest.mark.parametrize(
    ("change", "logged"),
    [
        (lambda t: t.replace("a/first", "nowhere/x"), "unknown upstream 'nowhere'"),
        (lambda t: t + "bogus: 1\n", "bogus: unknown key"),
        (lambda t: t.replace("tcp:0:", "tcp:1:"), "listen changed"),
        (lambda t: "upstreams: [", "not valid YAML"),
    ],
)
def test_reload_bad_file_keeps_running_config(
    tmp_path: Path, change: Any, logged: str, noLoggedFailures: list[dict[str, Any]]
) -> None:
    service, path = serviceFor(tmp_path, RELOAD)
    before = service.app.config
    path.write_text(change(RELOAD))
    with loggedEvents() as events:
        assert service.reload() is False
    assert service.app.config is before
    assert service.app.generation == 1
    shown = service.app.status.reload  # on the status page
    assert shown is not None and not shown.ok and logged in shown.message
    errors = [formatEvent(e) for e in events if e.get("log_level") == LogLevel.error]
    assert any(logged in line and "keeping the running config" in line for line in errors)
    noLoggedFailures.clear()  # the refusal is logged as an error on purpose


def test_request_in_flight_finishes_on_the_old_config() -> None:
    h = Harness.build()
    chunks = [{"choices": [{"index": 0, "delta": {"content": f"{i} "}}]} for i in range(3)]
    chunks.append({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    h.upstream.queue(sseReply(chunks, delay=1))
    inFlight = h.request("POST", "/v1/messages", message(stream=True))
    h.flush()
    h.app.reconfigure(
        Config.fromYAML(
            BASE_CONFIG.replace("claude-*: up/big-model", "claude-*: other/new-model"), {}
        )
    )
    assert h.call("GET", "/healthz").json()["generation"] == 2
    for _ in range(6):
        h.clock.advance(1)
        h.flush()
    frames = parseSSE(resultOf(inFlight).body)
    assert frames[-1][0] == "message_stop"
    assert h.upstream.received[0].headers["host"] == "upstream.test"
    h.post(message())
    assert h.upstream.received[-1].headers["host"] == "other.test"
    assert h.upstream.received[-1].body["model"] == "new-model"


# -- drain ------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_stop_drains_streams_in_flight() -> None:
    loopback = await startLoopback(
        lambda upstream: (
            f"""
listen: "tcp:0:interface=127.0.0.1"
upstreams:
  fake: {{url: "{upstream}"}}
models:
  "*": fake
shutdown_grace: 10
"""
        )
    )
    chunks = [{"choices": [{"index": 0, "delta": {"content": f"{i} "}}]} for i in range(4)]
    chunks.append({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    loopback.upstream.queue(sseReply(chunks, delay=0.05))
    service = loopback.service
    try:
        response = await treq.post(
            f"{loopback.base}/v1/messages", data=orjson.dumps(message(stream=True))
        )
        assert service.app.streamsInFlight == 1
        stopped: Deferred[None] = service.stopService()
        body = await response.content()
        await stopped
        assert parseSSE(body)[-1][0] == "message_stop"
        # The port no longer accepts. (Connected to directly: treq's HostnameEndpoint
        # would wait its 0.3 s attempt delay before reporting the refusal.)
        port = int(loopback.base.rsplit(":", 1)[1])
        with pytest.raises(ConnectionRefusedError):
            await TCP4ClientEndpoint(reactor, "127.0.0.1", port).connect(
                Factory.forProtocol(Protocol)
            )
    finally:
        await loopback.upstreamPort.stopListening()


# -- logs -------------------------------------------------------------------------------


def test_log_file_rotates_by_size_and_keeps_a_bounded_number(tmp_path: Path) -> None:
    settings = LogSettings(file=str(tmp_path / "ccproxy.log"), maxBytes=2000, keep=2)
    logFile = openLogFile(settings)
    observer = fileObserver(settings, logFile)
    for i in range(200):
        observer(
            {
                "log_format": "event {i} " + "x" * 50,
                "i": i,
                "log_time": 0.0,
                "log_level": LogLevel.info,
                "log_namespace": "t",
            }
        )
    logFile.close()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["ccproxy.log", "ccproxy.log.1", "ccproxy.log.2"]
    assert all(p.stat().st_size <= 2100 for p in tmp_path.iterdir())
    logFile = openLogFile(settings)
    logFile.write("tail\n")
    logFile.rotate()  # what SIGUSR1 does
    logFile.close()
    assert (tmp_path / "ccproxy.log.1").read_text().endswith("tail\n")
    assert (tmp_path / "ccproxy.log").read_text() == ""


def test_json_log_records_read_back_with_named_fields(tmp_path: Path) -> None:
    settings = LogSettings(file=str(tmp_path / "ccproxy.json"), format="json")
    logFile = openLogFile(settings)
    observer = fileObserver(settings, logFile)
    h = Harness.build()
    with loggedEvents() as events:
        h.post(message())
    for event in events:
        observer(event)
    logFile.close()
    with open(settings.file) as f:
        records = list(eventsFromJSONLogFile(f))
    access = [r for r in records if r.get("log_namespace") == "ccproxy.access"]
    assert len(access) == 1
    assert access[0]["status"] == 200
    assert access[0]["model"] == "claude-sonnet-4-5"
    assert access[0]["upstream"] == "up"
    assert access[0]["request_id"].startswith("req_")


SECRETS = {"ALICE": "alice-secret-7f3a", "CORP": "sk-corp-secret-91bd"}
SECRET_CONFIG = """
upstreams:
  up:
    url: http://upstream.test/v1
    api_key: ${CORP}
    retries: 0
  fwd:
    url: http://fwd.test/v1
models:
  claude-*: up/big
  fwd-*: fwd
clients:
  - name: alice
    key: ${ALICE}
log_payloads: true
"""


def test_no_secret_reaches_a_log_line() -> None:
    h = Harness.build(SECRET_CONFIG, SECRETS)
    callerKey = "caller-token-5c2e"
    with loggedEvents() as events:
        h.post(message(), headers={"x-api-key": SECRETS["ALICE"]})
        h.post(message(stream=True), headers={"authorization": f"Bearer {SECRETS['ALICE']}"})
        h.post(message(model="fwd-x"), headers={"x-api-key": SECRETS["ALICE"]})
        h.post(message(), headers={"x-api-key": callerKey})  # rejected: 401
        h.upstream.queue(jsonReply({"error": {"message": "bad key"}}, 401))
        h.post(message(), headers={"x-api-key": SECRETS["ALICE"]})
    assert any(e.get("log_namespace") == "ccproxy.payload" for e in events)
    assert any(e.get("log_namespace") == "ccproxy.access" for e in events)
    everything = "\n".join(formatEvent(e) + eventAsJSON(e) for e in events)
    for secret in [*SECRETS.values(), callerKey]:
        assert secret not in everything
    # The forwarded key did reach its upstream (and only there).
    assert h.upstream.received[2].headers["authorization"] == f"Bearer {SECRETS['ALICE']}"


def test_payloads_are_logged_truncated_only_when_asked() -> None:
    h = Harness.build(BASE_CONFIG + "log_payloads: true\nlog_payload_max_chars: 50\n")
    with loggedEvents() as events:
        h.post(message("x" * 500))
    payloads = [e for e in events if e.get("log_namespace") == "ccproxy.payload"]
    assert len(payloads) == 1
    assert payloads[0]["request_body"].endswith("more chars]")
    assert len(payloads[0]["request_body"]) < 100
    h = Harness.build()
    with loggedEvents() as events:
        h.post(message("x" * 500))
    assert not [e for e in events if e.get("log_namespace") == "ccproxy.payload"]
    assert not any("xxxxxxxxxx" in formatEvent(e) for e in events)


def test_config_with_literal_keys_readable_by_others_is_warned_about(
    tmp_path: Path,
) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        RELOAD.replace(
            'a: {url: "http://a.test/v1"}', 'a: {url: "http://a.test/v1", api_key: sk-literal}'
        )
    )
    os.chmod(path, 0o644)
    service = buildService(Config.fromPath(str(path)), reactor, configPath=str(path))
    with loggedEvents() as events:
        service._warnAboutSecrets(service.app.config)
    warnings = [formatEvent(e) for e in events if e.get("log_level") == LogLevel.warn]
    assert any("upstreams.a.api_key" in w and "readable by other users" in w for w in warnings)
    assert not any("sk-literal" in formatEvent(e) for e in events)
    os.chmod(path, 0o600)
    with loggedEvents() as events:
        service._warnAboutSecrets(service.app.config)
    assert not events


# -- metrics and usage ---------------------------------------------------------------------

USAGE_CONFIG = (
    BASE_CONFIG
    + """
clients:
  - {name: alice, key: alice-key}
  - {name: root, key: root-key, admin: true}
"""
)


def test_metrics_after_a_few_requests() -> None:
    h = Harness.build(USAGE_CONFIG)
    alice = {"x-api-key": "alice-key"}
    h.post(message(), headers=alice)
    h.post(message(), headers=alice)
    h.upstream.queue(jsonReply({"error": {"message": "down"}}, 503))
    h.post(message(), headers=alice)
    text = h.call("GET", "/metrics", headers={"x-api-key": "root-key"}).body.decode()
    assert (
        'ccproxy_requests_total{client="alice",endpoint="messages",model="claude-*",'
        'route="claude-*",status="200",upstream="up"} 2.0'
    ) in text
    assert 'status="503"' in text
    assert 'ccproxy_tokens_total{client="alice",kind="input",upstream="up"} 22.0' in text
    assert 'ccproxy_tokens_total{client="alice",kind="output",upstream="up"} 14.0' in text
    assert 'ccproxy_upstream_errors_total{type="overloaded_error",upstream="up"} 1.0' in text
    assert 'ccproxy_request_duration_seconds_count{upstream="up"} 3.0' in text  # the 503 too
    assert "ccproxy_streams_in_flight 0.0" in text
    assert "ccproxy_config_generation 1.0" in text


def test_usage_totals_across_reloads_every_client_for_the_admin_its_own_for_others() -> None:
    """With `ledger: off`, `/v1/usage` counts in the process, since it started."""
    h = Harness.build(USAGE_CONFIG)
    h.post(message(), headers={"x-api-key": "alice-key"})
    h.app.reconfigure(Config.fromYAML(USAGE_CONFIG, {}))
    h.post(message(model="claude-haiku-5-5"), headers={"x-api-key": "alice-key"})
    h.post(message(), headers={"x-api-key": "root-key"})
    assert h.call("GET", "/v1/usage").status == 401
    report = h.call("GET", "/v1/usage", headers={"x-api-key": "root-key"}).json()
    assert set(report["clients"]) == {"alice", "root"}
    alice = report["clients"]["alice"]
    assert alice["total"]["requests"] == 2
    assert alice["total"]["input_tokens"] == 22
    assert alice["total"]["cache_creation_input_tokens"] == 0
    assert alice["total"]["cost"] == 0
    assert set(alice["models"]) == {"claude-*", "claude-haiku-*"}  # as the config routes them
    assert report["unpriced"] == ["big-model", "small-model"]
    assert report["currency"] == "USD"
    own = h.call("GET", "/v1/usage", headers={"x-api-key": "alice-key"}).json()
    assert set(own["clients"]) == {"alice"}  # it used to be 403
    assert own["clients"]["alice"] == alice
    refused = h.call("GET", "/v1/usage?since=2025-01-01", headers={"x-api-key": "root-key"})
    assert refused.status == 400
    assert "need a ledger" in refused.json()["error"]["message"]


def test_usage_needs_clients() -> None:
    h = Harness.build()
    assert h.call("GET", "/v1/usage").status == 403


# -- pretty panels ----------------------------------------------------------------------


class _Terminal:
    """A stream that says it is a terminal, holding what was written."""

    def __init__(self, tty: bool) -> None:
        import io

        self.buffer = io.StringIO()
        self.tty = tty

    def write(self, text: str) -> int:
        return self.buffer.write(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return self.tty


@pytest.mark.parametrize("tty", [True, False])
@pytest_twisted.ensureDeferred
async def test_pretty_panels_only_on_a_terminal(tmp_path: Path, tty: bool) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(RELOAD + "pretty: true\nlog_payloads: true\n")
    terminal = _Terminal(tty)
    service = buildService(
        Config.fromPath(str(path)), reactor, configPath=str(path), stdout=terminal
    )
    service.startService()
    try:
        h = Harness.build(BASE_CONFIG + "log_payloads: true\n")
        h.post(message("show me"))
    finally:
        await service.stopService()
    shown = terminal.buffer.getvalue()
    if tty:
        assert "req_" in shown and "claude-sonnet-4-5" in shown
        assert "show me" in shown  # the payload panel
        assert "╭" in shown or "+" in shown  # a panel border
    else:
        assert shown == ""  # a daemon's stdout, or a pipe: never panels


@pytest_twisted.ensureDeferred
async def test_pretty_shows_each_exchange_once_where_twistd_logs_to_the_terminal() -> None:
    """`twistd -n` logs to the terminal the panels go to: an exchange is a panel in
    place of twistd's line, not both (a line and a panel were printed for each)."""
    terminal = _Terminal(True)
    config = Config.fromYAML(RELOAD + "pretty: true\nlog_payloads: true\n", {})
    service = buildService(config, reactor, stdout=terminal, twistdLogsToStdout=True)
    application = Application("ccproxy")
    service.setServiceParent(application)
    # What twistd's AppLogger does: the application's observer, else a text one.
    twistd = application.getComponent(ILogObserver, None) or textFileLogObserver(terminal)
    globalLogPublisher.addObserver(twistd)
    service.startService()
    try:
        h = Harness.build(BASE_CONFIG + "log_payloads: true\n")
        h.post(message("show me"))
    finally:
        globalLogPublisher.removeObserver(twistd)
        await service.stopService()
    shown = terminal.buffer.getvalue()
    assert shown.count("╭") == 2  # the exchange's panel and its payloads' panel
    assert shown.count("show me") == 1
    assert "[ccproxy.access#" not in shown and "[ccproxy.payload#" not in shown
    assert "ccproxy serving on" in shown  # every other event stays a line


def test_access_log_names_the_upstream_that_refused() -> None:
    h = Harness.build()
    h.upstream.queue(jsonReply({"error": {"message": "context too long"}}, 400))
    access = accessEvents(lambda: h.post(message()))
    assert access[0]["status"] == 400
    assert access[0]["upstream"] == "up"
    assert access[0]["upstream_status"] == 400
    assert "(upstream 400)" in formatEvent(access[0])


@pytest.mark.parametrize(
    ("method", "path", "body", "key", "endpoint", "status"),
    [
        ("POST", "/v1/messages/count_tokens", message(), "alice-key", "count_tokens", 200),
        ("POST", "/v1/messages/count_tokens", message(), "wrong", "count_tokens", 401),
        ("GET", "/v1/models", None, "alice-key", "models", 200),
        ("GET", "/v1/models/claude-sonnet-4-5", None, None, "models", 401),
        ("GET", "/v1/usage", None, "alice-key", "usage", 200),
        ("GET", "/v1/usage", None, "wrong", "usage", 401),
        ("POST", "/v1/messages", message(), "wrong", "messages", 401),
    ],
)
def test_every_api_request_leaves_one_access_event(
    method: str, path: str, body: Any, key: str | None, endpoint: str, status: int
) -> None:
    h = Harness.build(USAGE_CONFIG)
    replies = []
    access = accessEvents(
        lambda: replies.append(
            h.call(method, path, body, headers={"x-api-key": key} if key else {})
        )
    )
    (reply,) = replies
    assert reply.status == status
    assert len(access) == 1
    assert (access[0]["endpoint"], access[0]["status"], access[0]["path"]) == (
        endpoint,
        status,
        path,
    )
    assert access[0]["request_id"] == reply.headers["request-id"]
    text = h.call("GET", "/metrics", headers={"x-api-key": "root-key"}).body.decode()
    assert f'endpoint="{endpoint}"' in text and f'status="{status}"' in text


def test_count_tokens_logs_the_upstream_model_it_would_have_used() -> None:
    h = Harness.build()
    (access,) = accessEvents(
        lambda: h.post(message(model="claude-haiku-4-5"), path="/v1/messages/count_tokens")
    )
    assert access["target"] == "other/small-model"
    assert h.upstream.received == []  # nothing was sent to find out


def test_a_request_that_failed_before_an_answer_names_its_upstream_model() -> None:
    h = Harness.build()
    h.upstream.queue(jsonReply({"error": {"message": "down"}}, 503))
    (access,) = accessEvents(lambda: h.post(message()))
    assert access["target"] == "up/big-model"
    assert "None" not in formatEvent(access)
