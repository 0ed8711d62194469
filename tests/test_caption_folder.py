"""LM Studio Caption Folder: every image of a folder captioned from disk, a caption beside each, against the LM Studio
stand-in in every mode (the stand-in answers "An image of W x H", so each caption can be paired with its image)."""

from __future__ import annotations

import asyncio
import base64
import io
import os
import struct
import zlib
from pathlib import Path

import comfy.model_management as model_management
import pytest
from PIL import Image

from chat_node_helpers import next_prompt
from fake_lmstudio import MODEL, images_of
from lmstudio_pack import caption_folder_node, folder_images
from lmstudio_pack.caption_folder_node import LMStudioCaptionFolder
from lmstudio_pack.chat import LMStudioError
from lmstudio_pack.folder_images import SkippedImage, read_image, write_caption
from lmstudio_pack.options_node import ChatOptions

MODES = pytest.mark.parametrize("mode", ["REST API", "OpenAI-compatible", "SDK"])
NODE_ID = "9"


def node():
    return LMStudioCaptionFolder.PREPARE_CLASS_CLONE({"hidden_inputs": {"UNIQUE_ID": NODE_ID}})


async def caption(fake, folder: Path | str, mode: str = "REST API", **extra):
    """(report, captioned, folder) of one run of the node."""
    options = {k: extra.pop(k) for k in list(extra) if k in ChatOptions.__dataclass_fields__}
    if options:
        extra["options"] = ChatOptions(**options)
    inputs = dict(folder=str(folder), prompt="Caption it", model_id=MODEL, connection_mode=mode, server_url=fake.url,
                  temperature=0.3, max_tokens=-1) | extra
    return (await node().execute(**inputs)).result


def images(folder: Path, count: int, *, start: int = 0) -> list[Path]:
    """`count` PNGs of distinct sizes: img_<i>.png is (20 + i) x 30."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(start, start + count):
        path = folder / f"img_{index:03d}.png"
        Image.new("RGB", (20 + index, 30), (index * 7 % 255, 90, 120)).save(path)
        paths.append(path)
    return paths


def described(path: Path) -> str:
    with Image.open(path) as image:
        return f"An image of {image.width} x {image.height}"


@pytest.fixture
def describing(lmstudio, comfy, user_folder):
    lmstudio.describe_images = True
    return lmstudio


@MODES
async def test_every_image_gets_its_own_caption_beside_it(describing, tmp_path, mode):
    paths = images(tmp_path / "set", 12)
    report, captioned, folder = await caption(describing, tmp_path / "set", mode)
    assert captioned == 12 and folder == str((tmp_path / "set").resolve())
    for path in paths:
        assert path.with_suffix(".txt").read_text(encoding="utf-8") == described(path)
    assert report.startswith(f"Captioned 12 of 12 images in {folder} in ")
    assert "images/min" in report
    assert sorted(p.name for p in (tmp_path / "set").iterdir()) == sorted(  # nothing else left behind
        [p.name for p in paths] + [p.with_suffix(".txt").name for p in paths])


async def test_a_folder_under_comfyuis_input_directory_and_another_extension(describing, tmp_path, monkeypatch):
    import folder_paths

    monkeypatch.setattr(folder_paths, "get_input_directory", lambda: str(tmp_path / "input"))
    nested = images(tmp_path / "input" / "dataset" / "part", 2)
    top = images(tmp_path / "input" / "dataset", 1, start=5)
    _, captioned, _ = await caption(describing, "dataset", caption_extension=".caption")
    assert captioned == 1 and top[0].with_suffix(".caption").exists()
    assert not any(p.with_suffix(".caption").exists() for p in nested)  # subfolders only when asked
    _, captioned, _ = await caption(describing, "dataset", caption_extension="caption", recursive=True)
    assert captioned == 2 and all(p.with_suffix(".caption").read_text() == described(p) for p in nested)


async def test_existing_captions_are_kept_unless_overwrite(describing, tmp_path):
    paths = images(tmp_path, 4)
    paths[1].with_suffix(".txt").write_text("my own words", encoding="utf-8")
    report, captioned, _ = await caption(describing, tmp_path)
    assert captioned == 3 and paths[1].with_suffix(".txt").read_text() == "my own words"
    assert "1 kept: a caption was there already" in report
    sent = len(describing.chat_requests())
    report, captioned, _ = await caption(describing, tmp_path)
    assert captioned == 0 and len(describing.chat_requests()) == sent  # nothing left to do, nothing sent
    _, captioned, _ = await caption(describing, tmp_path, overwrite=True)
    assert captioned == 4 and paths[1].with_suffix(".txt").read_text() == described(paths[1])


async def test_no_folder_or_no_images_is_a_clear_error_before_anything_is_sent(describing, tmp_path):
    with pytest.raises(LMStudioError, match=r"Folder not found: .*missing"):
        await caption(describing, tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.md").write_text("not an image")
    with pytest.raises(LMStudioError, match=r"No images in .*empty"):
        await caption(describing, tmp_path / "empty")
    with pytest.raises(LMStudioError, match="Not a caption extension"):
        await caption(describing, tmp_path / "empty", caption_extension="../x")
    assert describing.chat_requests() == []


def png_chunks(path: Path, header: bytes, pixels: bytes) -> None:
    """A PNG written by hand from its IHDR and its compressed pixels (Pillow cannot save 16 bits a channel)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b""))


def png_16_bit(path: Path, width: int, height: int, value: int) -> None:
    """A 16-bit greyscale PNG of one value."""
    raw = b"".join(b"\x00" + struct.pack(">H", value) * width for _ in range(height))
    png_chunks(path, struct.pack(">IIBBBBB", width, height, 16, 0, 0, 0, 0), zlib.compress(raw))


async def test_bad_files_are_named_and_skipped_and_odd_ones_captioned(describing, tmp_path, monkeypatch):
    monkeypatch.setattr(folder_images, "MAX_PIXELS", 150 * 150)
    images(tmp_path, 2)
    good = io.BytesIO()
    Image.new("RGB", (64, 64), "red").save(good, format="PNG")
    (tmp_path / "truncated.png").write_bytes(good.getvalue()[:60])
    (tmp_path / "notes.jpg").write_text("not an image at all")
    Image.new("RGB", (200, 200)).save(tmp_path / "huge.png")
    Image.new("CMYK", (33, 44), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg")
    png_16_bit(tmp_path / "deep.png", 16, 12, 32768)
    frames = [Image.new("RGB", (25, 35), color) for color in ("red", "green", "blue")]
    frames[0].save(tmp_path / "moving.gif", save_all=True, append_images=frames[1:], duration=100)
    rotated = Image.new("RGB", (40, 20), "blue")
    exif = rotated.getexif()
    exif[0x0112] = 6  # EXIF orientation: rotate 90 degrees clockwise to view
    rotated.save(tmp_path / "sideways.jpg", exif=exif)

    report, captioned, _ = await caption(describing, tmp_path)
    assert captioned == 6
    texts = {p.stem: p.read_text() for p in tmp_path.glob("*.txt")}
    assert texts["cmyk"] == "An image of 33 x 44" and texts["deep"] == "An image of 16 x 12"
    assert texts["moving"] == "An image of 25 x 35" and texts["sideways"] == "An image of 20 x 40"  # upright
    assert not {"truncated", "notes", "huge"} & texts.keys()
    assert "Skipped (3):" in report
    assert "  huge.png: too large (200 x 200 pixels" in report
    assert "  notes.jpg: not an image Pillow can read" in report
    assert "  truncated.png: unreadable" in report
    assert "  moving.gif: first of 3 frames" in report


def test_a_16_bit_image_is_scaled_not_clipped(tmp_path):
    png_16_bit(tmp_path / "deep.png", 8, 8, 32768)
    jpeg, _ = read_image(tmp_path / "deep.png", max_side=1024, quality=95)
    with Image.open(io.BytesIO(jpeg)) as image:
        assert abs(image.convert("L").getpixel((4, 4)) - 128) <= 2
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(SkippedImage):
        read_image(tmp_path / "empty.png", max_side=1024, quality=95)


@pytest.mark.parametrize("format_name", ["PNG", "JPEG"])
def test_an_image_that_needs_no_change_goes_as_it_is_on_disk(tmp_path, format_name):
    """No decoding, no re-encoding: the file's own bytes (a 1024 x 1024 PNG costs ~27 ms to decode alone)."""
    path = tmp_path / f"ready.{format_name.lower()}"
    Image.new("RGB", (300, 200), "teal").save(path, format=format_name)
    data, note = read_image(path, max_side=1024, quality=90)
    assert (data, note) == (path.read_bytes(), "")
    shrunk, _ = read_image(path, max_side=100, quality=90)  # larger than max_side: shrunk and sent as JPEG
    with Image.open(io.BytesIO(shrunk)) as image:
        assert (image.format, image.size) == ("JPEG", (100, 67))
    Image.new("RGBA", (30, 20), (0, 0, 0, 0)).save(tmp_path / "clear.png")  # transparency goes onto white
    with Image.open(io.BytesIO(read_image(tmp_path / "clear.png", max_side=1024, quality=90)[0])) as image:
        assert image.format == "JPEG" and image.getpixel((5, 5)) == (255, 255, 255)
    Image.new("RGB", (30, 20), "teal").save(tmp_path / "small.webp")  # LM Studio refuses WebP data URIs: JPEG
    with Image.open(io.BytesIO(read_image(tmp_path / "small.webp", max_side=1024, quality=90)[0])) as image:
        assert (image.format, image.size) == ("JPEG", (30, 20))


def noise_png(path: Path, side: int, **save) -> None:
    """A PNG that barely compresses: `side` x `side` of random pixels, about 3 x side² bytes."""
    Image.frombytes("RGB", (side, side), os.urandom(side * side * 3)).save(path, format="PNG", **save)


def test_a_large_png_goes_as_it_is_unless_a_server_refused_one(tmp_path):
    """A 1024 x 1024 PNG is 2-3 MB; decoding it here would cost more than all else the pack does for an image."""
    noise_png(tmp_path / "large.png", 600)
    data, _ = read_image(tmp_path / "large.png", max_side=1024, quality=90)
    assert data == (tmp_path / "large.png").read_bytes() and len(data) > folder_images.CAPPED_AS_IS_BYTES
    capped, _ = read_image(tmp_path / "large.png", max_side=1024, quality=90,
                           as_is_bytes=folder_images.CAPPED_AS_IS_BYTES)
    with Image.open(io.BytesIO(capped)) as image:
        assert (image.format, image.size) == ("JPEG", (600, 600)) and len(capped) < len(data)


def sent_images(fake) -> list[bytes]:
    """Every image the stand-in received, in any mode."""
    uploads = [base64.b64decode(call["parameter"]["contentBase64"]) for call in fake.sdk.sent("rpcCall",
                                                                                              "uploadFileBase64")]
    return uploads + [image for request in fake.chat_requests() for image in images_of(request.body)]


@MODES
async def test_large_pngs_go_whole_in_every_mode(describing, tmp_path, mode):
    for index in range(3):
        noise_png(tmp_path / f"large_{index}.png", 500 + index)  # 750 kB to 760 kB
    report, captioned, _ = await caption(describing, tmp_path, mode)
    assert captioned == 3 and "Note" not in report
    assert sorted(sent_images(describing)) == sorted(p.read_bytes() for p in tmp_path.glob("*.png"))
    assert (tmp_path / "large_2.txt").read_text() == "An image of 502 x 502"


@pytest.mark.parametrize("mode", ["REST API", "OpenAI-compatible"])
async def test_an_image_refused_as_too_large_goes_again_as_jpeg_and_so_do_later_ones(describing, tmp_path, mode,
                                                                                      monkeypatch):
    """nginx in front of the server refuses a body over 1 MB (its default) with HTTP 413 and a web page."""
    monkeypatch.setattr(caption_folder_node, "READ_AHEAD_MIN", 1)  # one slot: two images read at a time
    describing.max_body = 1024 * 1024
    describing.parallel = 1
    for index in range(4):
        noise_png(tmp_path / f"large_{index}.png", 600 + index)  # ~1.1 MB, 1.45 MB as base64
    images(tmp_path, 2)  # small PNGs: still sent as they are
    report, captioned, _ = await caption(describing, tmp_path, mode, max_parallel=1)
    assert captioned == 6
    assert (tmp_path / "large_3.txt").read_text() == "An image of 603 x 603"
    # The first two were read before the first refusal; the two read after it went as JPEG at once.
    assert describing.too_large == 2
    sent = sent_images(describing)
    assert sorted(Image.open(io.BytesIO(image)).format for image in sent) == ["JPEG"] * 4 + ["PNG"] * 2
    assert "large_0.png: refused as too large" in report and "large_1.png: refused as too large" in report
    assert "sent as a JPEG of" in report and "large_2.png" not in report


async def test_an_image_still_too_large_fails_named_and_the_others_go_on(describing, tmp_path):
    describing.max_body = 20_000
    noise_png(tmp_path / "large.png", 300)
    images(tmp_path, 1)
    report, captioned, _ = await caption(describing, tmp_path)
    assert captioned == 1
    assert "Failed (1):\n  large.png: " in report and "refused the request as too large (HTTP 413" in report
    assert "client_max_body_size" in report and "<html>" not in report


def test_a_png_goes_without_its_metadata_and_its_pixels_untouched(tmp_path):
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("workflow", '{"nodes": []}' * 20_000)  # what ComfyUI saves into every render
    info.add_itxt("prompt", "a cat", zip=True)
    Image.frombytes("RGB", (40, 30), os.urandom(40 * 30 * 3)).save(tmp_path / "render.png", pnginfo=info)
    data, _ = read_image(tmp_path / "render.png", max_side=1024, quality=90)
    assert b"workflow" not in data and b"prompt" not in data and len(data) < 10_000
    with Image.open(io.BytesIO(data)) as sent, Image.open(tmp_path / "render.png") as original:
        assert sent.format == "PNG" and sent.tobytes() == original.tobytes()
    sideways = Image.new("RGB", (40, 20), "blue")
    exif = sideways.getexif()
    exif[0x0112] = 6  # EXIF orientation (an eXIf chunk): rotate 90 degrees clockwise to view
    sideways.save(tmp_path / "sideways.png", exif=exif)
    with Image.open(io.BytesIO(read_image(tmp_path / "sideways.png", max_side=1024, quality=90)[0])) as image:
        assert (image.format, image.size) == ("JPEG", (20, 40))


def test_a_png_not_whole_or_not_8_bit_is_decoded_not_sent_as_it_is(tmp_path):
    whole = io.BytesIO()
    Image.frombytes("RGB", (64, 64), os.urandom(64 * 64 * 3)).save(whole, format="PNG")
    assert folder_images.png_pixels_only(whole.getvalue()) == whole.getvalue()
    assert folder_images.png_pixels_only(whole.getvalue()[:-20]) is None  # cut in its pixels
    assert folder_images.png_pixels_only(b"GIF89a" + whole.getvalue()[6:]) is None
    (tmp_path / "cut.png").write_bytes(whole.getvalue()[: len(whole.getvalue()) // 2])
    with pytest.raises(SkippedImage, match="unreadable"):
        read_image(tmp_path / "cut.png", max_side=1024, quality=90)
    # 16 bits a channel of RGB: Pillow reports it as RGB, but a server may not read it as such
    raw = b"".join(b"\x00" + struct.pack(">HHH", 65535, 32768, 0) * 8 for _ in range(8))
    png_chunks(tmp_path / "deep_rgb.png", struct.pack(">IIBBBBB", 8, 8, 16, 2, 0, 0, 0), zlib.compress(raw))
    data, _ = read_image(tmp_path / "deep_rgb.png", max_side=1024, quality=95)
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "JPEG"
        red, green, blue = image.getpixel((4, 4))
        assert red > 245 and abs(green - 128) <= 3 and blue < 10


def test_a_caption_is_written_whole_and_never_replaces_one_unasked(tmp_path):
    path = tmp_path / "a.txt"
    assert write_caption(path, "first", overwrite=False) is True
    assert write_caption(path, "second", overwrite=False) is False
    assert path.read_text() == "first"
    assert write_caption(path, "third", overwrite=True) is True
    assert path.read_text() == "third"
    assert os.listdir(tmp_path) == ["a.txt"]  # no temporary file left


async def test_memory_stays_flat_images_are_read_only_as_slots_near(describing, tmp_path, monkeypatch):
    """At most a handful more images are read than the server answers at once, however large the folder."""
    describing.parallel = 4
    describing.event_delay = 0.005
    images(tmp_path, 80)
    read, held = [0], [0]
    peak = [0]
    real_read, real_write = caption_folder_node.read_image, caption_folder_node.write_caption

    def counting_read(*args, **kwargs):
        read[0] += 1
        held[0] += 1
        peak[0] = max(peak[0], held[0])
        return real_read(*args, **kwargs)

    def counting_write(*args, **kwargs):
        held[0] -= 1
        return real_write(*args, **kwargs)

    monkeypatch.setattr(caption_folder_node, "read_image", counting_read)
    monkeypatch.setattr(caption_folder_node, "write_caption", counting_write)
    _, captioned, _ = await caption(describing, tmp_path)
    assert captioned == 80 and read[0] == 80
    assert peak[0] <= caption_folder_node.READ_AHEAD_MIN, peak  # 2 x 4 slots < the minimum read-ahead
    assert describing.peak_in_flight == 4  # and every slot was used


async def test_cancel_stops_at_once_and_queued_again_it_goes_on_where_it_stopped(describing, tmp_path):
    paths = images(tmp_path, 10)
    describing.held = 3  # three captions come back; the rest wait in the server until Cancel

    async def cancel_when_three_are_written() -> None:
        while len(list(tmp_path.glob("*.txt"))) < 3:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)
        model_management.interrupt_current_processing(True)

    canceller = asyncio.create_task(cancel_when_three_are_written())
    with pytest.raises(model_management.InterruptProcessingException):
        await caption(describing, tmp_path)
    await canceller
    first = sorted(p.stem for p in tmp_path.glob("*.txt"))
    assert len(first) == 3
    model_management.interrupt_current_processing(False)
    describing.held = None
    report, captioned, _ = await next_prompt(caption(describing, tmp_path))
    assert captioned == 7 and "3 kept" in report
    assert all(p.with_suffix(".txt").read_text() == described(p) for p in paths)


async def test_a_busy_server_is_waited_out_and_no_caption_is_empty(describing, tmp_path):
    """A router's 429 while its slots are full: every image still gets its caption, none an empty one."""
    describing.parallel = 2
    describing.event_delay = 0.01
    describing.refuse_when_full = (429, {"Retry-After": "0.05"}, {"error": {"message": "No deployments available"}})
    paths = images(tmp_path, 16)
    _, captioned, _ = await caption(describing, tmp_path, "OpenAI-compatible", max_parallel=6)
    assert captioned == 16 and describing.refused > 0
    assert all(p.with_suffix(".txt").read_text() == described(p) for p in paths)


async def test_a_folder_it_cannot_write_to_stops_the_run_with_the_reason(describing, tmp_path, monkeypatch):
    describing.parallel = 2
    images(tmp_path, 40)

    def refused(path, text, *, overwrite):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(caption_folder_node, "write_caption", refused)
    with pytest.raises(RuntimeError, match=r"Could not write .*img_0\d\d\.txt: .*Permission denied"):
        await caption(describing, tmp_path)
    assert len(describing.chat_requests()) < 40  # it stopped, rather than caption what it cannot keep
