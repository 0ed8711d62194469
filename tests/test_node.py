"""The node through the stand-in of comfy_api: events, outputs, coalescing, interrupt, errors, lazy image."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import asdict

import comfy.model_management as model_management
import pytest
import torch

import lmstudio_pack
from chat_node_helpers import DELTA_TYPES, NODE_ID, events, joined, node, run
from fake_lmstudio import MODEL, openai_script, rest_script
from lmstudio_pack.caption_folder_node import LMStudioCaptionFolder
from lmstudio_pack.json_field_node import LMStudioJSONField
from lmstudio_pack.node import CONVERSATION_TYPE, LMStudioStreamChat
from lmstudio_pack.options_node import OPTIONS_TYPE, ChatOptions, LMStudioChatOptions

# ------------------------------------------------------------------------------------------ registration


async def test_extension_lists_the_node_and_exports_no_v1_mappings():
    extension = await lmstudio_pack.comfy_entrypoint()
    assert await extension.get_node_list() == [LMStudioStreamChat, LMStudioCaptionFolder, LMStudioChatOptions,
                                               LMStudioJSONField]
    assert lmstudio_pack.WEB_DIRECTORY == "./web"
    assert not hasattr(lmstudio_pack, "NODE_CLASS_MAPPINGS")


def test_schema_contract():
    schema = LMStudioStreamChat.GET_SCHEMA()
    assert (schema.node_id, schema.display_name, schema.category) == ("LMStudioStreamChat", "LM Studio Chat",
                                                                      "LM Studio")
    required = [i.id for i in schema.inputs if not i.optional]
    assert required == ["prompt", "model_id", "connection_mode", "server_url", "temperature", "max_tokens",
                        "debug_mode"]
    by_id = {i.id: i for i in schema.inputs}
    assert by_id["image"].optional and by_id["image"].lazy and by_id["image"].io_type == "IMAGE"
    assert by_id["connection_mode"].options == ["SDK", "REST API", "OpenAI-compatible"]
    assert by_id["connection_mode"].default == "SDK"
    assert by_id["server_url"].default == "http://127.0.0.1:1234"
    assert (by_id["temperature"].min, by_id["temperature"].max, by_id["temperature"].default) == (0.0, 2.0, 0.7)
    assert (by_id["max_tokens"].default, by_id["max_tokens"].min) == (-1, -1)
    assert by_id["prompt"].multiline
    for extra in schema.inputs[len(required):]:
        assert extra.optional and (extra.io_type in ("IMAGE", "VIDEO", OPTIONS_TYPE, "COMFY_AUTOGROW_V3",
                                                     CONVERSATION_TYPE) or extra.default is not None), extra.id
    for item in schema.inputs:
        assert item.tooltip, item.id
    assert [(o.id, o.io_type) for o in schema.outputs] == [
        ("response_text", "STRING"), ("reasoning_text", "STRING"), ("statistics", "STRING"),
        ("tokens_per_second", "FLOAT"), ("time_to_first_token", "FLOAT"), ("input_tokens", "INT"),
        ("output_tokens", "INT"), ("reasoning_tokens", "INT"), ("conversation", CONVERSATION_TYPE)]
    # New inputs come last, so saved workflows keep every earlier socket where it was.
    assert [i.id for i in schema.inputs[len(required):]] == ["image", "system_prompt", "seed", "more_images",
                                                             "options", "conversation", "preset",
                                                             "video"]
    # Seven more image sockets, lazy like `image`: eight images in one message at most.
    more = by_id["more_images"].template
    assert more.names == [f"image_{n}" for n in range(2, 9)] and more.min == 0
    assert more.input.lazy and not more.input.optional  # 0.8.0 reads a required template only
    assert by_id["seed"].control_after_generate is True
    assert by_id["options"].io_type == OPTIONS_TYPE
    hidden = {h.value for h in schema.hidden}
    assert {"UNIQUE_ID", "PROMPT"} <= hidden


def test_options_node_defaults_are_the_unconnected_defaults():
    """The settings one socket away: the options node's widget defaults are what an unconnected socket means."""
    schema = LMStudioChatOptions.GET_SCHEMA()
    assert [(o.id, o.io_type) for o in schema.outputs] == [("options", OPTIONS_TYPE)]
    defaults = {i.id: i.default for i in schema.inputs}
    assert defaults == asdict(ChatOptions())
    assert all(i.tooltip for i in schema.inputs)
    assert LMStudioChatOptions.execute(**defaults).args == (ChatOptions(),)


# ------------------------------------------------------------------------------------------ streaming


@pytest.mark.parametrize("mode", ["REST API", "OpenAI-compatible"])
async def test_event_order_and_outputs_equal_the_deltas(lmstudio, comfy, mode):
    lmstudio.rest_events = rest_script(["Let", " me", " see."], ["A ", "red ", "square."], load=True)
    lmstudio.openai_chunks = openai_script(["A ", "red ", "square."], reasoning=["Let", " me", " see."])
    lmstudio.event_delay = 0.02
    output = await run(lmstudio.url, mode)
    text, reasoning, stats = output.args[:3]
    assert (text, reasoning) == ("A red square.", "Let me see.")
    assert joined("text") == text and joined("reasoning") == reasoning
    kinds = [kind for kind, _ in events()]
    assert kinds[0] == "clear" and kinds[-2:] == ["stats", "done"]
    assert kinds.index("reasoning") < kinds.index("text")
    assert max(i for i, k in enumerate(kinds) if k == "reasoning") < min(i for i, k in enumerate(kinds) if k == "text")
    assert events()[-2] == ("stats", stats)
    assert f"mode: {mode}" in stats and f"model: {MODEL}" in stats
    assert output.ui == {"lmstudio": [{"index": 0, "text": text, "reasoning": reasoning, "stats": stats,
                                      "returned": 1}]}


async def test_rest_statistics_string(lmstudio, comfy):
    _, _, stats = (await run(lmstudio.url)).args[:3]
    assert stats == ("tokens/s: 51.0 | TTFT: 0.81 s | input tokens: 17 | output tokens: 50 (reasoning 12) | "
                     f"mode: REST API | model: {MODEL}")


async def test_progress_drives_the_bar_and_status(lmstudio, comfy):
    lmstudio.rest_events = rest_script(load=True)
    lmstudio.event_delay = 0.05  # slower than a tick, so each step is its own flush
    await run(lmstudio.url)
    values = [value for value, total, node_id in comfy.progress]
    # Each stage (the model's load, then the prompt) runs the bar from 0 to 100. ComfyUI 0.33 throttles the bar's
    # updates itself (0.8.0 passes each on): what both show is intermediate steps, and the end.
    assert values[-1] == 100 and any(0 < v < 100 for v in values), values
    assert all(total == 100 and node_id == NODE_ID for _, total, node_id in comfy.progress)
    statuses = [content for kind, content in events() if kind == "status"]
    assert "Loading model 50%" in statuses and "Processing prompt 50%" in statuses


async def test_coalescing_bounds_the_message_rate(lmstudio, comfy):
    tokens = [f"t{i} " for i in range(1500)]
    lmstudio.rest_events = rest_script(tokens[:500], tokens[500:])
    lmstudio.event_delay = 0.0005  # ~1,500 tokens a second, far above what the page should get
    started = time.monotonic()
    text, reasoning, _ = (await run(lmstudio.url)).args[:3]
    elapsed = time.monotonic() - started
    deltas = [kind for kind, _ in events() if kind in DELTA_TYPES]
    assert text == "".join(tokens[500:]) and reasoning == "".join(tokens[:500])
    assert joined("text") == text and joined("reasoning") == reasoning
    assert elapsed > 0.5
    assert len(deltas) <= 30 * elapsed + 3, (len(deltas), elapsed)
    # and every one-second window holds about 30 at most
    times = [t for t, _, data, _ in comfy.messages if data["chunk_type"] in DELTA_TYPES]
    assert max(sum(1 for u in times if t <= u < t + 1) for t in times) <= 33


async def test_image_is_sent_and_lazy_input_resolution(lmstudio, comfy):
    image = torch.rand(2, 64, 96, 3)
    await run(lmstudio.url, image=image)
    items = lmstudio.chat_requests()[0].body["input"]
    assert [item["type"] for item in items] == ["text", "image"]
    assert items[1]["data_url"].startswith("data:image/jpeg;base64,/9j/")
    await run(lmstudio.url, image=image, send_all_images=True)
    assert [item["type"] for item in lmstudio.chat_requests()[1].body["input"]] == ["text", "image", "image"]


def test_check_lazy_status_linked_and_unlinked():
    linked = {NODE_ID: {"class_type": "LMStudioStreamChat", "inputs": {"prompt": "x", "image": ["3", 0]}}}
    assert node(linked).check_lazy_status(image=None, prompt="x") == ["image"]
    assert node(linked).check_lazy_status(image=torch.zeros(1, 8, 8, 3), prompt="x") == []
    # unlinked: the optional input is absent; asking for it would make ComfyUI fail the prompt
    assert node().check_lazy_status(prompt="x") == []


async def test_unlinked_image_runs_text_only(lmstudio, comfy):
    await run(lmstudio.url)
    assert lmstudio.chat_requests()[0].body["input"] == "Describe"


# ------------------------------------------------------------------------------------------ interrupt


@pytest.mark.parametrize("mode", ["REST API", "OpenAI-compatible"])
async def test_cancel_stops_within_a_second_and_closes_the_stream(lmstudio, comfy, mode):
    lmstudio.event_delay = 0.05
    lmstudio.rest_events = rest_script([], ["tok "] * 400)
    lmstudio.openai_chunks = openai_script(["tok "] * 400)

    async def press_cancel():
        while "text" not in [kind for kind, _ in events()]:
            await asyncio.sleep(0.01)
        model_management.interrupt_current_processing(True)  # what POST /interrupt does
        return time.monotonic()

    canceller = asyncio.create_task(press_cancel())
    with pytest.raises(model_management.InterruptProcessingException):
        await run(lmstudio.url, mode)
    stopped = time.monotonic() - await canceller
    assert stopped < 1.0
    print(f"\n{mode}: Cancel to InterruptProcessingException in {stopped * 1000:.0f} ms")
    await asyncio.wait_for(lmstudio.disconnected.wait(), 1)
    assert events()[-2:] == [("status", "Cancelled"), ("done", "")]
    assert not model_management.processing_interrupted()  # the executor's flag is consumed by the raise


async def test_cancel_while_waiting_for_the_first_token(lmstudio, comfy):
    lmstudio.first_delay = 30
    asyncio.get_running_loop().call_later(0.2, model_management.interrupt_current_processing, True)
    started = time.monotonic()
    with pytest.raises(model_management.InterruptProcessingException):
        await run(lmstudio.url)
    assert time.monotonic() - started < 1.2


# ------------------------------------------------------------------------------------------ errors


async def test_connection_failure_default_policy_goes_on(comfy, free_port):
    url = f"http://127.0.0.1:{free_port}"
    text, reasoning, stats = (await run(url)).args[:3]
    assert text.startswith(f"Error: LM Studio connection failed. Tried {url}/api/v1/chat")
    assert "Start Server" in text and reasoning == "" and stats == "error | mode: REST API"
    kinds = [kind for kind, _ in events()]
    assert kinds == ["clear", "error", "done"]
    assert events()[1][1] == text.removeprefix("Error: ")


async def test_raise_policy_stops_the_workflow(comfy, free_port):
    with pytest.raises(RuntimeError, match="LM Studio connection failed"):
        await run(f"http://127.0.0.1:{free_port}", on_error="raise")
    assert [kind for kind, _ in events()] == ["clear", "error", "done"]


async def test_server_error_keeps_partial_reasoning(lmstudio, comfy):
    script = rest_script(["thinking"], ["par"])
    script.insert(-1, ("error", {"type": "error", "error": {"type": "internal_error", "message": "boom"}}))
    lmstudio.rest_events = script
    text, reasoning, _ = (await run(lmstudio.url)).args[:3]
    assert text == "Error: LM Studio reported an error: boom" and reasoning == "thinking"


async def test_bad_image_is_a_clear_error(lmstudio, comfy):
    text, _, _ = (await run(lmstudio.url, image=torch.zeros(8, 8, 3))).args[:3]
    assert text.startswith("Error: Expected a ComfyUI IMAGE tensor")
    assert lmstudio.chat_requests() == []


async def test_debug_mode_logs_a_summary_without_image_or_secret(lmstudio, comfy, caplog, monkeypatch):
    monkeypatch.setenv("LMSTUDIO_API_TOKEN", "sk-lm-secret12:abcdefghijklmnopqrst")
    caplog.set_level(logging.INFO, logger="lmstudio_stream")
    await run(lmstudio.url, debug_mode=True, image=torch.rand(1, 32, 32, 3))
    logged = caplog.text
    assert "LM Studio request from node 7" in logged and "bytes of image" in logged
    assert "secret12" not in logged and "base64" not in logged and "/9j/" not in logged
    assert lmstudio.chat_requests()[0].headers["Authorization"] == "Bearer sk-lm-secret12:abcdefghijklmnopqrst"


async def test_debug_mode_logs_the_traceback(comfy, free_port, caplog):
    caplog.set_level(logging.INFO, logger="lmstudio_stream")
    await run(f"http://127.0.0.1:{free_port}", debug_mode=True)
    assert "Traceback" in caplog.text


# ------------------------------------------------------------------------------------------ SDK mode


async def test_same_workflow_same_outputs_in_all_three_modes(lmstudio, comfy):
    from fake_lmstudio import sdk_script

    reasoning, answer = ["Two", " shapes."], ["A red ", "square ", "and a circle."]
    lmstudio.rest_events = rest_script(reasoning, answer)
    lmstudio.openai_chunks = openai_script(answer, reasoning=reasoning)
    lmstudio.sdk.fragments = sdk_script(reasoning, answer)
    outputs = {}
    for mode in ("SDK", "REST API", "OpenAI-compatible"):
        comfy.messages.clear()
        text, thought, stats = (await run(lmstudio.url, mode, image=torch.rand(1, 32, 32, 3))).args[:3]
        assert joined("text") == text and joined("reasoning") == thought
        assert stats.endswith(f"mode: {mode} | model: {MODEL}")
        outputs[mode] = (text, thought)
    assert len(set(outputs.values())) == 1, outputs
    assert lmstudio.sdk.sent("rpcCall", "uploadFileBase64")  # the image went through the SDK too


async def test_sdk_cancel_stops_lm_studio_within_a_second(lmstudio, comfy):
    from fake_lmstudio import sdk_fragment

    lmstudio.sdk.fragments = [sdk_fragment(f"tok{i} ") for i in range(400)]
    lmstudio.sdk.fragment_delay = 0.05

    async def press_cancel():
        while "text" not in [kind for kind, _ in events()]:
            await asyncio.sleep(0.01)
        model_management.interrupt_current_processing(True)
        return time.monotonic()

    canceller = asyncio.create_task(press_cancel())
    with pytest.raises(model_management.InterruptProcessingException):
        await run(lmstudio.url, "SDK")
    stopped = time.monotonic() - await canceller
    assert stopped < 1.0
    print(f"\nSDK: Cancel to InterruptProcessingException in {stopped * 1000:.0f} ms")
    assert lmstudio.sdk.cancelled.is_set()  # LM Studio was told to stop, not just disconnected from
    assert events()[-2:] == [("status", "Cancelled"), ("done", "")]


async def test_sdk_connection_failure_text(comfy, free_port):
    text, _, stats = (await run(f"http://127.0.0.1:{free_port}", "SDK")).args[:3]
    assert text.startswith(f"Error: LM Studio connection failed. Tried http://127.0.0.1:{free_port}")
    assert stats == "error | mode: SDK"
