"""`python -m ccproxy doctor`: the pure checks as tables, then the CLI against a real server."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest
from attrs import define, field

from ccproxy.config import Config, claudesettings, endpoints
from ccproxy.config.claudesettings import OK, PROBLEM, WARNING, Finding
from ccproxy.config.endpoints import Origin
from ccproxy.doctor import checks as doctor
from ccproxy.doctor.checks import Probe, Request, Setting
from ccproxy.doctor.probe import fetch
from ccproxy.upstream.client import upstreamHeaders

ROOT = Path(__file__).resolve().parent.parent

ALICE = "alice-secret-key-0123456789"
CORP = "corp-upstream-key-9876543210"
STRANGER = "stranger-key-55555555555"

CONFIG = f"""
listen: "tcp:8000:interface=127.0.0.1"
clients:
  - name: alice
    key: {ALICE}
upstreams:
  corp:
    url: https://gw.example/v1
    api_key: {CORP}
    headers: {{X-Team: platform}}
  local:
    url: http://127.0.0.1:9/v1/chat/completions?tenant=x
    max_tokens_param: max_tokens
models:
  claude-haiku-*: local/qwen
  claude-sonnet-5-5: corp/gpt-4.1
  mine: corp
"""


def config(text: str = CONFIG) -> Config:
    return Config.fromYAML(text, {})


def shell(**values: str) -> dict[str, Setting]:
    """Variables as Claude Code sees them when only the shell sets them."""
    return doctor.effectiveEnvironment({}, values)


def levels(findings: list[Finding]) -> list[str]:
    return [f.level for f in findings]


def text(findings: list[Finding]) -> str:
    return "\n".join(f.line() for f in findings)


# -- showing values --------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("", "empty"),
        ("short-key", "set (hidden)"),
        (ALICE, "alic…"),
    ],
)
def test_mask(value: str, shown: str) -> None:
    assert claudesettings.mask(value) == shown


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://127.0.0.1:8000", "http://127.0.0.1:8000"),
        ("https://user:pw@gw.example/v1?key=abc", "https://gw.example/v1?…"),
        ("http://[::1]:8000/", "http://[::1]:8000/"),
        ("http://host:notaport/", "(not a URL)"),
    ],
)
def test_displayURL_hides_credentials(url: str, shown: str) -> None:
    assert claudesettings.displayURL(url) == shown


# -- origins ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "origin"),
    [
        ("http://127.0.0.1:8000", Origin("http", "127.0.0.1", 8000)),
        ("http://LOCALHOST:8000/", Origin("http", "127.0.0.1", 8000)),
        ("https://proxy.example", Origin("https", "proxy.example", 443)),
        ("http://proxy.example", Origin("http", "proxy.example", 80)),
        ("http://[::1]:9000", Origin("http", "::1", 9000)),
        ("127.0.0.1:8000", None),
        ("ftp://host", None),
        ("http://host:99999", None),
    ],
)
def test_originOf(url: str, origin: Origin | None) -> None:
    assert endpoints.originOf(url) == origin


@pytest.mark.parametrize(
    ("listen", "origin"),
    [
        ("tcp:8000:interface=127.0.0.1", Origin("http", "127.0.0.1", 8000)),
        ("tcp:8000", Origin("http", None, 8000)),
        ("tcp:8000:interface=0.0.0.0", Origin("http", None, 8000)),
        (r"tcp6:8000:interface=\:\:1", Origin("http", "::1", 8000)),
        (r"tcp6:8000:interface=\:\:", Origin("http", None, 8000)),
        ("tcp:port=9000:interface=localhost", Origin("http", "127.0.0.1", 9000)),
        ("tcp:9000:50:127.0.0.2", Origin("http", "127.0.0.2", 9000)),
        ("ssl:8443:privateKey=key.pem", Origin("https", None, 8443)),
        ("8000", Origin("http", None, 8000)),
        ("unix:/run/ccproxy.sock", None),
        ("tcp:http", None),
    ],
)
def test_originOfListen(listen: str, origin: Origin | None) -> None:
    assert endpoints.originOfListen(listen) == origin


@pytest.mark.parametrize(
    ("proxy", "url", "accepted"),
    [
        (Origin("http", "127.0.0.1", 8000), "http://localhost:8000", True),
        (Origin("http", "127.0.0.1", 8000), "http://127.0.0.1:8001", False),
        (Origin("http", "127.0.0.1", 8000), "https://127.0.0.1:8000", False),
        (Origin("http", "127.0.0.1", 8000), "http://jumphost:8000", False),
        (Origin("http", None, 8000), "http://jumphost:8000", True),
        (Origin("http", None, 8000), "http://jumphost:8080", False),
    ],
)
def test_origin_accepts(proxy: Origin, url: str, accepted: bool) -> None:
    origin = endpoints.originOf(url)
    assert origin is not None
    assert proxy.accepts(origin) is accepted


# -- settings.json -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("document", "values", "warned"),
    [
        (None, {}, False),
        ({}, {}, False),
        ({"model": "opus"}, {}, False),
        (
            {"env": {"ANTHROPIC_BASE_URL": "http://x:1"}},
            {"ANTHROPIC_BASE_URL": "http://x:1"},
            False,
        ),
        ({"env": {"ANTHROPIC_MODEL": 5}}, {}, True),
        ({"env": {"OTHER": 5}}, {}, False),
        ({"env": ["ANTHROPIC_BASE_URL"]}, {}, True),
        ([1, 2], {}, True),
    ],
)
def test_settingsEnv(document: Any, values: dict[str, str], warned: bool) -> None:
    found, findings = claudesettings.settingsEnv(document)
    assert found == values
    assert levels(findings) == ([WARNING] if warned else [])


@pytest.mark.parametrize(
    ("settings", "environ", "named"),
    [
        ({}, {"ANTHROPIC_BASE_URL": "http://127.0.0.1:8000"}, []),
        ({"ANTHROPIC_BASE_URL": "http://a:1"}, {}, []),
        ({"ANTHROPIC_BASE_URL": "http://a:1"}, {"ANTHROPIC_BASE_URL": "http://a:1"}, []),
        (
            {"ANTHROPIC_BASE_URL": "http://a:1"},
            {"ANTHROPIC_BASE_URL": "http://b:2"},
            ["ANTHROPIC_BASE_URL"],
        ),
        (
            {"ANTHROPIC_AUTH_TOKEN": ALICE, "ANTHROPIC_MODEL": "m"},
            {"ANTHROPIC_AUTH_TOKEN": STRANGER, "ANTHROPIC_MODEL": "m"},
            ["ANTHROPIC_AUTH_TOKEN"],
        ),
        ({"ANTHROPIC_API_KEY": ""}, {"ANTHROPIC_API_KEY": STRANGER}, ["ANTHROPIC_API_KEY"]),
    ],
)
def test_overrideFindings(
    settings: dict[str, str], environ: dict[str, str], named: list[str]
) -> None:
    findings = claudesettings.overrideFindings(settings, environ)
    assert levels(findings) == [WARNING] * len(named)
    for finding, name in zip(findings, named, strict=True):
        assert finding.what.startswith(name + ":")
        assert "settings.json value" in finding.what
    assert ALICE not in text(findings) and STRANGER not in text(findings)


def test_overrideFindings_show_urls_but_mask_keys() -> None:
    [url] = claudesettings.overrideFindings(
        {"ANTHROPIC_BASE_URL": "http://a:1"}, {"ANTHROPIC_BASE_URL": "http://b:2"}
    )
    assert "'http://a:1'" in url.what and "'http://b:2'" in url.what
    [key] = claudesettings.overrideFindings(
        {"ANTHROPIC_API_KEY": ALICE}, {"ANTHROPIC_API_KEY": CORP}
    )
    assert "another value (alic…) than your shell (corp…)" in key.what


def test_effectiveEnvironment_settings_win() -> None:
    env = doctor.effectiveEnvironment(
        {"ANTHROPIC_BASE_URL": "http://a:1", "UNRELATED": "x"},
        {"ANTHROPIC_BASE_URL": "http://b:2", "ANTHROPIC_MODEL": "m", "PATH": "/bin"},
    )
    assert env == {
        "ANTHROPIC_BASE_URL": Setting("http://a:1", "settings.json"),
        "ANTHROPIC_MODEL": Setting("m", "shell"),
    }


@pytest.mark.parametrize(
    ("content", "environ", "expected"),
    [
        (None, {"ANTHROPIC_BASE_URL": "http://b:2"}, []),
        ('{"env": {"ANTHROPIC_BASE_URL": "http://b:2"}}', {"ANTHROPIC_BASE_URL": "http://b:2"}, []),
        ('{"env": {"ANTHROPIC_BASE_URL": "http://a:1"}}', {}, []),
        ('{"env": {"ANTHROPIC_BASE_URL": "http://a:1"}}', {"ANTHROPIC_BASE_URL": "x"}, [WARNING]),
        ('{"env": {"ANTHROPIC_BASE_URL": ', {}, [WARNING]),
        ("\n", {"ANTHROPIC_BASE_URL": "x"}, []),
    ],
)
def test_settingsWarnings(
    tmp_path: Path, content: str | None, environ: dict[str, str], expected: list[str]
) -> None:
    path = tmp_path / "settings.json"
    if content is not None:
        path.write_text(content)
    assert levels(claudesettings.settingsWarnings(path, environ)) == expected


def test_defaultSettingsPath() -> None:
    assert claudesettings.defaultSettingsPath({"HOME": "/h"}) == "/h/.claude/settings.json"
    assert claudesettings.defaultSettingsPath({"HOME": "/h", "CLAUDE_CONFIG_DIR": "/c"}) == (
        "/c/settings.json"
    )


# -- the base URL ------------------------------------------------------------------

LOCAL = Origin("http", "127.0.0.1", 8000)


@pytest.mark.parametrize(
    ("url", "proxy", "expected", "said"),
    [
        (None, LOCAL, [PROBLEM], "is not set"),
        ("", LOCAL, [PROBLEM], "is not set"),
        ("127.0.0.1:8000", LOCAL, [PROBLEM], "not an http(s) URL"),
        ("http://127.0.0.1:8000", LOCAL, [OK], ""),
        ("http://localhost:8000/", LOCAL, [OK], ""),
        ("http://127.0.0.1:8000/v1", LOCAL, [PROBLEM], "'/v1'"),
        ("http://127.0.0.1:9000", LOCAL, [PROBLEM], "does not point at the proxy"),
        ("http://127.0.0.1:9000/v1/", LOCAL, [PROBLEM, PROBLEM], "'/v1/'"),
        ("http://anything:9000", None, [OK], ""),
        ("http://jumphost:8000", Origin("http", None, 8000), [OK], ""),
        # Claude Code's default: never the proxy, whether or not its URL is known.
        ("https://api.anthropic.com", None, [PROBLEM], "not pointed at ccproxy"),
        ("https://api.anthropic.com/", LOCAL, [PROBLEM], "is Anthropic's own API"),
        ("https://API.Anthropic.com:443", None, [PROBLEM], "not pointed at ccproxy"),
    ],
)
def test_baseUrlFindings(
    url: str | None, proxy: Origin | None, expected: list[str], said: str
) -> None:
    env = shell() if url is None else shell(ANTHROPIC_BASE_URL=url)
    findings = doctor.baseUrlFindings(env, proxy)
    assert levels(findings) == expected
    assert said in findings[0].what


def test_baseUrlFindings_fix_names_settings_json() -> None:
    env = doctor.effectiveEnvironment({"ANTHROPIC_BASE_URL": "http://127.0.0.1:8000/v1"}, {})
    [finding] = doctor.baseUrlFindings(env, LOCAL, "/home/u/.claude/settings.json")
    assert "/home/u/.claude/settings.json" in finding.fix
    assert "http://127.0.0.1:8000 " in finding.fix


@pytest.mark.parametrize(
    ("environ", "warned"),
    [
        ({}, False),
        ({"HTTPS_PROXY": "http://corp-proxy:3128"}, True),
        ({"http_proxy": "http://user:pw@corp-proxy:3128"}, True),
        ({"HTTPS_PROXY": "http://corp-proxy:3128", "NO_PROXY": "localhost,127.0.0.1"}, False),
        ({"HTTPS_PROXY": "http://corp-proxy:3128", "no_proxy": "*"}, False),
        ({"HTTPS_PROXY": "http://corp-proxy:3128", "NO_PROXY": "example.com"}, True),
        # The host as written in ANTHROPIC_BASE_URL is what NO_PROXY must cover.
        ({"ANTHROPIC_BASE_URL": "http://localhost:8000", "HTTPS_PROXY": "http://p:1"}, True),
        (
            {
                "ANTHROPIC_BASE_URL": "http://localhost:8000",
                "HTTPS_PROXY": "http://p:1",
                "NO_PROXY": "localhost",
            },
            False,
        ),
        # Without a base URL Claude Code does not go to the proxy at all (reported elsewhere).
        ({"ANTHROPIC_BASE_URL": "", "HTTPS_PROXY": "http://p:1"}, False),
    ],
)
def test_httpProxyFindings(environ: dict[str, str], warned: bool) -> None:
    findings = doctor.httpProxyFindings(shell(**{"ANTHROPIC_BASE_URL": PROXY, **environ}))
    assert levels(findings) == ([WARNING] if warned else [])
    assert "pw" not in text(findings)


# -- keys --------------------------------------------------------------------------

OPEN = """
upstreams: {corp: {url: "https://gw.example/v1"}}
models: {"*": corp}
"""


@pytest.mark.parametrize(
    ("environ", "configText", "expected", "said"),
    [
        ({}, None, [PROBLEM], "no key"),
        ({"ANTHROPIC_AUTH_TOKEN": "  "}, None, [PROBLEM], "no key"),
        ({"ANTHROPIC_AUTH_TOKEN": STRANGER}, None, [OK], "key set"),
        ({"ANTHROPIC_AUTH_TOKEN": ALICE}, CONFIG, [OK], "client 'alice'"),
        ({"ANTHROPIC_API_KEY": ALICE}, CONFIG, [OK], "client 'alice'"),
        ({"ANTHROPIC_AUTH_TOKEN": STRANGER}, CONFIG, [PROBLEM], "none of the proxy's 1"),
        ({"ANTHROPIC_AUTH_TOKEN": STRANGER}, OPEN, [OK], "takes any key"),
        (
            {"ANTHROPIC_AUTH_TOKEN": ALICE, "ANTHROPIC_API_KEY": STRANGER},
            CONFIG,
            [WARNING, PROBLEM],
            "differ",
        ),
        ({"ANTHROPIC_AUTH_TOKEN": ALICE, "ANTHROPIC_API_KEY": ALICE}, CONFIG, [OK], "alice"),
    ],
)
def test_keyFindings(
    environ: dict[str, str], configText: str | None, expected: list[str], said: str
) -> None:
    findings = doctor.keyFindings(
        shell(**environ), None if configText is None else config(configText)
    )
    assert levels(findings) == expected
    assert said in findings[0].what
    for secret in (ALICE, STRANGER):
        assert secret not in text(findings)


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        # A key from apiKeyHelper cannot be checked, but is not missing either.
        ({}, [WARNING]),
        ({"ANTHROPIC_AUTH_TOKEN": ALICE}, [WARNING, OK]),
        ({"ANTHROPIC_AUTH_TOKEN": STRANGER}, [WARNING, PROBLEM]),
    ],
)
def test_keyFindings_with_apiKeyHelper(environ: dict[str, str], expected: list[str]) -> None:
    findings = doctor.keyFindings(shell(**environ), config(), keyHelper=True)
    assert levels(findings) == expected
    assert "apiKeyHelper" in findings[0].what


def test_diagnose_notices_apiKeyHelper() -> None:
    findings = doctor.diagnose({"apiKeyHelper": "~/bin/key"}, {}, None, None, ScriptedFetch({}))
    assert not any("no key" in f.what for f in findings)
    assert any("apiKeyHelper" in f.what for f in findings)


# -- models ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        # Defaults: sonnet and haiku routed, opus not (a warning: it is not the main model).
        ({}, [WARNING, OK, OK]),
        ({"ANTHROPIC_MODEL": "mine"}, [OK, WARNING, OK, OK]),
        ({"ANTHROPIC_MODEL": "gpt-5"}, [PROBLEM, WARNING, OK, OK]),
        ({"ANTHROPIC_SMALL_FAST_MODEL": "claude-haiku-4"}, [OK, WARNING, OK, OK]),
        ({"ANTHROPIC_DEFAULT_OPUS_MODEL": "mine"}, [OK, OK, OK]),
        ({"ANTHROPIC_DEFAULT_HAIKU_MODEL": "tiny"}, [WARNING, OK, PROBLEM]),
        ({"ANTHROPIC_DEFAULT_SONNET_MODEL": ""}, [WARNING, OK, OK]),
    ],
)
def test_modelFindings_with_config(environ: dict[str, str], expected: list[str]) -> None:
    env = shell(**environ)
    checks = doctor.modelChecks(env)
    findings = doctor.modelFindings(env, checks, doctor.configRoutes(config(), checks))
    assert levels(findings) == expected


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        # The main model's default name unserved breaks every session...
        ({}, [WARNING, PROBLEM, WARNING]),
        # ...unless ANTHROPIC_MODEL chooses another one.
        ({"ANTHROPIC_MODEL": "x"}, [OK, WARNING, WARNING, WARNING]),
    ],
)
def test_modelFindings_main_model_default(environ: dict[str, str], expected: list[str]) -> None:
    only = config(
        "upstreams: {corp: {url: 'https://gw.example/v1'}}\nmodels: {x: corp, y*: corp}\n"
    )
    env = shell(**environ)
    checks = doctor.modelChecks(env)
    findings = doctor.modelFindings(env, checks, doctor.configRoutes(only, checks))
    assert levels(findings) == expected


LIMITS = """
upstreams:
  corp: {url: "https://gw.example/v1", max_tokens: 16384}
  big: {url: "https://big.example/v1"}
  mid: {url: "https://mid.example/v1", max_tokens: 64000}
models:
  gpt-mid: mid/x
  claude-haiku-*: big/mini
  claude-sonnet-*: {target: corp/gpt-4.1, context_window: 1047576}
  claude-opus-*: [{target: big/large, context_window: 262144}, {target: corp/x}]
  small: {target: big/qwen, context_window: 32768}
  claude-sonnet-small: {target: big/qwen, context_window: 32768}
"""


def limits(**environ: str) -> list[Finding]:
    env = shell(**environ)
    return doctor.limitFindings(env, doctor.routeLimits(config(LIMITS), doctor.modelChecks(env)))


def test_limitFindings_tell_the_output_cap_and_the_window_of_the_users_routes() -> None:
    """Claude Code asks for 128000 output tokens and compacts by its own idea of a
    Claude model's window: the doctor says the values that match the routes."""
    findings = limits()
    assert levels(findings) == [WARNING, WARNING]
    assert findings[0].fix == "export CLAUDE_CODE_MAX_OUTPUT_TOKENS=16384"
    assert "'claude-opus-*', 'claude-sonnet-*'" in findings[0].what
    assert "128000" in findings[0].what
    # Opus (262144) is the smallest window of the main models; haiku's route has none.
    assert findings[1].fix == "export CLAUDE_CODE_AUTO_COMPACT_WINDOW=262144"


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        (
            {"CLAUDE_CODE_MAX_OUTPUT_TOKENS": "16000", "CLAUDE_CODE_AUTO_COMPACT_WINDOW": "262144"},
            [(OK, None), (OK, None)],
        ),
        (
            {"CLAUDE_CODE_MAX_OUTPUT_TOKENS": "32000", "CLAUDE_CODE_AUTO_COMPACT_WINDOW": "1m"},
            [
                (WARNING, "export CLAUDE_CODE_MAX_OUTPUT_TOKENS=16384"),
                (WARNING, "export CLAUDE_CODE_AUTO_COMPACT_WINDOW=262144"),
            ],
        ),
        # A name Claude Code does not know: CLAUDE_CODE_MAX_CONTEXT_TOKENS is its window.
        (
            {"ANTHROPIC_MODEL": "small"},
            [
                (WARNING, "export CLAUDE_CODE_MAX_OUTPUT_TOKENS=16384"),
                (WARNING, "export CLAUDE_CODE_MAX_CONTEXT_TOKENS=32768"),
            ],
        ),
        # A Claude name on a window below what Claude Code can be told: its least.
        (
            {"ANTHROPIC_MODEL": "claude-sonnet-small"},
            [
                (WARNING, "export CLAUDE_CODE_MAX_OUTPUT_TOKENS=16384"),
                (WARNING, "export CLAUDE_CODE_AUTO_COMPACT_WINDOW=100000"),
            ],
        ),
    ],
)
def test_limitFindings_read_what_is_set(
    environ: dict[str, str], expected: list[tuple[str, str | None]]
) -> None:
    findings = limits(**environ)
    assert [(f.level, f.fix if f.level != OK else None) for f in findings] == expected


def test_limitFindings_know_claude_code_asks_less_of_a_name_it_does_not_know() -> None:
    """32000 output tokens for a name not in its catalog: a 64000 cap is no trouble."""
    everywhere = dict.fromkeys(
        ["ANTHROPIC_MODEL", *(f"ANTHROPIC_DEFAULT_{m}_MODEL" for m in ("OPUS", "SONNET", "HAIKU"))],
        "gpt-mid",
    )
    assert limits(**everywhere) == []


def test_limitFindings_say_nothing_for_routes_without_limits() -> None:
    assert (
        limits(ANTHROPIC_DEFAULT_SONNET_MODEL="claude-haiku-4", ANTHROPIC_DEFAULT_OPUS_MODEL="x")
        == []
    )


def test_diagnose_gives_the_limit_advice_with_a_config() -> None:
    fetch = ScriptedFetch({})
    findings = doctor.diagnose(None, GOOD_ENV, config(LIMITS), None, fetch)
    assert "export CLAUDE_CODE_MAX_OUTPUT_TOKENS=16384" in text(findings)


def test_modelFindings_skips_names_not_checked() -> None:
    env = shell(ANTHROPIC_MODEL="gpt-5")
    checks = doctor.modelChecks(env)
    assert doctor.modelFindings(env, checks, {}) == []
    served = doctor.servedByProxy(
        {"gpt-5": Probe(404), "claude-opus-5-5": Probe(200), "claude-haiku-5-5": Probe(None)}
    )
    assert served == {"gpt-5": None, "claude-opus-5-5": "the proxy has a route for it"}
    assert levels(doctor.modelFindings(env, checks, served)) == [PROBLEM, OK]


# -- probe results -----------------------------------------------------------------

CCPROXY_ROOT = b'{"service": "ccproxy", "status": "ok"}'


@pytest.mark.parametrize(
    ("probe", "expected"),
    [
        (Probe(200, body=CCPROXY_ROOT), OK),
        (Probe(200, body=b"<html>Directory listing</html>"), WARNING),
        (Probe(200, body=b"[1]"), WARNING),
        (Probe(404), PROBLEM),
        (Probe(None, "Connection refused"), PROBLEM),
    ],
)
def test_proxyRootFindings(probe: Probe, expected: str) -> None:
    assert levels(doctor.proxyRootFindings("http://127.0.0.1:8000", probe)) == [expected]


@pytest.mark.parametrize(
    ("probe", "variable", "expected", "said"),
    [
        (Probe(200), "ANTHROPIC_AUTH_TOKEN", OK, "accepts your key"),
        (Probe(401), "ANTHROPIC_API_KEY", PROBLEM, "set ANTHROPIC_API_KEY"),
        (Probe(401), None, PROBLEM, "you have none"),
        (Probe(500), "ANTHROPIC_AUTH_TOKEN", WARNING, "answered 500"),
        (Probe(None, "timed out"), "ANTHROPIC_AUTH_TOKEN", WARNING, "timed out"),
    ],
)
def test_proxyKeyFindings(probe: Probe, variable: str | None, expected: str, said: str) -> None:
    [finding] = doctor.proxyKeyFindings("http://127.0.0.1:8000", probe, variable)
    assert finding.level == expected
    assert said in finding.line()


@pytest.mark.parametrize(
    ("name", "models", "chat", "expected", "said"),
    [
        ("corp", Probe(200), None, [OK], "its api_key"),
        ("local", Probe(200), None, [OK], "your key"),
        ("corp", Probe(401), None, [PROBLEM], "rejects"),
        ("corp", Probe(403), None, [PROBLEM], "rejects"),
        ("corp", Probe(None, "Name or service not known"), None, [PROBLEM], "unreachable"),
        ("corp", Probe(None, "refused"), Probe(200), [PROBLEM], "unreachable"),
        ("corp", Probe(404), None, [WARNING], "no /models"),
        ("corp", Probe(500), None, [WARNING], "answered 500"),
        ("corp", Probe(404), Probe(200), [WARNING, OK], "no /models"),
        ("corp", Probe(404), Probe(401), [WARNING, PROBLEM], "no /models"),
        ("corp", Probe(404), Probe(404), [WARNING, PROBLEM], "no /models"),
        ("corp", Probe(404), Probe(400), [WARNING, WARNING], "no /models"),
    ],
)
def test_upstreamFindings(
    name: str, models: Probe, chat: Probe | None, expected: list[str], said: str
) -> None:
    upstream = config().upstreams[name]
    findings = doctor.upstreamFindings(upstream, models, chat, "gpt-4.1")
    assert levels(findings) == expected
    assert said in findings[0].what
    assert CORP not in text(findings)


def test_upstream_requests() -> None:
    corp, local = config().upstreams["corp"], config().upstreams["local"]
    assert doctor.modelsURL(corp) == "https://gw.example/v1/models"
    assert doctor.modelsURL(local) == "http://127.0.0.1:9/v1/models?tenant=x"

    request = doctor.upstreamModelsRequest(corp, ALICE)
    assert request.method == "GET"
    assert request.headers["Authorization"] == f"Bearer {CORP}"  # its own key wins
    assert request.headers["X-Team"] == "platform"
    assert doctor.upstreamModelsRequest(local, ALICE).headers["Authorization"] == f"Bearer {ALICE}"
    assert "Authorization" not in doctor.upstreamModelsRequest(local, None).headers
    azure = config(
        "upstreams: {az: {url: 'https://az.example/v1', headers: {Authorization: 'Key k'}}}\n"
        "models: {'*': az}\n"
    ).upstreams["az"]
    assert doctor.upstreamModelsRequest(azure, ALICE).headers["Authorization"] == "Key k"

    chat = doctor.upstreamChatRequest(local, ALICE, "qwen")
    assert chat.headers["Content-Type"] == "application/json"
    assert (chat.method, chat.url) == ("POST", "http://127.0.0.1:9/v1/chat/completions?tenant=x")
    assert chat.body is not None
    assert json.loads(chat.body) == {
        "model": "qwen",
        "messages": [{"role": "user", "content": "Say ok."}],
        "max_tokens": 1,
    }


def test_a_responses_upstreams_probes() -> None:
    codex = config(
        "upstreams: {codex: {api: responses, url: 'https://api.example/v1'}}\n"
        "models: {'*': codex}\n"
    ).upstreams["codex"]
    assert doctor.modelsURL(codex) == "https://api.example/v1/models"
    probe = doctor.upstreamChatRequest(codex, ALICE, "gpt-5-codex")
    assert probe.url == "https://api.example/v1/responses"
    assert probe.body is not None
    assert json.loads(probe.body) == {
        "model": "gpt-5-codex",
        "input": "Say ok.",
        "max_output_tokens": 16,
        "store": False,
    }


AZURE = f"""
upstreams:
  az: {{url: "https://az.example/openai/v1", api_key: {CORP}, preset: azure}}
  fwd: {{url: "https://az.example/openai/v1", preset: azure}}
models: {{"*": az}}
"""


@pytest.mark.parametrize("name", ["az", "fwd"])
def test_upstream_probes_send_what_the_daemon_sends(name: str) -> None:
    """Azure wants its key in `api-key`: a probe with `Authorization: Bearer` would be
    refused where the daemon's own requests pass, and the key wrongly blamed."""
    upstream = config(AZURE).upstreams[name]
    daemon = upstreamHeaders(upstream, ALICE)
    assert daemon["api-key"] == (CORP if name == "az" else ALICE)
    for probe in (
        doctor.upstreamModelsRequest(upstream, ALICE),
        doctor.upstreamChatRequest(upstream, ALICE, "gpt-4.1"),
    ):
        assert {k: v for k, v in probe.headers.items() if k in daemon} == daemon
        assert "Authorization" not in probe.headers


def test_diagnose_probe_chat_judges_an_azure_key_by_its_own_header() -> None:
    def azure(request: Request) -> Probe:
        if request.url.startswith(PROXY):
            return UP.get((request.method, request.url), Probe(404))
        return Probe(200 if request.headers.get("api-key") == CORP else 401)

    findings = doctor.diagnose(None, GOOD_ENV, config(AZURE), None, azure, probeChat=True)
    upstream = [f for f in findings if "upstream 'az'" in f.what]
    assert levels(upstream) == [OK, OK], text(upstream)


@pytest.mark.parametrize(
    ("upstream", "names", "model"),
    [
        ("local", ["claude-haiku-5-5"], "qwen"),
        ("corp", ["claude-sonnet-5-5"], "gpt-4.1"),
        ("corp", ["mine"], "mine"),  # a pass-through route sends the client's name
        ("corp", [], "gpt-4.1"),
        ("local", [], "qwen"),
    ],
)
def test_probeModel(upstream: str, names: list[str], model: str) -> None:
    assert doctor.probeModel(config(), upstream, names) == model


def test_probeModel_none_known() -> None:
    glob = config("upstreams: {corp: {url: 'https://gw.example/v1'}}\nmodels: {'*': corp}\n")
    assert doctor.probeModel(glob, "corp", []) is None


# -- the whole diagnosis, with a scripted fetch ----------------------------------------


@define
class ScriptedFetch:
    """Answers probes from a table of (method, url) -> Probe; records what was asked."""

    answers: Mapping[tuple[str, str], Probe]
    asked: list[Request] = field(factory=list)

    def __call__(self, request: Request) -> Probe:
        self.asked.append(request)
        return self.answers.get((request.method, request.url), Probe(None, "no route to host"))

    def urls(self) -> list[str]:
        return [f"{r.method} {r.url}" for r in self.asked]


PROXY = "http://127.0.0.1:8000"
UP = {
    ("GET", f"{PROXY}/"): Probe(200, body=CCPROXY_ROOT),
    ("GET", f"{PROXY}/v1/models"): Probe(200),
    ("GET", "https://gw.example/v1/models"): Probe(404),
    ("GET", "http://127.0.0.1:9/v1/models?tenant=x"): Probe(200),
    ("POST", "https://gw.example/v1/chat/completions"): Probe(200),
    ("POST", "http://127.0.0.1:9/v1/chat/completions?tenant=x"): Probe(200),
}
GOOD_ENV = {"ANTHROPIC_BASE_URL": PROXY, "ANTHROPIC_AUTH_TOKEN": ALICE}


def test_diagnose_unreachable_proxy_stops_proxy_probes() -> None:
    fetch = ScriptedFetch({})
    findings = doctor.diagnose(None, GOOD_ENV, None, None, fetch)
    assert fetch.urls() == [f"GET {PROXY}/"]
    assert findings[-1].level == PROBLEM and "not reachable" in findings[-1].what


def test_diagnose_without_config_asks_the_proxy_about_models() -> None:
    answers = {
        ("GET", f"{PROXY}/"): Probe(200, body=CCPROXY_ROOT),
        ("GET", f"{PROXY}/v1/models"): Probe(200),
        ("GET", f"{PROXY}/v1/models/org%2Fmodel"): Probe(404),
        ("GET", f"{PROXY}/v1/models/claude-opus-5-5"): Probe(200),
    }
    fetch = ScriptedFetch(answers)
    findings = doctor.diagnose(
        None, {**GOOD_ENV, "ANTHROPIC_MODEL": "org/model"}, None, None, fetch
    )
    assert fetch.asked[1].headers["Authorization"] == f"Bearer {ALICE}"
    assert f"GET {PROXY}/v1/models/org%2Fmodel" in fetch.urls()
    problems = [f.what for f in findings if f.level == PROBLEM]
    assert len(problems) == 1 and "ANTHROPIC_MODEL='org/model'" in problems[0]


@pytest.mark.parametrize("probeChat", [False, True])
def test_diagnose_with_config_probes_each_upstream(probeChat: bool) -> None:
    fetch = ScriptedFetch(UP)
    findings = doctor.diagnose(None, GOOD_ENV, config(), None, fetch, probeChat=probeChat)
    posts = [r for r in fetch.asked if r.method == "POST"]
    if probeChat:
        assert [r.url for r in posts] == [
            "https://gw.example/v1/chat/completions",
            "http://127.0.0.1:9/v1/chat/completions?tenant=x",
        ]
        assert json.loads(posts[0].body or b"")["max_completion_tokens"] == 1
        assert json.loads(posts[1].body or b"")["max_tokens"] == 1  # its max_tokens_param
    else:
        assert posts == []
    assert PROBLEM not in levels(findings)
    assert ALICE not in text(findings) and CORP not in text(findings)


def test_diagnose_settings_override_is_reported_and_used() -> None:
    fetch = ScriptedFetch(UP)
    settings = {"env": {"ANTHROPIC_BASE_URL": "http://127.0.0.1:8001"}}
    findings = doctor.diagnose(settings, GOOD_ENV, None, PROXY, fetch)
    assert findings[0].level == WARNING and "ANTHROPIC_BASE_URL" in findings[0].what
    assert any(f.level == PROBLEM and "does not point at the proxy" in f.what for f in findings)


def test_diagnose_base_url_at_anthropic_is_a_problem_and_never_probed_as_the_proxy() -> None:
    fetch = ScriptedFetch(UP)
    settings = {"env": {"ANTHROPIC_BASE_URL": "https://api.anthropic.com"}}
    findings = doctor.diagnose(settings, {"ANTHROPIC_AUTH_TOKEN": ALICE}, None, None, fetch)
    [base] = [f for f in findings if "ANTHROPIC_BASE_URL=" in f.what]
    assert base.level == PROBLEM and "not pointed at ccproxy" in base.what
    assert PROXY in base.fix
    assert not any("anthropic.com" in url for url in fetch.urls())
    assert fetch.urls()[0] == f"GET {PROXY}/"  # the default place of the proxy instead
    assert not any(f.level == OK and "anthropic.com" in f.what for f in findings)


def test_diagnose_unparseable_listen_asks_for_url() -> None:
    unix = config(CONFIG.replace('"tcp:8000:interface=127.0.0.1"', "unix:/run/ccproxy.sock"))
    findings = doctor.diagnose(None, GOOD_ENV, unix, None, ScriptedFetch(UP))
    assert any("--url" in f.fix and "listen" in f.what for f in findings)


# -- the CLI, end to end -----------------------------------------------------------------


@define
class Scenario:
    """How the test server answers, playing both the proxy and one upstream."""

    proxyKey: str = ALICE
    upstreamKey: str = CORP
    upstreamModels: int = 200
    asked: list[tuple[str, str, dict[str, str]]] = field(factory=list)


class PlayHandler(BaseHTTPRequestHandler):
    server: PlayServer

    def do_GET(self) -> None:
        self._answer()

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self._answer()

    def _answer(self) -> None:
        scenario = self.server.scenario
        scenario.asked.append((self.command, self.path, dict(self.headers)))
        key = self.headers.get("x-api-key") or self.headers.get("Authorization", "")[7:]
        bearer = self.headers.get("Authorization", "")
        if self.path == "/":
            self._send(200, CCPROXY_ROOT)
        elif self.path.startswith("/v1/models"):
            self._send(200 if key == scenario.proxyKey else 401, b"{}")
        elif self.path == "/up/v1/models":
            # A gateway without /models says 404 before it looks at the key.
            ok = bearer == f"Bearer {scenario.upstreamKey}" or scenario.upstreamModels == 404
            self._send(scenario.upstreamModels if ok else 401, b"{}")
        elif self.path == "/moved/v1/models":
            self.send_response(301)
            self.send_header("Location", "/up/v1/models")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif self.path == "/up/v1/chat/completions":
            self._send(200 if bearer == f"Bearer {scenario.upstreamKey}" else 401, b"{}")
        else:
            self._send(404, b"{}")

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class PlayServer(HTTPServer):
    scenario: Scenario


@pytest.fixture
def play() -> Iterator[tuple[PlayServer, str]]:
    server = PlayServer(("127.0.0.1", 0), PlayHandler)
    server.scenario = Scenario()
    # shutdown() waits for serve_forever to notice it, up to one poll interval: at the
    # default 0.5 s that was most of each test's time.
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01})
    thread.start()
    try:
        yield server, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def writeConfig(tmp_path: Path, url: str) -> Path:
    port = url.rsplit(":", 1)[1]
    path = tmp_path / "ccproxy.yaml"
    path.write_text(
        f"""
listen: "tcp:{port}:interface=127.0.0.1"
clients: [{{name: alice, key: {ALICE}}}]
upstreams:
  up: {{url: "{url}/up/v1", api_key: {CORP}}}
models:
  "*": up/gpt-4.1
"""
    )
    return path


def runDoctor(
    tmp_path: Path,
    *args: str,
    environ: dict[str, str] | None = None,
    settings: dict[str, Any] | None = None,
    command: tuple[str, ...] = ("doctor",),
) -> subprocess.CompletedProcess[str]:
    home = tmp_path / "home"
    (home / ".claude").mkdir(parents=True, exist_ok=True)
    if settings is not None:
        (home / ".claude" / "settings.json").write_text(json.dumps(settings))
    env = {"HOME": str(home), "PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "ccproxy", *command, *args],
        cwd=ROOT,
        env={**env, **(environ or {})},
        capture_output=True,
        encoding="utf-8",
        timeout=60,
        check=False,
    )


def assertNoKeys(result: subprocess.CompletedProcess[str]) -> None:
    for secret in (ALICE, CORP, STRANGER):
        assert secret not in result.stdout + result.stderr


def test_cli_all_good(tmp_path: Path, play: tuple[PlayServer, str]) -> None:
    server, url = play
    result = runDoctor(
        tmp_path,
        "--config",
        str(writeConfig(tmp_path, url)),
        environ={"ANTHROPIC_BASE_URL": url, "ANTHROPIC_AUTH_TOKEN": ALICE},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 problem(s), 0 warning(s)" in result.stdout
    assertNoKeys(result)
    asked = {(method, path): headers for method, path, headers in server.scenario.asked}
    assert asked["GET", "/v1/models"]["Authorization"] == f"Bearer {ALICE}"
    assert asked["GET", "/up/v1/models"]["Authorization"] == f"Bearer {CORP}"


def test_cli_settings_json_overrides_the_shell(
    tmp_path: Path, play: tuple[PlayServer, str]
) -> None:
    _, url = play
    result = runDoctor(
        tmp_path,
        "--url",
        url,
        environ={"ANTHROPIC_BASE_URL": url, "ANTHROPIC_AUTH_TOKEN": ALICE},
        settings={"env": {"ANTHROPIC_BASE_URL": url + "/v1", "ANTHROPIC_AUTH_TOKEN": STRANGER}},
    )
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    overrides = [line for line in lines if line.startswith("warning") and "settings.json" in line]
    assert len(overrides) == 2
    assert any("ANTHROPIC_BASE_URL" in line for line in overrides)
    assert any("'/v1'" in line and line.startswith("problem") for line in lines)
    assert any("rejects your key" in line for line in lines)  # the settings.json key is used
    assertNoKeys(result)


@pytest.mark.parametrize(
    ("scenario", "args", "code", "said"),
    [
        ({"proxyKey": STRANGER}, (), 1, "none of the proxy's 1 client keys"),
        ({"upstreamKey": STRANGER}, (), 1, "rejects its api_key"),
        ({"upstreamModels": 404}, (), 0, "no /models"),
        ({"upstreamModels": 404}, ("--probe-chat",), 0, "(chat with 'gpt-4.1')"),
        ({"upstreamModels": 404, "upstreamKey": STRANGER}, ("--probe-chat",), 1, "chat with"),
    ],
)
def test_cli_verdicts(
    tmp_path: Path,
    play: tuple[PlayServer, str],
    scenario: dict[str, Any],
    args: tuple[str, ...],
    code: int,
    said: str,
) -> None:
    server, url = play
    for name, value in scenario.items():
        setattr(server.scenario, name, value)
    configPath = writeConfig(tmp_path, url)
    if "proxyKey" in scenario:  # the config itself holds the key the proxy answers with
        configPath.write_text(configPath.read_text().replace(ALICE, STRANGER))
    result = runDoctor(
        tmp_path,
        "--config",
        str(configPath),
        *args,
        environ={"ANTHROPIC_BASE_URL": url, "ANTHROPIC_API_KEY": ALICE},
    )
    assert result.returncode == code, result.stdout
    assert said in result.stdout
    assertNoKeys(result)


def test_cli_proxy_down(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    result = runDoctor(
        tmp_path, "--url", url, environ={"ANTHROPIC_BASE_URL": url, "ANTHROPIC_AUTH_TOKEN": ALICE}
    )
    assert result.returncode == 1
    assert f"problem  the proxy is not reachable at {url}" in result.stdout


def test_cli_unloadable_config_is_a_problem(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("upstreams: {up: {url: '${NOT_SET_ANYWHERE}'}}\nmodels: {'*': up}\n")
    result = runDoctor(tmp_path, "--config", str(path), "--url", "http://127.0.0.1:1")
    assert result.returncode == 1
    assert "NOT_SET_ANYWHERE" in result.stdout


@pytest.mark.parametrize(
    ("command", "code", "said"),
    [((), 2, "usage:"), (("doctor", "--url", "localhost:8000"), 2, "not an http(s) URL")],
)
def test_cli_usage(tmp_path: Path, command: tuple[str, ...], code: int, said: str) -> None:
    result = runDoctor(tmp_path, command=command)
    assert result.returncode == code
    assert said in result.stdout + result.stderr


def test_diagnose_no_chat_probe_after_a_rejected_key() -> None:
    fetch = ScriptedFetch({**UP, ("GET", "https://gw.example/v1/models"): Probe(401)})
    findings = doctor.diagnose(None, GOOD_ENV, config(), None, fetch, probeChat=True)
    posts = [r.url for r in fetch.asked if r.method == "POST"]
    assert posts == ["http://127.0.0.1:9/v1/chat/completions?tenant=x"]
    assert any(f.level == PROBLEM and "'corp'" in f.what for f in findings)


@pytest.mark.parametrize(
    ("method", "path", "headers", "status"),
    [
        ("GET", "/", {}, 200),
        ("GET", "/v1/models", {"x-api-key": ALICE}, 200),
        ("GET", "/v1/models", {"x-api-key": STRANGER}, 401),
        ("GET", "/moved/v1/models", {"Authorization": f"Bearer {CORP}"}, 301),  # not followed
        ("POST", "/up/v1/chat/completions", {"Authorization": f"Bearer {CORP}"}, 200),
    ],
)
def test_fetch(
    play: tuple[PlayServer, str], method: str, path: str, headers: dict[str, str], status: int
) -> None:
    server, url = play
    body = b"{}" if method == "POST" else None
    probe = fetch(Request(method, url + path, headers, body))
    assert (probe.status, probe.error) == (status, "")
    assert [(m, p) for m, p, _ in server.scenario.asked] == [(method, path)]


def test_fetch_connection_refused() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    probe = fetch(Request("GET", f"http://127.0.0.1:{port}/"))
    assert probe.status is None and "refused" in probe.error
