# ruff: noqa: E501 (the metrics lines pinned are as long as prometheus writes them)
"""The access line, its event's fields and the metrics page, pinned for a few
kinds of request as they were before the request's end was made cheaper (round 5
of issue 18): a cut in the completion tail that changes a byte of any of them
fails here."""

from __future__ import annotations

import hashlib
from typing import Any

import orjson
from twisted.logger import LogLevel, globalLogPublisher

from ccproxy.daemon.logs import classicLine
from tests.support.fakes import completion, jsonReply, sseReply, toolCall
from tests.support.harness import BASE_CONFIG, Harness, message, resultOf

CONFIG = BASE_CONFIG.replace("    retries: 0\n", "    retries: 1\n") + (
    'routes:\n  - {name: big, when: {model: "claude-opus-*"}, target: other/huge}\n'
)


def _chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}


def _requests(h: Harness) -> None:
    # A whole answer, with a tool call and cached tokens.
    usage = {
        "prompt_tokens": 1200,
        "completion_tokens": 33,
        "prompt_tokens_details": {"cached_tokens": 1000},
    }
    h.upstream.queue(jsonReply(completion("ok", [toolCall("Read", '{"a": 1}')], usage=usage)))
    h.post(message("one"))
    # A stream.
    h.upstream.queue(
        sseReply(
            [
                _chunk({"role": "assistant", "content": "he"}),
                _chunk({"content": "llo"}, "stop"),
                {"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 2}},
            ]
        )
    )
    h.post(message("two", stream=True))
    # A 500, retried, then a 502 that ends it: two attempts and an error.
    h.upstream.queue(
        jsonReply({"error": {"message": "boom"}}, 500),
        jsonReply({"error": {"message": "bang\nline"}}, 502),
    )
    d = h.request("POST", "/v1/messages", message("three"))
    h.flush()
    h.clock.advance(1)  # the backoff
    h.flush()
    assert resultOf(d).status == 502
    # The client's mistake: no model.
    h.post({"max_tokens": 5, "messages": []})
    # A haiku: the other upstream, refused with 400.
    h.upstream.queue(jsonReply({"error": {"message": "bad", "type": "invalid"}}, 400))
    h.post(message("four", model="claude-haiku-4-5"))
    # count_tokens, a model list and a 404.
    h.post(message("five"), path="/v1/messages/count_tokens")
    h.upstream.queue(jsonReply(completion("routed")))
    h.post(message("six", model="claude-opus-4"))  # a rule chose
    h.call("GET", "/v1/models")
    h.call("GET", "/nowhere")


def _observed() -> tuple[list[str], list[dict[str, Any]], list[str]]:
    h = Harness.build(CONFIG)
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        _requests(h)
    finally:
        globalLogPublisher.removeObserver(events.append)
    access = [e for e in events if e.get("log_namespace") == "ccproxy.access"]
    lines, fields = [], []
    for event in access:
        rid = event["request_id"]
        line = classicLine(event, lambda when: "T")
        assert line is not None
        lines.append(line.replace(rid, "RID"))
        assert event["log_format"] == FORMAT
        dropped = ("log_time", "log_logger", "log_format", "request_id")
        kept = {k: v for k, v in event.items() if k not in dropped}
        assert kept.pop("log_level") in (LogLevel.info, LogLevel.warn)
        fields.append(kept)
    # The buckets are test_metrics_fast's: here the series, counts, sums and tokens.
    page = [
        line
        for line in h.app.metrics.render().decode().splitlines()
        if "_created" not in line and "_bucket{" not in line and not line.startswith("#")
    ]
    return lines, fields, page


def _digest(fields: dict[str, Any]) -> str:
    """An event's fields in a few characters (they are shown whole when one differs)."""
    return hashlib.sha256(orjson.dumps(fields, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]


def test_access_lines_fields_and_metrics_are_as_pinned() -> None:
    lines, fields, page = _observed()
    assert lines == LINES
    assert [_digest(f) for f in fields] == FIELDS, fields
    assert page == PAGE


FORMAT = (
    "{request_id} {client} {method} {path} {model}{route_suffix} -> {target}{stream_mark} "
    "{status} (upstream {upstream_status}) ttfb={ttfb_ms}ms total={duration_ms}ms "
    "tokens in={input_tokens} out={output_tokens} cached={cache_read_tokens}"
    "{attempts_suffix}{error_suffix}"
)

LINES = [
    "T [ccproxy.access#info] RID - POST /v1/messages claude-sonnet-4-5 -> up/big-model 200 "
    "(upstream 200) ttfb=0ms total=0ms tokens in=200 out=33 cached=1000\n",
    "T [ccproxy.access#info] RID - POST /v1/messages claude-sonnet-4-5 -> up/big-model (stream) "
    "200 (upstream 200) ttfb=0ms total=0ms tokens in=9 out=2 cached=0\n",
    "T [ccproxy.access#warn] RID - POST /v1/messages claude-sonnet-4-5 -> up/big-model 502 "
    "(upstream 502) ttfb=-ms total=1000ms tokens in=0 out=0 cached=0 attempts=[up: 500 "
    "api_error; up: 502 api_error] error=api_error: up: bang line\n",
    "T [ccproxy.access#info] RID - POST /v1/messages - -> - 400 (upstream -) ttfb=-ms total=0ms "
    "tokens in=0 out=0 cached=0 error=invalid_request_error: model: is required (a string)\n",
    "T [ccproxy.access#info] RID - POST /v1/messages claude-haiku-4-5 -> other/small-model 400 "
    "(upstream 400) ttfb=-ms total=0ms tokens in=0 out=0 cached=0 error=invalid_request_error: "
    "other: bad\n",
    "T [ccproxy.access#info] RID - POST /v1/messages/count_tokens claude-sonnet-4-5 -> "
    "up/big-model 200 (upstream -) ttfb=-ms total=0ms tokens in=0 out=0 cached=0\n",
    "T [ccproxy.access#info] RID - POST /v1/messages claude-opus-4 route=big -> other/huge 200 "
    "(upstream 200) ttfb=0ms total=0ms tokens in=11 out=7 cached=0\n",
    "T [ccproxy.access#info] RID - GET /v1/models - -> - 200 (upstream -) ttfb=-ms total=0ms "
    "tokens in=0 out=0 cached=0\n",
]

FIELDS = [
    "cfd05366c999cb59",
    "0a3bca790f12c417",
    "90c7c18d38c17ddc",
    "e7324f12f506951f",
    "1eb4bec2239763bd",
    "8d3570ca5dc836a9",
    "5f0370730dcbd44b",
    "755ff2dfa7434bbe",
]

PAGE = [
    'ccproxy_requests_total{client="-",endpoint="messages",model="claude-*",route="claude-*",status="200",upstream="up"} '
    "2.0",
    'ccproxy_requests_total{client="-",endpoint="messages",model="claude-*",route="claude-*",status="502",upstream="up"} '
    "1.0",
    'ccproxy_requests_total{client="-",endpoint="messages",model="-",route="-",status="400",upstream="-"} '
    "1.0",
    'ccproxy_requests_total{client="-",endpoint="messages",model="claude-haiku-*",route="claude-haiku-*",status="400",upstream="other"} '
    "1.0",
    'ccproxy_requests_total{client="-",endpoint="count_tokens",model="claude-*",route="claude-*",status="200",upstream="up"} '
    "1.0",
    'ccproxy_requests_total{client="-",endpoint="messages",model="claude-*",route="big",status="200",upstream="other"} '
    "1.0",
    'ccproxy_requests_total{client="-",endpoint="models",model="-",route="-",status="200",upstream="-"} '
    "1.0",
    'ccproxy_request_duration_seconds_count{upstream="up"} 3.0',
    'ccproxy_request_duration_seconds_sum{upstream="up"} 1.0',
    'ccproxy_request_duration_seconds_count{upstream="-"} 1.0',
    'ccproxy_request_duration_seconds_sum{upstream="-"} 0.0',
    'ccproxy_request_duration_seconds_count{upstream="other"} 2.0',
    'ccproxy_request_duration_seconds_sum{upstream="other"} 0.0',
    'ccproxy_upstream_ttfb_seconds_count{upstream="up"} 2.0',
    'ccproxy_upstream_ttfb_seconds_sum{upstream="up"} 0.0',
    'ccproxy_upstream_ttfb_seconds_count{upstream="other"} 1.0',
    'ccproxy_upstream_ttfb_seconds_sum{upstream="other"} 0.0',
    'ccproxy_tokens_total{client="-",kind="input",upstream="up"} 209.0',
    'ccproxy_tokens_total{client="-",kind="output",upstream="up"} 35.0',
    'ccproxy_tokens_total{client="-",kind="cache_read",upstream="up"} 1000.0',
    'ccproxy_tokens_total{client="-",kind="input",upstream="other"} 11.0',
    'ccproxy_tokens_total{client="-",kind="output",upstream="other"} 7.0',
    'ccproxy_upstream_errors_total{type="api_error",upstream="up"} 2.0',
    'ccproxy_upstream_errors_total{type="invalid_request_error",upstream="other"} 1.0',
    "ccproxy_requests_in_flight 0.0",
    "ccproxy_streams_in_flight 0.0",
    "ccproxy_config_generation 1.0",
    'ccproxy_upstream_breaker_state{upstream="other"} 0.0',
    'ccproxy_upstream_breaker_state{upstream="up"} 0.0',
    "ccproxy_state_backend_up 1.0",
]
