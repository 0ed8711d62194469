"""LM Studio Caption Folder inside real ComfyUI servers (0.8.0 and 0.33.0, on CPU), driven through `/prompt`: a
folder of 2,000 images with ComfyUI's memory measured, Cancel and a kill -9 mid-folder, each queued again."""

from __future__ import annotations

import asyncio
import re
import uuid

import aiohttp
import pytest
from PIL import Image

import real_comfyui
from fake_lmstudio import MODEL
from procs import read_proc
from test_comfyui_server import finished_items

pytestmark = pytest.mark.parametrize("version", real_comfyui.VERSIONS)


@pytest.fixture
def server(version, real_comfyui_servers):
    return real_comfyui_servers(version)


def folder_of(server: real_comfyui.ComfyServer, count: int) -> str:
    """`count` small PNGs, each of its own size, in a folder of the server's input directory."""
    name = f"folder_{uuid.uuid4().hex[:8]}"
    folder = server.input_dir / name
    folder.mkdir()
    for index in range(count):
        Image.new("RGB", (16 + index % 50, 16 + index // 50), (index % 250, 90, 160)).save(folder / f"{index:04d}.png")
    return name


def caption_prompt(url: str, folder: str, mode: str = "REST API", **inputs) -> dict:
    values = dict(folder=folder, prompt="Caption it", model_id=MODEL, connection_mode=mode, server_url=url,
                  temperature=0.3, max_tokens=-1)
    return {"1": {"class_type": "LMStudioCaptionFolder", "inputs": values | inputs}}


def captions_are_right(server: real_comfyui.ComfyServer, folder: str) -> tuple[int, list[str]]:
    """(captions that name their own image's size, images whose caption is missing or wrong)."""
    right, wrong = 0, []
    for image in sorted((server.input_dir / folder).glob("*.png")):
        caption = image.with_suffix(".txt")
        with Image.open(image) as opened:
            expected = f"An image of {opened.width} x {opened.height}"
        if caption.exists() and caption.read_text() == expected:
            right += 1
        else:
            wrong.append(image.name)
    return right, wrong


def rss_mb(pid: int) -> float:
    status = read_proc(pid, "status") or b""
    match = re.search(rb"VmRSS:\s+(\d+) kB", status)
    return int(match.group(1)) / 1024 if match else 0.0


async def test_a_folder_of_2000_images_is_captioned_with_memory_flat(server, lmstudio):
    lmstudio.describe_images = True
    folder = folder_of(server, 2000)
    assert server._process is not None
    pid = server._process.pid
    before = rss_mb(pid)
    peak = [before]

    async def sample() -> None:
        while True:
            peak[0] = max(peak[0], rss_mb(pid))
            await asyncio.sleep(0.1)

    sampler = asyncio.create_task(sample())
    try:
        run = await server.run(caption_prompt(lmstudio.url, folder), timeout=600)
    finally:
        sampler.cancel()
    assert run.outcome == "execution_success", (run.error, server.log()[-2000:])
    right, wrong = captions_are_right(server, folder)
    assert (right, wrong) == (2000, [])
    (shown,) = [m for m in run.of("executed") if m["node"] == "1"]
    report = shown["output"]["lmstudio"][-1]["notice"]
    grown = peak[0] - before
    print(f"\nComfyUI {server.version}: 2,000 images captioned; ComfyUI's memory {before:.0f} MB before, "
          f"peak {peak[0]:.0f} MB (+{grown:.0f} MB); {report[:120]}")
    assert grown < 300, (before, peak[0])
    assert not list((server.input_dir / folder).glob(".*.tmp"))  # no temporary file left behind


async def test_cancel_then_queued_again_goes_on_where_it_stopped(server, lmstudio):
    lmstudio.describe_images = True
    lmstudio.event_delay = 0.05
    folder = folder_of(server, 24)

    async def cancel_after_five(run, message):
        if message["type"] == "lmstudio.stream.update" and len(finished_items(run)) == 5:
            await server.post("/interrupt")

    first = await server.run(caption_prompt(lmstudio.url, folder), on_message=cancel_after_five, timeout=120)
    assert first.outcome == "execution_interrupted", (first.error, server.log()[-2000:])
    done_first, _ = captions_are_right(server, folder)
    assert 5 <= done_first < 24
    lmstudio.predictions.clear()
    lmstudio.event_delay = 0.0
    again = await server.run(caption_prompt(lmstudio.url, folder), timeout=120)
    assert again.outcome == "execution_success", (again.error, server.log()[-2000:])
    assert captions_are_right(server, folder) == (24, [])
    assert len(lmstudio.predictions) == 24 - done_first  # the captions on disk were the record


async def test_killed_mid_folder_it_goes_on_after_a_restart(version, own_comfyui_server, lmstudio):
    server = own_comfyui_server(version)
    lmstudio.describe_images = True
    lmstudio.event_delay = 0.05
    folder = folder_of(server, 24)

    async def kill_after_five(run, message):
        if message["type"] == "lmstudio.stream.update" and len(finished_items(run)) == 5:
            server.kill()

    with pytest.raises((RuntimeError, aiohttp.ClientError)):  # the websocket dies with the process
        await server.run(caption_prompt(lmstudio.url, folder), on_message=kill_after_five, timeout=120)
    right, wrong = captions_are_right(server, folder)
    assert 5 <= right < 24
    # Every caption on disk is whole and right: none is half-written, none is another image's.
    assert all(not (server.input_dir / folder / name).with_suffix(".txt").exists() for name in wrong)
    await asyncio.sleep(0.5)
    while lmstudio.in_flight:
        await asyncio.sleep(0.05)
    lmstudio.event_delay = 0.0
    server.start()
    again = await server.run(caption_prompt(lmstudio.url, folder), timeout=120)
    assert again.outcome == "execution_success", (again.error, server.log()[-2000:])
    assert captions_are_right(server, folder) == (24, [])
