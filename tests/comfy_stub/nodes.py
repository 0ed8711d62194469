"""Stand-in for the part of ComfyUI's `nodes` module the executor calls before every node and list item."""

import comfy.model_management


def before_node_execution() -> None:
    comfy.model_management.throw_exception_if_processing_interrupted()
