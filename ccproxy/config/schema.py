"""Reading a YAML tree with types and key paths, so every problem names its key.

A small vocabulary (`Node.get(key, positiveInt, default)`) shared by the modules that
parse parts of the config, each reporting `upstreams.corp.timeout: must be …`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

T = TypeVar("T")

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-(.*?))?\}")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


class ConfigError(Exception):
    """A configuration problem, said in one line that names the key."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}" if path else problem)
        self.path = path
        self.problem = problem


def expandVariables(value: Any, environ: Mapping[str, str], path: str) -> Any:
    """Expand `${VAR}` and `${VAR:-default}` in every string of a YAML tree."""
    if isinstance(value, str):

        def substitute(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in environ:
                return environ[name]
            if default is not None:
                return default
            raise ConfigError(path, f"environment variable {name} is not set")

        return _VAR.sub(substitute, value)
    if isinstance(value, dict):
        return {k: expandVariables(v, environ, join(path, str(k))) for k, v in value.items()}
    if isinstance(value, list):
        return [expandVariables(v, environ, join(path, str(i))) for i, v in enumerate(value)]
    return value


def join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


class Node:
    """A mapping in the YAML tree, read key by key with typed, path-naming checks."""

    def __init__(self, value: Any, path: str) -> None:
        if not isinstance(value, dict):
            raise (
                ConfigError(path, "must be a mapping")
                if path
                else ConfigError("", "the config file must be a YAML mapping")
            )
        for key in value:
            if not isinstance(key, str):
                raise ConfigError(join(path, str(key)), "keys must be strings")
        self.value: dict[str, Any] = value
        self.path = path
        self._seen: set[str] = set()

    def at(self, key: str) -> str:
        return join(self.path, key)

    def get(self, key: str, kind: Callable[[Any, str], T], default: T) -> T:
        self._seen.add(key)
        if key not in self.value or self.value[key] is None:
            return default
        return kind(self.value[key], self.at(key))

    def require(self, key: str, kind: Callable[[Any, str], T]) -> T:
        self._seen.add(key)
        if key not in self.value or self.value[key] is None:
            raise ConfigError(self.at(key), "is required")
        return kind(self.value[key], self.at(key))

    def node(self, key: str) -> Node:
        self._seen.add(key)
        return Node(self.value.get(key) or {}, self.at(key))

    def finish(self) -> None:
        """Refuse unknown keys: a typo must not silently mean a default."""
        for key in self.value:
            if key not in self._seen:
                raise ConfigError(self.at(key), "unknown key")


def string(value: Any, path: str) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ConfigError(path, "must be a string")
    return str(value)


def boolean(value: Any, path: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(path, "must be true or false")
    return value


def positiveInt(value: Any, path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(path, "must be a positive whole number")
    return value


def positiveNumber(value: Any, path: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ConfigError(path, "must be a positive number (seconds)")
    return float(value)


def positiveAmount(value: Any, path: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ConfigError(path, "must be a positive amount")
    return float(value)


def headerMap(value: Any, path: str) -> dict[str, str]:
    node = Node(value, path)
    headers = {}
    for name in node.value:
        if not _HEADER_NAME.fullmatch(name):
            raise ConfigError(node.at(name), "not a valid HTTP header name")
        text = node.require(name, string)
        if "\r" in text or "\n" in text:
            raise ConfigError(node.at(name), "header values cannot hold line breaks")
        headers[name] = text
    return headers


def nonNegativeInt(value: Any, path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(path, "must be a whole number, 0 or more")
    return value


def nonNegativeNumber(value: Any, path: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ConfigError(path, "must be a number of seconds, 0 or more")
    return float(value)
