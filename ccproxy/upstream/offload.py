"""Pure CPU work on a large request, off the reactor thread.

Translating a request costs time in proportion to its size: a 30 MiB body (the
default `max_body_bytes` is 32 MiB) takes some 0.2 s to translate and 3.7 s to
estimate for count_tokens. On the reactor thread that is a freeze for every other
user. In a thread, the interpreter hands the reactor the lock every few
milliseconds, so small requests keep being answered while the big one is worked
on. Small work stays inline: a thread hop costs more than it saves.

It lives beside the dispatcher, its lowest user; the web layer uses it too.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from attrs import frozen
from twisted.internet.threads import deferToThreadPool

T = TypeVar("T")

THRESHOLD = 1024 * 1024
"""Bytes of request body from which its translation goes to a thread."""


@frozen
class Offload:
    """Runs `fn` in the reactor's thread pool when `size` is large, inline else.

    Without a reactor (the in-memory tests), everything runs inline.
    """

    reactor: Any = None
    threshold: int = THRESHOLD

    async def run(self, size: int, fn: Callable[..., T], *args: Any) -> T:
        if self.reactor is None or size < self.threshold:
            return fn(*args)
        result: T = await deferToThreadPool(self.reactor, self.reactor.getThreadPool(), fn, *args)
        return result
