"""What the prompt ComfyUI runs says about a node's links (the `PROMPT` hidden input). Pure; no ComfyUI imports.

A link in a prompt is `[source node id, output index]` in the taking node's inputs; an unlinked optional input is
simply absent, so these answers come from the prompt, never from an input's value (None either way).
"""

from __future__ import annotations

from typing import Any

Prompt = dict[str, Any]


def input_linked(prompt: Prompt | None, node_id: str, name: str) -> bool:
    """Whether the prompt links something to input `name` of node `node_id`."""
    node = (prompt or {}).get(node_id) or {}
    return isinstance((node.get("inputs") or {}).get(name), list)


def linked_outputs(prompt: Prompt | None, node_id: str) -> set[int]:
    """The indices of node `node_id`'s outputs that some node of the prompt takes."""
    return {value[1] for node in (prompt or {}).values() if isinstance(node, dict)
            for value in (node.get("inputs") or {}).values()
            if isinstance(value, list) and len(value) == 2 and str(value[0]) == node_id and isinstance(value[1], int)}
