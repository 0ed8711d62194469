"""Streaming chat client for LM Studio: one entry point, one small backend per connection mode.

`stream_chat(request)` yields typed events (text and reasoning deltas, progress, final statistics). It owns its
connection for the length of the call: ComfyUI runs every prompt in a fresh event loop, so nothing is cached
across calls. Cancelling the task that iterates it, or closing the iterator, closes the connection, which is what
makes LM Studio stop generating. No ComfyUI imports: the terminal command uses it too.
"""

from __future__ import annotations

import asyncio
import codecs
import json
import logging
import os
import re
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import aclosing
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Literal

import aiohttp

from .utils import jpeg_data_uri, normalize_server_url

log = logging.getLogger("lmstudio_stream")

DEFAULT_SERVER_URL = "http://127.0.0.1:1234"
DEFAULT_CONNECT_TIMEOUT = 10.0
# Idle, not total: a big model loading from disk can keep the first byte waiting for minutes, and the native
# REST stream only reports load progress when the request itself triggers the load.
DEFAULT_IDLE_TIMEOUT = 300.0
API_TOKEN_ENV_VARS = ("LMSTUDIO_API_TOKEN", "LM_API_TOKEN")


class ConnectionMode(str, Enum):
    SDK = "SDK"
    REST = "REST API"
    OPENAI = "OpenAI-compatible"


@dataclass(frozen=True)
class ChatRequest:
    """What to ask, of which server and model. `images` are JPEG bytes (see `utils.encode_images`)."""

    prompt: str
    server_url: str = DEFAULT_SERVER_URL
    mode: ConnectionMode = ConnectionMode.REST
    model: str = ""
    system_prompt: str = ""
    images: tuple[bytes, ...] = ()
    temperature: float = 0.7
    max_tokens: int = -1
    reasoning: str = "auto"  # native REST `reasoning`: off | low | medium | high | on; auto sends nothing
    seed: int | None = None  # OpenAI-compatible `seed`; the other APIs have no per-request seed
    ttl_seconds: int | None = None  # idle TTL for a model this request makes LM Studio load (SDK, OpenAI)
    api_token: str | None = field(default=None, repr=False)
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT

    def describe(self) -> dict[str, Any]:
        """A loggable summary: sizes instead of image data, never the token."""
        return {
            "mode": self.mode.value,
            "server_url": self.server_url,
            "model": self.model or "(loaded model)",
            "prompt_chars": len(self.prompt),
            "system_prompt_chars": len(self.system_prompt),
            "images": [f"{len(jpeg)} bytes JPEG" for jpeg in self.images],
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "reasoning": self.reasoning,
            "seed": self.seed,
            "ttl_seconds": self.ttl_seconds,
            "api_token": "set" if self.api_token else "none",
        }


def api_token_from_env() -> str | None:
    """The LM Studio API token from the environment: never from a widget, workflows are shared as PNGs."""
    for name in API_TOKEN_ENV_VARS:
        if token := os.environ.get(name, "").strip():
            return token
    return None


# --------------------------------------------------------------------------------------------------- events


@dataclass(frozen=True)
class TextDelta:
    text: str


@dataclass(frozen=True)
class ReasoningDelta:
    text: str


@dataclass(frozen=True)
class Progress:
    stage: Literal["model_load", "prompt_processing"]
    fraction: float


@dataclass(frozen=True)
class Stats:
    """Final statistics. A field a mode cannot know stays None and is left out of `summary()`."""

    mode: str
    model: str | None = None
    tokens_per_second: float | None = None
    time_to_first_token: float | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    reasoning_tokens: int | None = None
    stop_reason: str | None = None

    def summary(self) -> str:
        """One line; a figure the mode could not know reads `n/a`, never an invented number."""
        reasoning = f" (reasoning {self.reasoning_tokens})" if self.reasoning_tokens is not None else ""
        parts = [
            f"tokens/s: {_figure(self.tokens_per_second, '.1f')}",
            f"TTFT: {_figure(self.time_to_first_token, '.2f', ' s')}",
            f"input tokens: {_figure(self.input_tokens)}",
            f"output tokens: {_figure(self.output_tokens)}{reasoning}",
        ]
        if self.stop_reason:
            parts.append(f"stop: {self.stop_reason}")
        parts.append(f"mode: {self.mode}")
        if self.model:
            parts.append(f"model: {self.model}")
        return " | ".join(parts)


def _figure(value: float | None, spec: str = "", unit: str = "") -> str:
    return "n/a" if value is None else f"{value:{spec}}{unit}"


@dataclass(frozen=True)
class Finished:
    stats: Stats


StreamEvent = TextDelta | ReasoningDelta | Progress | Finished


# --------------------------------------------------------------------------------------------------- errors


class LMStudioError(Exception):
    """A failure explained for a person: what went wrong, where, and what to try."""


def connection_failed(url: str, detail: str = "") -> LMStudioError:
    why = f" ({detail})" if detail else ""
    return LMStudioError(
        f"LM Studio connection failed. Tried {url}{why}. Is LM Studio running with its local server started "
        "(Developer tab > Start Server, or `lms server start`)? For LM Studio on another machine, enable "
        "'Serve on Local Network' there and use that machine's address in server_url."
    )


def auth_required(detail: str) -> LMStudioError:
    return LMStudioError(
        f"LM Studio requires an API token: {detail} Set LMSTUDIO_API_TOKEN in the environment ComfyUI is started "
        "from (tokens are never read from the workflow, which is shared inside every saved PNG)."
    )


def model_not_found(model: str, detail: str) -> LMStudioError:
    return LMStudioError(
        f"Model '{model}' not found in LM Studio: {detail} Check model_id against LM Studio's model list "
        "(`lms ls`), or leave it empty to use the loaded model."
    )


def not_vision_capable(model: str) -> LMStudioError:
    return LMStudioError(
        f"Model '{model}' cannot see images: LM Studio reports it has no vision capability, so it would answer "
        "without looking. Pick a vision model (for example qwen/qwen3-vl-4b or google/gemma-3-4b) or unlink the image."
    )


def no_model_loaded() -> LMStudioError:
    return LMStudioError(
        "No model is loaded in LM Studio and model_id is empty. Load a model in LM Studio (or `lms load <model>`), "
        "or enter a model key in model_id and LM Studio will load it."
    )


def idle_timeout(url: str, received_chars: int) -> LMStudioError:
    return LMStudioError(
        f"LM Studio sent nothing for too long while answering {url} ({received_chars} characters received). "
        "A very large model may still be loading: load it in LM Studio first, then run again."
    )


def stream_dropped(received_chars: int) -> LMStudioError:
    return LMStudioError(
        f"LM Studio closed the connection before the answer was complete ({received_chars} characters received). "
        "The model may have crashed, run out of memory or been unloaded: see LM Studio's server log."
    )


def _server_message(body: Any) -> tuple[str, str]:
    """(message, code) from LM Studio's error bodies: `{"error": {...}}`, `{"error": "..."}` or plain text."""
    error = body.get("error", body) if isinstance(body, dict) else body
    if isinstance(error, dict):
        return str(error.get("message") or json.dumps(error)), str(error.get("code") or error.get("type") or "")
    return str(error).strip(), ""


def http_error(status: int, body: Any, url: str, model: str) -> LMStudioError:
    """Map an HTTP error (status and LM Studio's body) to one human message."""
    message, code = _server_message(body)
    if status in (401, 403) or code == "invalid_api_key":
        return auth_required(message)
    if code == "model_not_found" or (status == 404 and "model" in message.lower()):
        return model_not_found(model, message)
    if status == 404:
        return LMStudioError(
            f"LM Studio has no endpoint {url} (HTTP 404: {message}). The native REST API needs LM Studio 0.4.0 or "
            "later; update LM Studio or choose the OpenAI-compatible mode."
        )
    return LMStudioError(f"LM Studio answered HTTP {status} to {url}: {message}")


def stream_error(error: Any, model: str) -> LMStudioError:
    """Map an error reported inside a stream (native `error` event, OpenAI `{"error": ...}` chunk)."""
    message, code = _server_message({"error": error})
    if code == "model_not_found":
        return model_not_found(model, message)
    if code == "invalid_api_key":
        return auth_required(message)
    return LMStudioError(f"LM Studio reported an error: {message}")


def _connect_error(exc: BaseException, url: str) -> LMStudioError:
    if isinstance(exc, aiohttp.ClientConnectorError) and exc.os_error:
        return connection_failed(url, exc.os_error.strerror or str(exc.os_error))
    return connection_failed(url, "no answer to the connection attempt")


def _transport_error(exc: BaseException, url: str, received_chars: int) -> LMStudioError:
    """Map a failure after the connection was made (a drop, an idle timeout)."""
    if isinstance(exc, (aiohttp.SocketTimeoutError, TimeoutError)):
        return idle_timeout(url, received_chars)
    if isinstance(exc, (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)):
        return stream_dropped(received_chars)
    return LMStudioError(f"LM Studio request to {url} failed: {exc}")


# --------------------------------------------------------------------------------------------------- SSE


@dataclass(frozen=True)
class SSEEvent:
    event: str  # "" when the server sent no `event:` line (the OpenAI dialect)
    data: str


_LINE_BREAK = re.compile(r"\r\n|\r|\n")


class SSEParser:
    """Incremental Server-Sent Events parser: bytes in any split, CRLF/CR/LF line ends, comments, UTF-8 across reads."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._buffer = ""
        self._event = ""
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        self._buffer += self._decoder.decode(chunk)
        # A CR at the end may be the first half of a CRLF split across reads: wait for the next byte.
        hold = self._buffer.endswith("\r")
        text = self._buffer[:-1] if hold else self._buffer
        *lines, rest = _LINE_BREAK.split(text)
        self._buffer = rest + ("\r" if hold else "")
        return [event for line in lines if (event := self._line(line))]

    def close(self) -> list[SSEEvent]:
        """Flush at end of stream; a final event without its blank line is still delivered."""
        self._buffer += self._decoder.decode(b"", final=True)
        events = self.feed(b"\n") if self._buffer else []
        if last := self._line(""):
            events.append(last)
        return events

    def _line(self, line: str) -> SSEEvent | None:
        if not line:
            event = SSEEvent(self._event, "\n".join(self._data)) if self._data else None
            self._event, self._data = "", []
            return event
        if line.startswith(":"):
            return None  # keep-alive comment
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        return None


# --------------------------------------------------------------------------------------------------- <think>


class ThinkSplitter:
    """Splits streamed text with inline `<think>...</think>` into (is_reasoning, text) pieces; tags may be split."""

    OPEN, CLOSE = "<think>", "</think>"

    def __init__(self) -> None:
        self._pending = ""
        self._in_reasoning = False
        self._strip = False  # drop the blank lines models put right after a tag

    def feed(self, text: str) -> Iterator[tuple[bool, str]]:
        self._pending += text
        while self._pending:
            tag = self.CLOSE if self._in_reasoning else self.OPEN
            index = self._pending.find(tag)
            if index >= 0:
                yield from self._emit(self._pending[:index])
                self._pending = self._pending[index + len(tag) :]
                self._in_reasoning = not self._in_reasoning
                self._strip = True
                continue
            keep = _partial_suffix(self._pending, tag)
            ready, self._pending = self._pending[: len(self._pending) - keep], self._pending[len(self._pending) - keep :]
            yield from self._emit(ready)
            return

    def close(self) -> Iterator[tuple[bool, str]]:
        ready, self._pending = self._pending, ""
        yield from self._emit(ready)

    def _emit(self, text: str) -> Iterator[tuple[bool, str]]:
        if self._strip:
            text = text.lstrip()
            self._strip = not text
        if text:
            yield self._in_reasoning, text


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest end of `text` that is a start of `tag` (a tag split across chunks)."""
    for size in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:size]):
            return size
    return 0


# --------------------------------------------------------------------------------------------------- HTTP


def _headers(request: ChatRequest) -> dict[str, str]:
    headers = {"Accept": "text/event-stream"}
    if request.api_token:
        headers["Authorization"] = f"Bearer {request.api_token}"
    return headers


async def _read_body(response: aiohttp.ClientResponse) -> Any:
    text = await response.text(errors="replace")
    try:
        return json.loads(text)
    except ValueError:
        return text


async def _open(session: aiohttp.ClientSession, method: str, url: str, request: ChatRequest, **kwargs: Any):
    """Send a request; a failure to connect becomes the connection-failed message naming `url`."""
    try:
        return await session.request(method, url, headers=_headers(request), **kwargs)
    except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
        raise _connect_error(exc, url) from exc


async def _get_json(session: aiohttp.ClientSession, url: str, request: ChatRequest) -> Any:
    async with await _open(session, "GET", url, request) as response:
        body = await _read_body(response)
        if response.status >= 400:
            raise http_error(response.status, body, url, request.model)
        return body


async def _sse_events(
    session: aiohttp.ClientSession, url: str, payload: dict[str, Any], request: ChatRequest
) -> AsyncIterator[SSEEvent]:
    async with await _open(session, "POST", url, request, json=payload) as response:
        if response.status >= 400:
            raise http_error(response.status, await _read_body(response), url, request.model)
        if "text/event-stream" not in response.headers.get("Content-Type", ""):
            # LM Studio answers unknown endpoints with 200 and a JSON error instead of a 404.
            body = await _read_body(response)
            message, _ = _server_message(body)
            if "unexpected endpoint" in message.lower():
                raise http_error(404, body, url, request.model)
            raise LMStudioError(f"LM Studio answered {url} without a stream: {message[:300]}")
        parser = SSEParser()
        async for chunk in response.content.iter_any():
            for event in parser.feed(chunk):
                yield event
        for event in parser.close():
            yield event


def _parse_json(data: str) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except ValueError:
        raise LMStudioError(f"LM Studio sent a malformed stream (not JSON: {data[:200]!r}).") from None
    if not isinstance(value, dict):
        raise LMStudioError(f"LM Studio sent a malformed stream (expected an object: {data[:200]!r}).")
    return value


@dataclass(frozen=True)
class ModelInfo:
    """A model LM Studio offers. `vision` is None where the server does not say (the OpenAI listing)."""

    key: str
    display_name: str = ""
    loaded_ids: tuple[str, ...] = ()
    vision: bool | None = None

    def matches(self, model_id: str) -> bool:
        return model_id == self.key or model_id in self.loaded_ids


def parse_native_models(body: Any) -> list[ModelInfo]:
    """The LLMs in a `GET /api/v1/models` body (embedding models cannot chat)."""
    models = []
    for entry in body.get("models", []) if isinstance(body, dict) else []:
        if not isinstance(entry, dict) or entry.get("type") != "llm" or not entry.get("key"):
            continue
        capabilities = entry.get("capabilities") or {}
        models.append(
            ModelInfo(
                key=str(entry["key"]),
                display_name=str(entry.get("display_name") or entry["key"]),
                loaded_ids=tuple(str(i["id"]) for i in entry.get("loaded_instances") or [] if "id" in i),
                vision=bool(capabilities["vision"]) if "vision" in capabilities else None,
            )
        )
    return models


async def _native_models(session: aiohttp.ClientSession, base: str, request: ChatRequest) -> list[ModelInfo] | None:
    """LM Studio's own model list, or None where the server has no native API (LM Studio before 0.4, others)."""
    url = f"{base}/api/v1/models"
    async with await _open(session, "GET", url, request) as response:
        body = await _read_body(response)
    if response.status == 404 or (response.status < 400 and not (isinstance(body, dict) and "models" in body)):
        return None  # LM Studio answers unknown endpoints with 200 and an error body
    if response.status >= 400:
        raise http_error(response.status, body, url, request.model)
    return parse_native_models(body)


async def _openai_models(session: aiohttp.ClientSession, base: str, request: ChatRequest) -> list[ModelInfo]:
    body = await _get_json(session, f"{base}/v1/models", request)
    entries = body.get("data", []) if isinstance(body, dict) else []
    return [ModelInfo(key=str(m["id"]), display_name=str(m["id"])) for m in entries if isinstance(m, dict) and "id" in m]


async def _resolve_model(session: aiohttp.ClientSession, base: str, request: ChatRequest) -> str:
    """The model to ask: `model_id`, or the loaded one; a text-only model given an image is refused here."""
    if request.model and not request.images:
        return request.model
    models = await _native_models(session, base, request)
    model = request.model
    if not model:
        if models is None:
            # Not LM Studio 0.4+: take the first model the OpenAI listing offers.
            models = await _openai_models(session, base, request)
            model = models[0].key if models else ""
        else:
            model = next((m.loaded_ids[0] for m in models if m.loaded_ids), "")
        if not model:
            raise no_model_loaded()
    info = next((m for m in models or [] if m.matches(model)), None)
    if request.images and info is not None and info.vision is False:
        raise not_vision_capable(model)
    return model


async def list_models(server_url: str, *, api_token: str | None = None, timeout: float = 5.0) -> list[ModelInfo]:
    """The server's chat models, loaded ones first: LM Studio's native list, else the OpenAI-compatible one."""
    request = ChatRequest(prompt="", server_url=server_url, api_token=api_token, connect_timeout=timeout)
    base = _base_url(request)
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session:
            models = await _native_models(session, base, request)
            if models is None:
                models = await _openai_models(session, base, request)
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise _transport_error(exc, f"{base}/api/v1/models", 0) from exc
    return sorted(models, key=lambda m: (not m.loaded_ids, m.key.lower()))


async def unload_model(
    request: ChatRequest, instance_id: str, *, confirm_seconds: float = 10.0, poll_seconds: float = 0.25
) -> bool:
    """Ask LM Studio to unload `instance_id` and wait until it is gone; False if not confirmed in time."""
    if request.mode is ConnectionMode.SDK:
        from .sdk_backend import unload_sdk

        return await unload_sdk(request, instance_id, confirm_seconds=confirm_seconds, poll_seconds=poll_seconds)
    base = _base_url(request)
    url = f"{base}/api/v1/models/unload"
    timeout = aiohttp.ClientTimeout(total=None, connect=request.connect_timeout, sock_read=confirm_seconds)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as session:
            async with await _open(session, "POST", url, request, json={"instance_id": instance_id}) as response:
                body = await _read_body(response)
            message, _ = _server_message(body)
            if (response.status == 404 and "model" not in message.lower()) or "unexpected endpoint" in message.lower():
                raise LMStudioError(
                    f"This server cannot unload models ({url} is missing): unloading needs LM Studio 0.4 or later."
                )
            if response.status >= 400:
                raise http_error(response.status, body, url, instance_id)
            deadline = time.monotonic() + confirm_seconds
            while True:
                models = await _native_models(session, base, request) or []
                if not any(instance_id in m.loaded_ids for m in models):
                    return True
                if time.monotonic() >= deadline:
                    return False
                await asyncio.sleep(poll_seconds)
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise _transport_error(exc, url, 0) from exc


# --------------------------------------------------------------------------------------------------- native REST


def rest_payload(request: ChatRequest, model: str) -> dict[str, Any]:
    """The body of `POST /api/v1/chat`."""
    if request.images:
        items = [{"type": "text", "content": request.prompt}]
        items += [{"type": "image", "data_url": jpeg_data_uri(jpeg)} for jpeg in request.images]
        chat_input: str | list[dict[str, str]] = items
    else:
        chat_input = request.prompt
    # store=false: every run is self-contained; stored responses would pile up in LM Studio for nothing.
    payload: dict[str, Any] = {
        "model": model,
        "input": chat_input,
        "stream": True,
        "store": False,
        "temperature": request.temperature,
    }
    if request.system_prompt:
        payload["system_prompt"] = request.system_prompt
    if request.max_tokens >= 0:
        payload["max_output_tokens"] = request.max_tokens
    if request.reasoning != "auto":
        payload["reasoning"] = request.reasoning
    return payload


def rest_stats(result: dict[str, Any], mode: str) -> Stats:
    stats = result.get("stats") or {}
    return Stats(
        mode=mode,
        model=result.get("model_instance_id"),
        tokens_per_second=stats.get("tokens_per_second"),
        time_to_first_token=stats.get("time_to_first_token_seconds"),
        input_tokens=stats.get("input_tokens"),
        output_tokens=stats.get("total_output_tokens"),
        reasoning_tokens=stats.get("reasoning_output_tokens"),
    )


async def _stream_rest(session: aiohttp.ClientSession, base: str, request: ChatRequest) -> AsyncIterator[StreamEvent]:
    model = await _resolve_model(session, base, request)
    url = f"{base}/api/v1/chat"
    errors: list[Any] = []
    async for sse in _sse_events(session, url, rest_payload(request, model), request):
        event = _parse_json(sse.data)
        kind = sse.event or str(event.get("type", ""))
        if kind == "message.delta":
            yield TextDelta(str(event.get("content", "")))
        elif kind == "reasoning.delta":
            yield ReasoningDelta(str(event.get("content", "")))
        elif (stage := kind.partition(".")[0]) in ("model_load", "prompt_processing"):
            fraction = {"start": 0.0, "end": 1.0}.get(kind.partition(".")[2], event.get("progress"))
            if isinstance(fraction, (int, float)):
                yield Progress(stage, float(fraction))
        elif kind == "error":
            # The stream goes on to `chat.end` with what was generated; report the error once it has.
            errors.append(event.get("error", event))
        elif kind == "chat.end":
            if errors:
                raise stream_error(errors[0], model)
            yield Finished(rest_stats(event.get("result") or {}, request.mode.value))
            return
    if errors:
        raise stream_error(errors[0], model)
    raise _IncompleteStream()


# --------------------------------------------------------------------------------------------------- OpenAI


def openai_payload(request: ChatRequest, model: str) -> dict[str, Any]:
    """The body of `POST /v1/chat/completions`."""
    messages: list[dict[str, Any]] = []
    if request.system_prompt:
        messages.append({"role": "system", "content": request.system_prompt})
    if request.images:
        parts: list[dict[str, Any]] = [{"type": "text", "text": request.prompt}]
        parts += [{"type": "image_url", "image_url": {"url": jpeg_data_uri(jpeg)}} for jpeg in request.images]
        messages.append({"role": "user", "content": parts})
    else:
        messages.append({"role": "user", "content": request.prompt})
    payload: dict[str, Any] = {
        "model": model,
        "messages": messages,
        "temperature": request.temperature,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if request.max_tokens >= 0:
        payload["max_tokens"] = request.max_tokens
    if request.seed is not None:
        payload["seed"] = request.seed
    if request.ttl_seconds is not None:
        payload["ttl"] = request.ttl_seconds  # applies only when this request makes LM Studio load the model
    return payload


async def _stream_openai(
    session: aiohttp.ClientSession, base: str, request: ChatRequest
) -> AsyncIterator[StreamEvent]:
    model = await _resolve_model(session, base, request)
    url = f"{base}/v1/chat/completions"
    splitter = ThinkSplitter()
    started = time.monotonic()
    first_token = last_token = None
    usage: dict[str, Any] = {}
    finish_reason = None
    served_model = None

    def pieces(reasoning: str, content: str) -> Iterator[StreamEvent]:
        if reasoning:
            yield ReasoningDelta(reasoning)
        for is_reasoning, text in splitter.feed(content):
            yield ReasoningDelta(text) if is_reasoning else TextDelta(text)

    async for sse in _sse_events(session, url, openai_payload(request, model), request):
        if sse.data.strip() == "[DONE]":
            break
        chunk = _parse_json(sse.data)
        if "error" in chunk:
            raise stream_error(chunk["error"], model)
        served_model = chunk.get("model") or served_model
        usage = chunk.get("usage") or usage
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            finish_reason = choice.get("finish_reason") or finish_reason
            reasoning = delta.get("reasoning_content") or delta.get("reasoning") or ""
            for event in pieces(str(reasoning), str(delta.get("content") or "")):
                now = time.monotonic()
                first_token = first_token or now
                last_token = now
                yield event
    else:
        raise _IncompleteStream()
    for is_reasoning, text in splitter.close():
        yield ReasoningDelta(text) if is_reasoning else TextDelta(text)
    yield Finished(openai_stats(usage, started, first_token, last_token, finish_reason, served_model or model))


def openai_stats(
    usage: dict[str, Any],
    started: float,
    first_token: float | None,
    last_token: float | None,
    finish_reason: str | None,
    model: str,
) -> Stats:
    """Statistics for the OpenAI dialect: timings measured here, token counts only from the server's `usage`."""
    output_tokens = usage.get("completion_tokens")
    details = usage.get("completion_tokens_details") or {}
    tokens_per_second = None
    if output_tokens and first_token is not None and last_token is not None and last_token > first_token:
        tokens_per_second = output_tokens / (last_token - first_token)
    return Stats(
        mode=ConnectionMode.OPENAI.value,
        model=model,
        tokens_per_second=tokens_per_second,
        time_to_first_token=None if first_token is None else first_token - started,
        input_tokens=usage.get("prompt_tokens"),
        output_tokens=output_tokens,
        reasoning_tokens=details.get("reasoning_tokens"),
        stop_reason=finish_reason,
    )


# --------------------------------------------------------------------------------------------------- entry point


class _IncompleteStream(Exception):
    """The server closed a well-formed stream without its final event."""


_HTTP_BACKENDS = {ConnectionMode.REST: _stream_rest, ConnectionMode.OPENAI: _stream_openai}


async def stream_chat(request: ChatRequest) -> AsyncIterator[StreamEvent]:
    """Stream one chat turn from LM Studio; raises `LMStudioError` with a human message on any failure."""
    if request.mode is ConnectionMode.SDK:
        # Imported here: the HTTP modes work even where the lmstudio package is missing or broken.
        try:
            from .sdk_backend import stream_sdk
        except ImportError as exc:
            raise LMStudioError(
                f"The SDK mode needs the lmstudio package ({exc}). Run `pip install -r requirements.txt` with "
                "ComfyUI's Python, or choose 'REST API' or 'OpenAI-compatible' in connection_mode."
            ) from exc
        async with aclosing(stream_sdk(request)) as events:
            async for event in events:
                yield event
        return
    base = _base_url(request)
    backend = _HTTP_BACKENDS[request.mode]
    timeout = aiohttp.ClientTimeout(total=None, connect=request.connect_timeout, sock_read=request.idle_timeout)
    received = 0
    try:
        async with aiohttp.ClientSession(timeout=timeout) as session, aclosing(backend(session, base, request)) as events:
            async for event in events:
                if isinstance(event, (TextDelta, ReasoningDelta)):
                    received += len(event.text)
                yield event
    except _IncompleteStream:
        raise stream_dropped(received) from None
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise _transport_error(exc, _endpoint(base, request.mode), received) from exc


def _base_url(request: ChatRequest) -> str:
    try:
        return normalize_server_url(request.server_url)
    except ValueError as exc:
        raise LMStudioError(str(exc)) from None


def _endpoint(base: str, mode: ConnectionMode) -> str:
    return f"{base}/api/v1/chat" if mode is ConnectionMode.REST else f"{base}/v1/chat/completions"
