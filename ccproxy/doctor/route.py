"""`python -m ccproxy route --config C REQUEST.json`: which route a request would take.

An admin writing `routes:` rules checks them against a real request body (a
captured one, or one written by hand) without sending any traffic: every rule in
file order with each condition's value in the request and whether it holds, then
the route chosen, exactly as the daemon would choose it (`ModelRouter.choose`, the
same facts, the same token estimate).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, TextIO

import orjson

from ccproxy.config import Config
from ccproxy.config.routing import NEEDS_TOKENS, Route
from ccproxy.config.schema import ConfigError
from ccproxy.errors import ProxyError
from ccproxy.translate.dialect import Profile
from ccproxy.translate.facts import RequestFacts
from ccproxy.translate.tokens import requestTokens


def addParser(subparsers: Any) -> None:
    """The `route` subcommand's options."""
    parser = subparsers.add_parser(
        "route",
        help="show which route a request body would take, and why",
        description="Read a Messages request body (or a captured request whose `body` holds"
        " it) and print each routes: rule with its conditions' values, then the route"
        " chosen. Sends nothing. Exit code 0 when a route serves it, 1 when none does"
        " (the client's 404), 2 when the config or the body cannot be read.",
    )
    parser.add_argument("--config", metavar="PATH", required=True, help="the proxy's YAML config")
    parser.add_argument(
        "--client", metavar="NAME", default=None, help="the client sending it (clients[].name)"
    )
    parser.add_argument("request", metavar="REQUEST.json", help="the request body ('-': stdin)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    try:
        config = Config.fromPath(args.config)
    except ConfigError as e:
        print(f"config {args.config}: {e}", file=out)
        return 2
    try:
        raw = sys.stdin.buffer.read() if args.request == "-" else _read(args.request)
        body = requestBody(orjson.loads(raw))
    except (OSError, orjson.JSONDecodeError, ValueError) as e:
        print(f"{args.request}: {e}", file=out)
        return 2
    # Its size as sent compactly: a captured request's file holds more than the body.
    return explain(config, body, len(orjson.dumps(body)), args.client, out)


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def requestBody(document: Any) -> dict[str, Any]:
    """The body itself, or the `body` of a captured request (tests/fixtures)."""
    if isinstance(document, dict) and "messages" not in document:
        document = document.get("body")
    if not isinstance(document, dict) or not isinstance(document.get("model"), str):
        raise ValueError("not a Messages request body (no model)")
    return document


def explain(
    config: Config, body: dict[str, Any], size: int, client: str | None, out: TextIO
) -> int:
    """Print the rules and the choice for `body`; the exit code (see `addParser`)."""
    model = body["model"]
    router = config.router
    facts = RequestFacts(body, size)
    if router.needsTokens():
        try:
            facts.inputTokens = requestTokens(body, model, Profile(), config.defaultMaxTokens)
        except ProxyError as e:
            print(f"the token estimate failed: {e.message}", file=out)
        except orjson.JSONEncodeError:
            print("the token estimate failed: the body nests too deeply", file=out)
    print(f"request: model {model}, client {client or '-'}, {size} bytes", file=out)
    chosen = router.choose(model, facts, client)
    for rule in router.rules:
        conditions = list(rule.when.explain(model, facts, client))
        held = all(c[2] for c in conditions)
        mark = "matches" if rule.route is chosen else ("holds" if held else "no")
        print(f"{rule.label}: {mark}", file=out)
        for condition, value, ok in conditions:
            print(f"  {_mark(ok):4} {condition}: {value}", file=out)
    entry = router.find(model)
    if entry is None:
        print(f"models: no entry matches {model!r}", file=out)
    else:
        print(f"models: {entry.pattern!r} matches {model!r}", file=out)
    if chosen is None or chosen is NEEDS_TOKENS:
        print(f"chosen: none, the client gets 404 (model {model!r} is not served)", file=out)
        return 1
    print(f"chosen: {chosen.pattern} -> {_targets(chosen, model)}", file=out)
    return 0


def _mark(ok: bool | None) -> str:
    return "?" if ok is None else ("yes" if ok else "no")


def _targets(route: Route, model: str) -> str:
    """Its targets as the upstream gets them, failover after the first."""
    names = [f"{t.upstream}/{t.modelFor(model)}" for t in route.targets]
    return names[0] + (f" (failover: {', '.join(names[1:])})" if names[1:] else "")
