"""A local stand-in for LM Studio's HTTP server speaking its real wire formats, with scriptable faults.

Native REST: `POST /api/v1/chat` streams named SSE events (`event: x` / `data: {...}`), ending in `chat.end`.
OpenAI-compatible: `POST /v1/chat/completions` streams `data: {...}` chunks up to `data: [DONE]`.
Formats follow shared/reference/lmstudio-facts.md sections 2 and 3 and LM Studio's streaming-events docs.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

MODEL = "qwen/qwen3-vl-4b"


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
    requests: list[Recorded] = field(default_factory=list)
    disconnected: asyncio.Event = field(default_factory=asyncio.Event)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/api/v1/chat", self._rest_chat)
        app.router.add_post("/v1/chat/completions", self._openai_chat)
        app.router.add_get("/api/v1/models", self._native_models)
        app.router.add_get("/v1/models", self._openai_models)
        return app

    def chat_requests(self) -> list[Recorded]:
        return [r for r in self.requests if r.method == "POST"]

    async def _record(self, request: web.Request) -> None:
        body = await request.json() if request.can_read_body else None
        self.requests.append(Recorded(request.method, request.path, body, dict(request.headers)))

    async def _native_models(self, request: web.Request) -> web.Response:
        await self._record(request)
        return web.json_response({"models": self.models})

    async def _openai_models(self, request: web.Request) -> web.Response:
        await self._record(request)
        return web.json_response({"data": [{"id": m["key"], "object": "model", "owned_by": "organization_owner"}
                                           for m in self.models], "object": "list"})

    def _frame(self, data: Any, event: str | None = None) -> str:
        le = self.line_end
        text = data if isinstance(data, str) else json.dumps(data)
        head = f"event: {event}{le}" if event else ""
        return f"{head}data: {text}{le}{le}" + (f": ping{le}{le}" if self.keepalive else "")

    async def _rest_chat(self, request: web.Request) -> web.StreamResponse:
        await self._record(request)
        return await self._stream(request, [self._frame(data, name) for name, data in self.rest_events])

    async def _openai_chat(self, request: web.Request) -> web.StreamResponse:
        await self._record(request)
        return await self._stream(request, [self._frame(chunk) for chunk in self.openai_chunks])

    async def _stream(self, request: web.Request, frames: list[str]) -> web.StreamResponse:
        if self.http_error:
            status, body = self.http_error
            return web.json_response(body, status=status)
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


def native_model(key: str, *, loaded: bool = False, vision: bool = True, kind: str = "llm") -> dict[str, Any]:
    """One entry of `GET /api/v1/models` (lmstudio-facts.md 2.5)."""
    return {
        "type": kind,
        "publisher": key.split("/")[0],
        "key": key,
        "display_name": key.split("/")[-1],
        "quantization": {"name": "Q4_K_M", "bits_per_weight": 4.8},
        "size_bytes": 3_000_000_000,
        "params_string": "4B",
        "loaded_instances": [{"id": key, "config": {"context_length": 8192}}] if loaded else [],
        "max_context_length": 32768,
        "format": "gguf",
        "capabilities": {"vision": vision, "trained_for_tool_use": True},
    }
