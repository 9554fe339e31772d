"""The app in memory: a StubTreq client, the proxy, a StubTreq to a fake upstream."""

from __future__ import annotations

import os
import re
from typing import Any

import orjson
import pytest
from twisted.internet.defer import fail
from twisted.internet.error import ConnectionRefusedError, DNSLookupError
from twisted.web.test.requesthelper import DummyRequest

from ccproxy.web.call import Ids, newId, requestId
from tests.support.fakes import completion, jsonReply, rawReply, stallReply, toolCall
from tests.support.harness import BASE_CONFIG, Harness, fired, message, resultOf


@pytest.fixture
def h() -> Harness:
    return Harness.build()


def assertError(reply: Any, status: int, errorType: str, *fragments: str) -> dict[str, Any]:
    assert reply.status == status, reply.body
    assert reply.headers["content-type"] == "application/json"
    body = reply.json()
    assert body["type"] == "error"
    assert body["error"]["type"] == errorType
    assert body["request_id"].startswith("req_")
    for fragment in fragments:
        assert fragment in body["error"]["message"]
    return body


# -- the happy path ---------------------------------------------------------------


def test_text_answer(h: Harness) -> None:
    h.upstream.queue(jsonReply(completion("Hello there")))
    reply = h.post(message("hi"))
    assert reply.status == 200
    body = reply.json()
    assert body["type"] == "message"
    assert body["role"] == "assistant"
    assert body["model"] == "claude-sonnet-4-5"  # the name the client asked for
    assert body["id"].startswith("msg_")
    assert body["content"] == [{"type": "text", "text": "Hello there"}]
    assert body["stop_reason"] == "end_turn"
    assert body["usage"]["input_tokens"] == 11
    assert body["usage"]["output_tokens"] == 7
    assert reply.headers["request-id"].startswith("req_")


def test_each_request_has_an_id_of_its_own_in_one_form() -> None:
    """`req_` and 24 lowercase hex digits (the time, then 52 random bits), never
    the same twice."""
    ids = {newId() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(re.fullmatch("[0-9a-f]{24}", made) for made in ids)
    request = DummyRequest([b""])
    made = requestId(request)
    assert re.fullmatch("req_[0-9a-f]{24}", made)
    assert request.responseHeaders.getRawHeaders(b"request-id") == [made.encode()]
    assert requestId(request) == made  # made once per request
    odd = DummyRequest([b""])  # an id maker of a test's: its line break never goes out
    assert requestId(odd, lambda: "a\r\nb") == "req_a\r\nb"
    assert odd.responseHeaders.getRawHeaders(b"request-id") == [b"req_a b"]


def test_ids_made_later_sort_after_and_differ_within_a_millisecond() -> None:
    """The ledger keys its rows by request id: ids in the order they were made go
    in at the end of its index (`Ids`). Within one millisecond they still differ,
    past the pool's refill too."""
    now = [1_765_000_000.0]
    ids = Ids(lambda: now[0])
    made = []
    for _ in range(3 * Ids.POOL // 13):
        made.append(ids())
        now[0] += 0.0015  # a new millisecond each
    assert made == sorted(made)
    assert all(re.fullmatch("[0-9a-f]{24}", i) for i in made)
    same = [ids() for _ in range(2000)]
    assert len(set(same)) == len(same)
    assert len({i[:11] for i in same}) == 1  # one millisecond


def test_a_forked_process_makes_ids_of_its_own() -> None:
    """Parent and child share the pool of random bytes at a fork: the child draws
    its own, or both would hand out the same ids."""
    ids = Ids(lambda: 1_765_000_000.0)
    ids()
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover (the child)
        os.write(write, ids().encode())
        os._exit(0)
    os.close(write)
    os.waitpid(child, 0)
    inChild = os.read(read, 100).decode()
    os.close(read)
    assert inChild != ids()


def test_tool_call_answer(h: Harness) -> None:
    h.upstream.queue(
        jsonReply(completion(None, [toolCall("Bash", '{"command": "ls"}', "call_9")], "tool_calls"))
    )
    body = h.post(message("list files")).json()
    assert body["content"] == [
        {"type": "tool_use", "id": "call_9", "name": "Bash", "input": {"command": "ls"}}
    ]
    assert body["stop_reason"] == "tool_use"


def test_upstream_receives_translated_request(h: Harness) -> None:
    h.post(
        message("hi", stop_sequences=["END"], temperature=0.5, top_k=3),
        path="/v1/messages?beta=true",
        headers={
            "anthropic-version": "2023-06-01",
            "anthropic-beta": "x",
            "x-api-key": "caller-key",
        },
    )
    received = h.upstream.received[-1]
    assert received.path == "/v1/chat/completions"
    assert received.body["model"] == "big-model"
    assert received.body["max_completion_tokens"] == 100
    assert received.body["stop"] == ["END"]
    assert received.body["temperature"] == 0.5
    assert "top_k" not in received.body
    assert received.body["stream"] is False
    headers = received.headers
    assert headers["authorization"] == "Bearer sk-upstream-secret"
    assert not any(k.startswith("anthropic-") for k in headers)
    assert "x-api-key" not in headers


@pytest.mark.parametrize(
    ("callerHeaders", "forwarded"),
    [
        ({"x-api-key": "caller-key"}, "Bearer caller-key"),
        ({"authorization": "Bearer caller-token"}, "Bearer caller-token"),
        ({}, None),
    ],
)
def test_callers_key_forwarded_when_upstream_has_none(
    h: Harness, callerHeaders: dict[str, str], forwarded: str | None
) -> None:
    h.post(message(model="claude-haiku-5-5"), headers=callerHeaders)
    received = h.upstream.received[-1]
    assert received.body["model"] == "small-model"
    assert received.headers.get("authorization") == forwarded
    assert "x-api-key" not in received.headers


def test_configured_headers_sent() -> None:
    h = Harness.build(
        BASE_CONFIG.replace(
            "    timeout: 30\n", "    timeout: 30\n    headers: {X-Team: platform}\n"
        )
    )
    h.post(message())
    assert h.upstream.received[-1].headers["x-team"] == "platform"


def test_passthrough_route_keeps_model_name(h: Harness) -> None:
    h.post(message(model="passthrough"))
    assert h.upstream.last["model"] == "passthrough"


def test_max_tokens_cap_and_default() -> None:
    h = Harness.build(
        BASE_CONFIG.replace("    timeout: 30\n", "    timeout: 30\n    max_tokens: 50\n")
        + "default_max_tokens: 40\n"
    )
    h.post(message(max_tokens=128000))
    assert h.upstream.last["max_completion_tokens"] == 50
    body = message()
    del body["max_tokens"]
    h.post(body)
    assert h.upstream.last["max_completion_tokens"] == 40


# -- errors before anything is forwarded -----------------------------------------------


def test_unknown_model_is_404_naming_it() -> None:
    h = Harness.build(BASE_CONFIG.replace("  passthrough: up\n", ""))
    assertError(h.post(message(model="gpt-4o")), 404, "not_found_error", "'gpt-4o'")
    assert h.upstream.received == []


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"{not json", "not valid JSON"),
        (b"", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b'"text"', "must be a JSON object"),
        (b"\xff\xfe{}", "not valid JSON"),
        (orjson.dumps({"messages": [{"role": "user", "content": "x"}]}), "model"),
        (orjson.dumps({"model": "claude-x"}), "messages"),
        (orjson.dumps({"model": 7, "messages": []}), "model"),
        (orjson.dumps({"model": "claude-x", "messages": "hi"}), "messages"),
        (orjson.dumps(message(max_tokens="lots")), "max_tokens"),
        (orjson.dumps(message(stream="yes")), "stream"),
        (
            orjson.dumps(
                {"model": "claude-x", "messages": [{"role": "user", "content": [{"type": "text"}]}]}
            ),
            "messages.0.content.0.text",
        ),
    ],
)
def test_bad_bodies_are_400_naming_the_problem(h: Harness, body: bytes, fragment: str) -> None:
    assertError(h.post(body), 400, "invalid_request_error", fragment)
    assert h.upstream.received == []


def test_body_over_limit_is_413() -> None:
    h = Harness.build(BASE_CONFIG + "max_body_bytes: 1000\n")
    assertError(h.post(message("x" * 2000)), 413, "request_too_large")
    assert h.upstream.received == []
    assert h.post(message("small")).status == 200


def test_unknown_path_is_404_and_wrong_method_405(h: Harness) -> None:
    assertError(h.call("POST", "/v1/complete", {}), 404, "not_found_error", "/v1/complete")
    reply = h.call("GET", "/v1/messages")
    assertError(reply, 405, "invalid_request_error", "GET")
    assert reply.headers["allow"] == "POST"


def test_the_hot_route_answers_as_klein_would(
    h: Harness, monkeypatch: Any, noLoggedFailures: list[dict[str, Any]]
) -> None:
    """`POST /v1/messages` skips Klein's matching (`HotRoute`); its neighbours are
    still Klein's, and a bug in it is the same logged 500 envelope."""
    assert h.post(message("hi")).status == 200
    assertError(h.call("POST", "/v1/messages/", {}), 404, "not_found_error", "/v1/messages/")

    async def broken(self: Any, call: Any) -> bytes:
        raise RuntimeError("a bug")

    monkeypatch.setattr(type(h.app.messagesAPI), "create", broken)
    assertError(h.post(message("hi")), 500, "api_error", "internal error in ccproxy")
    assert ["a bug" in str(e.get("log_failure")) for e in noLoggedFailures] == [True]
    noLoggedFailures.clear()  # logged, as expected


# -- auth ----------------------------------------------------------------------------

AUTH_CONFIG = (
    BASE_CONFIG
    + """
clients:
  - name: alice
    key: alice-key
  - name: bob
    key: bob-key
"""
)


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        ({"x-api-key": "wrong"}, 401),
        ({"authorization": "Bearer wrong"}, 401),
        ({"authorization": "Basic alice-key"}, 401),
        ({"x-api-key": "alice-key"}, 200),
        ({"authorization": "Bearer bob-key"}, 200),
    ],
)
def test_client_keys(headers: dict[str, str], status: int) -> None:
    h = Harness.build(AUTH_CONFIG)
    reply = h.post(message(), headers=headers)
    assert reply.status == status
    if status == 401:
        assertError(reply, 401, "authentication_error")
        assert h.upstream.received == []
    else:
        # The proxy's own key is not an upstream key: the upstream's api_key is sent.
        assert h.upstream.received[-1].headers["authorization"] == "Bearer sk-upstream-secret"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/models"),
        ("GET", "/v1/models/passthrough"),
        ("POST", "/v1/messages/count_tokens"),
    ],
)
def test_auth_covers_every_api_endpoint(method: str, path: str) -> None:
    h = Harness.build(AUTH_CONFIG)
    assertError(h.call(method, path, message()), 401, "authentication_error")


def test_health_needs_no_key() -> None:
    h = Harness.build(AUTH_CONFIG)
    assert h.call("GET", "/").status == 200
    assert h.call("HEAD", "/").status == 200
    assert h.call("GET", "/healthz").json()["status"] == "ok"


# -- upstream failures ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "status", "errorType", "fragment"),
    [
        (
            jsonReply(
                {"error": {"message": "Rate limit reached", "type": "rate_limit"}},
                429,
                {"retry-after": "7"},
            ),
            429,
            "rate_limit_error",
            "up: Rate limit reached",
        ),
        (
            rawReply(
                b"<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>",
                500,
                "text/html",
            ),
            500,
            "api_error",
            "up: 502 Bad Gateway",
        ),
        (
            jsonReply({"error": {"message": "no capacity"}}, 503),
            503,
            "overloaded_error",
            "no capacity",
        ),
        (
            jsonReply({"error": {"message": "Invalid API Key", "code": 401}}, 401),
            401,
            "authentication_error",
            "up: Invalid API Key",
        ),
        (jsonReply({"error": "forbidden"}, 403), 403, "permission_error", "up: forbidden"),
        (jsonReply({"detail": "model not found"}, 404), 404, "not_found_error", "model not found"),
        (
            jsonReply(
                [
                    {
                        "error": {
                            "code": 400,
                            "message": 'Unknown name "propertyNames"',
                            "status": "INVALID_ARGUMENT",
                        }
                    }
                ],
                400,
            ),
            400,
            "invalid_request_error",
            'Unknown name "propertyNames"',
        ),
        (rawReply(b"Internal Server Error", 500), 500, "api_error", "up: Internal Server Error"),
        (rawReply(b"", 502), 502, "api_error", "up: HTTP 502"),
        (
            jsonReply({"error": {"message": "context too long", "code": 413}}, 413),
            413,
            "request_too_large",
            "context too long",
        ),
        (
            jsonReply({"error": {"message": "quota", "code": "429"}}),
            429,
            "rate_limit_error",
            "quota",
        ),
        (jsonReply({"error": {"message": "odd"}}), 502, "api_error", "odd"),
        (rawReply(b"this is not json", 200, "application/json"), 502, "api_error", "not JSON"),
        (jsonReply({"id": "x", "choices": []}), 502, "api_error", "no choices"),
    ],
)
def test_upstream_errors_keep_status_and_words(
    h: Harness, reply: Any, status: int, errorType: str, fragment: str
) -> None:
    h.upstream.queue(reply)
    result = h.post(message())
    assertError(result, status, errorType, fragment)


def test_retry_after_passed_through(h: Harness) -> None:
    h.upstream.queue(jsonReply({"error": {"message": "slow down"}}, 429, {"retry-after": "7"}))
    result = h.post(message())
    assert result.status == 429
    assert result.headers["retry-after"] == "7"


class _FailingHTTP:
    def __init__(self, error: Exception) -> None:
        self.error = error

    def request(self, method: str, url: str, **kwargs: Any) -> Any:
        return fail(self.error)


@pytest.mark.parametrize(
    ("error", "fragment"),
    [
        (ConnectionRefusedError("Connection refused"), "up: cannot connect to upstream.test"),
        (DNSLookupError("no such host"), "up: cannot resolve upstream.test"),
    ],
)
def test_unreachable_upstream_is_502_naming_it(error: Exception, fragment: str) -> None:
    h = Harness.build(http=lambda clock, stub: _FailingHTTP(error))
    assertError(h.post(message()), 502, "api_error", fragment)


def test_silent_upstream_is_504_and_is_hung_up_on(h: Harness) -> None:
    h.upstream.queue(stallReply())
    d = h.request("POST", "/v1/messages", message())
    h.flush()
    h.clock.advance(29)
    h.flush()
    assert not fired(d)
    h.clock.advance(1)
    h.flush()
    assertError(resultOf(d), 504, "api_error", "up: no data for 30 s")
    assert h.upstream.disconnected == 1
    # and the next request is served normally
    assert h.post(message()).status == 200


# -- count_tokens and models -------------------------------------------------------------


def test_count_tokens(h: Harness) -> None:
    small = h.post(message("hi"), path="/v1/messages/count_tokens?beta=true")
    assert small.status == 200
    big = h.post(message("word " * 1000), path="/v1/messages/count_tokens")
    assert 0 < small.json()["input_tokens"] < big.json()["input_tokens"]
    assert 900 <= big.json()["input_tokens"] <= 1300
    assert h.upstream.received == []


def test_count_tokens_counts_tools(h: Harness) -> None:
    plain = h.post(message(), path="/v1/messages/count_tokens").json()["input_tokens"]
    tool = {
        "name": "Read",
        "description": "Reads a file from disk",
        "input_schema": {"type": "object", "properties": {"file_path": {"type": "string"}}},
    }
    withTool = h.post(message(tools=[tool]), path="/v1/messages/count_tokens").json()[
        "input_tokens"
    ]
    assert withTool > plain + 10


def test_count_tokens_validates(h: Harness) -> None:
    assertError(
        h.post({"model": "claude-x"}, path="/v1/messages/count_tokens"),
        400,
        "invalid_request_error",
        "messages",
    )


MODELS_CONFIG = """
upstreams:
  up: {url: "http://upstream.test/v1"}
models:
  model-a: up
  claude-*: up/x
  model-b: up/y
  model-c: up
"""


def test_models_list_has_exact_names_in_anthropic_shape() -> None:
    h = Harness.build(MODELS_CONFIG)
    body = h.call("GET", "/v1/models?limit=1000").json()
    assert [m["id"] for m in body["data"]] == ["model-a", "model-b", "model-c"]
    assert all(m["type"] == "model" and m["display_name"] and m["created_at"] for m in body["data"])
    assert body["has_more"] is False
    assert (body["first_id"], body["last_id"]) == ("model-a", "model-c")


def test_models_pagination() -> None:
    h = Harness.build(MODELS_CONFIG)
    first = h.call("GET", "/v1/models?limit=2").json()
    assert [m["id"] for m in first["data"]] == ["model-a", "model-b"]
    assert first["has_more"] is True
    second = h.call("GET", f"/v1/models?limit=2&after_id={first['last_id']}").json()
    assert [m["id"] for m in second["data"]] == ["model-c"]
    assert second["has_more"] is False
    before = h.call("GET", "/v1/models?limit=1&before_id=model-c").json()
    assert [m["id"] for m in before["data"]] == ["model-b"]


def test_get_model() -> None:
    h = Harness.build(MODELS_CONFIG)
    assert h.call("GET", "/v1/models/model-b").json()["id"] == "model-b"
    assert h.call("GET", "/v1/models/claude-opus-5-5").json()["id"] == "claude-opus-5-5"
    assertError(h.call("GET", "/v1/models/gpt-4o"), 404, "not_found_error", "gpt-4o")
