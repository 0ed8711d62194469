"""Many images: the node mapped over a list the way ComfyUI does (every item started at once), against a
stand-in LM Studio with `parallel` slots. Bound, speed, pairing, Cancel, retry, long lists, error policy."""

from __future__ import annotations

import asyncio
import functools
import math
import re
import time

import comfy.model_management as model_management
import pytest
import torch

from chat_node_helpers import NODE_ID, Recorder, events, run, run_list
from fake_lmstudio import MODEL, native_model
from lmstudio_pack import node as node_module
from lmstudio_pack.chat import ChatRequest

MODES = pytest.mark.parametrize("mode", ["REST API", "OpenAI-compatible", "SDK"])
SLOW = 0.03  # seconds between frames: an item takes a measurable time


def slow(fake, seconds: float = SLOW) -> None:
    fake.event_delay = seconds
    fake.sdk.fragment_delay = seconds


def item_messages(index: int) -> list[dict]:
    return [d for _, _, d, _ in Recorder.current.messages if d["index"] == index]


@MODES
async def test_never_more_than_the_servers_parallel_slots_and_each_answer_keeps_its_item(lmstudio, comfy, mode):
    lmstudio.echo = True
    slow(lmstudio)
    # Early items finish last: pairing must not follow completion order.
    lmstudio.delay_for = {f"Describe {i}": 0.2 - 0.05 * i for i in range(4)}
    outputs, ui, _ = await run_list(lmstudio.url, mode, count=12)
    assert lmstudio.peak_in_flight == 4  # LM Studio's `parallel`, as its model list reports it
    assert outputs[0] == [f"Answer to Describe {i}" for i in range(12)]
    assert [entry["index"] for entry in ui["lmstudio"]] == list(range(12))
    assert [entry["text"] for entry in ui["lmstudio"]] == outputs[0]
    for index in range(12):  # the live view never mixes two items: each item's deltas are its own answer
        assert "".join(d["content"] for d in item_messages(index) if d["chunk_type"] == "text") == outputs[0][index]
        assert item_messages(index)[-1]["count"] == 12


@MODES
async def test_slots_are_really_used(lmstudio, comfy, mode):
    """12 items take about ceil(12/4) x one item, not 12 x: a wide factor, no tight timing."""
    slow(lmstudio, 0.05)
    started = time.monotonic()
    await run(lmstudio.url, mode)
    one = time.monotonic() - started
    started = time.monotonic()
    await run_list(lmstudio.url, mode, count=12)
    elapsed = time.monotonic() - started
    ideal = math.ceil(12 / 4) * one
    print(f"\n{mode}: 12 items in {elapsed:.2f} s, ideal {ideal:.2f} s, serial {12 * one:.2f} s")
    assert elapsed < 2.0 * ideal < 12 * one


async def test_max_parallel_overrides_the_servers_slots(lmstudio, comfy):
    slow(lmstudio)
    await run_list(lmstudio.url, "REST API", count=6, max_parallel=1)
    assert lmstudio.peak_in_flight == 1
    queued = "Queued: 1 at a time (max_parallel in LM Studio Chat Options)"
    assert any(c == queued for k, c in events() if k == "status")


async def test_a_server_that_does_not_report_its_slots_has_them_found(lmstudio, comfy):
    """Where the server does not say (vLLM, a router), the node starts at 2 and sends more while first tokens come
    back as fast: all 4 of the server's slots work, few requests wait inside it, and the list takes about the
    ideal time."""
    slow(lmstudio)
    await run(lmstudio.url, "REST API", seed=1)  # warm up
    started = time.monotonic()
    await run(lmstudio.url, "REST API", seed=2)
    one = time.monotonic() - started
    lmstudio.models = [native_model(MODEL, loaded=True, parallel=None)]  # the server does not say
    started = time.monotonic()
    await run_list(lmstudio.url, "REST API", count=48)
    elapsed = time.monotonic() - started
    ideal = math.ceil(48 / 4) * one
    print(f"\n48 items in {elapsed:.2f} s, ideal {ideal:.2f} s; waited inside the server at most "
          f"{lmstudio.peak_queued_inside}")
    assert lmstudio.peak_in_flight == 4
    # Slow start overshoots by one round at most (the first tokens that show a queue come a round late); then the
    # limit backs off and stays near the slots.
    assert lmstudio.peak_queued_inside <= 8
    assert elapsed < 1.3 * ideal
    found = re.compile(r"Queued: \d+ at a time \(found by trying: the server does not report its slots\)")
    assert any(found.fullmatch(c) for k, c in events() if k == "status")


async def test_queued_items_do_not_time_out_200_items(lmstudio, comfy, monkeypatch):
    """The idle timeout counts only while a request is in flight: queued items wait in the node, not in LM Studio."""
    monkeypatch.setattr(node_module, "ChatRequest", functools.partial(ChatRequest, idle_timeout=0.5))
    slow(lmstudio, 0.01)
    outputs, ui, _ = await run_list(lmstudio.url, "REST API", count=200)
    assert len(outputs[0]) == 200 and not [t for t in outputs[0] if t.startswith("Error")]
    assert lmstudio.peak_in_flight == 4
    assert ui["lmstudio"][-1]["index"] == 199


@MODES
async def test_cancel_mid_list_stops_every_item_within_a_second(lmstudio, comfy, mode):
    slow(lmstudio, 0.2)
    lmstudio.sdk.fragments = lmstudio.sdk.fragments * 10

    def sent() -> int:
        return len(lmstudio.chat_requests()) if mode != "SDK" else len(lmstudio.sdk.sent("channelCreate"))

    async def cancel_soon() -> tuple[float, int]:
        await asyncio.sleep(0.5)
        model_management.interrupt_current_processing(True)
        return time.monotonic(), sent()

    canceller = asyncio.create_task(cancel_soon())
    with pytest.raises(model_management.InterruptProcessingException):
        await run_list(lmstudio.url, mode, count=12)
    cancelled_at, sent_at_cancel = await canceller
    stopped = time.monotonic() - cancelled_at
    print(f"\n{mode}: every item ended {stopped * 1000:.0f} ms after Cancel")
    assert stopped < 1.0
    await asyncio.sleep(0.3)
    assert lmstudio.in_flight == 0  # LM Studio was told to stop every in-flight generation
    # No queued item started afterwards, not even one that got the slot a cancelled item gave back.
    assert sent() == sent_at_cancel
    states = [c for k, c in events(states=True) if k == "item"]
    assert states.count("cancelled") == 12


async def test_the_first_item_to_see_cancel_stops_them_all(lmstudio, comfy):
    """ComfyUI's flag is reset by the first `throw_exception_if_processing_interrupted()`: only one item can see
    it, and every item must end all the same."""
    slow(lmstudio, 0.2)

    async def cancel_soon() -> None:
        await asyncio.sleep(0.4)
        model_management.interrupt_current_processing(True)

    started = time.monotonic()
    canceller = asyncio.create_task(cancel_soon())
    with pytest.raises(model_management.InterruptProcessingException):
        await run_list(lmstudio.url, "REST API", count=8)
    await canceller
    assert time.monotonic() - started < 1.5
    assert not model_management.processing_interrupted()  # consumed, as ComfyUI expects
    assert [c for k, c in events(states=True) if k == "item"].count("cancelled") == 8


async def test_a_transient_failure_is_retried_once(lmstudio, comfy):
    lmstudio.echo = True
    lmstudio.fail_prompts = {"Describe 1": 1, "Describe 2": 2}
    outputs, _, _ = await run_list(lmstudio.url, "REST API", count=4)
    assert outputs[0][0] == "Answer to Describe 0" and outputs[0][1] == "Answer to Describe 1"  # retried, then fine
    assert outputs[0][2] == ""  # failed twice: no caption, never the error text (a dataset would save it)
    assert any(k == "error" and c.startswith("LM Studio answered HTTP 500") for k, c in events(2))
    assert outputs[0][3] == "Answer to Describe 3"  # the others go on
    prompts = [r.body["input"] for r in lmstudio.chat_requests()]
    assert prompts.count("Describe 1") == 2 and prompts.count("Describe 2") == 2 and prompts.count("Describe 0") == 1
    assert any(k == "status" and c.startswith("Retrying once after") for k, c in events(1))
    states = {d["index"]: d["content"] for _, _, d, _ in Recorder.current.messages if d["chunk_type"] == "item"}
    assert states == {0: "done", 1: "done", 2: "failed", 3: "done"}


@pytest.mark.parametrize("mode", ["OpenAI-compatible", "SDK"])
async def test_retry_in_the_other_modes(lmstudio, comfy, mode):
    lmstudio.echo = True
    lmstudio.fail_prompts = {"Describe 1": 1}
    outputs, _, _ = await run_list(lmstudio.url, mode, count=3)
    assert outputs[0] == [f"Answer to Describe {i}" for i in range(3)]


async def test_raise_policy_stops_the_whole_list(lmstudio, comfy):
    slow(lmstudio, 0.1)
    lmstudio.fail_prompts = {"Describe 0": 5}
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="HTTP 500"):
        await run_list(lmstudio.url, "REST API", count=8, on_error="raise")
    assert time.monotonic() - started < 1.5
    assert lmstudio.in_flight == 0
    states = [c for k, c in events(states=True) if k == "item"]
    assert states.count("failed") == 1 and "done" not in states[:2]


async def test_progress_bar_advances_per_finished_item(lmstudio, comfy):
    await run_list(lmstudio.url, "REST API", count=4, max_parallel=1)
    values = [value for value, total, node in comfy.progress if node == NODE_ID]
    assert values[-1] == 100
    for done in (25, 50, 75):
        assert done in values


async def test_a_batch_with_send_all_images_off_says_only_the_first_was_sent(lmstudio, comfy):
    batch = torch.rand(3, 16, 16, 3)
    await run(lmstudio.url, image=batch)
    notices = [c for k, c in events() if k == "notice"]
    assert notices and "Only the first of 3 images was sent" in notices[0] and "Rebatch Images" in notices[0]
    assert len(lmstudio.chat_requests()[-1].body["input"]) == 2  # the text and one image


async def test_a_list_of_images_gets_one_answer_per_image(lmstudio, comfy):
    """Rebatch Images (batch_size 1) in front: a list of 1-image batches, one answer each, in order."""
    images = [torch.full((1, 8, 8, 3), i / 4) for i in range(4)]
    outputs, _, _ = await run_list(lmstudio.url, "REST API", count=4, per_item={"image": images})
    assert len(outputs[0]) == 4
    sent = [r.body["input"][1]["data_url"] for r in lmstudio.chat_requests()]
    assert len(set(sent)) == 4  # four different images went out
    notices = [c for k, c in events() if k == "notice"]
    assert len(notices) == 1 and notices[0].startswith("list: 4 of 4 done | ")  # only the list's summary, no warning


async def test_comfys_vram_is_freed_once_per_list(lmstudio, comfy):
    await run_list(lmstudio.url, "REST API", count=5, free_comfy_vram=True)
    assert comfy.vram_calls == ["unload_all_models", "soft_empty_cache"]


async def test_unload_happens_once_after_the_last_answer(lmstudio, comfy):
    slow(lmstudio, 0.02)
    outputs, _, _ = await run_list(lmstudio.url, "REST API", count=5, after_run="unload")
    assert not [t for t in outputs[0] if t.startswith("Error")]
    paths = [r.path for r in lmstudio.requests if r.method == "POST"]
    assert paths.count("/api/v1/models/unload") == 1 and paths[-1] == "/api/v1/models/unload"
