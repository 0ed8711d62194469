"""Stand-in for `server.PromptServer`: `instance`, `client_id`, `routes` and a recording `send_sync`."""

import time

from aiohttp import web


class PromptServer:
    instance: "PromptServer"

    def __init__(self) -> None:
        PromptServer.instance = self
        self.client_id = None  # set by the executor to the queuing client's id
        self.routes = web.RouteTableDef()
        self.messages: list[tuple[float, str, dict, str | None]] = []

    def send_sync(self, event: str, data: dict, sid: str | None = None) -> None:
        """Thread-safe in ComfyUI (it queues onto the server loop); here it records (time, event, data, sid)."""
        self.messages.append((time.monotonic(), event, data, sid))


PromptServer()
