"""The twistd plugin: options, config validation before start, the service tree."""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.application.service import IServiceMaker
from twisted.plugin import getPlugins
from twisted.python.usage import UsageError

from ccproxy.daemon.heap import YOUNG_THRESHOLD
from ccproxy.daemon.service import ProxyService
from ccproxy.daemon.tap import Options, _twistdLogsToStdout, makeService
from ccproxy.daemon.wiring import buildService

GOOD = """
ledger: off
upstreams:
  up: {url: "http://127.0.0.1:9/v1"}
models:
  "*": up
"""


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "ccproxy.yaml"
    path.write_text(text)
    return str(path)


def test_plugin_is_discoverable() -> None:
    makers = {p.tapname: p for p in getPlugins(IServiceMaker)}
    assert "ccproxy" in makers
    assert makers["ccproxy"].options is Options


def test_options_load_and_validate_the_config(tmp_path: Path) -> None:
    options = Options()
    options.parseOptions(["--config", write(tmp_path, GOOD)])
    assert options["loaded"].listen == "tcp:8000:interface=127.0.0.1"
    assert set(options["loaded"].upstreams) == {"up"}


def test_listen_overrides_the_config(tmp_path: Path) -> None:
    options = Options()
    options.parseOptions(["-c", write(tmp_path, GOOD), "--listen", "tcp:0:interface=127.0.0.1"])
    assert options["loaded"].listen == "tcp:0:interface=127.0.0.1"


def test_without_config_the_environment_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    for name in ("UPSTREAM_BASE_URL", "GATEWAY_API_KEY", "HOST", "PORT", "FORCE_UPSTREAM_MODEL"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(UsageError) as raised:
        Options().parseOptions([])
    assert "UPSTREAM_BASE_URL" in str(raised.value)
    (tmp_path / ".env").write_text(
        "UPSTREAM_BASE_URL=http://127.0.0.1:9/v1/chat/completions\nFORCE_UPSTREAM_MODEL=m1\n"
        "PORT=8123\nPRETTY_LOGS=1\n"
    )
    options = Options()
    options.parseOptions([])
    config = options["loaded"]
    assert config.listen == "tcp:8123:interface=127.0.0.1"
    assert config.upstreams["default"].url == "http://127.0.0.1:9/v1/chat/completions"
    assert config.router.resolve("claude-opus-5-5").targets[0].model == "m1"
    assert config.pretty is True
    assert options["config"] is None


@pytest.mark.parametrize(
    ("text", "line"),
    [
        (
            GOOD.replace("http://127.0.0.1:9/v1", "gopher://x"),
            "upstreams.up.url: not an http(s) URL",
        ),
        (GOOD + "listen: 'tcpx:80'\n", "listen: not a valid endpoint"),
        (GOOD.replace('"*": up', '"*": nowhere'), "models.*: unknown upstream 'nowhere'"),
    ],
)
def test_a_bad_config_stops_the_start_with_one_line(tmp_path: Path, text: str, line: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(UsageError) as raised:
        Options().parseOptions(["--config", path])
    message = str(raised.value)
    assert line in message
    assert path in message
    assert "\n" not in message
    assert "Traceback" not in message


def test_make_service_builds_the_tree(tmp_path: Path) -> None:
    options = Options()
    options.parseOptions(
        ["--config", write(tmp_path, GOOD), "--listen", "tcp:0:interface=127.0.0.1"]
    )
    threshold = gc.get_threshold()
    try:
        service = makeService(options)
        # What the start made is out of the collector's way (`settleHeap`).
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold() == (YOUNG_THRESHOLD, *threshold[1:])
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)
    assert isinstance(service, ProxyService)
    assert service.getServiceNamed("http") is not None
    assert service.app.config is options["loaded"]
    assert service.pool.persistent is True


def test_a_bad_config_is_a_usage_error_under_twistd(tmp_path: Path) -> None:
    """twistd prints the subcommand's usage and this line, and exits 1."""
    from twisted.scripts.twistd import ServerOptions

    path = write(tmp_path, GOOD.replace('"*": up', '"*": nowhere'))
    with pytest.raises(UsageError, match=f"^{path}: models.*: unknown upstream 'nowhere'"):
        ServerOptions().parseOptions(["ccproxy", "--config", path])


@pytest.mark.parametrize(
    ("twistd", "toStdout"),
    [
        (["-n"], True),
        (["-n", "--logfile", "-"], True),
        (["-n", "--logfile", "ccproxy.log"], False),
        (["-n", "--syslog"], False),
        (["-n", "--logger", "twisted.logger.globalLogPublisher"], False),
        ([], False),  # daemonized: stdout is /dev/null by then
    ],
)
def test_where_twistd_logs_is_read_from_its_options(
    tmp_path: Path, twistd: list[str], toStdout: bool
) -> None:
    from twisted.scripts.twistd import ServerOptions

    options = ServerOptions()
    options.parseOptions([*twistd, "ccproxy", "--config", write(tmp_path, GOOD)])
    assert _twistdLogsToStdout(options.subOptions) is toStdout


def test_the_composition_root_hands_each_piece_to_the_next(tmp_path: Path) -> None:
    from twisted.internet.task import Clock

    from ccproxy.config import Config

    config = Config.fromYAML(GOOD + f"log: {{file: {tmp_path / 'ccproxy.log'}}}\n", {})
    service = buildService(config, Clock(), configPath="/etc/ccproxy.yaml")
    # The port serves the site through the drain's connection tracker.
    site = service.getServiceNamed("http").factory  # type: ignore[attr-defined]
    assert site.resource is not None and service.app.config is config
    client = service.app.dispatcher.client
    upstream = config.upstreams["up"]
    assert client.httpFor(upstream) is client.httpFor(upstream)  # one client per timeout
    assert service.configPath == "/etc/ccproxy.yaml"
    assert service.logFile is not None
    service.logFile.write("written\n")
    service.logFile.close()


@pytest.mark.parametrize(
    ("listen", "expected"),
    [
        ("tcp:8000:interface=127.0.0.1", "tcp:8000:interface=127.0.0.1:backlog=1024"),
        ("tcp:8000:backlog=10", "tcp:8000:backlog=10"),
        ("tcp:8000:50:127.0.0.1", "tcp:8000:50:127.0.0.1"),
        ("unix:/run/ccproxy.sock", "unix:/run/ccproxy.sock"),
        ("systemd:domain=INET:index=0", "systemd:domain=INET:index=0"),
    ],
)
def test_listen_gets_a_deep_backlog(listen: str, expected: str) -> None:
    from ccproxy.daemon.listen import withBacklog

    assert withBacklog(listen) == expected


@pytest.mark.parametrize(
    ("listen", "address"),
    [
        ("tcp:8000:interface=127.0.0.1", (8000, "127.0.0.1", 1024)),
        ("tcp:8000", (8000, "", 1024)),
        ("tcp6:8000:interface=\\:\\:1:backlog=64", (8000, "::1", 64)),
        ("unix:/run/ccproxy.sock", None),
        ("tcp:8000:50:127.0.0.1", None),
    ],
)
def test_tcp_address_for_reuse_port(listen: str, address: Any) -> None:
    from ccproxy.daemon.listen import tcpAddress

    assert tcpAddress(listen) == address


def test_reuse_port_needs_a_plain_tcp_listen(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD + "listen: unix:/tmp/ccproxy.sock\nreuse_port: true\n")
    with pytest.raises(UsageError) as raised:
        Options().parseOptions(["--config", path])
    assert "reuse_port: needs a plain tcp listen" in str(raised.value)


@pytest_twisted.ensureDeferred
async def test_two_services_share_one_port_with_reuse_port(tmp_path: Path) -> None:
    import socket

    import treq
    from twisted.internet import reactor

    from ccproxy.config import Config

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = Config.fromYAML(
        GOOD + f'listen: "tcp:{port}:interface=127.0.0.1"\nreuse_port: true\n', {}
    )
    services = [buildService(config, reactor), buildService(config, reactor)]
    for service in services:
        service.startService()
    try:
        bound = [(await s.listeningPort()).getHost().port for s in services]
        assert bound == [port, port]
        response = await treq.get(f"http://127.0.0.1:{port}/healthz")
        assert response.code == 200
        await response.content()
    finally:
        for service in services:
            await service.stopService()
