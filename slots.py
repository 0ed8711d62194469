"""Bounded concurrency per server and model: at most N generations in flight, the rest wait here, in order.

ComfyUI starts every item of a list at once, and LM Studio queues what exceeds its `parallel` slots inside
itself with nothing on the wire, so a long list would hit the idle timeout while queued. Waiting happens here
instead, before the request is sent: the idle timeout then counts only while a request is really in flight.

Pools live per event loop. ComfyUI runs each prompt in a fresh loop, so a pool spans all nodes and all list
items of one prompt and is gone with it. No ComfyUI imports.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

# Where a server does not say how many predictions it runs at once (a model not loaded yet, an OpenAI-compatible
# server that is not LM Studio or llama.cpp): two overlap one prompt's processing with another's generation, and
# any server copes with two.
DEFAULT_PARALLEL = 2


@dataclass
class SlotPool:
    """N slots for one server and model; `limit` is fixed when the pool is made."""

    limit: int
    source: str  # where `limit` came from, for the status line: "LM Studio", "max_parallel", "default"
    in_flight: int = 0
    _semaphore: asyncio.Semaphore = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._semaphore = asyncio.Semaphore(self.limit)

    def free(self) -> bool:
        return not self._semaphore.locked()

    async def acquire(self) -> None:
        await self._semaphore.acquire()
        self.in_flight += 1

    def release(self) -> None:
        self.in_flight -= 1
        self._semaphore.release()


PoolKey = tuple[str, str]
_pools: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[PoolKey, asyncio.Future[SlotPool]]] = (
    weakref.WeakKeyDictionary()
)


async def pool_for(key: PoolKey, override: int, discover: Callable[[], Awaitable[int | None]]) -> SlotPool:
    """The running prompt's pool for `key` (server, model), made by the first caller.

    `override` > 0 sets N; otherwise `discover()` asks the server, once per prompt, and `DEFAULT_PARALLEL` stands
    in where it does not say. Later callers wait for the first one's answer, so the server is asked once.
    """
    pools = _pools.setdefault(asyncio.get_running_loop(), {})
    if key not in pools:
        future: asyncio.Future[SlotPool] = asyncio.get_running_loop().create_future()
        pools[key] = future
        try:
            found = None if override > 0 else await discover()
        except BaseException:
            del pools[key]
            future.cancel()
            raise
        if override > 0:
            future.set_result(SlotPool(override, "max_parallel"))
        elif found:
            future.set_result(SlotPool(found, "server"))
        else:
            future.set_result(SlotPool(DEFAULT_PARALLEL, "default"))
    return await asyncio.shield(pools[key])
