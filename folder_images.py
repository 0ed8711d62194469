"""The folder captioner's disk side: which images a folder holds, one image read as bytes to send, a caption written
beside it. No ComfyUI imports.

Only ever one image is in memory per item in flight, read when its turn comes, so a folder of any size costs the
same memory. A caption is written atomically (a temporary file in the same folder, then linked or renamed into
place): a crash never leaves half a caption, and an existing caption is never replaced unless asked.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps, ImageSequence, UnidentifiedImageError

from .chat import LMStudioError
from .utils import encode_pil

DEFAULT_EXTENSIONS = "png, jpg, jpeg, webp, bmp, gif, tif, tiff"
# Pillow's own guard against decompression bombs (a tiny file that decodes to gigabytes) stays on: an image over
# this many pixels is skipped and named, not decoded. 16,384 x 16,384 holds any camera's photos.
MAX_PIXELS = 16_384 * 16_384


class SkippedImage(Exception):
    """An image that cannot be captioned (truncated, not an image, too large); the others go on."""


@dataclass(frozen=True)
class FolderImage:
    image: Path
    caption: Path

    def name(self, root: Path) -> str:
        """The image's path as the report names it: relative to the folder captioned."""
        return self.image.relative_to(root).as_posix()


def resolve_folder(folder: str, input_directory: str) -> Path:
    """An absolute folder, or one under ComfyUI's input directory; a clear error when it is not a folder."""
    text = (folder or "").strip().strip('"')
    if not text:
        raise LMStudioError("No folder given: name a folder under ComfyUI's input directory or an absolute path.")
    path = Path(text).expanduser()
    path = path if path.is_absolute() else Path(input_directory) / path
    if not path.is_dir():
        where = "" if Path(text).is_absolute() else f" (looked under ComfyUI's input directory, {input_directory})"
        raise LMStudioError(f"Folder not found: {path}{where}.")
    return path.resolve()


def parse_extensions(text: str) -> frozenset[str]:
    """'png, .JPG jpeg' -> {'.png', '.jpg', '.jpeg'}."""
    parts = text.replace(",", " ").replace(";", " ").split()
    return frozenset("." + part.lower().lstrip(".") for part in parts if part.strip("."))


def caption_suffix(text: str) -> str:
    """'txt' or '.txt' -> '.txt'; an empty or path-like extension is refused."""
    suffix = "." + (text or "").strip().lstrip(".")
    if suffix in (".", "..") or any(char in suffix for char in "/\\:"):
        raise LMStudioError(f"Not a caption extension: {text!r}. Use one like txt or caption.")
    return suffix.lower()


def find_images(root: Path, extensions: frozenset[str], caption: str, *, recursive: bool) -> list[FolderImage]:
    """The folder's images with these extensions, in a stable (sorted) order, each with its caption's path.

    Hidden files and folders (a leading dot) are left out, as are symbolic links that lead out of the folder.
    """
    found: list[FolderImage] = []
    for directory, folders, files in os.walk(root):
        folders[:] = sorted(f for f in folders if not f.startswith(".")) if recursive else []
        for name in sorted(files):
            path = Path(directory) / name
            if name.startswith(".") or path.suffix.lower() not in extensions or path.suffix.lower() == caption:
                continue
            if path.is_symlink() and root not in path.resolve().parents:
                continue
            found.append(FolderImage(path, path.with_suffix(caption)))
    return found


# Files every vision server takes as they are. One that needs no change is sent as it is on disk: the server decodes
# an image anyway, and decoding a 1024 x 1024 PNG here costs ~25 ms of ComfyUI's CPU (inflating 3 MB), more than all
# the rest the pack does for an image; re-encoding it as JPEG ~5 ms more. Not WebP: LM Studio 0.4.9 refuses a WebP data
# URI (lmstudio-bug-tracker#1752), so WebP is decoded and sent as JPEG.
AS_IS_FORMATS = ("JPEG", "PNG")
# ... up to this size: a 1024 x 1024 PNG is at most ~3 MB. A larger file is a large image (max_image_side 0 keeps the
# size), which JPEG makes several times smaller, and a few of them read ahead must not fill memory.
AS_IS_MAX_BYTES = 8 * 1024 * 1024
# Where a server, or a proxy in front of it, refused a request as too large (HTTP 413): many cap a body at 1 MB
# (nginx's and aiohttp's defaults), and base64 makes a file 4/3 larger. A 1024 x 1024 JPEG at quality 90 fits.
CAPPED_AS_IS_BYTES = 700_000
ORIENTATION = 0x0112  # the EXIF tag; 1 (or none) is upright
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def read_image(path: Path, *, max_side: int, quality: int, as_is_bytes: int = AS_IS_MAX_BYTES) -> tuple[bytes, str]:
    """One image file as bytes to send, and a note on what was done to it ('' when nothing worth saying).

    A JPEG or PNG that is upright, opaque, 8-bit, no larger than `max_side` and no larger than `as_is_bytes` goes as
    it is (a PNG without its metadata chunks); anything else is made so (EXIF orientation applied, shrunk to
    `max_side`, transparency onto white) and sent as JPEG. Raises `SkippedImage` with the reason for a file that
    cannot be read.
    """
    try:
        with Image.open(path) as opened:
            if opened.width * opened.height > MAX_PIXELS:
                raise SkippedImage(f"too large ({opened.width} x {opened.height} pixels; at most {MAX_PIXELS:,})")
            frames = getattr(opened, "n_frames", 1)
            if frames == 1 and _sendable_as_is(opened, max_side) and path.stat().st_size <= as_is_bytes:
                data = _as_sent(path.read_bytes(), opened.format)
                if data is not None:
                    return data, ""
            image = next(iter(ImageSequence.Iterator(opened))) if frames > 1 else opened
            note = f"first of {frames} frames" if frames > 1 else ""
            # draft: a JPEG decodes at a fraction of its size when that is still larger than max_side (much faster).
            if max_side > 0 and image.format == "JPEG":
                image.draft("RGB", (max_side, max_side))
            image = ImageOps.exif_transpose(_eight_bit(image))
            return encode_pil(image, max_side=max_side, quality=quality), note
    except SkippedImage:
        raise
    except UnidentifiedImageError:
        raise SkippedImage("not an image Pillow can read") from None
    except Image.DecompressionBombError as exc:
        raise SkippedImage(f"too large ({exc})") from None
    except (OSError, ValueError, SyntaxError) as exc:  # truncated or corrupt data, an unreadable file
        raise SkippedImage(f"unreadable ({exc})") from None


def _sendable_as_is(image: Image.Image, max_side: int) -> bool:
    """Whether the file needs no change: a format servers take, upright, opaque 8-bit RGB or grey, small enough.
    Only the header is read; the file is checked whole (decoded) only when it is changed. (A PNG's EXIF is looked for
    by `png_pixels_only`: Pillow decodes the whole image to find it.)"""
    return (image.format in AS_IS_FORMATS and image.mode in ("RGB", "L") and "transparency" not in image.info
            and (max_side <= 0 or max(image.size) <= max_side)
            and (image.format == "PNG" or image.getexif().get(ORIENTATION, 1) == 1))


def _as_sent(data: bytes, format_name: str | None) -> bytes | None:
    """The file's bytes as they are sent, or None where it must be decoded instead (a truncated file, which decoding
    then names; a PNG of 16 bits a channel, which Pillow reports as RGB)."""
    if format_name == "PNG":
        return png_pixels_only(data)
    return data if b"\xff\xd9" in data[-4096:] else None  # JPEG's end of image (some cameras append a few bytes)


def png_pixels_only(data: bytes) -> bytes | None:
    """An 8-bit PNG without its ancillary chunks (text, time, colour hints): what a server draws is the same, and a PNG
    that ComfyUI saved carries its whole workflow and prompt as text, often hundreds of kB. None for a PNG that is not
    whole and well-formed, not 8 bits a sample, or has EXIF (which may turn it: decoding applies that)."""
    if not data.startswith(PNG_SIGNATURE):
        return None
    kept: list[memoryview] = []
    view, position = memoryview(data), len(PNG_SIGNATURE)
    while position + 12 <= len(data):
        length = int.from_bytes(data[position:position + 4], "big")
        kind = data[position + 4:position + 8]
        end = position + 12 + length
        if end > len(data):
            return None
        if kind == b"IHDR" and (length != 13 or data[position + 16] != 8):
            return None  # bit depth, the first byte after width and height
        if kind == b"eXIf":
            return None
        if not kind[0] & 0x20:  # an upper case first letter: critical (IHDR, PLTE, IDAT, IEND), the rest ancillary
            kept.append(view[position:end])
        if kind == b"IEND":
            whole = sum(len(chunk) for chunk in kept) + len(PNG_SIGNATURE) == len(data)
            return data if whole else PNG_SIGNATURE + b"".join(kept)
        position = end
    return None


def _eight_bit(image: Image.Image) -> Image.Image:
    """Modes JPEG cannot hold, made RGB: 16- and 32-bit greyscale scaled down (not clipped), CMYK and palettes
    converted. Transparency stays for `encode_pil` to composite onto white."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        image = image.point(lambda value: value / 256).convert("L")
    elif image.mode == "F":
        image = image.convert("L")
    if image.mode in ("RGB", "RGBA", "L", "LA"):
        return image
    return image.convert("RGBA" if "A" in image.mode or "transparency" in image.info else "RGB")


def write_caption(path: Path, text: str, *, overwrite: bool) -> bool:
    """Write `text` to `path` atomically; False (nothing written) when a caption is there and `overwrite` is off."""
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        if overwrite:
            os.replace(temporary, path)
            return True
        try:
            os.link(temporary, path)  # fails if a caption appeared meanwhile: never replaced unasked
        except FileExistsError:
            return False
        except OSError:  # a filesystem without hard links (FAT, some network shares)
            if path.exists():
                return False
            os.replace(temporary, path)
            return True
        return True
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
