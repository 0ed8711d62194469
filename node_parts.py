"""What the chat node and the folder captioner share around a run: the answer store, and ComfyUI's VRAM handed
over before and LM Studio's handed back after."""

from __future__ import annotations

import logging
import os

import comfy.model_management as model_management
import folder_paths

from .answer_store import AnswerStore
from .chat import ChatRequest, LMStudioError
from .client import unload_model
from .list_item import ItemChannel

log = logging.getLogger("lmstudio_stream")

UNLOAD_CONFIRM_SECONDS = 10.0
# In ComfyUI's user folder; the `__` prefix marks a system user's folder, which ComfyUI never serves over HTTP.
ANSWERS_FOLDER = "__lmstudio_stream_chat"


def answer_store() -> AnswerStore:
    """The finished answers in ComfyUI's user folder, as a system user's: never served over ComfyUI's HTTP API."""
    user_folder = folder_paths.get_user_directory()
    if _stores.get(user_folder) is None:
        _stores[user_folder] = AnswerStore(os.path.join(user_folder, ANSWERS_FOLDER))
    return _stores[user_folder]


_stores: dict[str, AnswerStore] = {}


def free_comfy_vram(channel: ItemChannel) -> None:
    """Once per list: the first item to get here frees ComfyUI's VRAM before any item asks LM Studio."""
    if channel.run.vram_freed:
        return
    channel.run.vram_freed = True
    channel.send("status", "Freeing ComfyUI's VRAM")
    model_management.unload_all_models()
    model_management.soft_empty_cache()


async def unload_after_run(request: ChatRequest, model: str, channel: ItemChannel) -> None:
    """Hand LM Studio's VRAM back; the answer stands whatever happens here."""
    channel.send("status", f"Unloading {model}")
    try:
        confirmed = await unload_model(request, model, confirm_seconds=UNLOAD_CONFIRM_SECONDS)
    except LMStudioError as exc:
        log.warning("LM Studio Chat: unloading %s failed: %s", model, exc)
        channel.send("error", f"The answer is complete, but unloading the model failed: {exc}")
        return
    if confirmed:
        channel.send("status", f"Unloaded {model}")
    else:
        seconds = UNLOAD_CONFIRM_SECONDS
        log.warning("LM Studio Chat: %s was still loaded %.0f s after the unload request", model, seconds)
        channel.send("status", f"Asked LM Studio to unload {model}; not confirmed within {seconds:.0f} s")
