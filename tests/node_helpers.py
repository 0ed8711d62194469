"""Running the node the way ComfyUI's executor does, against the stand-in (or real) ComfyUI modules."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from fake_lmstudio import MODEL
from lmstudio_pack.node import STREAM_EVENT, LMStudioStreamChat

@dataclass
class Recorder:
    """What one node test saw: websocket messages (time, event, data, sid), progress updates, VRAM calls."""

    current: ClassVar["Recorder"]
    messages: list[tuple] = field(default_factory=list)
    progress: list[tuple] = field(default_factory=list)
    vram_calls: list[str] = field(default_factory=list)


NODE_ID = "7"
CLIENT_ID = "browser-tab-1"
DELTA_TYPES = ("text", "reasoning")


def node(prompt_graph: dict | None = None):
    """The per-execution clone ComfyUI makes, with the hidden inputs filled in."""
    graph = prompt_graph or {NODE_ID: {"class_type": "LMStudioStreamChat", "inputs": {"prompt": "Describe"}}}
    return LMStudioStreamChat.PREPARE_CLASS_CLONE({"hidden_inputs": {"UNIQUE_ID": NODE_ID, "PROMPT": graph}})


def inputs(url: str, mode: str = "REST API", **extra) -> dict:
    base = dict(prompt="Describe", model_id=MODEL, connection_mode=mode, server_url=url, temperature=0.7,
                max_tokens=-1, debug_mode=False)
    return base | extra


async def run(url: str, mode: str = "REST API", **extra):
    return await node().execute(**inputs(url, mode, **extra))


def events() -> list[tuple[str, str]]:
    messages = Recorder.current.messages
    for _, event, data, sid in messages:
        assert event == STREAM_EVENT and sid == CLIENT_ID
        assert set(data) == {"node_id", "chunk_type", "content"} and data["node_id"] == NODE_ID
    return [(data["chunk_type"], data["content"]) for _, _, data, _ in messages]


def joined(chunk_type: str) -> str:
    return "".join(content for kind, content in events() if kind == chunk_type)
