"""ccproxy's tool search through the app in memory: one Anthropic answer to the
client, several upstream calls behind it (ccproxy.web.searching).

A request offering `tool_search_tool_regex_20251119` with deferred tools: the
upstream first calls the search function, ccproxy runs the search, and asks the
upstream again with the found tool defined; the client gets `server_tool_use` and
`tool_search_tool_result` blocks, then the upstream's call of the found tool, and
the usage of both upstream calls.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from ccproxy.translate.toolsearch import MAX_ROUNDS
from tests.support.fakes import completion, jsonReply, sseReply, stallReply, toolCall
from tests.support.harness import BASE_CONFIG, Harness, fired, message, parseSSE, resultOf

SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}}
SEARCH = {"type": "tool_search_tool_regex_20251119", "name": "tool_search_tool_regex"}
BASH = {"name": "Bash", "description": "Run a command", "input_schema": SCHEMA}
TOOLS = [
    SEARCH,
    BASH,
    {
        "name": "get_weather",
        "description": "Weather",
        "input_schema": SCHEMA,
        "defer_loading": True,
    },
    {
        "name": "jira_create",
        "description": "Tickets",
        "input_schema": SCHEMA,
        "defer_loading": True,
    },
]
FOUND = [{"type": "tool_reference", "tool_name": "get_weather"}]


def chunk(delta: dict[str, Any] | None = None, finish: str | None = None) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": delta or {}, "finish_reason": finish}]}


def usage(prompt: int, completion: int) -> dict[str, Any]:
    return {"choices": [], "usage": {"prompt_tokens": prompt, "completion_tokens": completion}}


def callChunks(
    name: str, arguments: str, callId: str, text: str | None = None
) -> list[dict[str, Any]]:
    first: dict[str, Any] = {"role": "assistant", "content": text}
    start = {"index": 0, "id": callId, "type": "function", "function": {"name": name}}
    return [
        chunk(first),
        chunk({"tool_calls": [{**start, "function": {"name": name, "arguments": ""}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": arguments}}]}),
        chunk(finish="tool_calls"),
    ]


def searchReply(stream: bool, callId: str = "call_s", text: str | None = None) -> Any:
    arguments = '{"query": "weather"}'
    if stream:
        return sseReply(
            [*callChunks("tool_search_tool_regex", arguments, callId, text), usage(100, 10)]
        )
    return jsonReply(
        completion(
            text,
            [toolCall("tool_search_tool_regex", arguments, callId)],
            finish="tool_calls",
            usage={"prompt_tokens": 100, "completion_tokens": 10},
        )
    )


def weatherReply(stream: bool) -> Any:
    arguments = '{"city": "Lyon"}'
    if stream:
        return sseReply([*callChunks("get_weather", arguments, "call_w"), usage(150, 12)])
    return jsonReply(
        completion(
            None,
            [toolCall("get_weather", arguments, "call_w")],
            finish="tool_calls",
            usage={"prompt_tokens": 150, "completion_tokens": 12},
        )
    )


def ask(h: Harness, stream: bool, *replies: Any, **extra: Any) -> Any:
    h.upstream.queue(*replies)
    body = message("weather in Lyon?", tools=TOOLS, stream=stream, **extra)
    d = h.request("POST", "/v1/messages", body)
    for _ in range(10):
        h.flush()
    return resultOf(d)


def content(reply: Any, stream: bool) -> tuple[list[dict[str, Any]], str, dict[str, Any]]:
    """The answer's blocks, stop reason and usage, from JSON or rebuilt from events."""
    if not stream:
        body = reply.json()
        return body["content"], body["stop_reason"], body["usage"]
    frames = parseSSE(reply.body)
    assert [n for n, _ in frames].count("message_start") == 1
    blocks: list[dict[str, Any]] = []
    partial: dict[int, str] = {}
    for name, data in frames:
        if name == "content_block_start":
            assert data["index"] == len(blocks)  # numbered on across upstream calls
            blocks.append(dict(data["content_block"]))
        elif name == "content_block_delta" and data["delta"]["type"] == "input_json_delta":
            partial[data["index"]] = partial.get(data["index"], "") + data["delta"]["partial_json"]
        elif name == "content_block_delta" and data["delta"]["type"] == "text_delta":
            blocks[data["index"]]["text"] += data["delta"]["text"]
    for index, text in partial.items():
        blocks[index]["input"] = json.loads(text)
    delta = frames[-2][1]
    assert frames[-1][0] == "message_stop"
    return blocks, delta["delta"]["stop_reason"], delta["usage"]


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_the_model_searches_then_calls_what_it_found(stream: bool) -> None:
    h = Harness.build()
    reply = ask(h, stream, searchReply(stream), weatherReply(stream))
    assert reply.status == 200
    blocks, stop, used = content(reply, stream)
    assert blocks == [
        {
            "type": "server_tool_use",
            "id": "srvtoolu_call_s",
            "name": "tool_search_tool_regex",
            "input": {"query": "weather"},
        },
        {
            "type": "tool_search_tool_result",
            "tool_use_id": "srvtoolu_call_s",
            "content": {"type": "tool_search_tool_search_result", "tool_references": FOUND},
        },
        {"type": "tool_use", "id": "call_w", "name": "get_weather", "input": {"city": "Lyon"}},
    ]
    assert stop == "tool_use"
    assert used["input_tokens"] == 250
    assert used["output_tokens"] == 22

    first, second = (r.body for r in h.upstream.received)
    functions = [t["function"]["name"] for t in first["tools"]]
    assert functions == ["tool_search_tool_regex", "Bash"]  # deferred schemas held back
    assert [t["function"]["name"] for t in second["tools"]] == [*functions, "get_weather"]
    assert second["messages"][-2:] == [
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {
                    "id": "srvtoolu_call_s",
                    "type": "function",
                    "function": {
                        "name": "tool_search_tool_regex",
                        "arguments": '{"query":"weather"}',
                    },
                }
            ],
        },
        {
            "role": "tool",
            "tool_call_id": "srvtoolu_call_s",
            "content": "Tool get_weather is now available to call.",
        },
    ]


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_text_before_the_search_goes_upstream_again_with_the_search(stream: bool) -> None:
    h = Harness.build()
    final = (
        sseReply([chunk({"content": "Sunny."}), chunk(finish="stop"), usage(150, 2)])
        if stream
        else jsonReply(completion("Sunny."))
    )
    reply = ask(h, stream, searchReply(stream, text="Let me look."), final)
    blocks, stop, _ = content(reply, stream)
    assert [b["type"] for b in blocks] == [
        "text",
        "server_tool_use",
        "tool_search_tool_result",
        "text",
    ]
    assert blocks[0]["text"] == "Let me look."
    assert blocks[3]["text"] == "Sunny."
    assert stop == "end_turn"
    assert h.upstream.received[1].body["messages"][-2]["content"] == "Let me look."


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_searches_per_answer_are_bounded_then_the_turn_pauses(stream: bool) -> None:
    h = Harness.build()
    replies = [searchReply(stream, callId=f"call_{i}") for i in range(MAX_ROUNDS + 1)]
    reply = ask(h, stream, *replies, weatherReply(stream))
    blocks, stop, used = content(reply, stream)
    assert len(h.upstream.received) == MAX_ROUNDS + 1
    assert stop == "pause_turn"
    assert [b["type"] for b in blocks] == ["server_tool_use", "tool_search_tool_result"] * (
        MAX_ROUNDS + 1
    )
    assert used["input_tokens"] == 100 * (MAX_ROUNDS + 1)


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_the_same_upstream_call_id_in_two_rounds_makes_two_block_ids(stream: bool) -> None:
    h = Harness.build()
    reply = ask(h, stream, searchReply(stream), searchReply(stream), weatherReply(stream))
    blocks, _, _ = content(reply, stream)
    ids = [b["id"] for b in blocks if b["type"] == "server_tool_use"]
    assert ids == ["srvtoolu_call_s", "srvtoolu_call_s_2"]


def test_a_search_does_not_wait_on_the_slot_its_own_answer_holds() -> None:
    """With one request at a time allowed upstream, the second call still goes."""
    h = Harness.build(
        """
upstreams:
  up:
    url: http://upstream.test/v1
    max_concurrent: 1
    queue_timeout: 5
models:
  "*": up/big-model
"""
    )
    reply = ask(h, True, searchReply(True), weatherReply(True))
    assert reply.status == 200
    assert content(reply, True)[1] == "tool_use"
    assert len(h.upstream.received) == 2


def test_a_later_turn_carries_the_search_back_as_its_call_and_answer() -> None:
    """The client sends the answer back with its tool's result: the found tool
    stays defined, the search reads as the call it was."""
    h = Harness.build()
    first = ask(h, False, searchReply(False), weatherReply(False)).json()
    body = message("weather in Lyon?", tools=TOOLS)
    body["messages"] += [
        {"role": "assistant", "content": first["content"]},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "call_w", "content": "sun"}],
        },
    ]
    h.upstream.queue(jsonReply(completion("Sunny in Lyon.")))
    assert h.post(body).json()["content"] == [{"type": "text", "text": "Sunny in Lyon."}]
    sent = h.upstream.last
    assert [t["function"]["name"] for t in sent["tools"]] == [
        "tool_search_tool_regex",
        "Bash",
        "get_weather",
    ]
    assert [m["role"] for m in sent["messages"]] == [
        "user",
        "assistant",
        "tool",
        "assistant",
        "tool",
    ]


def test_max_duration_ends_a_stream_that_waits_on_its_next_round() -> None:
    h = Harness.build(BASE_CONFIG + "max_duration: 10\n")
    h.upstream.queue(searchReply(True), stallReply())
    d = h.request("POST", "/v1/messages", message("weather?", tools=TOOLS, stream=True))
    h.flush()
    assert len(h.upstream.received) == 2 and not fired(d)  # the second call hangs
    h.clock.advance(11)
    h.flush()
    frames = parseSSE(resultOf(d).body)
    named = [n for n, _ in frames]
    assert "ping" in named  # the client heard from ccproxy while the next round was awaited
    assert [n for n in named if n != "ping"][-3:] == [
        "content_block_start",
        "content_block_stop",
        "error",
    ]
    assert "longer than 10 s" in frames[-1][1]["error"]["message"]
    assert h.upstream.disconnected == 1
    assert h.app.inFlight == 0


def test_a_client_that_leaves_while_the_next_round_is_awaited_stops_it() -> None:
    from tests.test_disconnect import connect, hangUp

    h = Harness.build()
    h.upstream.queue(searchReply(True), stallReply())
    channel, _ = connect(h, message("weather?", tools=TOOLS, stream=True))
    for _ in range(5):
        h.flush()
    assert len(h.upstream.received) == 2
    hangUp(channel)
    h.flush()
    assert h.upstream.disconnected == 1
    assert h.app.inFlight == 0
    assert h.app.dispatcher.health(["up"])["up"].active == 0  # every slot given back
