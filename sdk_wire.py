"""What crosses between ComfyUI's process and the SDK worker process (`sdk_process` and `sdk_worker`): framed
messages of plain data, and the request and the stream events turned into plain data and back. No ComfyUI
imports, no lmstudio.

Plain data only (str, bytes, numbers, None, tuples, lists, dicts): the pack's own classes live under another
module name in each process (ComfyUI names the package after its folder), so neither side unpickles the other's
classes.

A frame is a 4-byte big-endian length, then a pickle of one tuple whose first item says what it is.
"""

from __future__ import annotations

import dataclasses
import pickle
import struct
from typing import IO, Any

from .chat import (
    ChatRequest,
    ConnectionMode,
    Failure,
    Finished,
    LMStudioError,
    Notice,
    Progress,
    ReasoningDelta,
    Stats,
    StreamEvent,
    TextDelta,
)
from .conversation import Turn

_HEADER = struct.Struct(">I")
Message = tuple[Any, ...]


def write_frame(stream: IO[bytes], message: Message) -> None:
    """One message, written and flushed (the caller holds the stream's lock)."""
    payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_HEADER.pack(len(payload)) + payload)
    stream.flush()


def read_frame(stream: IO[bytes]) -> Message | None:
    """The next message; None once the other side has closed the pipe."""
    header = _read_exactly(stream, _HEADER.size)
    if header is None:
        return None
    payload = _read_exactly(stream, _HEADER.unpack(header)[0])
    return None if payload is None else pickle.loads(payload)


def _read_exactly(stream: IO[bytes], size: int) -> bytes | None:
    chunks, left = [], size
    while left:
        chunk = stream.read(left)
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def request_to_wire(request: ChatRequest) -> dict[str, Any]:
    fields = {field.name: getattr(request, field.name) for field in dataclasses.fields(request)}
    fields["mode"] = request.mode.value
    fields["history"] = [dataclasses.astuple(turn) for turn in request.history]
    return fields


def request_from_wire(fields: dict[str, Any]) -> ChatRequest:
    history = tuple(Turn(*turn) for turn in fields["history"])
    return ChatRequest(**{**fields, "mode": ConnectionMode(fields["mode"]), "history": history})


def event_to_wire(event: StreamEvent) -> Message:
    if isinstance(event, TextDelta):
        return ("text", event.text)
    if isinstance(event, ReasoningDelta):
        return ("reasoning", event.text)
    if isinstance(event, Progress):
        return ("progress", event.stage, event.fraction)
    if isinstance(event, Notice):
        return ("notice", event.kind, event.text)
    return ("finished", dataclasses.asdict(event.stats), event.response_id)


def event_from_wire(message: Message) -> StreamEvent:
    kind, *rest = message
    if kind == "progress":
        return Progress(*rest)
    if kind == "notice":
        return Notice(*rest)
    if kind == "finished":
        return Finished(Stats(**rest[0]), rest[1])
    raise ValueError(f"not a stream event: {kind!r}")  # texts travel on their own (`TEXTS`)


# Texts are the stream's bulk: the receiving side merges consecutive ones (`Handoff.put_text`).
TEXTS = {"text": TextDelta, "reasoning": ReasoningDelta}


def error_to_wire(error: LMStudioError) -> Message:
    return (str(error), error.kind.value, error.retry_after)


def error_from_wire(message: Message) -> LMStudioError:
    text, kind, retry_after = message
    return LMStudioError(text, kind=Failure(kind), retry_after=retry_after)
