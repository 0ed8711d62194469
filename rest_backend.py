"""LM Studio's native REST dialect: `POST /api/v1/chat` with named SSE events (LM Studio 0.4 and later)."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import Any

import aiohttp

from .chat import (
    ChatRequest,
    Finished,
    Notice,
    Progress,
    ReasoningDelta,
    Stats,
    StreamEvent,
    TextDelta,
    chain_missing,
    context_kept,
    sendable_settings,
    stream_error,
)
from .http_common import (
    IncompleteStream,
    drain,
    loaded_context,
    parse_json,
    resolve_model,
    sse_events,
    stream_dialect,
)
from .utils import DataUri

ENDPOINT = "/api/v1/chat"


def rest_payload(request: ChatRequest, model: str) -> dict[str, Any]:
    """The body of `POST /api/v1/chat`. A later turn of a chat continues LM Studio's stored copy of the one before
    (`previous_response_id`): the native API takes no earlier answers."""
    if request.images:
        items = [{"type": "text", "content": request.prompt}]
        items += [{"type": "image", "data_url": DataUri(data)} for data in request.images]
        chat_input: str | list[dict[str, str]] = items
    else:
        chat_input = request.prompt
    # `store` only for a turn a later turn continues: stored responses would pile up in LM Studio for nothing.
    payload: dict[str, Any] = {
        "model": model,
        "input": chat_input,
        "stream": True,
        "store": request.store,
        "temperature": request.temperature,
    }
    if request.history:
        payload["previous_response_id"] = request.history[-1].response_id
    elif request.system_prompt:
        # The stored chat keeps its first system prompt; LM Studio refuses one on a later turn (0.4.20: HTTP 500).
        payload["system_prompt"] = request.system_prompt
    if request.max_tokens >= 0:
        payload["max_output_tokens"] = request.max_tokens
    if request.reasoning != "auto":
        payload["reasoning"] = request.reasoning
    payload.update(sendable_settings(request))  # sampling, context_length
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


async def _events(session: aiohttp.ClientSession, base: str, request: ChatRequest) -> AsyncGenerator[StreamEvent, None]:
    if request.history and not request.history[-1].response_id:
        raise chain_missing(len(request.history))
    model = await resolve_model(session, base, request)
    errors: list[Any] = []
    stream = sse_events(session, base, f"{base}{ENDPOINT}", rest_payload(request, model), request)
    async with aclosing(stream):
        async for sse in stream:
            event = parse_json(sse.data)
            kind = sse.event or str(event.get("type", ""))
            if kind == "message.delta":
                yield TextDelta(str(event.get("content", "")))
            elif kind == "reasoning.delta":
                yield ReasoningDelta(str(event.get("content", "")))
            elif (stage := kind.partition(".")[0]) in ("model_load", "prompt_processing"):
                fraction = {"start": 0.0, "end": 1.0}.get(kind.partition(".")[2], event.get("progress"))
                if isinstance(fraction, (int, float)):
                    yield Progress(stage, float(fraction))  # type: ignore[arg-type]  # stage is one of the two
            elif kind == "error":
                # The stream goes on to `chat.end` with what was generated; report the error once it has.
                errors.append(event.get("error", event))
            elif kind == "chat.end":
                if errors:
                    raise stream_error(errors[0], model)
                result = event.get("result") or {}
                instance = str(result.get("model_instance_id") or model)
                # Checked, not assumed: a model loaded before keeps its length, and LM Studio may shorten one to fit
                # memory.
                wanted = request.context_length
                if wanted and (length := await loaded_context(session, base, request, instance)) not in (None,
                                                                                                          wanted):
                    yield Notice("context", context_kept(instance, length, wanted))
                yield Finished(rest_stats(result, request.mode.value), result.get("response_id"))
                await drain(stream)
                return
        if errors:
            raise stream_error(errors[0], model)
        raise IncompleteStream()


def stream_rest(request: ChatRequest) -> AsyncGenerator[StreamEvent, None]:
    """Stream one chat turn over LM Studio's native REST API."""
    return stream_dialect(request, _events, ENDPOINT)
