"""Stand-in for `comfy_api.latest` (ComfyUI 0.8.0): `ComfyExtension` and the `io` namespace."""

from abc import ABC, abstractmethod

from . import _io as io


class ComfyExtension(ABC):
    async def on_load(self) -> None:  # noqa: B027 - optional hook with an empty default, as in ComfyUI
        """Never called by ComfyUI 0.8.0 (comfyui-facts.md 1a)."""

    @abstractmethod
    async def get_node_list(self) -> list[type[io.ComfyNode]]: ...


__all__ = ["ComfyExtension", "io"]
