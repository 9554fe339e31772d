"""The configuration as frozen values: what every other layer reads.

A request keeps the `Config` it began with; a reload builds a new one
(`ccproxy.config.load`) and swaps it in.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from fnmatch import fnmatchcase
from typing import Any

from attrs import field, frozen

from ccproxy.config.ledger import LedgerURL, defaultLedger
from ccproxy.config.periods import DAY, MONTH
from ccproxy.config.policy import Policy
from ccproxy.config.prices import Prices
from ccproxy.config.routing import ModelRouter
from ccproxy.config.signin import LoginSettings, TelemetrySettings
from ccproxy.errors import Redactor, headerSecrets
from ccproxy.translate.dialect import Profile

DEFAULT_LISTEN = "tcp:8000:interface=127.0.0.1"
DEFAULT_TIMEOUT = 600.0
DEFAULT_MAX_TOKENS = 32000
DEFAULT_MAX_BODY_BYTES = 32 * 1024 * 1024
DEFAULT_BODY_MEMORY_BYTES = 256 * 1024 * 1024
DEFAULT_HEADER_TIMEOUT = 20.0
DEFAULT_BODY_TIMEOUT = 60.0
DEFAULT_MAX_CONNECTIONS_PER_ADDRESS = 1024
DEFAULT_PING_INTERVAL = 10.0
DEFAULT_MAX_RESPONSE_BYTES = 64 * 1024 * 1024
# A single SSE line may hold a whole tool call (a file written by the Write tool).
DEFAULT_MAX_LINE_BYTES = 16 * 1024 * 1024
DEFAULT_SHUTDOWN_GRACE = 30.0
# Generous: Claude Code's longest turns take minutes. It is there for the gateway
# that trickles a token just often enough to beat `timeout`, for ever.
DEFAULT_MAX_DURATION = 3600.0
DEFAULT_LOG_PAYLOAD_MAX_CHARS = 1400
COMPLETIONS_PATH = "/chat/completions"
"""What a `chat` upstream's URL ends with (before its query string)."""
API_PATHS: Mapping[str, str] = {
    "chat": COMPLETIONS_PATH,
    "messages": "/messages",
    "responses": "/responses",
}
"""`upstreams.NAME.api` -> the path its requests go to under the configured base
URL (`ccproxy.config.load.apiURL` builds the URL; a new API is one entry here)."""
COUNT_TOKENS_PATH = "/count_tokens"
"""After a `messages` upstream's URL: its `count_tokens` endpoint."""


@frozen
class Cap:
    """One budget of a client: at most `tokens` or `cost` (either may be None) in
    each UTC `period` (`day` or `month`)."""

    period: str
    tokens: int | None = None
    """input + output + cache-write tokens."""
    cost: float | None = None
    """In the config's `currency`, from `prices:` on the upstream model."""


@frozen
class Budget:
    """`clients[].budget`: what a client may use per UTC day and month."""

    tokensPerDay: int | None = None
    tokensPerMonth: int | None = None
    costPerDay: float | None = None
    costPerMonth: float | None = None

    @property
    def caps(self) -> tuple[Cap, ...]:
        """One `Cap` per period that has a limit, the day first."""
        caps = []
        for period, tokens, cost in (
            (DAY, self.tokensPerDay, self.costPerDay),
            (MONTH, self.tokensPerMonth, self.costPerMonth),
        ):
            if tokens is not None or cost is not None:
                caps.append(Cap(period, tokens, cost))
        return tuple(caps)


@frozen
class Client:
    """A caller allowed in when `clients` is set; logs show the name, never the key."""

    name: str
    key: str = field(repr=False)
    admin: bool = False
    """May read `/v1/usage`."""
    maxConcurrent: int | None = None
    requestsPerMinute: int | None = None
    budget: Budget | None = None
    models: tuple[str, ...] | None = None
    """Globs of the model names it may ask for (None: every route)."""
    unixUser: str | None = None
    """The Unix account that signs in as this client with `python -m ccproxy approve`."""
    managedSettings: Mapping[str, Any] | None = field(default=None, eq=False)
    """Its own managed settings, merged over `managed_settings:`."""
    digest: bytes = field(init=False, repr=False, eq=False)

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "digest", keyDigest(self.key))

    def mayUse(self, model: str) -> bool:
        """Whether `model`, as the client asks for it, is one of its `models`."""
        return self.models is None or any(fnmatchcase(model, glob) for glob in self.models)


def keyDigest(key: str) -> bytes:
    """Keys are compared as digests, so the comparison time says nothing of their length."""
    return hashlib.sha256(key.encode()).digest()


@frozen
class Upstream:
    """One gateway, speaking the API `api` names."""

    name: str
    url: str
    """The full URL of its endpoint (it ends with its API's path in `API_PATHS`)."""
    apiKey: str | None = field(repr=False)
    """None: the caller's own key is forwarded."""
    timeout: float
    headers: Mapping[str, str] = field(factory=dict, repr=False)
    profile: Profile = field(factory=Profile)
    policy: Policy = field(factory=Policy)
    countTokens: bool = True
    """`chat`, `responses`: `count_tokens` for a route it serves first is estimated here; False:
    it is 501 `not_supported`, and Claude Code counts (estimates) on its own.
    `messages`: forwarded to the upstream's own endpoint; False: estimated here."""
    api: str = "chat"
    """`chat` (OpenAI chat/completions: translated), `responses` (OpenAI's
    Responses API: translated) or `messages` (Anthropic Messages: passed
    through)."""

    @property
    def countTokensURL(self) -> str:
        """A `messages` upstream's `count_tokens` URL (its query string kept)."""
        base, question, query = self.url.partition("?")
        return f"{base}{COUNT_TOKENS_PATH}{question}{query}"

    def secrets(self) -> Iterator[str | None]:
        """Its key and the secrets in its headers (see `headerSecrets`)."""
        yield self.apiKey
        for name, value in self.headers.items():
            yield from headerSecrets(name, value)


@frozen
class RedisAddress:
    """`state.redis`: where the state shared by several ccproxy processes lives."""

    host: str
    port: int = 6379
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)


@frozen
class LogSettings:
    """Where the daemon logs, and how its files rotate."""

    file: str | None = None
    """None: wherever twistd logs (its --logfile, twistd.log by default)."""
    maxBytes: int = 10 * 1024 * 1024
    keep: int = 5
    format: str = "text"


@frozen
class Config:
    """The whole validated configuration."""

    upstreams: Mapping[str, Upstream]
    router: ModelRouter
    listen: str = DEFAULT_LISTEN
    clients: tuple[Client, ...] = ()
    defaultMaxTokens: int = DEFAULT_MAX_TOKENS
    maxBodyBytes: int = DEFAULT_MAX_BODY_BYTES
    bodyMemoryBytes: int = DEFAULT_BODY_MEMORY_BYTES
    """What all request bodies being read may hold together; past it, 503."""
    headerTimeout: float = DEFAULT_HEADER_TIMEOUT
    """Seconds from a request's first byte until all its headers are in."""
    bodyTimeout: float = DEFAULT_BODY_TIMEOUT
    """Seconds from a request's headers until all its body is in."""
    maxConnections: int | None = None
    """Client connections at once (None: from the open-files limit at start)."""
    maxConnectionsPerAddress: int = DEFAULT_MAX_CONNECTIONS_PER_ADDRESS
    pingInterval: float = DEFAULT_PING_INTERVAL
    maxDuration: float | None = DEFAULT_MAX_DURATION
    """Seconds a request may take in all, streams included (None: no limit,
    written `max_duration: 0`)."""
    shutdownGrace: float = DEFAULT_SHUTDOWN_GRACE
    maxResponseBytes: int = DEFAULT_MAX_RESPONSE_BYTES
    maxLineBytes: int = DEFAULT_MAX_LINE_BYTES
    log: LogSettings = field(factory=LogSettings)
    logPayloads: bool = False
    logPayloadMaxChars: int = DEFAULT_LOG_PAYLOAD_MAX_CHARS
    pretty: bool = False
    allowOpen: bool = False
    reusePort: bool = False
    """Bind with SO_REUSEPORT, so several processes can serve one port."""
    workers: int = 1
    """Processes serving the port (`workers: N` or `auto`, one per core): more than
    one makes `twistd ccproxy` a master that binds the port and supervises them."""
    metricsAuth: str = "admin"
    """Who may read `/metrics` and `/healthz`'s details: `admin` (an admin client's
    key or `metricsToken`; anyone while neither is configured) or `none` (anyone)."""
    metricsToken: str | None = field(default=None, repr=False)
    """A scrape token for `/metrics` (Prometheus sends it as a bearer)."""
    prices: Prices = field(factory=Prices)
    """What tokens cost, by upstream model (`prices:`, `currency:`)."""
    redis: RedisAddress | None = None
    """`state: {redis: URL}`: client limits, budgets and breakers shared through
    Redis by every process pointing at it (None: kept in this process)."""
    ledger: LedgerURL | None = field(factory=defaultLedger)
    """Where each request's row is kept (`ledger:`; None: `off`)."""
    login: LoginSettings = field(factory=LoginSettings)
    """`/login`: device sign-in, tokens kept in the ledger's database."""
    managedSettings: Mapping[str, Any] | None = field(default=None, eq=False)
    """`managed_settings:` for every signed-in client (None: `off`, or absent:
    see `managedDefault`)."""
    managedDefault: bool = True
    """No `managed_settings:` was written: the default is served (`defaultSettings`)."""
    telemetry: TelemetrySettings = field(factory=TelemetrySettings)
    """`telemetry:`: Claude Code's OTLP exports forwarded to a collector, or dropped."""
    source: str | None = None
    literalSecrets: tuple[str, ...] = ()
    """Key paths holding a secret written in the file (not `${VAR}`): warned about."""
    redactor: Redactor = field(init=False, repr=False, eq=False)
    """Takes this config's secrets out of what goes to a client or a log."""

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "redactor", Redactor.of(self.secrets()))

    @property
    def signIn(self) -> bool:
        """Whether `/login` is served: it needs clients to sign in as, and the
        ledger's database to keep tokens in."""
        return self.login.enabled and bool(self.clients) and self.ledger is not None

    def clientNamed(self, name: str) -> Client | None:
        return next((c for c in self.clients if c.name == name), None)

    def secrets(self) -> Iterator[str | None]:
        """Every secret this config holds; a new kind of key or token goes here too."""
        for upstream in self.upstreams.values():
            yield from upstream.secrets()
        for client in self.clients:
            yield client.key
        yield self.metricsToken
        if self.redis is not None:
            yield self.redis.password
        if self.ledger is not None:
            yield from self.ledger.secrets()

    # The readers live in `ccproxy.config.load`; these are their usual front doors.

    @classmethod
    def fromPath(cls, path: str, environ: Mapping[str, str] | None = None) -> Config:
        """Read and validate a YAML file."""
        from ccproxy.config.load import fromPath

        return fromPath(path, environ)

    @classmethod
    def fromYAML(
        cls, text: bytes | str, environ: Mapping[str, str] | None = None, source: str | None = None
    ) -> Config:
        """Parse and validate YAML text."""
        from ccproxy.config.load import fromYAML

        return fromYAML(text, environ, source)

    @classmethod
    def fromMapping(
        cls, data: Any, environ: Mapping[str, str] | None = None, source: str | None = None
    ) -> Config:
        """Validate an already-parsed document (`${VAR}` still unexpanded)."""
        from ccproxy.config.load import fromMapping

        return fromMapping(data, environ, source)
