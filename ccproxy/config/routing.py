"""Which upstream serves a request: `routes:` rules on what it holds, in file order,
then `models:` on its model name (exact names first, then globs in file order)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from fnmatch import fnmatchcase, translate
from itertools import repeat

from attrs import field, frozen

from ccproxy.errors import ProxyError
from ccproxy.translate.facts import RequestFacts

GLOB_CHARS = frozenset("*?[")


@frozen
class Target:
    """One place a model can be served: an upstream and, optionally, a model name there."""

    upstream: str
    model: str | None = None
    """None: the client's model name is passed through unchanged."""
    contextWindow: int | None = None
    """The tokens its model takes in all (`context_window:`), when the config says:
    what ccproxy tells Claude Code the limit is when the upstream refuses a prompt
    as too long without saying it, and what the doctor advises compacting at."""

    @classmethod
    def parse(cls, text: str, contextWindow: int | None = None) -> Target:
        """`UPSTREAM/MODEL` (split at the first slash) or `UPSTREAM` alone."""
        upstream, slash, model = text.partition("/")
        return cls(upstream, model if slash else None, contextWindow)

    def modelFor(self, requested: str) -> str:
        """The model name to send upstream for a client's requested name."""
        return requested if self.model is None else self.model

    def __str__(self) -> str:
        return self.upstream if self.model is None else f"{self.upstream}/{self.model}"


@frozen
class Route:
    """A `models:` entry: a client model name or glob and where it goes."""

    pattern: str
    targets: tuple[Target, ...]

    @property
    def isGlob(self) -> bool:
        return not GLOB_CHARS.isdisjoint(self.pattern)

    @property
    def contextWindow(self) -> int | None:
        """The smallest window its targets declare (a conversation must fit whichever
        serves it, failover included), or None when none declares one."""
        windows = [t.contextWindow for t in self.targets if t.contextWindow is not None]
        return min(windows) if windows else None


def globs(patterns: Iterable[str]) -> re.Pattern[str]:
    """One regular expression matching any of the shell-style `patterns` (as
    `fnmatchcase`): a rule's globs are tried in one match per name."""
    return re.compile("|".join(translate(p) for p in patterns))


@frozen
class ToolGlobs:
    """A rule's tool globs, each matched the cheapest way that gives `fnmatchcase`'s
    answer: a name without glob characters by equality, `NAME*` by `startswith`,
    only the rest by their regular expression. A request offers some 15-50 tools:
    one regular expression match per name cost more than the rest of its rules."""

    exact: frozenset[str]
    prefixes: tuple[str, ...]
    others: re.Pattern[str] | None

    @classmethod
    def of(cls, patterns: Iterable[str]) -> ToolGlobs:
        exact, prefixes, others = set(), [], []
        for pattern in patterns:
            if GLOB_CHARS.isdisjoint(pattern):
                exact.add(pattern)
            elif pattern.endswith("*") and GLOB_CHARS.isdisjoint(pattern[:-1]):
                prefixes.append(pattern[:-1])
            else:
                others.append(pattern)
        return cls(frozenset(exact), tuple(prefixes), globs(others) if others else None)

    def anyOf(self, names: tuple[str, ...]) -> bool:
        """Whether any of `names` matches one of the globs (the loops run in C)."""
        if not self.exact.isdisjoint(names):
            return True
        if self.prefixes and any(map(str.startswith, names, repeat(self.prefixes))):
            return True
        return self.others is not None and any(map(self.others.match, names))


@frozen
class When:
    """A rule's conditions (`routes[].when`); those not None must all hold."""

    model: tuple[str, ...] | None = None
    """Globs of the model name the client asked for."""
    images: bool | None = None
    """Whether an image or document block is there, tool results included."""
    inputTokensOver: int | None = None
    """The count_tokens estimate of the request is over this."""
    thinking: bool | None = None
    """Thinking on (enabled or adaptive), or effort high, xhigh or max."""
    tools: tuple[str, ...] | None = None
    """Globs: any tool offered whose name (or server tool's type) matches."""
    background: bool | None = None
    """No tool offered: Claude Code's side calls (titles, summaries, quota)."""
    client: tuple[str, ...] | None = None
    """Names of the clients (`clients[].name`) it applies to."""
    _model: re.Pattern[str] | None = field(init=False, repr=False, eq=False)
    _toolGlobs: ToolGlobs | None = field(init=False, repr=False, eq=False)

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "_model", None if self.model is None else globs(self.model))
        toolGlobs = None if self.tools is None else ToolGlobs.of(self.tools)
        object.__setattr__(self, "_toolGlobs", toolGlobs)

    def holds(self, model: str, facts: RequestFacts, client: str | None) -> bool | None:
        """Whether every condition holds; None when that turns on the token estimate
        alone and `facts` has none yet. The cheap conditions go first."""
        if not self.takes(model):
            return False
        return self.holdsBeyondModel(facts, client)

    def takes(self, model: str) -> bool:
        """Whether the `model` condition holds (or there is none)."""
        return self._model is None or self._model.match(model) is not None

    def holdsBeyondModel(self, facts: RequestFacts, client: str | None) -> bool | None:
        """`holds` for a model `takes` says holds: the other conditions."""
        if self.client is not None and client not in self.client:
            return False
        if self.background is not None and facts.background != self.background:
            return False
        if self.thinking is not None and facts.thinking != self.thinking:
            return False
        if self._toolGlobs is not None and not self._toolGlobs.anyOf(facts.tools):
            return False
        if self.images is not None and (facts.images > 0) != self.images:
            return False
        if self.inputTokensOver is not None:
            if facts.inputTokens is not None:
                return facts.inputTokens > self.inputTokensOver
            if facts.tokenBound <= self.inputTokensOver:
                return False
            return None
        return True

    def __str__(self) -> str:
        """Its conditions as the config writes them: `{images: true, model: [claude-*]}`."""
        said = []
        for key, value in (
            ("model", self.model),
            ("images", self.images),
            ("input_tokens_over", self.inputTokensOver),
            ("thinking", self.thinking),
            ("tools", self.tools),
            ("background", self.background),
            ("client", self.client),
        ):
            if isinstance(value, bool):
                said.append(f"{key}: {_yaml(value)}")
            elif isinstance(value, tuple):
                said.append(f"{key}: [{', '.join(value)}]")
            elif value is not None:
                said.append(f"{key}: {value}")
        return "{" + ", ".join(said) + "}"

    def explain(
        self, model: str, facts: RequestFacts, client: str | None
    ) -> Iterator[tuple[str, str, bool | None]]:
        """Each condition as (condition, what the request holds, whether it holds)."""
        if self._model is not None:
            yield f"model {list(self.model or ())}", model, self._model.match(model) is not None
        if self.client is not None:
            yield f"client {list(self.client)}", str(client), client in self.client
        if self.background is not None:
            tools = len(facts.tools)
            yield (
                f"background {_yaml(self.background)}",
                f"{tools} tools offered",
                facts.background == self.background,
            )
        if self.thinking is not None:
            yield (
                f"thinking {_yaml(self.thinking)}",
                f"thinking {_yaml(facts.thinking)}",
                facts.thinking == self.thinking,
            )
        if self._toolGlobs is not None:
            toolGlobs = self._toolGlobs
            matched = [t for t in facts.tools if toolGlobs.anyOf((t,))]
            shown = ", ".join(matched) if matched else f"none of {len(facts.tools)} offered"
            yield f"tools {list(self.tools or ())}", shown, bool(matched)
        if self.images is not None:
            yield (
                f"images {_yaml(self.images)}",
                f"{facts.images} image or document blocks",
                (facts.images > 0) == self.images,
            )
        if self.inputTokensOver is not None:
            if facts.inputTokens is not None:
                held: bool | None = facts.inputTokens > self.inputTokensOver
                value = f"{facts.inputTokens} tokens (estimated)"
            elif facts.tokenBound <= self.inputTokensOver:
                held, value = False, f"at most {facts.tokenBound} tokens (not counted)"
            else:
                held, value = None, "not estimated"
            yield f"input_tokens_over {self.inputTokensOver}", value, held


def _yaml(value: bool) -> str:
    return "true" if value else "false"


@frozen
class Rule:
    """A `routes:` entry: when its conditions hold, the request goes to its route."""

    when: When
    route: Route
    """Its targets, under its label (`pattern`): the rule's `name`, else
    `routes.N`; what the access log, metrics and ledger name it by."""

    @property
    def label(self) -> str:
        return self.route.pattern


FOUND_MEMO = 256
"""Model names whose glob route a router remembers (clients use a handful; names
are at most `web.call.MAX_MODEL_CHARS` long)."""

NEEDS_TOKENS = Route("<needs the token estimate>", ())
"""What `ModelRouter.choose` answers when the first rule that might hold turns on
the token estimate, which the caller then computes (`RequestFacts.inputTokens`)."""


@frozen
class ModelRouter:
    """Resolves a request to its route: a `routes:` rule, else its model's entry."""

    routes: tuple[Route, ...]
    rules: tuple[Rule, ...] = ()
    """`routes:`, in file order: tried before `routes` (`models:`)."""
    _exact: Mapping[str, Route] = field(init=False, repr=False)
    _globs: tuple[Route, ...] = field(init=False, repr=False)
    _found: dict[str, Route | None] = field(init=False, repr=False, eq=False)
    """`find`'s answers by model name (`FOUND_MEMO`): the globs are tried once per
    name, not once per request."""
    _taking: dict[str, tuple[Rule, ...]] = field(init=False, repr=False, eq=False)
    """The rules whose `model` condition holds, by model name (`FOUND_MEMO`): their
    globs too are tried once per name, and a rule for other models costs nothing."""

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "_exact", {r.pattern: r for r in self.routes if not r.isGlob})
        object.__setattr__(self, "_globs", tuple(r for r in self.routes if r.isGlob))
        object.__setattr__(self, "_found", {})
        object.__setattr__(self, "_taking", {})

    @classmethod
    def fromRoutes(cls, routes: Iterable[Route], rules: Iterable[Rule] = ()) -> ModelRouter:
        return cls(tuple(routes), tuple(rules))

    def choose(self, model: str, facts: RequestFacts, client: str | None) -> Route | None:
        """The first rule that holds, else `model`'s entry (`find`); `NEEDS_TOKENS`
        when that turns on an estimate `facts` does not hold yet."""
        taking = self._taking.get(model)
        if taking is None:
            taking = self._rulesTaking(model)
        for rule in taking:
            held = rule.when.holdsBeyondModel(facts, client)
            if held is None:
                return NEEDS_TOKENS
            if held:
                return rule.route
        return self.find(model)

    def _rulesTaking(self, model: str) -> tuple[Rule, ...]:
        """The rules whose `model` condition `model` meets, in file order, kept."""
        taking = tuple(rule for rule in self.rules if rule.when.takes(model))
        if len(self._taking) >= FOUND_MEMO:
            self._taking.clear()  # many distinct names: start again, bounded
        self._taking[model] = taking
        return taking

    def needsTokens(self) -> bool:
        """Whether a rule may ask for the token estimate."""
        return any(rule.when.inputTokensOver is not None for rule in self.rules)

    def find(self, model: str) -> Route | None:
        """The route for `model`, or None when no rule matches."""
        route = self._exact.get(model)
        if route is not None or not self._globs:
            return route
        found = self._found
        if model in found:
            return found[model]
        route = next((r for r in self._globs if fnmatchcase(model, r.pattern)), None)
        if len(found) >= FOUND_MEMO:
            found.clear()  # many distinct names: start again, bounded
        found[model] = route
        return route

    def resolve(self, model: str) -> Route:
        """Like `find`, but a model no rule matches is the client's 404."""
        route = self.find(model)
        if route is None:
            raise notRouted(model)
        return route

    def exactNames(self) -> list[str]:
        """The non-glob model names, in file order: what `/v1/models` lists."""
        return list(self._exact)


def notRouted(model: str) -> ProxyError:
    """The client's 404 for a request no rule and no `models:` entry serves."""
    return ProxyError(404, f"model {model!r} is not served by this proxy (no route matches it)")
