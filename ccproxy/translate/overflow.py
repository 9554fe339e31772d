"""An upstream saying the prompt does not fit, in the words Claude Code acts on.

Claude Code compacts the conversation when a request is refused with Anthropic's own
sentence, `prompt is too long: N tokens > M maximum` (it reads N and M with a
regex, and drops as many older messages as the gap asks when even the summary
request is too long); it reads I, T and W from
``input length and `max_tokens` exceed context limit: I + T > W``. Every server says
it differently, so each wording known here is read for its numbers and said again
in Anthropic's words. Bedrock's `Input is too long.` and Vertex's size sentence are
matched whole by the client, so they go back as they came.

The wordings come from the servers' sources (a table test holds one per server):
OpenAI and Azure (`context_length_exceeded`), vLLM, llama-server
(`exceed_context_size_error`, with `n_prompt_tokens` and `n_ctx`), Ollama (which
wraps llama-server's error in a string), LiteLLM (`ContextWindowExceededError`),
Gemini, DeepSeek, Mistral, TGI, llama-cpp-python, DashScope and Moonshot.
"""

from __future__ import annotations

import re

from attrs import frozen

_PHRASES = (
    # Claude Code's own list of other servers' words (2.1.330), then ours.
    "maximum context length",
    "context_length_exceeded",
    "exceeds the context window",
    "contextwindowexceedederror",
    "longer than the maximum model length",
    "longer than the model's context length",
    "exceeds the available context size",
    "exceeds the maximum number of tokens allowed",
    "exceeded model token limit",
    "input token length too long",
    "input tokens exceed the configured limit",
    "maximum context limit",
    "maximum prompt length",
    "prompt exceeds max length",
    "tokens in request more than max tokens allowed",
    "range of input length should be",
    "context window exceeds limit",
    "but model only supports up to",
    "reduce the length of the messages",
    "`inputs` tokens + `max_new_tokens` must be",
    "context exceeds your deployment",
    "exceed_context_size_error",
    "prompt is too long",
    "input is too long for requested model",
    "longer than the context length",
    "input length exceeds the context length",
    "exceed context window of",
    "too large for model with",
    "input length and `max_tokens` exceed context limit",
)
_NOT_OVERFLOW = (
    # A policy refusal or one string field too long is no context overflow.
    "policy_blocked",
    "dlp_request_denied",
    "string too long. expected a string with maximum length",
    "expected maxlength",
)
_VERBATIM = re.compile(
    r"Input is too long\.?"  # Bedrock
    r"|The (?:request|message) size \(\d+ bytes\) exceeds [\d.]+ ?MB limit\.?",  # Vertex
)

_READ_CHARS = 64 * 1024
"""Characters of an error read for an overflow at most: an upstream's error body is
cut there already (`MAX_ERROR_BYTES`), an error inside a stream may be a whole
line of up to `max_line_bytes`; the sentence and its numbers come first."""
_N = r"(\d[\d,]*)"
_Q = r'\\*"'  # a quote, escaped once or more when an error is nested in a string
_TOKENS = (
    # Anthropic
    re.compile(r"prompt is too long[^0-9]{0,100}" + _N + r"\s*tokens?\s*>\s*" + _N),
    # llama-server (also inside Ollama's string)
    re.compile(r"request \(" + _N + r" tokens\) exceeds the available context size \(" + _N),
    # Gemini
    re.compile(
        r"input token count \(" + _N + r"\) exceeds the maximum number of tokens allowed \(" + _N
    ),
    # llama-cpp-python
    re.compile(r"requested tokens \(" + _N + r"\) exceed context window of " + _N),
    # Mistral
    re.compile(r"prompt contains " + _N + r" tokens.{0,200}?too large for model with " + _N),
)
_PROMPT = (
    re.compile(_Q + r"n_prompt_tokens" + _Q + r"\s*:\s*" + _N),
    re.compile(r"(?:messages|prompt|input) resulted in " + _N + r" tokens"),
    re.compile(r"your request has " + _N + r" input tokens"),
    re.compile(r"\(" + _N + r" in the messages"),
    re.compile(r"given: " + _N + r" `inputs` tokens"),
    re.compile(r"\(requested:? " + _N),
)
_LIMIT = (
    re.compile(_Q + r"n_ctx" + _Q + r"\s*:\s*" + _N),
    re.compile(r"maximum context length is " + _N),
    re.compile(r"`max_new_tokens` must be <= " + _N),
    re.compile(r"range of input length should be \[\d+, ?" + _N),
    re.compile(r"exceeded model token limit:? " + _N),
    re.compile(r"context (?:window|length) of " + _N),
)
_COMPLETION = (
    re.compile(r"in the messages, " + _N + r" in the completion"),
    re.compile(r"'max_tokens' or 'max_completion_tokens' is too large: " + _N),
    re.compile(r"`inputs` tokens and " + _N + r" `max_new_tokens`"),
)
_OUTPUT = re.compile(r"exceed context limit: " + _N + r" \+ " + _N + r" > " + _N)


@frozen
class Overflow:
    """What an upstream said about a prompt that does not fit: the numbers it gave."""

    tokens: int | None = None
    """The prompt's tokens, as the upstream counted them."""
    limit: int | None = None
    """The model's context window."""
    completion: int | None = None
    """The output limit asked for, when the upstream said input and output together
    were over the window."""
    verbatim: str | None = None
    """A sentence Claude Code matches whole (Bedrock's, Vertex's): sent as it is."""

    def message(self, estimate: int | None = None, window: int | None = None) -> str:
        """The client's message. `estimate` stands for the prompt's tokens and `window`
        for the context window when the upstream did not say them."""
        if self.verbatim is not None:
            return self.verbatim
        limit = self.limit if self.limit is not None else window
        tokens = self.tokens if self.tokens is not None else estimate
        if self.completion is not None and limit is not None and tokens is not None:
            if tokens < limit:  # the prompt fits: the output limit is what is too large
                return (
                    f"input length and `max_tokens` exceed context limit: {tokens} +"
                    f" {self.completion} > {limit}, decrease input length or `max_tokens`"
                    " and try again"
                )
        if limit is None:
            return (
                "prompt is too long" if tokens is None else f"prompt is too long: {tokens} tokens"
            )
        if tokens is None or tokens <= limit:
            # The upstream refused it: whatever our estimate, it was over the window.
            tokens = limit + 1
        return f"prompt is too long: {tokens} tokens > {limit} maximum"

    @property
    def needsEstimate(self) -> bool:
        """Whether `message` wants ccproxy's own count of the prompt."""
        return self.verbatim is None and self.tokens is None


def readOverflow(text: str) -> Overflow | None:
    """The overflow an upstream's error says, or None when it says something else.

    `text` is the error as it came (its JSON body, a stream's error payload, a
    plain line): the numbers may sit in fields beside the message (llama-server's
    `n_prompt_tokens`, `n_ctx`) or in a message nested in a string (Ollama).
    """
    text = text[:_READ_CHARS]
    verbatim = _verbatim(text)
    if verbatim is not None:
        return Overflow(verbatim=verbatim)
    lowered = text.lower()
    if not any(p in lowered for p in _PHRASES) or any(p in lowered for p in _NOT_OVERFLOW):
        return None
    for pattern in _TOKENS:
        found = pattern.search(lowered)
        if found:
            return Overflow(_number(found.group(1)), _number(found.group(2)))
    found = _OUTPUT.search(lowered)  # Anthropic's own wording of the output case
    if found:
        tokens, completion, limit = (_number(g) for g in found.groups())
        return Overflow(tokens, limit, completion)
    return Overflow(_first(_PROMPT, lowered), _first(_LIMIT, lowered), _first(_COMPLETION, lowered))


def _verbatim(text: str) -> str | None:
    """Bedrock's or Vertex's sentence, when it is the whole message of the error."""
    stripped = text.strip()
    if _VERBATIM.fullmatch(stripped):
        return stripped
    found = re.search(r'"message"\s*:\s*"(' + _VERBATIM.pattern + r')"', text)
    return found.group(1) if found else None


def _first(patterns: tuple[re.Pattern[str], ...], text: str) -> int | None:
    for pattern in patterns:
        found = pattern.search(text)
        if found:
            return _number(found.group(1))
    return None


def _number(text: str) -> int:
    return int(text.replace(",", ""))
