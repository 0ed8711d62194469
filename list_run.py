"""The items of one node in one prompt, and what all items of a prompt share. No ComfyUI imports.

ComfyUI calls a node once per list item and starts every async call at once, all with the same node id. The
items learn of each other here: how long the list is, how far it got, which failed, and whether the run must
stop. ComfyUI's interrupt flag is consumed by the first item that raises on it, so the first item to see it
latches it here for every item of the prompt. State lives per event loop, i.e. per prompt.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from dataclasses import dataclass, field

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"


@dataclass
class ListRun:
    """One node's items in one prompt: their states and progress, and a stop reason shared by all of them."""

    states: dict[int, str] = field(default_factory=dict)
    fractions: dict[int, float] = field(default_factory=dict)
    abort_message: str | None = None  # set by an item whose error policy stops the whole run (`abort`)
    stopped: asyncio.Event = field(default_factory=asyncio.Event)  # set once the items must stop: Cancel or `abort`
    resumed: int = 0  # items whose answer came back from the answers file
    vram_freed: bool = False  # ComfyUI's VRAM is handed over once per list, not once per item
    notices: dict[str, str] = field(default_factory=dict)  # kind -> sentence; the node shows them all, one per line
    # Items started so far (every item of a list is started within the same few loop turns); kept, not derived,
    # because every message to the browser carries it.
    count: int = 0
    returned: int = 0  # items that have returned their output so far
    waited_items: set[int] = field(default_factory=set)  # items that waited out a busy server at least once
    started_at: float = field(default_factory=time.monotonic)

    def start(self, index: int) -> None:
        self.states[index] = QUEUED
        self.fractions[index] = 0.0
        self.count = max(self.count, len(self.states), index + 1)

    def set(self, index: int, state: str) -> None:
        self.states[index] = state
        if state not in (QUEUED, RUNNING):
            self.fractions[index] = 1.0

    def progress(self, index: int, fraction: float) -> float:
        """Record one item's progress; the list's progress, 0 to 1 (each finished item counts 1/count)."""
        self.fractions[index] = min(max(fraction, 0.0), 1.0)
        return sum(self.fractions.values()) / max(self.count, 1)

    def note(self, kind: str, text: str) -> tuple[str, bool]:
        """Record the run's notice of `kind`; (every notice, one per line; whether this one is new)."""
        new = self.notices.get(kind) != text
        self.notices[kind] = text
        return "\n".join(self.notices.values()), new

    def returned_next(self) -> int:
        """An item returns its output: its place in the order the run's items returned (1 = first)."""
        self.returned += 1
        return self.returned

    def summary(self, now: float) -> str:
        """The list in one line: how many items came back how, and how fast."""
        done = sum(state == DONE for state in self.states.values())
        failed = sum(state == FAILED for state in self.states.values())
        parts = [f"{done} of {self.count} done"]
        if self.resumed:
            parts.append(f"{self.resumed} resumed")
        if self.waited_items:
            parts.append(f"{len(self.waited_items)} waited for a busy server")
        if failed:
            parts.append(f"{failed} failed")
        seconds = max(now - self.started_at, 1e-6)
        return f"list: {', '.join(parts)} | {self.count * 60 / seconds:.1f} items/min | {duration(seconds)}"

    def abort(self, message: str) -> None:
        """An item's error stops the whole run (the first error is the one every item reports)."""
        self.abort_message = self.abort_message or message
        self.stopped.set()

    def active(self, besides: int | None = None) -> bool:
        """Whether any item (other than `besides`) is still queued or running."""
        return any(s in (QUEUED, RUNNING) for i, s in self.states.items() if i != besides)


def duration(seconds: float) -> str:
    """'2 min 5 s', or '12.3 s' under a minute."""
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest} s" if minutes else f"{seconds:.1f} s"


@dataclass
class PromptState:
    interrupted: bool = False
    runs: dict[str, ListRun] = field(default_factory=dict)
    waiting: int = 0  # items waiting (for a slot, out a refusal) for a stop signal instead of polling for one
    watcher: asyncio.Task | None = None  # the one task that polls ComfyUI's interrupt flag for them

    def interrupt(self) -> None:
        """Cancel is seen: every run of the prompt stops."""
        self.interrupted = True
        for run in self.runs.values():
            run.stopped.set()


_prompts: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, PromptState] = weakref.WeakKeyDictionary()


def prompt_state() -> PromptState:
    """The running prompt's shared state (ComfyUI runs each prompt in a fresh event loop)."""
    return _prompts.setdefault(asyncio.get_running_loop(), PromptState())


def list_run(node_id: str, index: int) -> ListRun:
    """The node's run in this prompt; item 0 with no item active starts a new one (a node runs once per prompt)."""
    runs = prompt_state().runs
    if node_id not in runs or (index == 0 and not runs[node_id].active()):
        runs[node_id] = ListRun()
    return runs[node_id]
