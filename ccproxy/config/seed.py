"""Seed-compatible mode: the original single-gateway proxy's variables as a `Config`.

The proxy ccproxy replaces was configured only by environment variables and a `.env`
file. So that its deployments can switch without rewriting their set-up, the same
variables build the equivalent config: one upstream named `default`. The mapping is
built in the shape the YAML file would hold and validated by `Config.fromMapping`, so
the checks are the config's own; a problem is reported under the variable's name
(`UPSTREAM_BASE_URL: not an http(s) URL`).

The `.env` file is read by a small parser rather than python-dotenv: the format is a
few lines of `KEY=VALUE`, and a parser of ~60 lines costs less than a dependency to
install everywhere the daemon runs. It follows python-dotenv's rules for what such
files hold (see `parseDotenv`), except that a malformed line is an error rather than
skipped with a warning, and a quoted value cannot span lines. Real environment
variables win over the file.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from typing import Any

from attrs import frozen

from ccproxy.config.model import Config
from ccproxy.config.schema import ConfigError, nonNegativeInt

UPSTREAM_NAME = "default"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000

VARIABLES = (
    "UPSTREAM_BASE_URL",
    "UPSTREAM_API_KEY",
    "GATEWAY_API_KEY",
    "DEFAULT_UPSTREAM_MODEL",
    "DEFAULT_MAX_TOKENS",
    "FORCE_UPSTREAM_MODEL",
    "MODEL_MAP_JSON",
    "PRETTY_LOGS",
    "LOG_PAYLOAD_MAX_CHARS",
    "HOST",
    "PORT",
    "UPSTREAM_TIMEOUT_SECONDS",
)
"""Every variable the original proxy read; nothing else is taken from the environment."""

TABLE_ROWS = (
    (
        "`UPSTREAM_BASE_URL`",
        "`upstreams.default.url`",
        "required; the full `…/chat/completions` URL, or the base URL before it:"
        " `/chat/completions` is appended unless the URL already ends so",
    ),
    (
        "`UPSTREAM_API_KEY`",
        "`upstreams.default.api_key`",
        "unset or empty: the caller's own key is forwarded upstream",
    ),
    (
        "`UPSTREAM_TIMEOUT_SECONDS`",
        "`upstreams.default.timeout`",
        "seconds the upstream may stay silent (before its headers, between chunks),"
        " not a limit on the whole request",
    ),
    (
        "`GATEWAY_API_KEY`",
        "`clients: [{name: default, key: …}]`",
        "unset: the proxy takes any key, which is refused unless HOST is a loopback address",
    ),
    (
        "`HOST`, `PORT`",
        '`listen: "tcp:PORT:interface=HOST"`',
        "defaults `127.0.0.1` and `8000`; an IPv6 host (`::1` or `[::1]`) is escaped for you",
    ),
    (
        "`FORCE_UPSTREAM_MODEL`",
        '`models: {"*": default/MODEL}`',
        "every request goes to MODEL; `MODEL_MAP_JSON` and `DEFAULT_UPSTREAM_MODEL`"
        " are then ignored",
    ),
    (
        "`MODEL_MAP_JSON`",
        "`models: {NAME: default/MODEL, …}`",
        "a JSON object, client model name → upstream model; names match exactly"
        " (`*`, `?`, `[` in them are literal)",
    ),
    (
        "`DEFAULT_UPSTREAM_MODEL`",
        '`models: {"*": default/MODEL}`',
        'the model for every other name; unset: `"*": default`, which passes the'
        " client's name through",
    ),
    (
        "`DEFAULT_MAX_TOKENS`",
        "`default_max_tokens`",
        "used when a client sends no `max_tokens`",
    ),
    ("`PRETTY_LOGS`", "`pretty`", "`1`/`true`/`yes`/`on` or `0`/`false`/`no`/`off`"),
    ("`LOG_PAYLOAD_MAX_CHARS`", "`log_payload_max_chars`", "a whole number, 0 or more"),
)
"""Each seed variable, the config key it becomes, and what to know about it."""

README_TABLE = "| variable | YAML key | notes |\n|---|---|---|\n" + "".join(
    f"| {variable} | {key} | {note} |\n" for variable, key, note in TABLE_ROWS
)
"""`TABLE_ROWS` as a markdown table, ready for the README."""

_TRUE = frozenset(("1", "true", "yes", "on"))
_FALSE = frozenset(("0", "false", "no", "off"))
_DOLLAR = "_CCPROXY_LITERAL_DOLLAR"
_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")
_INLINE_COMMENT = re.compile(r"\s+#.*$")
_DOTENV_VARIABLE = re.compile(r"\$\{([^}:]*)(?::-([^}]*))?\}")
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\", "$": "$"}


@frozen
class SeedSettings:
    """The config, and the two log settings, kept beside it rather than in it.

    They are config keys (`pretty`, `log_payload_max_chars`) only in newer configs;
    returning them here keeps seed mode independent of that.
    """

    config: Config
    pretty: bool
    logPayloadMaxChars: int | None


# -- .env ----------------------------------------------------------------------


def parseDotenv(
    text: str, environ: Mapping[str, str] | None = None, source: str = ".env"
) -> dict[str, str]:
    """The assignments of a `.env` file, following python-dotenv's rules.

    `KEY=VALUE` per line, with an optional `export ` before the key; blank lines and
    `#` comments are skipped. An unquoted value ends at ` #` (a comment) and is
    stripped. 'Single quotes' keep the text literally; "double quotes" decode `\\n`,
    `\\t`, `\\r`, `\\"`, `\\\\`. `${VAR}` and `${VAR:-default}` are expanded in unquoted
    and double-quoted values, from `environ` first, then from the file's earlier lines.
    A line that is none of these is a `ConfigError` naming the file and line: a typo
    must not silently drop a setting.
    """
    env = {} if environ is None else environ
    values: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        where = f"{source}:{number}"
        if stripped.startswith("export ") or stripped.startswith("export\t"):
            stripped = stripped[len("export") :].lstrip()
        key, equals, rest = stripped.partition("=")
        key = key.strip()
        if not equals or not _KEY.fullmatch(key):
            raise ConfigError(where, "expected KEY=VALUE")
        value, expand = _dotenvValue(rest.strip(), where)
        if expand:
            value = _DOTENV_VARIABLE.sub(
                lambda m: env.get(m.group(1), values.get(m.group(1), m.group(2) or "")), value
            )
        values[key] = value
    return values


def _dotenvValue(raw: str, where: str) -> tuple[str, bool]:
    """A value's text, and whether `${…}` in it is expanded (not in single quotes)."""
    if not raw or raw[0] not in "'\"":
        return _INLINE_COMMENT.sub("", raw).strip(), True
    quote = raw[0]
    chars = []
    i = 1
    while i < len(raw):
        char = raw[i]
        if char == "\\" and i + 1 < len(raw):
            following = raw[i + 1]
            if quote == '"' and following in _ESCAPES:
                chars.append(_ESCAPES[following])
                i += 2
                continue
            if quote == "'" and following in "'\\":
                chars.append(following)
                i += 2
                continue
        if char == quote:
            tail = raw[i + 1 :].strip()
            if tail and not tail.startswith("#"):
                raise ConfigError(where, f"unexpected text after the closing {quote}")
            return "".join(chars), quote == '"'
        chars.append(char)
        i += 1
    raise ConfigError(where, f"no closing {quote} (values cannot span lines)")


def readDotenv(path: str, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """A `.env` file's assignments; an absent file is none."""
    try:
        with open(path, encoding="utf-8-sig") as f:  # an editor's BOM is no part of a key
            text = f.read()
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) else "not UTF-8 text"
        raise ConfigError(path, f"cannot read the file ({reason})") from None
    return parseDotenv(text, environ, source=path)


def seedEnvironment(environ: Mapping[str, str], dotenv: str | None) -> dict[str, str]:
    """The seed variables in force: the `.env` file's, overridden by the environment's.

    Empty values count as unset, so an empty `GATEWAY_API_KEY=` exported by a service
    manager cannot silently turn off the key check that `.env` sets.
    """
    fromFile = readDotenv(dotenv, environ) if dotenv is not None else {}
    merged = {}
    for name in VARIABLES:
        value = (environ.get(name) or "").strip() or fromFile.get(name, "").strip()
        if value:
            merged[name] = value
    return merged


# -- variables → the config's mapping --------------------------------------------------


def _literal(value: str) -> str:
    """A value that `expandVariables` gives back unchanged: a model name is no template."""
    return value.replace("$", "${" + _DOLLAR + "}")


def _number(text: str) -> Any:
    """An int or float when the text is one; else the text, for the config to refuse."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _literalPattern(name: str) -> str:
    """A model name as a route pattern that matches only itself (glob characters escaped)."""
    return re.sub(r"([*?\[])", r"[\1]", name)


def _listen(host: str, port: str) -> str:
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError("PORT", "must be a port number, 0 to 65535")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    escaped = host.replace("\\", "\\\\").replace(":", "\\:")
    return f"tcp:{int(port)}:interface={escaped}"


def _modelMap(text: str) -> dict[str, str]:
    try:
        value = json.loads(text)
    except ValueError as e:
        raise ConfigError("MODEL_MAP_JSON", f"not valid JSON ({e})") from None
    if not isinstance(value, dict):
        raise ConfigError("MODEL_MAP_JSON", 'must be a JSON object {"client model": "model"}')
    for name, model in value.items():
        if not isinstance(model, str) or not model.strip():
            raise ConfigError(f"MODEL_MAP_JSON[{json.dumps(name)}]", "must be a non-empty string")
    return {name: model.strip() for name, model in value.items()}


def seedMapping(variables: Mapping[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    """The YAML-shaped config mapping, and which variable each key path came from."""
    if "UPSTREAM_BASE_URL" not in variables:
        raise ConfigError("UPSTREAM_BASE_URL", "is required (the upstream's chat/completions URL)")
    # Secrets and URLs go in as `${VAR}` references, expanded from the variables: the
    # mapping reads like the YAML a user would write, and a value is never a template.
    upstream: dict[str, Any] = {"url": "${UPSTREAM_BASE_URL}"}
    origins = {f"upstreams.{UPSTREAM_NAME}.url": "UPSTREAM_BASE_URL"}
    if "UPSTREAM_API_KEY" in variables:
        upstream["api_key"] = "${UPSTREAM_API_KEY}"
        origins[f"upstreams.{UPSTREAM_NAME}.api_key"] = "UPSTREAM_API_KEY"
    if "UPSTREAM_TIMEOUT_SECONDS" in variables:
        upstream["timeout"] = _number(variables["UPSTREAM_TIMEOUT_SECONDS"])
        origins[f"upstreams.{UPSTREAM_NAME}.timeout"] = "UPSTREAM_TIMEOUT_SECONDS"

    models: dict[str, str] = {}
    if "FORCE_UPSTREAM_MODEL" in variables:
        models["*"] = f"{UPSTREAM_NAME}/${{FORCE_UPSTREAM_MODEL}}"
        origins["models.*"] = "FORCE_UPSTREAM_MODEL"
    else:
        for name, model in _modelMap(variables.get("MODEL_MAP_JSON", "{}")).items():
            pattern = _literalPattern(name)
            models[pattern] = _literal(f"{UPSTREAM_NAME}/{model}")
            origins[f"models.{pattern}"] = f"MODEL_MAP_JSON[{json.dumps(name)}]"
        if "DEFAULT_UPSTREAM_MODEL" in variables:
            models["*"] = f"{UPSTREAM_NAME}/${{DEFAULT_UPSTREAM_MODEL}}"
            origins["models.*"] = "DEFAULT_UPSTREAM_MODEL"
        else:
            models["*"] = UPSTREAM_NAME

    mapping: dict[str, Any] = {
        "listen": _listen(
            variables.get("HOST", DEFAULT_HOST), variables.get("PORT", str(DEFAULT_PORT))
        ),
        "upstreams": {UPSTREAM_NAME: upstream},
        "models": models,
    }
    origins["listen"] = "HOST, PORT"
    if "GATEWAY_API_KEY" in variables:
        mapping["clients"] = [{"name": UPSTREAM_NAME, "key": "${GATEWAY_API_KEY}"}]
        origins["clients"] = "GATEWAY_API_KEY"
    if "DEFAULT_MAX_TOKENS" in variables:
        mapping["default_max_tokens"] = _number(variables["DEFAULT_MAX_TOKENS"])
        origins["default_max_tokens"] = "DEFAULT_MAX_TOKENS"
    return mapping, origins


def _variableFor(path: str, origins: Mapping[str, str]) -> str:
    """The variable a config key path came from (the longest matching prefix)."""
    for prefix in sorted(origins, key=len, reverse=True):
        if path == prefix or path.startswith(prefix + "."):
            return origins[prefix]
    return path


def _pretty(variables: Mapping[str, str]) -> bool:
    text = variables.get("PRETTY_LOGS", "0").lower()
    if text not in _TRUE | _FALSE:
        raise ConfigError("PRETTY_LOGS", "must be true or false (1/0, yes/no, on/off)")
    return text in _TRUE


def _logPayloadMaxChars(variables: Mapping[str, str]) -> int | None:
    if "LOG_PAYLOAD_MAX_CHARS" not in variables:
        return None
    return nonNegativeInt(_number(variables["LOG_PAYLOAD_MAX_CHARS"]), "LOG_PAYLOAD_MAX_CHARS")


def settingsFromEnvironment(environ: Mapping[str, str], dotenv: str | None) -> SeedSettings:
    """The seed variables (environment over `dotenv`, if that file exists) as settings.

    Every problem is a `ConfigError` whose path is the variable's name.
    """
    variables = seedEnvironment(environ, dotenv)
    mapping, origins = seedMapping(variables)
    try:
        config = Config.fromMapping(mapping, {**variables, _DOLLAR: "$"}, source="environment")
    except ConfigError as e:
        if e.path == "listen" and "GATEWAY_API_KEY" not in variables:
            # The config refuses an open port beyond loopback; say it in seed terms.
            raise ConfigError(
                "GATEWAY_API_KEY",
                f"is required when HOST ({variables.get('HOST', DEFAULT_HOST)}) is not a"
                " loopback address: without it anyone who can reach the port could use the"
                " upstream's key",
            ) from None
        raise ConfigError(_variableFor(e.path, origins), e.problem) from None
    return SeedSettings(config, _pretty(variables), _logPayloadMaxChars(variables))


def configFromEnvironment(environ: Mapping[str, str], dotenv: str | None) -> Config:
    """The config the seed variables describe (see `settingsFromEnvironment`)."""
    return settingsFromEnvironment(environ, dotenv).config


def defaultDotenv() -> str:
    """Where the original proxy read its `.env`: the working directory."""
    return os.path.join(os.getcwd(), ".env")
