"""`prompt_cache_key`: Claude Code's session identity sent to upstreams that take
it, so one user's turns reach the same prompt cache; and the cache reads the
upstream reports, shown to Claude Code as `cache_read_input_tokens`."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from ccproxy.config import Config
from ccproxy.config.profile import PRESETS
from ccproxy.translate.dialect import Profile
from ccproxy.translate.request import sessionKey, toOpenAI
from tests.support.fakes import completion, jsonReply, sseReply
from tests.support.fixtures import requestBody, requestHeaders
from tests.support.harness import BASE_CONFIG, Harness, message, parseSSE

SESSION = "e0787046-7098-48ce-907b-6d711feab86e"
USER_ID = orjson.dumps(
    {"device_id": "5bbaf1849d30", "account_uuid": "", "session_id": SESSION}
).decode()


@pytest.mark.parametrize(
    ("header", "metadata", "key"),
    [
        (
            "f834ca9a-67a8-42be-a8d2-f16b2d2f0e45",
            {"user_id": USER_ID},
            "f834ca9a-67a8-42be-a8d2-f16b2d2f0e45",
        ),
        (None, {"user_id": USER_ID}, SESSION),
        (None, {"user_id": f"user_abc_account__session_{SESSION}"}, SESSION),  # before 2.1
        ("x" * 65, {"user_id": USER_ID}, SESSION),  # no session of Claude Code's
        ("two words", None, None),
        (None, {"user_id": "alice"}, None),  # another client's user: not a session
        (None, {"user_id": "{not json"}, None),
        (None, {"user_id": '{"session_id": 7}'}, None),
        (None, {"user_id": "[1]"}, None),
        (None, {"user_id": 7}, None),
        (None, "not an object", None),
        (None, None, None),
    ],
)
def test_session_key(header: str | None, metadata: Any, key: str | None) -> None:
    body = {"metadata": metadata} if metadata is not None else {}
    assert sessionKey(header, body) == key


def test_the_key_goes_only_where_the_profile_takes_it() -> None:
    body = message()
    on = toOpenAI(
        body, model="m", profile=Profile(promptCacheKey=True), defaultMaxTokens=10, cacheKey="s1"
    )
    assert on["prompt_cache_key"] == "s1"
    off = toOpenAI(body, model="m", profile=Profile(), defaultMaxTokens=10, cacheKey="s1")
    assert "prompt_cache_key" not in off
    none = toOpenAI(body, model="m", profile=Profile(promptCacheKey=True), defaultMaxTokens=10)
    assert "prompt_cache_key" not in none


def withProfile(profile: str) -> str:
    """The harness's config, its upstream `up` (where `claude-*` goes) with `profile`."""
    return BASE_CONFIG.replace("    retries: 0\n", f"    retries: 0\n{profile}\n", 1)


def harness(profile: str = "    preset: openai") -> Harness:
    return Harness.build(withProfile(profile))


@pytest.mark.parametrize(
    ("preset", "sent"),
    [(name, name in ("openai", "azure")) for name in PRESETS] + [(None, False)],
)
def test_presets(preset: str | None, sent: bool) -> None:
    config = Config.fromYAML(withProfile(f"    preset: {preset}" if preset else ""))
    assert config.upstreams["up"].profile.promptCacheKey is sent


@pytest.mark.parametrize(("preset", "value"), [("openai", False), ("vllm", True)])
def test_the_knob_overrides_the_preset(preset: str, value: bool) -> None:
    text = f"    preset: {preset}\n    prompt_cache_key: {str(value).lower()}"
    assert Config.fromYAML(withProfile(text)).upstreams["up"].profile.promptCacheKey is value


def test_claude_codes_session_header_is_the_key() -> None:
    """A request as Claude Code 2.1.330 sent it, header and body."""
    h = harness()
    headers = requestHeaders("001")
    reply = h.post(
        requestBody("001"),
        headers={"x-claude-code-session-id": headers["x-claude-code-session-id"]},
    )
    assert reply.status == 200
    assert h.upstream.last["prompt_cache_key"] == headers["x-claude-code-session-id"]


def test_without_the_header_the_session_in_user_id_is_the_key() -> None:
    h = harness()
    body = requestBody("002")
    session = orjson.loads(body["metadata"]["user_id"])["session_id"]
    assert h.post(body).status == 200
    assert h.upstream.last["prompt_cache_key"] == session


def test_an_upstream_without_the_knob_gets_no_key() -> None:
    h = harness(profile="    preset: vllm")
    assert h.post(requestBody("001"), headers={"x-claude-code-session-id": SESSION}).status == 200
    assert "prompt_cache_key" not in h.upstream.last


CACHED = {
    "prompt_tokens": 2006,
    "completion_tokens": 300,
    "prompt_tokens_details": {"cached_tokens": 1920},
}


def test_cached_tokens_are_cache_reads_in_a_whole_answer() -> None:
    h = harness()
    h.upstream.queue(jsonReply(completion("hi", usage=CACHED)))
    reply = h.post(message(metadata={"user_id": USER_ID}))
    usage = reply.json()["usage"]
    assert usage["cache_read_input_tokens"] == 1920
    assert usage["input_tokens"] == 86
    assert h.upstream.last["prompt_cache_key"] == SESSION


def test_cached_tokens_are_cache_reads_in_a_stream() -> None:
    h = harness()
    chunks = [
        {"choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": "stop"}]},
        {"choices": [], "usage": CACHED},
    ]
    h.upstream.queue(sseReply(chunks))
    reply = h.post(message(stream=True, metadata={"user_id": USER_ID}))
    usage = next(d["usage"] for n, d in parseSSE(reply.body) if n == "message_delta")
    assert usage["cache_read_input_tokens"] == 1920
    assert usage["input_tokens"] == 86
    assert h.upstream.last["prompt_cache_key"] == SESSION
