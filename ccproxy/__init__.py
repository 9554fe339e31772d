"""ccproxy: lets Claude Code (Anthropic Messages API) talk to OpenAI-compatible gateways.

The folders, top to bottom; each imports only the ones below it (an import-linter
contract in setup.cfg, checked in CI):

- `daemon/`    twistd: options, the composition root (`tap.makeService`, the only
               code that touches the global reactor), the service's signals,
               reload and drain, the listening port, log files, and the master
               that runs `workers: N` processes on one port (`workers`).
- `doctor/`    `python -m ccproxy doctor`: checks a user's Claude Code setup.
- `web/`       the Klein face: routes (`app`), the `api` decorator that
               authenticates and writes one access event per request, the
               Messages flow (`messages`), keys (`auth`), the
               HTTP site with its body limit (`site`); a client's models,
               limits and budgets (`admission`); the live status page for
               admins (`status`: its view model, HTML and sessions); Claude
               Code's `/login` and its gateway tokens (`signin`), managed
               settings, usage and telemetry (`gateway`).
- `relay/`     an answer streamed to the client: upstream SSE bytes (`sse`) ->
               Anthropic events -> client frames (`relay.StreamRelay`); an
               `api: messages` upstream's frames go on as they came.
- `upstream/`  talking to gateways: what to send (`plan`), attempts, retries and
               failover (`dispatch`), breaker and slots, the client straight
               on the connection pool (`PooledClient`; treq in the tests).
- `observe/`   the access record and log, Prometheus metrics, usage totals,
               the bounded watch of recent traffic the status page reads.
- `state/`     client limits, budget counters and breakers: in this process, or
               in Redis for every process pointing at it (`shared`).
- `ledger/`    one row per Messages request in SQLite or PostgreSQL, written in
               batches on its own thread; `/v1/usage` and `python -m ccproxy
               usage` read it. Sign-ins (device codes, hashed tokens) live in
               the same database (`signin`).
- `config/`    YAML (or the seed environment) to frozen values: upstreams,
               profiles, policies, routes, endpoint descriptions.
- `translate/` pure Anthropic <-> OpenAI translation over dicts (chat/completions,
               and the Responses API for `api: responses`); no Twisted; what a
               passed-through Anthropic answer is read for (`passthrough`).
- `errors`     the Anthropic error envelope and `ProxyError`; `compat`, Twisted's
               private APIs behind one door.

One streaming `POST /v1/messages`, one way down:

    web.site.LimitedRequest          body read within max_body_bytes
    -> web.app.ProxyApp.serve         auth, access record, max_duration
    -> web.messages.MessagesAPI       models, client limits and budgets, route, Plan
    -> upstream.dispatch.Dispatcher   breaker, slot, retries, failover
    -> upstream.client.UpstreamClient POST on a pool connection (PooledClient)
    -> relay.relay.StreamRelay        SSEParser -> StreamTranslator -> EventWriter
    -> back up: a Verdict for the breaker (Answer) and the access record
    -> observe.accesslog.AccessLog    one event, metrics, usage, the ledger's row
"""

__version__ = "0.1.0"
