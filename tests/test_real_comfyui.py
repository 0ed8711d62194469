"""Checks that need a real ComfyUI checkout: set COMFYUI_PATH (the whole suite then runs on the real modules)."""

from __future__ import annotations

import os

import pytest

pytestmark = pytest.mark.skipif(not os.environ.get("COMFYUI_PATH"), reason="needs a ComfyUI checkout (COMFYUI_PATH)")


def test_schema_serialises_through_the_real_v3_api():
    """The real `io` classes build and serialise every input: an argument ComfyUI lacks fails here."""
    from lmstudio_pack.node import LMStudioStreamChat

    info = LMStudioStreamChat.GET_NODE_INFO_V1()
    assert info["output_name"][:3] == ["response_text", "reasoning_text", "statistics"]
    assert list(info["input"]["required"])[:3] == ["prompt", "model_id", "connection_mode"]
    assert "image" in info["input"]["optional"] and "unique_id" in info["input"]["hidden"]
    assert info["output_node"] is True


def test_real_comfy_api_is_in_use():
    import comfy_api.latest

    assert "comfy_stub" not in (comfy_api.latest.__file__ or "")


async def test_the_real_executor_maps_the_node_over_a_list(lmstudio, comfy):
    """ComfyUI's own `execution._async_map_node_over_list` over a list of 6 (every test_lists.py test uses it too)."""
    import execution

    from chat_node_helpers import run_list

    assert "comfy_stub" not in (execution.__file__ or "")
    lmstudio.echo = True
    lmstudio.event_delay = 0.02
    outputs, ui, _ = await run_list(lmstudio.url, "REST API", count=6)
    assert outputs[0] == [f"Answer to Describe {i}" for i in range(6)]
    assert [entry["index"] for entry in ui["lmstudio"]] == list(range(6))
    assert lmstudio.peak_in_flight == 4
