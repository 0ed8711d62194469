"""What both HTTP dialects share: requests and their error mapping, model listing and resolution, unloading,
and what a server says about itself (is it LM Studio, how many parallel slots). No ComfyUI imports."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import aclosing
from typing import Any

import aiohttp

from .backoff import retry_after
from .chat import (
    LMSTUDIO,
    ChatRequest,
    Failure,
    LMStudioError,
    ModelInfo,
    ReasoningDelta,
    StreamEvent,
    TextDelta,
    connection_failed,
    http_error,
    idle_timeout,
    is_lmstudio_greeting,
    is_web_page,
    no_model_loaded,
    not_lmstudio,
    not_vision_capable,
    server_message,
    server_name,
    stream_dropped,
)
from .sse import SSEEvent, SSEParser
from .utils import DataUri, normalize_server_url

# A quick look at a server while explaining an error or planning a list: it must never hold up the run for long.
PROBE_SECONDS = 2.0
# After the last event, how long the rest of the stream may take to close (see `drain`).
DRAIN_SECONDS = 0.5


class IncompleteStream(Exception):
    """The server closed a well-formed stream without its final event."""


def base_url(request: ChatRequest) -> str:
    return normalize_server_url(request.server_url)


def session_for(request: ChatRequest) -> aiohttp.ClientSession:
    """A session with the connect timeout and the idle (not total) read timeout."""
    timeout = aiohttp.ClientTimeout(total=None, connect=request.connect_timeout, sock_read=request.idle_timeout)
    return aiohttp.ClientSession(timeout=timeout)


def _headers(request: ChatRequest) -> dict[str, str]:
    headers = {"Accept": "text/event-stream"}
    if request.api_token:
        headers["Authorization"] = f"Bearer {request.api_token}"
    return headers


def json_body(payload: Any) -> bytes:
    """`payload` as JSON (ASCII, as aiohttp sends it), every `DataUri` in it as its URI string (see `DataUri`)."""
    uris: list[DataUri] = []
    marker = secrets.token_hex(16)  # unguessable: a prompt cannot contain it by chance or on purpose

    def swap(value: Any) -> Any:
        if isinstance(value, DataUri):
            uris.append(value)
            return f"{marker}{len(uris) - 1}{marker}"
        if isinstance(value, dict):
            return {key: swap(item) for key, item in value.items()}
        if isinstance(value, list):
            return [swap(item) for item in value]
        return value

    pieces = json.dumps(swap(payload)).encode("ascii").split(marker.encode("ascii"))
    # pieces alternate: JSON, an index, JSON, an index, ..., JSON; each index becomes its URI's two pieces
    spliced: list[bytes] = [pieces[0]]
    for index, after in zip(pieces[1::2], pieces[2::2], strict=True):
        spliced += [*uris[int(index)].pieces(), after]
    return b"".join(spliced)


async def read_body(response: aiohttp.ClientResponse) -> Any:
    text = await response.text(errors="replace")
    try:
        return json.loads(text)
    except ValueError:
        return text


def connect_error(exc: BaseException, url: str) -> LMStudioError:
    if isinstance(exc, aiohttp.ClientConnectorError) and exc.os_error:
        return connection_failed(url, exc.os_error.strerror or str(exc.os_error))
    return connection_failed(url, "no answer to the connection attempt")


def transport_error(exc: BaseException, url: str, received_chars: int, who: str = LMSTUDIO) -> LMStudioError:
    """Map a failure after the connection was made (a drop, an idle timeout)."""
    if isinstance(exc, (aiohttp.SocketTimeoutError, TimeoutError)):
        return idle_timeout(url, received_chars, who)
    if isinstance(exc, (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)):
        return stream_dropped(received_chars, who)
    return LMStudioError(f"{who}: the request to {url} failed: {exc}", kind=Failure.TRANSIENT)


async def open_request(
    session: aiohttp.ClientSession, method: str, url: str, request: ChatRequest, *,
    headers: dict[str, str] | None = None, **kwargs: Any,
):
    """Send a request; a failure to connect becomes the connection-failed message naming `url`."""
    try:
        return await session.request(method, url, headers=_headers(request) | (headers or {}), **kwargs)
    except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
        raise connect_error(exc, url) from exc


async def identify(session: aiohttp.ClientSession, base: str) -> str:
    """`server_name` for `base`: LM Studio if its greeting says so (the SDK's own probe), else the URL."""
    try:
        async with session.get(f"{base}/lmstudio-greeting", timeout=aiohttp.ClientTimeout(total=PROBE_SECONDS)) as r:
            body = await read_body(r)
    except (aiohttp.ClientError, TimeoutError):
        return server_name(base, False)
    return server_name(base, r.status == 200 and is_lmstudio_greeting(body))


async def get_json(session: aiohttp.ClientSession, url: str, request: ChatRequest, base: str) -> Any:
    async with await open_request(session, "GET", url, request) as response:
        body = await read_body(response)
        if response.status >= 400:
            raise http_error(response.status, body, url, request.model, await identify(session, base),
                             retry_after=retry_after(response.headers, time.time()),
                             token_sent=bool(request.api_token))
        return body


async def sse_events(
    session: aiohttp.ClientSession, base: str, url: str, payload: dict[str, Any], request: ChatRequest
) -> AsyncGenerator[SSEEvent, None]:
    """POST `payload` and yield the Server-Sent Events of the answer; an error answer becomes a human message."""
    body, content_type = json_body(payload), {"Content-Type": "application/json"}
    async with await open_request(session, "POST", url, request, data=body, headers=content_type) as response:
        if response.status >= 400:
            body = await read_body(response)
            who = await identify(session, base)
            model = str(payload.get("model", ""))
            raise http_error(response.status, body, url, model, who, images=bool(request.images),
                             retry_after=retry_after(response.headers, time.time()),
                             token_sent=bool(request.api_token))
        if "text/event-stream" not in response.headers.get("Content-Type", ""):
            # LM Studio answers unknown endpoints with 200 and a JSON error instead of a 404.
            body = await read_body(response)
            message, _ = server_message(body)
            if "unexpected endpoint" in message.lower():
                raise http_error(404, body, url, request.model)
            if is_web_page(body):
                raise not_lmstudio(url, "it answered with a web page")
            raise LMStudioError(f"{await identify(session, base)} answered {url} without a stream: {message[:300]}")
        parser = SSEParser()
        async for chunk in response.content.iter_any():
            for event in parser.feed(chunk):
                yield event
        for event in parser.close():
            yield event


async def drain(events: AsyncIterator[SSEEvent]) -> None:
    """Read a finished stream to its close, for a moment at most. A server, or a router counting requests, frees
    the slot as the stream closes: the next request of a list must not get there first and be refused (measured
    against a server that refuses when full: 22 refusals in 120 items with 4 at a time for 4 slots, 0 after)."""

    async def rest() -> None:
        async for _ in events:
            pass

    with contextlib.suppress(TimeoutError, aiohttp.ClientError):
        await asyncio.wait_for(rest(), DRAIN_SECONDS)


def parse_json(data: str) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except ValueError:
        raise LMStudioError(f"The server sent a malformed stream (not JSON: {data[:200]!r}).") from None
    if not isinstance(value, dict):
        raise LMStudioError(f"The server sent a malformed stream (expected an object: {data[:200]!r}).")
    return value


# --------------------------------------------------------------------------------------------------- models


def parse_native_models(body: Any) -> list[ModelInfo]:
    """The LLMs in a `GET /api/v1/models` body (embedding models cannot chat)."""
    models = []
    for entry in body.get("models", []) if isinstance(body, dict) else []:
        if not isinstance(entry, dict) or entry.get("type") != "llm" or not entry.get("key"):
            continue
        capabilities = entry.get("capabilities") or {}
        instances = [i for i in entry.get("loaded_instances") or [] if isinstance(i, dict) and "id" in i]
        parallel = next((p for i in instances if isinstance(p := (i.get("config") or {}).get("parallel"), int)), None)
        models.append(
            ModelInfo(
                key=str(entry["key"]),
                display_name=str(entry.get("display_name") or entry["key"]),
                loaded_ids=tuple(str(i["id"]) for i in instances),
                loaded_contexts=tuple(c if isinstance(c := (i.get("config") or {}).get("context_length"), int)
                                      else None for i in instances),
                vision=bool(capabilities["vision"]) if "vision" in capabilities else None,
                parallel=parallel,
            )
        )
    return models


def parse_openai_models(body: Any) -> list[ModelInfo]:
    """`GET /v1/models`; `input_modalities` (llama.cpp and others) tells vision where the server sends it."""
    models = []
    for entry in body.get("data", []) if isinstance(body, dict) else []:
        if not isinstance(entry, dict) or "id" not in entry:
            continue
        # llama.cpp nests it (`architecture.input_modalities`); some servers put it at the top.
        modalities = (entry.get("architecture") or {}).get("input_modalities", entry.get("input_modalities"))
        vision = "image" in modalities if isinstance(modalities, list) else None
        models.append(ModelInfo(key=str(entry["id"]), display_name=str(entry["id"]), vision=vision))
    return models


async def native_models(session: aiohttp.ClientSession, base: str, request: ChatRequest) -> list[ModelInfo] | None:
    """LM Studio's own model list, or None where the server has no native API (LM Studio before 0.4, others)."""
    url = f"{base}/api/v1/models"
    async with await open_request(session, "GET", url, request) as response:
        body = await read_body(response)
    if response.status in (404, 405) or (response.status < 400 and not (isinstance(body, dict) and "models" in body)):
        return None  # LM Studio answers unknown endpoints with 200 and an error body
    if response.status >= 400:
        raise http_error(response.status, body, url, request.model)
    return parse_native_models(body)


async def loaded_context(
    session: aiohttp.ClientSession, base: str, request: ChatRequest, instance_id: str
) -> int | None:
    """The context length LM Studio runs a loaded instance with (`GET /api/v1/models`); None where it does not say."""
    try:
        models = await native_models(session, base, request) or []
    except LMStudioError:
        return None
    return next((length for model in models
                 for loaded, length in zip(model.loaded_ids, model.loaded_contexts, strict=True)
                 if loaded == instance_id), None)


async def openai_models(session: aiohttp.ClientSession, base: str, request: ChatRequest) -> list[ModelInfo]:
    return parse_openai_models(await get_json(session, f"{base}/v1/models", request, base))


async def llamacpp_props(session: aiohttp.ClientSession, base: str, request: ChatRequest) -> dict[str, Any]:
    """llama.cpp's `GET /props` (slots, modalities); empty where the server has none."""
    try:
        async with await open_request(session, "GET", f"{base}/props", request) as response:
            body = await read_body(response)
    except LMStudioError:
        return {}
    return body if response.status == 200 and isinstance(body, dict) else {}


async def resolve_model(session: aiohttp.ClientSession, base: str, request: ChatRequest) -> str:
    """The model to ask: `model_id`, or the loaded one; a text-only model given an image is refused here.

    Decided once per prompt (ComfyUI runs each in a fresh event loop) for each server and model: a list of a
    thousand images asks the server once, not a thousand times.
    """
    if request.model and not request.images:
        return request.model
    known = _resolved.setdefault(asyncio.get_running_loop(), {})
    key = (base, request.model, bool(request.images))
    if key not in known:
        known[key] = await _resolve_model(session, base, request)
    return known[key]


_resolved: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[str, str, bool], str]] = (
    weakref.WeakKeyDictionary())


async def _resolve_model(session: aiohttp.ClientSession, base: str, request: ChatRequest) -> str:
    """Vision is what the server says: LM Studio's `capabilities.vision`, else `/v1/models` `input_modalities`, else
    llama.cpp's `/props` `modalities.vision`. Where none says, the image is sent and a refusal mapped."""
    models = await native_models(session, base, request)
    is_lmstudio = models is not None
    model = request.model
    if models is None:
        models = await openai_models(session, base, request)
    if not model:
        model = next((m.loaded_ids[0] for m in models if m.loaded_ids), "") if is_lmstudio else ""
        model = model or (models[0].key if models and not is_lmstudio else "")
        if not model:
            raise no_model_loaded()
    if request.images:
        info = next((m for m in models if m.matches(model)), None)
        vision = info.vision if info else None
        if vision is None and not is_lmstudio:
            modalities = (await llamacpp_props(session, base, request)).get("modalities")
            vision = modalities.get("vision") if isinstance(modalities, dict) else None
        if vision is False:
            raise not_vision_capable(model, server_name(base, is_lmstudio))
    return model


async def list_models_http(request: ChatRequest, timeout: float) -> list[ModelInfo]:
    """The server's chat models, loaded ones first: LM Studio's native list, else the OpenAI-compatible one."""
    base = base_url(request)
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session:
            models = await native_models(session, base, request)
            if models is None:
                models = await openai_models(session, base, request)
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise transport_error(exc, f"{base}/api/v1/models", 0) from exc
    return sorted(models, key=lambda m: (not m.loaded_ids, m.key.lower()))


async def parallel_slots_http(request: ChatRequest) -> int | None:
    """How many predictions the server runs at once for `request.model`; None where it does not say.

    LM Studio: the loaded instance's `config.parallel`. llama.cpp: `/props` `total_slots`.
    """
    base = base_url(request)
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=PROBE_SECONDS)) as session:
            models = await native_models(session, base, request)
            if models is None:
                slots = (await llamacpp_props(session, base, request)).get("total_slots")
                return slots if isinstance(slots, int) and slots > 0 else None
    except (aiohttp.ClientError, TimeoutError, LMStudioError):
        return None
    loaded = [m for m in models if m.loaded_ids]
    chosen = next((m for m in loaded if m.matches(request.model)), None) if request.model else None
    chosen = chosen or (loaded[0] if loaded and not request.model else None)
    return chosen.parallel if chosen else None


async def unload_http(request: ChatRequest, instance_id: str, *, confirm_seconds: float, poll_seconds: float) -> bool:
    """Ask LM Studio's native API to unload `instance_id` and wait until it is gone; False if not confirmed."""
    base = base_url(request)
    url = f"{base}/api/v1/models/unload"
    timeout = aiohttp.ClientTimeout(total=None, connect=request.connect_timeout, sock_read=confirm_seconds)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as session:
            async with await open_request(session, "POST", url, request, json={"instance_id": instance_id}) as response:
                body = await read_body(response)
            message, _ = server_message(body)
            if (response.status == 404 and "model" not in message.lower()) or "unexpected endpoint" in message.lower():
                raise LMStudioError(
                    f"This server cannot unload models ({url} is missing): unloading needs LM Studio 0.4 or later."
                )
            if response.status >= 400:
                raise http_error(response.status, body, url, instance_id)
            deadline = time.monotonic() + confirm_seconds
            while True:
                models = await native_models(session, base, request) or []
                if not any(instance_id in m.loaded_ids for m in models):
                    return True
                if time.monotonic() >= deadline:
                    return False
                await asyncio.sleep(poll_seconds)
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise transport_error(exc, url, 0) from exc


Dialect = Callable[[aiohttp.ClientSession, str, ChatRequest], AsyncGenerator[StreamEvent, None]]


async def stream_dialect(request: ChatRequest, dialect: Dialect, endpoint: str) -> AsyncGenerator[StreamEvent, None]:
    """Run one dialect in its own session, mapping transport failures to human messages."""
    base = base_url(request)
    received = 0
    try:
        async with session_for(request) as session, aclosing(dialect(session, base, request)) as events:
            try:
                async for event in events:
                    if isinstance(event, (TextDelta, ReasoningDelta)):
                        received += len(event.text)
                    yield event
            except IncompleteStream:
                raise stream_dropped(received, await identify(session, base)) from None
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise transport_error(exc, f"{base}{endpoint}", received, await identify(session, base)) from exc
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise transport_error(exc, f"{base}{endpoint}", received) from exc
