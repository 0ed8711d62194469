"""One item's way through a run: its line to the browser, a slot of the server, the stream, and the one retry loop.

A list (a dataset folder, a rebatched SDXL batch) runs the chat node once per item, every item at once; the items
share one `ListRun` and, per server and model, one `SlotPool`, so the server gets at most N of them at a time. A
server that pushes back (HTTP 429/503, a router's "no deployments available") is waited out, a transient failure
is tried once more, and everything else ends the item at once.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from contextlib import aclosing
from functools import partial

import comfy.model_management as model_management
from comfy.utils import ProgressBar
from comfy_execution.utils import get_executing_context
from server import PromptServer

from .backoff import Tries
from .chat import ChatRequest, Failure, LMStudioError
from .client import parallel_slots, stream_chat
from .list_run import QUEUED, RUNNING, ListRun, PromptState, list_run, prompt_state
from .relay import StreamRelay
from .slots import SlotPool, Ticket, pool_for
from .utils import normalize_server_url

log = logging.getLogger("lmstudio_stream")

STREAM_EVENT = "lmstudio.stream.update"
# One websocket message per tick at most (plus one more where reasoning turns into the answer): ~30 a second,
# whatever the token rate. The same tick polls ComfyUI's interrupt flag, well inside the 100 ms budget.
TICK_SECONDS = 1 / 30
# How often the one watcher of a prompt looks at ComfyUI's interrupt flag for every item that waits (see `_until`),
# and how long a queued item waits before it says so.
QUEUE_POLL_SECONDS = 0.1
# After Cancel, how long the stream may take to close (the SDK sends `cancel` and drains) before we give up on it.
CANCEL_GRACE_SECONDS = 0.8
_POOL_SOURCES = {
    "server": "the loaded model's parallel slots",
    "max_parallel": "max_parallel in LM Studio Chat Options",
    "found": "found by trying: the server does not report its slots",
}


class Aborted(Exception):
    """Another item of the list failed with on_error = raise: this one stops too."""


class ItemChannel:
    """One list item's line to the browser and the progress bar. Every message names the item and the list's length."""

    def __init__(self, node_id: str, index: int, run: ListRun) -> None:
        self.node_id, self.index, self.run = node_id, index, run
        self.turn = 1  # this call's turn of its chat
        self._server = PromptServer.instance
        self._client_id = self._server.client_id  # the browser tab that queued this prompt
        self._bar = ProgressBar(100, node_id=node_id)

    def send(self, chunk_type: str, content: str = "") -> None:
        payload = {"node_id": self.node_id, "chunk_type": chunk_type, "content": content,
                   "index": self.index, "count": self.run.count}
        self._server.send_sync(STREAM_EVENT, payload, self._client_id)

    def progress(self, fraction: float) -> None:
        """This item's progress; the bar shows the whole list's (each finished item advances it by 1/count)."""
        value = self.run.progress(self.index, fraction)
        try:
            self._bar.update_absolute(round(value * 100), 100)
        except model_management.InterruptProcessingException:
            prompt_state().interrupted = True  # ComfyUI's hook consumed the flag: keep it for the other items
            raise

    def notice(self, kind: str, text: str, *, warn: bool = True) -> None:
        """A notice for the whole run (one per kind; every item's alike is logged once), shown above the answer."""
        shown, new = self.run.note(kind, text)
        if new:
            log.log(logging.WARNING if warn else logging.INFO, "LM Studio Chat (node %s): %s", self.node_id, text)
        self.send("notice", shown)

    def state(self, state: str) -> None:
        self.run.set(self.index, state)
        self.send("item", state)
        if state not in (QUEUED, RUNNING):
            self.progress(1.0)


def start_item(node_id: str) -> ItemChannel:
    """This call's place in its list (a single run is a list of one), announced to the browser."""
    context = get_executing_context()
    index = (context.list_index or 0) if context is not None else 0
    run = list_run(node_id, index)
    run.start(index)
    channel = ItemChannel(node_id, index, run)
    channel.send("clear")
    return channel


def stop_reason(run: ListRun) -> BaseException | None:
    """Why this item must stop now, if it must: ComfyUI's Cancel (seen by any item), or another item's error."""
    state = prompt_state()
    if state.interrupted or model_management.processing_interrupted():
        state.interrupt()
        return model_management.InterruptProcessingException()
    if run.abort_message is not None:
        return Aborted(run.abort_message)
    return None


def raise_stop(reason: BaseException) -> None:
    """Raise `reason`; for Cancel, ComfyUI's interrupt flag is consumed first (if no other item took it yet)."""
    if isinstance(reason, model_management.InterruptProcessingException):
        model_management.throw_exception_if_processing_interrupted()  # consumes the flag, as ComfyUI expects
    raise reason


async def stream_item(request: ChatRequest, max_parallel: int, busy_wait_seconds: float, relay: StreamRelay,
                      channel: ItemChannel) -> None:
    """Wait for a slot and stream. A busy server is waited out (its Retry-After, else a growing backoff) for at most
    `busy_wait_seconds` in all, a transient failure is tried once more; the slot is freed on every path."""
    key = (normalize_server_url(request.server_url), request.model)
    pool = pool_for(key, max_parallel, lambda: parallel_slots(request))
    tries = Tries(busy_wait_seconds)
    refused_before = False
    ticket: Ticket | None = None  # the slot held; kept across a transient failure's one more try
    try:
        while True:
            if ticket is None:
                await _wait_for_slot(pool, channel, first=refused_before)
                ticket = pool.sent()
            try:
                # Cancel frees the running items' slots, and a queued item may get one in the same turn: it must not
                # send.
                if (reason := stop_reason(channel.run)) is not None:
                    raise_stop(reason)
                channel.state(RUNNING)
                await _run_stream(request, relay, channel.run, partial(pool.heard, ticket))
                return
            except LMStudioError as exc:
                wait = tries.wait_before_next(exc.kind, exc.retry_after, random.random(),
                                              server_was_answering=pool.answered > 0)
                if wait is None or stop_reason(channel.run) is not None:
                    raise _given_up(exc, tries) from None
                relay.reset()
                if exc.kind is not Failure.TRANSIENT:
                    # A full server: the slot goes back while this item waits, and it queues again at the front. (A
                    # transient failure keeps its slot for its one more try: a queued item must not take it meanwhile.)
                    pool.refused(ticket, exc.retry_after)
                    pool.release(ticket)
                    ticket, refused_before = None, True
                failure = exc
            await _wait_out(pool, channel, wait, failure)
    finally:
        if ticket is not None:
            pool.release(ticket)


def _given_up(exc: LMStudioError, tries: Tries) -> LMStudioError:
    """The error that ends the item; one that was waited out says for how long, and which setting bounds it."""
    if not tries.busy_tries:
        return exc
    return LMStudioError(f"{exc}. Gave up after waiting {tries.waited:.0f} s in all for the server "
                         f"(busy_wait_seconds in LM Studio Chat Options).", kind=exc.kind)


async def _wait_out(pool: SlotPool, channel: ItemChannel, seconds: float, failure: LMStudioError) -> None:
    """Wait `seconds` before asking again, saying so on the node; Cancel ends the wait at once."""
    if failure.kind is Failure.TRANSIENT:
        log.warning("LM Studio Chat (node %s, item %d): retrying after: %s", channel.node_id, channel.index, failure)
        channel.send("status", f"Retrying once after: {failure}")
    else:
        channel.run.waited_items.add(channel.index)
        channel.state(QUEUED)
        log.info("LM Studio Chat (node %s, item %d): %s; next try in %.1f s", channel.node_id, channel.index,
                 failure, seconds)
        channel.send("status", f"{failure}: {pool.waiting + 1} items waiting, next try in {_seconds(seconds)}")
    pool.waiting_out += 1
    pause = asyncio.ensure_future(asyncio.sleep(seconds))
    try:
        await _until(pause, channel.run)
    finally:
        pause.cancel()
        pool.waiting_out -= 1


async def _until(future: asyncio.Future, run: ListRun) -> None:
    """Wait for `future`, or raise as soon as this item must stop (Cancel, or another item's error).

    The waiting items of a prompt (a thousand of a dataset list, say) do not each poll ComfyUI's interrupt flag: one
    watcher does, and they wait for their run's `stopped` (each polling ten times a second cost ComfyUI about 9 ms of
    CPU per item of a 1,000-image list).
    """
    if (reason := stop_reason(run)) is not None:  # stopped before it began: a run made after Cancel, say
        raise_stop(reason)
    state = prompt_state()
    state.waiting += 1
    if state.watcher is None or state.watcher.done():
        state.watcher = asyncio.ensure_future(_watch_interrupt(state))
    stop = asyncio.ensure_future(run.stopped.wait())
    try:
        await asyncio.wait({future, stop}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        state.waiting -= 1
        stop.cancel()
    if (reason := stop_reason(run)) is not None:
        raise_stop(reason)


async def _watch_interrupt(state: PromptState) -> None:
    """While items wait, look at ComfyUI's interrupt flag for them (nothing cancels an awaiting task on Cancel)."""
    while state.waiting > 0 and not state.interrupted:
        if model_management.processing_interrupted():
            state.interrupt()
            return
        await asyncio.sleep(QUEUE_POLL_SECONDS)


def _seconds(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"


async def _run_stream(request: ChatRequest, relay: StreamRelay, run: ListRun,
                      heard: Callable[[float], None]) -> None:
    """Stream into `relay`, flushing every tick; on Cancel (or another item's error) close the stream and raise.
    `heard(seconds)` learns once how long the server took to begin answering (its first event)."""
    sent = time.monotonic()

    async def consume() -> None:
        events = stream_chat(request)
        async with aclosing(events):
            async for event in events:
                heard(time.monotonic() - sent)
                relay.add(event)
                break
            async for event in events:
                relay.add(event)

    task = asyncio.create_task(consume())
    reason = None
    try:
        while not task.done():
            await asyncio.wait({task}, timeout=TICK_SECONDS)
            if (reason := stop_reason(run)) is not None:
                break
            relay.flush()
    finally:
        if not task.done():
            # Cancelling the task closes the HTTP stream or sends the SDK's cancel, so LM Studio stops generating.
            task.cancel()
            await asyncio.wait({task}, timeout=CANCEL_GRACE_SECONDS)
    relay.flush()
    if reason is not None:
        raise_stop(reason)
    task.result()  # re-raise the stream's error, if any


async def _wait_for_slot(pool: SlotPool, channel: ItemChannel, *, first: bool) -> None:
    """Queue in the node (not in LM Studio, where the idle timeout would run) until a slot is free."""
    if not first and pool.try_acquire():
        return
    acquire = asyncio.ensure_future(pool.acquire(first=first))
    try:
        await asyncio.wait({acquire}, timeout=QUEUE_POLL_SECONDS)
        if not acquire.done():
            if pool.limit is not None and not first:
                channel.send("status", f"Queued: {pool.limit} at a time ({_POOL_SOURCES[pool.source]})")
            await _until(acquire, channel.run)
    finally:
        if not acquire.done():
            acquire.cancel()  # `SlotPool.acquire` gives back a slot that came just as it was cancelled
            await asyncio.wait({acquire})
    acquire.result()
