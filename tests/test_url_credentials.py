"""An upstream URL with `user:pass@` is refused when the config is read.

Before, `https://user:pass@host/v1` loaded, and every request through it was a 500
with a traceback in the log (Twisted's Agent cannot use the userinfo), which is
neither a clear failure nor a safe place for a password to sit.
"""

from __future__ import annotations

import pytest

from ccproxy.config import Config, ConfigError
from ccproxy.config.seed import configFromEnvironment

CONFIG = """
upstreams:
  corp: {{url: "{url}"}}
models:
  "*": corp
"""


@pytest.mark.parametrize(
    "url",
    [
        "https://user:s3cret@gw.example/v1",
        "http://user:s3cret@127.0.0.1:8080/v1",
        "https://user@gw.example/v1",
        "https://:s3cret@gw.example/v1",
        "https://@gw.example/v1",
    ],
)
def test_userinfo_is_refused_naming_the_key(url: str) -> None:
    with pytest.raises(ConfigError) as raised:
        Config.fromYAML(CONFIG.format(url=url), {})
    message = str(raised.value)
    assert message.startswith("upstreams.corp.url: ")
    assert "put credentials in api_key or headers" in message
    assert "s3cret" not in message


def test_userinfo_from_a_variable_is_refused_too() -> None:
    with pytest.raises(ConfigError, match=r"^upstreams\.corp\.url: .*api_key or headers"):
        Config.fromYAML(CONFIG.format(url="${URL}"), {"URL": "https://u:p@gw.example/v1"})


def test_seed_mode_names_its_variable() -> None:
    with pytest.raises(ConfigError, match=r"^UPSTREAM_BASE_URL: .*api_key or headers"):
        configFromEnvironment({"UPSTREAM_BASE_URL": "https://u:p@gw.example/v1"}, None)


def test_an_at_sign_in_the_path_or_query_is_no_credential() -> None:
    url = "https://gw.example/v1/@team?tag=a@b"
    config = Config.fromYAML(CONFIG.format(url=url), {})
    assert config.upstreams["corp"].url == "https://gw.example/v1/@team/chat/completions?tag=a@b"
