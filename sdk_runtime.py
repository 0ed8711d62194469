"""Where the SDK's lasting connections live: one daemon thread with its own event loop, owning one kept
`lmstudio.AsyncClient` per server and API token. No ComfyUI imports.

ComfyUI runs every prompt in a fresh event loop, and an SDK client belongs to the loop (and the task) that
opened it, so a client opened inside a prompt dies with it and every run would pay the SDK's greeting probe and
five websocket handshakes again (~0.14 s). Here the clients outlive prompts: runs from any loop submit their work
to this loop and receive their events through a `Handoff`. The SDK multiplexes channels over its websockets, so
concurrent runs share one client.

A client nobody used for `IDLE_CLOSE_SECONDS` is closed, and when none is left the thread ends: nothing lingers
once ComfyUI is idle. `shutdown()` (registered with `atexit`) closes everything within `SHUTDOWN_SECONDS`.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

log = logging.getLogger("lmstudio_stream")

IDLE_CLOSE_SECONDS = 300.0
REAP_EVERY_SECONDS = 5.0
SHUTDOWN_SECONDS = 2.0
T = TypeVar("T")
ClientKey = tuple[str, str | None]  # (host:port, API token)


class _Pieces:
    """Consecutive texts of one kind, joined into one item when the batch is read."""

    __slots__ = ("make", "parts")

    def __init__(self, make: Callable[[str], Any], text: str) -> None:
        self.make, self.parts = make, [text]


class Handoff:
    """Items from the SDK's loop to one run's loop, in order, in batches: never one wake-up per fragment.

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
        """Called on the SDK's loop."""
        with self._lock:
            self._items.append(item)
            waiter, self._waiter = self._waiter, None
        self._notify(waiter)

    def put_text(self, make: Callable[[str], Any], text: str) -> None:
        """Called on the SDK's loop, per fragment: texts of one kind in a row reach the run as one `make(joined)`.

        The run then handles a few items a batch instead of one per token, and holds the GIL that much less while
        the SDK's thread streams (the SDK's own work per fragment is what bounds the rate).
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
    """The SDK's thread, its loop and the kept clients. Started on first use; ends when no client is left."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._clients: dict[ClientKey, KeptClient] = {}
        self._reaper: asyncio.Task | None = None
        self._jobs = 0

    # ---- from any thread

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Run `coro` on the SDK's loop."""
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._start()
            self._jobs += 1
            assert self._loop is not None
            future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        future.add_done_callback(self._job_done)
        return future

    def call_soon(self, callback: Callable[[], Any]) -> None:
        with self._lock:
            if self._loop is not None and self._thread is not None and self._thread.is_alive():
                self._loop.call_soon_threadsafe(callback)

    def shutdown(self, timeout: float = SHUTDOWN_SECONDS) -> None:
        """Close every kept client and end the thread; never waits longer than `timeout`."""
        closing = self._begin_close()
        if closing is None:
            return
        future, loop, thread = closing
        with contextlib.suppress(concurrent.futures.TimeoutError, RuntimeError):
            future.result(timeout)
        self._end(loop, thread, timeout)

    async def aclose(self, timeout: float = SHUTDOWN_SECONDS) -> None:
        """`shutdown` for a caller on an event loop (one that may serve the other end of the websockets)."""
        closing = self._begin_close()
        if closing is None:
            return
        future, loop, thread = closing
        with contextlib.suppress(asyncio.TimeoutError, RuntimeError):
            await asyncio.wait_for(asyncio.wrap_future(future), timeout)
        await asyncio.to_thread(self._end, loop, thread, timeout)

    def _begin_close(self):
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is None or thread is None or not thread.is_alive():
            return None
        return asyncio.run_coroutine_threadsafe(self._close_all(), loop), loop, thread

    @staticmethod
    def _end(loop: asyncio.AbstractEventLoop, thread: threading.Thread, timeout: float) -> None:
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout)

    # ---- on the SDK's loop

    async def client(self, key: ClientKey, open_client: Callable[[], Any]) -> tuple[KeptClient, Any]:
        """The kept client for `key`, opened if there is none (or the kept one died)."""
        kept = self._clients.get(key)
        if kept is None or kept.failed:
            kept = self._clients[key] = KeptClient(open_client)
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

    # ---- internals

    def _start(self) -> None:
        loop = asyncio.new_event_loop()
        ready = threading.Event()

        def main() -> None:
            asyncio.set_event_loop(loop)
            self._reaper = loop.create_task(self._reap())
            loop.call_soon(ready.set)
            try:
                loop.run_forever()
            finally:
                for task in asyncio.all_tasks(loop):
                    task.cancel()
                loop.run_until_complete(asyncio.sleep(0))
                loop.close()

        self._loop, self._clients = loop, {}
        self._thread = threading.Thread(target=main, name="lmstudio-sdk", daemon=True)
        self._thread.start()
        ready.wait()

    def _job_done(self, _: concurrent.futures.Future) -> None:
        with self._lock:
            self._jobs -= 1

    async def _reap(self) -> None:
        """Close clients unused for IDLE_CLOSE_SECONDS; stop the loop once nothing is left to do."""
        while True:
            await asyncio.sleep(min(REAP_EVERY_SECONDS, IDLE_CLOSE_SECONDS))
            now = time.monotonic()
            for key, kept in list(self._clients.items()):
                if kept.users == 0 and now - kept.last_used >= IDLE_CLOSE_SECONDS:
                    log.debug("Closing the idle LM Studio SDK connection to %s", key[0])
                    await self.discard(key, kept)
            with self._lock:
                if not self._clients and self._jobs == 0:
                    self._loop = None
                    self._thread = None
                    asyncio.get_running_loop().stop()
                    return

    async def _close_all(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        await asyncio.gather(*(kept.close() for kept in clients), return_exceptions=True)


RUNTIME = SdkRuntime()
atexit.register(RUNTIME.shutdown)
