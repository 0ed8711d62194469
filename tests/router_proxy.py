"""LiteLLM's proxy, the real one, in front of local servers: the router tier's helper.

The proxy runs from its own venv (tests/router/setup.sh; `LITELLM_BIN` names its `litellm`), on loopback, with a
master key as LiteLLM insists, its cost map read from the package (it never reaches out), and the servers behind it
on ports fixed when the proxy starts, so each test can start and stop its own servers there.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

MASTER_KEY = "sk-router-tier-test-key"
MODEL_NAME = "lmstudio"  # what the node's model_id names: the proxy's model group


def litellm_binary() -> str:
    """`LITELLM_BIN`: without it the router tier is skipped, and in CI it fails instead (.ci/run builds it)."""
    import pytest

    binary = os.environ.get("LITELLM_BIN")
    if not binary:
        if os.environ.get("CI"):
            raise RuntimeError("CI must prepare the router tier (.ci/run runs tests/router/setup.sh)")
        pytest.skip('the router tier needs LiteLLM\'s proxy: eval "$(tests/router/setup.sh)"')
    return binary


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def proxy_config(backends: list[str], parallel: int, model: str) -> dict:
    """Two (or more) OpenAI-compatible servers as one model group, each with `parallel` requests at once."""
    return {
        "model_list": [{"model_name": MODEL_NAME,
                        "litellm_params": {"model": f"openai/{model}", "api_base": f"{url}/v1", "api_key": "none",
                                           "max_parallel_requests": parallel}}
                       for url in backends],
        # least-busy as a user with a GPU each would pick; a server that fails is left out for a second, not a minute
        "router_settings": {"routing_strategy": "least-busy", "cooldown_time": 1},
        "general_settings": {"master_key": "os.environ/LITELLM_MASTER_KEY"},
    }


@dataclass
class LiteLLMProxy:
    """One proxy process; `backends` are the URLs it routes to (nothing need listen there yet)."""

    binary: str
    backends: list[str]
    parallel: int
    model: str
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None
    _folder: tempfile.TemporaryDirectory | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 90.0) -> LiteLLMProxy:
        self._folder = tempfile.TemporaryDirectory(prefix="litellm-")
        folder = Path(self._folder.name)
        config = folder / "config.yaml"
        config.write_text(json.dumps(proxy_config(self.backends, self.parallel, self.model)))  # JSON is YAML
        env = {**os.environ, "LITELLM_MASTER_KEY": MASTER_KEY, "LITELLM_LOCAL_MODEL_COST_MAP": "True",
               "LITELLM_TELEMETRY": "False", "LITELLM_LOG": "ERROR", "HOME": str(folder)}
        env.pop("DATABASE_URL", None)
        self.process = subprocess.Popen(
            [self.binary, "--config", str(config), "--host", "127.0.0.1", "--port", str(self.port),
             "--num_workers", "1"],
            stdout=(folder / "proxy.log").open("w"), stderr=subprocess.STDOUT, env=env, cwd=folder)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"LiteLLM's proxy exited with {self.process.returncode}:\n{self.log()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/health/liveliness", timeout=2) as answer:
                    if answer.status == 200:
                        return self
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"LiteLLM's proxy did not answer within {timeout:.0f} s:\n{self.log()[-3000:]}")

    def log(self) -> str:
        path = Path(self._folder.name) / "proxy.log" if self._folder else None
        return path.read_text(errors="replace") if path and path.exists() else ""

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        if self._folder is not None:
            self._folder.cleanup()
            self._folder = None
