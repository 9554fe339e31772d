"""Seed-compatible mode: the original proxy's variables and `.env` file as a Config."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.endpoints import serverFromString

from ccproxy.config import Config
from ccproxy.config.schema import ConfigError
from ccproxy.config.seed import (
    README_TABLE,
    VARIABLES,
    SeedSettings,
    configFromEnvironment,
    parseDotenv,
    settingsFromEnvironment,
)

URL = "https://gw.example/v1/chat/completions"


def summary(config: Config) -> dict[str, Any]:
    """The observable parts of a seed config, for table comparisons."""
    [(name, upstream)] = config.upstreams.items()
    assert name == "default"
    return {
        "url": upstream.url,
        "apiKey": upstream.apiKey,
        "timeout": upstream.timeout,
        "clients": [(c.name, c.key) for c in config.clients],
        "listen": config.listen,
        "routes": [(r.pattern, ", ".join(str(t) for t in r.targets)) for r in config.router.routes],
        "defaultMaxTokens": config.defaultMaxTokens,
    }


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        (
            {"UPSTREAM_BASE_URL": URL},
            {
                "url": URL,
                "apiKey": None,
                "timeout": 600.0,
                "clients": [],
                "listen": "tcp:8000:interface=127.0.0.1",
                "routes": [("*", "default")],
                "defaultMaxTokens": 32000,
            },
        ),
        (
            {
                "UPSTREAM_BASE_URL": URL,
                "UPSTREAM_API_KEY": "up-key",
                "GATEWAY_API_KEY": "gw-key",
                "UPSTREAM_TIMEOUT_SECONDS": "30",
                "DEFAULT_MAX_TOKENS": "4096",
                "HOST": "0.0.0.0",
                "PORT": "9000",
            },
            {
                "apiKey": "up-key",
                "clients": [("default", "gw-key")],
                "timeout": 30.0,
                "defaultMaxTokens": 4096,
                "listen": "tcp:9000:interface=0.0.0.0",
            },
        ),
        ({"UPSTREAM_BASE_URL": URL, "UPSTREAM_TIMEOUT_SECONDS": "2.5"}, {"timeout": 2.5}),
        # The config's own rule: a base URL gets /chat/completions appended.
        ({"UPSTREAM_BASE_URL": "http://gw:1/v1"}, {"url": "http://gw:1/v1/chat/completions"}),
        # IPv6 hosts: colons escaped for the endpoint description, brackets dropped.
        (
            {"UPSTREAM_BASE_URL": URL, "HOST": "::1", "GATEWAY_API_KEY": "k"},
            {"listen": r"tcp:8000:interface=\:\:1"},
        ),
        (
            {"UPSTREAM_BASE_URL": URL, "HOST": "[::]", "PORT": "0", "GATEWAY_API_KEY": "k"},
            {"listen": r"tcp:0:interface=\:\:"},
        ),
        (
            {"UPSTREAM_BASE_URL": URL, "DEFAULT_UPSTREAM_MODEL": "gpt-4.1"},
            {"routes": [("*", "default/gpt-4.1")]},
        ),
        (
            {
                "UPSTREAM_BASE_URL": URL,
                "MODEL_MAP_JSON": json.dumps(
                    {"claude-sonnet-5-5": "gpt-4.1", "claude-haiku-5-5": "org/small"}
                ),
                "DEFAULT_UPSTREAM_MODEL": "gpt-4.1-mini",
            },
            {
                "routes": [
                    ("claude-sonnet-5-5", "default/gpt-4.1"),
                    ("claude-haiku-5-5", "default/org/small"),
                    ("*", "default/gpt-4.1-mini"),
                ]
            },
        ),
        (
            {"UPSTREAM_BASE_URL": URL, "MODEL_MAP_JSON": '{"a": "b"}'},
            {"routes": [("a", "default/b"), ("*", "default")]},
        ),
        # FORCE_UPSTREAM_MODEL wins over the map and the default.
        (
            {
                "UPSTREAM_BASE_URL": URL,
                "FORCE_UPSTREAM_MODEL": "forced",
                "MODEL_MAP_JSON": '{"a": "b"}',
                "DEFAULT_UPSTREAM_MODEL": "d",
            },
            {"routes": [("*", "default/forced")]},
        ),
        # Empty values count as unset.
        (
            {
                "UPSTREAM_BASE_URL": URL,
                "GATEWAY_API_KEY": "",
                "FORCE_UPSTREAM_MODEL": " ",
                "UPSTREAM_API_KEY": "",
                "HOST": "",
            },
            {
                "clients": [],
                "routes": [("*", "default")],
                "apiKey": None,
                "listen": "tcp:8000:interface=127.0.0.1",
            },
        ),
        # Values are literal: `${…}` in a key is not a template.
        (
            {"UPSTREAM_BASE_URL": URL, "UPSTREAM_API_KEY": "a${B}c$", "GATEWAY_API_KEY": "${X:-y}"},
            {"apiKey": "a${B}c$", "clients": [("default", "${X:-y}")]},
        ),
    ],
)
def test_environment_to_config(environ: dict[str, str], expected: dict[str, Any]) -> None:
    got = summary(configFromEnvironment(environ, None))
    assert {key: got[key] for key in expected} == expected


@pytest.mark.parametrize(
    ("host", "interface"),
    [("::1", "::1"), ("[fe80::1%eth0]", "fe80::1%eth0"), ("127.0.0.1", "127.0.0.1")],
)
def test_listen_is_a_valid_endpoint(host: str, interface: str) -> None:
    environ = {"UPSTREAM_BASE_URL": URL, "HOST": host, "GATEWAY_API_KEY": "k"}
    config = configFromEnvironment(environ, None)
    endpoint = serverFromString(None, config.listen)
    assert endpoint._interface == interface  # type: ignore[attr-defined]


def test_model_map_names_match_exactly() -> None:
    environ = {
        "UPSTREAM_BASE_URL": URL,
        "MODEL_MAP_JSON": '{"claude-*": "x", "*": "y", "[a]": "z"}',
    }
    router = configFromEnvironment(environ, None).router
    found = {
        name: str(route.targets[0]) if (route := router.find(name)) else None
        for name in ("claude-*", "claude-sonnet", "*", "[a]", "a")
    }
    assert found == {
        "claude-*": "default/x",
        "claude-sonnet": "default",
        "*": "default/y",
        "[a]": "default/z",
        "a": "default",
    }


@pytest.mark.parametrize(
    ("environ", "pretty", "logPayloadMaxChars"),
    [
        ({}, False, None),
        ({"PRETTY_LOGS": "1", "LOG_PAYLOAD_MAX_CHARS": "2000"}, True, 2000),
        ({"PRETTY_LOGS": "TRUE"}, True, None),
        ({"PRETTY_LOGS": "on"}, True, None),
        ({"PRETTY_LOGS": "no", "LOG_PAYLOAD_MAX_CHARS": "0"}, False, 0),
    ],
)
def test_log_settings(
    environ: dict[str, str], pretty: bool, logPayloadMaxChars: int | None
) -> None:
    settings = settingsFromEnvironment({"UPSTREAM_BASE_URL": URL, **environ}, None)
    assert isinstance(settings, SeedSettings)
    assert (settings.pretty, settings.logPayloadMaxChars) == (pretty, logPayloadMaxChars)


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({}, "UPSTREAM_BASE_URL: is required"),
        ({"UPSTREAM_BASE_URL": ""}, "UPSTREAM_BASE_URL: is required"),
        ({"UPSTREAM_BASE_URL": "ftp://gw/v1"}, "UPSTREAM_BASE_URL: not an http(s) URL"),
        ({"UPSTREAM_BASE_URL": "gw.example/v1"}, "UPSTREAM_BASE_URL: not an http(s) URL"),
        (
            {"UPSTREAM_TIMEOUT_SECONDS": "soon"},
            "UPSTREAM_TIMEOUT_SECONDS: must be a positive number",
        ),
        ({"UPSTREAM_TIMEOUT_SECONDS": "0"}, "UPSTREAM_TIMEOUT_SECONDS: must be a positive number"),
        ({"DEFAULT_MAX_TOKENS": "1.5"}, "DEFAULT_MAX_TOKENS: must be a positive whole number"),
        ({"DEFAULT_MAX_TOKENS": "-3"}, "DEFAULT_MAX_TOKENS: must be a positive whole number"),
        ({"PORT": "http"}, "PORT: must be a port number"),
        # An open port beyond loopback needs a key (the config's rule, in seed terms).
        ({"HOST": "0.0.0.0"}, "GATEWAY_API_KEY: is required when HOST (0.0.0.0) is not a"),
        ({"HOST": "[::]"}, "GATEWAY_API_KEY: is required when HOST ([::]) is not a"),
        ({"PORT": "70000"}, "PORT: must be a port number"),
        ({"MODEL_MAP_JSON": "{'a': 'b'}"}, "MODEL_MAP_JSON: not valid JSON"),
        ({"MODEL_MAP_JSON": '["a"]'}, "MODEL_MAP_JSON: must be a JSON object"),
        ({"MODEL_MAP_JSON": '{"a": 1}'}, 'MODEL_MAP_JSON["a"]: must be a non-empty string'),
        ({"MODEL_MAP_JSON": '{"a": " "}'}, 'MODEL_MAP_JSON["a"]: must be a non-empty string'),
        ({"PRETTY_LOGS": "maybe"}, "PRETTY_LOGS: must be true or false"),
        (
            {"LOG_PAYLOAD_MAX_CHARS": "-1"},
            "LOG_PAYLOAD_MAX_CHARS: must be a whole number, 0 or more",
        ),
        ({"LOG_PAYLOAD_MAX_CHARS": "lots"}, "LOG_PAYLOAD_MAX_CHARS: must be a whole number"),
    ],
)
def test_errors_name_the_variable(environ: dict[str, str], message: str) -> None:
    environ = {"UPSTREAM_BASE_URL": URL, **environ} if environ else environ
    with pytest.raises(ConfigError) as caught:
        settingsFromEnvironment(environ, None)
    assert str(caught.value).startswith(message)


def test_errors_never_show_keys() -> None:
    environ = {
        "UPSTREAM_BASE_URL": "nope",
        "UPSTREAM_API_KEY": "sk-secret",
        "GATEWAY_API_KEY": "gw",
    }
    with pytest.raises(ConfigError) as caught:
        configFromEnvironment(environ, None)
    assert "sk-secret" not in str(caught.value)


# -- .env ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", {}),
        ("# comment\n\n   # indented comment\nA=1\n", {"A": "1"}),
        ("export A=1\nexport\tB=2\n", {"A": "1", "B": "2"}),
        ("  A = spaced value  \n", {"A": "spaced value"}),
        ("A=\n", {"A": ""}),
        ("A=b=c\n", {"A": "b=c"}),
        ("A=b # comment\nB=b#not-a-comment\n", {"A": "b", "B": "b#not-a-comment"}),
        ("A='x # y'\n", {"A": "x # y"}),
        ("A='a\\nb'\nB='it\\'s'\n", {"A": "a\\nb", "B": "it's"}),
        ('A="a\\nb \\"q\\" \\\\"\n', {"A": 'a\nb "q" \\'}),
        ('A="x" # comment\n', {"A": "x"}),
        ("A=1\r\nB=2\r\n", {"A": "1", "B": "2"}),
        ("A=1\nA=2\n", {"A": "2"}),
        ("A=1\nB=${A}-${C:-d}-${D}\n", {"A": "1", "B": "1-d-"}),
        ("A=1\nB=\"${A}\"\nC='${A}'\n", {"A": "1", "B": "1", "C": "${A}"}),
        ("B=$A\n", {"B": "$A"}),
        ("dotted.key=1\n", {"dotted.key": "1"}),
    ],
)
def test_parseDotenv(text: str, expected: dict[str, str]) -> None:
    assert parseDotenv(text) == expected


def test_parseDotenv_expands_from_the_environment_first() -> None:
    assert parseDotenv("A=file\nB=${A}\n", {"A": "env"}) == {"A": "file", "B": "env"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("JUSTAWORD\n", ".env:1: expected KEY=VALUE"),
        ("A=1\n\n1A=x\n", ".env:3: expected KEY=VALUE"),
        ("MY KEY=x\n", ".env:1: expected KEY=VALUE"),
        ('A="open\nB=1"\n', '.env:1: no closing "'),
        ("A='x' y\n", ".env:1: unexpected text after the closing '"),
    ],
)
def test_parseDotenv_errors(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parseDotenv(text)
    assert str(caught.value).startswith(message)


@pytest.mark.parametrize(
    ("fileText", "environ", "expected"),
    [
        # The file alone.
        (f"UPSTREAM_BASE_URL={URL}\nGATEWAY_API_KEY=from-file\n", {}, (URL, "from-file")),
        # A real variable wins over the file...
        (
            f"UPSTREAM_BASE_URL={URL}\nGATEWAY_API_KEY=from-file\n",
            {"GATEWAY_API_KEY": "from-env"},
            (URL, "from-env"),
        ),
        # ...but an empty one does not switch off the file's key check.
        (
            f"UPSTREAM_BASE_URL={URL}\nGATEWAY_API_KEY=from-file\n",
            {"GATEWAY_API_KEY": ""},
            (URL, "from-file"),
        ),
        (
            "GATEWAY_API_KEY=from-file\n",
            {"UPSTREAM_BASE_URL": "http://env:1"},
            (
                "http://env:1/chat/completions",
                "from-file",
            ),
        ),
        # Expansion in the file sees the environment.
        (
            'UPSTREAM_BASE_URL="${GW}/v1/chat/completions"\n',
            {"GW": "http://gw:2"},
            ("http://gw:2/v1/chat/completions", None),
        ),
    ],
)
def test_dotenv_precedence(
    tmp_path: Path, fileText: str, environ: dict[str, str], expected: tuple[str, str | None]
) -> None:
    dotenv = tmp_path / ".env"
    dotenv.write_text(fileText)
    config = configFromEnvironment(environ, str(dotenv))
    keys = [c.key for c in config.clients]
    assert (config.upstreams["default"].url, keys[0] if keys else None) == expected


def test_dotenv_with_a_byte_order_mark(tmp_path: Path) -> None:
    dotenv = tmp_path / ".env"
    dotenv.write_bytes(b"\xef\xbb\xbfUPSTREAM_BASE_URL=" + URL.encode() + b"\n")
    assert configFromEnvironment({}, str(dotenv)).upstreams["default"].url == URL


def test_dotenv_absent_or_not_asked(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("GATEWAY_API_KEY=from-file\n")
    environ = {"UPSTREAM_BASE_URL": URL}
    assert configFromEnvironment(environ, str(tmp_path / "missing.env")).clients == ()
    assert configFromEnvironment(environ, None).clients == ()
    assert len(configFromEnvironment(environ, str(tmp_path / ".env")).clients) == 1


def test_dotenv_errors_name_the_file(tmp_path: Path) -> None:
    dotenv = tmp_path / ".env"
    dotenv.write_text("UPSTREAM_BASE_URL\n")
    with pytest.raises(ConfigError, match=rf"^{dotenv}:1: expected KEY=VALUE"):
        configFromEnvironment({}, str(dotenv))
    with pytest.raises(ConfigError, match=rf"^{tmp_path}: cannot read the file"):
        configFromEnvironment({}, str(tmp_path))


def test_only_seed_variables_are_read(tmp_path: Path) -> None:
    dotenv = tmp_path / ".env"
    dotenv.write_text(f"UPSTREAM_BASE_URL={URL}\nlisten=tcp:1\nmodels=x\n")
    config = configFromEnvironment({"api_key": "x", "PORT_": "1"}, str(dotenv))
    assert config.listen == "tcp:8000:interface=127.0.0.1"
    assert config.upstreams["default"].apiKey is None


def test_readme_table_names_every_variable() -> None:
    rows = README_TABLE.splitlines()
    assert rows[:2] == ["| variable | YAML key | notes |", "|---|---|---|"]
    firstCells = [row.split("|")[1] for row in rows[2:]]
    for name in VARIABLES:
        assert sum(f"`{name}`" in cell for cell in firstCells) == 1, name


def test_the_readme_holds_the_table_as_generated() -> None:
    """README.md's seed table is `README_TABLE` to the letter, so the two cannot drift."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    assert README_TABLE in readme


def test_the_url_row_says_what_is_done_to_a_base_url() -> None:
    """A URL without /chat/completions gets it appended (see the table test above),
    so the README must not say the URL is used as is."""
    [urlRow] = [row for row in README_TABLE.splitlines() if "`UPSTREAM_BASE_URL`" in row]
    assert "used as is" not in urlRow
    assert "`/chat/completions` is appended" in urlRow
    config = configFromEnvironment({"UPSTREAM_BASE_URL": "http://gw:1/v1/"}, None)
    assert config.upstreams["default"].url == "http://gw:1/v1/chat/completions"
