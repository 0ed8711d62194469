"""The SDK connection mode: LM Studio's official `lmstudio` package (`AsyncClient`, websocket). No ComfyUI imports.

Yields the same events as the HTTP backends. Two things the SDK needs that the HTTP backends do not:
- The SDK's stream is an async generator that closes its channel *without* telling LM Studio when a
  CancelledError reaches it, and LM Studio then generates on. So every step of the SDK's stream runs in its own
  small task: our cancellation never reaches the SDK's generator, and on cancel we send `await stream.cancel()`
  and drain to the `userStopped` result, as the SDK requires (lmstudio-facts.md 1.10).
- Progress callbacks are synchronous and fire while a step is pending: they queue up and are yielded every
  `POLL_SECONDS` while the step runs.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

import lmstudio as lms

from .chat import (
    ChatRequest,
    Finished,
    LMStudioError,
    Progress,
    ReasoningDelta,
    Stats,
    StreamEvent,
    TextDelta,
    auth_required,
    connection_failed,
    idle_timeout,
    model_not_found,
    no_model_loaded,
    not_vision_capable,
    stream_dropped,
)
from .utils import normalize_server_url, sdk_api_host

POLL_SECONDS = 0.1
CANCEL_DRAIN_SECONDS = 0.5
# A model this node makes LM Studio load is unloaded after an idle hour: the same TTL LM Studio gives its own
# just-in-time loads through the REST and OpenAI-compatible APIs, so all three modes leave VRAM the same way.
# (The SDK's own default is also an hour, but implicit; the constant makes the choice visible.)
LOAD_TTL_SECONDS = 3600
REASONING_TYPES = {"reasoning", "reasoningStartTag", "reasoningEndTag"}
_SDK_ACCEPTS_TOKEN = "api_token" in inspect.signature(lms.AsyncClient).parameters

async def _progress_while(task: asyncio.Future, progress: deque[Progress], idle: float) -> AsyncIterator[Progress]:
    """Yield the queued progress until `task` is done; TimeoutError after `idle` seconds without any news."""
    deadline = time.monotonic() + idle
    while not task.done():
        await asyncio.wait({task}, timeout=POLL_SECONDS)
        if progress:
            deadline = time.monotonic() + idle
        while progress:
            yield progress.popleft()
        if not task.done() and time.monotonic() > deadline:
            raise TimeoutError
    while progress:
        yield progress.popleft()


async def _next_fragment(fragments: AsyncIterator[Any]) -> Any | None:
    """The next fragment, or None at the end (StopAsyncIteration cannot leave a task cleanly)."""
    try:
        return await anext(fragments)
    except StopAsyncIteration:
        return None


def _failed(task: asyncio.Future | None) -> bool:
    return task is not None and task.done() and not task.cancelled() and task.exception() is not None


async def _cancel_and_drain(stream: Any, pending: asyncio.Future | None) -> None:
    """Tell LM Studio to stop, then read on to its `userStopped` result so the channel closes cleanly."""

    async def cancel_and_read_to_end() -> None:
        await stream.cancel()
        if pending is not None:
            await asyncio.wait({pending})
        async for _ in stream:
            pass

    try:
        await asyncio.wait_for(cancel_and_read_to_end(), CANCEL_DRAIN_SECONDS)
    except (asyncio.TimeoutError, lms.LMStudioError):
        pass  # LM Studio got the cancel; the client closes the channel on exit either way
    finally:
        if pending is not None and not pending.done():
            pending.cancel()


def _client(host: str, request: ChatRequest) -> Any:
    """One SDK client for one run (ComfyUI gives every prompt a fresh event loop), with the token if it can take one."""
    token = {"api_token": request.api_token} if request.api_token and _SDK_ACCEPTS_TOKEN else {}
    return lms.AsyncClient(host, **token)


async def _model(client: Any, request: ChatRequest, progress: deque[Progress]) -> Any:
    if not request.model:
        return await client.llm.model()

    loading = False

    def on_load(fraction: float) -> None:
        nonlocal loading
        # The SDK reports 1.0 for a model that was already loaded too: only a real load shows progress.
        loading = loading or fraction < 1.0
        if loading:
            progress.append(Progress("model_load", fraction))

    ttl = request.ttl_seconds or LOAD_TTL_SECONDS
    return await client.llm.model(request.model, ttl=ttl, on_load_progress=on_load)


async def _model_listing(client: Any) -> str:
    """What is loaded and what is downloaded, for a model-not-found message."""
    try:
        loaded = [m.identifier for m in await client.llm.list_loaded()]
        downloaded = [m.model_key for m in await client.llm.list_downloaded()]
    except lms.LMStudioError:
        return ""
    return f"Loaded: {', '.join(loaded) or 'none'}. Downloaded: {', '.join(downloaded) or 'none'}."


def _detail(exc: BaseException) -> str:
    """The server's short message from an SDK exception (its `str` can run to many lines)."""
    server_error = getattr(exc, "server_error", None)
    title = getattr(server_error, "title", None)
    return title or str(exc).strip().splitlines()[0]


def _error_code(exc: BaseException) -> str:
    display = getattr(getattr(exc, "server_error", None), "display_data", None) or {}
    return str(display.get("code", "")) if isinstance(display, dict) else ""


async def stream_sdk(request: ChatRequest) -> AsyncIterator[StreamEvent]:
    """Stream one chat turn through the lmstudio SDK; raises `LMStudioError` with a human message on failure."""
    try:
        base = normalize_server_url(request.server_url)
        host = sdk_api_host(base)
    except ValueError as exc:
        raise LMStudioError(str(exc)) from None
    if base.startswith("https://"):
        raise LMStudioError("The SDK mode speaks plain ws:// only: use REST API or OpenAI-compatible for https URLs.")
    progress: deque[Progress] = deque()
    received = 0
    connected = False
    try:
        async with _client(host, request) as client:
            connected = True
            loading = asyncio.ensure_future(_model(client, request, progress))
            try:
                async for event in _progress_while(loading, progress, request.idle_timeout):
                    yield event
                model = loading.result()
            except lms.LMStudioServerError as exc:
                if _error_code(exc) in ("generic.pathNotFound", "generic.noModelMatchingQuery") or isinstance(
                    exc, lms.LMStudioModelNotFoundError
                ):
                    raise model_not_found(request.model, f"{_detail(exc)}. {await _model_listing(client)}") from exc
                raise
            finally:
                if not loading.done():
                    loading.cancel()
            if request.images and not (await model.get_info()).vision:
                raise not_vision_capable(model.identifier)
            images = [
                await client.files.prepare_image(jpeg, name=f"comfyui-image-{index}.jpg")
                for index, jpeg in enumerate(request.images)
            ]
            chat = lms.Chat(request.system_prompt) if request.system_prompt else lms.Chat()
            chat.add_user_message(request.prompt, images=images)
            # Only keys the SDK honours: it silently drops unknown ones (`topP`, `seed`).
            config: dict[str, Any] = {"temperature": request.temperature}
            if request.max_tokens >= 0:
                config["maxTokens"] = request.max_tokens

            def on_prompt(fraction: float) -> None:
                progress.append(Progress("prompt_processing", fraction))

            stream = await model.respond_stream(chat, config=config, on_prompt_processing_progress=on_prompt)
            async for event in _fragments(stream, progress, request.idle_timeout, model.identifier):
                if isinstance(event, (TextDelta, ReasoningDelta)):
                    received += len(event.text)
                yield event
    except LMStudioError:
        raise
    except TimeoutError:
        raise idle_timeout(f"ws://{host}", received) from None
    except lms.LMStudioWebsocketError as exc:
        if connected:
            raise stream_dropped(received) from exc
        raise connection_failed(base, f"the SDK websocket ws://{host} was refused") from exc
    except lms.LMStudioChannelClosedError as exc:
        raise stream_dropped(received) from exc
    except lms.LMStudioClientError as exc:
        message = str(exc)
        if "not reachable" in message:
            raise connection_failed(base, f"SDK probe http://{host}/lmstudio-greeting") from exc
        if "No models are currently loaded" in message:
            raise no_model_loaded() from exc
        raise LMStudioError(f"LM Studio SDK error: {_detail(exc)}") from exc
    except lms.LMStudioServerError as exc:
        if "Authentication failed" in str(exc):
            sent = "it rejected the token sent." if request.api_token else "none was sent."
            raise auth_required(sent) from exc
        raise LMStudioError(f"LM Studio reported an error: {_detail(exc)}") from exc
    except lms.LMStudioValueError as exc:
        raise LMStudioError(f"LM Studio SDK rejected a setting: {_detail(exc)}") from exc
    except ValueError as exc:
        if not connected:
            # lmstudio 1.5 crashes this way when the server rejects the websocket authentication.
            raise _token_unsupported(request) from exc
        raise


async def unload_sdk(request: ChatRequest, identifier: str, *, confirm_seconds: float, poll_seconds: float) -> bool:
    """Unload a model instance through the SDK and wait until LM Studio no longer lists it."""
    try:
        async with _client(sdk_api_host(request.server_url), request) as client:
            await client.llm.unload(identifier)
            deadline = time.monotonic() + confirm_seconds
            while identifier in [m.identifier for m in await client.llm.list_loaded()]:
                if time.monotonic() >= deadline:
                    return False
                await asyncio.sleep(poll_seconds)
            return True
    except lms.LMStudioModelNotFoundError:
        return True  # already gone
    except lms.LMStudioError as exc:
        raise LMStudioError(f"LM Studio could not unload '{identifier}': {_detail(exc)}") from exc


def _token_unsupported(request: ChatRequest) -> LMStudioError:
    have = "is set, but" if request.api_token else "is not set, and"
    return LMStudioError(
        f"LM Studio requires an API token. LMSTUDIO_API_TOKEN {have} the installed lmstudio SDK "
        f"({lms.__version__}) cannot send one. Use connection_mode 'REST API' or 'OpenAI-compatible' (they send the "
        "token from LMSTUDIO_API_TOKEN), or install lmstudio 1.6 or later."
    )


async def _fragments(stream: Any, progress: deque[Progress], idle: float, model: str) -> AsyncIterator[StreamEvent]:
    """The prediction's fragments as events, then the statistics; if stopped early, stop LM Studio properly."""
    fragments = stream.__aiter__()
    reasoning_tokens = 0
    pending: asyncio.Future | None = None
    finished = False
    try:
        while True:
            pending = asyncio.ensure_future(_next_fragment(fragments))
            async for event in _progress_while(pending, progress, idle):
                yield event
            fragment = pending.result()
            if fragment is None:
                break
            kind = fragment.reasoning_type
            if kind in REASONING_TYPES:
                reasoning_tokens += fragment.tokens_count
            if kind == "reasoning":
                yield ReasoningDelta(fragment.content)
            elif kind == "none":
                yield TextDelta(fragment.content)
        finished = True
    finally:
        # Cancelled, closed or timed out (not failed): LM Studio would go on generating unless told to stop.
        if not finished and not _failed(pending):
            await _cancel_and_drain(stream, pending)
    stats = stream.result().stats
    yield Finished(
        Stats(
            mode="SDK",
            model=model,
            tokens_per_second=stats.tokens_per_second,
            time_to_first_token=stats.time_to_first_token_sec,
            input_tokens=stats.prompt_tokens_count,
            output_tokens=stats.predicted_tokens_count,
            reasoning_tokens=reasoning_tokens,
            stop_reason=stats.stop_reason,
        )
    )
