"""The SDK worker process: runs the SDK mode's chats and unloads (`sdk_backend`) for ComfyUI's process, which
talks to it through `sdk_process`. No ComfyUI imports.

Why a process of its own: the SDK does real work for every token it receives (websocket frame, JSON, its own
message classes, its callbacks). Inside ComfyUI that work shares one GIL with ComfyUI's server loop and prompt
worker, and every garbage collection walks ComfyUI's whole heap (hundreds of thousands of objects): a fast stream
ran at 0.81-0.86x of a raw SDK client (`bench/bench_sdk.py --comfyui 0.8.0`). Here the SDK has an interpreter to
itself, and ComfyUI receives a few merged texts a batch.

Started by `sdk_process` with ComfyUI's own Python. Reads requests from stdin and writes replies to stdout, as
`sdk_wire` frames; stdout carries nothing else (anything printed goes to stderr). Ends when stdin closes: when
ComfyUI retires it, exits, or dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import threading
from typing import IO, Any

from . import sdk_runtime
from .chat import ChatRequest, LMStudioError
from .sdk_backend import stream_sdk, unload_sdk
from .sdk_runtime import RUNTIME
from .sdk_wire import Message, error_to_wire, event_to_wire, read_frame, request_from_wire, write_frame

log = logging.getLogger("lmstudio_stream")


class _Replies:
    """stdout, written whole frames at a time (from any thread: a library may log from one of its own)."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream, self._lock = stream, threading.Lock()

    def send(self, *message: Any) -> None:
        with self._lock, contextlib.suppress(OSError, ValueError):  # ComfyUI is gone: its end of stdin closes too
            write_frame(self._stream, message)


class _ForwardedLog(logging.Handler):
    """Log records go to ComfyUI's process, which logs them under the same logger name and level."""

    def __init__(self, replies: _Replies) -> None:
        super().__init__()
        self._replies = replies
        self.setFormatter(logging.Formatter("%(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self._replies.send("log", record.name, record.levelno, self.format(record))


class _Worker:
    def __init__(self, replies: _Replies) -> None:
        self.replies = replies
        self.tasks: dict[int, asyncio.Task] = {}
        self.idle_told = False

    def handle(self, message: Message) -> None:
        """One request from ComfyUI's process, on this process's loop."""
        kind, run_id, *args = message
        self.idle_told = False
        if kind == "chat":
            self._start(run_id, self._chat(run_id, request_from_wire(args[0])))
        elif kind == "unload":
            request, identifier, confirm_seconds, poll_seconds = args
            self._start(run_id, self._unload(run_id, request_from_wire(request), identifier, confirm_seconds,
                                             poll_seconds))
        elif kind == "close_connections":
            self._start(run_id, self._close_connections(run_id))
        elif kind == "stop" and run_id in self.tasks:
            self.tasks[run_id].cancel()  # the stream's own cleanup tells LM Studio to stop (`stream_sdk`)

    def _start(self, run_id: int, work: Any) -> None:
        task = self.tasks[run_id] = asyncio.create_task(self._reply(run_id, work))
        task.add_done_callback(lambda _: self.tasks.pop(run_id, None))

    async def _reply(self, run_id: int, work: Any) -> None:
        """Run `work`; whatever happens, ComfyUI's side hears of it and then gets `done`."""
        try:
            await work
        except asyncio.CancelledError:
            pass  # a stop: ComfyUI's side has left already
        except LMStudioError as exc:
            self.replies.send("error", run_id, *error_to_wire(exc))
        except Exception as exc:  # unforeseen: logged with its traceback, and shown by its type
            log.exception("LM Studio SDK worker: run %d failed", run_id)
            self.replies.send("error", run_id, f"LM Studio SDK mode failed: {type(exc).__name__}: {exc}", False)
        self.replies.send("done", run_id)

    async def _chat(self, run_id: int, request: ChatRequest) -> None:
        events = stream_sdk(request)
        async with contextlib.aclosing(events):
            async for event in events:
                self.replies.send("event", run_id, event_to_wire(event))

    async def _unload(self, run_id: int, request: ChatRequest, identifier: str, confirm: float, poll: float) -> None:
        unloaded = await unload_sdk(request, identifier, confirm_seconds=confirm, poll_seconds=poll)
        self.replies.send("result", run_id, unloaded)

    async def _close_connections(self, run_id: int) -> None:
        await RUNTIME.aclose()
        self.replies.send("result", run_id, None)

    async def watch_idle(self) -> None:
        """Tell ComfyUI's side once no connection is kept and nothing runs: it retires this process unless a request
        is on its way."""
        while True:
            await asyncio.sleep(sdk_runtime.REAP_EVERY_SECONDS)
            if not self.tasks and not RUNTIME.running and not self.idle_told:
                self.idle_told = True
                self.replies.send("idle", 0)


async def _serve(requests: IO[bytes], replies: _Replies) -> None:
    loop = asyncio.get_running_loop()
    worker = _Worker(replies)
    closed = asyncio.Event()

    def read() -> None:
        while (message := read_frame(requests)) is not None:
            loop.call_soon_threadsafe(worker.handle, message)
        loop.call_soon_threadsafe(closed.set)

    threading.Thread(target=read, name="lmstudio-sdk-requests", daemon=True).start()
    idle = asyncio.create_task(worker.watch_idle())
    replies.send("ready", os.getpid())
    await closed.wait()
    idle.cancel()
    for task in list(worker.tasks.values()):
        task.cancel()
    await asyncio.gather(*worker.tasks.values(), return_exceptions=True)
    await RUNTIME.aclose()


def main(settings: dict[str, float]) -> None:
    """The process's entry point (`sdk_process` starts it with these settings of ComfyUI's side)."""
    # File descriptors, not sys.stdin/stdout: a windowless Python (pythonw) may leave those None even on pipes.
    requests, replies = os.fdopen(0, "rb"), _Replies(os.fdopen(os.dup(1), "wb"))
    try:  # nothing printed may land inside a frame: fd 1 becomes stderr (or nothing, where there is none)
        os.dup2(2, 1)
    except OSError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
    sys.stdout = sys.stderr if sys.stderr is not None else open(os.devnull, "w")
    handler = _ForwardedLog(replies)
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.WARNING)  # other libraries' warnings and errors: their debug output could be a line a token
    log.setLevel(logging.DEBUG)  # the pack's own few records, all of them: ComfyUI's side filters by its own level
    for name in sdk_runtime.SETTINGS:
        setattr(sdk_runtime, name, float(settings[name]))
    asyncio.run(_serve(requests, replies))
