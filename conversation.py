"""A chat so far, as it travels from one LM Studio Chat node to the next: its system prompt and its turns. No imports
from the pack or ComfyUI: the request, the backends and the node all build on it.

Immutable: a node that continues a chat makes a new one that shares the earlier turns (and their image bytes)
with its input, so a chain of turns never copies an image. It lives only in ComfyUI's outputs, never in the
workflow: a saved workflow holds the nodes and their widgets, not what they produced.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Turn:
    """One question and its answer. `response_id` names LM Studio's stored copy of it (REST API mode with `store`)."""

    prompt: str
    images: tuple[bytes, ...]  # JPEG bytes, shared with the request that sent them
    answer: str
    response_id: str | None = None

    def identity(self) -> dict[str, Any]:
        """What the turn says, for the answers file's key: images by their digest; where it is stored does not count."""
        return {"prompt": self.prompt, "images": [hashlib.sha256(jpeg).hexdigest() for jpeg in self.images],
                "answer": self.answer}


@dataclass(frozen=True)
class Conversation:
    """The system prompt (its first turn's) and every turn so far, in order."""

    system_prompt: str = ""
    turns: tuple[Turn, ...] = ()

    def then(self, turn: Turn) -> Conversation:
        return Conversation(self.system_prompt, (*self.turns, turn))
