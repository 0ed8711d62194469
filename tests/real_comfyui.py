"""Real ComfyUI servers for the tests: built once by the shared `comfyui/setup.sh` (cached), started on CPU with
this pack linked into a `custom_nodes` of their own, and driven through `/prompt` and the websocket as the
browser drives them.

`.ci/run` builds what is not cached; here a missing build skips the tier outside CI and fails it in CI.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
PACK = "lmstudio-stream-chat"  # the folder name the README's `git clone` gives
VERSIONS = ("0.8.0", "0.33.0")
# The frontend each version pins (its requirements.txt), and the newest on PyPI, served with --front-end-root.
PINNED_FRONTEND = {"0.8.0": "1.35.9", "0.33.0": "1.49.6"}
NEWEST_FRONTEND = "1.58.1"
START_SECONDS = 180.0
# What a first start would otherwise greet the test browser with (the templates dialog, the tour).
SETTINGS = {"Comfy.TutorialCompleted": True, "Comfy.Validation.Workflows": False,
            "Comfy.Workflow.ShowMissingNodesWarning": True, "Comfy.Workflow.ShowMissingModelsWarning": False}


def shared_dir() -> Path:
    return Path(os.environ.get("LMSTUDIO_SHARED_DIR", ROOT.parent / "shared"))


def build(version: str) -> tuple[Path, Path] | None:
    """(COMFYUI_PATH, COMFYUI_PYTHON) of a finished build of `version`, or None; never builds."""
    script = shared_dir() / "comfyui" / "setup.sh"
    if not script.is_file():
        return None
    # Spelled as `.ci/run` spells it, from the checkout: the script's cache stamp hashes its own path as given and
    # the archive's absolute path, so a checkout whose shared/ lies elsewhere rebuilds (unpack and reinstall, a
    # few minutes) once, and finds its own build here.
    done = subprocess.run(["bash", os.path.relpath(script, ROOT), version, "--cached"], cwd=ROOT, capture_output=True,
                          text=True)
    if done.returncode != 0:
        return None
    found = dict(line.removeprefix("export ").split("=", 1) for line in done.stdout.splitlines() if "=" in line)
    return Path(found["COMFYUI_PATH"]), Path(found["COMFYUI_PYTHON"])


def frontend_root(version: str) -> Path | None:
    """The unpacked `comfyui-frontend-package` of `version` (`.ci/run` fetches the newest), or None."""
    cache = Path(os.environ.get("COMFYUI_FRONTENDS", Path.home() / ".cache" / "lmstudio-comfyui" / "frontends"))
    static = cache / version / "comfyui_frontend_package" / "static"
    return static if (static / "index.html").is_file() else None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Run:
    """What one queued prompt sent back over the websocket, in order, until it ended."""

    prompt_id: str
    messages: list[dict[str, Any]] = field(default_factory=list)
    outcome: str = ""  # execution_success | execution_error | execution_interrupted

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [m["data"] for m in self.messages if m["type"] == kind]

    def stream(self, chunk_type: str | None = None) -> list[dict[str, Any]]:
        """The pack's `lmstudio.stream.update` payloads, optionally of one chunk type."""
        updates = self.of("lmstudio.stream.update")
        return [u for u in updates if chunk_type is None or u["chunk_type"] == chunk_type]

    @property
    def error(self) -> dict[str, Any]:
        return (self.of("execution_error") or [{}])[0]


class ComfyServer:
    """One real ComfyUI server process on CPU, with its own base directory (custom_nodes, input, output, user)."""

    def __init__(self, version: str, *, frontend: Path | None = None) -> None:
        found = build(version)
        if found is None:
            raise LookupError(f"no finished ComfyUI {version} build (run ../shared/comfyui/setup.sh {version})")
        self.version, (self.tree, self.python) = version, found
        self.frontend = frontend
        self.base = Path(tempfile.mkdtemp(prefix=f"comfyui-{version}-"))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = self.base / "server.log"
        self._process: subprocess.Popen | None = None

    @property
    def input_dir(self) -> Path:
        return self.base / "input"

    @property
    def output_dir(self) -> Path:
        return self.base / "output"

    def start(self) -> ComfyServer:
        for folder in ("custom_nodes", "input", "output", "user/default"):
            (self.base / folder).mkdir(parents=True, exist_ok=True)
        link = self.base / "custom_nodes" / PACK
        if not link.is_symlink():  # a restart after `kill` finds it there
            link.symlink_to(ROOT, target_is_directory=True)
        (self.base / "user" / "default" / "comfy.settings.json").write_text(json.dumps(SETTINGS))
        command = [str(self.python), str(self.tree / "main.py"), "--cpu", "--listen", "127.0.0.1", "--port",
                   str(self.port), "--disable-auto-launch", "--base-directory", str(self.base)]
        if self.frontend is not None:
            command += ["--front-end-root", str(self.frontend)]
        env = {k: v for k, v in os.environ.items() if k not in ("COMFYUI_PATH", "PYTHONPATH")}
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(command, cwd=self.tree, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"ComfyUI {self.version} exited at start:\n{self.log()[-3000:]}")
            with contextlib.suppress(OSError):
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    if self._ready():
                        return self
            time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"ComfyUI {self.version} did not start in {START_SECONDS:.0f} s:\n{self.log()[-3000:]}")

    def _ready(self) -> bool:
        import urllib.request

        try:
            with urllib.request.urlopen(f"{self.url}/object_info/LMStudioStreamChat", timeout=5) as response:
                return "LMStudioStreamChat" in json.loads(response.read())
        except (OSError, ValueError):
            return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        """SIGKILL, as a crash or a power cut ends it: nothing runs on the way out; the base directory stays."""
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait()

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        shutil.rmtree(self.base, ignore_errors=True)

    # ---- driving it as the browser does

    async def object_info(self) -> dict[str, Any]:
        async with aiohttp.ClientSession() as session, session.get(f"{self.url}/object_info") as response:
            return await response.json()

    async def post(self, path: str, body: Any = None) -> Any:
        async with aiohttp.ClientSession() as session, session.post(f"{self.url}{path}", json=body) as response:
            text = await response.text()
            if response.status >= 400:
                raise RuntimeError(f"POST {path}: HTTP {response.status}: {text[:2000]}")
            return json.loads(text) if text else None

    @contextlib.asynccontextmanager
    async def socket(self):
        """The websocket a browser tab holds, and its client id."""
        client_id = uuid.uuid4().hex
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(f"{self.url}/ws?clientId={client_id}", max_msg_size=0) as ws:
                yield ws, client_id

    async def run(self, prompt: dict[str, Any], *, timeout: float = 60.0, on_message=None) -> Run:
        """Queue `prompt` and collect its messages until it ends. `on_message(run, message)` may act meanwhile."""
        async with self.socket() as (ws, client_id):
            queued = await self.post("/prompt", {"prompt": prompt, "client_id": client_id})
            run = Run(queued["prompt_id"])
            async with asyncio.timeout(timeout):
                async for frame in ws:
                    if frame.type != aiohttp.WSMsgType.TEXT:
                        continue  # binary previews
                    message = json.loads(frame.data)
                    data = message.get("data") or {}
                    if data.get("prompt_id") not in (None, run.prompt_id):
                        continue
                    run.messages.append(message)
                    if on_message is not None:
                        await on_message(run, message)
                    if message["type"] in ("execution_success", "execution_error", "execution_interrupted"):
                        run.outcome = message["type"]
                        return run
        raise RuntimeError("the websocket closed before the prompt ended")
