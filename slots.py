"""Bounded concurrency per server and model: at most N generations in flight, the rest wait here, in order.

ComfyUI starts every item of a list at once, and LM Studio queues what exceeds its `parallel` slots inside
itself with nothing on the wire, so a long list would hit the idle timeout while queued. Waiting happens here
instead, before the request is sent: the idle timeout then counts only while a request is really in flight.

N comes from a `ConcurrencyLimit` (see `limiter`): the user's `max_parallel`, else the server's reported slots,
else found by trying. It is learnt lazily: the first request goes at once (one request never exceeds a slot), and
the server is asked for its slots only when a second one arrives, so a single run pays nothing for it. A refusal
lowers N; a refusal of the only request out holds every request for its Retry-After.

Pools live per event loop. ComfyUI runs each prompt in a fresh loop, so a pool spans all nodes and all list
items of one prompt and is gone with it. No ComfyUI imports.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from .limiter import ConcurrencyLimit

log = logging.getLogger("lmstudio_stream")

Discover = Callable[[], Awaitable[int | None]]


@dataclass(eq=False)
class Ticket:
    """One request's hold on a slot: the round it went out in, and when (loop time)."""

    sent_in: int
    sent_at: float


class SlotPool:
    """N slots for one server and model, handed out first come, first served (an item back from a refusal first)."""

    def __init__(self, discover: Discover, override: int = 0) -> None:
        self._discover = discover
        self.limiter: ConcurrencyLimit | None = ConcurrencyLimit.reported(override) if override > 0 else None
        self.source = "max_parallel" if override > 0 else ""  # where the limit came from: max_parallel|server|found
        self.in_flight = 0
        self.answered = 0  # answers the server began in this prompt: a refused connection after one means "busy"
        self._out: set[Ticket] = set()  # the requests out now
        self.waiting_out = 0  # items waiting out a refusal before they queue again
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._learning: asyncio.Future[None] | None = None
        self._resume_at = 0.0  # loop time before which nothing is sent (a busy server's Retry-After)
        self._resume_timer: asyncio.TimerHandle | None = None

    @property
    def limit(self) -> int | None:
        return self.limiter.limit if self.limiter is not None else None

    @property
    def waiting(self) -> int:
        """Items that wait for this server: queued for a slot, or waiting out a refusal."""
        return len(self._waiters) + self.waiting_out

    def try_acquire(self) -> bool:
        """Take a slot without waiting, if one is free."""
        if self._paused():
            return False
        unknown_and_idle = self.limiter is None and self.in_flight == 0
        if unknown_and_idle or (self.limit is not None and self.in_flight < self.limit and not self._waiters):
            self.in_flight += 1
            return True
        return False

    async def acquire(self, *, first: bool = False) -> None:
        """Wait for a slot, in arrival order; `first` goes ahead of the queue (an item the server refused before)."""
        if self.try_acquire():
            return
        await self._learn_limit()
        if self.try_acquire():
            return
        waiter = asyncio.get_running_loop().create_future()
        if first:
            self._waiters.appendleft(waiter)
        else:
            self._waiters.append(waiter)
        self._wake()  # `first` may go at once where a plain arrival would have queued behind others
        try:
            await waiter  # `_wake` counts the slot before it wakes us
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # the slot came just as we were cancelled
            elif waiter in self._waiters:
                self._waiters.remove(waiter)
            raise

    def release(self, ticket: Ticket | None = None) -> None:
        """Give a slot back (with the ticket of the request that held it, if one went out)."""
        if ticket is not None:
            self._out.discard(ticket)
        self.in_flight -= 1
        self._wake()

    def sent(self) -> Ticket:
        """A request goes out with a slot: its ticket, for the news it brings back (see `limiter`)."""
        ticket = Ticket(self.limiter.sent() if self.limiter is not None else 0, asyncio.get_running_loop().time())
        self._out.add(ticket)
        return ticket

    def heard(self, ticket: Ticket, seconds: float) -> None:
        """The server began answering `ticket`'s request, `seconds` after it was sent."""
        self.answered += 1
        if self.limiter is not None:
            self.limiter.answered(ticket.sent_in, seconds, self.in_flight - 1)
            self._wake()

    def holding(self, refused: Ticket) -> int:
        """How many requests the server holds, judged when it refused one: a refusal comes back at once, so every
        other request still out that went before it was accepted (it may not have said a word yet)."""
        return sum(1 for ticket in self._out if ticket is not refused and ticket.sent_at <= refused.sent_at)

    def refused(self, ticket: Ticket, retry_after: float | None) -> None:
        """The server pushed back on `ticket`'s request: the limit drops (see `limiter`). With others in flight the
        refused request alone waits its Retry-After (a slot they free is the server's room, and goes to the queue);
        a server that refuses the only request out holds every request until then."""
        if self.limiter is not None:
            self.limiter.refused(ticket.sent_in, self.holding(ticket))
        if retry_after and self.in_flight == 1:
            loop = asyncio.get_running_loop()
            self._resume_at = max(self._resume_at, loop.time() + retry_after)
            if self._resume_timer is not None:
                self._resume_timer.cancel()
            self._resume_timer = loop.call_at(self._resume_at, self._wake)

    def _paused(self) -> bool:
        return self._resume_at > 0 and asyncio.get_running_loop().time() < self._resume_at

    async def _learn_limit(self) -> None:
        if self.limiter is None:
            if self._learning is None:
                self._learning = asyncio.ensure_future(self._ask_server())
            await asyncio.shield(self._learning)

    async def _ask_server(self) -> None:
        try:
            found = await self._discover()
        except Exception:  # any failure to learn N means finding it, never a failed run
            log.debug("Could not learn the server's parallel slots", exc_info=True)
            found = None
        if found:
            self.limiter, self.source = ConcurrencyLimit.reported(found), "server"
        else:
            self.limiter, self.source = ConcurrencyLimit.to_find(), "found"
        self._wake()

    def _wake(self) -> None:
        if self._paused():
            return
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
    it first matters, and where it does not say the pool finds N by trying.
    """
    pools = _pools.setdefault(asyncio.get_running_loop(), {})
    if key not in pools:
        pools[key] = SlotPool(discover, override)
    return pools[key]
