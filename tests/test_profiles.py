"""Per-upstream profiles: presets, each knob's effect on the request, and thinking."""

from __future__ import annotations

from typing import Any

import pytest

from ccproxy.config import Config
from ccproxy.config.profile import PRESETS
from ccproxy.errors import ProxyError
from ccproxy.translate.dialect import Profile
from ccproxy.translate.request import reasoningEffort, toOpenAI
from ccproxy.translate.response import fromOpenAI
from ccproxy.translate.thinking import SIGNATURE_PREFIX, ThinkTagSplitter, splitThinkTags


def profileOf(yaml: str) -> Profile:
    text = f"""
upstreams:
  up:
    url: http://up.test/v1
{yaml}
models:
  "*": up
"""
    return Config.fromYAML(text, {}).upstreams["up"].profile


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_loads(name: str) -> None:
    profile = profileOf(f"    preset: {name}")
    for key, value in PRESETS[name].items():
        assert getattr(profile, _attr(key)) == value


def _attr(key: str) -> str:
    head, *rest = key.split("_")
    return head + "".join(p.title() for p in rest)


@pytest.mark.parametrize(
    ("yaml", "expected"),
    [
        ("    preset: gemini", {"schema": "gemini", "maxTokensParam": "max_tokens"}),
        (
            "    preset: gemini\n    max_tokens_param: max_completion_tokens",
            {"schema": "gemini", "maxTokensParam": "max_completion_tokens"},
        ),
        ("    preset: deepseek", {"reasoning": "deepseek", "vision": False}),
        ("    preset: deepseek\n    vision: true", {"reasoning": "deepseek", "vision": True}),
        ("    preset: azure", {"authHeader": "api-key"}),
        ("    assistant_empty_content: null", {"assistantEmptyContent": None}),
        (
            "    extra_body: {top_k: 20, chat_template_kwargs: {enable_thinking: false}}",
            {"extraBody": {"top_k": 20, "chat_template_kwargs": {"enable_thinking": False}}},
        ),
    ],
)
def test_preset_then_overrides(yaml: str, expected: dict[str, Any]) -> None:
    profile = profileOf(yaml)
    for attribute, value in expected.items():
        assert getattr(profile, attribute) == value


@pytest.mark.parametrize(
    ("yaml", "message"),
    [
        ("    preset: mistral", "upstreams.up.preset: unknown preset 'mistral'"),
        ("    reasoning: maybe", "upstreams.up.reasoning: must be one of none, reasoning_effort"),
        ("    system_role: root", "upstreams.up.system_role: must be one of system, developer"),
        ("    schema: openapi", "upstreams.up.schema: must be one of full, gemini"),
        ("    assistant_empty_content: nothing", 'must be "" or null'),
        ("    extra_body: [1]", "upstreams.up.extra_body: must be a mapping"),
        ("    vision: sometimes", "upstreams.up.vision: must be true or false"),
    ],
)
def test_bad_knobs_name_the_key(yaml: str, message: str) -> None:
    from ccproxy.config import ConfigError

    with pytest.raises(ConfigError) as raised:
        profileOf(yaml)
    assert message in str(raised.value)


def translate(body: dict[str, Any], **profile: Any) -> dict[str, Any]:
    return toOpenAI(body, model="m", profile=Profile(**profile), defaultMaxTokens=100)


IMAGE = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBOR"}}
PDF = {
    "type": "document",
    "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBE"},
}


def body(*messages: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"model": "claude-x", "messages": list(messages), **extra}


def user(*content: Any) -> dict[str, Any]:
    return {"role": "user", "content": list(content)}


def assistant(*content: Any) -> dict[str, Any]:
    return {"role": "assistant", "content": list(content)}


def text(t: str, **extra: Any) -> dict[str, Any]:
    return {"type": "text", "text": t, **extra}


CALL = {"type": "tool_use", "id": "c1", "name": "Read", "input": {"p": "/a"}}
RESULT = {"type": "tool_result", "tool_use_id": "c1", "content": "x"}
THINK = {"type": "thinking", "thinking": "Let me think.", "signature": "sig"}


def test_system_role_developer() -> None:
    out = translate(body(user(text("hi")), system="be brief"), systemRole="developer")
    assert out["messages"][0] == {"role": "developer", "content": "be brief"}


def test_billing_header_dropped_unless_kept() -> None:
    system = [
        text("x-anthropic-billing-header: cc_version=2.1.330.c4f;"),
        text("You are Claude Code."),
    ]
    assert translate(body(user(text("hi")), system=system))["messages"][0]["content"] == (
        "You are Claude Code."
    )
    kept = translate(body(user(text("hi")), system=system), keepBillingHeader=True)
    assert kept["messages"][0]["content"].startswith("x-anthropic-billing-header")


def test_cache_control_dropped_or_passed_through() -> None:
    marker = {"type": "ephemeral"}
    request = body(
        user(text("hello", cache_control=marker)), system=[text("sys", cache_control=marker)]
    )
    plain = translate(request)
    assert plain["messages"] == [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "hello"},
    ]
    passed = translate(request, cacheControl=True)
    assert passed["messages"][0]["content"] == [
        {"type": "text", "text": "sys", "cache_control": marker}
    ]
    assert passed["messages"][1]["content"] == [
        {"type": "text", "text": "hello", "cache_control": marker}
    ]


def test_send_temperature_off_drops_sampling() -> None:
    request = body(user(text("hi")), temperature=0.2, top_p=0.9)
    assert translate(request)["temperature"] == 0.2
    out = translate(request, sendTemperature=False)
    assert "temperature" not in out and "top_p" not in out


@pytest.mark.parametrize(("setting", "expected"), [("", ""), (None, None)])
def test_assistant_empty_content(setting: str | None, expected: str | None) -> None:
    out = translate(
        body(user(text("go")), assistant(CALL), user(RESULT)), assistantEmptyContent=setting
    )
    assert out["messages"][1]["content"] == expected
    assert out["messages"][1]["tool_calls"][0]["id"] == "c1"


def test_no_vision_replaces_images_and_files_with_a_placeholder() -> None:
    request = body(
        user(text("look"), IMAGE, PDF),
        assistant(CALL),
        user({"type": "tool_result", "tool_use_id": "c1", "content": [text("shot"), IMAGE]}),
    )
    seeing = translate(request)
    assert seeing["messages"][0]["content"][1]["type"] == "image_url"
    assert seeing["messages"][0]["content"][2]["type"] == "file"
    assert seeing["messages"][-1]["content"][0]["type"] == "image_url"  # after the tool message
    blind = translate(request, vision=False)
    dumped = repr(blind)
    assert "iVBOR" not in dumped and "JVBE" not in dumped
    assert blind["messages"][0]["content"] == (
        "look\n\n[image omitted: this model cannot see images]\n\n"
        "[document omitted: this model cannot read attached files]"
    )
    assert blind["messages"][-1] == {
        "role": "tool",
        "tool_call_id": "c1",
        "content": "shot\n\n[image omitted: this model cannot see images]",
    }


def test_thinking_dropped_by_default_and_echoed_for_deepseek() -> None:
    request = body(user(text("q")), assistant(THINK, CALL), user(RESULT))
    plain = translate(request)
    assert "reasoning_content" not in plain["messages"][1]
    deepseek = translate(request, reasoning="deepseek")
    assert deepseek["messages"][1]["reasoning_content"] == "Let me think."
    assert deepseek["messages"][1]["tool_calls"][0]["function"]["name"] == "Read"


@pytest.mark.parametrize(
    ("thinking", "outputConfig", "effort"),
    [
        ({"type": "enabled", "budget_tokens": 1024}, None, "low"),
        ({"type": "enabled", "budget_tokens": 8000}, None, "medium"),
        ({"type": "enabled", "budget_tokens": 31999}, None, "high"),
        ({"type": "adaptive"}, {"effort": "high"}, "high"),
        ({"type": "adaptive", "display": "omitted"}, {"effort": "medium"}, "medium"),
        ({"type": "adaptive"}, None, "medium"),
        (None, {"effort": "max"}, "high"),
        (None, {"effort": "xhigh"}, "high"),
        (None, {"effort": "low"}, "low"),
        ({"type": "disabled"}, {"effort": "high"}, None),
        (None, None, None),
    ],
)
def test_reasoning_effort_mapping(thinking: Any, outputConfig: Any, effort: str | None) -> None:
    assert reasoningEffort(thinking, outputConfig) == effort
    request = body(user(text("q")), thinking=thinking, output_config=outputConfig)
    out = translate(request, reasoning="reasoning_effort")
    assert out.get("reasoning_effort") == effort
    assert "reasoning_effort" not in translate(request)  # only for upstreams that take it
    assert "thinking" not in out and "output_config" not in out


@pytest.mark.parametrize(
    ("mode", "key", "value"),
    [("openai", "web_search_options", {}), ("openrouter", "plugins", [{"id": "web"}])],
)
def test_web_search_maps_to_the_upstreams_own(mode: str, key: str, value: Any) -> None:
    request = body(
        user(text("news?")), tools=[{"type": "web_search_20250305", "name": "web_search"}]
    )
    plain = translate(request)
    assert "tools" not in plain and key not in plain
    assert translate(request, webSearch=mode)[key] == value


def test_extra_body_is_merged() -> None:
    out = translate(body(user(text("q"))), extraBody={"top_k": 20, "stream": True})
    assert out["top_k"] == 20
    assert out["stream"] is True


def test_azure_sends_api_key_header() -> None:
    from twisted.internet.task import Clock

    from ccproxy.upstream.client import UpstreamClient

    config = Config.fromYAML(
        """
upstreams:
  az:
    url: "https://res.openai.azure.com/openai/deployments/gpt4o?api-version=2024-10-21"
    api_key: azure-key
    preset: azure
models: {"*": az}
""",
        {},
    )
    upstream = config.upstreams["az"]
    assert upstream.url == (
        "https://res.openai.azure.com/openai/deployments/gpt4o/chat/completions"
        "?api-version=2024-10-21"
    )
    headers = UpstreamClient(None, Clock()).headersFor(upstream, "caller")  # type: ignore[arg-type]
    assert headers["api-key"] == "azure-key"
    assert "Authorization" not in headers


# -- reasoning in answers ---------------------------------------------------------------


def answer(message: dict[str, Any]) -> dict[str, Any]:
    return {"choices": [{"message": {"role": "assistant", **message}, "finish_reason": "stop"}]}


@pytest.mark.parametrize(
    "message",
    [
        {"content": "Hi", "reasoning_content": "Because."},
        {"content": "Hi", "reasoning": "Because."},
        {"content": "Hi", "reasoning_details": [{"type": "reasoning.text", "text": "Because."}]},
        {
            "content": "Hi",
            "reasoning_details": [
                {"type": "reasoning.summary", "summary": "Because."},
                {"type": "reasoning.encrypted", "data": "xx"},
            ],
        },
    ],
)
def test_reasoning_fields_become_a_thinking_block(message: dict[str, Any]) -> None:
    out = fromOpenAI(answer(message), messageId="msg_1", model="claude-x")
    assert [b["type"] for b in out["content"]] == ["thinking", "text"]
    assert out["content"][0]["thinking"] == "Because."
    assert out["content"][0]["signature"].startswith(SIGNATURE_PREFIX)


def test_think_tags_only_when_asked() -> None:
    message = {"content": "<think>\nPondering.\n</think>\n\nThe answer."}
    plain = fromOpenAI(answer(message), messageId="msg_1", model="x")
    assert plain["content"] == [{"type": "text", "text": message["content"]}]
    tagged = fromOpenAI(answer(message), messageId="msg_1", model="x", thinkTags=True)
    assert tagged["content"][0]["thinking"] == "Pondering.\n"
    assert tagged["content"][1] == {"type": "text", "text": "The answer."}


@pytest.mark.parametrize(
    ("content", "thinking", "rest"),
    [
        ("<think>a</think>b", "a", "b"),
        ("  <think>a</think>\n\nb", "a", "b"),
        ("no tags here", "", "no tags here"),
        ("<thin", "", "<thin"),
        ("<think>never closed", "never closed", ""),
        ("text <think>late</think>", "", "text <think>late</think>"),
    ],
)
def test_split_think_tags(content: str, thinking: str, rest: str) -> None:
    assert splitThinkTags(content) == (thinking, rest)


def test_think_tag_splitter_at_every_cut() -> None:
    content = "<think>I wonder</think>\nYes."
    for cut in range(len(content) + 1):
        splitter = ThinkTagSplitter()
        pieces = splitter.feed(content[:cut]) + splitter.feed(content[cut:]) + splitter.finish()
        thinking = "".join(t for k, t in pieces if k == "thinking")
        text_ = "".join(t for k, t in pieces if k == "text")
        assert (thinking, text_) == ("I wonder", "Yes."), cut


def test_signature_is_ccprosys_own_and_stable() -> None:
    one = fromOpenAI(answer({"content": "x", "reasoning": "r"}), messageId="a", model="x")
    two = fromOpenAI(answer({"content": "y", "reasoning": "r"}), messageId="b", model="x")
    assert one["content"][0]["signature"] == two["content"][0]["signature"]
    assert not one["content"][0]["signature"].startswith("E")  # Anthropic's are base64 blobs


def test_whitespace_only_request_is_still_400() -> None:
    with pytest.raises(ProxyError):
        translate(body(user(text("  "))))


# -- tool names and schemas through the app -------------------------------------------

LONG = "mcp__company-knowledge-base__search_confluence_pages_by_label_and_space.v2"


def test_long_tool_names_are_shortened_and_mapped_back() -> None:
    from tests.support.fakes import completion, jsonReply, sseReply, toolCall
    from tests.support.harness import Harness, message, parseSSE

    tools = [{"name": LONG, "input_schema": {"type": "object", "properties": {}}}]
    history = [
        {"role": "user", "content": "search"},
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "t1", "name": LONG, "input": {}}],
        },
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "none"}],
        },
    ]
    h = Harness.build()
    request = message(tools=tools, tool_choice={"type": "tool", "name": LONG})
    request["messages"] = history
    h.upstream.queue(jsonReply({}))
    h.post(request)
    sent = h.upstream.last
    short = sent["tools"][0]["function"]["name"]
    assert short != LONG and len(short) <= 64
    assert sent["messages"][1]["tool_calls"][0]["function"]["name"] == short
    assert sent["tool_choice"]["function"]["name"] == short
    h.upstream.queue(jsonReply(completion(None, [toolCall(short, "{}", "c2")], "tool_calls")))
    assert h.post(request).json()["content"][0]["name"] == LONG
    h.upstream.queue(
        sseReply(
            [
                {
                    "choices": [
                        {
                            "index": 0,
                            "delta": {
                                "tool_calls": [
                                    {
                                        "index": 0,
                                        "id": "c3",
                                        "function": {"name": short, "arguments": "{}"},
                                    }
                                ]
                            },
                        }
                    ]
                },
                {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
            ]
        )
    )
    frames = parseSSE(h.post({**request, "stream": True}).body)
    starts = [d for n, d in frames if n == "content_block_start"]
    assert starts[0]["content_block"]["name"] == LONG


def test_gemini_preset_reduces_tool_schemas() -> None:
    from tests.support.harness import BASE_CONFIG, Harness, message

    h = Harness.build(
        BASE_CONFIG.replace("    retries: 0\n", "    retries: 0\n    preset: gemini\n")
    )
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "limit": {"type": "integer", "exclusiveMinimum": 0},
            "mode": {"type": ["string", "null"]},
        },
        "required": ["limit"],
    }
    h.post(message(tools=[{"name": "Read", "input_schema": schema}]))
    parameters = h.upstream.last["tools"][0]["function"]["parameters"]
    dumped = repr(parameters)
    for keyword in ("$schema", "additionalProperties", "exclusiveMinimum"):
        assert keyword not in dumped
    assert parameters["properties"]["mode"] == {"type": "string", "nullable": True}
    assert h.upstream.last["max_tokens"] == 100
