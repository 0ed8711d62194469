"""Loads the repo root as a package under a fixed alias, with ComfyUI's real modules or the stand-in."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
PACKAGE = "lmstudio_pack"  # the checkout folder may be named anything, hyphens included

# `python -m pytest` from the checkout puts it on sys.path, where the pack's own `utils.py` would shadow ComfyUI's
# `utils` package: the pack is imported only under its alias.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT]
if os.environ.get("COMFYUI_PATH"):
    sys.path.insert(0, os.environ["COMFYUI_PATH"])
try:
    # A real ComfyUI on a machine without CUDA needs --cpu before anything imports comfy.model_management. As
    # main.py does, ComfyUI's `utils` package comes first too (it imports only the standard library): later, `nodes`
    # puts comfy/, with its own utils.py, at the front of sys.path.
    import comfy.cli_args
    import utils.install_util  # noqa: F401

    comfy.cli_args.args.cpu = True
    import comfy_api.latest  # noqa: F401
except ImportError:
    sys.path.append(str(TESTS / "comfy_stub"))  # the stand-in, only when ComfyUI itself is not importable
# After ComfyUI's own folder: a test helper must never shadow one of ComfyUI's top-level modules.
sys.path.append(str(TESTS))

import server as _server  # noqa: E402

if getattr(_server.PromptServer, "instance", None) is None:
    # A real ComfyUI creates its PromptServer before it imports custom nodes (which register routes on it).
    import asyncio

    _server.PromptServer(asyncio.new_event_loop())

if PACKAGE not in sys.modules:
    spec = importlib.util.spec_from_file_location(PACKAGE, ROOT / "__init__.py", submodule_search_locations=[str(ROOT)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACKAGE] = module
    spec.loader.exec_module(module)


@pytest.fixture(autouse=True)
def user_folder(tmp_path, monkeypatch) -> Path:
    """ComfyUI's user folder, fresh for each test: the answers a test stores never resume another test's run."""
    import folder_paths

    folder = tmp_path / "comfy-user"
    monkeypatch.setattr(folder_paths, "get_user_directory", lambda: str(folder))
    return folder


@pytest.fixture
def fake():
    from fake_lmstudio import FakeLMStudio

    return FakeLMStudio()


@pytest.fixture
async def lmstudio(fake, aiohttp_server):
    """A running fake LM Studio; `fake.url` is its base URL. The SDK worker's kept connections are closed afterwards
    (before the server stops); the worker itself stays for the next test, as it stays between a user's prompts."""
    from lmstudio_pack.sdk_process import WORKER

    server = await aiohttp_server(fake.app())
    fake.url = f"http://127.0.0.1:{server.port}"
    yield fake
    await WORKER.close_connections()


@pytest.fixture
def free_port() -> int:
    """A local port with nothing listening on it (connection refused)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def comfy(monkeypatch):
    """Node tests: what the node sends over the websocket and to the progress bar, recorded; the interrupt flag
    down; main.py's progress hook (which checks the flag) installed. Works with the stand-in or a real ComfyUI."""
    import time

    import comfy.model_management as model_management
    import comfy.utils as comfy_utils
    from server import PromptServer

    from chat_node_helpers import CLIENT_ID, Recorder

    recorder = Recorder()
    server = PromptServer.instance
    monkeypatch.setattr(server, "client_id", CLIENT_ID, raising=False)
    monkeypatch.setattr(server, "send_sync", lambda event, data, sid=None: recorder.messages.append(
        (time.monotonic(), event, data, sid)))
    for name in ("unload_all_models", "soft_empty_cache"):
        monkeypatch.setattr(model_management, name, lambda *_, name=name, **__: recorder.vram_calls.append(name))
    model_management.interrupt_current_processing(False)

    def hook(value, total, preview, node_id=None):  # main.py:284-313
        recorder.progress.append((value, total, node_id))
        model_management.throw_exception_if_processing_interrupted()

    comfy_utils.set_progress_bar_global_hook(hook)
    Recorder.current = recorder
    yield recorder
    comfy_utils.set_progress_bar_global_hook(None)
    model_management.interrupt_current_processing(False)


@pytest.fixture(scope="session")
def real_comfyui_servers():
    """`get(version, frontend=None)`: a started real ComfyUI server, one per (version, frontend), shared by every
    real-ComfyUI module of the session and stopped at its end. Without a cached build: a skip, or in CI a failure."""
    import real_comfyui

    servers: dict[tuple[str, str | None], real_comfyui.ComfyServer] = {}

    def get(version: str, frontend: str | None = None) -> real_comfyui.ComfyServer:
        key = (version, frontend)
        if key not in servers:
            servers[key] = unstarted_server(version, frontend).start()
        return servers[key]

    yield get
    for server in servers.values():
        server.stop()


@pytest.fixture
def own_comfyui_server():
    """`get(version)`: a real ComfyUI server of this test's own, for one that kills or restarts it; stopped after."""
    made = []

    def get(version: str):
        made.append(unstarted_server(version, None))
        return made[-1].start()

    yield get
    for server in made:
        server.stop()


def unstarted_server(version: str, frontend: str | None):
    """A real ComfyUI server not started yet; without a cached build (or frontend): a skip, or in CI a failure."""
    import real_comfyui

    root = real_comfyui.frontend_root(frontend) if frontend else None
    missing = f"frontend {frontend} is not unpacked (.ci/run fetches it)" if frontend and not root else ""
    server = None
    try:
        server = None if missing else real_comfyui.ComfyServer(version, frontend=root)
    except LookupError as exc:
        missing = str(exc)
    if missing or server is None:
        if os.environ.get("CI"):
            raise RuntimeError(f"CI must prepare the real-ComfyUI tier (.ci/run does): {missing}")
        pytest.skip(missing)
    return server
