"""The tests' LM Studio stand-in in a process of its own, answering every mode with TOKENS tokens at unlimited
speed; prints its URL on the first line. For `bench_sdk.py --comfyui`: nothing measured shares its GIL."""

from __future__ import annotations

import asyncio
import sys

from _harness import FakeLMStudio, serve
from fake_lmstudio import openai_script, rest_script, sdk_fragment


async def main(tokens: int) -> None:
    fake = FakeLMStudio()
    fake.sdk.fragments = [sdk_fragment("t ") for _ in range(tokens)]
    fake.rest_events = rest_script([], ["t "] * tokens)
    fake.openai_chunks = openai_script(["t "] * tokens)
    await serve(fake)
    print(fake.url, flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
