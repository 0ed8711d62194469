"""A folder of photos captioned through a real ComfyUI: LM Studio Caption Folder against core's dataset nodes with
LM Studio Chat between them (the baseline, measured in the same run). Run on purpose, not in CI:

    python bench/bench_folder.py 0.8.0 [--count 400] [--side 1024] [--format png|jpg] [--parallel 8] [--caption 0.23]

COUNT photo-like images of SIDE x SIDE (PNG, as SDXL saves them, or JPEG; each its own) in the server's
input directory, against the LM Studio stand-in in a process of its own with PARALLEL slots that thinks CAPTION
seconds per caption. Ideal is ceil(COUNT / PARALLEL) x CAPTION. For each way: elapsed over ideal, ComfyUI's CPU per
image (all of it: reading, resizing, encoding and writing are the pack's own work in the folder node), and how far
ComfyUI's memory rose above where it stood before (its resident size, sampled every 0.1 s). The folder node runs
first: core's loader leaves its tensors in ComfyUI's cache.
"""

from __future__ import annotations

import asyncio
import math
import re
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

TESTS = Path(__file__).resolve().parent.parent / "tests"
sys.path.insert(0, str(TESTS))
import real_comfyui  # noqa: E402
from bench_dataset import arguments, comfyui_and_stand_in, cpu_seconds, prompt_for  # noqa: E402
from fake_lmstudio import MODEL  # noqa: E402
from procs import read_proc  # noqa: E402

MODE = "REST API"


def rss_mb(pid: int) -> float:
    match = re.search(rb"VmRSS:\s+(\d+) kB", read_proc(pid, "status") or b"")
    return int(match.group(1)) / 1024 if match else 0.0


def photos(folder: Path, count: int, side: int, suffix: str) -> None:
    """Photo-like images (gradients and grain: they compress and decode as renders and photos do), each its own."""
    folder.mkdir(parents=True, exist_ok=True)
    y, x = np.mgrid[0:side, 0:side]
    smooth = np.stack([(x / 4) % 256, (y / 4) % 256, ((x + y) / 8) % 256], axis=-1)
    grain = np.random.default_rng(7).normal(0, 8, (side, side, 3))
    base = np.clip(smooth + grain, 0, 255).astype(np.uint8)
    for index in range(count):
        pixels = base.copy()
        pixels[0, :16] = index % 256, index // 256 % 256, 0  # each image its own bytes: nothing resumes
        Image.fromarray(pixels).save(folder / f"{index:05d}{suffix}", quality=92)


def folder_prompt(folder: str, url: str) -> dict:
    return {"1": {"class_type": "LMStudioCaptionFolder", "inputs": {
        "folder": folder, "prompt": "Caption", "model_id": MODEL, "connection_mode": MODE, "server_url": url,
        "temperature": 0.3, "max_tokens": -1}}}


async def measure(server: real_comfyui.ComfyServer, prompt: dict) -> tuple[float, float, float]:
    """(elapsed seconds, ComfyUI's CPU seconds, its memory's rise in MB) for one queued prompt."""
    pid = server._process.pid  # type: ignore[union-attr]
    before_mb, peak = rss_mb(pid), [0.0]

    async def sample() -> None:
        while True:
            peak[0] = max(peak[0], rss_mb(pid))
            await asyncio.sleep(0.1)

    sampler = asyncio.create_task(sample())
    cpu = cpu_seconds(pid)
    started = time.perf_counter()
    try:
        run = await server.run(prompt, timeout=1800)
    finally:
        sampler.cancel()
    elapsed = time.perf_counter() - started
    assert run.outcome == "execution_success", run.error
    return elapsed, cpu_seconds(pid) - cpu, max(peak[0], rss_mb(pid)) - before_mb


async def main(version: str, count: int, side: int, suffix: str, parallel: int, caption: float) -> None:
    with comfyui_and_stand_in(version, parallel, caption) as (server, url):
        for name, images in (("bench_folder", count), ("bench_core", count), ("bench_warm_up", parallel)):
            photos(server.input_dir / name, images, side, suffix)
        ideal = math.ceil(count / parallel) * caption
        await measure(server, folder_prompt("bench_warm_up", url))  # warm up: imports, the first connection
        rows = [("Caption Folder", await measure(server, folder_prompt("bench_folder", url))),
                ("core's nodes + Chat", await measure(server, prompt_for(server, "bench_core", url, MODE, 1)))]
        captions = len(list((server.input_dir / "bench_folder").glob("*.txt")))
        assert captions == count, f"only {captions} of {count} images were captioned: see ComfyUI's log"
        print(f"ComfyUI {version}, {count} {suffix} images of {side}x{side}, {parallel} slots, {caption} s a caption, "
              f"{MODE}; ideal {ideal:.1f} s")
        print(f"{'way':<20} {'elapsed':>8} {'ratio':>6} {'CPU/image':>10} {'memory':>10}")
        for name, (elapsed, cpu, memory) in rows:
            print(f"{name:<20} {elapsed:>7.1f}s {elapsed / ideal:>6.2f} {cpu / count * 1000:>8.1f}ms "
                  f"{memory:>+8.0f}MB")
        (folder_time, folder_cpu, folder_mb), (core_time, core_cpu, core_mb) = rows[0][1], rows[1][1]
        print(f"Caption Folder over core's nodes: time {folder_time / core_time:.2f}x, "
              f"CPU {folder_cpu / core_cpu:.2f}x, memory rise {folder_mb / max(core_mb, 1):.3f}x")


if __name__ == "__main__":
    parser = arguments(__doc__, 400)
    parser.add_argument("--side", type=int, default=1024)
    parser.add_argument("--format", choices=["png", "jpg"], default="png", help="png: what SDXL saves; jpg: photos")
    args = parser.parse_args()
    asyncio.run(main(args.version, args.count, args.side, f".{args.format}", args.parallel, args.caption))
