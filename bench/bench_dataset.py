"""A dataset folder through a real ComfyUI, per mode: elapsed over ideal, and the CPU ComfyUI spends per item (its
own process and, in SDK mode, the SDK worker's, counted with it). Run on purpose, not in CI:

    python bench/bench_dataset.py 0.8.0 [--count 1000] [--parallel 8] [--caption 0.23]

Core's dataset nodes as a user wires them: Load Image Dataset from Folder -> LM Studio Chat -> Save Image Text Dataset
to Folder, over COUNT small PNGs, against the LM Studio stand-in in a process of its own with PARALLEL slots that
thinks CAPTION seconds per caption. Ideal is ceil(COUNT / PARALLEL) x CAPTION. The baseline is the same run with
core's String node in place of LM Studio Chat (what the loader and the saver cost on their own, in time and CPU): the
CPU beyond it is the pack's, per item, and ratio* is the elapsed time over ideal plus the baseline's (core's nodes
run before and after the chat node, not beside it).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from PIL import Image

TESTS = Path(__file__).resolve().parent.parent / "tests"
sys.path.insert(0, str(TESTS))
import real_comfyui  # noqa: E402
from fake_lmstudio import MODEL  # noqa: E402
from procs import read_proc  # noqa: E402

MODES = ("REST API", "OpenAI-compatible", "SDK")
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of `pid` (0 when it is gone)."""
    stat = read_proc(pid, "stat")
    if stat is None:
        return 0.0
    fields = stat.rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def sdk_worker_pids(parent: int) -> list[int]:
    found = []
    for folder in Path("/proc").glob("[0-9]*"):
        status = read_proc(int(folder.name), "status")
        command = read_proc(int(folder.name), "cmdline") or b""
        if status and f"PPid:\t{parent}\n".encode() in status and b"sdk_worker" in command:
            found.append(int(folder.name))
    return found


def prompt_for(server: real_comfyui.ComfyServer, folder: str, url: str, mode: str | None, seed: int) -> dict:
    save = {"images": ["1", 0], "texts": ["2", 0], "folder_name": f"{folder}_{seed}", "filename_prefix": "img"}
    if server.version != "0.8.0":
        save["mode"] = "overwrite"
    if mode is None:  # the baseline: the same loader and saver, a fixed text for every image
        text = {"class_type": "PrimitiveStringMultiline", "inputs": {"value": "a caption"}}
        save["texts"] = ["2", 0]
        return {"1": {"class_type": "LoadImageDataSetFromFolder", "inputs": {"folder": folder}}, "2": text,
                "3": {"class_type": "SaveImageTextDataSetToFolder", "inputs": save}}
    chat = {"class_type": "LMStudioStreamChat", "inputs": {
        "prompt": "Caption", "model_id": MODEL, "connection_mode": mode, "server_url": url, "temperature": 0.7,
        "max_tokens": -1, "debug_mode": False, "system_prompt": "", "seed": seed, "image": ["1", 0]}}
    return {"1": {"class_type": "LoadImageDataSetFromFolder", "inputs": {"folder": folder}}, "2": chat,
            "3": {"class_type": "SaveImageTextDataSetToFolder", "inputs": save}}


async def measure(server: real_comfyui.ComfyServer, prompt: dict) -> tuple[float, float]:
    """(elapsed seconds, CPU seconds of ComfyUI and its SDK workers) for one queued prompt."""
    pid = server._process.pid  # type: ignore[union-attr]
    workers = sdk_worker_pids(pid)
    before = cpu_seconds(pid) + sum(cpu_seconds(w) for w in workers)
    started = time.perf_counter()
    run = await server.run(prompt, timeout=600)
    elapsed = time.perf_counter() - started
    assert run.outcome == "execution_success", run.error
    workers = sorted(set(workers) | set(sdk_worker_pids(pid)))
    after = cpu_seconds(pid) + sum(cpu_seconds(w) for w in workers)
    return elapsed, after - before


@contextlib.contextmanager
def comfyui_and_stand_in(version: str, parallel: int, caption: float) -> Iterator[tuple[real_comfyui.ComfyServer, str]]:
    """A real ComfyUI server, and the LM Studio stand-in in a process of its own (`parallel` slots, `caption`
    seconds a caption, echoing the prompt); (the server, the stand-in's URL). Both stopped afterwards."""
    stand_in = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("_fake_process.py")), "0", "--echo", "--parallel",
         str(parallel), "--delay", str(caption)], stdout=subprocess.PIPE, text=True)
    server = real_comfyui.ComfyServer(version).start()
    try:
        yield server, stand_in.stdout.readline().strip()  # type: ignore[union-attr]
    finally:
        server.stop()
        stand_in.kill()


async def main(version: str, count: int, parallel: int, caption: float) -> None:
    with comfyui_and_stand_in(version, parallel, caption) as (server, url):
        folder, small = "bench_dataset", "bench_dataset_warm_up"
        for name, images in ((folder, count), (small, parallel * 2)):
            target = server.input_dir / name
            target.mkdir(parents=True, exist_ok=True)
            for i in range(images):
                Image.new("RGB", (256, 256), (i % 256, (i * 7) % 256, 90)).save(target / f"{i:05d}.png")
        seeds = iter(range(1, 1_000_000))
        ideal = math.ceil(count / parallel) * caption
        await measure(server, prompt_for(server, small, url, None, next(seeds)))  # warm up
        base_elapsed, base_cpu = await measure(server, prompt_for(server, folder, url, None, next(seeds)))
        print(f"ComfyUI {version}, {count} images of 256x256, {parallel} slots, {caption} s a caption; ideal "
              f"{ideal:.1f} s; core's loader and saver alone: {base_elapsed:.1f} s, {base_cpu / count * 1000:.1f} ms "
              "of CPU per item (they run before and after the node, not beside it)")
        print(f"{'mode':<18} {'elapsed':>8} {'ratio':>6} {'ratio*':>7} {'CPU/item':>9} {'pack/item':>10}   "
              "(ratio*: over ideal + core's own time)")
        for mode in MODES:
            await measure(server, prompt_for(server, small, url, mode, next(seeds)))  # warm up (the SDK's worker)
            elapsed, cpu = await measure(server, prompt_for(server, folder, url, mode, next(seeds)))
            print(f"{mode:<18} {elapsed:>7.1f}s {elapsed / ideal:>6.2f} {elapsed / (ideal + base_elapsed):>7.2f} "
                  f"{cpu / count * 1000:>7.1f}ms {(cpu - base_cpu) / count * 1000:>8.1f}ms")


def arguments(doc: str, count: int) -> argparse.ArgumentParser:
    """A real-ComfyUI bench's command line: the ComfyUI version, how many images, the stand-in's slots and time."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("version", choices=["0.8.0", "0.33.0"])
    parser.add_argument("--count", type=int, default=count)
    parser.add_argument("--parallel", type=int, default=8)
    parser.add_argument("--caption", type=float, default=0.23)
    return parser


if __name__ == "__main__":
    args = arguments(__doc__, 1000).parse_args()
    asyncio.run(main(args.version, args.count, args.parallel, args.caption))
