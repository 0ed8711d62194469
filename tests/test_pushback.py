"""Servers that push back: a list against a stand-in that refuses (HTTP 429/503, with or without Retry-After) when its
slots are full, as LiteLLM's proxy, SGLang's gateway and Ollama do. Nothing is lost, every slot is used, the wait is
bounded and said on the node, Cancel ends it, and a server that goes away for a moment mid-list is waited for."""

from __future__ import annotations

import asyncio
import math
import time

import comfy.model_management as model_management
import pytest
from aiohttp import web

from chat_node_helpers import events, run, run_list
from fake_lmstudio import MODEL, FakeLMStudio, native_model

HTTP_MODES = pytest.mark.parametrize("mode", ["REST API", "OpenAI-compatible"])
LITELLM_FULL = {"error": {"message": "No deployments available for selected model, Try again in 5 seconds. Passed "
                                     "model=lmstudio. pre-call-checks=False, cooldown_list=[]", "type": "None",
                          "param": "None", "code": "429"}}


def refusing(fake: FakeLMStudio, *, status: int = 429, retry_after: str | None = "0.2", body=None,
             report_slots: bool = True) -> None:
    """`fake` answers every request beyond its 4 slots with `status` instead of queueing it."""
    fake.echo = True
    fake.event_delay = 0.02
    headers = {"Retry-After": retry_after} if retry_after is not None else {}
    fake.refuse_when_full = (status, headers, body if body is not None else LITELLM_FULL)
    if not report_slots:
        fake.models = [native_model(MODEL, loaded=True, parallel=None)]


@HTTP_MODES
async def test_a_server_that_refuses_when_full_loses_no_caption(lmstudio, comfy, mode):
    """The issue's case: 4 slots, HTTP 429 with Retry-After while they are busy, max_parallel = 8. Every item gets
    its own answer; none is empty; the summary counts the items that waited."""
    refusing(lmstudio)
    outputs, ui, _ = await run_list(lmstudio.url, mode, count=24, max_parallel=8)
    assert outputs[0] == [f"Answer to Describe {i}" for i in range(24)]
    assert lmstudio.refused > 0 and lmstudio.peak_in_flight == 4
    assert not [entry for entry in ui["lmstudio"] if "error" in entry]
    summary = outputs[2][-1].split("\n")[1]
    assert summary.startswith("list: 24 of 24 done, ") and "waited for a busy server" in summary, summary
    waiting = [c for k, c in events() if k == "status" and "items waiting, next try in" in c]
    assert waiting and "is busy (HTTP 429 from " in waiting[0] and "No deployments available" in waiting[0]


@HTTP_MODES
async def test_refusals_without_retry_after_and_no_slots_reported_use_every_slot(lmstudio, comfy, mode):
    """SGLang's gateway: 429 and no Retry-After, slots reported nowhere. The limit is found: all 4 slots work,
    the backoff and the shrink keep the refusals few, and the list runs close to its ideal time."""
    refusing(lmstudio, retry_after=None, body="Too Many Requests", report_slots=False)
    await run(lmstudio.url, mode, seed=1)  # warm up
    started = time.monotonic()
    await run(lmstudio.url, mode, seed=2)
    one = time.monotonic() - started
    started = time.monotonic()
    outputs, _, _ = await run_list(lmstudio.url, mode, count=40)
    elapsed = time.monotonic() - started
    ideal = math.ceil(40 / 4) * one
    print(f"\n{mode}: 40 items in {elapsed:.2f} s, ideal {ideal:.2f} s, {lmstudio.refused} refusals")
    assert outputs[0] == [f"Answer to Describe {i}" for i in range(40)]
    assert lmstudio.peak_in_flight == 4
    assert lmstudio.refused < 40
    assert elapsed < 1.5 * ideal


async def test_503_with_an_http_date_is_waited_out_too(lmstudio, comfy):
    from email.utils import formatdate

    refusing(lmstudio, status=503, retry_after=formatdate(time.time() + 1, usegmt=True),
             body={"error": {"message": "Loading model", "type": "unavailable_error", "code": 503}})
    outputs, _, _ = await run_list(lmstudio.url, "OpenAI-compatible", count=6, max_parallel=6)
    assert outputs[0] == [f"Answer to Describe {i}" for i in range(6)]
    assert lmstudio.refused >= 2


async def test_the_wait_is_bounded_and_then_the_item_fails_with_a_reason(lmstudio, comfy):
    """A server that never has room: the item gives up after busy_wait_seconds, saying so, and a list item's
    answer stays empty (a saver must not write the error as a caption)."""
    refusing(lmstudio, retry_after="0.3")
    lmstudio.full = True  # never a free slot
    started = time.monotonic()
    result = await run(lmstudio.url, "REST API", busy_wait_seconds=1)
    outputs, ui = result.args, result.ui
    elapsed = time.monotonic() - started
    assert 0.8 < elapsed < 3.0
    assert outputs[0].startswith("Error: LM Studio is busy (HTTP 429 from ")
    assert "Gave up after waiting 1 s in all for the server (busy_wait_seconds in LM Studio Chat Options)" in outputs[0]
    assert lmstudio.refused == 4  # at once, then after 0.3, 0.6 and 0.9 s of waiting
    assert ui["lmstudio"][0]["error"]


async def test_busy_wait_zero_fails_at_the_first_refusal(lmstudio, comfy):
    refusing(lmstudio)
    lmstudio.full = True
    outputs = (await run(lmstudio.url, "OpenAI-compatible", busy_wait_seconds=0)).args
    assert outputs[0].startswith("Error: LM Studio is busy") and lmstudio.refused == 1


async def test_cancel_ends_the_wait_at_once(lmstudio, comfy):
    refusing(lmstudio, retry_after="30")
    lmstudio.event_delay = 0.1

    async def cancel_soon() -> float:
        await asyncio.sleep(0.6)
        model_management.interrupt_current_processing(True)
        return time.monotonic()

    canceller = asyncio.create_task(cancel_soon())
    with pytest.raises(model_management.InterruptProcessingException):
        await run_list(lmstudio.url, "REST API", count=8, max_parallel=8)
    stopped = time.monotonic() - await canceller
    assert stopped < 1.0 and lmstudio.refused > 0
    assert [c for k, c in events(states=True) if k == "item"].count("cancelled") == 8


async def test_a_server_gone_for_a_moment_mid_list_is_waited_for(fake, comfy, free_port):
    """A refused connection after the server has answered (a router restarting, a server brought back): the items
    wait and the list completes. Before any answer, a refused connection is a wrong server_url and fails at once."""
    fake.echo = True
    fake.event_delay = 0.02
    url = f"http://127.0.0.1:{free_port}"

    async def start() -> web.AppRunner:
        runner = web.AppRunner(fake.app())
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", free_port).start()
        return runner

    outputs = (await run(url, "REST API")).args
    assert outputs[0].startswith("Error: LM Studio connection failed")  # nothing there yet: at once, no waiting
    runner = await start()

    async def restart_mid_list() -> None:
        while len(fake.predictions) < 6:
            await asyncio.sleep(0.01)
        await runner.cleanup()  # every stream in flight drops, new connections are refused
        await asyncio.sleep(0.8)
        await start()

    restarter = asyncio.create_task(restart_mid_list())
    outputs, _, _ = await run_list(url, "REST API", count=16)
    await restarter
    assert outputs[0] == [f"Answer to Describe {i}" for i in range(16)]
