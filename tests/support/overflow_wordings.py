"""Real wordings of a context overflow, one per server, as each sends it (taken from
its source or its own documentation): the table of tests/test_overflow.py, and the
refusals of the scripted upstream (tests/support/scripted_upstream.py) that the
real-Claude-Code compaction test runs against.

Each row: the server, its refusal's body, and what Claude Code must get from
ccproxy when ccproxy's estimate of the prompt is 9000 tokens and the route's
`context_window` 8192 (used only where the server gives no number).
"""

from __future__ import annotations

from typing import Any

import orjson


def body(value: Any) -> str:
    return orjson.dumps(value).decode()


def openAI(message: str, code: Any = "context_length_exceeded", **extra: Any) -> str:
    return body(
        {
            "error": {
                "message": message,
                "type": "invalid_request_error",
                "param": "messages",
                "code": code,
                **extra,
            }
        }
    )


LLAMA_SERVER = {
    "error": {
        "code": 400,
        "message": "request (4476 tokens) exceeds the available context size (4096 tokens),"
        " try increasing it",
        "type": "exceed_context_size_error",
        "n_prompt_tokens": 4476,
        "n_ctx": 4096,
    }
}

WORDINGS = [
    (
        "anthropic",
        body(
            {
                "type": "error",
                "error": {
                    "type": "invalid_request_error",
                    "message": "prompt is too long: 210000 tokens > 200000 maximum",
                },
            }
        ),
        "prompt is too long: 210000 tokens > 200000 maximum",
    ),
    (
        "openai",
        openAI(
            "This model's maximum context length is 128000 tokens. However, your messages"
            " resulted in 130532 tokens. Please reduce the length of the messages."
        ),
        "prompt is too long: 130532 tokens > 128000 maximum",
    ),
    (
        "openai-context-window",
        openAI(
            "Your input exceeds the context window of this model. Please adjust your input"
            " and try again.",
            param="input",
        ),
        "prompt is too long: 9000 tokens > 8192 maximum",  # the estimate, the window
    ),
    (
        "azure",
        body(
            {
                "error": {
                    "message": "This model's maximum context length is 8192 tokens. However,"
                    " your messages resulted in 9003 tokens. Please reduce the length of the"
                    " messages.",
                    "type": None,
                    "param": "messages",
                    "code": "context_length_exceeded",
                    "status": 400,
                }
            }
        ),
        "prompt is too long: 9003 tokens > 8192 maximum",
    ),
    (
        "vllm",
        body(
            {
                "error": {
                    "message": "This model's maximum context length is 4096 tokens. However,"
                    " your request has 4176 input tokens. Please reduce the length of the"
                    " input messages. None",
                    "type": "BadRequestError",
                    "param": None,
                    "code": 400,
                }
            }
        ),
        "prompt is too long: 4176 tokens > 4096 maximum",
    ),
    (
        "vllm-max-tokens",
        body(
            {
                "error": {
                    "message": "'max_tokens' or 'max_completion_tokens' is too large: 8000."
                    " This model's maximum context length is 4096 tokens and your request has"
                    " 2778 input tokens (8000 > 4096 - 2778). None",
                    "type": "BadRequestError",
                    "param": None,
                    "code": 400,
                }
            }
        ),
        "input length and `max_tokens` exceed context limit: 2778 + 8000 > 4096,"
        " decrease input length or `max_tokens` and try again",
    ),
    (
        "vllm-old-flat",
        body(
            {
                "object": "error",
                "message": "This model's maximum context length is 32768 tokens. However, you"
                " requested 40000 tokens (36000 in the messages, 4000 in the completion)."
                " Please reduce the length of the messages or completion.",
                "type": "BadRequestError",
                "param": None,
                "code": 400,
            }
        ),
        "prompt is too long: 36000 tokens > 32768 maximum",
    ),
    (
        "deepseek",
        openAI(
            "This model's maximum context length is 65536 tokens. However, you requested"
            " 70000 tokens (62000 in the messages, 8000 in the completion). Please reduce"
            " the length of the messages or completion.",
            code="invalid_request_error",
        ),
        "input length and `max_tokens` exceed context limit: 62000 + 8000 > 65536,"
        " decrease input length or `max_tokens` and try again",
    ),
    ("llama-server", body(LLAMA_SERVER), "prompt is too long: 4476 tokens > 4096 maximum"),
    (
        "llama-server-older",
        body(
            {
                "error": {
                    **LLAMA_SERVER["error"],
                    "message": "the request exceeds the available context size, try increasing it",
                }
            }
        ),
        "prompt is too long: 4476 tokens > 4096 maximum",
    ),
    (
        "ollama",  # llama-server's error, as a string inside Ollama's
        body({"error": body(LLAMA_SERVER)}),
        "prompt is too long: 4476 tokens > 4096 maximum",
    ),
    (
        "ollama-no-shift",
        body(
            {
                "error": {
                    "message": "the prompt is longer than the context length currently"
                    " available to the model",
                    "type": "api_error",
                    "param": None,
                    "code": None,
                }
            }
        ),
        "prompt is too long: 9000 tokens > 8192 maximum",
    ),
    (
        "litellm",
        body(
            {
                "error": {
                    "message": "litellm.ContextWindowExceededError: litellm.BadRequestError:"
                    " ContextWindowExceededError: OpenAIException - This model's maximum"
                    " context length is 1047576 tokens. However, your messages resulted in"
                    " 1129124 tokens. Please reduce the length of the messages.\nReceived"
                    " Model Group=gpt-4.1\nAvailable Model Group Fallbacks=None",
                    "type": None,
                    "param": None,
                    "code": "400",
                }
            }
        ),
        "prompt is too long: 1129124 tokens > 1047576 maximum",
    ),
    (
        "litellm-bare",
        body(
            {
                "error": {
                    "message": "litellm.ContextWindowExceededError: Context window exceeded",
                    "type": None,
                    "param": None,
                    "code": "400",
                }
            }
        ),
        "prompt is too long: 9000 tokens > 8192 maximum",
    ),
    (
        "gemini",
        body(
            [
                {
                    "error": {
                        "code": 400,
                        "message": "The input token count (1196265) exceeds the maximum number"
                        " of tokens allowed (1048575).",
                        "status": "INVALID_ARGUMENT",
                    }
                }
            ]
        ),
        "prompt is too long: 1196265 tokens > 1048575 maximum",
    ),
    (
        "mistral",
        body(
            {
                "object": "error",
                "message": "Prompt contains 40687 tokens and 0 draft tokens, too large for"
                " model with 32768 maximum context length",
                "type": "invalid_request_error",
                "param": None,
                "code": None,
            }
        ),
        "prompt is too long: 40687 tokens > 32768 maximum",
    ),
    (
        "tgi",
        body(
            {
                "error": "Input validation error: `inputs` tokens + `max_new_tokens` must be"
                " <= 4096. Given: 4000 `inputs` tokens and 1000 `max_new_tokens`",
                "error_type": "validation",
            }
        ),
        "input length and `max_tokens` exceed context limit: 4000 + 1000 > 4096,"
        " decrease input length or `max_tokens` and try again",
    ),
    (
        "llama-cpp-python",
        body(
            {
                "error": {
                    "message": "Requested tokens (5000) exceed context window of 4096",
                    "type": "internal_server_error",
                    "param": None,
                    "code": None,
                }
            }
        ),
        "prompt is too long: 5000 tokens > 4096 maximum",
    ),
    (
        "dashscope",
        body(
            {
                "error": {
                    "code": "invalid_parameter_error",
                    "param": None,
                    "message": "Range of input length should be [1, 30720]",
                    "type": "invalid_request_error",
                }
            }
        ),
        "prompt is too long: 30721 tokens > 30720 maximum",  # the estimate is below it
    ),
    (
        "moonshot",
        openAI("Invalid request: Your request exceeded model token limit: 8192", code=None),
        "prompt is too long: 9000 tokens > 8192 maximum",
    ),
    (
        "bedrock",
        body(
            {
                "type": "error",
                "error": {"type": "invalid_request_error", "message": "Input is too long."},
            }
        ),
        "Input is too long.",
    ),
    (
        "vertex",
        body(
            {
                "type": "error",
                "error": {
                    "type": "invalid_request_error",
                    "message": "The request size (30037042 bytes) exceeds 30.000MB limit.",
                },
            }
        ),
        "The request size (30037042 bytes) exceeds 30.000MB limit.",
    ),
]

BY_SERVER = {w[0]: w for w in WORDINGS}
