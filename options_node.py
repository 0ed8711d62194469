"""LM Studio Chat Options: the rarely used settings, one socket away from the chat node.

Core's "OpenAI ChatGPT Advanced Options" and comfyui-ollama's Options node set the convention: the chat node
shows what people set on every run, and an optional socket takes the rest. With nothing connected the chat node
uses `ChatOptions()`, whose defaults are the ones the settings had when they sat on the chat node itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from comfy_api.latest import io

from .limiter import FIND_CEILING, FIND_START
from .structured import parse_schema
from .utils import DEFAULT_JPEG_QUALITY, DEFAULT_MAX_SIDE, MAX_BATCH_IMAGES
from .video_frames import DEFAULT_VIDEO_FRAMES

CATEGORY = "LM Studio"  # both nodes' place in the node library
OPTIONS_TYPE = "LMSTUDIO_CHAT_OPTIONS"
ON_ERROR_OUTPUT, ON_ERROR_RAISE = "output error text", "raise"
KEEP_LOADED, UNLOAD, UNLOAD_WHEN_IDLE = "keep loaded", "unload", "unload when idle"
REASONING_OPTIONS = ["auto", "off", "low", "medium", "high", "on"]


def newer_schema_fields(**fields: Any) -> dict[str, Any]:
    """The `io.Schema` fields of ComfyUI releases newer than 0.8.0 (`search_aliases` came later) that this ComfyUI
    has: the others are left out, so 0.8.0 still loads the pack. (`has_intermediate_output`, also newer, is not used:
    the chat node is an output node, whose view ComfyUI keeps anyway.)"""
    known = getattr(io.Schema, "__dataclass_fields__", {})
    return {name: value for name, value in fields.items() if name in known}


@dataclass(frozen=True)
class ChatOptions:
    """What travels on the options socket. A frozen dataclass: ComfyUI's cache compares it by value."""

    send_all_images: bool = False
    max_image_side: int = DEFAULT_MAX_SIDE
    jpeg_quality: int = DEFAULT_JPEG_QUALITY
    on_error: str = ON_ERROR_OUTPUT
    reasoning: str = "auto"
    after_run: str = KEEP_LOADED
    idle_ttl_minutes: int = 10
    free_comfy_vram: bool = False
    max_parallel: int = 0  # 0: as many as the server's `parallel` slots, or as many as it takes (found by trying)
    resume: bool = True
    # -1 (0 for context_length, "" for the texts): nothing is sent, LM Studio's per-model setting applies.
    top_p: float = -1.0
    top_k: int = -1
    min_p: float = -1.0
    repeat_penalty: float = -1.0
    stop: str = ""
    draft_model: str = ""
    context_length: int = 0
    json_schema: str = ""  # empty: a free answer
    busy_wait_seconds: int = 300  # how long one item may wait out a busy server in all
    video_frames: int = DEFAULT_VIDEO_FRAMES  # frames of a video sent, evenly over the clip


def request_settings(options: ChatOptions) -> dict[str, Any]:
    """The ChatRequest fields the options set; a setting left at its default is None (nothing sent). A json_schema
    that is not a JSON Schema is refused here, before anything is sent."""
    return {
        "ttl_seconds": options.idle_ttl_minutes * 60 if options.after_run == UNLOAD_WHEN_IDLE else None,
        "json_schema": parse_schema(options.json_schema),
        "top_p": None if options.top_p < 0 else options.top_p,
        "top_k": None if options.top_k < 0 else options.top_k,
        "min_p": None if options.min_p < 0 else options.min_p,
        "repeat_penalty": None if options.repeat_penalty < 0 else options.repeat_penalty,
        "stop": stop_strings(options.stop),
        "draft_model": options.draft_model.strip(),
        "context_length": options.context_length or None,
    }


def stop_strings(text: str) -> tuple[str, ...]:
    r"""One stop string per line, as typed (spaces count); `\n` and `\t` stand for a line break and a tab."""
    lines = (line.rstrip("\r") for line in text.split("\n"))
    return tuple(line.replace("\\n", "\n").replace("\\t", "\t") for line in lines if line)


class LMStudioChatOptions(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LMStudioChatOptions",
            display_name="LM Studio Chat Options",
            category=CATEGORY,
            description="Settings for LM Studio Chat that most runs leave alone: image sending, errors, reasoning, "
            "VRAM, how many list items LM Studio works on at once, resume, sampling, stop strings, a draft model, "
            "the context length and structured output. Connect to the chat node's options input.",
            **newer_schema_fields(search_aliases=["LLM options", "LM Studio settings", "sampling", "max_parallel",
                                                  "structured output", "json schema"]),
            inputs=[
                io.Boolean.Input(
                    "send_all_images",
                    default=False,
                    tooltip=f"Send every image of a batch in one message (at most {MAX_BATCH_IMAGES}) for one answer "
                    "about all of them. Off sends only the first. For one answer per image, put core's Rebatch "
                    "Images (batch_size 1) in front of the chat node instead.",
                ),
                io.Int.Input(
                    "max_image_side",
                    default=DEFAULT_MAX_SIDE,
                    min=0,
                    max=8192,
                    step=64,
                    tooltip="Shrink images so their long edge is at most this many pixels before sending "
                    "(0 keeps the size; never enlarges). Smaller is faster and uses fewer vision tokens.",
                ),
                io.Int.Input(
                    "jpeg_quality",
                    default=DEFAULT_JPEG_QUALITY,
                    min=1,
                    max=100,
                    tooltip="JPEG quality of the image sent to the model (1-100).",
                ),
                io.Combo.Input(
                    "on_error",
                    options=[ON_ERROR_OUTPUT, ON_ERROR_RAISE],
                    default=ON_ERROR_OUTPUT,
                    tooltip="output error text: the workflow goes on and response_text carries the error message "
                    "(in a list, only the failed items do). raise: stop the workflow, and every item of the list, "
                    "with the error.",
                ),
                io.Combo.Input(
                    "reasoning",
                    options=REASONING_OPTIONS,
                    default="auto",
                    tooltip="How much the model should think: off for a quick answer from a model that thinks by "
                    "default (Qwen3, Gemma 4), or an effort. REST API: LM Studio's `reasoning` (a model without the "
                    "setting answers with an error). OpenAI-compatible: `reasoning_effort` (off is 'none'; LM "
                    "Studio, llama.cpp) and `chat_template_kwargs.enable_thinking` (llama.cpp, vLLM, SGLang). The "
                    "SDK has no setting for it (the node says so). auto sends nothing: the model's default.",
                ),
                io.Combo.Input(
                    "after_run",
                    options=[KEEP_LOADED, UNLOAD, UNLOAD_WHEN_IDLE],
                    default=KEEP_LOADED,
                    tooltip="What happens to the LM Studio model afterwards. keep loaded: LM Studio's usual rules. "
                    "unload: free its VRAM as soon as the answer is in (after the last item of a list; the node "
                    "waits, at most 10 s, until LM Studio confirms). unload when idle: a model this node makes LM "
                    "Studio load unloads after idle_ttl_minutes (SDK and OpenAI-compatible; the REST API has no "
                    "TTL, LM Studio's own JIT TTL applies).",
                ),
                io.Int.Input(
                    "idle_ttl_minutes",
                    default=10,
                    min=1,
                    max=24 * 60,
                    tooltip="For 'unload when idle': minutes without requests before LM Studio unloads the model.",
                ),
                io.Boolean.Input(
                    "free_comfy_vram",
                    default=False,
                    tooltip="Unload ComfyUI's own models from VRAM before asking LM Studio, so a large LLM fits. "
                    "ComfyUI reloads them when the next node needs them.",
                ),
                io.Int.Input(
                    "max_parallel",
                    default=0,
                    min=0,
                    max=FIND_CEILING,
                    tooltip="Most list items the server works on at once, per server and model (the rest wait in the "
                    "node, shown as queued). 0: the loaded model's `parallel` slots as LM Studio reports them "
                    "(llama.cpp: its slots); where the server does not say (a router such as LiteLLM's proxy, vLLM, "
                    f"a model not loaded yet) the node finds out: it starts at {FIND_START} and sends more while "
                    "answers come back as fast and nothing is refused. A refusal lowers it for a while either way.",
                ),
                io.Boolean.Input(
                    "resume",
                    default=True,
                    tooltip="Keep every finished answer in ComfyUI's user folder and give it back at once when the "
                    "same request comes again (server, model, mode, prompts, images, settings and seed all alike): "
                    "a cancelled, failed or crashed list then generates only the items it had not finished. A new "
                    "seed asks for a new answer. Off: every run generates everything.",
                ),
                io.Float.Input(
                    "top_p",
                    default=-1.0,
                    min=-1.0,
                    max=1.0,
                    step=0.01,
                    tooltip="Nucleus sampling: pick from the smallest set of tokens whose probabilities add up to "
                    "this (0-1). -1: LM Studio's setting for the model (nothing sent).",
                ),
                io.Int.Input(
                    "top_k",
                    default=-1,
                    min=-1,
                    max=1000,
                    tooltip="Pick from the k most likely tokens only (0 turns it off). -1: LM Studio's setting for the "
                    "model (nothing sent).",
                ),
                io.Float.Input(
                    "min_p",
                    default=-1.0,
                    min=-1.0,
                    max=1.0,
                    step=0.01,
                    tooltip="Drop tokens less likely than this fraction of the most likely one (0-1; 0 turns it "
                    "off). -1: LM Studio's setting for the model (nothing sent).",
                ),
                io.Float.Input(
                    "repeat_penalty",
                    default=-1.0,
                    min=-1.0,
                    max=3.0,
                    step=0.01,
                    tooltip="Penalty for repeating tokens: 1 is none, higher repeats less. -1: LM Studio's setting for "
                    "the model (nothing sent).",
                ),
                io.String.Input(
                    "stop",
                    multiline=True,
                    default="",
                    tooltip="Stop strings, one per line, as typed (spaces count; \\n is a line break): the answer "
                    "ends before the first one the model writes. SDK and OpenAI-compatible modes; the REST API has "
                    "none (the node says so). Empty: none.",
                ),
                io.String.Input(
                    "draft_model",
                    default="",
                    tooltip="Speculative decoding: the key of a small model of the same family (e.g. "
                    "qwen/qwen3-0.6b for a Qwen3 model) that drafts tokens for the main model to check; faster, the "
                    "same answer. LM Studio loads it. SDK and OpenAI-compatible modes. The statistics show the "
                    "accepted draft tokens where LM Studio reports them. Empty: none.",
                ),
                io.Int.Input(
                    "context_length",
                    default=0,
                    min=0,
                    max=1_048_576,
                    tooltip="Context length, in tokens, for a model this node makes LM Studio load (SDK and REST "
                    "API). A model already loaded keeps its length: the node says so; unload it (or after_run = "
                    "unload) to load it anew. Images take context too. 0: LM Studio's setting for the model.",
                ),
                io.String.Input(
                    "json_schema",
                    multiline=True,
                    default="",
                    tooltip="Structured output: a JSON Schema the answer must follow (e.g. {\"type\": \"object\", "
                    "\"properties\": {\"positive\": {\"type\": \"string\"}}, \"required\": [\"positive\"]}). "
                    "response_text is then that JSON document, checked against the schema; read its fields with LM "
                    "Studio JSON Field. SDK and OpenAI-compatible modes (LM Studio's REST API has none). Empty: a "
                    "free answer.",
                ),
                # Inputs added later go last: a saved workflow holds the widgets' values by position.
                io.Int.Input(
                    "busy_wait_seconds",
                    default=300,
                    min=0,
                    max=24 * 3600,
                    tooltip="How long, in seconds and in all, one item waits out a server that says it is full (HTTP "
                    "429 or 503, a router's 'no deployments available') before it fails: it asks again when the "
                    "server's Retry-After says, else after a growing pause. 0 fails at the first refusal.",
                ),
                io.Int.Input(
                    "video_frames",
                    default=DEFAULT_VIDEO_FRAMES,
                    min=1,
                    max=MAX_BATCH_IMAGES,
                    tooltip="How many frames of a video (the chat node's video input) are sent: picked evenly over "
                    "the clip, in time order, with a line that says which second each is from. With images too, "
                    f"{MAX_BATCH_IMAGES} in all.",
                ),
            ],
            outputs=[io.Custom(OPTIONS_TYPE).Output("options", display_name="options")],
        )

    @classmethod
    def execute(cls, **settings: object) -> io.NodeOutput:
        return io.NodeOutput(ChatOptions(**settings))  # type: ignore[arg-type]  # the schema types every value
