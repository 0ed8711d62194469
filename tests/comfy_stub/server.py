"""Stand-in for `server.PromptServer`: `instance`, `client_id`, `routes` and `send_sync` (comfyui-facts.md 2, 5)."""

from aiohttp import web


class PromptServer:
    instance: "PromptServer" = None  # type: ignore[assignment]  # set by __init__, as in ComfyUI

    def __init__(self, loop=None) -> None:
        PromptServer.instance = self
        self.loop = loop
        self.client_id = None  # set by the executor to the queuing client's id
        self.routes = web.RouteTableDef()

    def send_sync(self, event: str, data: dict, sid: str | None = None) -> None:
        """Thread-safe in ComfyUI: queues the message for the server loop, which sends it to `sid` (or all)."""
