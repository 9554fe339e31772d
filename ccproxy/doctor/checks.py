"""The doctor's checks: a pure core, so they can be tested as tables.

Settings, environment, config and probe results go in, `Finding`s come out, in
the order a user should fix things; `diagnose` runs them all, with the HTTP done
by the `fetch` it is given (`ccproxy.doctor.probe.fetch` from the command line).

Key values are never printed: at most their first 4 characters.
"""

from __future__ import annotations

import hmac
import json
import re
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import quote, urlsplit

from attrs import field, frozen

from ccproxy.config import Config, Upstream, keyDigest
from ccproxy.config.claudesettings import (
    API_KEY,
    AUTH_TOKEN,
    AUTO_COMPACT_WINDOW,
    BASE_URL,
    HAIKU_MODEL,
    HTTP_PROXY_VARIABLES,
    MAX_CONTEXT_TOKENS,
    MAX_OUTPUT_TOKENS,
    MODEL,
    MODEL_VARIABLES,
    NO_PROXY_VARIABLES,
    OK,
    OPUS_MODEL,
    PROBLEM,
    SMALL_FAST_MODEL,
    SONNET_MODEL,
    VARIABLES,
    WARNING,
    Finding,
    displayURL,
    mask,
    overrideFindings,
    settingsEnv,
)
from ccproxy.config.endpoints import Origin, originOf, originOfListen
from ccproxy.config.model import API_PATHS
from ccproxy.translate.dialect import MAX_TOKENS_CEILING
from ccproxy.upstream.client import upstreamHeaders

DEFAULT_MODELS = {
    OPUS_MODEL: "claude-opus-5-5",
    SONNET_MODEL: "claude-sonnet-5-5",
    HAIKU_MODEL: "claude-haiku-5-5",
}
"""The names Claude Code sends for its aliases when the variable is unset."""


@frozen
class Setting:
    """A variable as Claude Code will see it, and where it came from."""

    value: str = field(repr=False)
    source: str
    """Where Claude Code takes it from: "settings.json" or "shell"."""


DEFAULT_ORIGIN = Origin("http", "127.0.0.1", 8000)
DEFAULT_URL = DEFAULT_ORIGIN.url()
ANTHROPIC_DOMAIN = "anthropic.com"


@frozen
class Request:
    """One HTTP probe to make."""

    method: str
    url: str
    headers: Mapping[str, str] = field(factory=dict, repr=False)
    body: bytes | None = field(default=None, repr=False)


@frozen
class Probe:
    """What a probe got: a status, or (status None) why there was no HTTP answer."""

    status: int | None
    error: str = ""
    body: bytes = field(default=b"", repr=False)


Fetch = Callable[[Request], Probe]


# -- settings.json and the environment -------------------------------------------------


def effectiveEnvironment(
    settings: Mapping[str, str], environ: Mapping[str, str]
) -> dict[str, Setting]:
    """The doctor's variables as Claude Code sees them: settings.json over the shell."""
    env = {}
    for name in VARIABLES:
        if name in settings:
            env[name] = Setting(settings[name], "settings.json")
        elif name in environ:
            env[name] = Setting(environ[name], "shell")
    return env


def _value(env: Mapping[str, Setting], name: str) -> str | None:
    """A variable's value; empty counts as unset, as it does for Claude Code."""
    setting = env.get(name)
    if setting is None:
        return None
    return setting.value.strip() or None


def _where(env: Mapping[str, Setting], name: str, settingsPath: str) -> str:
    setting = env.get(name)
    if setting is not None and setting.source == "settings.json":
        return f'the "env" block of {settingsPath}'
    return "your shell (e.g. ~/.bashrc)"


# -- the base URL --------------------------------------------------------------------


def baseUrlFindings(
    env: Mapping[str, Setting], proxy: Origin | None, settingsPath: str = "settings.json"
) -> list[Finding]:
    """Is ANTHROPIC_BASE_URL set, a bare origin, and the proxy's?"""
    url = _value(env, BASE_URL)
    want = proxy.url() if proxy else DEFAULT_URL
    if url is None:
        return [
            Finding(
                PROBLEM,
                f"{BASE_URL} is not set: Claude Code talks to api.anthropic.com, not to the proxy",
                f"export {BASE_URL}={want}",
            )
        ]
    where = _where(env, BASE_URL, settingsPath)
    origin = originOf(url)
    if origin is None:
        return [
            Finding(
                PROBLEM,
                f"{BASE_URL}={displayURL(url)!r} is not an http(s) URL",
                f"set it to {want} in {where}",
            )
        ]
    if isAnthropic(origin):
        return [
            Finding(
                PROBLEM,
                f"{BASE_URL}={displayURL(url)!r} is Anthropic's own API: Claude Code is not"
                " pointed at ccproxy",
                f"set it to {want} in {where}",
            )
        ]
    findings = []
    parts = urlsplit(url.strip())
    path = parts.path
    bare = f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"
    if path not in ("", "/"):
        findings.append(
            Finding(
                PROBLEM,
                f"{BASE_URL}={displayURL(url)!r} carries the path {path!r}: Claude Code appends"
                f" /v1/messages itself, so it would call {path.rstrip('/')}/v1/messages",
                f"set it to {displayURL(bare)} (no path) in {where}",
            )
        )
    if proxy is not None and not proxy.accepts(origin):
        findings.append(
            Finding(
                PROBLEM,
                f"{BASE_URL}={displayURL(url)!r} does not point at the proxy, which is at {want}",
                f"set it to {want} in {where}",
            )
        )
    if not findings:
        source = env[BASE_URL].source
        findings.append(Finding(OK, f"{BASE_URL}={displayURL(url)!r} (from {source})"))
    return findings


def isAnthropic(origin: Origin) -> bool:
    """Whether an origin is Anthropic's (api.anthropic.com, Claude Code's default),
    which can never be the proxy."""
    host = origin.host or ""
    return host == ANTHROPIC_DOMAIN or host.endswith("." + ANTHROPIC_DOMAIN)


def proxyOrigin(env: Mapping[str, Setting], proxy: Origin | None) -> Origin:
    """Where to probe the proxy: where it listens if known, else where Claude Code
    is pointed, unless that is Anthropic's API, else the default."""
    if proxy is not None:
        return proxy
    pointed = originOf(_value(env, BASE_URL) or "")
    if pointed is not None and not isAnthropic(pointed):
        return pointed
    return DEFAULT_ORIGIN


def httpProxyFindings(env: Mapping[str, Setting]) -> list[Finding]:
    """Claude Code honours HTTP(S)_PROXY: a corporate proxy must not get the proxy's requests."""
    url = _value(env, BASE_URL)
    origin = originOf(url) if url else None
    host = urlsplit(url).hostname if url and origin and not isAnthropic(origin) else None
    via = next(((n, v) for n in HTTP_PROXY_VARIABLES if (v := _value(env, n))), None)
    if host is None or via is None:
        return []
    noProxy = next((v for n in NO_PROXY_VARIABLES if (v := _value(env, n))), "")
    if urllib.request.proxy_bypass_environment(host, {"no": noProxy}):
        return []
    return [
        Finding(
            WARNING,
            f"{via[0]}={displayURL(via[1])!r} is set and NO_PROXY does not cover {host}:"
            " Claude Code may send its requests for the proxy through that HTTP proxy",
            f"add {host} to NO_PROXY (e.g. export NO_PROXY=localhost,127.0.0.1)",
        )
    ]


# -- keys -------------------------------------------------------------------------


def callerKey(env: Mapping[str, Setting]) -> tuple[str, str] | None:
    """The variable and key the proxy will check: x-api-key first, as the proxy reads it."""
    for name in (API_KEY, AUTH_TOKEN):
        value = _value(env, name)
        if value is not None:
            return name, value
    return None


def matchingClient(config: Config, key: str) -> str | None:
    """The name of the client holding `key`, compared in constant time like the proxy."""
    digest = keyDigest(key)
    found = None
    for client in config.clients:
        if hmac.compare_digest(digest, client.digest):
            found = client.name
    return found


def keyFindings(
    env: Mapping[str, Setting],
    config: Config | None,
    settingsPath: str = "settings.json",
    keyHelper: bool = False,
) -> list[Finding]:
    """Is there a key, and will the proxy take it? `keyHelper`: settings.json's apiKeyHelper."""
    caller = callerKey(env)
    helper = Finding(
        WARNING,
        f"{settingsPath} sets apiKeyHelper: Claude Code sends the key that script prints,"
        " which the doctor does not run, so cannot check",
        f"if Claude Code gets 401, compare the script's key with the proxy's, or set {AUTH_TOKEN}"
        " instead",
    )
    if caller is None and keyHelper:
        return [helper]
    if caller is None:
        return [
            Finding(
                PROBLEM,
                f"no key: neither {AUTH_TOKEN} nor {API_KEY} is set, so Claude Code asks you to"
                " log in to Anthropic instead of using the proxy",
                f"export {AUTH_TOKEN}=<your proxy key>",
            )
        ]
    findings = [helper] if keyHelper else []
    token, apiKey = _value(env, AUTH_TOKEN), _value(env, API_KEY)
    if token and apiKey and token != apiKey:
        findings.append(
            Finding(
                WARNING,
                f"{AUTH_TOKEN} ({mask(token)}) and {API_KEY} ({mask(apiKey)}) are both set and"
                f" differ: Claude Code sends both, the proxy checks {API_KEY} (x-api-key)",
                "unset the one you do not mean",
            )
        )
    name, key = caller
    source = env[name].source
    if config is None or not config.clients:
        accepted = "" if config is None else "; the proxy takes any key (no clients: configured)"
        findings.append(Finding(OK, f"key set: {name}={mask(key)} (from {source}){accepted}"))
        return findings
    client = matchingClient(config, key)
    if client is None:
        findings.append(
            Finding(
                PROBLEM,
                f"{name} ({mask(key)}, from {source}) is none of the proxy's {len(config.clients)}"
                " client keys: the proxy will answer 401",
                f"set {name} to your key from the proxy's clients: list, in"
                f" {_where(env, name, settingsPath)}",
            )
        )
    else:
        findings.append(
            Finding(OK, f"key {name}={mask(key)} (from {source}) is client {client!r}'s")
        )
    return findings


# -- models -----------------------------------------------------------------------


@frozen
class ModelCheck:
    """A model name Claude Code will send, and which variable (or default) decides it."""

    variable: str
    name: str
    isDefault: bool


def modelChecks(env: Mapping[str, Setting]) -> list[ModelCheck]:
    """The model names to check: every variable set, and the defaults of those unset."""
    checks = []
    for variable in MODEL_VARIABLES:
        value = _value(env, variable)
        if value is not None:
            checks.append(ModelCheck(variable, value, False))
        elif variable in DEFAULT_MODELS:
            checks.append(ModelCheck(variable, DEFAULT_MODELS[variable], True))
    return checks


def configRoutes(config: Config, checks: Iterable[ModelCheck]) -> dict[str, str | None]:
    """Each checked name's route in the config (`pattern -> targets`), None if unserved."""
    served: dict[str, str | None] = {}
    for check in checks:
        route = config.router.find(check.name)
        served[check.name] = (
            None
            if route is None
            else f"{route.pattern!r} -> {', '.join(str(t) for t in route.targets)}"
        )
    return served


def modelFindings(
    env: Mapping[str, Setting], checks: Iterable[ModelCheck], served: Mapping[str, str | None]
) -> list[Finding]:
    """Findings for model names no route serves; `served` maps a name to its route, or None.

    A name missing from `served` could not be checked and gives no finding.
    """
    findings = []
    for check in checks:
        if check.name not in served:
            continue
        route = served[check.name]
        if check.isDefault:
            said = f"{check.name} (what Claude Code sends while {check.variable} is unset)"
        else:
            said = f"{check.variable}={check.name!r}"
        if route is not None:
            findings.append(Finding(OK, f"model {said} is served: {route}"))
            continue
        level = PROBLEM
        if check.isDefault and (check.variable != SONNET_MODEL or _value(env, MODEL)):
            level = WARNING  # only the main model's default breaks every session
        findings.append(
            Finding(
                level,
                f"model {said}: no route of the proxy matches it; Claude Code will get 404"
                ' ("issue with the selected model")',
                f"set {check.variable} to a model the proxy serves, or add a route for"
                f" {check.name!r} to models: in the config",
            )
        )
    return findings


# -- the limits Claude Code should know ------------------------------------------------

CLAUDE_CODE_OUTPUT = 128_000
"""The output limit Claude Code 2.1.330 asks for with the model names it knows: an
upstream cap below it ends long answers at the cap, and Claude Code, after three
retries, says its own 128000 maximum was exceeded."""
UNKNOWN_MODEL_OUTPUT = 32_000
"""What it asks for with a name it does not know (`ANTHROPIC_MODEL=gpt-4.1`)."""
COMPACT_WINDOW_MINIMUM = 100_000
"""The smallest `CLAUDE_CODE_AUTO_COMPACT_WINDOW` Claude Code takes (a smaller value
reads as this). It compacts well before the window it is given: with 100000, at
about 60000 prompt tokens (as the upstream reports them) in tests/test_claude_code.py."""
_CLAUDE_NAME = re.compile(r"claude-(?:[\d.]+-)*(?:opus|sonnet|haiku|fable)\b")
"""A name Claude Code finds in its own catalog (so it believes the catalog's window);
any other name is one it does not know."""
_BACKGROUND = frozenset((SMALL_FAST_MODEL, HAIKU_MODEL))
"""Models for Claude Code's background work: they never hold the conversation."""


@frozen
class RouteLimits:
    """What the route a model name takes can hold and write."""

    check: ModelCheck
    route: str
    outputCap: int
    """The smallest `max_tokens` cap among its targets' upstreams."""
    contextWindow: int | None


def routeLimits(config: Config, checks: Iterable[ModelCheck]) -> list[RouteLimits]:
    """The limits of each checked name's route (names no route serves are left out)."""
    found = []
    for check in checks:
        route = config.router.find(check.name)
        if route is None:
            continue
        caps = [config.upstreams[t.upstream].profile.maxTokens for t in route.targets]
        found.append(
            RouteLimits(
                check,
                route.pattern,
                min(MAX_TOKENS_CEILING if c is None else c for c in caps),
                route.contextWindow,
            )
        )
    return found


def limitFindings(env: Mapping[str, Setting], limits: Iterable[RouteLimits]) -> list[Finding]:
    """The `CLAUDE_CODE_MAX_OUTPUT_TOKENS` and compaction window that match the routes
    the user's model names take. Claude Code 2.1.330 believes a window of 1000000
    tokens for the Claude names it sends and for names it does not know, whatever
    model serves them, and asks for 128000 output tokens (32000 for names it does not
    know): a smaller window makes it compact too late (the upstream refuses, and
    ccproxy's `prompt is too long` makes it compact then), a smaller output cap ends
    long answers in its "exceeded the 128000 output token maximum"."""
    limits = list(limits)
    findings: list[Finding] = []
    short = [lim for lim in limits if lim.outputCap < _asked(lim.check.name)]
    if short:
        cap = min(lim.outputCap for lim in short)
        capped = ", ".join(repr(r) for r in sorted({lim.route for lim in short}))
        findings.append(
            _limitFinding(
                env,
                MAX_OUTPUT_TOKENS,
                cap,
                f"the upstream behind {capped} writes at most {cap} tokens an answer, and"
                f" Claude Code asks for up to {_asked(short[0].check.name)}: a longer answer"
                " ends at the cap, and Claude Code says its own maximum was exceeded",
            )
        )
    main = [
        lim
        for lim in limits
        if lim.contextWindow is not None and lim.check.variable not in _BACKGROUND
    ]
    if not main:
        return findings
    smallest = min(main, key=lambda lim: lim.contextWindow or 0)
    window = smallest.contextWindow or 0
    why = (
        f"the route {smallest.route!r} ({smallest.check.name}) holds {window} tokens, and"
        " Claude Code compacts by its own idea of the model's window (1000000 for the"
        " names it sends)"
    )
    if not _CLAUDE_NAME.match(smallest.check.name):
        # A name Claude Code does not know: this sets the window it assumes.
        findings.append(_limitFinding(env, MAX_CONTEXT_TOKENS, window, why))
    elif window < COMPACT_WINDOW_MINIMUM:
        findings.append(
            _limitFinding(
                env,
                AUTO_COMPACT_WINDOW,
                COMPACT_WINDOW_MINIMUM,
                why + f"; it compacts no earlier than {COMPACT_WINDOW_MINIMUM} tokens, so past"
                " that the upstream's refusal makes it compact (ccproxy says it as `prompt is"
                " too long`)",
            )
        )
    else:
        findings.append(_limitFinding(env, AUTO_COMPACT_WINDOW, window, why))
    return findings


def _asked(name: str) -> int:
    """The output limit Claude Code asks for with a model name."""
    return CLAUDE_CODE_OUTPUT if _CLAUDE_NAME.match(name) else UNKNOWN_MODEL_OUTPUT


def _limitFinding(env: Mapping[str, Setting], variable: str, best: int, why: str) -> Finding:
    """OK when `variable` is set at or below `best`, else a warning saying to set it."""
    value = _value(env, variable)
    if value is not None and value.isdigit() and int(value) <= best:
        return Finding(OK, f"{variable}={value}: {why}")
    said = "is not set" if value is None else f"is {value!r}"
    return Finding(WARNING, f"{variable} {said}: {why}", f"export {variable}={best}")


# -- the proxy, over HTTP ------------------------------------------------------------


def claudeHeaders(env: Mapping[str, Setting]) -> dict[str, str]:
    """The auth headers Claude Code sends: the token as Bearer, the API key as x-api-key."""
    headers = {"anthropic-version": "2023-06-01"}
    token, apiKey = _value(env, AUTH_TOKEN), _value(env, API_KEY)
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if apiKey:
        headers["x-api-key"] = apiKey
    return headers


def proxyRootFindings(url: str, root: Probe) -> list[Finding]:
    """Does anything answer at the proxy's URL, and is it ccproxy?"""
    if root.status is None:
        return [
            Finding(
                PROBLEM,
                f"the proxy is not reachable at {url}: {root.error}",
                "start it (twistd -n ccproxy --config …), or give its URL with --url",
            )
        ]
    if root.status != 200:
        return [
            Finding(
                PROBLEM,
                f"GET {url}/ answered {root.status}, not 200: is that really ccproxy?",
                "check the port, or give the proxy's URL with --url",
            )
        ]
    try:
        service = json.loads(root.body).get("service")
    except (ValueError, AttributeError):
        service = None
    if service != "ccproxy":
        return [
            Finding(
                WARNING,
                f"{url} answers, but not as ccproxy does: another server may hold the port",
                "check the port, or give the proxy's URL with --url",
            )
        ]
    return [Finding(OK, f"the proxy answers at {url}")]


def proxyKeyFindings(url: str, models: Probe, variable: str | None = AUTH_TOKEN) -> list[Finding]:
    """What GET /v1/models with the user's own key (from `variable`) says about that key."""
    if models.status == 401:
        said = "rejects your key" if variable else "wants a key, and you have none"
        return [
            Finding(
                PROBLEM,
                f"the proxy at {url} {said} (401 on /v1/models)",
                f"set {variable or AUTH_TOKEN} to the key the proxy's operator gave you",
            )
        ]
    if models.status == 200:
        return [Finding(OK, "the proxy accepts your key (GET /v1/models: 200)")]
    said = models.error if models.status is None else f"answered {models.status}"
    return [Finding(WARNING, f"GET {url}/v1/models {said}", "")]


def servedByProxy(probes: Mapping[str, Probe]) -> dict[str, str | None]:
    """Model names checked through GET /v1/models/{name}: 200 served, 404 not."""
    served: dict[str, str | None] = {}
    for name, probe in probes.items():
        if probe.status == 200:
            served[name] = "the proxy has a route for it"
        elif probe.status == 404:
            served[name] = None
    return served


# -- upstreams -------------------------------------------------------------------


def modelsURL(upstream: Upstream) -> str:
    """The gateway's GET /models URL: its endpoint URL with the API's path replaced."""
    base, question, query = upstream.url.partition("?")
    path = API_PATHS[upstream.api]
    if base.endswith(path):
        base = base[: -len(path)]
    return f"{base}/models{question}{query}"


def _headers(upstream: Upstream, key: str | None) -> dict[str, str]:
    """What the daemon sends (`upstreamHeaders`: Azure's `api-key` included), asking
    for JSON; the configured headers still win."""
    return {"Accept": "application/json", **upstreamHeaders(upstream, key)}


def upstreamModelsRequest(upstream: Upstream, key: str | None) -> Request:
    return Request("GET", modelsURL(upstream), _headers(upstream, key))


def upstreamChatRequest(upstream: Upstream, key: str | None, model: str) -> Request:
    """The smallest real request: one user word, one output token (16 for the
    Responses API, its least)."""
    if upstream.api == "responses":
        body: dict[str, Any] = {
            "model": model,
            "input": "Say ok.",
            "max_output_tokens": 16,
            "store": False,
        }
    else:
        limit = "max_tokens" if upstream.api == "messages" else upstream.profile.maxTokensParam
        body = {"model": model, "messages": [{"role": "user", "content": "Say ok."}], limit: 1}
    return Request("POST", upstream.url, _headers(upstream, key), json.dumps(body).encode())


def probeModel(config: Config, upstream: str, names: Iterable[str]) -> str | None:
    """A model name the upstream should know: from a client name routed to it, else a route."""
    for name in names:
        route = config.router.find(name)
        if route is not None and route.targets[0].upstream == upstream:
            return route.targets[0].modelFor(name)
    for route in config.router.routes:
        for target in route.targets:
            if target.upstream == upstream and (target.model or not route.isGlob):
                return target.modelFor(route.pattern)
    return None


def _keyOrigin(upstream: Upstream) -> str:
    if upstream.apiKey:
        return f"its api_key from the config ({mask(upstream.apiKey)})"
    return "your key, which the proxy forwards since the upstream has no api_key"


def upstreamFindings(
    upstream: Upstream, models: Probe, chat: Probe | None = None, model: str | None = None
) -> list[Finding]:
    """Reachability and key of one upstream, from GET /models and the optional chat probe."""
    where = f"upstream {upstream.name!r} ({displayURL(upstream.url)})"
    if models.status is None:
        return [
            Finding(
                PROBLEM,
                f"{where} is unreachable from here: {models.error}",
                f"check upstreams.{upstream.name}.url, DNS and firewalls (the daemon's host may"
                " see other networks than this one)",
            )
        ]
    findings = [_upstreamStatus(upstream, where, "GET /models", models, isChat=False)]
    if chat is not None:
        findings.append(_upstreamStatus(upstream, where, f"chat with {model!r}", chat, isChat=True))
    return findings


def _upstreamStatus(
    upstream: Upstream, where: str, what: str, probe: Probe, isChat: bool
) -> Finding:
    status = probe.status
    if status is None:
        return Finding(PROBLEM, f"{where}: {what} failed: {probe.error}", "")
    if 200 <= status < 300:
        return Finding(OK, f"{where} is reachable and accepts {_keyOrigin(upstream)} ({what})")
    if status in (401, 403):
        return Finding(
            PROBLEM,
            f"{where} rejects {_keyOrigin(upstream)} ({what}: {status})",
            f"fix upstreams.{upstream.name}.api_key"
            if upstream.apiKey
            else f"use a key the gateway accepts, or set upstreams.{upstream.name}.api_key",
        )
    if status == 404 and not isChat:
        return Finding(
            WARNING,
            f"{where} has no /models (404; many gateways lack it): reachable, key not checked",
            "run with --probe-chat to check the key with one 1-token request",
        )
    if status == 404:
        return Finding(
            PROBLEM,
            f"{where}: {what} answered 404: wrong url, or the model is unknown there",
            f"check upstreams.{upstream.name}.url and the models: routes to it",
        )
    return Finding(WARNING, f"{where}: {what} answered {status}", "")


# -- the whole diagnosis -------------------------------------------------------------


def diagnose(
    settingsDocument: Any,
    environ: Mapping[str, str],
    config: Config | None,
    proxyURL: str | None,
    fetch: Fetch,
    probeChat: bool = False,
    settingsPath: str = "settings.json",
) -> list[Finding]:
    """Every check, in the order a user should fix things; `fetch` does the HTTP."""
    settings, findings = settingsEnv(settingsDocument, settingsPath)
    findings += overrideFindings(settings, environ, settingsPath)
    env = effectiveEnvironment(settings, environ)

    proxy: Origin | None = None
    if proxyURL is not None:
        proxy = originOf(proxyURL)
    elif config is not None:
        proxy = originOfListen(config.listen)
        if proxy is None:
            findings.append(
                Finding(
                    WARNING,
                    f"cannot tell the proxy's URL from listen {config.listen!r}",
                    "give it with --url",
                )
            )
    findings += baseUrlFindings(env, proxy, settingsPath)
    target = proxyOrigin(env, proxy)
    findings += httpProxyFindings(env)
    keyHelper = isinstance(settingsDocument, dict) and bool(settingsDocument.get("apiKeyHelper"))
    findings += keyFindings(env, config, settingsPath, keyHelper)

    checks = modelChecks(env)
    if config is not None:
        findings += modelFindings(env, checks, configRoutes(config, checks))
        findings += limitFindings(env, routeLimits(config, checks))

    url = target.url()
    root = fetch(Request("GET", url + "/"))
    findings += proxyRootFindings(url, root)
    if root.status == 200:
        headers = claudeHeaders(env)
        models = fetch(Request("GET", url + "/v1/models", headers))
        caller = callerKey(env)
        findings += proxyKeyFindings(url, models, caller[0] if caller else None)
        if config is None and models.status == 200:
            probes = {
                c.name: fetch(Request("GET", f"{url}/v1/models/{quote(c.name, safe='')}", headers))
                for c in checks
            }
            findings += modelFindings(env, checks, servedByProxy(probes))

    if config is not None:
        caller = callerKey(env)
        key = caller[1] if caller else None
        for upstream in config.upstreams.values():
            models = fetch(upstreamModelsRequest(upstream, key))
            chat = model = None
            if probeChat and models.status not in (None, 401, 403):  # else nothing to learn
                model = probeModel(config, upstream.name, (c.name for c in checks))
                if model is None:
                    findings.append(
                        Finding(WARNING, f"no model known for upstream {upstream.name!r} to try")
                    )
                else:
                    chat = fetch(upstreamChatRequest(upstream, key, model))
            findings += upstreamFindings(upstream, models, chat, model)
    return findings
