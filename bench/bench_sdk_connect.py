"""Added latency of opening the lmstudio SDK client per run, against a local server. Run on purpose, not in CI.

    python bench/bench_sdk_connect.py

Each SDK run opens a client (greeting probe, then five websockets, each with its own auth handshake) because
ComfyUI gives every prompt a fresh event loop. Measured in the same run: a whole REST API chat (baseline), a
whole SDK chat, and the SDK client's open+close alone, all against the tests' fake LM Studio on loopback, so
the figures are the protocol's overhead, not a model's speed.
"""

from __future__ import annotations

import asyncio
import importlib.util
import statistics
import sys
import time
from pathlib import Path

from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
spec = importlib.util.spec_from_file_location("lmstudio_pack", ROOT / "__init__.py",
                                              submodule_search_locations=[str(ROOT)])
# Only the client is needed; keep the package's __init__ (which imports ComfyUI) from running.
package = importlib.util.module_from_spec(spec)
sys.modules["lmstudio_pack"] = package
from lmstudio_pack import client  # noqa: E402
from lmstudio_pack.utils import sdk_api_host  # noqa: E402

import lmstudio as lms  # noqa: E402
from fake_lmstudio import MODEL, FakeLMStudio  # noqa: E402


async def timed(make, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        await make()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


async def main(rounds: int = 30) -> None:
    fake = FakeLMStudio()
    runner = web.AppRunner(fake.app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"

    async def chat(mode):
        request = client.ChatRequest(prompt="Describe", server_url=url, mode=mode, model=MODEL)
        async for _ in client.stream_chat(request):
            pass

    async def open_close():
        async with lms.AsyncClient(sdk_api_host(url)):
            pass

    for make in (lambda: chat(client.ConnectionMode.REST), lambda: chat(client.ConnectionMode.SDK), open_close):
        await make()  # warm-up
    rest = await timed(lambda: chat(client.ConnectionMode.REST), rounds)
    sdk = await timed(lambda: chat(client.ConnectionMode.SDK), rounds)
    connect = await timed(open_close, rounds)
    print(f"REST API chat (baseline): {rest * 1000:7.1f} ms")
    print(f"SDK chat:                 {sdk * 1000:7.1f} ms  ({sdk / rest:.1f}x the REST chat)")
    print(f"SDK client open+close:    {connect * 1000:7.1f} ms  (added per run: {(sdk - rest) * 1000:.1f} ms over REST)")
    await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(main())
