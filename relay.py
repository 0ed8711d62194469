"""Forwards one item's stream to the browser in ordered, coalesced batches, and keeps it for the outputs.

No ComfyUI imports: `send(chunk_type, content)`, `progress(fraction)` and `notice(kind, text)` are handed in by the
node.
"""

from __future__ import annotations

from collections.abc import Callable

from .chat import Finished, Notice, Progress, ReasoningDelta, Stats, StreamEvent, TextDelta

Send = Callable[[str, str], None]
_STAGE_LABELS = {"model_load": "Loading model", "prompt_processing": "Processing prompt"}


class StreamRelay:
    """Collects the stream for the outputs and forwards it to the browser in ordered, coalesced batches."""

    def __init__(self, send: Send, progress: Callable[[float], None], notice: Send) -> None:
        self.send = send
        self._progress = progress
        self._notice = notice
        self._pending: list[list[str]] = []  # [chunk_type, text] runs, in arrival order
        self._status: Progress | None = None
        self.text: list[str] = []
        self.reasoning: list[str] = []
        self.stats: Stats | None = None
        self.response_id: str | None = None

    def add(self, event: StreamEvent) -> None:
        if isinstance(event, TextDelta):
            self._queue("text", event.text)
            self.text.append(event.text)
        elif isinstance(event, ReasoningDelta):
            self._queue("reasoning", event.text)
            self.reasoning.append(event.text)
        elif isinstance(event, Progress):
            self._status = event
        elif isinstance(event, Finished):
            self.stats, self.response_id = event.stats, event.response_id
        elif isinstance(event, Notice):
            self._notice(event.kind, event.text)

    def reset(self) -> None:
        """Forget a failed attempt before it is tried again; the browser is told to clear the item."""
        self._pending, self._status, self.text, self.reasoning, self.stats = [], None, [], [], None
        self.response_id = None
        self.send("reset", "")

    def _queue(self, chunk_type: str, text: str) -> None:
        if not text:
            return
        if self._pending and self._pending[-1][0] == chunk_type:
            self._pending[-1][1] += text
        else:
            self._pending.append([chunk_type, text])

    def flush(self) -> None:
        """Send what arrived since the last flush: the latest status, then the deltas in order."""
        if self._status is not None:
            status, self._status = self._status, None
            self.send("status", f"{_STAGE_LABELS[status.stage]} {round(status.fraction * 100)}%")
            self._progress(status.fraction)
        pending, self._pending = self._pending, []
        for chunk_type, text in pending:
            self.send(chunk_type, text)
