"""The SDK connection mode: LM Studio's official `lmstudio` package (`AsyncClient`, websocket). No ComfyUI imports.

Runs in the SDK worker process (`sdk_worker`), which ComfyUI's process talks to through `sdk_process`. Yields the
same events as the HTTP backends. Each run is a task of its own (`sdk_runtime`), over a client kept between runs;
its events come back through a `Handoff`, gathered into a few per batch. What the SDK needs that the HTTP backends
do not:
- Stopping: cancelling the SDK's stream iterator closes its channel *without* telling LM Studio, which then
  generates on (lmstudio-facts.md 1.10). So nothing cancels the iteration: a stop sends `await stream.cancel()`
  and the iteration runs on to the `userStopped` result. Only if LM Studio does not answer within
  `CANCEL_DRAIN_SECONDS` is the run cancelled outright.
- Reconnecting: a dropped connection kills an `AsyncClient` for good (facts 0.14). A run that finds its kept
  client dead opens one fresh client and tries again, but only before LM Studio said anything of its prediction:
  a prediction that LM Studio began is never sent twice.
- Remembering the model: every message over the SDK's websockets costs the worker CPU (most of its ~12 ms a
  caption goes to the SDK's websocket stack), and asking for the model (`getOrLoad`) and its vision
  (`getModelInfo`) is four of the fourteen a caption exchanges. So a kept client remembers, for
  `sdk_runtime.MEMO_SECONDS`, the handle and what was learned of it; a list's later items go straight to the upload and
  the prediction. Should the model have been unloaded meanwhile, LM Studio refuses that prediction before it runs
  (`noModelMatchingQuery`), and the run asks for the model again (loading it, as a first run would) and predicts.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import lmstudio as lms

from .chat import (
    ChatRequest,
    Failure,
    Finished,
    LMStudioError,
    Notice,
    Progress,
    ReasoningDelta,
    Stats,
    StreamEvent,
    TextDelta,
    auth_required,
    connection_failed,
    context_kept,
    context_overflow,
    idle_timeout,
    is_context_overflow,
    is_lmstudio_greeting,
    model_not_found,
    no_model_loaded,
    not_lmstudio,
    not_vision_capable,
    sendable_settings,
    stream_dropped,
)
from .sdk_runtime import RUNTIME, ClientKey, Handoff, KeptClient
from .utils import image_type, normalize_server_url, sdk_api_host

log = logging.getLogger("lmstudio_stream")

CANCEL_DRAIN_SECONDS = 0.5
HANDOFF_PAUSE_SECONDS = 0.016
# A model this node makes LM Studio load is unloaded after an idle hour: the same TTL LM Studio gives its own
# just-in-time loads through the REST and OpenAI-compatible APIs, so all three modes leave VRAM the same way.
# (The SDK's own default is also an hour, but implicit; the constant makes the choice visible.)
LOAD_TTL_SECONDS = 3600
REASONING_TYPES = {"reasoning", "reasoningStartTag", "reasoningEndTag"}
_SDK_ACCEPTS_TOKEN = "api_token" in inspect.signature(lms.AsyncClient).parameters
_MODEL_NOT_FOUND_CODES = ("generic.pathNotFound", "generic.noModelMatchingQuery")
_END = object()


def _detail(exc: BaseException) -> str:
    """The server's short message from an SDK exception (its `str` can run to many lines)."""
    server_error = getattr(exc, "server_error", None)
    title = getattr(server_error, "title", None)
    return title or str(exc).strip().splitlines()[0]


def _error_code(exc: BaseException) -> str:
    display = getattr(getattr(exc, "server_error", None), "display_data", None) or {}
    return str(display.get("code", "")) if isinstance(display, dict) else ""


def _token_unsupported(request: ChatRequest) -> LMStudioError:
    have = "is set, but" if request.api_token else "is not set, and"
    return LMStudioError(
        f"LM Studio requires an API token. LMSTUDIO_API_TOKEN {have} the installed lmstudio SDK "
        f"({lms.__version__}) cannot send one. Use connection_mode 'REST API' or 'OpenAI-compatible' (they send the "
        "token from LMSTUDIO_API_TOKEN), or install lmstudio 1.6 or later."
    )


def _endpoint(request: ChatRequest) -> tuple[str, str]:
    """(base URL, SDK host:port) of the request's server."""
    base = normalize_server_url(request.server_url)
    if base.startswith("https://"):
        raise LMStudioError("The SDK mode speaks plain ws:// only: use REST API or OpenAI-compatible for https URLs.")
    return base, sdk_api_host(base)


async def _greet(base: str, request: ChatRequest) -> None:
    """LM Studio's greeting, with the HTTP modes' connect timeout (the SDK's own probe gives up after 1 s)."""
    url = f"{base}/lmstudio-greeting"
    timeout = aiohttp.ClientTimeout(total=request.connect_timeout)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as session, session.get(url) as response:
            body = await response.json(content_type=None) if response.status == 200 else None
    except aiohttp.ClientConnectorError as exc:
        reason = exc.os_error.strerror if exc.os_error else str(exc)
        raise connection_failed(base, f"SDK probe {url}: {reason}") from exc
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        if isinstance(exc, (TimeoutError, aiohttp.ServerTimeoutError)):
            raise connection_failed(base, f"SDK probe {url}: no answer within {request.connect_timeout:g} s") from exc
        body = None
    if not is_lmstudio_greeting(body):
        raise not_lmstudio(base, "it does not answer LM Studio's greeting (/lmstudio-greeting), which the SDK needs")


class _GreetedClient(lms.AsyncClient):
    """An `AsyncClient` for a host whose greeting `_greet` has just checked: the SDK's own probe (a fresh httpx
    client, ~50 ms, 1 s timeout) is skipped. The hook is private (1.5.0 and 1.6.0b1 have it); should a later SDK
    rename it, its probe simply runs again."""

    async def _ensure_api_host_is_valid(self) -> None:
        if self._api_host is None:
            await super()._ensure_api_host_is_valid()


@contextlib.asynccontextmanager
async def _opened_client(base: str, host: str, request: ChatRequest) -> AsyncIterator[Any]:
    await _greet(base, request)
    token = {"api_token": request.api_token} if request.api_token and _SDK_ACCEPTS_TOKEN else {}
    async with _GreetedClient(host, **token) as client:
        yield client


@dataclass
class _Known:
    """What a kept client learned of the model a request names."""

    handle: Any
    context_length: int | None = None  # asked only when a request sets one
    vision: bool | None = None  # asked only when a request sends images


def _memo_key(request: ChatRequest) -> tuple[str, int | None, int | None]:
    """The requests that `getOrLoad` answers alike: the same model query, TTL and load config."""
    return request.model, request.ttl_seconds, request.context_length


class _Run:
    """One chat turn. Owns no connection: it borrows the kept client for its server and token."""

    def __init__(self, request: ChatRequest, base: str, host: str, handoff: Handoff) -> None:
        self.request, self.base, self.host, self.handoff = request, base, host, handoff
        self.key: ClientKey = (host, request.api_token)
        self.task: asyncio.Task | None = None
        self.stream: Any = None
        self.connected = self.started = self.stopping = False
        self._canceller: asyncio.Future | None = None
        self.received = 0
        self.remembered = False  # whether the model handle came from the kept client's memo
        # Whether LM Studio said anything about the prediction. A connection that fails before it did was dead
        # already (a kept one, after LM Studio restarted or the machine slept; the SDK finds out only on reading):
        # the prediction never ran, and goes once more on a fresh connection. One that LM Studio began is never sent
        # twice.
        self.heard = False

    async def main(self) -> None:
        self.task = asyncio.current_task()
        try:
            await self._attempts()
        except asyncio.CancelledError:
            pass
        except BaseException as exc:  # every failure reaches the run's loop, explained
            self.handoff.put(self._explain(exc))
            return
        self.handoff.put(_END)

    async def _attempts(self) -> None:
        for attempt in range(2):
            # Each attempt explains its own failures: the fresh client that replaces a dead kept one may be refused,
            # or asked for a token, as a first connection would be.
            self.connected = self.started = False
            self.stream = None
            kept, client = await RUNTIME.client(self.key, lambda: _opened_client(self.base, self.host, self.request))
            self.connected = True
            try:
                await self._chat(kept, client)
                return
            except (lms.LMStudioWebsocketError, lms.LMStudioChannelClosedError):
                await RUNTIME.discard(self.key, kept)
                if self.heard or attempt == 1 or self.stopping:
                    raise
                log.info("LM Studio SDK: the kept connection to %s was dead; opening a fresh one", self.host)
            except lms.LMStudioServerError as exc:
                # A remembered model unloaded since: LM Studio refused the prediction without running it.
                unloaded = self.remembered and _error_code(exc) in _MODEL_NOT_FOUND_CODES
                if not unloaded or self.heard or attempt == 1 or self.stopping:
                    raise
                kept.forget(_memo_key(self.request))
                log.info("LM Studio SDK: '%s' is no longer loaded; asking for it again", self.request.model)
            finally:
                RUNTIME.release(kept)

    def stop(self) -> None:
        """Tell LM Studio to stop, or stop waiting for a load or an upload at once."""
        if self.stopping:
            return
        self.stopping = True
        if self.stream is not None:
            self._canceller = asyncio.ensure_future(self._cancel_stream())  # kept: a task nobody holds may vanish
        elif self.task is not None:
            self.task.cancel()

    async def _cancel_stream(self) -> None:
        with contextlib.suppress(lms.LMStudioError):
            await self.stream.cancel()
        await asyncio.sleep(CANCEL_DRAIN_SECONDS)
        if self.task is not None and not self.task.done():
            self.task.cancel()  # LM Studio did not finish with `userStopped` in time

    async def _model(self, kept: KeptClient, client: Any) -> Any:
        """The model handle, checked for what the request needs: remembered, loaded already, or loaded now (with
        the request's context length, if it sets one)."""
        request, key = self.request, _memo_key(self.request)
        known = kept.recall(key)
        self.remembered = known is not None
        if known is None:
            known = _Known(await self._loaded_or_load(client))
            kept.remember(key, known)
        if request.context_length and known.context_length is None:
            known.context_length = await known.handle.get_context_length()
        if request.images and known.vision is None:
            known.vision = (await known.handle.get_info()).vision
        identifier = known.handle.identifier
        # Checked, not assumed: a model loaded before keeps its length, and LM Studio may shorten one to fit memory.
        if request.context_length and known.context_length != request.context_length:
            self.handoff.put(Notice("context", context_kept(identifier, known.context_length, request.context_length)))
        if request.images and not known.vision:
            raise not_vision_capable(identifier)
        return known.handle

    async def _loaded_or_load(self, client: Any) -> Any:
        if not self.request.model:
            return await client.llm.model()
        loading = False

        def on_load(fraction: float) -> None:
            nonlocal loading
            # The SDK reports 1.0 for a model that was already loaded too: only a real load shows progress.
            loading = loading or fraction < 1.0
            if loading:
                self.handoff.put(Progress("model_load", fraction))

        ttl = self.request.ttl_seconds or LOAD_TTL_SECONDS
        # Load config: it counts only if this call loads the model (the SDK ignores it for a loaded one).
        config = {"contextLength": self.request.context_length} if self.request.context_length else None
        try:
            return await client.llm.model(self.request.model, ttl=ttl, config=config, on_load_progress=on_load)
        except lms.LMStudioServerError as exc:
            if _error_code(exc) in _MODEL_NOT_FOUND_CODES or isinstance(exc, lms.LMStudioModelNotFoundError):
                raise model_not_found(self.request.model, f"{_detail(exc)}. {await _model_listing(client)}") from exc
            raise

    async def _chat(self, kept: KeptClient, client: Any) -> None:
        request = self.request
        model = await self._model(kept, client)
        chat = lms.Chat(request.system_prompt) if request.system_prompt else lms.Chat()
        for turn in request.history:  # the whole chat: earlier turns with their images, then this one
            chat.add_user_message(turn.prompt, images=await _upload(client, turn.images))
            chat.add_assistant_response(turn.answer)
        chat.add_user_message(request.prompt, images=await _upload(client, request.images))
        config = sdk_prediction_config(request)

        def on_prompt(fraction: float) -> None:
            self.heard = True
            self.handoff.put(Progress("prompt_processing", fraction))

        if self.stopping:
            raise asyncio.CancelledError
        self.started = True
        self.stream = await model.respond_stream(chat, config=config, on_prompt_processing_progress=on_prompt)
        reasoning_tokens = 0
        put_text = self.handoff.put_text
        async for fragment in self.stream:
            self.heard = True
            kind = fragment.reasoning_type
            if kind in REASONING_TYPES:
                reasoning_tokens += fragment.tokens_count
            if kind == "reasoning":
                self.received += len(fragment.content)
                put_text(ReasoningDelta, fragment.content)
            elif kind == "none":
                self.received += len(fragment.content)
                put_text(TextDelta, fragment.content)
        stats = self.stream.result().stats
        self.handoff.put(Finished(Stats(
            mode="SDK",
            model=model.identifier,
            tokens_per_second=stats.tokens_per_second,
            time_to_first_token=stats.time_to_first_token_sec,
            input_tokens=stats.prompt_tokens_count,
            output_tokens=stats.predicted_tokens_count,
            reasoning_tokens=reasoning_tokens,
            stop_reason=stats.stop_reason,
            draft_tokens=stats.total_draft_tokens_count,
            accepted_draft_tokens=stats.accepted_draft_tokens_count,
        )))

    def _explain(self, exc: BaseException) -> BaseException:
        return _explain(exc, self.request, self.base, self.host, connected=self.connected, started=self.started,
                        received=self.received)


# The request's settings under the SDK's prediction config names (`_kv_config.py`: "llm.prediction").
_SDK_NAMES = {"top_p": "topPSampling", "top_k": "topKSampling", "min_p": "minPSampling",
              "repeat_penalty": "repeatPenalty", "stop": "stopStrings", "draft_model": "draftModel"}


def sdk_prediction_config(request: ChatRequest) -> dict[str, Any]:
    """Only keys the SDK honours: it silently drops unknown ones (`topP`, `seed`)."""
    config: dict[str, Any] = {"temperature": request.temperature}
    if request.max_tokens >= 0:
        config["maxTokens"] = request.max_tokens
    for name, value in sendable_settings(request).items():
        if name in _SDK_NAMES:  # context_length goes in the load config
            config[_SDK_NAMES[name]] = value
    if request.json_schema is not None:
        config["structured"] = {"type": "json", "jsonSchema": request.json_schema}
    return config


async def _upload(client: Any, images: tuple[bytes, ...]) -> list[Any]:
    """The SDK's file handles for image bytes (a handle belongs to the connection, so each run uploads its own)."""
    return [await client.files.prepare_image(data, name=f"comfyui-image-{index}{image_type(data)[1]}")
            for index, data in enumerate(images)]


def _explain(
    exc: BaseException, request: ChatRequest, base: str, host: str, *, connected: bool, started: bool = False,
    received: int = 0,
) -> BaseException:
    """The human message for an SDK failure; anything unforeseen stays itself (the node shows its type)."""
    if isinstance(exc, LMStudioError):
        return exc
    if isinstance(exc, lms.LMStudioWebsocketError):
        if connected:
            return stream_dropped(received)
        return connection_failed(base, f"the SDK websocket ws://{host} was refused")
    if isinstance(exc, lms.LMStudioChannelClosedError):
        return stream_dropped(received)
    if isinstance(exc, lms.LMStudioClientError):
        message = str(exc)
        if "not reachable" in message:
            return connection_failed(base, f"SDK probe http://{host}/lmstudio-greeting")
        if "No models are currently loaded" in message:
            return no_model_loaded()
        return LMStudioError(f"LM Studio SDK error: {_detail(exc)}")
    if isinstance(exc, lms.LMStudioServerError):
        if is_context_overflow(str(exc)):
            return context_overflow(_detail(exc))
        if "Authentication failed" in str(exc):
            return auth_required("it rejected the token sent." if request.api_token else "none was sent.")
        # An error inside the prediction (an engine crash, say) is worth one more try; others are not.
        return LMStudioError(f"LM Studio reported an error: {_detail(exc)}",
                             kind=Failure.TRANSIENT if started else Failure.FINAL)
    if isinstance(exc, lms.LMStudioValueError):
        return LMStudioError(f"LM Studio SDK rejected a setting: {_detail(exc)}")
    if isinstance(exc, ValueError) and not connected:
        # lmstudio 1.5 crashes this way when the server rejects the websocket authentication.
        return _token_unsupported(request)
    return exc


async def _model_listing(client: Any) -> str:
    """What is loaded and what is downloaded, for a model-not-found message."""
    try:
        loaded = [m.identifier for m in await client.llm.list_loaded()]
        downloaded = [m.model_key for m in await client.llm.list_downloaded()]
    except lms.LMStudioError:
        return ""
    return f"Loaded: {', '.join(loaded) or 'none'}. Downloaded: {', '.join(downloaded) or 'none'}."


async def stream_sdk(request: ChatRequest) -> AsyncGenerator[StreamEvent, None]:
    """Stream one chat turn through the lmstudio SDK; raises `LMStudioError` with a human message on failure."""
    base, host = _endpoint(request)
    handoff = Handoff(asyncio.get_running_loop())
    run = _Run(request, base, host, handoff)
    job = RUNTIME.submit(run.main())  # a task of its own: a consumer that leaves must not cancel it mid-stop
    ended = False
    try:
        while True:
            try:
                batch = await handoff.get_batch(request.idle_timeout)
            except TimeoutError:
                raise idle_timeout(f"ws://{host}", run.received) from None
            for item in batch:
                if item is _END:
                    ended = True
                    return
                if isinstance(item, BaseException):
                    ended = True
                    raise item
                yield item
            # Let texts gather a moment before the next batch: each batch is a message to ComfyUI's process and a
            # redraw of the view, which is redrawn 30 times a second (half a redraw tick is never seen). The end of
            # the stream (or an error) cuts the rest short.
            await handoff.rest(HANDOFF_PAUSE_SECONDS)
    finally:
        if not ended:
            # Closed early (Cancel, an idle timeout): LM Studio must be told to stop, then the run drains.
            run.stop()
            with contextlib.suppress(Exception):  # the drain's own outcome is of no interest any more
                await asyncio.wait_for(job, CANCEL_DRAIN_SECONDS + 0.2)


async def _unload_on(client: Any, identifier: str, confirm_seconds: float, poll_seconds: float) -> bool:
    await client.llm.unload(identifier)
    deadline = asyncio.get_running_loop().time() + confirm_seconds
    while identifier in [m.identifier for m in await client.llm.list_loaded()]:
        if asyncio.get_running_loop().time() >= deadline:
            return False
        await asyncio.sleep(poll_seconds)
    return True


async def _unload(request: ChatRequest, identifier: str, confirm_seconds: float, poll_seconds: float) -> bool:
    base, host = _endpoint(request)
    key: ClientKey = (host, request.api_token)
    for attempt in range(2):  # an unload may be sent again: a dead kept client gets one fresh replacement
        kept: KeptClient | None = None
        try:
            kept, client = await RUNTIME.client(key, lambda: _opened_client(base, host, request))
            return await _unload_on(client, identifier, confirm_seconds, poll_seconds)
        except lms.LMStudioModelNotFoundError:
            return True  # already gone
        except (lms.LMStudioWebsocketError, lms.LMStudioChannelClosedError) as exc:
            if kept is None or attempt == 1:
                raise _explain(exc, request, base, host, connected=kept is not None) from exc
            await RUNTIME.discard(key, kept)
        except (lms.LMStudioServerError, lms.LMStudioValueError) as exc:
            if "Authentication failed" in str(exc):
                raise _explain(exc, request, base, host, connected=kept is not None) from exc
            raise LMStudioError(f"LM Studio could not unload '{identifier}': {_detail(exc)}") from exc
        except (lms.LMStudioError, ValueError) as exc:  # the connection itself: refused, gone, a token wanted
            raise _explain(exc, request, base, host, connected=kept is not None) from exc
        finally:
            if kept is not None:
                RUNTIME.release(kept)
    raise AssertionError("unreachable: the second attempt returns or raises")


async def unload_sdk(request: ChatRequest, identifier: str, *, confirm_seconds: float, poll_seconds: float) -> bool:
    """Unload a model instance over the kept SDK connection and wait until LM Studio no longer lists it."""
    return await RUNTIME.submit(_unload(request, identifier, confirm_seconds, poll_seconds))
