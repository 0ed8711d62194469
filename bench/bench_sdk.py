"""The SDK mode's speed against the other modes and against the raw SDK, all in the same run. Run on purpose:

    python bench/bench_sdk.py

Against the tests' LM Studio stand-in on loopback, served from its own thread (so the figures are overhead, not a
model's speed, and nothing measured shares a loop with the server), through the node and ComfyUI's stand-in:
- fixed cost per run: the node's whole run for a two-token answer, median of ROUNDS runs after the first, per mode,
  minus an empty baseline (a node run that returns at once through the same path);
- streaming rate: 5,000 fragments at unlimited speed through the node, over the same prediction read by a raw
  `lmstudio.AsyncClient` that is kept open (the best the SDK itself can do);
- first run: the node's first SDK run (it opens the kept connection) over the old design's every run (a fresh
  `AsyncClient` per run: open, predict, close).
"""

from __future__ import annotations

import asyncio
import statistics

import lmstudio as lms

from _harness import FakeLMStudio, ServerThread, median_time
from fake_lmstudio import MODEL, sdk_fragment
from lmstudio_pack.sdk_runtime import RUNTIME
from lmstudio_pack.utils import sdk_api_host
from chat_node_helpers import run

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
            cold = []
            for _ in range(5):
                await RUNTIME.aclose()
                cold.append(await median_time(lambda: run(fake.url, "SDK"), 1))
            first = statistics.median(cold)
            old = await median_time(lambda: fresh_client_run(host), 5)

            async def empty() -> None:
                await asyncio.sleep(0)

            baseline = await median_time(empty, ROUNDS)
            costs = {}
            for mode in ("SDK", "REST API", "OpenAI-compatible"):
                await run(fake.url, mode)
                costs[mode] = await median_time(lambda mode=mode: run(fake.url, mode), ROUNDS) - baseline

            fake.sdk.fragments = [sdk_fragment("t ") for _ in range(TOKENS)]
            raw_times, node_times = [], []
            async with lms.AsyncClient(host) as client:
                await raw_predict(client)
                await run(fake.url, "SDK")
                for _ in range(7):  # interleaved, so drift in the machine's speed hits both alike
                    raw_times.append(await median_time(lambda: raw_predict(client), 1))
                    node_times.append(await median_time(lambda: run(fake.url, "SDK"), 1))
            raw, node = statistics.median(raw_times), statistics.median(node_times)
        finally:
            await RUNTIME.aclose()

    print("fixed cost per run (median after the first, minus an empty baseline):")
    for mode, cost in costs.items():
        print(f"  {mode:<18} {cost * 1000:7.1f} ms")
    print(f"streaming {TOKENS} fragments: raw kept AsyncClient {TOKENS / raw:8.0f}/s, node (SDK) {TOKENS / node:8.0f}/s"
          f"  -> {raw / node:.2f}x the raw rate")
    print(f"first SDK run (median of 5 cold starts) {first * 1000:.0f} ms; the old design paid {old * 1000:.0f} ms on "
          "every run"
          f"  -> {first / old:.2f}x")


if __name__ == "__main__":
    asyncio.run(main())
