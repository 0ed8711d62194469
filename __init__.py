"""LM Studio nodes for ComfyUI (V3 API): stream a chat, with an optional image, from a local or LAN LM Studio."""

from .node import comfy_entrypoint

# The browser half (the live stream widget); ComfyUI serves it under /extensions/<this folder>/.
WEB_DIRECTORY = "./web"

__all__ = ["WEB_DIRECTORY", "comfy_entrypoint"]
