"""A tiny Chrome DevTools Protocol driver for Debian's headless Chromium, over aiohttp (no browser download)."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import aiohttp


def chromium_path() -> str | None:
    return os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


def _leaving(message: dict[str, Any]) -> bool:
    """The page asks "Leave site?" before it unloads."""
    return message.get("method") == "Page.javascriptDialogOpening" and message["params"]["type"] == "beforeunload"


class Chromium:
    """One headless browser with one page; `evaluate` runs JS (awaiting promises) and returns its value."""

    def __init__(self) -> None:
        self._process: asyncio.subprocess.Process | None = None
        self._profile = tempfile.TemporaryDirectory(prefix="lmstudio-chromium-")
        self._session: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._ids = itertools.count(1)
        self.console: list[str] = []

    async def start(self) -> None:
        self._process = await asyncio.create_subprocess_exec(
            chromium_path(), "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-dev-shm-usage", "--window-size=1280,900", f"--user-data-dir={self._profile.name}",
            "--remote-debugging-port=0", "about:blank",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )
        endpoint = None
        while endpoint is None:
            line = await asyncio.wait_for(self._process.stderr.readline(), 30)
            if not line:
                raise RuntimeError("Chromium exited before DevTools started")
            if match := re.search(rb"DevTools listening on (ws://\S+)", line):
                endpoint = match.group(1).decode()
        port = re.search(r":(\d+)/", endpoint).group(1)
        self._session = aiohttp.ClientSession()
        async with self._session.get(f"http://127.0.0.1:{port}/json/list") as response:
            targets = await response.json()
        page = next(t for t in targets if t["type"] == "page")
        self._ws = await self._session.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0)
        await self.send("Runtime.enable")
        await self.send("Page.enable")

    async def send(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        call = next(self._ids)
        await self._ws.send_json({"id": call, "method": method, "params": params or {}})
        while True:
            message = json.loads((await asyncio.wait_for(self._ws.receive(), 60)).data)
            if message.get("method") == "Runtime.consoleAPICalled":
                self.console.append(" ".join(str(a.get("value", a.get("description"))) for a in
                                             message["params"]["args"]))
            elif message.get("method") == "Runtime.exceptionThrown":
                self.console.append("EXCEPTION " + json.dumps(message["params"]["exceptionDetails"])[:500])
            elif _leaving(message):
                # "Leave site? Changes may not be saved" (the frontend asks once a person touched the page): a
                # reload in a test leaves as a person confirming it would. Its reply is not waited for.
                await self._ws.send_json({"id": next(self._ids), "method": "Page.handleJavaScriptDialog",
                                          "params": {"accept": True}})
            if message.get("id") == call:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]

    async def evaluate(self, expression: str) -> Any:
        result = await self.send("Runtime.evaluate", {"expression": expression, "awaitPromise": True,
                                                      "returnByValue": True})
        if "exceptionDetails" in result:
            raise RuntimeError(f"JS error: {json.dumps(result['exceptionDetails'])[:800]}")
        return result["result"].get("value")

    async def goto(self, url: str, ready: str = "window.harnessReady === true") -> None:
        await self.send("Page.navigate", {"url": url})
        for _ in range(200):
            if await self.evaluate(f"Boolean({ready})"):
                return
            await asyncio.sleep(0.05)
        raise RuntimeError(f"page never became ready: {url}; console: {self.console}")

    async def mouse(self, kind: str, x: float, y: float, **extra: Any) -> None:
        """One real input event at (x, y) in CSS pixels: mousePressed, mouseMoved, mouseReleased or mouseWheel."""
        buttons = {"button": "left", "buttons": 1, "clickCount": 1} if kind != "mouseWheel" else {}
        if kind == "mouseMoved" and not extra.pop("pressed", False):
            buttons = {}
        await self.send("Input.dispatchMouseEvent", {"type": kind, "x": x, "y": y, **buttons, **extra})

    async def drag(self, start: tuple[float, float], end: tuple[float, float], steps: int = 12) -> None:
        """Press at `start`, move in steps to `end`, release: a person dragging a handle."""
        await self.mouse("mousePressed", *start)
        for step in range(1, steps + 1):
            x = start[0] + (end[0] - start[0]) * step / steps
            y = start[1] + (end[1] - start[1]) * step / steps
            await self.mouse("mouseMoved", x, y, pressed=True)
            await asyncio.sleep(0.02)
        await self.mouse("mouseReleased", *end)

    async def wheel(self, x: float, y: float, delta_y: float) -> None:
        await self.mouse("mouseMoved", x, y)
        await self.mouse("mouseWheel", x, y, deltaX=0, deltaY=delta_y)

    async def screenshot(self, path: Path) -> None:
        data = await self.send("Page.captureScreenshot", {"format": "png"})
        path.write_bytes(base64.b64decode(data["data"]))

    async def close(self) -> None:
        if self._ws is not None:
            await self._ws.close()
        if self._session is not None:
            await self._session.close()
        if self._process is not None and self._process.returncode is None:
            self._process.kill()
            await self._process.wait()
        self._profile.cleanup()
