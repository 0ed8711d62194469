"""Captioning lists: the node's elapsed time over a baseline measured in the same run. Run on purpose, not in CI:

    python bench/bench_lists.py                 # one LM Studio stand-in with `parallel` 4, every mode
    python bench/bench_lists.py --refusing      # a server of 4 slots that answers 429 + Retry-After when full
    eval "$(tests/router/setup.sh)" && python bench/bench_lists.py --router   # LiteLLM's proxy, two servers of 4

One server: the node is mapped over 12 and 100 images the way ComfyUI does (every item started at once); the
baseline is ceil(n / 4) x one item's time, measured alone in the same run, so 1.0 means all four slots were busy
all the time. Refusing server and router: the baseline is a plain client through the same server or proxy, with 8
requests in flight, that waits out a 429 (its Retry-After, else 0.25 s) and asks again; the node runs with nothing
set (max_parallel 0, so it finds the concurrency itself) and, for the refusing server, with max_parallel 8 as in the
issue that asked for this. The stand-ins think ITEM_SECONDS in a slot before each answer, so the figures are
scheduling, not a model's speed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import time

import aiohttp
import torch

from _harness import SEEDS, FakeLMStudio, ServerThread, median_time, serve
from chat_node_helpers import run, run_list
from lmstudio_pack.sdk_process import WORKER

ITEM_SECONDS = 0.2
MODES = ("REST API", "OpenAI-compatible", "SDK")
OPENAI = "OpenAI-compatible"


async def one_server() -> None:
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


async def plain_client(url: str, count: int, in_flight: int, token: str | None, model: str) -> tuple[float, int]:
    """A plain streaming client: `in_flight` at once, a 429 waited out; (seconds, refusals)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    gate = asyncio.Semaphore(in_flight)
    refusals = 0

    async def one(session: aiohttp.ClientSession, index: int) -> None:
        nonlocal refusals
        body = {"model": model, "stream": True, "seed": next(SEEDS),
                "messages": [{"role": "user", "content": f"Describe {index}"}]}
        async with gate:
            while True:
                async with session.post(f"{url}/v1/chat/completions", json=body, headers=headers) as response:
                    if response.status == 429:
                        refusals += 1
                        wait = float(response.headers.get("Retry-After") or 0.25)
                        await response.read()
                    else:
                        async for line in response.content:
                            if line.startswith(b"data: ") and line.strip() != b"data: [DONE]":
                                json.loads(line[6:])
                        return
                await asyncio.sleep(wait)

    started = time.perf_counter()
    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(one(session, i) for i in range(count)))
    return time.perf_counter() - started, refusals


async def node_list(url: str, count: int, model: str, **options) -> float:
    started = time.perf_counter()
    outputs, _, _ = await run_list(url, OPENAI, model_id=model, count=count, seed=next(SEEDS), **options)
    elapsed = time.perf_counter() - started
    lost = [text for text in outputs[0] if not text.startswith("Answer to Describe")]
    assert not lost, f"{len(lost)} captions lost: {lost[:2]}"
    return elapsed


def report(label: str, count: int, node: float, plain: float, refusals: int, node_refusals: int | None = None) -> None:
    node_said = f", the node {node_refusals}x" if node_refusals is not None else ""
    print(f"{label:<44} {count:>6} {plain:>8.2f}s {node:>8.2f}s {node / plain:>6.2f}   (plain client refused "
          f"{refusals}x{node_said})")


async def refusing_server(count: int) -> None:
    fake = FakeLMStudio(echo=True, lmstudio=False, parallel=4, event_delay=0.01)
    fake.delay_for = {f"Describe {i}": ITEM_SECONDS for i in range(count)}
    fake.refuse_when_full = (429, {"Retry-After": "0.5"}, {"error": {"message": "server is busy"}})
    with ServerThread(fake):
        print(f"{'node against':<44} {'images':>6} {'plain 8':>9} {'node':>9} {'ratio':>6}")
        one, _ = await plain_client(fake.url, 1, 1, None, "m")
        plain, refusals = await plain_client(fake.url, count, 8, None, "m")
        for label, options in (("max_parallel 8", {"max_parallel": 8}), ("nothing set", {})):
            before = fake.refused
            node = await node_list(fake.url, count, "m", **options)
            report(f"refusing server, {label}", count, node, plain, refusals, fake.refused - before)
        print(f"ideal with its 4 slots: {math.ceil(count / 4) * one:.2f} s (one item alone: {one:.3f} s)")


async def router(count: int) -> None:
    from router_proxy import MASTER_KEY, MODEL_NAME, LiteLLMProxy

    binary = os.environ.get("LITELLM_BIN")
    if not binary:
        raise SystemExit('--router needs LiteLLM\'s proxy: eval "$(tests/router/setup.sh)"')
    fakes = [FakeLMStudio(echo=True, lmstudio=False, parallel=4, event_delay=0.01) for _ in range(2)]
    for fake in fakes:
        fake.delay_for = {f"Describe {i}": ITEM_SECONDS for i in range(count)}
    with ServerThread(fakes[0]), ServerThread(fakes[1]):
        proxy = LiteLLMProxy(binary, [fake.url for fake in fakes], parallel=4, model="m").start()
        os.environ["LMSTUDIO_API_TOKEN"] = MASTER_KEY
        try:
            await plain_client(proxy.url, 16, 8, MASTER_KEY, MODEL_NAME)  # warm the proxy up
            one, _ = await plain_client(proxy.url, 1, 1, MASTER_KEY, MODEL_NAME)
            print(f"{'node against':<44} {'images':>6} {'plain 8':>9} {'node':>9} {'ratio':>6}")
            plain, refusals = await plain_client(proxy.url, count, 8, MASTER_KEY, MODEL_NAME)
            report("LiteLLM proxy, 2 x 4 slots, nothing set", count, await node_list(proxy.url, count, MODEL_NAME),
                   plain, refusals)
            report("LiteLLM proxy, 2 x 4 slots, max_parallel 8", count,
                   await node_list(proxy.url, count, MODEL_NAME, max_parallel=8), plain, refusals)
            print(f"ideal with 8 slots: {math.ceil(count / 8) * one:.2f} s (one item alone: {one:.3f} s; the proxy "
                  "shares this machine's cores with everything else)")
        finally:
            proxy.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--router", action="store_true", help="two stand-ins behind LiteLLM's proxy")
    parser.add_argument("--refusing", action="store_true", help="one stand-in that answers 429 when full")
    parser.add_argument("--count", type=int, default=160, help="images per list (router, refusing)")
    args = parser.parse_args()
    if args.router:
        asyncio.run(router(args.count))
    elif args.refusing:
        asyncio.run(refusing_server(args.count))
    else:
        asyncio.run(one_server())
