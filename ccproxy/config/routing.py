"""Which upstream serves a model: exact names first, then globs in file order."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from fnmatch import fnmatchcase

from attrs import field, frozen

from ccproxy.errors import ProxyError

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


@frozen
class ModelRouter:
    """Resolves a client's model name to its route."""

    routes: tuple[Route, ...]
    _exact: Mapping[str, Route] = field(init=False, repr=False)
    _globs: tuple[Route, ...] = field(init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "_exact", {r.pattern: r for r in self.routes if not r.isGlob})
        object.__setattr__(self, "_globs", tuple(r for r in self.routes if r.isGlob))

    @classmethod
    def fromRoutes(cls, routes: Iterable[Route]) -> ModelRouter:
        return cls(tuple(routes))

    def find(self, model: str) -> Route | None:
        """The route for `model`, or None when no rule matches."""
        route = self._exact.get(model)
        if route is not None:
            return route
        for route in self._globs:
            if fnmatchcase(model, route.pattern):
                return route
        return None

    def resolve(self, model: str) -> Route:
        """Like `find`, but a model no rule matches is the client's 404."""
        route = self.find(model)
        if route is None:
            raise ProxyError(
                404, f"model {model!r} is not served by this proxy (no route matches it)"
            )
        return route

    def exactNames(self) -> list[str]:
        """The non-glob model names, in file order: what `/v1/models` lists."""
        return list(self._exact)
