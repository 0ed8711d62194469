"""Stand-in for `comfy_execution.utils` (ComfyUI 0.8.0): which node, and which list item, is executing."""

from __future__ import annotations

import contextvars
from typing import NamedTuple


class ExecutionContext(NamedTuple):
    prompt_id: str
    node_id: str
    list_index: int | None


_current: contextvars.ContextVar[ExecutionContext | None] = contextvars.ContextVar("current_executing_context",
                                                                                   default=None)


def get_executing_context() -> ExecutionContext | None:
    return _current.get(None)


class CurrentNodeContext:
    """Sets the executing context for the code inside `with` (the executor wraps every item's call in one)."""

    def __init__(self, prompt_id: str, node_id: str, list_index: int | None = None) -> None:
        self.context = ExecutionContext(prompt_id, node_id, list_index)
        self.token: contextvars.Token | None = None

    def __enter__(self) -> CurrentNodeContext:
        self.token = _current.set(self.context)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.token is not None:
            _current.reset(self.token)
