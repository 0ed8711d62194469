"""Everyday use: model list route, VRAM hand-back, vision check, reasoning/seed/TTL mapping, typed outputs."""

from __future__ import annotations

import time

import pytest
import torch
from aiohttp import web
from server import PromptServer

from chat_node_helpers import events, run
from fake_lmstudio import MODEL, native_model, openai_script, stack_fields
from lmstudio_pack import node_parts
from lmstudio_pack.chat import ChatRequest, ConnectionMode, LMStudioError
from lmstudio_pack.client import list_models, stream_chat, unload_model
from lmstudio_pack.node import LMStudioStreamChat

MODES = pytest.mark.parametrize("mode", ["SDK", "REST API", "OpenAI-compatible"])


def chat_body(fake) -> dict:
    return fake.chat_requests()[-1].body


# ------------------------------------------------------------------------------------------ model list route


@pytest.fixture
async def route_client(aiohttp_client):
    app = web.Application()
    app.add_routes(PromptServer.instance.routes)
    return await aiohttp_client(app)


async def test_route_lists_loaded_first_with_vision(lmstudio, route_client):
    lmstudio.models = [native_model("z/text-only", vision=False), native_model("a/vlm", vision=True),
                       native_model("m/loaded", loaded=True, vision=False),
                       native_model("e/embedder", loaded=True, kind="embedding")]
    response = await route_client.get("/lmstudio/models", params={"server_url": lmstudio.url})
    body = await response.json()
    assert response.status == 200 and body["error"] is None
    assert [(m["key"], m["loaded_ids"], m["vision"]) for m in body["models"]] == [
        ("m/loaded", ["m/loaded"], False), ("a/vlm", [], True), ("z/text-only", [], False)]


@pytest.mark.parametrize("form", ["{host}", "{url}/v1", "{url}/api/v1/"])
async def test_route_follows_lan_style_urls(lmstudio, route_client, form):
    typed = form.format(url=lmstudio.url, host=lmstudio.url.removeprefix("http://"))
    body = await (await route_client.get("/lmstudio/models", params={"server_url": typed})).json()
    assert [m["key"] for m in body["models"]] == [MODEL]


async def test_route_unreachable_server_says_so(route_client, free_port):
    started = time.monotonic()
    body = await (await route_client.get("/lmstudio/models",
                                         params={"server_url": f"http://127.0.0.1:{free_port}"})).json()
    assert body["models"] == []
    assert body["error"].startswith(f"LM Studio connection failed. Tried http://127.0.0.1:{free_port}/api/v1/models")
    assert time.monotonic() - started < 6


async def test_model_list_falls_back_to_the_openai_listing(lmstudio):
    lmstudio.native_api = False
    models = await list_models(lmstudio.url)
    assert [(m.key, m.loaded_ids, m.vision) for m in models] == [(MODEL, (), None)]


async def test_unlisted_model_id_still_runs(lmstudio, comfy):
    # model_id is a free string: a saved or typed id the list does not show is sent as is
    await run(lmstudio.url, "REST API", model_id="someone/unlisted-model")
    assert chat_body(lmstudio)["model"] == "someone/unlisted-model"


# ------------------------------------------------------------------------------------------ VRAM hand-back


@pytest.mark.parametrize("mode", ["REST API", "OpenAI-compatible"])
async def test_unload_after_run_is_confirmed(lmstudio, comfy, mode):
    lmstudio.unload_delay = 0.3  # LM Studio takes a moment to free the VRAM
    started = time.monotonic()
    text = (await run(lmstudio.url, mode, after_run="unload")).args[0]
    assert text == "A red square."
    assert time.monotonic() - started >= 0.3  # the node waited for the confirmation
    unloads = [r for r in lmstudio.requests if r.path == "/api/v1/models/unload"]
    assert [r.body for r in unloads] == [{"instance_id": MODEL}]
    assert lmstudio.models[0]["loaded_instances"] == []
    statuses = [content for kind, content in events() if kind == "status"]
    assert statuses[-1] == f"Unloaded {MODEL}"
    assert [kind for kind, _ in events()][-1] == "done"


async def test_sdk_unload_after_run(lmstudio, comfy):
    await run(lmstudio.url, "SDK", after_run="unload")
    assert lmstudio.sdk.sent("rpcCall", "unloadModel") and MODEL not in lmstudio.sdk.loaded
    assert [content for kind, content in events() if kind == "status"][-1] == f"Unloaded {MODEL}"


async def test_unload_not_confirmed_in_time(lmstudio, comfy, monkeypatch):
    monkeypatch.setattr(node_parts, "UNLOAD_CONFIRM_SECONDS", 0.4)
    lmstudio.unload_delay = 5
    started = time.monotonic()
    text = (await run(lmstudio.url, "REST API", after_run="unload")).args[0]
    assert text == "A red square." and time.monotonic() - started < 2
    assert "not confirmed within" in [content for kind, content in events() if kind == "status"][-1]


async def test_unload_unsupported_server_keeps_the_answer(lmstudio, comfy):
    lmstudio.native_api = False
    text = (await run(lmstudio.url, "OpenAI-compatible", after_run="unload")).args[0]
    assert text == "A red square."
    errors = [content for kind, content in events() if kind == "error"]
    assert errors and "unloading needs LM Studio 0.4 or later" in errors[0]


async def test_unload_confirm_timeout_in_the_client(lmstudio):
    lmstudio.unload_delay = 5
    request = ChatRequest(prompt="", server_url=lmstudio.url, mode=ConnectionMode.REST)
    assert await unload_model(request, MODEL, confirm_seconds=0.3, poll_seconds=0.05) is False
    lmstudio.unload_delay = 0
    with pytest.raises(LMStudioError, match="No loaded model instance 'nope'"):
        await unload_model(request, "nope", confirm_seconds=0.3)


async def test_keep_loaded_sends_no_unload(lmstudio, comfy):
    await run(lmstudio.url, "REST API")
    assert not [r for r in lmstudio.requests if r.path == "/api/v1/models/unload"]


async def test_unload_when_idle_sets_a_ttl_where_the_mode_can(lmstudio, comfy):
    await run(lmstudio.url, "OpenAI-compatible", after_run="unload when idle", idle_ttl_minutes=7)
    assert chat_body(lmstudio)["ttl"] == 420
    await run(lmstudio.url, "SDK", after_run="unload when idle", idle_ttl_minutes=7, model_id="google/gemma-3-4b")
    (create,) = lmstudio.sdk.sent("channelCreate", "getOrLoad")
    assert create["creationParameter"]["loadTtlMs"] == 420_000
    await run(lmstudio.url, "REST API", after_run="unload when idle")
    assert "ttl" not in chat_body(lmstudio)  # the native chat API takes no TTL (the tooltip says so)
    await run(lmstudio.url, "OpenAI-compatible")
    assert "ttl" not in chat_body(lmstudio)


async def test_free_comfy_vram_first(lmstudio, comfy):
    await run(lmstudio.url, "REST API", free_comfy_vram=True)
    assert comfy.vram_calls == ["unload_all_models", "soft_empty_cache"]
    comfy.vram_calls.clear()
    await run(lmstudio.url, "REST API")
    assert comfy.vram_calls == []


# ------------------------------------------------------------------------------------------ vision check


@MODES
async def test_image_to_a_text_only_model_is_refused_with_its_name(lmstudio, comfy, mode):
    lmstudio.models = [native_model(MODEL, loaded=True, vision=False)]
    lmstudio.sdk.text_only = {MODEL}
    text = (await run(lmstudio.url, mode, image=torch.rand(1, 16, 16, 3))).args[0]
    assert text.startswith(f"Error: Model '{MODEL}' cannot see images")
    assert lmstudio.chat_requests() == [] and not lmstudio.sdk.sent("channelCreate", "predict")


@MODES
async def test_vision_model_gets_the_image(lmstudio, comfy, mode):
    text = (await run(lmstudio.url, mode, image=torch.rand(1, 16, 16, 3))).args[0]
    assert text == "A red square."


async def test_text_only_model_without_image_is_fine(lmstudio, comfy):
    lmstudio.models = [native_model(MODEL, loaded=True, vision=False)]
    assert (await run(lmstudio.url, "REST API")).args[0] == "A red square."


# ------------------------------------------------------------------------------------------ mapping per mode


async def test_reasoning_seed_and_system_prompt_per_mode(lmstudio, comfy):
    extra = dict(reasoning="off", seed=1234, system_prompt="Be terse.")
    await run(lmstudio.url, "REST API", **extra)
    rest = chat_body(lmstudio)
    assert rest["reasoning"] == "off" and rest["system_prompt"] == "Be terse." and "seed" not in rest
    await run(lmstudio.url, "OpenAI-compatible", **extra)
    openai = chat_body(lmstudio)
    assert openai["seed"] == 1234 and "reasoning" not in openai
    assert openai["messages"][0] == {"role": "system", "content": "Be terse."}
    await run(lmstudio.url, "SDK", **extra)
    (create,) = lmstudio.sdk.sent("channelCreate", "predict")
    fields = set(stack_fields(create["creationParameter"]["predictionConfigStack"]))
    assert fields == {"llm.prediction.temperature"}  # no seed, no reasoning: the SDK would drop them silently
    assert create["creationParameter"]["history"]["messages"][0]["role"] == "system"


async def test_reasoning_auto_sends_nothing(lmstudio, comfy):
    await run(lmstudio.url, "REST API")
    assert "reasoning" not in chat_body(lmstudio)


def test_seed_changes_re_run_the_node_and_fixed_inputs_use_the_cache():
    # ComfyUI's cache keys on the inputs (seed included) and on fingerprint_inputs, which says only what the preset's
    # texts are: the same for every seed and every other input, so fixed inputs still reuse the cached answer.
    fingerprint = LMStudioStreamChat.fingerprint_inputs
    assert fingerprint(seed=1, prompt="a") == fingerprint(seed=2, prompt="b") == fingerprint(preset="none")
    assert fingerprint(preset="Short caption", seed=1) == fingerprint(preset="Short caption", seed=2)
    assert LMStudioStreamChat.GET_SCHEMA().not_idempotent is False


# ------------------------------------------------------------------------------------------ typed outputs


async def test_typed_statistics_outputs(lmstudio, comfy):
    _, _, summary, tps, ttft, inputs, outputs, reasoning, _ = (await run(lmstudio.url, "REST API")).args
    assert (tps, ttft, inputs, outputs, reasoning) == (51.04, 0.812, 17, 50, 12)
    assert isinstance(tps, float) and isinstance(inputs, int)
    assert summary.startswith("tokens/s: 51.0 | TTFT: 0.81 s")


async def test_unknown_figures_are_zero_and_na(lmstudio, comfy):
    lmstudio.openai_chunks = openai_script(["Hi"], usage=False)
    _, _, summary, tps, ttft, inputs, outputs, reasoning, _ = (await run(lmstudio.url, "OpenAI-compatible")).args
    assert (tps, inputs, outputs, reasoning) == (0.0, 0, 0, 0) and ttft > 0
    assert "tokens/s: n/a" in summary and "input tokens: n/a" in summary and "output tokens: n/a" in summary


async def test_errors_give_zero_figures(comfy, free_port):
    assert (await run(f"http://127.0.0.1:{free_port}")).args[3:8] == (0.0, 0.0, 0, 0, 0)


async def test_stream_chat_stays_usable_without_comfyui_concepts(lmstudio):
    # the client knows nothing of nodes: the same request streams from a plain coroutine
    events_ = [e async for e in stream_chat(ChatRequest(prompt="x", server_url=lmstudio.url, model=MODEL))]
    assert events_


# ------------------------------------------------------------------------------------------ SDK worker process


async def test_a_crashed_sdk_worker_costs_one_more_try_not_the_answer(lmstudio):
    """The SDK worker dies mid-answer (killed, out of memory): the node tries once more, in a new worker."""
    import asyncio
    import os
    import signal

    from fake_lmstudio import sdk_fragment
    from lmstudio_pack.sdk_process import WORKER

    lmstudio.sdk.fragments = [sdk_fragment(f"t{i} ") for i in range(100)]
    lmstudio.sdk.fragment_delay = 0.01
    answer = asyncio.create_task(run(lmstudio.url, "SDK"))
    while not lmstudio.sdk.sent("channelCreate", "predict"):
        await asyncio.sleep(0.01)
    first = WORKER.pid
    assert first is not None
    os.kill(first, signal.SIGKILL)
    output = await asyncio.wait_for(answer, 20)
    assert output.args[0] == "".join(f"t{i} " for i in range(100))
    assert len(lmstudio.sdk.sent("channelCreate", "predict")) == 2
    assert WORKER.pid not in (None, first)
