"""ccproxy's tool search inside one answer: the upstream calls after the first.

A request that offers Anthropic's server-side tool search
(`tool_search_tool_regex_20251119`, `…_bm25_…`) gets it from ccproxy
(`ccproxy.translate.toolsearch`): when the model calls the search, ccproxy runs
it, and the same answer goes on with another upstream call that carries the
answer so far and defines the tools found. The client gets one Anthropic
message: `server_tool_use` and `tool_search_tool_result` blocks where the searches
ran, the blocks of every upstream answer in order, the usage of all of them.

Each upstream call is a dispatch of its own (breaker, slot, retries, failover);
the previous one's slot is given back before the next is taken, so a search
never waits on a slot its own answer holds.
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from typing import Any

from attrs import define, field

from ccproxy.errors import badGateway
from ccproxy.observe.accesslog import Attempt
from ccproxy.translate.response import sumUsage
from ccproxy.translate.toolsearch import MAX_ROUNDS, ToolSearch, runSearches
from ccproxy.upstream.dispatch import Answer, Dispatcher
from ccproxy.upstream.plan import Plan


@define
class SearchRounds:
    """The rounds of one answer after its first; an async context manager that
    closes every round's answer when the answer is over."""

    dispatcher: Dispatcher
    plan: Plan = field(repr=False)
    """The client's request is kept, since each round sends it again."""
    search: ToolSearch
    callerKey: str | None = field(repr=False)
    deadline: float | None
    attempts: list[Attempt]
    rounds: int = 0
    """Upstream calls made after the first."""
    current: Answer | None = None
    """The answer of the last round, once there is more than one."""
    _stack: AsyncExitStack = field(factory=AsyncExitStack)

    @classmethod
    def forPlan(
        cls,
        dispatcher: Dispatcher,
        plan: Plan,
        callerKey: str | None,
        deadline: float | None,
        attempts: list[Attempt],
    ) -> SearchRounds | None:
        """The rounds of `plan`'s answer, when ccproxy runs a tool search for it."""
        if plan.search is None:
            return None
        return cls(dispatcher, plan, plan.search, callerKey, deadline, attempts)

    async def __aenter__(self) -> SearchRounds:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        """Close every later round's answer (its slot, its breaker's verdict)."""
        await self._stack.__aexit__(*exc)

    def more(self) -> bool:
        """Whether the answer may go on after this round's searches."""
        return self.rounds < MAX_ROUNDS

    def settle(self, first: Answer, ok: bool | None) -> None:
        """How relaying went, for the breaker of the round that was being relayed."""
        (self.current or first).settle(ok)

    async def next(self, previous: Answer, prefix: list[dict[str, Any]]) -> Answer:
        """The upstream's stream that goes on with an answer begun with `prefix`."""
        answer = await self._send(previous, prefix)
        if answer.message is not None:
            raise badGateway(
                answer.upstream.name, "the stream that continues a tool search came back as JSON"
            )
        return answer

    async def whole(self, first: Answer) -> dict[str, Any]:
        """A whole answer with every search the model asked for run in it."""
        message: dict[str, Any] = first.message or {}
        content: list[dict[str, Any]] = []
        usages: list[dict[str, int]] = []
        taken: set[str] = set()
        previous = first
        while True:
            ran, searches = runSearches(message["content"], self.search, taken)
            content += ran
            usages.append(message["usage"])
            clientCalls = any(block["type"] == "tool_use" for block in ran)
            if not searches or clientCalls or not self.more():
                stop = "pause_turn" if searches and not clientCalls else message["stop_reason"]
                return {
                    **message,
                    "content": content,
                    "stop_reason": stop,
                    "usage": sumUsage(usages),
                }
            previous = await self._send(previous, content)
            if previous.message is None:
                raise badGateway(
                    previous.upstream.name,
                    "the answer that continues a tool search came back as a stream",
                )
            message = previous.message

    async def _send(self, previous: Answer, prefix: list[dict[str, Any]]) -> Answer:
        previous.close(None)  # its slot back first: the next round may need it
        self.rounds += 1
        self.current = await self._stack.enter_async_context(
            self.dispatcher.send(
                self.plan.continued(prefix, previous.upstream.name),
                self.callerKey,
                self.deadline,
                self.attempts,
            )
        )
        return self.current
