"""Check an LM Studio setup from a terminal with the node's own client, before opening ComfyUI.

    python cli.py "Describe this image in one sentence." --image render.png --mode rest
    python cli.py --list-models --server 192.168.1.20

Prints the reasoning (dimmed) and the answer as they stream, then the statistics. An API token comes from
LMSTUDIO_API_TOKEN (or LM_API_TOKEN), as in ComfyUI. Exit status: 0 done, 1 LM Studio failed, 130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import sys
from pathlib import Path
from typing import TextIO

if not __package__:
    # Run as a script: load this folder as a package (without its __init__, which needs ComfyUI) so the
    # modules' relative imports work whatever the folder is called.
    _root = Path(__file__).resolve().parent
    _spec = importlib.util.spec_from_file_location(
        "lmstudio_stream_chat", _root / "__init__.py", submodule_search_locations=[str(_root)]
    )
    assert _spec is not None  # a file location always gives a spec
    sys.modules[_spec.name] = importlib.util.module_from_spec(_spec)
    __package__ = _spec.name

from .chat import (
    DEFAULT_SERVER_URL,
    ChatRequest,
    ConnectionMode,
    Finished,
    LMStudioError,
    Progress,
    ReasoningDelta,
    TextDelta,
    api_token_from_env,
)
from .client import list_models, stream_chat
from .utils import DEFAULT_JPEG_QUALITY, DEFAULT_MAX_SIDE, encode_pil

MODES = {"sdk": ConnectionMode.SDK, "rest": ConnectionMode.REST, "openai": ConnectionMode.OPENAI}
DIM, RESET = "\x1b[2m", "\x1b[0m"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="cli.py", description="Stream a chat from LM Studio, as the ComfyUI node does."
    )
    parser.add_argument("prompt", nargs="?", help="the user message")
    parser.add_argument("--image", type=Path, help="an image file (PNG, JPEG, WebP, ...) sent as JPEG")
    parser.add_argument("--mode", choices=sorted(MODES), default="sdk", help="connection mode (default: sdk)")
    parser.add_argument("--server", default=DEFAULT_SERVER_URL, help=f"server URL (default: {DEFAULT_SERVER_URL})")
    parser.add_argument("--model", default="", help="model key or instance id (default: the loaded model)")
    parser.add_argument("--system", default="", help="system prompt")
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--max-tokens", type=int, default=-1, help="-1 for no limit (default)")
    parser.add_argument("--max-image-side", type=int, default=DEFAULT_MAX_SIDE, help="0 keeps the image's size")
    parser.add_argument("--list-models", action="store_true", help="list the server's models and exit")
    args = parser.parse_args(argv)
    if not args.list_models and not args.prompt:
        parser.error("a prompt is required (or --list-models)")
    return args


def _load_image(path: Path, max_side: int) -> bytes:
    from PIL import Image, ImageOps

    with Image.open(path) as image:
        return encode_pil(ImageOps.exif_transpose(image), max_side=max_side, quality=DEFAULT_JPEG_QUALITY)


async def _list(args: argparse.Namespace, out: TextIO) -> None:
    for model in await list_models(args.server, api_token=api_token_from_env()):
        tags = (["loaded"] if model.loaded_ids else []) + (["vision"] if model.vision else [])
        out.write(f"{model.key}{'  [' + ', '.join(tags) + ']' if tags else ''}\n")


async def _chat(args: argparse.Namespace, out: TextIO, err: TextIO, color: bool) -> None:
    images = (_load_image(args.image, args.max_image_side),) if args.image else ()
    request = ChatRequest(
        prompt=args.prompt,
        server_url=args.server,
        mode=MODES[args.mode],
        model=args.model,
        system_prompt=args.system,
        images=images,
        temperature=args.temperature,
        max_tokens=args.max_tokens,
        api_token=api_token_from_env(),
    )
    dim, reset = (DIM, RESET) if color else ("", "")
    last = None
    async for event in stream_chat(request):
        if isinstance(event, ReasoningDelta):
            out.write(f"{dim}{event.text}{reset}")
        elif isinstance(event, TextDelta):
            if last is ReasoningDelta:
                out.write("\n\n")
            out.write(event.text)
        elif isinstance(event, Progress):
            label = "loading model" if event.stage == "model_load" else "processing prompt"
            err.write(f"\r{dim}{label} {round(event.fraction * 100)}%{reset}\x1b[K" if color else "")
        elif isinstance(event, Finished):
            out.write(f"\n\n{dim}{event.stats.summary()}{reset}\n")
        if isinstance(event, (ReasoningDelta, TextDelta)):
            last = type(event)
        out.flush()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    color = sys.stdout.isatty() and "NO_COLOR" not in os.environ
    try:
        asyncio.run(_list(args, sys.stdout) if args.list_models else _chat(args, sys.stdout, sys.stderr, color))
    except (LMStudioError, OSError, ValueError) as exc:  # OSError, ValueError: an unreadable image file
        sys.stderr.write(f"\nError: {exc}\n")
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
