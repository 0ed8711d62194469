"""Captioning lists: elapsed time over ideal time, per connection mode, against the local LM Studio stand-in with
`parallel` 4. Run on purpose, not in CI:

    python bench/bench_lists.py

For 12 and 100 images, the node is mapped over the list the way ComfyUI does (every item started at once). Ideal
is ceil(n / 4) x one item's time, measured alone in the same run; 1.0 means all four slots were busy all the time.
The stand-in thinks ITEM_SECONDS before each answer (in a slot, like a model generating), so the figures are the
node's scheduling, not a model's speed.
"""

from __future__ import annotations

import asyncio
import math
import time

import torch

from _harness import SEEDS, FakeLMStudio, median_time, serve
from chat_node_helpers import run, run_list
from lmstudio_pack.sdk_process import WORKER

ITEM_SECONDS = 0.2
MODES = ("REST API", "OpenAI-compatible", "SDK")


async def main() -> None:
    fake = FakeLMStudio(echo=True, parallel=4)
    fake.delay_for = {"Describe": ITEM_SECONDS} | {f"Describe {i}": ITEM_SECONDS for i in range(100)}
    runner = await serve(fake)
    image = torch.rand(1, 256, 256, 3)
    try:
        print(f"{'mode':<18} {'images':>6} {'one item':>9} {'ideal':>8} {'elapsed':>8} {'ratio':>6} {'peak':>5}")
        for mode in MODES:
            await run(fake.url, mode, image=image, seed=next(SEEDS))  # warm up (the SDK opens its kept connection here)
            one = await median_time(lambda mode=mode: run(fake.url, mode, image=image, seed=next(SEEDS)), 3)
            for count in (12, 100):
                fake.peak_in_flight = 0
                started = time.perf_counter()
                await run_list(fake.url, mode, count=count, per_item={"image": [image] * count}, seed=next(SEEDS))
                elapsed = time.perf_counter() - started
                ideal = math.ceil(count / 4) * one
                print(f"{mode:<18} {count:>6} {one:>8.3f}s {ideal:>7.2f}s {elapsed:>7.2f}s {elapsed / ideal:>6.2f} "
                      f"{fake.peak_in_flight:>5}")
    finally:
        await WORKER.aclose()
        await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(main())
