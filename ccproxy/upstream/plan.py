"""What to send along a route, and how to read what comes back: a `Plan`.

A plan is made once per client request, from values only (the decoded body, the
route's targets, the config's upstreams), and answers the dispatcher's questions
with pure functions of them: the body for each upstream in its own dialect and
model name, whether an answer is read whole, and what a whole answer amounts to.
The dispatcher asks; nothing here calls back into the web layer.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import orjson
from attrs import evolve, field, frozen

from ccproxy.config.model import Upstream
from ccproxy.config.routing import Target
from ccproxy.errors import (
    ProxyError,
    badGateway,
    invalidRequest,
    messagesUpstreamError,
    statusInBody,
    upstreamError,
)
from ccproxy.translate.names import PendingNames, ToolNames
from ccproxy.translate.passthrough import MessageStream, wholeMessage
from ccproxy.translate.request import refuseSafeguards, stopSequences, toOpenAI
from ccproxy.translate.response import fromOpenAI
from ccproxy.translate.responses import fromResponses, toResponses
from ccproxy.translate.responsestream import ResponsesStreamTranslator
from ccproxy.translate.stream import Event, StreamTranslator, messageStart
from ccproxy.translate.toolsearch import ToolSearch, continued


@frozen
class Rendering:
    """How an upstream's answer is rendered for this client: the message id, the
    model name it asked for (and expects back), its stop sequences and its tool
    names. Small, so an answer carries it while the request itself is let go."""

    messageId: str
    model: str
    stops: Sequence[str] = ()
    toolNames: ToolNames | PendingNames = field(factory=ToolNames, alias="names")
    """The request's tool names, or where they will be: the request's first
    translation finds them in its walk (`PendingNames`), not a walk of their own."""
    serverTools: frozenset[str] = frozenset()
    """Upstream names of the functions ccproxy runs itself (its tool search)."""

    @property
    def names(self) -> ToolNames:
        """The request's tool names, both ways (client <-> upstream)."""
        names = self.toolNames
        return names.names if isinstance(names, PendingNames) else names

    def keepNames(self) -> None:
        """The request is about to be emptied: its tool names are found now if no
        translation found them (a route whose upstreams take the body as it is)."""
        if isinstance(self.toolNames, PendingNames):
            self.toolNames.names  # noqa: B018 (a property that finds and keeps them)

    def message(self, upstream: Upstream, raw: bytes) -> dict[str, Any]:
        """A whole JSON answer as an Anthropic message (a 502 when it is none)."""
        return apiOf(upstream).message(self, upstream, raw)

    def start(self) -> list[Event]:
        """The stream's `message_start`, the same whichever upstream answers."""
        return [messageStart(self.messageId, self.model)]

    def streamTranslator(
        self, upstream: Upstream, target: Target | None = None
    ) -> StreamTranslator | MessageStream:
        """A reader of `upstream`'s stream (serving `target`): a translator into this
        client's events, or a `MessageStream` when its events pass through as
        they are."""
        return apiOf(upstream).stream(self, upstream, target)


@frozen
class Plan:
    """One Anthropic Messages request, ready to send to the targets of its route."""

    request: dict[str, Any] = field(repr=False)
    """The client's decoded body. Large (a 50 KB request is some 100 KB of
    objects): the dispatcher lets go of the plan once an upstream has answered."""
    rendering: Rendering
    targets: Sequence[Target]
    upstreams: Mapping[str, Upstream]
    """The config's upstreams when the request began (a reload does not move it)."""
    defaultMaxTokens: int
    maxResponseBytes: int
    size: int = 0
    """Bytes of the request as it came (how much work translating it is)."""
    cacheKey: str | None = None
    """The client's session, sent as `prompt_cache_key` where a profile wants it."""
    search: ToolSearch | None = None
    """The tool search ccproxy runs for this request, if it asks for one."""
    raw: bytes | None = field(default=None, repr=False)
    """The client's body as it came, kept when an upstream of the route passes it
    through (`api: messages`): sent with only its model changed."""
    clientHeaders: Mapping[str, str] = field(factory=dict, repr=False)
    """The client's headers an upstream may get (`upstream.client.FORWARDED_HEADERS`)."""
    stream: bool = False
    """Whether the client asked for a stream (read once: see `letGo`)."""

    @classmethod
    def forRequest(cls, body: dict[str, Any], model: str, messageId: str, **kwargs: Any) -> Plan:
        """A plan for `body`, with the stop sequences, tool names and tool search
        read from it; a 400 for what a target that translates cannot do
        (`safeguards`, which only an upstream speaking the Messages API can run)."""
        upstreams, targets = kwargs["upstreams"], kwargs["targets"]
        # (The targets are asked only when the field is there: most bodies lack it.)
        if "safeguards" in body and any(apiOf(upstreams[t.upstream]).translates for t in targets):
            refuseSafeguards(body)
        search = ToolSearch.fromRequest(body)
        if search is None:  # the names: found by the first translation's walk
            names: ToolNames | PendingNames = PendingNames(body)
            server: frozenset[str] = frozenset()
        else:
            names = ToolNames.fromRequest(body)
            server = frozenset({names.toUpstream(search.name)})
        rendering = Rendering(messageId, model, stopSequences(body), names, server)
        return cls(body, rendering, search=search, stream=body.get("stream") is True, **kwargs)

    def continued(self, prefix: list[dict[str, Any]], began: str) -> Plan:
        """The plan that has an upstream go on with an answer begun with `prefix`
        (ccproxy's tool search ran in it) by upstream `began`: the same message,
        one more request, to the targets that can go on with it. The answer's
        stream is read by `began`'s translator, so another upstream only when both
        speak chat (a Responses answer's reasoning is signed with its upstream's
        name, and an upstream speaking the Messages API would get the first body)."""
        chat = self.upstreams[began].api == "chat"
        targets = tuple(
            t
            for t in self.targets
            if t.upstream == began or (chat and self.upstreams[t.upstream].api == "chat")
        )
        return evolve(self, request=continued(self.request, prefix), targets=targets)

    def letGo(self) -> None:
        """Every target's body is made: empty the decoded request (in place: the
        plan is shared by the dispatch and the request's handler), unless ccproxy's
        tool search may send it again. A stream waiting for its upstream's head
        then holds its body's bytes, not some 100 KB of objects per 50 KB
        request: thousands of streams opening at once wait that way."""
        if self.search is None:
            self.rendering.keepNames()
            self.request.clear()

    def bodyFor(self, upstream: Upstream, target: Target) -> bytes:
        """The request body in `upstream`'s dialect; a client's mistake is a 400
        here, before any attempt."""
        return apiOf(upstream).body(self, upstream, target)

    def searchesFor(self, upstream: Upstream) -> bool:
        """Whether ccproxy runs the request's tool search in `upstream`'s answer (an
        upstream speaking the Messages API runs its own)."""
        return self.search is not None and apiOf(upstream).translates

    def readsWhole(self, isEventStream: bool) -> bool:
        """Whether a 2xx answer is read whole before the client gets a byte: every
        answer but a stream to a stream request, so that a failure reading it
        still fails over."""
        return not (self.stream and isEventStream)


class ChatAPI:
    """`api: chat`: OpenAI chat/completions, translated both ways."""

    translates = True
    """ccproxy shapes the request and reads the answer (its own tool search included)."""

    def body(self, plan: Plan, upstream: Upstream, target: Target) -> bytes:
        try:
            return orjson.dumps(self.translated(plan, upstream, target))
        except orjson.JSONEncodeError:
            raise nestedTooDeep() from None

    def translated(self, plan: Plan, upstream: Upstream, target: Target) -> dict[str, Any]:
        """The request in this API's words, for `upstream` serving `target` (the
        first finds the request's tool names: see `Rendering.toolNames`)."""
        return toOpenAI(
            plan.request, names=plan.rendering.toolNames, **_translating(plan, upstream, target)
        )

    def message(self, rendering: Rendering, upstream: Upstream, raw: bytes) -> dict[str, Any]:
        data = _json(upstream, raw)
        if isinstance(data, dict) and "error" in data and not data.get("choices"):
            raise errorInBody(upstream.name, raw, data)
        try:
            return fromOpenAI(
                data,
                messageId=rendering.messageId,
                model=rendering.model,
                stopSequences=rendering.stops,
                thinkTags=upstream.profile.thinkTags,
                toolName=rendering.names.fromUpstream,
            )
        except ProxyError as e:  # an answer the translator cannot use
            raise e.naming(upstream.name) from None

    def stream(
        self, rendering: Rendering, upstream: Upstream, target: Target | None
    ) -> StreamTranslator:
        return StreamTranslator(
            rendering.messageId,
            rendering.model,
            rendering.stops,
            thinkTags=upstream.profile.thinkTags,
            toolName=rendering.names.fromUpstream,
            serverTools=rendering.serverTools,
            contextWindow=target.contextWindow if target is not None else None,
        )

    def error(
        self, upstream: str, status: int, raw: bytes, headers: Mapping[str, str]
    ) -> ProxyError:
        return upstreamError(upstream, status, raw, headers)


class MessagesAPI:
    """`api: messages`: the Anthropic Messages API, passed through. The body goes
    with only its model changed, the answer comes back as it was sent
    (`ccproxy.translate.passthrough` reads its usage and its end)."""

    translates = False

    def body(self, plan: Plan, upstream: Upstream, target: Target) -> bytes:
        return messagesBody(plan.raw, plan.request, target.modelFor(plan.rendering.model))

    def message(self, rendering: Rendering, upstream: Upstream, raw: bytes) -> dict[str, Any]:
        try:
            return wholeMessage(_json(upstream, raw))
        except ProxyError as e:
            raise e.naming(upstream.name) from None

    def stream(
        self, rendering: Rendering, upstream: Upstream, target: Target | None
    ) -> MessageStream:
        return MessageStream()

    def error(
        self, upstream: str, status: int, raw: bytes, headers: Mapping[str, str]
    ) -> ProxyError:
        return messagesUpstreamError(upstream, status, raw, headers)


class ResponsesAPI(ChatAPI):
    """`api: responses`: OpenAI's Responses API, translated both ways (on the chat
    translators: `ccproxy.translate.responses`). Its errors read as chat's."""

    def translated(self, plan: Plan, upstream: Upstream, target: Target) -> dict[str, Any]:
        """The request as Responses input items; its thinking goes back only to the
        upstream that signed it (`upstream`)."""
        return toResponses(
            plan.request,
            upstream=upstream.name,
            names=plan.rendering.names,
            **_translating(plan, upstream, target),
        )

    def message(self, rendering: Rendering, upstream: Upstream, raw: bytes) -> dict[str, Any]:
        """A whole Responses answer (its `error` set, or `status: failed`: an error)."""
        data = _json(upstream, raw)
        if isinstance(data, dict) and (data.get("error") or data.get("status") == "failed"):
            raise errorInBody(upstream.name, raw, data)
        try:
            return fromResponses(
                data,
                messageId=rendering.messageId,
                model=rendering.model,
                upstream=upstream.name,
                stopSequences=rendering.stops,
                toolName=rendering.names.fromUpstream,
            )
        except ProxyError as e:
            raise e.naming(upstream.name) from None

    def stream(
        self, rendering: Rendering, upstream: Upstream, target: Target | None
    ) -> StreamTranslator:
        return ResponsesStreamTranslator(
            rendering.messageId,
            rendering.model,
            rendering.stops,
            toolName=rendering.names.fromUpstream,
            serverTools=rendering.serverTools,
            contextWindow=target.contextWindow if target is not None else None,
            upstream=upstream.name,
        )


API = ChatAPI | MessagesAPI
APIS: Mapping[str, API] = {
    "chat": ChatAPI(),
    "messages": MessagesAPI(),
    "responses": ResponsesAPI(),
}
"""What each `upstreams.NAME.api` means for a request: how its body is made, its
answer read and its errors kept. A new API is one class and one entry here."""


def apiOf(upstream: Upstream) -> API:
    return APIS[upstream.api]


_MODEL_KEY = re.compile(
    rb'"(?:m|\\u006[dD])(?:o|\\u006[fF])(?:d|\\u0064)(?:e|\\u0065)(?:l|\\u006[cC])"'
)
"""`"model"` as a JSON string, its letters plain or escaped (`"\\u006dodel"`)."""


def _translating(plan: Plan, upstream: Upstream, target: Target) -> dict[str, Any]:
    """What every translator is told: the model per the target, the upstream's
    profile, the defaults and the cache key (the request's tool names: each API's
    own way, see `ChatAPI.translated`)."""
    return {
        "model": target.modelFor(plan.rendering.model),
        "profile": upstream.profile,
        "defaultMaxTokens": plan.defaultMaxTokens,
        "cacheKey": plan.cacheKey,
    }


def messagesBody(raw: bytes | None, request: dict[str, Any], model: str) -> bytes:
    """The client's Messages body for an upstream that speaks the Messages API, with
    `model` as its model: the bytes as they came when the model is their first
    key and is named once (as Claude Code sends it), with only that value
    replaced; otherwise encoded once from the decoded request (a body whose
    `model` comes twice, however spelled, must not reach the upstream with the one
    not checked: JSON readers keep a key's last value, the bytes have the first
    replaced)."""
    if raw is not None:
        head = b'{"model":' + orjson.dumps(request["model"])
        if raw.startswith(head) and raw[len(head) : len(head) + 1] in (b",", b"}"):
            if len(_MODEL_KEY.findall(raw)) == 1:
                if model == request["model"]:
                    return raw
                return b'{"model":' + orjson.dumps(model) + raw[len(head) :]
    try:
        return orjson.dumps({**request, "model": model})
    except orjson.JSONEncodeError:
        raise nestedTooDeep() from None


def _json(upstream: Upstream, raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise badGateway(upstream.name, f"the answer is not JSON: {raw[:200]!r}") from None


def errorInBody(upstream: str, raw: bytes, data: dict[str, Any]) -> ProxyError:
    """A 2xx answer that is an error object: its own `code` when it is an HTTP status."""
    return upstreamError(upstream, statusInBody(data), raw)


# orjson reads up to 1024 levels of nesting but writes at most 254: a value nested
# deeper than that (a tool schema, a tool call's input) cannot be forwarded. Caught
# where it is encoded, so that ordinary requests pay nothing to find out.
def nestedTooDeep() -> ProxyError:
    """The client's request cannot be encoded for an upstream."""
    return invalidRequest("the request nests values too deeply to forward (over 250 levels)")
