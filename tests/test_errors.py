"""Anthropic error envelope, status table and upstream error translation (ccproxy.errors).

The body shapes are the ones real gateways send (docs/upstream-quirks.md, row
"errors" and checklist item 10).
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from ccproxy.errors import (
    ProxyError,
    errorBody,
    errorTypeForStatus,
    extractMessage,
    invalidRequest,
    upstreamError,
)

STATUS_TYPES = [
    (400, "invalid_request_error"),
    (401, "authentication_error"),
    (403, "permission_error"),
    (404, "not_found_error"),
    (413, "request_too_large"),
    (429, "rate_limit_error"),
    (503, "overloaded_error"),
    (529, "overloaded_error"),
    (500, "api_error"),
    (502, "api_error"),
    (504, "api_error"),
    (599, "api_error"),
    (405, "invalid_request_error"),
    (408, "invalid_request_error"),
    (409, "invalid_request_error"),
    (422, "invalid_request_error"),
    (499, "invalid_request_error"),
]


@pytest.mark.parametrize(
    ("status", "errorType"), [pytest.param(s, t, id=str(s)) for s, t in STATUS_TYPES]
)
def test_error_type_for_status(status: int, errorType: str) -> None:
    assert errorTypeForStatus(status) == errorType


@pytest.mark.parametrize(
    ("status", "errorType"), [pytest.param(s, t, id=str(s)) for s, t in STATUS_TYPES]
)
def test_proxy_error_defaults_type_from_status(status: int, errorType: str) -> None:
    error = ProxyError(status, "m")
    assert (error.status, error.errorType, error.message) == (status, errorType, "m")
    assert dict(error.headers) == {}


def test_proxy_error_explicit_type_wins() -> None:
    assert ProxyError(502, "x", "overloaded_error").errorType == "overloaded_error"


def test_invalid_request() -> None:
    error = invalidRequest("messages.0.content: must be a string or a list of blocks")
    assert error.status == 400
    assert error.errorType == "invalid_request_error"
    assert error.message == "messages.0.content: must be a string or a list of blocks"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        pytest.param(
            ("rate_limit_error", "slow down", None),
            {"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}},
            id="without-request-id",
        ),
        pytest.param(
            ("api_error", "boom", "req_01"),
            {
                "type": "error",
                "error": {"type": "api_error", "message": "boom"},
                "request_id": "req_01",
            },
            id="with-request-id",
        ),
    ],
)
def test_error_body(args: tuple[str, str, str | None], expected: dict[str, Any]) -> None:
    body = errorBody(*args)
    assert body == expected
    assert orjson.loads(orjson.dumps(body)) == expected


# -- extractMessage -------------------------------------------------------------------------


def j(value: Any) -> bytes:
    return orjson.dumps(value)


MESSAGE_CASES = [
    pytest.param(
        j({"error": {"message": "model not found", "type": "invalid_request_error"}}),
        "model not found",
        id="openai-error-object",
    ),
    pytest.param(
        j(
            {
                "error": {
                    "message": "The response was filtered",
                    "type": None,
                    "param": "prompt",
                    "code": "content_filter",
                    "status": 400,
                    "innererror": {"code": "ResponsibleAIPolicyViolation"},
                }
            }
        ),
        "The response was filtered",
        id="azure-content-filter",
    ),
    pytest.param(
        j({"error": {"code": 400, "message": "bad", "metadata": {"raw": "x"}}}),
        "bad",
        id="openrouter-int-code",
    ),
    pytest.param(j({"error": "quota exceeded"}), "quota exceeded", id="error-string"),
    pytest.param(
        j({"object": "error", "message": "flat vllm", "type": "BadRequestError", "code": 400}),
        "flat vllm",
        id="top-level-message-vllm-old",
    ),
    pytest.param(j({"detail": "Not Found"}), "Not Found", id="top-level-detail"),
    pytest.param(
        j({"detail": [{"loc": ["body", "model"], "msg": "field required", "type": "missing"}]}),
        "field required",
        id="fastapi-validation-list",
    ),
    pytest.param(
        j(
            [
                {
                    "error": {
                        "code": 400,
                        "message": "Unknown name additionalProperties",
                        "status": "INVALID_ARGUMENT",
                        "details": [],
                    }
                }
            ]
        ),
        "Unknown name additionalProperties",
        id="gemini-json-array",
    ),
    pytest.param(
        j(
            {
                "error": {
                    "code": "invalid_parameter_error",
                    "param": None,
                    "message": "parameter.enable_thinking must be set to false",
                    "type": "invalid_request_error",
                },
                "id": "x",
                "request_id": "y",
            }
        ),
        "parameter.enable_thinking must be set to false",
        id="dashscope",
    ),
    pytest.param(
        j({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
        "Overloaded",
        id="anthropic-shape",
    ),
    pytest.param(
        j({"error": {"message": "line one\n\n   line two"}}),
        "line one line two",
        id="message-made-one-line",
    ),
    pytest.param(b'\n\n  {"error": {"message": "late"}}\n', "late", id="leading-blank-lines"),
    pytest.param(j("plain json string"), "plain json string", id="json-string"),
    pytest.param(b"Internal Server Error", "Internal Server Error", id="plain-text"),
    pytest.param(
        b"upstream connect error\r\n  reset", "upstream connect error reset", id="multiline"
    ),
    pytest.param(
        b"<html><head><title>502 Bad Gateway</title></head><body><center><h1>502 Bad Gateway"
        b"</h1></center><hr><center>nginx</center></body></html>",
        "502 Bad Gateway",
        id="html-nginx-title",
    ),
    pytest.param(
        b"<!DOCTYPE html><html><head>\n<TITLE >\n  Access &amp; Denied\n</TITLE></head></html>",
        "Access & Denied",
        id="html-title-case-and-entities",
    ),
    pytest.param(
        b"<html><body><h1>Service Unavailable</h1>\n<p>try   later</p></body></html>",
        "Service Unavailable try later",
        id="html-without-title",
    ),
    pytest.param(b"", "", id="empty"),
    pytest.param(b"  \n\t ", "", id="whitespace-only"),
    pytest.param(
        j({"error": {"code": 400}}), '{"error":{"code":400}}', id="error-without-message-kept"
    ),
    pytest.param(
        j({"error": {"message": ""}, "message": "outer"}), "outer", id="empty-inner-message-skipped"
    ),
]


@pytest.mark.parametrize(("body", "expected"), MESSAGE_CASES)
def test_extract_message(body: bytes, expected: str) -> None:
    assert extractMessage(body) == expected


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"x" * 50000, id="plain"),
        pytest.param(j({"error": {"message": "y" * 50000}}), id="json"),
    ],
)
def test_extract_message_is_bounded(body: bytes) -> None:
    found = extractMessage(body)
    assert 0 < len(found) <= 1001
    assert found.endswith("…")


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"\xff\xfe\x00 not utf-8", id="bad-bytes"),
        pytest.param(b"{not json", id="broken-json"),
        pytest.param(b"[[[[[[[[[[1]]]]]]]]]]", id="deep-array"),
        pytest.param(j({"error": {"error": {"error": {"error": {"error": {}}}}}}), id="deep"),
    ],
)
def test_extract_message_never_raises(body: bytes) -> None:
    found = extractMessage(body)
    assert isinstance(found, str)
    assert "\n" not in found


# -- upstreamError ---------------------------------------------------------------------------

UPSTREAM_STATUS_CASES = [
    pytest.param(400, 400, "invalid_request_error", id="400"),
    pytest.param(401, 401, "authentication_error", id="401"),
    pytest.param(403, 403, "permission_error", id="403"),
    pytest.param(404, 404, "not_found_error", id="404"),
    pytest.param(413, 413, "request_too_large", id="413"),
    pytest.param(422, 422, "invalid_request_error", id="422"),
    pytest.param(429, 429, "rate_limit_error", id="429"),
    pytest.param(500, 500, "api_error", id="500"),
    pytest.param(502, 502, "api_error", id="502"),
    pytest.param(503, 503, "overloaded_error", id="503"),
    pytest.param(504, 504, "api_error", id="504"),
    pytest.param(529, 529, "overloaded_error", id="529"),
    pytest.param(200, 502, "api_error", id="2xx-is-not-an-error-status"),
    pytest.param(302, 502, "api_error", id="redirect"),
    pytest.param(600, 502, "api_error", id="out-of-range"),
]


@pytest.mark.parametrize(("status", "expectedStatus", "errorType"), UPSTREAM_STATUS_CASES)
def test_upstream_error_status_and_type(status: int, expectedStatus: int, errorType: str) -> None:
    error = upstreamError("corp", status, j({"error": {"message": "nope"}}))
    assert error.status == expectedStatus
    assert error.errorType == errorType
    assert error.message == "corp: nope"


@pytest.mark.parametrize(
    ("status", "body", "message"),
    [
        pytest.param(
            429,
            j({"error": {"message": "Rate limit reached", "code": "429"}}),
            "local: Rate limit reached",
            id="json",
        ),
        pytest.param(
            502, b"<html><title>Bad Gateway</title></html>", "local: Bad Gateway", id="html"
        ),
        pytest.param(500, b"", "local: HTTP 500 with an empty body", id="empty-body"),
        pytest.param(503, b"   ", "local: HTTP 503 with an empty body", id="blank-body"),
        pytest.param(
            400,
            j([{"error": {"code": 400, "message": "Proto field is not repeating"}}]),
            "local: Proto field is not repeating",
            id="gemini",
        ),
    ],
)
def test_upstream_error_message_is_prefixed(status: int, body: bytes, message: str) -> None:
    assert upstreamError("local", status, body).message == message


RETRY_AFTER_CASES = [
    pytest.param({"retry-after": "30"}, {"retry-after": "30"}, id="seconds"),
    pytest.param({"retry-after": " 7 "}, {"retry-after": "7"}, id="seconds-trimmed"),
    pytest.param({"retry-after": "1.5"}, {"retry-after": "1.5"}, id="fractional"),
    pytest.param(
        {"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"},
        {"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"},
        id="http-date",
    ),
    pytest.param({"retry-after": "soon"}, {}, id="garbage-dropped"),
    pytest.param({"retry-after": "30\r\nX-Evil: 1"}, {}, id="header-injection-dropped"),
    pytest.param({"retry-after": ""}, {}, id="empty"),
    pytest.param({"content-type": "application/json"}, {}, id="absent"),
    pytest.param(None, {}, id="no-headers"),
]


@pytest.mark.parametrize(("headers", "expected"), RETRY_AFTER_CASES)
def test_upstream_error_passes_retry_after(
    headers: dict[str, str] | None, expected: dict[str, str]
) -> None:
    error = upstreamError("corp", 429, b'{"error":"slow"}', headers)
    assert dict(error.headers) == expected
    assert error.status == 429
    assert error.errorType == "rate_limit_error"
