"""`api: responses` upstreams through the whole app, in memory (`Harness`): the body
sent to `/responses`, whole and streamed answers, errors before and inside the
stream, and a failover list mixing APIs (a chat upstream refuses with 503, a
Responses upstream answers: the client sees one clean answer)."""

from __future__ import annotations

from typing import Any

import pytest

from ccproxy.translate.responses import responsesSignature
from tests.support.fakes import jsonReply, sseReply
from tests.support.harness import Harness, message, parseSSE
from tests.test_app_toolsearch import ask, content
from tests.test_translate_responses import (
    LITELLM_ANSWER,
    OPENAI_ANSWER,
    OVERFLOW_FAILED,
    openaiStream,
)
from tests.test_translate_stream import accumulate, checkGrammar

CONFIG = """
upstreams:
  chat:
    url: http://chat.test/v1
    api_key: sk-chat
    retries: 0
  codex:
    api: responses
    url: http://codex.test/v1
    api_key: sk-codex
    retries: 0
    reasoning: reasoning_effort
models:
  claude-haiku-*: codex/gpt-5-codex-mini
  claude-*: [chat/big-model, codex/gpt-5-codex]
"""
HAIKU = "claude-haiku-4-5"


def events(body: bytes) -> list[dict[str, Any]]:
    frames = parseSSE(body)
    for name, data in frames:
        assert name == data["type"]
    return [data for _, data in frames]


def test_a_whole_answer_from_a_responses_upstream() -> None:
    h = Harness.build(CONFIG)
    h.upstream.queue(jsonReply(OPENAI_ANSWER))
    reply = h.post(
        message("list", model=HAIKU, thinking={"type": "enabled", "budget_tokens": 2000})
    )
    assert reply.status == 200, reply.body
    sent = h.upstream.received[-1]
    assert sent.path == "/v1/responses"
    assert sent.headers["authorization"] == "Bearer sk-codex"
    assert sent.body["model"] == "gpt-5-codex-mini"
    assert sent.body["input"] == [
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "list"}]}
    ]
    assert sent.body["reasoning"] == {"effort": "low", "summary": "auto"}
    assert sent.body["store"] is False
    answer = reply.json()
    assert [b["type"] for b in answer["content"]] == ["thinking", "text", "tool_use"]
    assert answer["content"][0]["signature"] == responsesSignature("codex", "gAAAA-enc")
    assert answer["model"] == HAIKU and answer["stop_reason"] == "tool_use"
    assert answer["usage"]["cache_read_input_tokens"] == 800


def test_litellms_whole_answer_through_the_app() -> None:
    h = Harness.build(CONFIG)
    h.upstream.queue(jsonReply(LITELLM_ANSWER))
    answer = h.post(message("read", model=HAIKU)).json()
    assert answer["content"][0]["name"] == "Read"


def test_a_streamed_answer_and_the_reasoning_going_back_next_turn() -> None:
    h = Harness.build(CONFIG)
    h.upstream.queue(sseReply(openaiStream(), done=False))
    reply = h.post(message("list", model=HAIKU, stream=True))
    assert reply.status == 200
    streamed = events(reply.body)
    checkGrammar(streamed)
    answer = accumulate(streamed)
    assert answer["content"][0]["signature"] == responsesSignature("codex", "gAAAA-enc")

    # The next turn sends the thinking back: a reasoning item with its encrypted content.
    h.upstream.queue(sseReply(openaiStream(), done=False))
    conversation = [
        {"role": "user", "content": "list"},
        {"role": "assistant", "content": answer["content"]},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "call_A", "content": "a b"}],
        },
    ]
    body = {**message(model=HAIKU, stream=True), "messages": conversation}
    assert h.post(body).status == 200
    items = h.upstream.received[-1].body["input"]
    assert [i["type"] for i in items] == [
        "message",
        "reasoning",
        "message",
        "function_call",
        "function_call_output",
    ]
    assert items[1]["encrypted_content"] == "gAAAA-enc"


def test_a_stream_cut_before_it_completes_ends_with_an_error_event() -> None:
    h = Harness.build(CONFIG)
    h.upstream.queue(sseReply(openaiStream()[:-1], done=True))
    streamed = events(h.post(message(model=HAIKU, stream=True)).body)
    assert streamed[0]["type"] == "message_start"
    assert streamed[-1]["type"] == "error"
    assert "before finishing" in streamed[-1]["error"]["message"]
    assert all(e["type"] != "message_stop" for e in streamed)


def test_an_overflow_said_in_response_failed_is_prompt_too_long() -> None:
    h = Harness.build(CONFIG)
    h.upstream.queue(sseReply([openaiStream()[0], OVERFLOW_FAILED], done=False))
    streamed = events(h.post(message(model=HAIKU, stream=True)).body)
    assert streamed[-1]["type"] == "error"
    assert streamed[-1]["error"]["type"] == "invalid_request_error"
    assert streamed[-1]["error"]["message"].startswith("prompt is too long")


def test_an_error_before_the_stream_keeps_its_status() -> None:
    h = Harness.build(CONFIG)
    h.upstream.queue(
        jsonReply({"error": {"message": "Invalid model", "type": "invalid_request_error"}}, 400)
    )
    reply = h.post(message(model=HAIKU, stream=True))
    assert reply.status == 400
    assert reply.json()["error"]["message"].endswith("Invalid model")


def test_a_failed_whole_answer_is_an_error() -> None:
    h = Harness.build(CONFIG)
    failed = {
        "status": "failed",
        "output": [],
        "error": {"code": "server_error", "message": "The server had an error"},
    }
    h.upstream.queue(jsonReply(failed))
    reply = h.post(message(model=HAIKU))
    assert reply.status == 502
    assert "The server had an error" in reply.json()["error"]["message"]


def test_failover_from_a_chat_upstream_to_a_responses_one() -> None:
    """The chat upstream refuses with 503; the Responses one answers: one clean
    stream, with the Responses body sent to the second."""
    h = Harness.build(CONFIG)
    h.upstream.queue(
        jsonReply({"error": {"message": "overloaded"}}, 503),
        sseReply(openaiStream(), done=False),
    )
    reply = h.post(message("list", stream=True))
    assert reply.status == 200
    streamed = events(reply.body)
    checkGrammar(streamed)
    assert [b["type"] for b in accumulate(streamed)["content"]] == ["thinking", "text", "tool_use"]
    first, second = h.upstream.received[-2:]
    assert first.path == "/v1/chat/completions" and first.body["model"] == "big-model"
    assert first.headers["authorization"] == "Bearer sk-chat"
    assert second.path == "/v1/responses" and second.body["model"] == "gpt-5-codex"
    assert second.headers["authorization"] == "Bearer sk-codex"
    assert "messages" not in second.body and second.body["input"]


def test_failover_to_a_responses_upstream_for_a_whole_answer() -> None:
    h = Harness.build(CONFIG)
    h.upstream.queue(jsonReply({"error": {"message": "overloaded"}}, 503), jsonReply(OPENAI_ANSWER))
    reply = h.post(message("list"))
    assert reply.status == 200
    assert reply.json()["content"][1] == {"type": "text", "text": "Listing."}


def callResponse(name: str, arguments: str, callId: str, used: tuple[int, int]) -> dict[str, Any]:
    call = {"type": "function_call", "call_id": callId, "name": name, "arguments": arguments}
    usage = {"input_tokens": used[0], "output_tokens": used[1]}
    return {"status": "completed", "output": [call], "usage": usage}


def callReply(stream: bool, response: dict[str, Any]) -> Any:
    if not stream:
        return jsonReply(response)
    call = response["output"][0]
    return sseReply(
        [
            {
                "type": "response.output_item.added",
                "output_index": 0,
                "item": {**call, "arguments": ""},
            },
            {
                "type": "response.function_call_arguments.delta",
                "output_index": 0,
                "delta": call["arguments"],
            },
            {"type": "response.output_item.done", "output_index": 0, "item": call},
            {"type": "response.completed", "response": response},
        ],
        done=False,
    )


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_ccproxys_tool_search_runs_its_rounds_on_a_responses_upstream(stream: bool) -> None:
    """Anthropic's server-side tool search, run by ccproxy: the Responses upstream
    calls the search function, ccproxy searches and asks again with the tool found
    (its call and result as function_call and function_call_output items)."""
    h = Harness.build(CONFIG)
    search = callResponse("tool_search_tool_regex", '{"query": "weather"}', "call_s", (100, 10))
    weather = callResponse("get_weather", '{"city": "Lyon"}', "call_w", (150, 12))
    reply = ask(h, stream, callReply(stream, search), callReply(stream, weather), model=HAIKU)
    assert reply.status == 200
    blocks, stop, used = content(reply, stream)
    assert [b["type"] for b in blocks] == ["server_tool_use", "tool_search_tool_result", "tool_use"]
    assert blocks[2]["name"] == "get_weather" and blocks[2]["input"] == {"city": "Lyon"}
    assert stop == "tool_use"
    assert (used["input_tokens"], used["output_tokens"]) == (250, 22)
    first, second = (r.body for r in h.upstream.received[-2:])
    assert [t["name"] for t in first["tools"]] == ["tool_search_tool_regex", "Bash"]
    assert [t["name"] for t in second["tools"]] == ["tool_search_tool_regex", "Bash", "get_weather"]
    assert [i["type"] for i in second["input"][-2:]] == ["function_call", "function_call_output"]
    assert "get_weather" in second["input"][-1]["output"]
