"""The OpenAI-compatible dialect: `POST /v1/chat/completions` with `data:` chunks up to `[DONE]`.

Serves LM Studio and any other OpenAI-compatible server (llama.cpp's llama-server, ...).
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import Any

import aiohttp

from .chat import (
    ChatRequest,
    ConnectionMode,
    Finished,
    ReasoningDelta,
    Stats,
    StreamEvent,
    TextDelta,
    sendable_settings,
    stream_error,
)
from .http_common import IncompleteStream, drain, identify, parse_json, resolve_model, sse_events, stream_dialect
from .sse import ThinkSplitter
from .utils import DataUri

ENDPOINT = "/v1/chat/completions"


def user_message(prompt: str, images: tuple[bytes, ...]) -> dict[str, Any]:
    if not images:
        return {"role": "user", "content": prompt}
    parts: list[dict[str, Any]] = [{"type": "text", "text": prompt}]
    parts += [{"type": "image_url", "image_url": {"url": DataUri(data)}} for data in images]
    return {"role": "user", "content": parts}


def openai_payload(request: ChatRequest, model: str) -> dict[str, Any]:
    """The body of `POST /v1/chat/completions`: the whole chat, its earlier turns first."""
    messages: list[dict[str, Any]] = []
    if request.system_prompt:
        messages.append({"role": "system", "content": request.system_prompt})
    for turn in request.history:
        messages += [user_message(turn.prompt, turn.images), {"role": "assistant", "content": turn.answer}]
    messages.append(user_message(request.prompt, request.images))
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
    # Sampling, stop and draft_model: top_k, min_p, repeat_penalty and draft_model are LM Studio's extensions
    # (llama-server takes all but the last).
    payload.update(sendable_settings(request))
    payload.update(openai_reasoning(request.reasoning))
    if request.json_schema is not None:
        payload["response_format"] = {"type": "json_schema",
                                      "json_schema": {"name": "answer", "strict": True, "schema": request.json_schema}}
    return payload


def openai_reasoning(level: str) -> dict[str, Any]:
    """The fields that carry `reasoning` (off, low, medium, high, on) to an OpenAI-compatible server; {} for auto.

    Two fields, because servers honour different ones: `reasoning_effort` in OpenAI's words ("none" for off) is what
    LM Studio maps to its reasoning setting (it ignores "off" and "on", lmstudio-bug-tracker#2413) and llama.cpp's
    server reads ("none" turns thinking off, any other value goes to the chat template); `chat_template_kwargs`'
    `enable_thinking` is what llama.cpp, vLLM and SGLang pass to the chat template of Qwen3 and its like. "on" has
    no effort in OpenAI's words, so it is only `enable_thinking`.
    """
    if level == "auto":
        return {}
    fields: dict[str, Any] = {"chat_template_kwargs": {"enable_thinking": level != "off"}}
    if level != "on":
        fields["reasoning_effort"] = "none" if level == "off" else level
    return fields


def openai_stats(
    usage: dict[str, Any],
    timings: dict[str, Any],
    started: float,
    first_token: float | None,
    last_token: float | None,
    finish_reason: str | None,
    model: str,
) -> Stats:
    """Statistics for the OpenAI dialect: timings measured here, token counts only from the server's `usage`.

    Draft tokens: OpenAI's `accepted_prediction_tokens`/`rejected_prediction_tokens`, else llama.cpp's `timings`
    (`draft_n`, `draft_n_accepted`).
    """
    output_tokens = usage.get("completion_tokens")
    details = usage.get("completion_tokens_details") or {}
    accepted, rejected = details.get("accepted_prediction_tokens"), details.get("rejected_prediction_tokens")
    drafted = accepted + rejected if accepted is not None and rejected is not None else None
    if accepted is None and "draft_n_accepted" in timings:
        accepted, drafted = timings.get("draft_n_accepted"), timings.get("draft_n")
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
        draft_tokens=drafted,
        accepted_draft_tokens=accepted,
    )


async def _events(session: aiohttp.ClientSession, base: str, request: ChatRequest) -> AsyncGenerator[StreamEvent, None]:
    model = await resolve_model(session, base, request)
    splitter = ThinkSplitter()
    started = time.monotonic()
    first_token = last_token = None
    usage: dict[str, Any] = {}
    timings: dict[str, Any] = {}
    finish_reason = None
    served_model = None

    def pieces(reasoning: str, content: str) -> list[StreamEvent]:
        """One chunk's events: its reasoning field, then its content split at inline `<think>` tags."""
        events: list[StreamEvent] = [ReasoningDelta(reasoning)] if reasoning else []
        for is_reasoning, text in splitter.feed(content):
            events.append(ReasoningDelta(text) if is_reasoning else TextDelta(text))
        return events

    stream = sse_events(session, base, f"{base}{ENDPOINT}", openai_payload(request, model), request)
    async with aclosing(stream):
        async for sse in stream:
            if sse.data.strip() == "[DONE]":
                break
            chunk = parse_json(sse.data)
            if "error" in chunk:
                raise stream_error(chunk["error"], model, await identify(session, base))
            served_model = chunk.get("model") or served_model
            usage = chunk.get("usage") or usage
            timings = chunk.get("timings") or timings  # llama.cpp's
            for choice in chunk.get("choices") or []:
                delta = choice.get("delta") or {}
                finish_reason = choice.get("finish_reason") or finish_reason
                reasoning = delta.get("reasoning_content") or delta.get("reasoning") or ""
                events = pieces(str(reasoning), str(delta.get("content") or ""))
                if events:  # tokens arrive a chunk at a time
                    last_token = time.monotonic()
                    first_token = first_token or last_token
                for event in events:
                    yield event
        else:
            raise IncompleteStream()
        for is_reasoning, text in splitter.close():
            yield ReasoningDelta(text) if is_reasoning else TextDelta(text)
        yield Finished(openai_stats(usage, timings, started, first_token, last_token, finish_reason,
                                    served_model or model))
        await drain(stream)


def stream_openai(request: ChatRequest) -> AsyncGenerator[StreamEvent, None]:
    """Stream one chat turn over the OpenAI-compatible API."""
    return stream_dialect(request, _events, ENDPOINT)
