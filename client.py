"""The one entry point for a chat: picks the backend for the connection mode, and nothing more.

`stream_chat(request)` yields typed events (text and reasoning deltas, progress, final statistics) and raises
`LMStudioError` with a human message on any failure. Closing the iterator (or cancelling the task that iterates
it) stops LM Studio's generation. No ComfyUI imports: the terminal command uses it too.

    node.py / cli.py -> client.py -> rest_backend / openai_backend / sdk_process -> http_common, sse -> chat
                                      sdk_process ==(pipe)==> sdk_worker -> sdk_backend (the SDK's own process)
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import aclosing

from .chat import (
    ChatRequest,
    ConnectionMode,
    Finished,
    ModelInfo,
    ReasoningDelta,
    StreamEvent,
    TextDelta,
    no_answer,
    no_structured_output,
)
from .http_common import list_models_http, parallel_slots_http, unload_http
from .openai_backend import stream_openai
from .rest_backend import stream_rest
from .sdk_process import WORKER
from .structured import check_answer


async def stream_chat(request: ChatRequest) -> AsyncGenerator[StreamEvent, None]:
    """Stream one chat turn; raises `LMStudioError` with a human message on any failure.

    With a `json_schema`, the stream ends in an error rather than `Finished` unless the answer is JSON that matches it;
    a stream that reasoned and wrote no answer (max_tokens spent thinking) ends in an error too (`chat.no_answer`).
    """
    if request.json_schema is not None and request.mode is ConnectionMode.REST:
        raise no_structured_output()  # before anything is sent
    if request.mode is ConnectionMode.SDK:
        events = WORKER.stream(request)  # in the SDK's own process: `sdk_worker` says why
    elif request.mode is ConnectionMode.REST:
        events = stream_rest(request)
    else:
        events = stream_openai(request)
    answer: list[str] = []
    reasoned = False
    async with aclosing(events):
        async for event in events:
            if isinstance(event, TextDelta):
                answer.append(event.text)
            elif isinstance(event, ReasoningDelta):
                reasoned = reasoned or bool(event.text.strip())
            elif isinstance(event, Finished):
                text = "".join(answer)
                if (error := no_answer(text, reasoned, event.stats, request.max_tokens)) is not None:
                    raise error
                if request.json_schema is not None:
                    check_answer(text, request.json_schema)
            yield event


async def list_models(server_url: str, *, api_token: str | None = None, timeout: float = 5.0) -> list[ModelInfo]:
    """The server's chat models, loaded ones first (over HTTP in every mode: it needs no SDK client)."""
    request = ChatRequest(prompt="", server_url=server_url, api_token=api_token, connect_timeout=timeout)
    return await list_models_http(request, timeout)


async def unload_model(
    request: ChatRequest, instance_id: str, *, confirm_seconds: float = 10.0, poll_seconds: float = 0.25
) -> bool:
    """Ask LM Studio to unload `instance_id` and wait until it is gone; False if not confirmed in time."""
    if request.mode is ConnectionMode.SDK:
        return await WORKER.unload(request, instance_id, confirm_seconds=confirm_seconds, poll_seconds=poll_seconds)
    return await unload_http(request, instance_id, confirm_seconds=confirm_seconds, poll_seconds=poll_seconds)


async def parallel_slots(request: ChatRequest) -> int | None:
    """How many predictions the server runs at once for this request's model; None where it does not say."""
    return await parallel_slots_http(request)
