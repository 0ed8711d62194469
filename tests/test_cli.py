"""The terminal command end to end (`python cli.py ...` in a subprocess) against the local fake LM Studio."""

from __future__ import annotations

import asyncio
import base64
import io
import sys
from pathlib import Path

import pytest
from PIL import Image

from fake_lmstudio import MODEL, native_model

CLI = Path(__file__).resolve().parent.parent / "cli.py"


async def cli(*args: str, env: dict | None = None) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(CLI), *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    return process.returncode, out.decode(), err.decode()


@pytest.mark.parametrize("mode", ["sdk", "rest", "openai"])
async def test_streams_answer_and_statistics(lmstudio, mode):
    code, out, err = await cli("Describe", "--mode", mode, "--server", lmstudio.url, "--model", MODEL)
    assert code == 0, err
    assert "A red square." in out
    assert "mode: " in out.strip().splitlines()[-1]
    if mode != "openai":  # the default OpenAI script carries no reasoning
        assert out.index("Let me look.") < out.index("A red square.")
    assert "\x1b[" not in out  # not a terminal: no colour codes


async def test_image_file_is_sent(lmstudio, tmp_path):
    path = tmp_path / "render.png"
    Image.new("RGBA", (2048, 1024), (255, 0, 0, 0)).save(path)
    code, _, err = await cli("Caption", "--image", str(path), "--mode", "rest", "--server", lmstudio.url,
                             "--model", MODEL)
    assert code == 0, err
    data_url = lmstudio.chat_requests()[0].body["input"][1]["data_url"]
    image = Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1])))
    assert image.format == "JPEG" and image.size == (1024, 512)
    assert image.getpixel((10, 10)) == (255, 255, 255)  # transparency onto white, as in the node


async def test_list_models(lmstudio):
    lmstudio.models = [native_model("a/vlm"), native_model(MODEL, loaded=True, vision=False)]
    code, out, err = await cli("--list-models", "--server", lmstudio.url)
    assert code == 0, err
    assert out.splitlines() == [f"{MODEL}  [loaded]", "a/vlm  [vision]"]


async def test_unreachable_server_fails_clearly(free_port):
    code, out, err = await cli("hi", "--mode", "rest", "--server", f"127.0.0.1:{free_port}", "--model", MODEL)
    assert code == 1 and out == ""
    assert f"Error: LM Studio connection failed. Tried http://127.0.0.1:{free_port}/api/v1/chat" in err


async def test_missing_image_file(lmstudio, tmp_path):
    code, _, err = await cli("hi", "--image", str(tmp_path / "nope.png"), "--server", lmstudio.url)
    assert code == 1 and "nope.png" in err


async def test_prompt_is_required():
    code, _, err = await cli()
    assert code == 2 and "a prompt is required" in err
