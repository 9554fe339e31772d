"""Keys never leave: not in what a client reads, not in a log line.

A gateway that echoes the request it refused (`Incorrect API key provided: Bearer
…`, a debug page listing the headers) would hand the team's shared upstream key to
whoever sent the request, and write it to the access log. Every path an upstream's
words take to a client or a log is tried here with such a gateway.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest
from twisted.logger import eventAsJSON, formatEvent, globalLogPublisher
from twisted.web.iweb import IRequest

from ccproxy.config import Config
from ccproxy.errors import REDACTED, Redactor, headerSecrets
from tests.support.fakes import FakeOpenAI, Responder
from tests.support.harness import Harness, message, parseSSE

SECRETS = {
    "CORP": "corp-key-9d81f02c",  # not key-shaped: only the config knows it is one
    "PORTAL": "portal-token-77ab31c0",
    "ALICE": "alice-secret-7f3a",
    "BOB": "sk-bob-personal-5521",
}
OPEN = """
log_payloads: true
upstreams:
  corp:
    url: http://corp.test/v1
    headers: {X-Portal-Token: "${PORTAL}", X-Team: platform}
    api_key: ${CORP}
    retries: 0
  own: {url: "http://own.test/v1", retries: 0}
models: {claude-*: corp/big, own-*: own}
"""
CONFIG = (
    OPEN
    + """
clients:
  - {name: alice, key: "${ALICE}"}
  - {name: bob, key: "${BOB}"}
"""
)
ALICE = {"x-api-key": SECRETS["ALICE"]}


def echoed(request: IRequest) -> str:
    """Every credential the upstream was sent, as a careless gateway repeats them."""
    headers = request.requestHeaders
    said = [
        f"{name}: {headers.getRawHeaders(name, [''])[0]}"
        for name in ("authorization", "x-portal-token")
        if headers.hasHeader(name)
    ]
    auth = headers.getRawHeaders("authorization", [""])[0]
    return "; ".join([*said, f"key {auth.removeprefix('Bearer ')}"])


def echoJSON(status: int, withCode: bool = False) -> Responder:
    def reply(request: IRequest, fake: FakeOpenAI) -> bytes:
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"application/json")
        error: dict[str, Any] = {"message": f"Incorrect API key provided: {echoed(request)}"}
        if withCode:
            error["code"] = 401
        return orjson.dumps({"error": error})

    return reply


def echoText(status: int) -> Responder:
    def reply(request: IRequest, fake: FakeOpenAI) -> bytes:
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"text/plain")
        return f"Internal Server Error. Request headers: {echoed(request)}".encode()

    return reply


def echoInStream() -> Responder:
    def reply(request: IRequest, fake: FakeOpenAI) -> bytes:
        request.setHeader(b"content-type", b"text/event-stream")
        chunk = {"choices": [{"index": 0, "delta": {"content": "Hel"}}]}
        error = {"error": {"message": f"quota check failed for {echoed(request)}"}}
        return b"".join(b"data: " + orjson.dumps(c) + b"\n\n" for c in (chunk, error))

    return reply


def logged(action: Callable[[], Any]) -> tuple[Any, str]:
    """`action()`'s result, and every event logged meanwhile, formatted and as JSON."""
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        result = action()
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert any(e.get("log_namespace") == "ccproxy.access" for e in events)
    return result, "\n".join(formatEvent(e) + "\n" + eventAsJSON(e) for e in events)


def assertNowhere(secrets: list[str], *texts: bytes | str) -> None:
    for text in texts:
        raw = text if isinstance(text, bytes) else text.encode()
        for secret in secrets:
            assert secret.encode() not in raw


PATHS = [
    pytest.param(echoJSON(401), False, 401, id="401"),
    pytest.param(echoJSON(401), True, 401, id="401-to-a-stream-request"),
    pytest.param(echoText(500), False, 500, id="500-plain-text"),
    pytest.param(echoInStream(), True, 200, id="error-inside-a-200-stream"),
    pytest.param(echoJSON(200, withCode=True), False, 401, id="error-in-a-200-json"),
]


@pytest.mark.parametrize(("reply", "stream", "status"), PATHS)
def test_the_shared_upstream_key_never_reaches_the_client_or_the_log(
    reply: Responder, stream: bool, status: int
) -> None:
    h = Harness.build(CONFIG, SECRETS)
    h.upstream.queue(reply)
    answer, logs = logged(lambda: h.post(message(stream=stream), headers=ALICE))
    assert answer.status == status
    assert h.upstream.received[0].headers["authorization"] == f"Bearer {SECRETS['CORP']}"
    assertNowhere(list(SECRETS.values()), answer.body, logs)
    # Only the secrets went: the client and the operator still read the gateway's words.
    if stream and status == 200:
        name, data = parseSSE(answer.body)[-1]
        assert name == "error"
        said = data["error"]["message"]
    else:
        said = answer.json()["error"]["message"]
    assert said.startswith("corp: ") and REDACTED in said
    assert "x-portal-token" in said
    assert said in logs


@pytest.mark.parametrize(("reply", "stream", "status"), PATHS)
def test_a_forwarded_callers_key_is_not_echoed_back(
    reply: Responder, stream: bool, status: int
) -> None:
    """An upstream without a key of its own is sent the caller's: echoed, it goes
    back to that caller in the clear and into the log. Neither."""
    h = Harness.build(CONFIG, SECRETS)
    h.upstream.queue(reply)
    bob = {"authorization": f"Bearer {SECRETS['BOB']}"}
    answer, logs = logged(lambda: h.post(message(model="own-x", stream=stream), headers=bob))
    assert h.upstream.received[0].headers["authorization"] == f"Bearer {SECRETS['BOB']}"
    assert answer.status == status
    assertNowhere(list(SECRETS.values()), answer.body, logs)


def test_a_callers_own_key_is_redacted_when_no_config_knows_it() -> None:
    """Without clients any key is let through and forwarded: the one sent is redacted
    too, key-shaped or not."""
    h = Harness.build(OPEN, SECRETS)
    h.upstream.queue(echoJSON(401))
    mine = "my-own-gateway-key-3301"
    answer, logs = logged(lambda: h.post(message(model="own-x"), headers={"x-api-key": mine}))
    assert answer.status == 401
    assertNowhere([mine], answer.body, logs)


def test_payload_logs_hold_no_key() -> None:
    h = Harness.build(CONFIG, SECRETS)
    h.upstream.queue(echoInStream())
    prompt = f"use {SECRETS['CORP']} and Bearer sk-pasted-into-a-prompt-0042"
    _, logs = logged(lambda: h.post(message(prompt, stream=True), headers=ALICE))
    assert "ccproxy.payload" in logs
    assertNowhere([*SECRETS.values(), "sk-pasted-into-a-prompt-0042"], logs)


def test_a_key_across_the_payload_cut_is_redacted_whole() -> None:
    h = Harness.build(CONFIG + "log_payload_max_chars: 200\n", SECRETS)
    key = SECRETS["CORP"]
    before = orjson.dumps(message("MARK")).index(b"MARK")  # the JSON before the prompt
    for inside in range(1, len(key)):  # the cut falls `inside` characters into the key
        prompt = "x" * (200 - before - inside) + key + "y" * 500
        _, logs = logged(lambda: h.post(message(prompt), headers=ALICE))  # noqa: B023
        assert key[:inside] + "…" not in logs and key not in logs


def test_context_overflow_reaches_the_client_verbatim() -> None:
    """Claude Code's auto-compact keys on Anthropic's own `prompt is too long: …`:
    it goes to the client as the upstream said it, not prefixed, not redacted."""
    h = Harness.build(CONFIG, SECRETS)
    text = "prompt is too long: 210000 tokens > 200000 maximum"
    body = {"type": "error", "error": {"type": "invalid_request_error", "message": text}}

    def reply(request: IRequest, fake: FakeOpenAI) -> bytes:
        request.setResponseCode(400)
        request.setHeader(b"content-type", b"application/json")
        return orjson.dumps(body)

    h.upstream.queue(reply)
    answer, logs = logged(lambda: h.post(message(stream=True), headers=ALICE))
    assert answer.status == 400
    assert answer.json()["error"] == {"type": "invalid_request_error", "message": text}
    assert text in logs


# -- the redactor ---------------------------------------------------------------------


def test_redactor_takes_out_configured_and_key_shaped_values() -> None:
    redactor = Redactor.of(["corp-key-9d81f02c", "corp-key-9d81f02c-long", "short", None])
    text = (
        "a corp-key-9d81f02c-long b corp-key-9d81f02c c Bearer opaque.token/1= "
        "d sk-proj-abcdef123456 e eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.sig-x "
        "f short g task-abcdef123456 h extra-key-1234"
    )
    assert redactor.redact(text, "extra-key-1234", None, "tiny") == (
        "a [redacted] b [redacted] c Bearer [redacted] d [redacted] e [redacted] "
        "f short g task-abcdef123456 h [redacted]"
    )


@pytest.mark.parametrize(
    "text",
    [
        "prompt is too long: 210000 tokens > 200000 maximum",
        "Input is too long.",
        "The request size (30037042 bytes) exceeds 30.000MB limit.",
        "model 'claude-sonnet-4-5' is not served by this proxy (no route matches it)",
    ],
)
def test_redaction_leaves_plain_messages_alone(text: str) -> None:
    config = Config.fromYAML(CONFIG, SECRETS)
    assert config.redactor.redact(text, SECRETS["ALICE"]) == text


@pytest.mark.parametrize(
    ("name", "value", "secrets"),
    [
        ("Authorization", "Basic dXNlcjpwYXNz", ["Basic dXNlcjpwYXNz", "dXNlcjpwYXNz"]),
        ("X-Api-Key", "abc", ["abc"]),
        ("Ocp-Apim-Subscription-Key", "k1", ["k1"]),
        ("Cookie", "session=1", ["session=1"]),
        ("OpenAI-Organization", "org-AbC123dEf456GhI7", ["org-AbC123dEf456GhI7"]),
        ("X-Custom", "Token q8Zr2LmN0pXy7TuV", ["q8Zr2LmN0pXy7TuV"]),
        ("X-Team", "platform", []),
        ("X-Title", "Claude Code via ccproxy", []),
    ],
)
def test_secret_looking_headers(name: str, value: str, secrets: list[str]) -> None:
    assert headerSecrets(name, value) == secrets


def secretsOf(config: Config) -> Iterator[str]:
    return (s for s in config.secrets() if s)


def test_a_config_knows_every_secret_it_holds() -> None:
    config = Config.fromYAML(CONFIG, SECRETS)
    assert set(secretsOf(config)) == set(SECRETS.values())
    assert config.redactor.secrets == frozenset(SECRETS.values())
