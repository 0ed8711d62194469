"""Pure helpers shared by the node, the client and the terminal command. No ComfyUI imports."""

from __future__ import annotations

import base64
import io
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

import numpy as np
from PIL import Image

from .chat import LMStudioError

DEFAULT_PORT = 1234
DEFAULT_MAX_SIDE = 1024
DEFAULT_JPEG_QUALITY = 90
# Several images in one message multiply the prompt's vision tokens; eight keeps a batch of SDXL renders
# inside a small VLM's context window.
MAX_BATCH_IMAGES = 8

# Suffixes users paste from LM Studio's docs or from other tools; the base URL is what is left.
_API_SUFFIX = re.compile(r"(/api/v[01](/chat)?|/v1(/chat/completions|/models)?)?/*$", re.IGNORECASE)


def normalize_server_url(url: str) -> str:
    """Return `scheme://host:port` from what a user typed (no scheme, trailing slash, a pasted `/v1`...)."""
    text = (url or "").strip()
    if not text:
        text = f"127.0.0.1:{DEFAULT_PORT}"
    if "://" not in text:
        # A bare host means LM Studio's own port; a typed scheme (a reverse proxy, say) keeps its default port.
        text = "http://" + text
        parts = urlsplit(text)
        if parts.port is None:
            text = f"http://{parts.hostname}:{DEFAULT_PORT}{parts.path}"
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise LMStudioError(f"Not a server URL: {url!r}. Expected something like http://127.0.0.1:{DEFAULT_PORT}")
    path = _API_SUFFIX.sub("", parts.path)
    return f"{parts.scheme}://{parts.netloc}{path}"


def sdk_api_host(url: str) -> str:
    """The SDK's `host:port` form of a server URL (the SDK takes no scheme and speaks plain ws://)."""
    parts = urlsplit(normalize_server_url(url))
    port = parts.port or (443 if parts.scheme == "https" else 80)
    host = f"[{parts.hostname}]" if ":" in (parts.hostname or "") else parts.hostname
    return f"{host}:{port}"


def _to_uint8_hwc(image) -> np.ndarray:
    """One `[H, W, C]` float image (a torch tensor, any device and float dtype) as RGB uint8."""
    import torch  # ComfyUI always has it; only the image path needs it.

    # Work on the CPU: LM Studio may have filled the GPU, and the node must not allocate there.
    image = image.detach().to(device="cpu", dtype=torch.float32)
    if image.shape[-1] == 4:
        rgb = image[..., :3].nan_to_num(0.0).clamp_(0.0, 1.0)
        alpha = image[..., 3:].nan_to_num(0.0).clamp_(0.0, 1.0)
        # Composite onto white: a transparent background must not turn black in a caption.
        image = rgb.mul_(alpha).add_(1.0 - alpha)
    elif image.shape[-1] == 1:
        image = image.expand(*image.shape[:-1], 3)
    # x * 255 + 0.5 in one pass (the +0.5 makes the uint8 cast round to nearest), then NaN -> 0 and clamp in place.
    scaled = torch.add(0.5, image, alpha=255.0).nan_to_num_(0.0).clamp_(0.0, 255.0)
    return np.ascontiguousarray(scaled.to(torch.uint8).numpy())


def _check_batch(images) -> None:
    shape = tuple(getattr(images, "shape", ()))
    if len(shape) != 4 or shape[-1] not in (1, 3, 4) or 0 in shape:
        raise LMStudioError(
            f"Expected a ComfyUI IMAGE tensor [batch, height, width, channels] with 1, 3 or 4 channels, "
            f"got shape {list(shape)}"
        )
    if not getattr(images, "dtype", None) or not images.dtype.is_floating_point:
        raise LMStudioError(f"Expected a float IMAGE tensor with values in [0, 1], got dtype {images.dtype}")


def encode_jpeg(image, *, max_side: int = DEFAULT_MAX_SIDE, quality: int = DEFAULT_JPEG_QUALITY) -> bytes:
    """One `[H, W, C]` image tensor as JPEG bytes (see `encode_pil`)."""
    return encode_pil(Image.fromarray(_to_uint8_hwc(image)), max_side=max_side, quality=quality)


def encode_pil(image: Image.Image, *, max_side: int = DEFAULT_MAX_SIDE, quality: int = DEFAULT_JPEG_QUALITY) -> bytes:
    """A Pillow image as JPEG bytes, its long edge shrunk to `max_side` (0 keeps the size, never upscales)."""
    if image.mode != "RGB":
        rgba = image.convert("RGBA")  # transparency composited onto white, as for tensors
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba).convert("RGB")
    if max_side > 0 and max(image.size) > max_side:
        scale = max_side / max(image.size)
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def encode_images(
    images,
    *,
    all_images: bool = False,
    max_side: int = DEFAULT_MAX_SIDE,
    quality: int = DEFAULT_JPEG_QUALITY,
) -> list[bytes]:
    """JPEG bytes for the first image of a batch, or for up to MAX_BATCH_IMAGES of them."""
    _check_batch(images)
    count = min(images.shape[0], MAX_BATCH_IMAGES) if all_images else 1
    return [encode_jpeg(images[i], max_side=max_side, quality=quality) for i in range(count)]


def image_type(data: bytes) -> tuple[str, str]:
    """(MIME type, file suffix) of image bytes: PNG by its signature (a folder's PNG that needs no change is sent as
    it is on disk), JPEG otherwise (what the pack encodes)."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png", ".png"
    return "image/jpeg", ".jpg"


@dataclass(frozen=True)
class DataUri:
    """An image that goes into a JSON request body as a data URI. `http_common.json_body` writes its base64 straight
    into the body: as a string in the payload it would be copied several times and scanned by the JSON encoder
    character by character, ~10 ms of ComfyUI's CPU for a 1024 x 1024 PNG."""

    data: bytes

    def pieces(self) -> tuple[bytes, bytes]:
        """The URI as ASCII, in two pieces: its head and the image's base64."""
        return f"data:{image_type(self.data)[0]};base64,".encode("ascii"), base64.b64encode(self.data)

    def __str__(self) -> str:
        return b"".join(self.pieces()).decode("ascii")
