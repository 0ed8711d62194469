"""Running the node the way ComfyUI's executor does, against the stand-in (or real) ComfyUI modules."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import ClassVar

from fake_lmstudio import MODEL
from lmstudio_pack.list_item import STREAM_EVENT
from lmstudio_pack.node import LMStudioStreamChat
from lmstudio_pack.options_node import ChatOptions


@dataclass
class Recorder:
    """What one node test saw: websocket messages (time, event, data, sid), progress updates, VRAM calls."""

    current: ClassVar[Recorder]
    messages: list[tuple] = field(default_factory=list)
    progress: list[tuple] = field(default_factory=list)
    vram_calls: list[str] = field(default_factory=list)


NODE_ID = "7"
CLIENT_ID = "browser-tab-1"
DELTA_TYPES = ("text", "reasoning")
PAYLOAD_KEYS = {"node_id", "chunk_type", "content"}  # the contract; `index` and `count` come on top
OPTION_NAMES = {f.name for f in fields(ChatOptions)}


def hidden(prompt_graph: dict | None = None) -> dict:
    graph = prompt_graph or {NODE_ID: {"class_type": "LMStudioStreamChat", "inputs": {"prompt": "Describe"}}}
    return {"hidden_inputs": {"UNIQUE_ID": NODE_ID, "PROMPT": graph}}


def node(prompt_graph: dict | None = None):
    """The per-execution clone ComfyUI makes, with the hidden inputs filled in."""
    return LMStudioStreamChat.PREPARE_CLASS_CLONE(hidden(prompt_graph))


def inputs(url: str, mode: str = "REST API", **extra) -> dict:
    """The node's inputs; settings of the options node travel on its socket, as in a workflow."""
    base = dict(prompt="Describe", model_id=MODEL, connection_mode=mode, server_url=url, temperature=0.7,
                max_tokens=-1, debug_mode=False)
    options = {k: extra.pop(k) for k in list(extra) if k in OPTION_NAMES}
    if options:
        extra["options"] = ChatOptions(**options)
    return base | extra


async def run(url: str, mode: str = "REST API", **extra):
    return await node().execute(**inputs(url, mode, **extra))


async def run_list(url: str, mode: str = "REST API", *, count: int, per_item: dict | None = None, **extra):
    """Run the node over a list the way ComfyUI does (every item started at once); the merged outputs and ui.

    `per_item` maps an input name to its list (e.g. a list of prompts or images); other inputs are single values.
    """
    import execution  # ComfyUI's own, or the stand-in

    single = inputs(url, mode, **extra)
    data = {name: [value] for name, value in single.items()}
    data |= {name: list(values) for name, values in (per_item or {}).items()}
    data.setdefault("prompt", [f"Describe {i}" for i in range(count)])
    if all(len(v) == 1 for v in data.values()):
        data["prompt"] = [f"Describe {i}" for i in range(count)]
    results = await execution._async_map_node_over_list("prompt-1", NODE_ID, LMStudioStreamChat, data,
                                                        "EXECUTE_NORMALIZED_ASYNC", allow_interrupt=True,
                                                        v3_data=hidden())
    import asyncio

    tasks = [r for r in results if isinstance(r, asyncio.Task)]
    if tasks:
        await asyncio.gather(*tasks, return_exceptions=True)
    failed = next((t.exception() for t in tasks if t.exception() is not None), None)
    if failed is not None:
        raise failed
    values = [r.result() if isinstance(r, asyncio.Task) else r for r in results]
    return execution.get_output_from_returns(values, LMStudioStreamChat)


def events(index: int | None = None, *, states: bool = False) -> list[tuple[str, str]]:
    """The (chunk_type, content) pairs sent, of one list item or of all; the `item` state changes if `states`."""
    messages = Recorder.current.messages
    for _, event, data, sid in messages:
        assert event == STREAM_EVENT and sid == CLIENT_ID
        assert PAYLOAD_KEYS <= set(data) and data["node_id"] == NODE_ID
        assert isinstance(data["index"], int) and data["count"] >= data["index"] + 1
    return [(d["chunk_type"], d["content"]) for _, _, d, _ in messages
            if (index is None or d["index"] == index) and (states or d["chunk_type"] != "item")]


def joined(chunk_type: str, index: int | None = None) -> str:
    return "".join(content for kind, content in events(index) if kind == chunk_type)


async def next_prompt(coroutine):
    """Run `coroutine` as the next queued prompt: ComfyUI runs each prompt in a fresh event loop (on its worker
    thread), so nothing a prompt latched on its loop, such as a Cancel, reaches the next one."""
    import asyncio

    return await asyncio.to_thread(asyncio.run, coroutine)
