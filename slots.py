"""Bounded concurrency per server and model: at most N generations in flight, the rest wait here, in order.

ComfyUI starts every item of a list at once, and LM Studio queues what exceeds its `parallel` slots inside
itself with nothing on the wire, so a long list would hit the idle timeout while queued. Waiting happens here
instead, before the request is sent: the idle timeout then counts only while a request is really in flight.

N is learnt lazily: the first request goes at once (one request never exceeds a slot), and the server is asked
for its slots only when a second one arrives, so a single run pays nothing for it.

Pools live per event loop. ComfyUI runs each prompt in a fresh loop, so a pool spans all nodes and all list
items of one prompt and is gone with it. No ComfyUI imports.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections import deque
from collections.abc import Awaitable, Callable

log = logging.getLogger("lmstudio_stream")

# Where a server does not say how many predictions it runs at once (a model not loaded yet, an OpenAI-compatible
# server that is not LM Studio or llama.cpp): two overlap one prompt's processing with another's generation, and
# any server copes with two.
DEFAULT_PARALLEL = 2

Discover = Callable[[], Awaitable[int | None]]


class SlotPool:
    """N slots for one server and model, handed out first come, first served."""

    def __init__(self, discover: Discover, override: int = 0) -> None:
        self._discover = discover
        self.limit: int | None = override if override > 0 else None
        self.source = "max_parallel" if override > 0 else ""  # where `limit` came from: max_parallel|server|default
        self.in_flight = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._learning: asyncio.Future[None] | None = None

    def try_acquire(self) -> bool:
        """Take a slot without waiting, if one is free."""
        unknown_and_idle = self.limit is None and self.in_flight == 0
        if unknown_and_idle or (self.limit is not None and self.in_flight < self.limit and not self._waiters):
            self.in_flight += 1
            return True
        return False

    async def acquire(self) -> None:
        """Wait for a slot, in arrival order."""
        if self.try_acquire():
            return
        await self._learn_limit()
        if self.try_acquire():
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter  # `_wake` counts the slot before it wakes us
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # the slot came just as we were cancelled
            elif waiter in self._waiters:
                self._waiters.remove(waiter)
            raise

    def release(self) -> None:
        self.in_flight -= 1
        self._wake()

    async def _learn_limit(self) -> None:
        if self.limit is None:
            if self._learning is None:
                self._learning = asyncio.ensure_future(self._ask_server())
            await asyncio.shield(self._learning)

    async def _ask_server(self) -> None:
        try:
            found = await self._discover()
        except Exception:  # any failure to learn N means the default, never a failed run
            log.debug("Could not learn the server's parallel slots", exc_info=True)
            found = None
        self.limit, self.source = (found, "server") if found else (DEFAULT_PARALLEL, "default")
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self.limit is not None and self.in_flight < self.limit:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self.in_flight += 1
                waiter.set_result(None)


PoolKey = tuple[str, str]
_pools: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[PoolKey, SlotPool]] = weakref.WeakKeyDictionary()


def pool_for(key: PoolKey, override: int, discover: Discover) -> SlotPool:
    """The running prompt's pool for `key` (server, model), made by the first caller.

    `override` > 0 sets N (the first caller's, for the whole prompt); otherwise `discover()` asks the server when
    it first matters, and `DEFAULT_PARALLEL` stands in where it does not say.
    """
    pools = _pools.setdefault(asyncio.get_running_loop(), {})
    if key not in pools:
        pools[key] = SlotPool(discover, override)
    return pools[key]
