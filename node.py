"""The LM Studio Chat node: adapts the client's stream events to ComfyUI (websocket, progress bar, outputs)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from contextlib import aclosing
from dataclasses import asdict

from aiohttp import web

import comfy.model_management as model_management
from comfy.utils import ProgressBar
from comfy_api.latest import ComfyExtension, io
from server import PromptServer

from .chat import (
    DEFAULT_SERVER_URL,
    ChatRequest,
    ConnectionMode,
    Finished,
    LMStudioError,
    Progress,
    ReasoningDelta,
    Stats,
    TextDelta,
    api_token_from_env,
)
from .client import list_models, stream_chat, unload_model
from .utils import DEFAULT_JPEG_QUALITY, DEFAULT_MAX_SIDE, MAX_BATCH_IMAGES, encode_images

log = logging.getLogger("lmstudio_stream")

STREAM_EVENT = "lmstudio.stream.update"
# One websocket message per tick at most (plus one more where reasoning turns into the answer): ~30 a second,
# whatever the token rate. The same tick polls ComfyUI's interrupt flag, well inside the 100 ms budget.
TICK_SECONDS = 1 / 30
# After Cancel, how long the stream may take to close (the SDK sends `cancel` and drains) before we give up on it.
CANCEL_GRACE_SECONDS = 0.8
ON_ERROR_OUTPUT = "output error text"
ON_ERROR_RAISE = "raise"
KEEP_LOADED, UNLOAD, UNLOAD_WHEN_IDLE = "keep loaded", "unload", "unload when idle"
REASONING_OPTIONS = ["auto", "off", "low", "medium", "high", "on"]
UNLOAD_CONFIRM_SECONDS = 10.0
_STAGE_LABELS = {"model_load": "Loading model", "prompt_processing": "Processing prompt"}

Send = Callable[[str, str], None]


class StreamRelay:
    """Collects the stream for the outputs and forwards it to the browser in ordered, coalesced batches."""

    def __init__(self, send: Send, progress: Callable[[float], None]) -> None:
        self.send = send
        self._progress = progress
        self._pending: list[list[str]] = []  # [chunk_type, text] runs, in arrival order
        self._status: Progress | None = None
        self.text: list[str] = []
        self.reasoning: list[str] = []
        self.stats: Stats | None = None

    def add(self, event: object) -> None:
        if isinstance(event, TextDelta):
            self._queue("text", event.text)
            self.text.append(event.text)
        elif isinstance(event, ReasoningDelta):
            self._queue("reasoning", event.text)
            self.reasoning.append(event.text)
        elif isinstance(event, Progress):
            self._status = event
        elif isinstance(event, Finished):
            self.stats = event.stats

    def _queue(self, chunk_type: str, text: str) -> None:
        if not text:
            return
        if self._pending and self._pending[-1][0] == chunk_type:
            self._pending[-1][1] += text
        else:
            self._pending.append([chunk_type, text])

    def flush(self) -> None:
        """Send what arrived since the last flush: the latest status, then the deltas in order."""
        if self._status is not None:
            status, self._status = self._status, None
            self.send("status", f"{_STAGE_LABELS[status.stage]} {round(status.fraction * 100)}%")
            self._progress(status.fraction)
        pending, self._pending = self._pending, []
        for chunk_type, text in pending:
            self.send(chunk_type, text)


def _image_linked(hidden) -> bool:
    """True when the workflow links something to `image` (an unlinked optional input is simply absent)."""
    node = (hidden.prompt or {}).get(str(hidden.unique_id)) or {}
    return isinstance(node.get("inputs", {}).get("image"), list)


async def _run_stream(request: ChatRequest, relay: StreamRelay) -> None:
    """Stream into `relay`, flushing every tick; on ComfyUI's Cancel close the stream and raise the interrupt."""

    async def consume() -> None:
        async with aclosing(stream_chat(request)) as events:
            async for event in events:
                relay.add(event)

    task = asyncio.create_task(consume())
    try:
        while not task.done():
            await asyncio.wait({task}, timeout=TICK_SECONDS)
            if model_management.processing_interrupted():
                break
            relay.flush()
    finally:
        if not task.done():
            # Cancelling the task closes the HTTP stream or sends the SDK's cancel, so LM Studio stops generating.
            task.cancel()
            await asyncio.wait({task}, timeout=CANCEL_GRACE_SECONDS)
    relay.flush()
    if task.cancelled() or model_management.processing_interrupted():
        relay.send("status", "Cancelled")
        model_management.throw_exception_if_processing_interrupted()  # consumes the flag, as ComfyUI expects
        raise model_management.InterruptProcessingException()  # the flag was already consumed elsewhere
    task.result()  # re-raise the stream's error, if any


class LMStudioStreamChat(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LMStudioStreamChat",
            display_name="LM Studio Chat",
            category="LM Studio",
            description="Chat with a model served by LM Studio, streaming its reasoning and answer onto the node.",
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
                    "/api/v1/chat (LM Studio 0.4+). OpenAI-compatible: /v1/chat/completions.",
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
                    tooltip="Optional image for a vision model (captioning, prompt refinement). Sent as JPEG.",
                ),
                io.Boolean.Input(
                    "send_all_images",
                    optional=True,
                    default=False,
                    tooltip=f"Send every image of the batch in one message (at most {MAX_BATCH_IMAGES}); "
                    "off sends only the first.",
                ),
                io.Int.Input(
                    "max_image_side",
                    optional=True,
                    default=DEFAULT_MAX_SIDE,
                    min=0,
                    max=8192,
                    step=64,
                    tooltip="Shrink images so their long edge is at most this many pixels before sending "
                    "(0 keeps the size; never enlarges). Smaller is faster and uses fewer vision tokens.",
                ),
                io.Int.Input(
                    "jpeg_quality",
                    optional=True,
                    default=DEFAULT_JPEG_QUALITY,
                    min=1,
                    max=100,
                    tooltip="JPEG quality of the image sent to the model (1-100).",
                ),
                io.Combo.Input(
                    "on_error",
                    optional=True,
                    options=[ON_ERROR_OUTPUT, ON_ERROR_RAISE],
                    default=ON_ERROR_OUTPUT,
                    tooltip="output error text: the workflow goes on and response_text carries the error message. "
                    "raise: stop the workflow with the error.",
                ),
                io.String.Input(
                    "system_prompt",
                    optional=True,
                    multiline=True,
                    default="",
                    tooltip="Instructions that lead the chat (e.g. 'Answer with one short caption.'). Empty sends none.",
                ),
                io.Combo.Input(
                    "reasoning",
                    optional=True,
                    options=REASONING_OPTIONS,
                    default="auto",
                    tooltip="How much the model should think. Sent in REST API mode only (LM Studio's `reasoning`; a "
                    "model that does not support the setting answers with an error). SDK and OpenAI-compatible "
                    "modes ignore it: the model's own default applies. auto sends nothing.",
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
                io.Combo.Input(
                    "after_run",
                    optional=True,
                    options=[KEEP_LOADED, UNLOAD, UNLOAD_WHEN_IDLE],
                    default=KEEP_LOADED,
                    tooltip="What happens to the LM Studio model afterwards. keep loaded: LM Studio's usual rules. "
                    "unload: free its VRAM as soon as the answer is in (the node waits, at most 10 s, until LM Studio "
                    "confirms). unload when idle: a model this node makes LM Studio load unloads after "
                    "idle_ttl_minutes (SDK and OpenAI-compatible; the REST API has no TTL, LM Studio's own JIT TTL "
                    "applies). OpenAI-compatible mode unloads through LM Studio's native API (LM Studio 0.4+).",
                ),
                io.Int.Input(
                    "idle_ttl_minutes",
                    optional=True,
                    default=10,
                    min=1,
                    max=24 * 60,
                    tooltip="For 'unload when idle': minutes without requests before LM Studio unloads the model.",
                ),
                io.Boolean.Input(
                    "free_comfy_vram",
                    optional=True,
                    default=False,
                    tooltip="Unload ComfyUI's own models from VRAM before asking LM Studio, so a large LLM fits. "
                    "ComfyUI reloads them when the next node needs them.",
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
            ],
            hidden=[io.Hidden.unique_id, io.Hidden.prompt],
            # An output node runs on its own: the answer shows on the node even with nothing connected downstream.
            is_output_node=True,
        )

    @classmethod
    def check_lazy_status(cls, image=None, **kwargs) -> list[str]:
        return ["image"] if image is None and _image_linked(cls.hidden) else []

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
        send_all_images: bool = False,
        max_image_side: int = DEFAULT_MAX_SIDE,
        jpeg_quality: int = DEFAULT_JPEG_QUALITY,
        on_error: str = ON_ERROR_OUTPUT,
        system_prompt: str = "",
        reasoning: str = "auto",
        seed: int = 0,
        after_run: str = KEEP_LOADED,
        idle_ttl_minutes: int = 10,
        free_comfy_vram: bool = False,
    ) -> io.NodeOutput:
        node_id = str(cls.hidden.unique_id)
        server = PromptServer.instance
        client_id = server.client_id  # the browser tab that queued this prompt

        def send(chunk_type: str, content: str) -> None:
            server.send_sync(STREAM_EVENT, {"node_id": node_id, "chunk_type": chunk_type, "content": content}, client_id)

        progress_bar = ProgressBar(100, node_id=node_id)
        relay = StreamRelay(send, lambda fraction: progress_bar.update_absolute(round(fraction * 100), 100))
        send("clear", "")
        try:
            images = ()
            if image is not None:
                # JPEG encoding takes tens of milliseconds: keep it off the event loop.
                images = tuple(
                    await asyncio.to_thread(
                        encode_images, image, all_images=send_all_images, max_side=max_image_side, quality=jpeg_quality
                    )
                )
            request = ChatRequest(
                prompt=prompt,
                server_url=server_url,
                mode=ConnectionMode(connection_mode),
                model=model_id.strip(),
                system_prompt=system_prompt,
                images=images,
                temperature=temperature,
                max_tokens=max_tokens,
                reasoning=reasoning,
                seed=seed,
                ttl_seconds=idle_ttl_minutes * 60 if after_run == UNLOAD_WHEN_IDLE else None,
                api_token=api_token_from_env(),
            )
            if debug_mode:
                log.info("LM Studio request from node %s: %s", node_id, request.describe())
            if free_comfy_vram:
                send("status", "Freeing ComfyUI's VRAM")
                model_management.unload_all_models()
                model_management.soft_empty_cache()
            await _run_stream(request, relay)
        except model_management.InterruptProcessingException:
            send("done", "")
            raise
        except Exception as exc:  # noqa: BLE001 - the error policy decides; nothing is swallowed silently
            message = str(exc) if isinstance(exc, (LMStudioError, ValueError)) else f"{type(exc).__name__}: {exc}"
            if debug_mode or not isinstance(exc, (LMStudioError, ValueError)):
                log.exception("LM Studio Chat (node %s) failed", node_id)
            else:
                log.error("LM Studio Chat (node %s): %s", node_id, message)
            send("error", message)
            send("done", "")
            if on_error == ON_ERROR_RAISE:
                raise RuntimeError(message) from exc
            reasoning_text = "".join(relay.reasoning)
            return _output(f"Error: {message}", reasoning_text, f"error | mode: {connection_mode}", Stats(connection_mode))
        stats = relay.stats or Stats(mode=connection_mode)
        summary = stats.summary()
        send("stats", summary)
        if after_run == UNLOAD and stats.model:
            await _unload(request, stats.model, send)
        send("done", "")
        return _output("".join(relay.text), "".join(relay.reasoning), summary, stats)


async def _unload(request: ChatRequest, model: str, send: Send) -> None:
    """Hand LM Studio's VRAM back; the answer stands whatever happens here."""
    send("status", f"Unloading {model}")
    try:
        confirmed = await unload_model(request, model, confirm_seconds=UNLOAD_CONFIRM_SECONDS)
    except LMStudioError as exc:
        log.warning("LM Studio Chat: unloading %s failed: %s", model, exc)
        send("error", f"The answer is complete, but unloading the model failed: {exc}")
        return
    if confirmed:
        send("status", f"Unloaded {model}")
    else:
        log.warning("LM Studio Chat: %s was still loaded %.0f s after the unload request", model, UNLOAD_CONFIRM_SECONDS)
        send("status", f"Asked LM Studio to unload {model}; not confirmed within {UNLOAD_CONFIRM_SECONDS:.0f} s")


def _output(text: str, reasoning: str, summary: str, stats: Stats) -> io.NodeOutput:
    # The `ui` copy reaches the widget with the `executed` message, so a cached run still shows its answer.
    ui = {"lmstudio": [{"text": text, "reasoning": reasoning, "stats": summary}]}
    figures = (
        float(stats.tokens_per_second or 0.0),
        float(stats.time_to_first_token or 0.0),
        int(stats.input_tokens or 0),
        int(stats.output_tokens or 0),
        int(stats.reasoning_tokens or 0),
    )
    return io.NodeOutput(text, reasoning, summary, *figures, ui=ui)


@PromptServer.instance.routes.get("/lmstudio/models")
async def models_route(request: web.Request) -> web.Response:
    """The model picker's list for the node's server_url: loaded first, with vision marked."""
    server_url = request.query.get("server_url") or DEFAULT_SERVER_URL
    try:
        models = await list_models(server_url, api_token=api_token_from_env())
    except LMStudioError as exc:
        return web.json_response({"models": [], "error": str(exc)})
    return web.json_response({"models": [asdict(model) for model in models], "error": None})


class LMStudioExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [LMStudioStreamChat]


async def comfy_entrypoint() -> LMStudioExtension:
    return LMStudioExtension()
