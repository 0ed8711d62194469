"""The SDK mode's speed against the other modes and against the raw SDK, all in the same run. Run on purpose:

    python bench/bench_sdk.py                    # through ComfyUI's stand-in, the server in a thread
    python bench/bench_sdk.py --comfyui 0.8.0    # through a real ComfyUI server (../shared/comfyui/setup.sh)

`--comfyui`: three processes, as a user's machine has them: the LM Studio stand-in in its own, a real ComfyUI server
with the pack, and this one, which queues the node and reads the same stream with raw clients (a kept
`lmstudio.AsyncClient`; for the HTTP modes, aiohttp reading the SSE to its end and parsing each event's JSON). The
node's time is from the `executing` to the `executed` message of its node, median of ROUNDS_COMFYUI runs interleaved
with the raw ones (and the median of each round's raw/node ratio).

Against the tests' LM Studio stand-in on loopback, served from its own thread (so the figures are overhead, not a
model's speed, and nothing measured shares a loop with the server), through the node and ComfyUI's stand-in:
- fixed cost per run: the node's whole run for a two-token answer, median of ROUNDS runs after the first, per mode,
  minus an empty baseline (a node run that returns at once through the same path);
- streaming rate: 5,000 fragments at unlimited speed through the node, over the same prediction read by a raw
  `lmstudio.AsyncClient` that is kept open (the best the SDK itself can do). The node's SDK runs in its worker
  process, while this raw client shares this process's GIL with the stand-in: the ratio flatters the node, and
  `--comfyui` is the fair comparison;
- first run: the node's first SDK run (it opens the kept connection) over the old design's every run (a fresh
  `AsyncClient` per run: open, predict, close); and the first run of all, which starts the SDK worker process.
"""

from __future__ import annotations

import asyncio
import statistics

import lmstudio as lms

from _harness import SEEDS, FakeLMStudio, ServerThread, median_time
from chat_node_helpers import run
from fake_lmstudio import MODEL, sdk_fragment
from lmstudio_pack.sdk_process import WORKER
from lmstudio_pack.utils import sdk_api_host

ROUNDS = 15
TOKENS = 5000


async def raw_predict(client: lms.AsyncClient) -> int:
    model = await client.llm.model(MODEL)
    stream = await model.respond_stream("Describe", config={"temperature": 0.7})
    return sum([1 async for _ in stream])


async def fresh_client_run(host: str) -> int:
    async with lms.AsyncClient(host) as client:
        return await raw_predict(client)


async def main() -> None:
    with ServerThread(FakeLMStudio()) as fake:
        host = sdk_api_host(fake.url)
        try:
            # First run of the kept connection (a cold start each time: the kept client is closed beforehand,
            # outside the timing), against the old design's per-run cost.
            cold, fresh = [], []
            for _ in range(5):
                await WORKER.aclose()
                fresh.append(await median_time(lambda: run(fake.url, "SDK", seed=next(SEEDS)), 1))
                await WORKER.close_connections()
                cold.append(await median_time(lambda: run(fake.url, "SDK", seed=next(SEEDS)), 1))
            first, started = statistics.median(cold), statistics.median(fresh)
            old = await median_time(lambda: fresh_client_run(host), 5)

            async def empty() -> None:
                await asyncio.sleep(0)

            baseline = await median_time(empty, ROUNDS)
            costs = {}
            for mode in ("SDK", "REST API", "OpenAI-compatible"):
                await run(fake.url, mode, seed=next(SEEDS))
                once = lambda mode=mode: run(fake.url, mode, seed=next(SEEDS))  # noqa: E731
                costs[mode] = await median_time(once, ROUNDS) - baseline

            fake.sdk.fragments = [sdk_fragment("t ") for _ in range(TOKENS)]
            raw_times, node_times = [], []
            async with lms.AsyncClient(host) as client:
                await raw_predict(client)
                await run(fake.url, "SDK", seed=next(SEEDS))
                for _ in range(7):  # interleaved, so drift in the machine's speed hits both alike
                    raw_times.append(await median_time(lambda: raw_predict(client), 1))
                    node_times.append(await median_time(lambda: run(fake.url, "SDK", seed=next(SEEDS)), 1))
            raw, node = statistics.median(raw_times), statistics.median(node_times)
        finally:
            await WORKER.aclose()

    print("fixed cost per run (median after the first, minus an empty baseline):")
    for mode, cost in costs.items():
        print(f"  {mode:<18} {cost * 1000:7.1f} ms")
    print(f"streaming {TOKENS} fragments: raw kept AsyncClient {TOKENS / raw:8.0f}/s, node (SDK) {TOKENS / node:8.0f}/s"
          f"  -> {raw / node:.2f}x the raw rate")
    print(f"first SDK run (median of 5 cold starts) {first * 1000:.0f} ms; the old design paid {old * 1000:.0f} ms on "
          "every run"
          f"  -> {first / old:.2f}x")
    print(f"first SDK run that also starts the worker process (median of 5): {started * 1000:.0f} ms")


# The VM this was measured on swings 10-15% from minute to minute: many rounds, each raw run paired with the
# node run beside it.
ROUNDS_COMFYUI = 15
_ENDPOINTS = {"REST API": "/api/v1/chat", "OpenAI-compatible": "/v1/chat/completions"}


async def raw_http(url: str, mode: str) -> int:
    """The same stream as the node asks for, read to its end with aiohttp and each event's JSON parsed: the least any
    client must do with it."""
    import json

    import aiohttp

    body = {"model": MODEL, "stream": True, "store": False, "input": "Describe"} if mode == "REST API" else {
        "model": MODEL, "stream": True, "messages": [{"role": "user", "content": "Describe"}]}
    events = 0
    async with aiohttp.ClientSession() as session, session.post(url + _ENDPOINTS[mode], json=body) as response:
        async for line in response.content:
            if line.startswith(b"data:") and not line.startswith(b"data: [DONE]"):
                json.loads(line[5:])
                events += 1
    return events


async def node_in_comfyui(server, url: str, mode: str, seed: int) -> float:
    """Seconds from the node's `executing` to its `executed` message (a new seed each run: no cache)."""
    import time

    marks: dict[str, float] = {}

    async def mark(run, message) -> None:
        node = (message.get("data") or {}).get("node")
        if node == "1" and message["type"] in ("executing", "executed"):
            marks.setdefault(message["type"], time.perf_counter())

    prompt = {"1": {"class_type": "LMStudioStreamChat", "inputs": {
        "prompt": "Describe", "model_id": MODEL, "connection_mode": mode, "server_url": url, "temperature": 0.7,
        "max_tokens": -1, "debug_mode": False, "system_prompt": "", "seed": seed}}}
    run = await server.run(prompt, on_message=mark)
    assert run.outcome == "execution_success", run.error
    return marks["executed"] - marks["executing"]


async def main_comfyui(version: str) -> None:
    import subprocess
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    import real_comfyui

    def stand_in(tokens: int) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, str(Path(__file__).with_name("_fake_process.py")), str(tokens)],
                                stdout=subprocess.PIPE, text=True)

    fake, short = stand_in(TOKENS), stand_in(2)
    server = real_comfyui.ComfyServer(version).start()
    try:
        url, short_url = fake.stdout.readline().strip(), short.stdout.readline().strip()
        host = sdk_api_host(url)
        seeds = iter(range(1, 10_000))
        # What a run costs beyond the SDK's own: a two-token answer, node against a raw kept client.
        async with lms.AsyncClient(sdk_api_host(short_url)) as client:
            await raw_predict(client)
            await node_in_comfyui(server, short_url, "SDK", next(seeds))
            raw_short = [await median_time(lambda: raw_predict(client), 1) for _ in range(ROUNDS_COMFYUI)]
            node_short = [await node_in_comfyui(server, short_url, "SDK", next(seeds)) for _ in range(ROUNDS_COMFYUI)]
        print(f"ComfyUI {version}, SDK run of a two-token answer: node {statistics.median(node_short) * 1000:.0f} ms, "
              f"raw {statistics.median(raw_short) * 1000:.0f} ms")
        print(f"ComfyUI {version}, {TOKENS} tokens at unlimited speed, median of {ROUNDS_COMFYUI}:")
        async with lms.AsyncClient(host) as client:
            for mode in ("SDK", "REST API", "OpenAI-compatible"):
                raw = (lambda: raw_predict(client)) if mode == "SDK" else (lambda mode=mode: raw_http(url, mode))
                await raw()
                await node_in_comfyui(server, url, mode, next(seeds))
                raw_times, node_times = [], []
                for _ in range(ROUNDS_COMFYUI):
                    raw_times.append(await median_time(raw, 1))
                    node_times.append(await node_in_comfyui(server, url, mode, next(seeds)))
                raw_s, node_s = statistics.median(raw_times), statistics.median(node_times)
                paired = statistics.median(r / n for r, n in zip(raw_times, node_times, strict=True))
                print(f"  {mode:<18} node {node_s * 1000:6.0f} ms, raw {raw_s * 1000:6.0f} ms"
                      f"  -> {raw_s / node_s:.2f}x the raw rate (median of paired rounds {paired:.2f}x)")
    finally:
        server.stop()
        fake.kill()
        short.kill()


if __name__ == "__main__":
    import sys

    if "--comfyui" in sys.argv:
        asyncio.run(main_comfyui(sys.argv[sys.argv.index("--comfyui") + 1]))
    else:
        asyncio.run(main())
