"""ComfyUI's side of the SDK worker process (`sdk_worker`): starts it on first use, sends it each SDK-mode chat and
unload, and hands its replies to the run that waits for them. No ComfyUI imports, and no lmstudio: the SDK lives in
the worker only (its module docstring says why).

One worker serves every run of the process, concurrent ones too (a list's parallel slots). It keeps the SDK's
connections between prompts, and ends when it has had none for `sdk_runtime.IDLE_CLOSE_SECONDS`, when ComfyUI
exits (`shutdown`, registered with `atexit`), or with ComfyUI's process (its stdin closes). A worker that dies fails
only the runs it had in hand, with a message that says so; the next run starts a new one.

It runs ComfyUI's own Python (`sys.executable`) with ComfyUI's own `sys.path`, so it imports the same `lmstudio`,
`aiohttp` and pack code as ComfyUI would, in embedded and venv installs alike.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import importlib.util
import itertools
import json
import logging
import subprocess
import sys
import threading
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

from . import sdk_runtime
from .chat import ChatRequest, Failure, LMStudioError, StreamEvent, idle_timeout
from .sdk_runtime import Handoff
from .sdk_wire import (
    TEXTS,
    Message,
    error_from_wire,
    event_from_wire,
    read_frame,
    request_to_wire,
    write_frame,
)
from .utils import normalize_server_url, sdk_api_host

log = logging.getLogger("lmstudio_stream")

START_SECONDS = 60.0  # importing lmstudio takes ~1 s warm; a cold disk or a busy machine may take far longer
STOP_SECONDS = 1.5  # the worker's own stop drains for up to ~0.7 s (`sdk_backend.CANCEL_DRAIN_SECONDS` + 0.2)
BACKSTOP_SECONDS = 5.0  # the worker enforces the idle timeout; this side only notices a worker that hangs
SHUTDOWN_SECONDS = sdk_runtime.SHUTDOWN_SECONDS + 1.0
_PACK = Path(__file__).resolve().parent
# The worker imports the pack's SDK modules as a package of their own, without the pack's `__init__` (which
# registers ComfyUI nodes): a bare package object whose path is the pack's folder. Its `sys.path` is ComfyUI's, in
# ComfyUI's order (so the same `lmstudio` wins), then any entry of its own that ComfyUI's lacks; never '' (`-c` puts
# the working directory first).
_BOOT = """\
import importlib, json, sys, types
folder, paths, settings = sys.argv[1:4]
comfyui = [p for p in json.loads(paths) if p]
sys.path = comfyui + [p for p in sys.path if p and p not in comfyui]
pack = types.ModuleType("lmstudio_sdk_worker_pack")
pack.__path__ = [folder]
sys.modules[pack.__name__] = pack
importlib.import_module(pack.__name__ + ".sdk_worker").main(json.loads(settings))
"""
_DONE = object()


class _Result:
    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


def _ended(code: int | None) -> LMStudioError:
    return LMStudioError(
        f"The LM Studio SDK worker process ended unexpectedly (exit code {code}); ComfyUI's terminal shows why. "
        "The next run starts a new one.",
        kind=Failure.TRANSIENT,
    )


class _Process:
    """One worker process, and the runs waiting for its replies (each with its own `Handoff`)."""

    def __init__(self, owner: SdkWorker) -> None:
        self._owner = owner
        self.runs: dict[int, Handoff] = {}
        self._ids = itertools.count(1)
        self._write_lock = threading.Lock()
        self._ready = threading.Event()
        self.pid: int | None = None
        self.popen = subprocess.Popen(
            [sys.executable, "-c", _BOOT, str(_PACK), json.dumps(sys.path),
             json.dumps({name: getattr(sdk_runtime, name) for name in sdk_runtime.SETTINGS})],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=_PACK,
            creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0),  # no console window on Windows
        )
        threading.Thread(target=self._read, name="lmstudio-sdk-replies", daemon=True).start()

    def wait_ready(self) -> None:
        if not self._ready.wait(START_SECONDS):
            self.end(0)
            raise LMStudioError(f"The LM Studio SDK worker process did not start within {START_SECONDS:g} s.")
        if self.pid is None:
            raise _ended(self.popen.wait())

    @property
    def alive(self) -> bool:
        return self.pid is not None and self.popen.poll() is None

    def open(self, handoff: Handoff) -> int:
        run_id = next(self._ids)
        self.runs[run_id] = handoff
        return run_id

    def close(self, run_id: int) -> None:
        self.runs.pop(run_id, None)

    def send(self, *message: Any) -> None:
        assert self.popen.stdin is not None
        try:
            with self._write_lock:
                write_frame(self.popen.stdin, message)
        except (OSError, ValueError) as exc:  # a broken or closed pipe: the worker is gone
            raise _ended(self.popen.poll()) from exc

    def end(self, timeout: float) -> None:
        """Close its stdin (it closes its connections and exits), and kill it if it has not within `timeout`."""
        with contextlib.suppress(OSError, ValueError), self._write_lock:
            assert self.popen.stdin is not None
            self.popen.stdin.close()
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        while (message := read_frame(self.popen.stdout)) is not None:
            self._dispatch(message)
        code = self.popen.wait()
        self._ready.set()
        self._owner.forget(self)
        for handoff in list(self.runs.values()):
            _put(handoff, _ended(code))

    def _dispatch(self, message: Message) -> None:
        kind, run_id, *rest = message
        if kind == "log":
            logging.getLogger(run_id).log(rest[0], "%s", rest[1])  # (name, level, text)
            return
        if kind == "ready":
            self.pid = run_id
            self._ready.set()
            return
        if kind == "idle":
            self._owner.retire(self)
            return
        handoff = self.runs.get(run_id)
        if handoff is None:
            return  # a run that left already (a stop's last words)
        if kind == "event" and rest[0][0] in TEXTS:
            _put_text(handoff, TEXTS[rest[0][0]], rest[0][1])
        elif kind == "event":
            _put(handoff, event_from_wire(rest[0]))
        elif kind == "error":
            _put(handoff, error_from_wire(tuple(rest)))
        elif kind == "result":
            _put(handoff, _Result(rest[0]))
        elif kind == "done":
            _put(handoff, _DONE)


def _put(handoff: Handoff, item: Any) -> None:
    with contextlib.suppress(RuntimeError):  # the run's event loop closed (its prompt ended): nobody to tell
        handoff.put(item)


def _put_text(handoff: Handoff, make: Any, text: str) -> None:
    with contextlib.suppress(RuntimeError):
        handoff.put_text(make, text)


class SdkWorker:
    """The worker process of ComfyUI's process: at most one at a time, started by the first run that needs it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._start_lock = threading.Lock()
        self._process: _Process | None = None

    @property
    def pid(self) -> int | None:
        process = self._process
        return process.pid if process is not None and process.alive else None

    def _start(self) -> None:
        """Start the worker unless one is alive (blocks for the start: call it off the event loop)."""
        with self._start_lock:  # one start at a time; `_lock` itself is only ever held for a moment
            with self._lock:
                if self._process is not None and self._process.alive:
                    return
            if importlib.util.find_spec("lmstudio") is None:
                raise LMStudioError(
                    "The SDK mode needs the lmstudio package. Run `pip install -r requirements.txt` with ComfyUI's "
                    "Python, or choose 'REST API' or 'OpenAI-compatible' in connection_mode."
                )
            process = _Process(self)
            process.wait_ready()
            with self._lock:
                self._process = process

    async def _open(self, handoff: Handoff) -> tuple[_Process, int]:
        """The live worker (started if need be) with a run registered on it. Registered under the lock, so `retire`
        never ends a worker a run has just chosen; and on the loop, so a run cancelled while the worker starts
        leaves nothing behind."""
        while True:
            with self._lock:
                process = self._process
                if process is not None and process.alive:
                    return process, process.open(handoff)
            await asyncio.to_thread(self._start)

    def retire(self, process: _Process) -> None:
        """The worker says it is idle: end it, unless a run came in meanwhile."""
        with self._lock:
            if self._process is not process or process.runs:
                return
            self._process = None
        log.debug("Ending the idle LM Studio SDK worker process (pid %s)", process.pid)
        threading.Thread(target=process.end, args=(SHUTDOWN_SECONDS,), daemon=True).start()

    def forget(self, process: _Process) -> None:
        with self._lock:
            if self._process is process:
                self._process = None

    async def stream(self, request: ChatRequest) -> AsyncGenerator[StreamEvent, None]:
        """`sdk_backend.stream_sdk`, run in the worker: the same events and errors."""
        handoff = Handoff(asyncio.get_running_loop())
        process, run_id = await self._open(handoff)
        ended, received = False, 0
        try:
            process.send("chat", run_id, request_to_wire(request))
            while True:
                try:
                    batch = await handoff.get_batch(request.idle_timeout + BACKSTOP_SECONDS)
                except TimeoutError:
                    host = sdk_api_host(normalize_server_url(request.server_url))
                    raise idle_timeout(f"ws://{host}", received) from None
                for item in batch:
                    if item is _DONE:
                        ended = True
                        return
                    if isinstance(item, BaseException):
                        ended = True
                        raise item
                    received += len(getattr(item, "text", ""))
                    yield item
        finally:
            if not ended:  # closed early (Cancel): the worker tells LM Studio to stop; wait for it to have done so
                with contextlib.suppress(LMStudioError):
                    process.send("stop", run_id)
                    await _until_done(handoff, STOP_SECONDS)
            process.close(run_id)

    async def _call(self, *message: Any) -> Any:
        """A request with one result (or an error) for an answer."""
        handoff = Handoff(asyncio.get_running_loop())
        process, run_id = await self._open(handoff)
        try:
            process.send(message[0], run_id, *message[1:])
            while True:
                for item in await handoff.get_batch(3600.0):  # the worker answers, or dies and its end answers
                    if isinstance(item, BaseException):
                        raise item
                    if isinstance(item, _Result):
                        return item.value
        finally:
            process.close(run_id)

    async def unload(self, request: ChatRequest, identifier: str, *, confirm_seconds: float,
                     poll_seconds: float) -> bool:
        """`sdk_backend.unload_sdk`, run in the worker."""
        return await self._call("unload", request_to_wire(request), identifier, confirm_seconds, poll_seconds)

    async def close_connections(self) -> None:
        """Close the worker's kept SDK connections (the worker stays): the next run connects afresh."""
        if self.pid is not None:
            await self._call("close_connections")

    def shutdown(self, timeout: float = SHUTDOWN_SECONDS) -> None:
        """End the worker (it closes its connections first); never waits longer than `timeout`."""
        with self._lock:
            process, self._process = self._process, None
        if process is not None:
            process.end(timeout)

    async def aclose(self, timeout: float = SHUTDOWN_SECONDS) -> None:
        """`shutdown` for a caller on an event loop (one that may serve the other end of the connections)."""
        await asyncio.to_thread(self.shutdown, timeout)


async def _until_done(handoff: Handoff, seconds: float) -> None:
    """Wait up to `seconds` for the run's `done`, dropping whatever comes before it."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while (left := deadline - loop.time()) > 0:
        try:
            if any(item is _DONE for item in await handoff.get_batch(left)):
                return
        except TimeoutError:
            return


WORKER = SdkWorker()
atexit.register(WORKER.shutdown)
