"""The YAML config: the contract's keys, expansion, and one clear line per problem."""

from __future__ import annotations

from pathlib import Path

import pytest
from attrs import fields

from ccproxy.config import DEFAULT_LISTEN, Config, ConfigError, LogSettings
from ccproxy.config.endpoints import listenIsLocal
from ccproxy.config.policy import Policy
from ccproxy.config.routing import Target

MINIMAL = """
upstreams:
  corp:
    url: https://llm-gateway.example.com/v1
models:
  "*": corp
"""

CONTRACT = """
listen: "tcp:8000:interface=127.0.0.1"
clients:
  - name: alice
    key: "${ALICE_PROXY_KEY}"
upstreams:
  corp:
    url: "https://llm-gateway.example.com/v1"
    api_key: "${CORP_GATEWAY_KEY}"
    timeout: 180
    headers: {X-Team: platform}
    max_tokens: 16384
  local:
    url: "http://127.0.0.1:11434/v1"
models:
  claude-haiku-*: local/qwen2.5-coder:7b
  claude-*: corp/gpt-4.1
  "*": corp
default_max_tokens: 32000
"""

ENV = {"ALICE_PROXY_KEY": "alice-secret", "CORP_GATEWAY_KEY": "corp-secret"}


def load(text: str, env: dict[str, str] | None = None) -> Config:
    return Config.fromYAML(text, ENV if env is None else env)


def test_contract_example_loads() -> None:
    config = load(CONTRACT)
    assert config.listen == "tcp:8000:interface=127.0.0.1"
    assert [(c.name, c.key) for c in config.clients] == [("alice", "alice-secret")]
    corp = config.upstreams["corp"]
    assert corp.url == "https://llm-gateway.example.com/v1/chat/completions"
    assert corp.apiKey == "corp-secret"
    assert corp.timeout == 180
    assert dict(corp.headers) == {"X-Team": "platform"}
    assert corp.profile.maxTokens == 16384
    local = config.upstreams["local"]
    assert local.apiKey is None
    assert local.profile.maxTokens is None
    assert config.defaultMaxTokens == 32000


def test_defaults() -> None:
    config = load(MINIMAL)
    assert config.listen == DEFAULT_LISTEN == "tcp:8000:interface=127.0.0.1"
    assert config.clients == ()
    assert config.maxBodyBytes == 32 * 1024 * 1024
    assert config.defaultMaxTokens == 32000
    assert config.pingInterval == 10
    assert config.upstreams["corp"].timeout == 600
    assert config.upstreams["corp"].profile.maxTokensParam == "max_completion_tokens"
    assert config.upstreams["corp"].profile.streamUsage is True


def test_keys_left_out_take_the_defaults_written_on_the_values(tmp_path: Path) -> None:
    """Each default is written once, on the attrs value, and the reader takes it from
    there (`LogSettings.keep` on a slotted class is the slot, not the default)."""
    path = str(tmp_path / "ccproxy.log")
    config = load(MINIMAL + f"log: {{file: {path}}}\n")
    assert config.upstreams["corp"].policy == Policy()
    assert config.log == LogSettings(file=path)
    assert isinstance(config.log.maxBytes, int) and isinstance(config.log.keep, int)
    default = fields(Config)
    assert config.shutdownGrace == default.shutdownGrace.default
    assert config.logPayloadMaxChars == default.logPayloadMaxChars.default


@pytest.mark.parametrize(
    ("listen", "local"),
    [
        ("tcp:8000:interface=127.0.0.1", True),
        ("tcp:8000:interface=127.0.0.2", True),
        ("tcp:8000:interface=localhost", True),
        (r"tcp6:8000:interface=\:\:1", True),
        ("tcp:8000:50:127.0.0.1", True),
        ("unix:/run/ccproxy.sock", True),
        ("systemd:domain=INET:index=0", True),
        ("tcp:8000", False),
        ("tcp:8000:interface=0.0.0.0", False),
        (r"tcp6:8000:interface=\:\:", False),
        ("tcp:8000:interface=10.0.0.1", False),
        ("ssl:8443:privateKey=k.pem", False),
    ],
)
def test_listenIsLocal(listen: str, local: bool) -> None:
    assert listenIsLocal(listen) is local


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://gw.example.com/v1", "https://gw.example.com/v1/chat/completions"),
        ("https://gw.example.com/v1/", "https://gw.example.com/v1/chat/completions"),
        ("http://h:8080/v1/chat/completions", "http://h:8080/v1/chat/completions"),
        (
            "http://h/openai/v1?api-version=2024-10-21",
            "http://h/openai/v1/chat/completions?api-version=2024-10-21",
        ),
    ],
)
def test_url_gets_chat_completions_once(url: str, expected: str) -> None:
    text = MINIMAL.replace("https://llm-gateway.example.com/v1", url)
    assert load(text).upstreams["corp"].url == expected


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://api.openai.com/v1", "https://api.openai.com/v1/responses"),
        ("https://api.openai.com/v1/responses/", "https://api.openai.com/v1/responses"),
        (
            "http://h/openai/v1?api-version=preview",
            "http://h/openai/v1/responses?api-version=preview",
        ),
    ],
)
def test_a_responses_upstreams_url_gets_responses_once(url: str, expected: str) -> None:
    text = MINIMAL.replace(
        "    url: https://llm-gateway.example.com/v1", f"    api: responses\n    url: {url}"
    )
    upstream = load(text).upstreams["corp"]
    assert (upstream.api, upstream.url) == ("responses", expected)
    assert load(MINIMAL).upstreams["corp"].api == "chat"


@pytest.mark.parametrize("api", ["anthropic", 3, "Responses"])
def test_an_unknown_api_is_refused_with_its_key_path(api: object) -> None:
    text = MINIMAL.replace("    url:", f"    api: {api}\n    url:")
    with pytest.raises(ConfigError) as raised:
        load(text)
    assert str(raised.value).startswith("upstreams.corp.api:")


def test_routes_in_file_order_with_targets() -> None:
    config = load(CONTRACT)
    router = config.router
    assert router.resolve("claude-haiku-5-5").targets == (Target("local", "qwen2.5-coder:7b"),)
    assert router.resolve("claude-sonnet-5-5").targets == (Target("corp", "gpt-4.1"),)
    assert router.resolve("gpt-4o").targets == (Target("corp", None),)


def test_a_target_may_say_its_models_context_window() -> None:
    """The short forms stay; a target written as a mapping may add `context_window`,
    alone or in a failover list; a route's window is the smallest of its targets'."""
    config = load(
        MINIMAL.replace(
            '  "*": corp\n',
            "  claude-sonnet-*: {target: corp/gpt-4.1, context_window: 1047576}\n"
            "  claude-opus-*: [{target: corp/big, context_window: 200000}, corp/other,"
            " {target: corp/small, context_window: 32768}]\n"
            "  claude-haiku-*: corp/mini\n"
            '  "*": corp\n',
        )
    )
    router = config.router
    sonnet = router.resolve("claude-sonnet-5-5")
    assert sonnet.targets == (Target("corp", "gpt-4.1", 1047576),)
    assert sonnet.contextWindow == 1047576
    opus = router.resolve("claude-opus-5-5")
    assert [t.contextWindow for t in opus.targets] == [200000, None, 32768]
    assert opus.contextWindow == 32768
    assert router.resolve("claude-haiku-5-5").contextWindow is None
    assert router.resolve("gpt-4o").targets == (Target("corp", None),)


@pytest.mark.parametrize(
    ("route", "message"),
    [
        ("{target: corp/x, context_window: 0}", "models.*.context_window: must be a positive"),
        ("{target: corp/x, context_window: big}", "models.*.context_window: must be a positive"),
        ("{target: corp/x, window: 5}", "models.*.window: unknown key"),
        ("{context_window: 5}", 'models.*: must be "UPSTREAM", "UPSTREAM/MODEL" or a list'),
        ("[corp, {target: nowhere/x}]", "models.*.1: unknown upstream 'nowhere'"),
        ("[corp, {target: ''}]", "models.*.1.target: must be"),
    ],
)
def test_context_window_problems_name_the_key(route: str, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load(MINIMAL.replace('"*": corp', f'"*": {route}'))
    assert message in str(raised.value)


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"URL": "https://a.example/v1"}, "https://a.example/v1/chat/completions"),
        ({}, "https://fallback.example/v1/chat/completions"),
        ({"URL": ""}, None),
    ],
)
def test_variable_with_default(env: dict[str, str], expected: str | None) -> None:
    text = MINIMAL.replace(
        "https://llm-gateway.example.com/v1", "${URL:-https://fallback.example/v1}"
    )
    if expected is None:
        with pytest.raises(ConfigError, match=r"upstreams\.corp\.url: not an http\(s\) URL"):
            load(text, env)
    else:
        assert load(text, env).upstreams["corp"].url == expected


def test_variables_expand_inside_strings_and_lists() -> None:
    text = CONTRACT.replace('"${CORP_GATEWAY_KEY}"', '"pre-${CORP_GATEWAY_KEY}-post"')
    assert load(text).upstreams["corp"].apiKey == "pre-corp-secret-post"


def test_empty_api_key_means_forward_callers_key() -> None:
    text = MINIMAL.replace(
        "url: https://llm-gateway.example.com/v1", 'url: https://x/v1\n    api_key: ""'
    )
    assert load(text).upstreams["corp"].apiKey is None


def test_secrets_never_in_repr() -> None:
    config = load(CONTRACT)
    assert "alice-secret" not in repr(config)
    assert "corp-secret" not in repr(config)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (CONTRACT, "clients.0.key: environment variable ALICE_PROXY_KEY is not set"),
        (
            MINIMAL.replace("https://llm-gateway.example.com/v1", "ftp://x"),
            "upstreams.corp.url: not an http(s) URL",
        ),
        (
            MINIMAL.replace("https://llm-gateway.example.com/v1", "not a url"),
            "upstreams.corp.url: not an http(s) URL",
        ),
        (
            MINIMAL.replace("    url: https://llm-gateway.example.com/v1\n", "    timeout: 5\n"),
            "upstreams.corp.url: is required",
        ),
        (MINIMAL + "  claude-*: nowhere/m\n", "models.claude-*: unknown upstream 'nowhere'"),
        (MINIMAL + "  x: corp/\n", "models.x: the model after the slash is empty"),
        (
            MINIMAL + "  y: [corp, 2]\n",
            'models.y.1: must be "UPSTREAM", "UPSTREAM/MODEL" or a list',
        ),
        (MINIMAL + "  y: {a: b}\n", 'models.y: must be "UPSTREAM", "UPSTREAM/MODEL" or a list'),
        (MINIMAL + "  y: []\n", "models.y: the list of targets is empty"),
        (MINIMAL + "  y: [corp/a, gone/b]\n", "models.y.1: unknown upstream 'gone'"),
        (
            MINIMAL.replace("corp:", "bad name:", 1).replace('"*": corp', '"*": x'),
            "upstreams.bad name: upstream names may hold only",
        ),
        (MINIMAL + "timeoutt: 3\n", "timeoutt: unknown key"),
        (
            MINIMAL.replace("    url:", "    timeout: -1\n    url:"),
            "upstreams.corp.timeout: must be a positive number",
        ),
        (
            MINIMAL.replace("    url:", "    timeout: soon\n    url:"),
            "upstreams.corp.timeout: must be a positive number",
        ),
        (
            MINIMAL.replace("    url:", "    max_tokens: 0\n    url:"),
            "upstreams.corp.max_tokens: must be a positive whole number",
        ),
        (
            MINIMAL.replace("    url:", "    max_tokens_param: n_predict\n    url:"),
            "upstreams.corp.max_tokens_param: must be one of",
        ),
        (
            MINIMAL.replace("    url:", "    headers: {'Bad Header': x}\n    url:"),
            "upstreams.corp.headers.Bad Header: not a valid HTTP header name",
        ),
        (
            MINIMAL + "default_max_tokens: many\n",
            "default_max_tokens: must be a positive whole number",
        ),
        (MINIMAL + "clients: {name: a}\n", "clients: must be a list"),
        (MINIMAL + "clients:\n  - name: a\n", "clients.0.key: is required"),
        (
            MINIMAL + "clients:\n  - {name: a, key: k}\n  - {name: a, key: j}\n",
            "clients.1.name: client 'a' is listed twice",
        ),
        (
            MINIMAL + "clients:\n  - {name: a, key: k}\n  - {name: b, key: k}\n",
            "clients.1.key: two clients share the same key",
        ),
        ("upstreams: {}\nmodels: {'*': x}\n", "upstreams: at least one upstream is required"),
        (MINIMAL.replace('models:\n  "*": corp\n', ""), "models: at least one route is required"),
        ("- just\n- a list\n", "the config file must be a YAML mapping"),
        ("upstreams: [\n", "not valid YAML: line"),
    ],
)
def test_problems_name_the_key(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load(text, {})
    assert message in str(raised.value)
    assert "\n" not in str(raised.value)


def test_missing_file_is_a_config_error(tmp_path) -> None:
    with pytest.raises(ConfigError, match="cannot read the file"):
        Config.fromPath(str(tmp_path / "absent.yaml"))


def test_example_config_in_etc_loads() -> None:
    from pathlib import Path

    path = Path(__file__).parent.parent / "etc" / "ccproxy.yaml"
    config = Config.fromPath(str(path), environ={})
    assert config.router.find("claude-sonnet-5-5") is not None
    assert config.upstreams["codex"].api == "responses"
