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


def test_search_aliases_where_this_comfyui_has_them():
    """0.33.0's schema has `search_aliases` (core's Generate Text is found as "LLM"); 0.8.0's has not, and must
    still load the pack."""
    from comfy_api.latest import io

    from lmstudio_pack.json_field_node import LMStudioJSONField
    from lmstudio_pack.node import LMStudioStreamChat
    from lmstudio_pack.options_node import LMStudioChatOptions

    newer = "search_aliases" in io.Schema.__dataclass_fields__
    for node in (LMStudioStreamChat, LMStudioChatOptions, LMStudioJSONField):
        info = node.GET_NODE_INFO_V1()
        assert bool(info.get("search_aliases")) is newer, node
    if newer:
        assert {"LLM", "VLM", "caption", "vision"} <= set(LMStudioStreamChat.GET_NODE_INFO_V1()["search_aliases"])
