"""The Responses API translation without a reactor: the request (`toResponses`), the
whole answer (`fromResponses`) and the stream (`ResponsesStreamTranslator`), table
by table, with recorded streams of real servers (LiteLLM 1.82.6's `/v1/responses`
in front of a chat/completions model; OpenAI's own event shapes, from the `openai`
package's types); and a property test holding any valid event sequence to a
grammatical Anthropic stream equal to the whole answer's translation."""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ccproxy.errors import ProxyError
from ccproxy.translate.dialect import Profile
from ccproxy.translate.names import ToolNames
from ccproxy.translate.request import toOpenAI
from ccproxy.translate.responses import (
    SIGNATURE_PREFIX,
    encryptedContent,
    fromResponses,
    responsesSignature,
    toResponses,
)
from ccproxy.translate.responsestream import ResponsesStreamTranslator
from ccproxy.translate.thinking import SIGNATURE_PREFIX as OWN_SIGNATURE
from ccproxy.translate.tokens import estimateTokens
from tests.support.examples import examples
from tests.test_translate_stream import accumulate, drive

MESSAGE_ID = "msg_test"
MODEL = "claude-test"
UPSTREAM = "codex"
REASONING = Profile(reasoning="reasoning_effort")

Event = dict[str, Any]


def translate(body: dict[str, Any], profile: Profile | None = None, **kw: Any) -> dict[str, Any]:
    return toResponses(
        body,
        model="gpt-5-codex",
        profile=profile or Profile(),
        defaultMaxTokens=1000,
        upstream=kw.pop("upstream", UPSTREAM),
        **kw,
    )


def request(messages: list[Any], **extra: Any) -> dict[str, Any]:
    return {"model": "claude-sonnet-4-5", "max_tokens": 100, "messages": messages, **extra}


# -- the request -----------------------------------------------------------------


def test_a_conversation_becomes_instructions_and_input_items() -> None:
    body = request(
        [
            {"role": "user", "content": "list the files"},
            {
                "role": "assistant",
                "content": [
                    {"type": "text", "text": "Looking."},
                    {"type": "tool_use", "id": "call_1", "name": "Bash", "input": {"c": "ls"}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "call_1", "content": "a.txt"},
                    {"type": "text", "text": "and now?"},
                    {
                        "type": "image",
                        "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"},
                    },
                    {
                        "type": "document",
                        "source": {
                            "type": "base64",
                            "media_type": "application/pdf",
                            "data": "JVBE",
                        },
                    },
                ],
            },
        ],
        system=[{"type": "text", "text": "You are terse."}],
        stream=True,
        temperature=0.5,
    )
    assert translate(body) == {
        "model": "gpt-5-codex",
        "instructions": "You are terse.",
        "input": [
            {
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "list the files"}],
            },
            {
                "type": "message",
                "role": "assistant",
                "content": [{"type": "output_text", "text": "Looking."}],
            },
            {
                "type": "function_call",
                "call_id": "call_1",
                "name": "Bash",
                "arguments": '{"c":"ls"}',
            },
            {"type": "function_call_output", "call_id": "call_1", "output": "a.txt"},
            {
                "type": "message",
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "and now?"},
                    {
                        "type": "input_image",
                        "image_url": "data:image/png;base64,AAAA",
                        "detail": "auto",
                    },
                    {
                        "type": "input_file",
                        "filename": "document.pdf",
                        "file_data": "data:application/pdf;base64,JVBE",
                    },
                ],
            },
        ],
        "max_output_tokens": 100,
        "temperature": 0.5,
        "store": False,
        "stream": True,
    }


def test_system_blocks_are_one_instructions_text_whatever_the_profile() -> None:
    system = [
        {"type": "text", "text": "You are terse.", "cache_control": {"type": "ephemeral"}},
        {"type": "text", "text": "Use tools."},
    ]
    body = request([{"role": "user", "content": "go"}], system=system)
    for profile in (Profile(), Profile(cacheControl=True, systemRole="developer")):
        assert translate(body, profile)["instructions"] == "You are terse.\n\nUse tools."


def test_tools_and_tool_choice_are_flat_function_tools_with_shortened_names() -> None:
    long = "mcp__server__" + "x" * 80
    body = request(
        [{"role": "user", "content": "go"}],
        tools=[
            {"name": "Read", "description": "reads", "input_schema": {"type": "object"}},
            {"name": long, "input_schema": {"type": "object", "properties": {}}},
            {"type": "web_search_20250305", "name": "web_search"},
        ],
        tool_choice={"type": "tool", "name": long, "disable_parallel_tool_use": True},
    )
    names = ToolNames.fromRequest(body)
    out = translate(body, names=names)
    short = names.toUpstream(long)
    assert len(short) <= 64 and short != long
    assert out["tools"] == [
        {
            "type": "function",
            "name": "Read",
            "description": "reads",
            "parameters": {"type": "object"},
            "strict": False,
        },
        {
            "type": "function",
            "name": short,
            "parameters": {"type": "object", "properties": {}},
            "strict": False,
        },
    ]
    assert out["tool_choice"] == {"type": "function", "name": short}
    assert out["parallel_tool_calls"] is False


@pytest.mark.parametrize(
    ("choice", "expected"),
    [({"type": "auto"}, "auto"), ({"type": "any"}, "required"), ({"type": "none"}, "none")],
)
def test_tool_choice_words(choice: dict[str, Any], expected: str) -> None:
    body = request([{"role": "user", "content": "go"}], tools=[{"name": "Read"}])
    assert translate({**body, "tool_choice": choice})["tool_choice"] == expected


def test_gemini_schema_preset_applies_to_responses_tools() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string"}}, "$schema": "x"}
    body = request(
        [{"role": "user", "content": "go"}], tools=[{"name": "T", "input_schema": schema}]
    )
    out = translate(body, Profile(schema="gemini"))
    assert "$schema" not in out["tools"][0]["parameters"]


@pytest.mark.parametrize(
    ("profile", "extra", "expected"),
    [
        pytest.param(
            REASONING,
            {"thinking": {"type": "enabled", "budget_tokens": 20000}},
            "high",
            id="budget",
        ),
        pytest.param(REASONING, {"output_config": {"effort": "low"}}, "low", id="effort"),
        pytest.param(REASONING, {"thinking": {"type": "disabled"}}, None, id="disabled"),
        pytest.param(
            Profile(), {"output_config": {"effort": "low"}}, None, id="profile-without-reasoning"
        ),
    ],
)
def test_thinking_and_effort_become_reasoning(
    profile: Profile, extra: dict[str, Any], expected: str | None
) -> None:
    out = translate(request([{"role": "user", "content": "go"}], **extra), profile)
    if expected is None:
        assert "reasoning" not in out and "include" not in out
    else:
        assert out["reasoning"] == {"effort": expected, "summary": "auto"}
        assert out["include"] == ["reasoning.encrypted_content"]


def test_stateless_and_nothing_chat_only() -> None:
    body = request(
        [{"role": "user", "content": "go"}], stop_sequences=["END"], stream=True, top_k=3
    )
    out = translate(
        body, Profile(promptCacheKey=True, extraBody={"service_tier": "flex"}), cacheKey="s1"
    )
    assert out["store"] is False and "previous_response_id" not in out
    assert out["prompt_cache_key"] == "s1" and out["service_tier"] == "flex"
    for chatOnly in ("messages", "stop", "stream_options", "max_completion_tokens", "top_k"):
        assert chatOnly not in out


def thinking(text: str, signature: str) -> dict[str, Any]:
    return {"type": "thinking", "thinking": text, "signature": signature}


def test_reasoning_from_this_upstream_goes_back_as_a_reasoning_item() -> None:
    body = request(
        [
            {"role": "user", "content": "go"},
            {
                "role": "assistant",
                "content": [
                    thinking("I should list.", responsesSignature(UPSTREAM, "ENC1")),
                    thinking("not ours", responsesSignature("other", "ENC2")),
                    thinking("chat's", OWN_SIGNATURE + "abc"),
                    thinking("anthropic's", "EqQBCkYIBxgCKkA"),
                    {"type": "tool_use", "id": "c1", "name": "Bash", "input": {}},
                ],
            },
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "c1"}]},
        ]
    )
    items = translate(body)["input"]
    assert items[1] == {
        "type": "reasoning",
        "summary": [{"type": "summary_text", "text": "I should list."}],
        "encrypted_content": "ENC1",
    }
    assert [i["type"] for i in items] == [
        "message",
        "reasoning",
        "function_call",
        "function_call_output",
    ]
    assert items[3] == {"type": "function_call_output", "call_id": "c1", "output": ""}


@pytest.mark.parametrize(
    ("signature", "expected"),
    [
        (responsesSignature(UPSTREAM, "abc:def"), "abc:def"),
        (responsesSignature("other", "abc"), None),
        (SIGNATURE_PREFIX + UPSTREAM, None),
        (SIGNATURE_PREFIX + UPSTREAM + ":", None),
        ("EqQBCkYIBxgCKkA", None),
        (None, None),
    ],
)
def test_encrypted_content_is_read_only_from_this_upstreams_signatures(
    signature: Any, expected: str | None
) -> None:
    assert encryptedContent(signature, UPSTREAM) == expected


def test_a_bad_request_is_the_clients_400() -> None:
    with pytest.raises(ProxyError) as caught:
        translate({"model": "m", "messages": [{"role": "user", "content": 3}]})
    assert caught.value.status == 400 and "messages.0.content" in caught.value.message


# -- the whole answer --------------------------------------------------------------


def whole(data: dict[str, Any], **kw: Any) -> dict[str, Any]:
    return fromResponses(data, messageId=MESSAGE_ID, model=MODEL, upstream=UPSTREAM, **kw)


OPENAI_ANSWER = {
    "id": "resp_1",
    "object": "response",
    "status": "completed",
    "error": None,
    "incomplete_details": None,
    "output": [
        {
            "id": "rs_1",
            "type": "reasoning",
            "summary": [
                {"type": "summary_text", "text": "**Plan**"},
                {"type": "summary_text", "text": "List files."},
            ],
            "encrypted_content": "gAAAA-enc",
        },
        {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "status": "completed",
            "content": [{"type": "output_text", "text": "Listing.", "annotations": []}],
        },
        {
            "id": "fc_1",
            "type": "function_call",
            "call_id": "call_A",
            "name": "Bash",
            "arguments": '{"command":"ls"}',
            "status": "completed",
        },
    ],
    "usage": {
        "input_tokens": 1000,
        "input_tokens_details": {"cached_tokens": 800, "cache_write_tokens": 0},
        "output_tokens": 50,
        "output_tokens_details": {"reasoning_tokens": 30},
        "total_tokens": 1050,
    },
}


def test_a_whole_answer() -> None:
    assert whole(OPENAI_ANSWER) == {
        "id": MESSAGE_ID,
        "type": "message",
        "role": "assistant",
        "model": MODEL,
        "content": [
            {
                "type": "thinking",
                "thinking": "**Plan**\n\nList files.",
                "signature": responsesSignature(UPSTREAM, "gAAAA-enc"),
            },
            {"type": "text", "text": "Listing."},
            {"type": "tool_use", "id": "call_A", "name": "Bash", "input": {"command": "ls"}},
        ],
        "stop_reason": "tool_use",
        "stop_sequence": None,
        "usage": {
            "input_tokens": 200,
            "output_tokens": 50,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 800,
        },
    }


# LiteLLM 1.82.6, /v1/responses in front of a chat/completions model, stream: false.
LITELLM_ANSWER = {
    "id": "resp_bGl0ZWxsbQ==",
    "created_at": 1,
    "error": None,
    "incomplete_details": None,
    "model": "scripted-model",
    "object": "chat.completion",
    "output": [
        {
            "type": "message",
            "id": "chatcmpl-1",
            "status": "completed",
            "role": "assistant",
            "content": [{"type": "output_text", "text": None, "annotations": []}],
            "phase": None,
        },
        {
            "arguments": '{"file_path":"/tmp/notes.txt"}',
            "call_id": "call_read_1",
            "name": "Read",
            "type": "function_call",
            "id": "call_read_1",
            "status": "completed",
        },
    ],
    "status": "completed",
    "usage": {
        "input_tokens": 11,
        "input_tokens_details": None,
        "output_tokens": 7,
        "output_tokens_details": None,
        "total_tokens": 18,
    },
}


def test_litellms_whole_answer() -> None:
    message = whole(LITELLM_ANSWER)
    assert message["content"] == [
        {
            "type": "tool_use",
            "id": "call_read_1",
            "name": "Read",
            "input": {"file_path": "/tmp/notes.txt"},
        }
    ]
    assert message["stop_reason"] == "tool_use"
    assert message["usage"]["input_tokens"] == 11 and message["usage"]["output_tokens"] == 7


@pytest.mark.parametrize(
    ("status", "details", "content", "expected"),
    [
        ("incomplete", {"reason": "max_output_tokens"}, None, "max_tokens"),
        ("incomplete", {"reason": "content_filter"}, None, "refusal"),
        ("completed", None, [{"type": "refusal", "refusal": "I can't."}], "refusal"),
        ("completed", None, None, "end_turn"),
    ],
)
def test_stop_reasons(status: str, details: Any, content: Any, expected: str) -> None:
    parts = content or [{"type": "output_text", "text": "Hello"}]
    data = {
        "status": status,
        "incomplete_details": details,
        "output": [{"type": "message", "content": parts}],
    }
    assert whole(data)["stop_reason"] == expected


def test_reasoning_text_without_a_summary_and_a_reasoning_item_with_nothing() -> None:
    data = {
        "status": "completed",
        "output": [
            {
                "type": "reasoning",
                "summary": [],
                "content": [{"type": "reasoning_text", "text": "Hmm."}],
            },
            {"type": "reasoning", "summary": []},
            {"type": "message", "content": [{"type": "output_text", "text": "Hi"}]},
        ],
    }
    content = whole(data)["content"]
    assert [b["type"] for b in content] == ["thinking", "text"]
    assert content[0]["thinking"] == "Hmm." and content[0]["signature"].startswith(OWN_SIGNATURE)


@pytest.mark.parametrize("data", [[], {"output": "x"}, {"status": "completed"}])
def test_an_answer_without_output_is_a_502(data: Any) -> None:
    with pytest.raises(ProxyError) as caught:
        whole(data)
    assert caught.value.status == 502


# -- the stream --------------------------------------------------------------------


def run(events: list[Any], sawDone: bool = False, **kw: Any) -> list[Event]:
    return drive(
        ResponsesStreamTranslator(MESSAGE_ID, MODEL, upstream=UPSTREAM, **kw), events, sawDone
    )


def LITELLM_STREAM(text: str = "Scripted reply.") -> list[Event]:
    """What LiteLLM 1.82.6 streams for a text answer (`data:` lines only, no
    `event:` names, `sequence_number` on one event, `[DONE]` at the end, the final
    response's `object` "chat.completion", usage without input details)."""
    item = {
        "id": "msg_4341",
        "type": "message",
        "role": "assistant",
        "status": "in_progress",
        "content": [],
    }
    response = {"id": "resp_e4", "object": "response", "output": [], "status": "in_progress"}
    pieces = [text[i : i + 5] for i in range(0, len(text), 5)]
    return [
        {"type": "response.created", "response": response},
        {"type": "response.in_progress", "response": response},
        {"type": "response.output_item.added", "output_index": 0, "item": item},
        *[
            {
                "type": "response.output_text.delta",
                "item_id": "msg_4341",
                "output_index": 0,
                "content_index": 0,
                "delta": p,
            }
            for p in pieces
        ],
        {
            "type": "response.output_text.done",
            "item_id": "msg_4341",
            "output_index": 0,
            "content_index": 0,
            "text": text,
        },
        {
            "type": "response.output_item.done",
            "output_index": 0,
            "sequence_number": 1,
            "item": {
                **item,
                "status": "completed",
                "content": [{"type": "output_text", "text": text, "annotations": []}],
            },
        },
        {
            "type": "response.completed",
            "response": {
                "id": "resp_bGl0",
                "object": "chat.completion",
                "model": "custom_openai/scripted-model",
                "output": [
                    {
                        "type": "message",
                        "id": "chatcmpl-scripted",
                        "status": "completed",
                        "role": "assistant",
                        "content": [{"type": "output_text", "text": text, "annotations": []}],
                    }
                ],
                "status": "completed",
                "usage": {
                    "input_tokens": 120,
                    "output_tokens": 12,
                    "output_tokens_details": {"reasoning_tokens": 0},
                    "total_tokens": 132,
                },
            },
        },
    ]


def test_litellms_text_stream() -> None:
    message = accumulate(run(LITELLM_STREAM(), sawDone=True))
    assert message["content"] == [{"type": "text", "text": "Scripted reply."}]
    assert message["stop_reason"] == "end_turn"
    assert message["usage"] == {
        "input_tokens": 120,
        "output_tokens": 12,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
    }


def openaiStream() -> list[Event]:
    """OpenAI's events for OPENAI_ANSWER, shaped as the `openai` package's types say."""
    reasoning = {"id": "rs_1", "type": "reasoning", "summary": []}
    message = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "status": "in_progress",
        "content": [],
    }
    call = {
        "id": "fc_1",
        "type": "function_call",
        "call_id": "call_A",
        "name": "Bash",
        "arguments": "",
        "status": "in_progress",
    }
    out = OPENAI_ANSWER["output"]
    events: list[Event] = [
        {
            "type": "response.created",
            "sequence_number": 0,
            "response": {"status": "in_progress", "output": []},
        },
        {"type": "response.output_item.added", "output_index": 0, "item": reasoning},
        {
            "type": "response.reasoning_summary_part.added",
            "output_index": 0,
            "item_id": "rs_1",
            "summary_index": 0,
            "part": {"type": "summary_text", "text": ""},
        },
        {
            "type": "response.reasoning_summary_text.delta",
            "output_index": 0,
            "item_id": "rs_1",
            "summary_index": 0,
            "delta": "**Plan",
        },
        {
            "type": "response.reasoning_summary_text.delta",
            "output_index": 0,
            "item_id": "rs_1",
            "summary_index": 0,
            "delta": "**",
        },
        {
            "type": "response.reasoning_summary_text.delta",
            "output_index": 0,
            "item_id": "rs_1",
            "summary_index": 1,
            "delta": "List files.",
        },
        {"type": "response.output_item.done", "output_index": 0, "item": out[0]},
        {"type": "response.output_item.added", "output_index": 1, "item": message},
        {
            "type": "response.content_part.added",
            "output_index": 1,
            "item_id": "msg_1",
            "content_index": 0,
            "part": {"type": "output_text", "text": ""},
        },
        {
            "type": "response.output_text.delta",
            "output_index": 1,
            "item_id": "msg_1",
            "content_index": 0,
            "delta": "Listing.",
        },
        {"type": "response.output_item.done", "output_index": 1, "item": out[1]},
        {"type": "response.output_item.added", "output_index": 2, "item": call},
        {
            "type": "response.function_call_arguments.delta",
            "output_index": 2,
            "item_id": "fc_1",
            "delta": '{"command":',
        },
        {
            "type": "response.function_call_arguments.delta",
            "output_index": 2,
            "item_id": "fc_1",
            "delta": '"ls"}',
        },
        {
            "type": "response.function_call_arguments.done",
            "output_index": 2,
            "item_id": "fc_1",
            "arguments": '{"command":"ls"}',
        },
        {"type": "response.output_item.done", "output_index": 2, "item": out[2]},
        {"type": "response.completed", "response": OPENAI_ANSWER},
    ]
    return events


def test_openai_stream_equals_its_whole_answer() -> None:
    events = run(openaiStream())
    assert accumulate(events) == whole(OPENAI_ANSWER)
    # The signature comes as soon as the reasoning item is done, in its own delta.
    signature = [
        e
        for e in events
        if e["type"] == "content_block_delta" and e["delta"]["type"] == "signature_delta"
    ]
    assert signature[0]["delta"]["signature"] == responsesSignature(UPSTREAM, "gAAAA-enc")


def test_a_stream_cut_before_it_completes_is_an_error_even_with_done() -> None:
    translator = ResponsesStreamTranslator(MESSAGE_ID, MODEL, upstream=UPSTREAM)
    for event in LITELLM_STREAM()[:-1]:
        translator.feed(event)
    with pytest.raises(ProxyError) as caught:
        translator.finish(sawDone=True)
    assert caught.value.status == 502 and "before finishing" in caught.value.message


def test_incomplete_is_max_tokens() -> None:
    events = LITELLM_STREAM()
    events[-1] = {
        "type": "response.incomplete",
        "response": {"status": "incomplete", "incomplete_details": {"reason": "max_output_tokens"}},
    }
    assert accumulate(run(events))["stop_reason"] == "max_tokens"


# OpenAI's words for a prompt too long, in a stream (`context_length_exceeded`).
OVERFLOW_FAILED = {
    "type": "response.failed",
    "response": {
        "status": "failed",
        "error": {
            "code": "context_length_exceeded",
            "message": "Your input exceeds the context window of this model.",
        },
    },
}


@pytest.mark.parametrize(
    ("event", "status", "errorType", "words"),
    [
        pytest.param(
            {"type": "error", "code": "rate_limit_exceeded", "message": "Slow down", "param": None},
            502,
            "api_error",
            "Slow down",
            id="error-event",
        ),
        pytest.param(
            {"error": {"code": 503, "message": "Overloaded, chat style"}},
            503,
            "overloaded_error",
            "Overloaded, chat style",
            id="chat-style-error",
        ),
        pytest.param(
            {"type": "error", "error": {"code": "429", "message": "Too many"}},
            429,
            "overloaded_error",
            "Too many",
            id="error-event-nested",
        ),
        pytest.param(
            {
                "type": "response.failed",
                "response": {
                    "status": "failed",
                    "error": {"code": "server_error", "message": "Boom"},
                },
            },
            502,
            "api_error",
            "Boom",
            id="failed",
        ),
        pytest.param(
            OVERFLOW_FAILED,
            400,
            "invalid_request_error",
            "prompt is too long",
            id="failed-overflow",
        ),
    ],
)
def test_errors_in_the_stream(event: Event, status: int, errorType: str, words: str) -> None:
    translator = ResponsesStreamTranslator(MESSAGE_ID, MODEL, upstream=UPSTREAM, contextWindow=1000)
    translator.feed(LITELLM_STREAM()[2])
    with pytest.raises(ProxyError) as caught:
        translator.feed(event)
    assert (caught.value.status, caught.value.errorType) == (status, errorType)
    assert words in caught.value.message


@pytest.mark.parametrize("event", [[], "x", {"delta": "no type"}])
def test_garbage_events_are_the_upstreams_fault(event: Any) -> None:
    translator = ResponsesStreamTranslator(MESSAGE_ID, MODEL, upstream=UPSTREAM)
    with pytest.raises(ProxyError) as caught:
        translator.feed(event)
    assert caught.value.status == 502


def test_unknown_events_are_ignored() -> None:
    events = LITELLM_STREAM()
    events.insert(3, {"type": "response.web_search_call.searching", "output_index": 5})
    events.insert(3, {"type": "keepalive"})
    assert accumulate(run(events))["content"] == [{"type": "text", "text": "Scripted reply."}]


def test_a_stream_of_only_the_finished_response() -> None:
    events = run([{"type": "response.completed", "response": OPENAI_ANSWER}])
    assert accumulate(events) == whole(OPENAI_ANSWER)


def test_arguments_before_the_calls_name_wait_for_it() -> None:
    events = run(
        [
            {"type": "response.function_call_arguments.delta", "output_index": 0, "delta": '{"a":'},
            {"type": "response.function_call_arguments.delta", "output_index": 0, "delta": "1}"},
            {
                "type": "response.output_item.done",
                "output_index": 0,
                "item": {"type": "function_call", "name": "T", "arguments": '{"a":1}'},
            },
            {"type": "response.completed", "response": {"status": "completed", "output": []}},
        ]
    )
    message = accumulate(events)
    assert message["content"] == [
        {"type": "tool_use", "id": "toolu_test_0", "name": "T", "input": {"a": 1}}
    ]
    assert message["stop_reason"] == "tool_use"


def test_a_server_tool_call_is_a_server_tool_use_with_its_arguments() -> None:
    translator = ResponsesStreamTranslator(
        MESSAGE_ID, MODEL, upstream=UPSTREAM, serverTools=frozenset({"tool_search"})
    )
    translator.start()
    call = {"type": "function_call", "call_id": "c9", "name": "tool_search", "arguments": ""}
    events = translator.feed(
        {"type": "response.output_item.added", "output_index": 0, "item": call}
    )
    events += translator.feed(
        {"type": "response.function_call_arguments.delta", "output_index": 0, "delta": '{"q":"x"}'}
    )
    translator.feed({"type": "response.completed", "response": {"status": "completed"}})
    assert events[0]["content_block"]["type"] == "server_tool_use"
    assert translator.serverCalls() == [("srvtoolu_c9", '{"q":"x"}')]
    assert not translator.clientCalls()


# -- property: any valid event sequence equals the whole answer --------------------


@dataclass
class Item:
    kind: str
    texts: list[str] = field(default_factory=list)
    """message: its text pieces; reasoning: its summary parts (or its text)."""
    summary: bool = True
    encrypted: str | None = None
    callId: str | None = None
    name: str = ""
    arguments: dict[str, Any] = field(default_factory=dict)

    def whole(self) -> dict[str, Any]:
        if self.kind == "message":
            text = "".join(self.texts)
            return {
                "type": "message",
                "role": "assistant",
                "content": [{"type": "output_text", "text": text}],
            }
        if self.kind == "reasoning":
            item: dict[str, Any] = {"type": "reasoning", "summary": []}
            if self.summary:
                item["summary"] = [{"type": "summary_text", "text": t} for t in self.texts]
            else:
                item["content"] = [{"type": "reasoning_text", "text": "".join(self.texts)}]
            if self.encrypted:
                item["encrypted_content"] = self.encrypted
            return item
        call = {"type": "function_call", "name": self.name, "arguments": json.dumps(self.arguments)}
        if self.callId:
            call["call_id"] = self.callId
        return call


TEXT = st.text(alphabet=st.sampled_from("ab \n*é😀"), max_size=8)
NAME = st.sampled_from(["Read", "Bash", "mcp__x__y"])


@st.composite
def items(draw: st.DrawFn) -> Item:
    kind = draw(st.sampled_from(["message", "reasoning", "function_call"]))
    if kind == "function_call":
        return Item(
            kind,
            callId=draw(st.one_of(st.none(), st.sampled_from(["call_1", "call_2", "fc_x"]))),
            name=draw(NAME),
            arguments=draw(st.dictionaries(st.sampled_from("pq"), TEXT, max_size=2)),
        )
    texts = draw(st.lists(TEXT.filter(bool), min_size=0 if kind == "message" else 1, max_size=3))
    if kind == "reasoning":
        return Item(
            kind,
            texts,
            summary=draw(st.booleans()),
            encrypted=draw(st.one_of(st.none(), st.just("gAAAA=="))),
        )
    return Item(kind, texts)


def pieces(data: st.DataObject, text: str) -> list[str]:
    cuts = sorted(data.draw(st.lists(st.integers(0, len(text)), max_size=4)))
    bounds = [0, *cuts, len(text)]
    return [text[a:b] for a, b in itertools.pairwise(bounds) if text[a:b]]


def eventsFor(answer: list[Item], response: dict[str, Any], data: st.DataObject) -> list[Event]:
    """One valid Responses stream of `answer`; each item's deltas may be left out
    (its whole `done` then says it), its `added` too."""
    events: list[Event] = [{"type": "response.created", "response": {"status": "in_progress"}}]
    for index, item in enumerate(answer):
        whole = item.whole()
        if data.draw(st.booleans()):
            added = (
                {**whole, "arguments": ""} if item.kind == "function_call" else {"type": item.kind}
            )
            events.append(
                {"type": "response.output_item.added", "output_index": index, "item": added}
            )
        if data.draw(st.booleans()):
            if item.kind == "message":
                for piece in pieces(data, "".join(item.texts)):
                    events.append(
                        {
                            "type": "response.output_text.delta",
                            "output_index": index,
                            "delta": piece,
                        }
                    )
            elif item.kind == "reasoning" and item.summary:
                for part, text in enumerate(item.texts):
                    for piece in pieces(data, text):
                        events.append(
                            {
                                "type": "response.reasoning_summary_text.delta",
                                "output_index": index,
                                "summary_index": part,
                                "delta": piece,
                            }
                        )
            elif item.kind == "reasoning":
                for piece in pieces(data, "".join(item.texts)):
                    events.append(
                        {
                            "type": "response.reasoning_text.delta",
                            "output_index": index,
                            "delta": piece,
                        }
                    )
            else:
                for piece in pieces(data, whole["arguments"]):
                    events.append(
                        {
                            "type": "response.function_call_arguments.delta",
                            "output_index": index,
                            "delta": piece,
                        }
                    )
        events.append({"type": "response.output_item.done", "output_index": index, "item": whole})
    end = "response.completed" if response["status"] == "completed" else "response.incomplete"
    events.append({"type": end, "response": response})
    return events


PROPERTY = settings(
    max_examples=examples(300),
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@PROPERTY
@given(
    answer=st.lists(items(), max_size=5),
    status=st.sampled_from(["completed", "incomplete"]),
    usage=st.one_of(
        st.none(),
        st.fixed_dictionaries(
            {
                "input_tokens": st.integers(0, 10**6),
                "output_tokens": st.integers(0, 10**5),
                "input_tokens_details": st.fixed_dictionaries(
                    {"cached_tokens": st.integers(0, 10**6)}
                ),
            }
        ),
    ),
    onlyTheEnd=st.booleans(),
    data=st.data(),
)
def test_any_event_sequence_equals_the_whole_answer(
    answer: list[Item], status: str, usage: Any, onlyTheEnd: bool, data: st.DataObject
) -> None:
    response: dict[str, Any] = {"status": status, "output": [item.whole() for item in answer]}
    if status == "incomplete":
        response["incomplete_details"] = {"reason": "max_output_tokens"}
    if usage is not None:
        response["usage"] = usage
    if onlyTheEnd:
        events = [{"type": "response.completed", "response": response}]
    else:
        events = eventsFor(answer, response, data)
    streamed = accumulate(run(events))
    assert streamed == whole(response)


_KINDS = ["message", "reasoning", "function_call"]


@st.composite
def hostileEvents(draw: st.DrawFn) -> Event:
    """Any event of the vocabulary about any item, whatever that item was said to be."""
    where: dict[str, Any] = {"output_index": draw(st.sampled_from([0, 1]))}
    kind = draw(
        st.sampled_from(
            [
                "response.output_text.delta",
                "response.refusal.delta",
                "response.reasoning_summary_text.delta",
                "response.reasoning_text.delta",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.done",
                "response.output_item.added",
                "response.output_item.done",
            ]
        )
    )
    text = draw(st.sampled_from(["", " ", "x", '{"a":1}']))
    item = {
        "type": draw(st.sampled_from(_KINDS)),
        "name": "T",
        "call_id": "c",
        "arguments": text,
        "encrypted_content": "E",
        "content": [{"type": "output_text", "text": text}],
        "summary": [{"type": "summary_text", "text": text}],
    }
    return {"type": kind, **where, "delta": text, "arguments": text, "item": item}


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(events=st.lists(hostileEvents(), max_size=12))
def test_events_about_an_item_of_another_kind_keep_the_grammar(events: list[Event]) -> None:
    """A server that streams text into a call, reasoning into a message, arguments
    into a reasoning item...: each delta goes only in a block of its kind (a
    thinking delta into a text block broke the translator: AttributeError)."""
    done = {"type": "response.completed", "response": {"status": "completed", "output": []}}
    run([*events, done])


def test_a_responses_body_is_estimated_like_the_chat_body_of_the_same_request() -> None:
    """An overflow without numbers is said with ccproxy's estimate of the body sent."""
    body = request(
        [
            {"role": "user", "content": "read the file " * 200},
            {
                "role": "assistant",
                "content": [{"type": "tool_use", "id": "c1", "name": "Read", "input": {"p": "x"}}],
            },
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": "c1", "content": "y " * 500}],
            },
        ],
        system="be brief " * 50,
        tools=[{"name": "Read", "input_schema": {"type": "object"}}],
    )
    chat = toOpenAI(body, model="m", profile=Profile(), defaultMaxTokens=10)
    chatCount, responsesCount = estimateTokens(chat), estimateTokens(translate(body))
    assert abs(chatCount - responsesCount) <= 0.05 * chatCount
