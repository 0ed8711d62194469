"""Where the SDK's lasting connections live: one kept `lmstudio.AsyncClient` per server and API token, on the SDK
worker's event loop (`sdk_worker`), and the `Handoff` that carries a run's items from one loop or thread to
another. No ComfyUI imports, and no lmstudio.

The worker's loop lives as long as the worker, so the clients outlive prompts: a run does not pay the SDK's
greeting probe and five websocket handshakes again (~0.14 s). The SDK multiplexes channels over its websockets, so
concurrent runs share one client. Runs and the SDK share that one loop and thread: with the SDK on a thread of its
own, handing each fragment across cost 10-15% more CPU for a fast stream (5,000 fragments: 645-740 ms against
560 ms on one loop, in one process, on the test machine).

A client nobody used for `IDLE_CLOSE_SECONDS` is closed; `running` then turns false, and the worker says it is idle.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

log = logging.getLogger("lmstudio_stream")

IDLE_CLOSE_SECONDS = 300.0
REAP_EVERY_SECONDS = 5.0
# How long a kept client trusts what a run learned over it (a model handle, say) without asking again. Short: a model
# reloaded with another context length, or swapped for another one that matches the query, is seen within seconds,
# while a list of captions asks about once per this many seconds instead of once per item.
MEMO_SECONDS = 10.0
# The settings above, as the worker process receives them from ComfyUI's side (which tests may change).
SETTINGS = ("IDLE_CLOSE_SECONDS", "REAP_EVERY_SECONDS", "MEMO_SECONDS")
SHUTDOWN_SECONDS = 2.0
T = TypeVar("T")
ClientKey = tuple[str, str | None]  # (host:port, API token)


class _Pieces:
    """Consecutive texts of one kind, joined into one item when the batch is read."""

    __slots__ = ("make", "parts")

    def __init__(self, make: Callable[[str], Any], text: str) -> None:
        self.make, self.parts = make, [text]


class Handoff:
    """Items for one run's loop, from its own loop or another thread, in order, in batches: never one wake-up per
    fragment.

    Texts gather (consecutive pieces of one kind become one item) and wake the run only when it waits for its next
    batch, not while it rests between batches; any other item (progress, the end, an error) wakes it at once, so
    the end of a stream is never held back by a rest.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._items: deque[Any] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._resting = False
        self._lock = threading.Lock()

    def put(self, item: Any) -> None:
        """Called from any thread."""
        with self._lock:
            self._items.append(item)
            waiter, self._waiter = self._waiter, None
        self._notify(waiter)

    def put_text(self, make: Callable[[str], Any], text: str) -> None:
        """Called from any thread, per fragment: texts of one kind in a row reach the run as one `make(joined)`.

        The run then handles a few items a batch instead of one per token (the SDK's own work per fragment is what
        bounds the rate).
        """
        with self._lock:
            last = self._items[-1] if self._items else None
            if type(last) is _Pieces and last.make is make:
                last.parts.append(text)
            else:
                self._items.append(_Pieces(make, text))
            waiter = None
            if not self._resting:
                waiter, self._waiter = self._waiter, None
        self._notify(waiter)

    def _notify(self, waiter: asyncio.Future[None] | None) -> None:
        if waiter is not None:
            self._loop.call_soon_threadsafe(_wake, waiter)

    async def get_batch(self, timeout: float) -> list[Any]:
        """Called on the run's loop: everything that arrived, waiting for at least one item; TimeoutError after
        `timeout` seconds with none.

        The timeout is a timer on our own future, not `asyncio.wait_for`: in Python 3.10 and 3.11 `wait_for`
        swallows a cancellation that arrives just as the awaited item does, and the run would stream on after
        ComfyUI's Cancel.
        """
        while True:
            with self._lock:
                if self._items:
                    items = [i.make("".join(i.parts)) if type(i) is _Pieces else i for i in self._items]
                    self._items.clear()
                    return items
                waiter = self._waiter = self._loop.create_future()
            timer = self._loop.call_later(timeout, _expire, waiter)
            try:
                await waiter
            finally:
                timer.cancel()

    async def rest(self, seconds: float) -> None:
        """Called on the run's loop between batches: let texts gather for up to `seconds`; any other item (or one
        already waiting) ends the rest at once."""
        with self._lock:
            if any(type(item) is not _Pieces for item in self._items):
                return
            self._resting = True
            waiter = self._waiter = self._loop.create_future()
        timer = self._loop.call_later(seconds, _wake, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            with self._lock:
                self._resting = False
                if self._waiter is waiter:
                    self._waiter = None


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


class KeptClient:
    """One SDK client, opened and closed by its own task (the SDK's websockets belong to the task that opened them)."""

    def __init__(self, open_client: Callable[[], Any]) -> None:
        self._open_client = open_client
        self._ready: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._close = asyncio.Event()
        self._owner = asyncio.create_task(self._own())
        self.last_used = time.monotonic()
        self.users = 0
        # What runs learned over this connection (model handles, for one): it belongs to the connection, and goes
        # with it. Values are (learned at, value).
        self._learned: dict[Any, tuple[float, Any]] = {}

    async def _own(self) -> None:
        try:
            async with self._open_client() as client:
                self._ready.set_result(client)
                await self._close.wait()
        except BaseException as exc:  # handed to whoever waits for the client
            if not self._ready.done():
                self._ready.set_exception(exc)
                self._ready.exception()  # waiters get it through `client()`; a run that left needs no warning
            elif not isinstance(exc, asyncio.CancelledError):
                log.debug("LM Studio SDK client closed with: %r", exc)

    async def client(self) -> Any:
        return await asyncio.shield(self._ready)

    def recall(self, key: Any) -> Any | None:
        """What was learned under `key` within `MEMO_SECONDS`, or None."""
        learned = self._learned.get(key)
        return learned[1] if learned and time.monotonic() - learned[0] < MEMO_SECONDS else None

    def remember(self, key: Any, value: Any) -> None:
        self._learned[key] = (time.monotonic(), value)

    def forget(self, key: Any) -> None:
        self._learned.pop(key, None)

    @property
    def failed(self) -> bool:
        return self._owner.done() or (self._ready.done() and self._ready.exception() is not None)

    async def close(self) -> None:
        self._close.set()
        try:
            await asyncio.wait_for(asyncio.shield(self._owner), SHUTDOWN_SECONDS)
        except (asyncio.TimeoutError, Exception):  # a dead socket may fail to close; it is gone anyway
            self._owner.cancel()


class SdkRuntime:
    """The kept clients, and the runs that use them, on the worker's loop. Reaps idle clients while any is kept."""

    def __init__(self) -> None:
        self._clients: dict[ClientKey, KeptClient] = {}
        self._reaper: asyncio.Task | None = None
        self._jobs: set[asyncio.Task] = set()

    @property
    def running(self) -> bool:
        """Whether a client is kept or work is in hand."""
        return bool(self._clients or self._jobs)

    def submit(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        """Run `coro` as a task of its own: a run's consumer leaving does not cancel it (its stop must reach LM
        Studio first)."""
        task = asyncio.ensure_future(coro)
        self._jobs.add(task)
        task.add_done_callback(self._jobs.discard)
        return task

    async def client(self, key: ClientKey, open_client: Callable[[], Any]) -> tuple[KeptClient, Any]:
        """The kept client for `key`, opened if there is none (or the kept one died)."""
        kept = self._clients.get(key)
        if kept is None or kept.failed:
            kept = self._clients[key] = KeptClient(open_client)
            if self._reaper is None or self._reaper.done():
                self._reaper = asyncio.ensure_future(self._reap())
        kept.users += 1
        try:
            return kept, await kept.client()
        except asyncio.CancelledError:
            kept.users -= 1  # the run left; the client may still open, and stays kept (and reaped) all the same
            kept.last_used = time.monotonic()
            raise
        except BaseException:
            kept.users -= 1
            if self._clients.get(key) is kept:
                del self._clients[key]
            raise

    def release(self, kept: KeptClient) -> None:
        kept.users -= 1
        kept.last_used = time.monotonic()

    async def discard(self, key: ClientKey, kept: KeptClient) -> None:
        """Forget a client whose connection died: the next run opens a fresh one."""
        if self._clients.get(key) is kept:
            del self._clients[key]
        await kept.close()

    async def aclose(self) -> None:
        """Close every kept client (within `SHUTDOWN_SECONDS`); a later run opens a fresh one."""
        clients, self._clients = list(self._clients.values()), {}
        if self._reaper is not None:
            self._reaper.cancel()
            self._reaper = None
        await asyncio.gather(*(kept.close() for kept in clients), return_exceptions=True)

    async def _reap(self) -> None:
        """Close clients unused for IDLE_CLOSE_SECONDS; end once none is left."""
        while self._clients:
            await asyncio.sleep(min(REAP_EVERY_SECONDS, IDLE_CLOSE_SECONDS))
            now = time.monotonic()
            for key, kept in list(self._clients.items()):
                if kept.users == 0 and now - kept.last_used >= IDLE_CLOSE_SECONDS:
                    log.debug("Closing the idle LM Studio SDK connection to %s", key[0])
                    await self.discard(key, kept)


RUNTIME = SdkRuntime()
