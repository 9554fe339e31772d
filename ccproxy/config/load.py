"""Reading the YAML configuration: parsed, expanded and validated into frozen values.

Every problem is a `ConfigError` naming the key path (`upstreams.corp.url: not an
http(s) URL`), so a bad file stops the daemon with one clear line, at start-up or on
reload, never with a traceback.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import unquote, urlsplit

import yaml
from attrs import evolve, fields

from ccproxy.config.endpoints import endpoint, listenIsLocal, reusePortProblem, tcpAddress
from ccproxy.config.ledger import defaultLedger, parseLedger
from ccproxy.config.model import (
    API_PATHS,
    DEFAULT_BODY_MEMORY_BYTES,
    DEFAULT_BODY_TIMEOUT,
    DEFAULT_HEADER_TIMEOUT,
    DEFAULT_LISTEN,
    DEFAULT_LOG_PAYLOAD_MAX_CHARS,
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_CONNECTIONS_PER_ADDRESS,
    DEFAULT_MAX_DURATION,
    DEFAULT_MAX_LINE_BYTES,
    DEFAULT_MAX_RESPONSE_BYTES,
    DEFAULT_MAX_TOKENS,
    DEFAULT_PING_INTERVAL,
    DEFAULT_SHUTDOWN_GRACE,
    DEFAULT_TIMEOUT,
    Budget,
    Client,
    Config,
    LogSettings,
    RedisAddress,
    Upstream,
)
from ccproxy.config.policy import parsePolicy
from ccproxy.config.prices import parsePrices
from ccproxy.config.profile import parseProfile
from ccproxy.config.routing import ModelRouter, Route, Rule, Target, When
from ccproxy.config.schema import (
    ConfigError,
    Node,
    boolean,
    expandVariables,
    headerMap,
    join,
    nonNegativeNumber,
    positiveAmount,
    positiveInt,
    positiveNumber,
    string,
)
from ccproxy.config.signin import (
    LoginSettings,
    TelemetrySettings,
    parseLogin,
    parseSettings,
    parseTelemetry,
)

MAX_WORKERS = 256
"""More processes than this is a typo, not a machine."""

_NAME = re.compile(r"[A-Za-z0-9_-]+")


def fromPath(path: str, environ: Mapping[str, str] | None = None) -> Config:
    """Read and validate a YAML file."""
    try:
        with open(path, "rb") as f:
            text = f.read()
    except OSError as e:
        raise ConfigError("", f"cannot read the file ({e.strerror})") from None
    return fromYAML(text, environ, source=path)


def fromYAML(
    text: bytes | str, environ: Mapping[str, str] | None = None, source: str | None = None
) -> Config:
    """Parse and validate YAML text."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError("", f"not valid YAML: {where}{problem}") from None
    return fromMapping(data, environ, source=source)


def fromMapping(
    data: Any, environ: Mapping[str, str] | None = None, source: str | None = None
) -> Config:
    """Validate an already-parsed document (`${VAR}` still unexpanded)."""
    env = os.environ if environ is None else environ
    config = _parseConfig(Node(expandVariables(data, env, ""), ""), source)
    checkOpenListen(config)
    return evolve(config, literalSecrets=tuple(literalSecrets(data)))


def apiURL(value: Any, path: str, api: str = "chat") -> str:
    """The full endpoint URL of an upstream speaking `api`: its path (`API_PATHS`)
    appended to the configured base, unless the URL ends with it already."""
    url = string(value, path).strip()
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(path, "not an http(s) URL")
    if "@" in parts.netloc:
        # Twisted's Agent does not use userinfo: every request would fail (a 500).
        # The message never repeats the URL, which holds the secret.
        raise ConfigError(
            path, "holds credentials (user:pass@): put credentials in api_key or headers"
        )
    base = url.split("?", 1)[0].rstrip("/")
    query = url[len(url.split("?", 1)[0]) :]
    if not base.endswith(API_PATHS[api]):
        base += API_PATHS[api]
    return base + query


def _api(value: Any, path: str) -> str:
    text = string(value, path)
    if text not in API_PATHS:
        raise ConfigError(path, f"must be one of {', '.join(API_PATHS)}")
    return text


def _parseUpstream(name: str, node: Node) -> Upstream:
    if not _NAME.fullmatch(name):
        raise ConfigError(node.path, "upstream names may hold only A-Z a-z 0-9 _ -")
    api = node.get("api", _api, "chat")
    upstream = Upstream(
        name=name,
        url=node.require("url", lambda value, path: apiURL(value, path, api)),
        apiKey=node.get("api_key", string, "") or None,
        timeout=node.get("timeout", positiveNumber, DEFAULT_TIMEOUT),
        headers=node.get("headers", headerMap, {}),
        profile=parseProfile(node),
        policy=parsePolicy(node),
        countTokens=node.get("count_tokens", boolean, True),
        api=api,
    )
    node.finish()
    return upstream


def _parseClients(value: Any, path: str) -> tuple[Client, ...]:
    if not isinstance(value, list):
        raise ConfigError(path, "must be a list of {name, key}")
    clients: list[Client] = []
    for i, item in enumerate(value):
        node = Node(item, join(path, str(i)))
        client = Client(
            name=node.require("name", string),
            key=node.require("key", string),
            admin=node.get("admin", boolean, False),
            maxConcurrent=node.get("max_concurrent", positiveInt, None),
            requestsPerMinute=node.get("requests_per_minute", positiveInt, None),
            budget=node.get("budget", _parseBudget, None),
            models=node.get("models", _modelGlobs, None),
            unixUser=node.get("unix_user", string, None),
            managedSettings=node.get("managed_settings", parseSettings, None),
        )
        node.finish()
        if not client.key:
            raise ConfigError(node.at("key"), "is empty (is its environment variable set?)")
        if any(c.name == client.name for c in clients):
            raise ConfigError(node.at("name"), f"client {client.name!r} is listed twice")
        if any(c.key == client.key for c in clients):
            raise ConfigError(node.at("key"), "two clients share the same key")
        if client.unixUser is not None and any(c.unixUser == client.unixUser for c in clients):
            raise ConfigError(
                node.at("unix_user"), f"Unix user {client.unixUser!r} is named by two clients"
            )
        clients.append(client)
    return tuple(clients)


_BUDGET_KEYS: tuple[tuple[str, str, Callable[[Any, str], Any]], ...] = (
    ("tokens_per_day", "tokensPerDay", positiveInt),
    ("tokens_per_month", "tokensPerMonth", positiveInt),
    ("cost_per_day", "costPerDay", positiveAmount),
    ("cost_per_month", "costPerMonth", positiveAmount),
)


def _parseBudget(value: Any, path: str) -> Budget:
    node = Node(value, path)
    budget = Budget(**{name: node.get(key, kind, None) for key, name, kind in _BUDGET_KEYS})
    node.finish()
    if not budget.caps:
        raise ConfigError(
            path, "names no limit: tokens_per_day, tokens_per_month, cost_per_day or cost_per_month"
        )
    return budget


def _modelGlobs(value: Any, path: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise ConfigError(path, 'must be a list of model names or globs ("claude-haiku-*")')
    globs = []
    for i, item in enumerate(value):
        if not isinstance(item, str) or not item:
            raise ConfigError(join(path, str(i)), "must be a model name or glob")
        globs.append(item)
    return tuple(globs)


def _parseState(value: Any, path: str) -> RedisAddress | None:
    node = Node(value, path)
    address = node.get("redis", _redisAddress, None)
    node.finish()
    return address


def _redisAddress(value: Any, path: str) -> RedisAddress:
    """`redis://[[user]:password@]host[:port][/db]`; the message never repeats the
    URL, which may hold the password."""
    url = string(value, path).strip()
    try:
        parts = urlsplit(url)
        port = parts.port or 6379
    except ValueError:
        raise ConfigError(path, "not a redis:// URL (a bad port?)") from None
    if parts.scheme != "redis" or not parts.hostname:
        raise ConfigError(path, "must be redis://HOST[:PORT][/DB]")
    db = parts.path.strip("/") or "0"
    if not db.isdigit():
        raise ConfigError(path, "the database after the slash must be a number")
    if parts.query or parts.fragment:
        raise ConfigError(path, "takes no query string")
    return RedisAddress(
        host=parts.hostname,
        port=port,
        db=int(db),
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password is not None else None,
    )


def _parseRoutes(node: Node, upstreams: Mapping[str, Upstream]) -> tuple[Route, ...]:
    return tuple(
        Route(pattern, _parseTargets(node.value[pattern], node.at(pattern), upstreams))
        for pattern in node.value
    )


def _parseTargets(raw: Any, path: str, upstreams: Mapping[str, Upstream]) -> tuple[Target, ...]:
    """A target, or a list of them (failover), each on a known upstream."""
    items = raw if isinstance(raw, list) else [raw]
    if not items:
        raise ConfigError(path, "the list of targets is empty")
    targets = []
    for i, item in enumerate(items):
        where = join(path, str(i)) if isinstance(raw, list) else path
        target = _parseTarget(item, where)
        if target.upstream not in upstreams:
            known = ", ".join(sorted(upstreams))
            raise ConfigError(where, f"unknown upstream {target.upstream!r} (known: {known})")
        if target.model == "":
            raise ConfigError(where, "the model after the slash is empty")
        targets.append(target)
    return tuple(targets)


def _parseRules(value: Any, path: str, upstreams: Mapping[str, Upstream]) -> tuple[Rule, ...]:
    """`routes:`, a list of `{name?, when, target}` tried in file order."""
    if not isinstance(value, list):
        raise ConfigError(path, "must be a list of {when: {…}, target: …}")
    rules: list[Rule] = []
    for i, item in enumerate(value):
        node = Node(item, join(path, str(i)))
        name = node.get("name", _ruleName, None)
        when = node.require("when", _parseWhen)
        targets = _parseTargets(node.require("target", _present), node.at("target"), upstreams)
        node.finish()
        label = name or node.path
        if any(r.label == label for r in rules):
            raise ConfigError(node.at("name"), f"two rules are named {label!r}")
        rules.append(Rule(when, Route(label, targets)))
    return tuple(rules)


def _present(value: Any, path: str) -> Any:
    return value


def _ruleName(value: Any, path: str) -> str:
    name = string(value, path)
    if not _NAME.fullmatch(name):
        raise ConfigError(path, "rule names may hold only A-Z a-z 0-9 _ -")
    return name


def _parseWhen(value: Any, path: str) -> When:
    node = Node(value, path)
    when = When(**{name: node.get(key, kind, None) for key, name, kind in _WHEN_KEYS})
    node.finish()
    if when == When():
        names = ", ".join(key for key, _, _ in _WHEN_KEYS)
        raise ConfigError(path, f"names no condition (one of {names})")
    return when


def _globList(value: Any, path: str) -> tuple[str, ...]:
    """A name or glob, or a non-empty list of them."""
    items = value if isinstance(value, list) else [value]
    if not items:
        raise ConfigError(path, "the list is empty")
    found = []
    for i, item in enumerate(items):
        if not isinstance(item, str) or not item:
            where = join(path, str(i)) if isinstance(value, list) else path
            raise ConfigError(where, "must be a name or a glob (a string)")
        found.append(item)
    return tuple(found)


_WHEN_KEYS: tuple[tuple[str, str, Callable[[Any, str], Any]], ...] = (
    ("model", "model", _globList),
    ("images", "images", boolean),
    ("input_tokens_over", "inputTokensOver", positiveInt),
    ("thinking", "thinking", boolean),
    ("tools", "tools", _globList),
    ("background", "background", boolean),
    ("client", "client", _globList),
)
"""`routes[].when`'s conditions: key, `When` field, reader."""


def _parseTarget(item: Any, path: str) -> Target:
    """`UPSTREAM[/MODEL]`, or `{target: UPSTREAM[/MODEL], context_window: TOKENS}`."""
    contextWindow = None
    if isinstance(item, dict) and "target" in item:
        node = Node(item, path)
        text = node.require("target", string)
        contextWindow = node.get("context_window", positiveInt, None)
        node.finish()
        path = node.at("target")
    else:
        text = item
    if not isinstance(text, str) or not text:
        raise ConfigError(
            path,
            'must be "UPSTREAM", "UPSTREAM/MODEL" or a list of those (failover), each'
            " also as {target: …, context_window: TOKENS}",
        )
    return Target.parse(text, contextWindow)


def _managedSettings(value: Any, path: str) -> Any:
    """`managed_settings:` a mapping, or off (no base: only clients' own)."""
    if value is False or (isinstance(value, str) and value.strip().lower() == "off"):
        return None
    return parseSettings(value, path)


def _metricsAuth(value: Any, path: str) -> str:
    text = string(value, path)
    if text not in ("admin", "none"):
        raise ConfigError(path, "must be admin or none")
    return text


def _parseLog(value: Any, path: str) -> LogSettings:
    node = Node(value, path)
    # The defaults written on LogSettings: read from its fields, because on a slotted
    # attrs class `LogSettings.keep` is the slot itself, not the default.
    default = fields(LogSettings)
    settings = LogSettings(
        file=node.get("file", string, default.file.default),
        maxBytes=node.get("max_bytes", positiveInt, default.maxBytes.default),
        keep=node.get("keep", positiveInt, default.keep.default),
        format=node.get("format", string, default.format.default),
    )
    if settings.format not in ("text", "json"):
        raise ConfigError(node.at("format"), "must be text or json")
    if settings.format == "json" and settings.file is None:
        raise ConfigError(node.at("format"), "json needs log.file (twistd's own log is text)")
    node.finish()
    if settings.file is not None:
        # Absolute now: twistd changes directory when it daemonizes.
        settings = evolve(settings, file=os.path.abspath(settings.file))
    return settings


def checkOpenListen(config: Config) -> None:
    """Refuse to serve the whole network without keys unless told to (`allow_open`)."""
    if not config.clients and not config.allowOpen and not listenIsLocal(config.listen):
        raise ConfigError(
            "listen",
            f"{config.listen!r} listens beyond loopback while no clients are set: "
            "anyone who can reach it could use the gateways' keys. Set clients, or "
            "allow_open: true if that is intended",
        )


def literalSecrets(data: Any) -> list[str]:
    """Key paths whose secret is written in the file itself, not `${VAR}`."""
    found = []
    if not isinstance(data, dict):
        return found
    upstreams = data.get("upstreams")
    if isinstance(upstreams, dict):
        for name, upstream in upstreams.items():
            if isinstance(upstream, dict) and _isLiteral(upstream.get("api_key")):
                found.append(f"upstreams.{name}.api_key")
    clients = data.get("clients")
    if isinstance(clients, list):
        for i, client in enumerate(clients):
            if isinstance(client, dict) and _isLiteral(client.get("key")):
                found.append(f"clients.{i}.key")
    if _isLiteral(data.get("metrics_token")):
        found.append("metrics_token")
    state = data.get("state")
    if isinstance(state, dict):
        url = state.get("redis")
        if _isLiteral(url) and "@" in str(url):  # a password written in the URL
            found.append("state.redis")
    ledger = data.get("ledger")
    if isinstance(ledger, str) and "${" not in ledger and urlsplit(ledger.strip()).password:
        found.append("ledger")
    return found


def _isLiteral(value: Any) -> bool:
    return isinstance(value, str | int) and bool(str(value)) and "${" not in str(value)


def _parseConfig(root: Node, source: str | None) -> Config:
    listen = root.get("listen", endpoint, DEFAULT_LISTEN)
    clients = root.get("clients", _parseClients, ())
    upstreamsNode = root.node("upstreams")
    if not upstreamsNode.value:
        raise ConfigError("upstreams", "at least one upstream is required")
    upstreams = {
        name: _parseUpstream(name, upstreamsNode.node(name)) for name in upstreamsNode.value
    }
    modelsNode = root.node("models")
    if not modelsNode.value:
        raise ConfigError("models", 'at least one route is required (e.g. "*": UPSTREAM)')
    routes = _parseRoutes(modelsNode, upstreams)
    rules = root.get("routes", lambda value, path: _parseRules(value, path, upstreams), ())
    config = Config(
        upstreams=upstreams,
        router=ModelRouter.fromRoutes(routes, rules),
        listen=listen,
        clients=clients,
        defaultMaxTokens=root.get("default_max_tokens", positiveInt, DEFAULT_MAX_TOKENS),
        maxBodyBytes=root.get("max_body_bytes", positiveInt, DEFAULT_MAX_BODY_BYTES),
        bodyMemoryBytes=root.get("body_memory_bytes", positiveInt, DEFAULT_BODY_MEMORY_BYTES),
        headerTimeout=root.get("header_timeout", positiveNumber, DEFAULT_HEADER_TIMEOUT),
        bodyTimeout=root.get("body_timeout", positiveNumber, DEFAULT_BODY_TIMEOUT),
        maxConnections=root.get("max_connections", positiveInt, None),
        maxConnectionsPerAddress=root.get(
            "max_connections_per_address", positiveInt, DEFAULT_MAX_CONNECTIONS_PER_ADDRESS
        ),
        pingInterval=root.get("ping_interval", positiveNumber, DEFAULT_PING_INTERVAL),
        # 0 turns it off (None); absent or null, the default hour.
        maxDuration=root.get("max_duration", nonNegativeNumber, DEFAULT_MAX_DURATION) or None,
        shutdownGrace=root.get("shutdown_grace", nonNegativeNumber, DEFAULT_SHUTDOWN_GRACE),
        maxResponseBytes=root.get("max_response_bytes", positiveInt, DEFAULT_MAX_RESPONSE_BYTES),
        maxLineBytes=root.get("max_line_bytes", positiveInt, DEFAULT_MAX_LINE_BYTES),
        log=root.get("log", _parseLog, LogSettings()),
        logPayloads=root.get("log_payloads", boolean, False),
        logPayloadMaxChars=root.get(
            "log_payload_max_chars", positiveInt, DEFAULT_LOG_PAYLOAD_MAX_CHARS
        ),
        pretty=root.get("pretty", boolean, False),
        allowOpen=root.get("allow_open", boolean, False),
        reusePort=root.get("reuse_port", boolean, False),
        workers=root.get("workers", _workers, 1),
        metricsAuth=root.get("metrics_auth", _metricsAuth, "admin"),
        metricsToken=root.get("metrics_token", string, "") or None,
        prices=parsePrices(root),
        redis=root.get("state", _parseState, None),
        ledger=root.get("ledger", parseLedger, defaultLedger()),
        login=root.get("login", parseLogin, LoginSettings()),
        managedSettings=root.get("managed_settings", _managedSettings, None),
        managedDefault="managed_settings" not in root.value,
        telemetry=root.get("telemetry", parseTelemetry, TelemetrySettings()),
        source=source,
    )
    root.finish()
    for i, client in enumerate(config.clients):
        if client.budget is not None and not config.prices.table:
            if client.budget.costPerDay is not None or client.budget.costPerMonth is not None:
                raise ConfigError(
                    f"clients.{i}.budget",
                    "a cost budget needs prices: (every model would cost 0)",
                )
    names = {client.name for client in config.clients}
    for i, rule in enumerate(config.router.rules):
        for name in rule.when.client or ():
            if name not in names:
                known = ", ".join(sorted(names)) or "none: clients is not set"
                raise ConfigError(
                    f"routes.{i}.when.client", f"unknown client {name!r} (known: {known})"
                )
    if config.bodyMemoryBytes < config.maxBodyBytes:
        raise ConfigError(
            "body_memory_bytes",
            f"is smaller than max_body_bytes ({config.maxBodyBytes}): no body could be read",
        )
    if config.metricsToken is not None and config.metricsAuth == "none":
        raise ConfigError("metrics_token", "is never asked for: metrics_auth is none")
    if config.reusePort:
        problem = reusePortProblem(config.listen)
        if problem:
            raise ConfigError("reuse_port", problem)
    checkWorkersListen(config)
    return config


def checkWorkersListen(config: Config) -> None:
    """Workers share a TCP port the master binds: `listen` must be a plain `tcp:`."""
    if config.workers > 1 and tcpAddress(config.listen) is None:
        raise ConfigError(
            "workers",
            f"more than one needs a plain tcp listen such as "
            f'"tcp:8000:interface=127.0.0.1", not {config.listen!r}',
        )


def _workers(value: Any, path: str) -> int:
    """`auto`: one per core this process may run on; else a whole number."""
    if value == "auto":
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except AttributeError:  # not Linux
            return max(1, os.cpu_count() or 1)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_WORKERS:
        raise ConfigError(path, f'must be "auto" or a whole number from 1 to {MAX_WORKERS}')
    return value
