"""Runs the widget's pure-logic tests (`node --test tests/js`) as part of the one test command."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

JS_TESTS = Path(__file__).resolve().parent / "js"


def test_widget_logic_with_node_test_runner():
    node = shutil.which("node")
    if node is None:
        if os.environ.get("CI"):
            raise RuntimeError("CI must have Node.js for the widget's unit tests")
        pytest.skip("Node.js is not installed")
    result = subprocess.run([node, "--test", str(JS_TESTS)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "# fail 0" in result.stdout and "# pass 0" not in result.stdout
