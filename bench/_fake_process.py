"""The tests' LM Studio stand-in in a process of its own; prints its URL on the first line. Nothing measured shares
its GIL. `TOKENS` tokens at unlimited speed (bench_sdk.py --comfyui), or with `--echo` an answer naming the prompt
after `--delay` seconds in one of `--parallel` slots (bench_dataset.py)."""

from __future__ import annotations

import argparse
import asyncio

from _harness import FakeLMStudio, serve
from fake_lmstudio import openai_script, rest_script, sdk_fragment


async def main(tokens: int, echo: bool, parallel: int, delay: float) -> None:
    fake = FakeLMStudio(echo=echo, parallel=parallel)
    fake.models[0]["loaded_instances"][0]["config"]["parallel"] = parallel
    fake.sdk.fragments = [sdk_fragment("t ") for _ in range(tokens)]
    fake.rest_events = rest_script([], ["t "] * tokens)
    fake.openai_chunks = openai_script(["t "] * tokens)
    if delay:
        fake.first_delay = delay  # REST and OpenAI-compatible: after the headers, as a model's prompt processing
        fake.sdk.prompt_delay = delay / len(fake.sdk.prompt_progress)
    await serve(fake)
    print(fake.url, flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("tokens", type=int)
    parser.add_argument("--echo", action="store_true")
    parser.add_argument("--parallel", type=int, default=4)
    parser.add_argument("--delay", type=float, default=0.0)
    args = parser.parse_args()
    asyncio.run(main(args.tokens, args.echo, args.parallel, args.delay))
