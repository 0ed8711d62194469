"""What the benches share: the pack loaded as the tests load it (with the stand-in of ComfyUI where ComfyUI is
not importable) and the tests' local LM Studio stand-in on loopback. Benches are run on purpose, not in CI."""

from __future__ import annotations

import asyncio
import itertools
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web

TESTS = Path(__file__).resolve().parent.parent / "tests"
sys.path.insert(0, str(TESTS))
import conftest  # noqa: E402,F401  (puts the package under its alias and ComfyUI's stand-in on the path)
from fake_lmstudio import FakeLMStudio, serve  # noqa: E402  (serve: for the benches)

# The node keeps finished answers (resume) in ComfyUI's user folder and serves a repeated request from there: a
# bench gets a fresh folder, and asks each request with a new seed (`SEEDS`), so that every run reaches LM Studio.
SEEDS = itertools.count(1)


def _fresh_user_folder() -> None:
    import folder_paths  # ComfyUI's stand-in, importable once conftest is

    folder_paths.set_user_directory(tempfile.mkdtemp(prefix="lmstudio-bench-"))


_fresh_user_folder()


async def median_time(make: Callable[[], Awaitable[object]], rounds: int) -> float:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        await make()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


class ServerThread:
    """`fake` served from its own thread and event loop, so that what is measured never shares a loop with it."""

    def __init__(self, fake: FakeLMStudio) -> None:
        self.fake = fake
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, name="fake-lmstudio", daemon=True)

    def __enter__(self) -> FakeLMStudio:
        self._thread.start()

        async def start() -> web.AppRunner:
            return await serve(self.fake)

        self._runner = asyncio.run_coroutine_threadsafe(start(), self._loop).result(10)
        return self.fake

    def __exit__(self, *exc: object) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
