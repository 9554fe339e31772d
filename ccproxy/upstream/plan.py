"""What to send along a route, and how to read what comes back: a `Plan`.

A plan is made once per client request, from values only (the decoded body, the
route's targets, the config's upstreams), and answers the dispatcher's questions
with pure functions of them: the body for each upstream in its own dialect and
model name, whether an answer is read whole, and what a whole answer amounts to.
The dispatcher asks; nothing here calls back into the web layer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

import orjson
from attrs import evolve, field, frozen

from ccproxy.config.model import Upstream
from ccproxy.config.routing import Target
from ccproxy.errors import ProxyError, badGateway, invalidRequest, statusInBody, upstreamError
from ccproxy.translate.names import ToolNames
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
    names: ToolNames = field(factory=ToolNames)
    serverTools: frozenset[str] = frozenset()
    """Upstream names of the functions ccproxy runs itself (its tool search)."""

    def message(self, upstream: Upstream, raw: bytes) -> dict[str, Any]:
        """A whole JSON answer as an Anthropic message (a 502 when it is none)."""
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise badGateway(upstream.name, f"the answer is not JSON: {raw[:200]!r}") from None
        if upstream.api == "responses":
            return self._response(upstream, raw, data)
        if isinstance(data, dict) and "error" in data and not data.get("choices"):
            raise errorInBody(upstream.name, raw, data)
        try:
            return fromOpenAI(
                data,
                messageId=self.messageId,
                model=self.model,
                stopSequences=self.stops,
                thinkTags=upstream.profile.thinkTags,
                toolName=self.names.fromUpstream,
            )
        except ProxyError as e:  # an answer the translator cannot use
            raise e.naming(upstream.name) from None

    def _response(self, upstream: Upstream, raw: bytes, data: Any) -> dict[str, Any]:
        """A whole Responses answer (its `error` set, or `status: failed`: an error)."""
        if isinstance(data, dict) and (data.get("error") or data.get("status") == "failed"):
            raise errorInBody(upstream.name, raw, data)
        try:
            return fromResponses(
                data,
                messageId=self.messageId,
                model=self.model,
                upstream=upstream.name,
                stopSequences=self.stops,
                toolName=self.names.fromUpstream,
            )
        except ProxyError as e:
            raise e.naming(upstream.name) from None

    def start(self) -> list[Event]:
        """The stream's `message_start`, the same whichever upstream answers."""
        return [messageStart(self.messageId, self.model)]

    def streamTranslator(
        self, upstream: Upstream, target: Target | None = None
    ) -> StreamTranslator:
        """A translator of `upstream`'s stream (serving `target`) into this client's
        events."""
        contextWindow = target.contextWindow if target is not None else None
        if upstream.api == "responses":
            return ResponsesStreamTranslator(
                self.messageId,
                self.model,
                self.stops,
                toolName=self.names.fromUpstream,
                serverTools=self.serverTools,
                contextWindow=contextWindow,
                upstream=upstream.name,
            )
        return StreamTranslator(
            self.messageId,
            self.model,
            self.stops,
            thinkTags=upstream.profile.thinkTags,
            toolName=self.names.fromUpstream,
            serverTools=self.serverTools,
            contextWindow=contextWindow,
        )


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

    @classmethod
    def forRequest(cls, body: dict[str, Any], model: str, messageId: str, **kwargs: Any) -> Plan:
        """A plan for `body`, with the stop sequences, tool names and tool search
        read from it; a 400 for what none of the targets can do (every upstream is
        OpenAI-compatible: `safeguards`)."""
        refuseSafeguards(body)
        names = ToolNames.fromRequest(body)
        search = ToolSearch.fromRequest(body)
        server = frozenset({names.toUpstream(search.name)}) if search is not None else frozenset()
        rendering = Rendering(messageId, model, stopSequences(body), names, server)
        return cls(body, rendering, search=search, **kwargs)

    def continued(self, prefix: list[dict[str, Any]]) -> Plan:
        """The plan that has an upstream go on with an answer begun with `prefix`
        (ccproxy's tool search ran in it): the same message, one more request."""
        return evolve(self, request=continued(self.request, prefix))

    @property
    def stream(self) -> bool:
        """Whether the client asked for a stream."""
        return self.request.get("stream") is True

    def bodyFor(self, upstream: Upstream, target: Target) -> bytes:
        """The request body in `upstream`'s dialect; a client's mistake is a 400
        here, before any attempt."""
        translate = (
            partial(toResponses, upstream=upstream.name)
            if upstream.api == "responses"
            else toOpenAI
        )
        translated = translate(
            self.request,
            model=target.modelFor(self.rendering.model),
            profile=upstream.profile,
            defaultMaxTokens=self.defaultMaxTokens,
            names=self.rendering.names,
            cacheKey=self.cacheKey,
        )
        try:
            return orjson.dumps(translated)
        except orjson.JSONEncodeError:
            raise nestedTooDeep() from None

    def readsWhole(self, isEventStream: bool) -> bool:
        """Whether a 2xx answer is read whole before the client gets a byte: every
        answer but a stream to a stream request, so that a failure reading it
        still fails over."""
        return not (self.stream and isEventStream)


def errorInBody(upstream: str, raw: bytes, data: dict[str, Any]) -> ProxyError:
    """A 2xx answer that is an error object: its own `code` when it is an HTTP status."""
    return upstreamError(upstream, statusInBody(data), raw)


# orjson reads up to 1024 levels of nesting but writes at most 254: a value nested
# deeper than that (a tool schema, a tool call's input) cannot be forwarded. Caught
# where it is encoded, so that ordinary requests pay nothing to find out.
def nestedTooDeep() -> ProxyError:
    """The client's request cannot be encoded for an upstream."""
    return invalidRequest("the request nests values too deeply to forward (over 250 levels)")
