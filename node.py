"""The LM Studio Chat node: one run's story, from inputs to the answer on the node and its outputs.

The prompt and images become a `ChatRequest`; an answer kept from an earlier run comes back at once; otherwise the
item waits for a slot and streams (`list_item`, which also waits out a busy server), and the answer, its statistics
and the chat so far are the outputs. A list runs this once per item, every item at once (see `list_item`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import asdict

import comfy.model_management as model_management
from aiohttp import web
from comfy_api.latest import ComfyExtension, io
from server import PromptServer

from .answer_store import Answer
from .caption_folder_node import LMStudioCaptionFolder
from .chat import (
    DEFAULT_SERVER_URL,
    ChatRequest,
    ConnectionMode,
    LMStudioError,
    Stats,
    api_token_from_env,
    unsent_settings,
)
from .client import list_models
from .conversation import Conversation, Turn
from .json_field_node import LMStudioJSONField
from .list_item import QUEUE_POLL_SECONDS, Aborted, ItemChannel, start_item, stop_reason, stream_item
from .list_run import CANCELLED, DONE, FAILED, ListRun
from .node_parts import (
    answer_store,
    apply_preset,
    free_comfy_vram,
    preset_input,
    presets,
    unload_after_run,
    user_presets_file,
)
from .options_node import (
    CATEGORY,
    ON_ERROR_RAISE,
    OPTIONS_TYPE,
    UNLOAD,
    ChatOptions,
    LMStudioChatOptions,
    newer_schema_fields,
    request_settings,
)
from .presets import NO_PRESET, fingerprint
from .prompt_graph import input_linked, linked_outputs
from .relay import StreamRelay
from .utils import MAX_BATCH_IMAGES, encode_images
from .video_frames import frame_indices, frames_note

log = logging.getLogger("lmstudio_stream")

CONVERSATION_TYPE = "LMSTUDIO_CONVERSATION"
CONVERSATION_OUTPUT = 8  # the conversation output's index, as the prompt's links name it
# A failed first item waits this long to learn whether it is part of a list (see `_in_list`).
LIST_SETTLE_SECONDS = 0.05
# The further image sockets (core's Autogrow, as its own multi-image nodes): `image` is the first of the eight.
MORE_IMAGES = tuple(f"image_{n}" for n in range(2, MAX_BATCH_IMAGES + 1))


def _batch_count(image) -> int:
    return int(image.shape[0]) if getattr(image, "shape", None) is not None and len(image.shape) == 4 else 1


def _batch_notice(images: list, options: ChatOptions) -> str:
    """What the user should know when the images are not all sent; empty when they are."""
    counts = [_batch_count(image) for image in images]
    if any(count > 1 for count in counts) and not options.send_all_images:
        many = f"the first of {counts[0]} images was" if len(counts) == 1 else "the first image of each batch was"
        return (f"Only {many} sent. For one answer per image put core's Rebatch Images (batch_size 1) in front of "
                "this node; for one answer about all of them turn on send_all_images in LM Studio Chat Options.")
    total = sum(counts) if options.send_all_images else len(counts)
    if total > MAX_BATCH_IMAGES:
        return f"Sent the first {MAX_BATCH_IMAGES} of {total} images (the most one message takes)."
    return ""


def _encode_all(images: list, options: ChatOptions) -> tuple[bytes, ...]:
    """JPEG bytes of each input's image (or batch, with send_all_images), in socket order, at most eight."""
    jpegs: list[bytes] = []
    for image in images:
        jpegs += encode_images(image, all_images=options.send_all_images, max_side=options.max_image_side,
                               quality=options.jpeg_quality)[: MAX_BATCH_IMAGES - len(jpegs)]
    return tuple(jpegs)


async def _encode(images: list, options: ChatOptions, channel: ItemChannel) -> tuple[bytes, ...]:
    if not images:
        return ()
    if notice := _batch_notice(images, options):
        channel.notice("images", notice)
    # JPEG encoding takes tens of milliseconds an image: keep it off the event loop.
    return await asyncio.to_thread(_encode_all, images, options)


async def _video_frames(video, options: ChatOptions, taken: int,
                        channel: ItemChannel) -> tuple[tuple[bytes, ...], str]:
    """A video's frames as JPEG bytes, evenly over the clip, and the line that tells the model what they are; room
    is left by the `taken` images of the same message."""
    if video is None:
        return (), ""
    count = min(options.video_frames, MAX_BATCH_IMAGES - taken)
    if count < options.video_frames:
        channel.notice("video", f"Sent {max(count, 0)} frames of the video, not {options.video_frames}: one message "
                       f"takes {MAX_BATCH_IMAGES} images in all, and {taken} came from the image inputs.")
    if count <= 0:
        return (), ""
    # Decoding the clip and encoding the frames takes a while: off the event loop.
    return await asyncio.to_thread(_frames_of, video, count, options)


def _frames_of(video, count: int, options: ChatOptions) -> tuple[tuple[bytes, ...], str]:
    components = video.get_components()  # every VIDEO ComfyUI makes (a file, generated frames) can give these
    images, rate = components.images, float(components.frame_rate or 0) or 1.0
    picked = frame_indices(int(images.shape[0]), count)
    jpegs = encode_images(images[picked], all_images=True, max_side=options.max_image_side,
                          quality=options.jpeg_quality)
    return tuple(jpegs), frames_note([index / rate for index in picked], int(images.shape[0]) / rate)


class LMStudioStreamChat(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LMStudioStreamChat",
            display_name="LM Studio Chat",
            category=CATEGORY,
            description="Chat with a model served by LM Studio, streaming its reasoning and answer onto the node. "
            "Given a list of images (a dataset folder, a rebatched batch) it answers each, in order.",
            # Where people look for it (core's Generate Text is found as "LLM").
            **newer_schema_fields(search_aliases=["LLM", "VLM", "caption", "vision", "LM Studio", "chat",
                                                  "describe image", "prompt enhancer", "llama.cpp",
                                                  "OpenAI-compatible", "local LLM"]),
            inputs=[
                io.String.Input("prompt", multiline=True, default="", tooltip="The user message sent to the model."),
                io.String.Input(
                    "model_id",
                    default="",
                    tooltip="LM Studio model key or loaded instance id (e.g. qwen/qwen3-vl-4b). Empty uses the "
                    "model that is loaded; a key that is only downloaded is loaded on demand.",
                ),
                io.Combo.Input(
                    "connection_mode",
                    options=[mode.value for mode in ConnectionMode],
                    default=ConnectionMode.SDK.value,
                    tooltip="SDK: the official lmstudio Python SDK (websocket). REST API: LM Studio's native "
                    "/api/v1/chat (LM Studio 0.4+). OpenAI-compatible: /v1/chat/completions (LM Studio or any "
                    "OpenAI-compatible server, such as llama.cpp's llama-server).",
                ),
                io.String.Input(
                    "server_url",
                    default=DEFAULT_SERVER_URL,
                    tooltip="LM Studio server address, used by every mode. A bare host gets port 1234; a pasted "
                    "/v1 or /api/v1 suffix is ignored.",
                ),
                io.Float.Input(
                    "temperature",
                    default=0.7,
                    min=0.0,
                    max=2.0,
                    step=0.05,
                    tooltip="Sampling temperature: 0 is near-deterministic, higher is more varied.",
                ),
                io.Int.Input(
                    "max_tokens",
                    default=-1,
                    min=-1,
                    max=1_000_000,
                    tooltip="Most tokens the model may generate, reasoning included; -1 for no limit.",
                ),
                io.Boolean.Input(
                    "debug_mode",
                    default=False,
                    tooltip="Log a summary of the request (never the image data or the API token) and full "
                    "tracebacks to the ComfyUI console.",
                ),
                io.Image.Input(
                    "image",
                    optional=True,
                    lazy=True,
                    tooltip="Optional image for a vision model (captioning, prompt refinement), sent as JPEG. A list "
                    "of images gets one answer each; of a batch only the first is sent (see the options).",
                ),
                io.String.Input(
                    "system_prompt",
                    optional=True,
                    multiline=True,
                    default="",
                    tooltip="Instructions that lead the chat (e.g. 'Answer with one short caption.'). "
                    "Empty sends none.",
                ),
                io.Int.Input(
                    "seed",
                    optional=True,
                    default=0,
                    min=0,
                    max=2**31 - 1,
                    control_after_generate=True,
                    tooltip="Changing the seed re-runs the node; with a fixed seed and unchanged inputs ComfyUI reuses "
                    "the last answer. Sent to LM Studio in OpenAI-compatible mode only (`seed`); the SDK and the "
                    "REST API take no per-request seed.",
                ),
                io.Autogrow.Input(
                    "more_images",
                    optional=True,
                    tooltip="More images for the same message, of any size, each from its own socket (a new socket "
                    f"appears as one is linked; {MAX_BATCH_IMAGES} images in all with `image`). With a list on "
                    "`image`, every item gets these too.",
                    template=io.Autogrow.TemplateNames(
                        io.Image.Input("image", lazy=True, tooltip="One more image (of a batch, what `image`'s "
                                       "send_all_images says is sent)."),
                        names=list(MORE_IMAGES),
                        # None required: 0.33.0 makes the first `min` sockets required inputs (an optional template
                        # would avoid it there, but 0.8.0 reads only a required one). Frontends before 1.47 show no
                        # socket for such a group; the pack's JavaScript gives them the first one.
                        min=0,
                    ),
                ),
                io.Custom(OPTIONS_TYPE).Input(
                    "options",
                    optional=True,
                    tooltip="Rarely used settings from an LM Studio Chat Options node: image sending, error policy, "
                    "reasoning, VRAM hand-back, list concurrency, sampling, structured output. Unconnected: the "
                    "defaults.",
                ),
                io.Custom(CONVERSATION_TYPE).Input(
                    "conversation",
                    optional=True,
                    tooltip="Continue a chat: another LM Studio Chat node's conversation output. Its system prompt "
                    "and every earlier turn (images too) go with this prompt. Unconnected: a new chat.",
                ),
                # Inputs added later go last: a saved workflow holds the widgets' values by position.
                preset_input(),
                io.Video.Input(
                    "video",
                    optional=True,
                    lazy=True,
                    tooltip="A video (core's Load Video) for a vision model: a few frames picked evenly over the "
                    "clip go in one message, in time order, with a line that says which second each is from "
                    "(video_frames in the options; 8 by default). A list of videos gets one answer each.",
                ),
            ],
            outputs=[
                io.String.Output("response_text", display_name="response_text"),
                io.String.Output("reasoning_text", display_name="reasoning_text"),
                io.String.Output("statistics", display_name="statistics"),
                io.Float.Output("tokens_per_second", display_name="tokens_per_second", tooltip="0 when unknown."),
                io.Float.Output(
                    "time_to_first_token", display_name="time_to_first_token", tooltip="Seconds; 0 when unknown."
                ),
                io.Int.Output("input_tokens", display_name="input_tokens", tooltip="0 when unknown."),
                io.Int.Output("output_tokens", display_name="output_tokens", tooltip="0 when unknown."),
                io.Int.Output("reasoning_tokens", display_name="reasoning_tokens", tooltip="0 when unknown."),
                io.Custom(CONVERSATION_TYPE).Output(
                    "conversation", display_name="conversation", tooltip="The chat so far, this turn included, for "
                    "the next LM Studio Chat node's conversation input. A failed turn is not part of it."),
            ],
            hidden=[io.Hidden.unique_id, io.Hidden.prompt],
            # An output node runs on its own: the answer shows on the node even with nothing connected downstream.
            is_output_node=True,
        )

    @classmethod
    def check_lazy_status(cls, image=None, more_images=None, video=None, **kwargs) -> list[str]:
        needed = [name for name, value in (("image", image), ("video", video))
                  if value is None and input_linked(cls.hidden.prompt, str(cls.hidden.unique_id), name)]
        # ComfyUI hands each linked further image as (value, its input's key) here, None while not evaluated; 0.33.0
        # hands the group itself that way too when nothing is linked to it: ({}, "more_images").
        if isinstance(more_images, tuple):
            more_images = more_images[0]
        for value in (more_images or {}).values():
            if isinstance(value, tuple) and value[0] is None:
                needed.append(value[1])
        return needed

    @classmethod
    def validate_inputs(cls, preset: str = NO_PRESET, more_images: object = None) -> bool:
        # A preset removed from the user's file since the workflow was saved is not a reason to refuse the whole
        # prompt (ComfyUI's "value not in list"): the run says so and goes on with the node's own prompts. Only the
        # inputs named here skip ComfyUI's own checks (no **kwargs: that would skip them all); 0.33.0 hands the
        # further images' group here too.
        return True

    @classmethod
    def fingerprint_inputs(cls, preset: str = NO_PRESET, **_inputs) -> str:
        return fingerprint(preset, presets())  # a preset whose text changed runs again

    @classmethod
    async def execute(
        cls,
        prompt: str,
        model_id: str,
        connection_mode: str,
        server_url: str,
        temperature: float,
        max_tokens: int,
        debug_mode: bool,
        image=None,
        system_prompt: str = "",
        seed: int = 0,
        more_images: dict | None = None,
        options: ChatOptions | None = None,
        conversation: Conversation | None = None,
        preset: str = NO_PRESET,
        video=None,
    ) -> io.NodeOutput:
        options = options if isinstance(options, ChatOptions) else ChatOptions()
        channel = start_item(str(cls.hidden.unique_id))
        relay = StreamRelay(channel.send, channel.progress, channel.notice)
        mode = ConnectionMode(connection_mode)
        prompt, system_prompt, options, preset_notices = apply_preset(preset, prompt, system_prompt, options, mode)
        for sentence in preset_notices:
            channel.notice(sentence, sentence)
        chat = _chat_so_far(conversation, system_prompt, channel)
        try:
            images = await _encode(_images(image, more_images), options, channel)
            frames, frames_line = await _video_frames(video, options, len(images), channel)
            request = ChatRequest(
                prompt=f"{frames_line}\n\n{prompt}" if frames_line else prompt,
                server_url=server_url,
                mode=mode,
                model=model_id.strip(),
                system_prompt=chat.system_prompt,
                images=images + frames,
                history=chat.turns,
                store=mode is ConnectionMode.REST and _continued(cls.hidden),
                temperature=temperature,
                max_tokens=max_tokens,
                reasoning=options.reasoning,
                seed=seed,
                api_token=api_token_from_env(),
                **request_settings(options),
            )
            for sentence in unsent_settings(request):
                channel.notice(sentence, sentence)
            if debug_mode:
                log.info("LM Studio request from node %s, item %d: %s", channel.node_id, channel.index,
                         request.describe())
            store = answer_store() if options.resume else None
            key, kept = await store.lookup(request) if store is not None else ("", None)
            if kept is not None:
                return await _resumed(kept, channel, _turned(chat, request, kept))
            if options.free_comfy_vram:
                free_comfy_vram(channel)
            await stream_item(request, options.max_parallel, options.busy_wait_seconds, relay, channel)
        except model_management.InterruptProcessingException:
            _finish(channel, CANCELLED, "Cancelled")
            raise
        except Aborted as exc:
            _finish(channel, CANCELLED, "Stopped: another item failed")
            raise RuntimeError(str(exc)) from None
        except Exception as exc:  # the error policy decides; nothing is swallowed silently
            return await _failed(exc, options, channel, relay, connection_mode, debug_mode, chat)
        answer = Answer("".join(relay.text), "".join(relay.reasoning), relay.stats or Stats(mode=connection_mode),
                        relay.response_id)
        if store is not None:
            await store.keep(key, answer)
        summary = answer.stats.summary()
        channel.send("stats", summary)
        # VRAM is handed back once, after the list's last answer.
        if options.after_run == UNLOAD and answer.stats.model and not channel.run.active(besides=channel.index):
            await unload_after_run(request, answer.stats.model, channel)
        _finish(channel, DONE)
        return await _output(channel, answer, summary, _turned(chat, request, answer))


def _chat_so_far(conversation: Conversation | None, system_prompt: str, channel: ItemChannel) -> Conversation:
    """The chat this turn continues, or a new one led by `system_prompt` (a chat keeps its first system prompt)."""
    if not isinstance(conversation, Conversation):
        return Conversation(system_prompt)
    channel.turn = len(conversation.turns) + 1
    channel.send("turn", str(channel.turn))
    if system_prompt.strip() and system_prompt != conversation.system_prompt:
        channel.notice("system prompt", "This node continues a chat, whose system prompt is its first turn's: "
                       "system_prompt here is not used (LM Studio keeps one per chat). Say it in the prompt instead.")
    return conversation


def _turned(chat: Conversation, request: ChatRequest, answer: Answer) -> Conversation:
    """The chat with this turn added; the request's image bytes are shared, not copied."""
    return chat.then(Turn(request.prompt, request.images, answer.text, answer.response_id))


def _continued(hidden) -> bool:
    """Whether a node of the prompt takes this node's conversation output (a later turn continues from it)."""
    return CONVERSATION_OUTPUT in linked_outputs(hidden.prompt, str(hidden.unique_id))


def _images(image, more_images: dict | None) -> list:
    """The images to send, in socket order: `image`, then the further sockets that carry one."""
    more = [(more_images or {}).get(name) for name in MORE_IMAGES]
    return [each for each in (image, *more) if each is not None]


def _finish(channel: ItemChannel, state: str, status: str = "") -> None:
    channel.state(state)
    if status:
        channel.send("status", status)
    channel.send("done")


async def _resumed(answer: Answer, channel: ItemChannel, chat: Conversation) -> io.NodeOutput:
    """An item whose exact request was answered before: its answer again, at once, and a word on the node."""
    run = channel.run
    run.resumed += 1
    for chunk_type, text in (("reasoning", answer.reasoning), ("text", answer.text)):
        if text:
            channel.send(chunk_type, text)
    summary = answer.stats.summary()
    channel.send("stats", summary)
    channel.notice("resume", _resume_notice(run), warn=False)
    _finish(channel, DONE)
    return await _output(channel, answer, summary, chat)


def _resume_notice(run: ListRun) -> str:
    if run.count > 1:
        notice = f"{run.resumed} of {run.count} answers came back finished from the last run; the rest are generated."
    else:
        notice = "This answer came back from an earlier run of the same request and seed; a new seed asks anew."
    return f"{notice} (resume in LM Studio Chat Options)"


async def _failed(
    exc: Exception, options: ChatOptions, channel: ItemChannel, relay: StreamRelay, mode: str, debug_mode: bool,
    chat: Conversation,
) -> io.NodeOutput:
    """Apply the error policy: stop the whole list, or go on with the error text as the answer of a single run and
    an empty answer for a list item (which must not become the caption a dataset saves). The chat goes on without
    the failed turn."""
    human = isinstance(exc, LMStudioError)  # the pack's own explanations; anything else is a bug to report
    message = str(exc) if human else f"{type(exc).__name__}: {exc}"
    if debug_mode or not human:
        log.exception("LM Studio Chat (node %s, item %d) failed", channel.node_id, channel.index)
    else:
        log.error("LM Studio Chat (node %s, item %d): %s", channel.node_id, channel.index, message)
    channel.send("error", message)
    _finish(channel, FAILED)
    if options.on_error == ON_ERROR_RAISE:
        channel.run.abort(message)
        raise RuntimeError(message) from exc
    in_list = await _in_list(channel)
    text = "" if in_list else f"Error: {message}"
    return await _output(channel, Answer(text, "".join(relay.reasoning), Stats(mode)), f"error | mode: {mode}",
                         chat, error=message)


async def _in_list(channel: ItemChannel) -> bool:
    """Whether this item belongs to a list of several. ComfyUI starts a list's items one loop turn apart, so a first
    item that fails at once (a bad server_url) waits a moment for its siblings to show themselves."""
    if channel.run.count == 1 and channel.index == 0:
        await asyncio.sleep(LIST_SETTLE_SECONDS)
    return channel.run.count > 1


async def _output(
    channel: ItemChannel, answer: Answer, summary: str, chat: Conversation, error: str = ""
) -> io.NodeOutput:
    summary = await _with_list_summary(channel, summary)
    # The `ui` copy reaches the widget with the `executed` message, so a cached run still shows its answers;
    # ComfyUI concatenates the items' `ui` lists in list order. It replaces what the stream drew, so it carries the
    # run's notices as they stood when this item finished, and when that was: items finish out of list order (an
    # answer back from the last run at once, before earlier items), and the widget shows the last-returned item's.
    entry = {"index": channel.index, "text": answer.text, "reasoning": answer.reasoning, "stats": summary,
             "returned": channel.run.returned_next()}
    if error:
        entry["error"] = error
    if channel.run.notices:
        entry["notice"] = "\n".join(channel.run.notices.values())
    if channel.turn > 1:
        entry["turn"] = channel.turn
    ui = {"lmstudio": [entry]}
    stats = answer.stats
    figures = (
        float(stats.tokens_per_second or 0.0),
        float(stats.time_to_first_token or 0.0),
        int(stats.input_tokens or 0),
        int(stats.output_tokens or 0),
        int(stats.reasoning_tokens or 0),
    )
    return io.NodeOutput(answer.text, answer.reasoning, summary, *figures, chat, ui=ui)


async def _with_list_summary(channel: ItemChannel, summary: str) -> str:
    """The statistics; the list's last item waits for the others (it holds no slot) and adds the list's summary,
    which the node shows too. Where the last item comes, not where the last answer lands: a saver downstream reads
    the list in order."""
    run = channel.run
    if run.count < 2 or channel.index != run.count - 1:
        return summary
    while run.active(besides=channel.index):
        if stop_reason(run) is not None:
            return summary  # Cancel or another item's error: the run ends without a summary
        await asyncio.sleep(QUEUE_POLL_SECONDS)
    line = run.summary(time.monotonic())
    if run.resumed:  # said as each answer came back, while the list's items were still starting: now with its length
        channel.run.note("resume", _resume_notice(run))
    channel.notice("list", line, warn=False)
    return f"{summary}\n{line}"


@PromptServer.instance.routes.get("/lmstudio/models")
async def models_route(request: web.Request) -> web.Response:
    """The model picker's list for the node's server_url: loaded first, with vision marked."""
    server_url = request.query.get("server_url") or DEFAULT_SERVER_URL
    try:
        models = await list_models(server_url, api_token=api_token_from_env())
    except LMStudioError as exc:
        return web.json_response({"models": [], "error": str(exc)})
    return web.json_response({"models": [asdict(model) for model in models], "error": None})


@PromptServer.instance.routes.get("/lmstudio/presets")
async def presets_route(request: web.Request) -> web.Response:
    """Every preset's texts (the user's file read again if it changed), for the node to show before a run."""
    found = presets()
    return web.json_response({"presets": {name: asdict(preset) for name, preset in found.presets.items()},
                              "file": str(user_presets_file()), "problem": found.problem})


class LMStudioExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [LMStudioStreamChat, LMStudioCaptionFolder, LMStudioChatOptions, LMStudioJSONField]


async def comfy_entrypoint() -> LMStudioExtension:
    return LMStudioExtension()
