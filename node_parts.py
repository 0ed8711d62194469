"""What the chat node and the folder captioner share around a run: the answer store, the presets, and ComfyUI's
VRAM handed over before and LM Studio's handed back after."""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

import comfy.model_management as model_management
import folder_paths
from comfy_api.latest import io

from .answer_store import AnswerStore
from .chat import ChatRequest, ConnectionMode, LMStudioError
from .client import unload_model
from .list_item import ItemChannel
from .options_node import ChatOptions
from .presets import NO_PRESET, USER_PRESETS_FILE, Catalogue, catalogue, resolve

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


def user_presets_file() -> Path:
    """The user's own presets: in the default user's folder, where ComfyUI keeps its settings and workflows."""
    return Path(folder_paths.get_user_directory()) / "default" / USER_PRESETS_FILE


def presets() -> Catalogue:
    return catalogue(user_presets_file())


def preset_input() -> io.Combo.Input:
    """The `preset` choice: the presets as they are when the frontend asks for the nodes (its Refresh re-reads the
    user's file)."""
    return io.Combo.Input(
        "preset", options=presets().names(), default=NO_PRESET, optional=True,
        tooltip="A ready-made system prompt (and, for some, a prompt and a JSON schema) for what people often ask: "
        "captions, tags, SDXL, Flux and video prompts. It fills only what this node leaves empty; the node shows "
        f"its text. Your own: {USER_PRESETS_FILE} in ComfyUI's user folder (user/default), re-read when it "
        "changes (Refresh the node list to see new names).")


def apply_preset(name: str, prompt: str, system_prompt: str, options: ChatOptions,
                 mode: ConnectionMode) -> tuple[str, str, ChatOptions, list[str]]:
    """The prompt, system prompt and options once preset `name` filled what the node left empty; and what the node
    should say about it (a preset that is gone, a JSON schema the mode cannot send)."""
    resolved = resolve(name, presets(), prompt=prompt, system_prompt=system_prompt, json_schema=options.json_schema)
    notices = [resolved.notice] if resolved.notice else []
    schema, system_prompt = resolved.json_schema, resolved.system_prompt
    if schema != options.json_schema and mode is ConnectionMode.REST:
        # A preset's schema is a help where the mode can check it, never a reason to fail in one that cannot: there
        # the model is asked for it in words.
        notices.append(f"Preset '{name}' asks for JSON that follows its schema, which the REST API mode cannot "
                       "enforce (it has no structured output): the schema is in the system prompt, and the answer is "
                       "not checked. Use SDK or OpenAI-compatible for a checked answer.")
        system_prompt = f"{system_prompt}\n\nAnswer with only a JSON object that follows this JSON Schema:\n{schema}"
        schema = options.json_schema
    return resolved.prompt, system_prompt, dataclasses.replace(options, json_schema=schema), notices


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
