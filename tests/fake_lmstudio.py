"""A local stand-in for LM Studio's HTTP server speaking its real wire formats, with scriptable faults.

Native REST: `POST /api/v1/chat` streams named SSE events (`event: x` / `data: {...}`), ending in `chat.end`.
OpenAI-compatible: `POST /v1/chat/completions` streams `data: {...}` chunks up to `data: [DONE]`.
SDK: `GET /lmstudio-greeting` and the websocket namespaces (`/llm`, `/files`, `/system`, ...) with the auth
handshake, `rpcCall`/`rpcResult` and `channelCreate`/`channelSend`/`channelClose`, as the installed `lmstudio`
package sends and parses them (`json_api.py`, `async_api.py`, `_ws_impl.py`).
Formats follow shared/reference/lmstudio-facts.md sections 1 to 3 and LM Studio's streaming-events docs.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

MODEL = "qwen/qwen3-vl-4b"
# LM Studio takes request bodies and SDK messages far larger than aiohttp's 1 MB and 4 MB defaults: a 1024 x 1024 PNG
# alone is 3-4 MB as base64.
LARGEST_BODY = 64 * 1024 * 1024
# What nginx answers a body over its client_max_body_size (1 MB unless set): a web page, no JSON.
NGINX_413 = ("<html>\r\n<head><title>413 Request Entity Too Large</title></head>\r\n<body>\r\n<center><h1>413 "
             "Request Entity Too Large</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n")


def rest_script(
    reasoning: list[str] = ("Let me", " look."),
    text: list[str] = ("A red", " square."),
    *,
    model: str = MODEL,
    load: bool = False,
    stats: dict[str, Any] | None = None,
) -> list[tuple[str, dict[str, Any]]]:
    """The events of one native `/api/v1/chat` stream, in LM Studio's order."""
    events: list[tuple[str, dict[str, Any]]] = [("chat.start", {"model_instance_id": model})]
    if load:
        events += [("model_load.start", {"model_instance_id": model})]
        events += [("model_load.progress", {"model_instance_id": model, "progress": p}) for p in (0.25, 0.5, 0.75)]
        events += [("model_load.end", {"model_instance_id": model, "load_time_seconds": 1.5})]
    events += [("prompt_processing.start", {}), ("prompt_processing.progress", {"progress": 0.5})]
    events += [("prompt_processing.end", {})]
    if reasoning:
        events += [("reasoning.start", {})] + [("reasoning.delta", {"content": r}) for r in reasoning]
        events += [("reasoning.end", {})]
    events += [("message.start", {})] + [("message.delta", {"content": t}) for t in text] + [("message.end", {})]
    result = {
        "model_instance_id": model,
        "output": [{"type": "reasoning", "content": "".join(reasoning)}, {"type": "message", "content": "".join(text)}],
        "stats": stats
        or {
            "input_tokens": 17,
            "total_output_tokens": 50,
            "reasoning_output_tokens": 12,
            "tokens_per_second": 51.04,
            "time_to_first_token_seconds": 0.812,
        },
    }
    events.append(("chat.end", {"result": result}))
    return [(name, {"type": name, **data}) for name, data in events]


def openai_chunk(delta: dict[str, Any], *, model: str = MODEL, finish: str | None = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-abcdefghijklmnopqrstu",
        "object": "chat.completion.chunk",
        "created": 1763700000,
        "model": model,
        "system_fingerprint": model,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }


def openai_script(
    content: list[str] = ("A red", " square."),
    *,
    reasoning: list[str] = (),
    reasoning_field: str = "reasoning_content",
    usage: bool = True,
    model: str = MODEL,
) -> list[dict[str, Any] | str]:
    """The chunks of one `/v1/chat/completions` stream; `reasoning_field` is `reasoning_content` or `reasoning`."""
    chunks: list[dict[str, Any] | str] = []
    chunks += [openai_chunk({"role": "assistant", reasoning_field: r}, model=model) for r in reasoning]
    chunks += [openai_chunk({"role": "assistant", "content": c}, model=model) for c in content]
    chunks.append(openai_chunk({}, model=model, finish="stop"))
    if usage:
        chunks.append(
            {
                "id": "chatcmpl-abcdefghijklmnopqrstu",
                "object": "chat.completion.chunk",
                "created": 1763700000,
                "model": model,
                "choices": [],
                "usage": {"prompt_tokens": 17, "completion_tokens": 40, "total_tokens": 57},
            }
        )
    chunks.append("[DONE]")
    return chunks


THOUGHT_ANSWER = ["An", " answer."]


def think(words: int, thinking: bool, max_tokens: Any) -> tuple[list[str], list[str], bool]:
    """A reasoning model, one token a word: `words` of reasoning (none when told not to think), then its answer,
    cut at `max_tokens`; the reasoning, the answer, and whether it was cut."""
    reasoning = [f" thought {n}" for n in range(words)] if thinking else []
    tokens = reasoning + THOUGHT_ANSWER
    limit = max_tokens if isinstance(max_tokens, int) and max_tokens > 0 else len(tokens)
    return tokens[:limit][: len(reasoning)], tokens[:limit][len(reasoning):], limit < len(tokens)


@dataclass
class Recorded:
    method: str
    path: str
    body: Any
    headers: dict[str, str]


@dataclass
class FakeLMStudio:
    url: str = ""
    rest_events: list[tuple[str, dict[str, Any]]] = field(default_factory=rest_script)
    openai_chunks: list[dict[str, Any] | str] = field(default_factory=openai_script)
    chunk_size: int | None = None  # split the byte stream into pieces this long (frames across reads)
    line_end: str = "\n"
    keepalive: bool = False  # a `: ping` comment between frames
    event_delay: float = 0.0  # seconds between frames
    first_delay: float = 0.0  # seconds after the headers, before the first byte
    drop_after_frames: int | None = None  # abort the connection after this many frames
    http_error: tuple[int, Any] | None = None  # answer chat requests with this status and JSON body
    stream_json_error: Any = None  # answer chat requests with 200 application/json (LM Studio's unknown endpoint)
    models: list[dict[str, Any]] = field(default_factory=lambda: [native_model(MODEL, loaded=True)])
    native_api: bool = True  # False: LM Studio before 0.4 (its 200 "Unexpected endpoint" answer for /api/v1/*)
    lmstudio: bool = True  # False: another OpenAI-compatible server (no greeting, no native API: plain 404s)
    input_modalities: list[str] | None = None  # llama.cpp's `architecture.input_modalities` in /v1/models
    unload_delay: float = 0.0  # seconds an unloaded model stays listed (LM Studio freeing VRAM)
    # LM Studio's `parallel`: predictions beyond it wait inside the server, with nothing on the wire, for a slot.
    parallel: int = 4
    in_flight: int = 0
    peak_in_flight: int = 0
    queued_inside: int = 0  # predictions sent but waiting for one of the `parallel` slots
    # A server (or router) that refuses instead of queueing when its slots are full: (status, headers, body), as
    # LiteLLM's proxy, SGLang's gateway and Ollama do. `refused` counts the refusals.
    refuse_when_full: tuple[int, dict[str, str], Any] | None = None
    full: bool = False  # with `refuse_when_full`: every slot is taken (by other clients), so every request is refused
    refused: int = 0
    peak_queued_inside: int = 0
    fail_prompts: dict[str, int] = field(default_factory=dict)  # prompt -> times to answer HTTP 500 first
    echo: bool = False  # answer "Answer to <prompt>" in every dialect, so each answer can be paired with its prompt
    # Answer "An image of W x H" (the last image's size) in every dialect, so each answer can be paired with its image.
    describe_images: bool = False
    answers: dict[str, str] = field(default_factory=dict)  # prompt -> the answer to give it (OpenAI-compatible)
    # A reasoning model (Qwen3 and its like) in every dialect: this many words of reasoning, then "An answer.", cut
    # at the request's max tokens. It stops thinking when told so as each API says it: REST `reasoning: off`;
    # OpenAI-compatible `reasoning_effort: none` or `chat_template_kwargs.enable_thinking: false`; the SDK cannot.
    thinker: int | None = None
    delay_for: dict[str, float] = field(default_factory=dict)  # prompt -> seconds before its first frame
    held: int | None = None  # predictions beyond this many wait in silence until `held` is set back to None
    stored: set[str] = field(default_factory=set)  # native REST turns kept with `store` (LM Studio forgets on restart)
    requests: list[Recorded] = field(default_factory=list)
    predictions: list[str] = field(default_factory=list)  # the prompt of every prediction asked for, every dialect
    disconnected: asyncio.Event = field(default_factory=asyncio.Event)
    # A proxy in front (nginx and its client_max_body_size) that refuses a larger request body with HTTP 413, before
    # it reaches the server; `too_large` counts the refusals.
    max_body: int | None = None
    too_large: int = 0
    # SDK (websocket) side
    sdk: FakeSDK = field(default_factory=lambda: FakeSDK())

    def app(self) -> web.Application:
        self._slots = asyncio.Semaphore(self.parallel)
        self.sdk.slot = self.slot
        self.sdk.owner = self
        app = web.Application(client_max_size=LARGEST_BODY)
        app.on_shutdown.append(self.sdk.drop_all)  # LM Studio quitting drops its websockets at once
        if not self.lmstudio:
            app.router.add_post("/v1/chat/completions", self._openai_chat)
            app.router.add_get("/v1/models", self._openai_models)
            return app
        app.router.add_post("/api/v1/chat", self._rest_chat)
        app.router.add_post("/v1/chat/completions", self._openai_chat)
        app.router.add_get("/api/v1/models", self._native_models)
        app.router.add_post("/api/v1/models/unload", self._unload)
        app.router.add_get("/v1/models", self._openai_models)
        app.router.add_get("/lmstudio-greeting", self.sdk.greeting)
        app.router.add_get("/{namespace}", self.sdk.websocket)
        return app

    def chat_requests(self) -> list[Recorded]:
        return [r for r in self.requests if r.method == "POST"]

    async def _record(self, request: web.Request) -> None:
        if self.max_body is not None and (request.content_length or 0) > self.max_body:
            self.too_large += 1
            raise web.HTTPRequestEntityTooLarge(self.max_body, request.content_length or 0, text=NGINX_413,
                                                content_type="text/html")
        body = await request.json() if request.can_read_body else None
        self.requests.append(Recorded(request.method, request.path, body, dict(request.headers)))

    def _unexpected(self, request: web.Request) -> web.Response:
        return web.json_response({"error": f"Unexpected endpoint or method. ({request.method} {request.path}). "
                                           "Returning 200 anyway"})

    async def _native_models(self, request: web.Request) -> web.Response:
        await self._record(request)
        if not self.native_api:
            return self._unexpected(request)
        return web.json_response({"models": self.models})

    async def _unload(self, request: web.Request) -> web.Response:
        await self._record(request)
        if not self.native_api:
            return self._unexpected(request)
        instance_id = (await request.json()).get("instance_id")
        model = next((m for m in self.models if any(i["id"] == instance_id for i in m["loaded_instances"])), None)
        if model is None:
            return web.json_response({"error": {"type": "model_not_found",
                                                "message": f"No loaded model instance '{instance_id}'"}}, status=404)

        def forget() -> None:
            model["loaded_instances"] = [i for i in model["loaded_instances"] if i["id"] != instance_id]

        asyncio.get_running_loop().call_later(self.unload_delay, forget)
        return web.json_response({"instance_id": instance_id})

    async def _openai_models(self, request: web.Request) -> web.Response:
        await self._record(request)
        architecture = {"architecture": {"input_modalities": self.input_modalities, "output_modalities": ["text"]}}
        return web.json_response({"data": [{"id": m["key"], "object": "model", "owned_by": "organization_owner"}
                                           | (architecture if self.input_modalities else {})
                                           for m in self.models], "object": "list"})

    def _frame(self, data: Any, event: str | None = None) -> str:
        le = self.line_end
        text = data if isinstance(data, str) else json.dumps(data)
        head = f"event: {event}{le}" if event else ""
        return f"{head}data: {text}{le}{le}" + (f": ping{le}{le}" if self.keepalive else "")

    async def _rest_chat(self, request: web.Request) -> web.StreamResponse:
        await self._record(request)
        if not self.native_api:
            return self._unexpected(request)
        body = self.requests[-1].body
        self._load_for(body)
        previous = body.get("previous_response_id")
        if previous is not None and previous not in self.stored:
            # As LM Studio words it when a stored turn is gone (lmstudio-bug-tracker#1188).
            return web.json_response({"error": {"type": "invalid_request", "message": f"Prediction history node "
                                                f"with id '{previous}' not found while attempting to build chat "
                                                "history chain that includes this node."}}, status=404)
        events = self.rest_events
        if self.echo:
            events = rest_script(reasoning=[], text=["Answer to ", prompt_of(body)])
        if self.describe_images:
            events = rest_script(reasoning=[], text=["An image of ", size_text(images_of(body))])
        if self.thinker is not None:
            reasoning, text, _ = think(self.thinker, body.get("reasoning") != "off", body.get("max_output_tokens"))
            events = rest_script(reasoning=reasoning, text=text, stats={
                "input_tokens": 17, "total_output_tokens": len(reasoning) + len(text),
                "reasoning_output_tokens": len(reasoning), "tokens_per_second": 50.0,
                "time_to_first_token_seconds": 0.2})
        if body.get("store", True):  # LM Studio's default is to store, with a `response_id` to continue from
            response_id = f"resp_{len(self.stored) + 1:048x}"
            self.stored.add(response_id)
            name, end = events[-1]
            events = [*events[:-1], (name, {**end, "result": {**end["result"], "response_id": response_id}})]
        return await self._stream(request, [self._frame(data, name) for name, data in events])

    def _load_for(self, body: Any) -> None:
        """A native chat for a model that is not loaded loads it (JIT), with the request's `context_length`."""
        model = next((m for m in self.models if isinstance(body, dict) and m["key"] == body.get("model")), None)
        if model is not None and not model["loaded_instances"]:
            context = body.get("context_length") or 4096
            model["loaded_instances"] = [{"id": model["key"], "config": {"context_length": context, "parallel": 4}}]

    async def _openai_chat(self, request: web.Request) -> web.StreamResponse:
        await self._record(request)
        chunks = self.openai_chunks
        prompt = prompt_of(self.requests[-1].body)
        if self.echo:
            chunks = openai_script(["Answer to ", prompt])
        if self.describe_images:
            chunks = openai_script(["An image of ", size_text(images_of(self.requests[-1].body))])
        if prompt in self.answers:
            chunks = openai_script([self.answers[prompt]])
        if self.thinker is not None:
            chunks = self._thinking_chunks(self.requests[-1].body)
        return await self._stream(request, [self._frame(chunk) for chunk in chunks])

    def _thinking_chunks(self, body: dict[str, Any]) -> list[dict[str, Any] | str]:
        thinking = (body.get("reasoning_effort") != "none"
                    and (body.get("chat_template_kwargs") or {}).get("enable_thinking") is not False)
        reasoning, text, cut = think(self.thinker or 0, thinking, body.get("max_tokens"))
        chunks = openai_script(text, reasoning=reasoning, usage=False)
        if cut:  # the last content chunk says why it stopped: "length", as OpenAI words it
            chunks[-2] = openai_chunk({}, finish="length")
        return chunks

    @contextlib.asynccontextmanager
    async def slot(self):
        """One of the server's `parallel` prediction slots, waited for in silence."""
        self.queued_inside += 1
        self.peak_queued_inside = max(self.peak_queued_inside, self.queued_inside)
        try:
            await self._slots.acquire()
        finally:
            self.queued_inside -= 1
        try:
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
            yield
        finally:
            self.in_flight -= 1
            self._slots.release()

    async def hold(self) -> None:
        """Past `held` predictions, wait (sending nothing) until the test lets them go."""
        if self.held is not None and len(self.predictions) > self.held:
            while self.held is not None:
                await asyncio.sleep(0.02)

    def scripted_failure(self, prompt: str) -> bool:
        """Record a prediction for `prompt`; whether it is one that `fail_prompts` says must fail (counting it down)."""
        self.predictions.append(prompt)
        if self.fail_prompts.get(prompt, 0) > 0:
            self.fail_prompts[prompt] -= 1
            return True
        return False

    async def _stream(self, request: web.Request, frames: list[str]) -> web.StreamResponse:
        if self.http_error:
            status, body = self.http_error
            return web.json_response(body, status=status)
        if self.refuse_when_full is not None and (self.full or self._slots.locked()):
            self.refused += 1
            status, headers, body = self.refuse_when_full
            return web.json_response(body, status=status, headers=headers)
        if self.scripted_failure(prompt_of(self.requests[-1].body)):
            return web.json_response({"error": {"message": "Engine protocol predict request returned 500: crash"}},
                                     status=500)
        try:
            await self.hold()
            async with self.slot():
                await asyncio.sleep(self.delay_for.get(prompt_of(self.requests[-1].body), 0.0))
                return await self._frames(request, frames)
        except asyncio.CancelledError:
            self.disconnected.set()  # the client went away while queued
            raise

    async def _frames(self, request: web.Request, frames: list[str]) -> web.StreamResponse:
        if self.stream_json_error is not None:
            return web.json_response(self.stream_json_error, status=200)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        try:
            if self.first_delay:
                await asyncio.sleep(self.first_delay)
            for index, frame in enumerate(frames):
                if self.drop_after_frames is not None and index >= self.drop_after_frames:
                    request.transport.abort()  # a crash mid-stream: no final chunk, no clean close
                    return response
                data = frame.encode("utf-8")
                size = self.chunk_size or len(data)
                for start in range(0, len(data), size):
                    await response.write(data[start : start + size])
                if self.event_delay:
                    await asyncio.sleep(self.event_delay)
            await response.write_eof()
        except (ConnectionResetError, asyncio.CancelledError):
            self.disconnected.set()  # the client went away: LM Studio would stop generating here
            raise
        return response


async def serve(fake: FakeLMStudio) -> web.AppRunner:
    """Start `fake` on a free loopback port in the running loop; `fake.url` is set. (Tests on one loop per test use
    pytest-aiohttp's `aiohttp_server` instead.)"""
    runner = web.AppRunner(fake.app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    fake.url = f"http://127.0.0.1:{port}"
    return runner


def images_of(body: Any) -> list[bytes]:
    """The image bytes a native REST or OpenAI-compatible chat body carries, in order."""
    if not isinstance(body, dict):
        return []
    if isinstance(body.get("input"), list):
        urls = [item.get("data_url", "") for item in body["input"] if item.get("type") == "image"]
    else:
        content = (body.get("messages") or [{}])[-1].get("content", "")
        urls = [p["image_url"]["url"] for p in content if isinstance(p, dict) and p.get("type") == "image_url"] \
            if isinstance(content, list) else []
    return [base64.b64decode(url.split(",", 1)[1]) for url in urls if "," in url]


def size_text(images: list[bytes]) -> str:
    """'W x H' of the last image, or 'no image'."""
    if not images:
        return "no image"
    from PIL import Image

    with Image.open(io.BytesIO(images[-1])) as image:
        return f"{image.width} x {image.height}"


def prompt_of(body: Any) -> str:
    """The user's text in a native REST or OpenAI-compatible chat body."""
    if not isinstance(body, dict):
        return ""
    chat_input = body.get("input")
    if chat_input is None:
        content = (body.get("messages") or [{}])[-1].get("content", "")
        chat_input = content if isinstance(content, str) else [{"content": p.get("text", "")} for p in content]
    if isinstance(chat_input, str):
        return chat_input
    return next((str(item.get("content", "")) for item in chat_input if item.get("content")), "")


def native_model(key: str, *, loaded: bool = False, vision: bool = True, kind: str = "llm",
                 parallel: int | None = 4) -> dict[str, Any]:
    """One entry of `GET /api/v1/models` (lmstudio-facts.md 2.5)."""
    return {
        "type": kind,
        "publisher": key.split("/")[0],
        "key": key,
        "display_name": key.split("/")[-1],
        "quantization": {"name": "Q4_K_M", "bits_per_weight": 4.8},
        "size_bytes": 3_000_000_000,
        "params_string": "4B",
        "loaded_instances": [{"id": key, "config": {"context_length": 8192} | ({"parallel": parallel} if parallel
                                                                             else {})}] if loaded else [],
        "max_context_length": 32768,
        "format": "gguf",
        "capabilities": {"vision": vision, "trained_for_tool_use": True},
    }


def sdk_fragment(content: str, reasoning_type: str = "none", tokens: int = 1) -> dict[str, Any]:
    return {"content": content, "tokensCount": tokens, "containsDrafted": False, "reasoningType": reasoning_type,
            "isStructural": False}


def sdk_script(reasoning: list[str] = ("Let me", " look."), text: list[str] = ("A red", " square.")) -> list[dict]:
    """Fragments of one `predict` channel: tags and reasoning, then the answer."""
    fragments = []
    if reasoning:
        fragments.append(sdk_fragment("<think>", "reasoningStartTag"))
        fragments += [sdk_fragment(r, "reasoning") for r in reasoning]
        fragments.append(sdk_fragment("</think>", "reasoningEndTag"))
    return fragments + [sdk_fragment(t) for t in text]


def sdk_instance_info(key: str, *, vision: bool = True, context: int = 8192) -> dict[str, Any]:
    """`LlmInstanceInfo` on the wire (`_sdk_models/__init__.py:6626-6642`)."""
    return {"type": "llm", "modelKey": key, "format": "gguf", "displayName": key.split("/")[-1],
            "path": f"{key}/model.gguf", "sizeBytes": 3_000_000_000, "identifier": key,
            "instanceReference": f"ref-{key}", "vision": vision, "trainedForToolUse": False,
            "maxContextLength": 32768, "contextLength": context}


def stack_fields(stack: dict[str, Any] | None) -> dict[str, Any]:
    """An SDK config stack (`predictionConfigStack`, `loadConfigStack`) as {key: value}, later layers winning."""
    return {f["key"]: f["value"] for layer in (stack or {}).get("layers", []) for f in layer["config"]["fields"]}


def sdk_error(title: str, code: str | None = None) -> dict[str, Any]:
    """A `SerializedLMSExtendedError`."""
    error: dict[str, Any] = {"title": title, "stack": "Error: ..."}
    if code:
        error["displayData"] = {"code": code}
    return error


@dataclass
class FakeSDK:
    """The websocket API the `lmstudio` SDK speaks, with scriptable faults."""

    loaded: list[str] = field(default_factory=lambda: [MODEL])
    text_only: set[str] = field(default_factory=set)  # models without vision
    contexts: dict[str, int] = field(default_factory=dict)  # a loaded model's context length (8192 if not here)
    downloaded: list[str] = field(default_factory=lambda: [MODEL, "google/gemma-3-4b"])
    fragments: list[dict[str, Any]] = field(default_factory=sdk_script)
    prompt_progress: list[float] = field(default_factory=lambda: [0.0, 0.5, 1.0])
    fragment_delay: float = 0.0
    load_steps: list[float] = field(default_factory=lambda: [0.25, 0.5, 0.75])
    load_delay: float = 0.0
    prompt_delay: float = 0.0  # seconds between prompt-processing progress messages
    stats: dict[str, Any] = field(default_factory=lambda: {
        "stopReason": "eosFound", "tokensPerSecond": 42.5, "timeToFirstTokenSec": 0.31, "promptTokensCount": 21,
        "predictedTokensCount": 6, "totalTokensCount": 27, "numGpuLayers": 0, "totalTimeSec": 0.5})
    predict_error: dict[str, Any] | None = None  # channelError on `predict` after the fragments
    drop_after_fragments: int | None = None  # close the websocket mid-stream
    refuse_websocket: bool = False  # answer the upgrade with HTTP 403
    required_token: str | None = None  # "sk-lm-xxxxxxxx:yyyy..." the server insists on
    received: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # (namespace, message)
    auth: list[dict[str, Any]] = field(default_factory=list)
    open_sockets: int = 0
    connections: int = 0  # websockets ever accepted (a client opens five)
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    slot: Any = None  # the server's prediction slots, shared with the HTTP side (set by FakeLMStudio.app)
    owner: Any = None  # the FakeLMStudio whose `echo`, `delay_for` and `fail_prompts` apply here too

    sockets: set = field(default_factory=set)

    async def drop_all(self, _app: web.Application) -> None:
        for ws in list(self.sockets):
            await ws.close(code=1001)

    async def greeting(self, request: web.Request) -> web.Response:
        return web.json_response({"lmstudio": True})

    def sent(self, kind: str, endpoint: str | None = None) -> list[dict[str, Any]]:
        return [m for _, m in self.received if m.get("type") == kind and (endpoint is None or
                                                                        m.get("endpoint") == endpoint)]

    async def websocket(self, request: web.Request) -> web.StreamResponse:
        namespace = request.match_info["namespace"]
        if self.refuse_websocket:
            return web.Response(status=403, text="Forbidden")
        ws = web.WebSocketResponse(max_msg_size=LARGEST_BODY)
        await ws.prepare(request)
        self.open_sockets += 1
        self.connections += 1
        self.sockets.add(ws)
        channels: dict[int, asyncio.Event] = {}
        tasks: set[asyncio.Task] = set()
        try:
            auth = await ws.receive_json()
            self.auth.append(auth)
            if self.required_token:
                # sk-lm-<clientIdentifier>:<clientPasskey> (lmstudio json_api.py `_LMS_API_TOKEN_REGEX`)
                ident, _, key = self.required_token.removeprefix("sk-lm-").partition(":")
                if (auth.get("clientIdentifier"), auth.get("clientPasskey")) != (ident, key):
                    await ws.send_json({"success": False, "error": "Invalid passkey for client identifier"})
                    await ws.close()
                    return ws
            await ws.send_json({"success": True})
            async for raw in ws:
                if raw.type != WSMsgType.TEXT:
                    break
                message = json.loads(raw.data)
                self.received.append((namespace, message))
                kind = message.get("type")
                if kind == "rpcCall":
                    await ws.send_json(self._rpc(message))
                elif kind == "channelCreate":
                    cancel = channels[message["channelId"]] = asyncio.Event()
                    task = asyncio.create_task(self._channel(ws, message, cancel))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                elif kind == "channelSend" and message["message"].get("type") == "cancel":
                    self.cancelled.set()
                    channels[message["channelId"]].set()
        finally:
            for task in tasks:
                task.cancel()
            self.sockets.discard(ws)
            self.open_sockets -= 1
        return ws

    def info(self, key: str) -> dict[str, Any]:
        return sdk_instance_info(key, vision=key not in self.text_only, context=self.contexts.get(key, 8192))

    def _rpc(self, message: dict[str, Any]) -> dict[str, Any]:
        call, endpoint, param = message["callId"], message["endpoint"], message.get("parameter") or {}
        if endpoint == "listLoaded":
            result: Any = [sdk_instance_info(key) for key in self.loaded]
        elif endpoint == "listDownloadedModels":
            result = [{k: v for k, v in sdk_instance_info(key).items() if k not in ("identifier", "instanceReference",
                                                                                   "contextLength")}
                      for key in self.downloaded]
        elif endpoint == "uploadFileBase64":
            size = len(param.get("contentBase64", "")) * 3 // 4
            result = {"identifier": f"file-{len(self.sent('rpcCall', 'uploadFileBase64'))}", "fileType": "image",
                      "sizeBytes": size}
        elif endpoint == "getModelInfo":
            key = _identifier(param) or self.loaded[0]
            result = self.info(key)
        elif endpoint == "unloadModel":
            key = _identifier(param)
            if key not in self.loaded:
                return {"type": "rpcError", "callId": call, "error": sdk_error(
                    "No model found that fits the query.", "generic.noModelMatchingQuery")}
            self.loaded.remove(key)
            return {"type": "rpcResult", "callId": call}
        else:
            return {"type": "rpcError", "callId": call, "error": sdk_error(f"Unknown endpoint {endpoint}")}
        return {"type": "rpcResult", "callId": call, "result": result}

    async def _channel(self, ws: web.WebSocketResponse, message: dict[str, Any], cancel: asyncio.Event) -> None:
        channel = message["channelId"]

        async def send(payload: dict[str, Any]) -> None:
            await ws.send_json({"type": "channelSend", "channelId": channel, "message": payload})

        endpoint, params = message["endpoint"], message.get("creationParameter") or {}
        if endpoint == "getOrLoad":
            key = params.get("identifier")
            if key in self.loaded:
                await send({"type": "alreadyLoaded", "info": self.info(key)})
            elif key in self.downloaded:
                await send({"type": "startLoading", "identifier": key, "fullPath": f"{key}/model.gguf"})
                for step in self.load_steps:
                    await asyncio.sleep(self.load_delay)
                    await send({"type": "loadProgress", "progress": step})
                self.loaded.append(key)
                # The load config counts here only, as in LM Studio: a loaded model keeps its own.
                if length := stack_fields(params.get("loadConfigStack")).get("llm.load.contextLength"):
                    self.contexts[key] = length
                await send({"type": "loadSuccess", "info": self.info(key)})
            else:
                await ws.send_json({"type": "channelError", "channelId": channel,
                                    "error": sdk_error(f"Cannot find a model with path \"{key}\"",
                                                       "generic.pathNotFound")})
                return
        elif endpoint == "predict":
            await self._predict(ws, channel, params, send, cancel)
            if ws.closed:
                return
        await ws.send_json({"type": "channelClose", "channelId": channel})

    async def _predict(self, ws, channel: int, params: dict[str, Any], send, cancel: asyncio.Event) -> None:
        spec = params.get("modelSpecifier") or {}
        wanted = spec.get("query", {}).get("identifier") if spec.get("type") == "query" else spec.get(
            "instanceReference", "").removeprefix("ref-")
        if wanted not in self.loaded:
            await ws.send_json({"type": "channelError", "channelId": channel,
                                "error": sdk_error("No model found that fits the query.",
                                                   "generic.noModelMatchingQuery")})
            return
        messages = (params.get("history") or {}).get("messages") or [{}]
        prompt = next((p.get("text", "") for p in messages[-1].get("content", []) if p.get("type") == "text"), "")
        if self.owner.scripted_failure(prompt):
            await ws.send_json({"type": "channelError", "channelId": channel,
                                "error": sdk_error("Engine protocol predict request returned 500: crash")})
            return
        fragments = [sdk_fragment("Answer to "), sdk_fragment(prompt)] if self.owner.echo else self.fragments
        if self.owner.describe_images:
            uploads = {f"file-{n}": u["parameter"]["contentBase64"]
                       for n, u in enumerate(self.sent("rpcCall", "uploadFileBase64"), 1)}
            files = [p.get("identifier") for p in messages[-1].get("content", []) if p.get("type") == "file"]
            images = [base64.b64decode(uploads[f]) for f in files if f in uploads]
            fragments = [sdk_fragment("An image of "), sdk_fragment(size_text(images))]
        stop = "eosFound"
        if self.owner.thinker is not None:  # the SDK has no way to say "do not think"
            limit = stack_fields(params.get("predictionConfigStack")).get("llm.prediction.maxPredictedTokens") or {}
            reasoning, text, cut = think(self.owner.thinker, True, limit.get("value") if limit.get("checked") else None)
            fragments = sdk_script(reasoning, text)
            stop = "maxPredictedTokensReached" if cut else stop
        async with self.slot():
            await asyncio.sleep(self.owner.delay_for.get(prompt, 0.0))
            await self._generate(ws, channel, send, cancel, fragments, stop)

    async def _generate(self, ws, channel: int, send, cancel: asyncio.Event, fragments: list[dict],
                        stop: str = "eosFound") -> None:
        for progress in self.prompt_progress:
            await send({"type": "promptProcessingProgress", "progress": progress, "details": {}})
            if self.prompt_delay and not cancel.is_set():
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(cancel.wait(), self.prompt_delay)
        for index, fragment in enumerate(fragments):
            if self.drop_after_fragments is not None and index >= self.drop_after_fragments:
                await ws.close()
                return
            if cancel.is_set():
                stop = "userStopped"
                break
            await send({"type": "fragment", "fragment": fragment})
            if self.fragment_delay:
                try:
                    await asyncio.wait_for(cancel.wait(), self.fragment_delay)
                except asyncio.TimeoutError:
                    pass
        if self.predict_error:
            await ws.send_json({"type": "channelError", "channelId": channel, "error": self.predict_error})
            return
        await send({"type": "success", "stats": {**self.stats, "stopReason": stop},
                    "modelInfo": sdk_instance_info(self.loaded[0]),
                    "loadModelConfig": {"fields": []}, "predictionConfig": {"fields": []}})


def _identifier(value: Any) -> str | None:
    """The first `identifier` (or `instanceReference`) anywhere in an SDK parameter."""
    if isinstance(value, dict):
        if isinstance(value.get("identifier"), str):
            return value["identifier"]
        if isinstance(value.get("instanceReference"), str):
            return value["instanceReference"].removeprefix("ref-")
        for item in value.values():
            if found := _identifier(item):
                return found
    return None
