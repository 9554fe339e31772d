"""Model routing: exact names first, then globs in file order."""

from __future__ import annotations

from fnmatch import fnmatchcase

import pytest

from ccproxy.config import routing
from ccproxy.config.routing import ModelRouter, Route, Target
from ccproxy.errors import ProxyError

ROUTER = ModelRouter.fromRoutes(
    [
        Route("claude-*", (Target("corp", "gpt-4.1"),)),
        Route("claude-haiku-*", (Target("local", "qwen"),)),  # after a wider glob: never used
        Route("claude-haiku-5-5", (Target("local", "exact"),)),  # exact wins over earlier globs
        Route("gpt-?", (Target("corp"),)),
        Route("my-gateway/gpt-4o", (Target("corp", "gpt-4o"),)),
    ]
)


@pytest.mark.parametrize(
    ("model", "upstream", "upstreamModel"),
    [
        ("claude-haiku-5-5", "local", "exact"),
        ("claude-haiku-4-5", "corp", "gpt-4.1"),
        ("claude-opus-5-5", "corp", "gpt-4.1"),
        ("gpt-5", "corp", "gpt-5"),
        ("my-gateway/gpt-4o", "corp", "gpt-4o"),
    ],
)
def test_resolve(model: str, upstream: str, upstreamModel: str) -> None:
    target = ROUTER.resolve(model).targets[0]
    assert (target.upstream, target.modelFor(model)) == (upstream, upstreamModel)


@pytest.mark.parametrize("model", ["gpt-44", "CLAUDE-opus", "", "llama"])
def test_unmatched_model_is_404_naming_it(model: str) -> None:
    assert ROUTER.find(model) is None
    with pytest.raises(ProxyError) as raised:
        ROUTER.resolve(model)
    assert raised.value.status == 404
    assert raised.value.errorType == "not_found_error"
    assert repr(model) in raised.value.message


def test_a_glob_route_is_found_once_per_name_and_the_memo_is_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    router = ModelRouter.fromRoutes(ROUTER.routes)
    tried: list[str] = []

    def counting(name: str, pattern: str) -> bool:
        tried.append(name)
        return fnmatchcase(name, pattern)

    monkeypatch.setattr(routing, "fnmatchcase", counting)
    for _ in range(3):  # the same answers, found once
        assert router.find("claude-opus-5-5") is ROUTER.find("claude-opus-5-5")
        assert router.find("llama") is None
    assert tried.count("claude-opus-5-5") == 1 and tried.count("llama") == 3  # each glob once
    for n in range(routing.FOUND_MEMO * 2):
        assert router.find(f"gpt-{n}") is (ROUTER.routes[3] if n < 10 else None)
        assert len(router._found) <= routing.FOUND_MEMO
    assert router == ModelRouter.fromRoutes(ROUTER.routes)  # the memo is no part of it


def test_exact_names_are_the_non_globs_in_order() -> None:
    assert ROUTER.exactNames() == ["claude-haiku-5-5", "my-gateway/gpt-4o"]


@pytest.mark.parametrize(
    ("text", "upstream", "model"),
    [
        ("corp/gpt-4.1", "corp", "gpt-4.1"),
        ("local/qwen2.5-coder:7b", "local", "qwen2.5-coder:7b"),
        ("corp", "corp", None),
        ("gw/org/model", "gw", "org/model"),
    ],
)
def test_target_splits_at_first_slash(text: str, upstream: str, model: str | None) -> None:
    assert Target.parse(text) == Target(upstream, model)
    assert str(Target.parse(text)) == text
