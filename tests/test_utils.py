"""Image conversion and URL handling (utils.py)."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from lmstudio_pack.chat import LMStudioError
from lmstudio_pack.http_common import json_body
from lmstudio_pack.utils import (
    MAX_BATCH_IMAGES,
    DataUri,
    encode_images,
    encode_jpeg,
    normalize_server_url,
    sdk_api_host,
)


def decode(jpeg: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(jpeg))
    image.load()
    return image


def solid(color: tuple[float, ...], h: int = 16, w: int = 24, batch: int = 1, dtype=torch.float32) -> torch.Tensor:
    return torch.tensor(color, dtype=dtype).expand(batch, h, w, len(color)).contiguous()


def mean_rgb(jpeg: bytes) -> tuple[float, float, float]:
    return tuple(np.asarray(decode(jpeg).convert("RGB"), dtype=np.float64).reshape(-1, 3).mean(axis=0))


def assert_close(rgb, expected, tol=4):
    assert all(abs(a - b) <= tol for a, b in zip(rgb, expected, strict=True)), (rgb, expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_dtypes_encode_the_same_colour(dtype):
    (jpeg,) = encode_images(solid((1.0, 0.5, 0.0), dtype=dtype))
    assert decode(jpeg).format == "JPEG"
    assert_close(mean_rgb(jpeg), (255, 128, 0))


def test_rgb_keeps_size_and_mode():
    (jpeg,) = encode_images(solid((0.2, 0.4, 0.6), h=30, w=50))
    image = decode(jpeg)
    assert image.size == (50, 30) and image.mode == "RGB"
    assert_close(mean_rgb(jpeg), (51, 102, 153))


def test_single_channel_is_grey():
    (jpeg,) = encode_images(solid((0.5,)))
    assert_close(mean_rgb(jpeg), (128, 128, 128))


def test_alpha_is_composited_onto_white():
    transparent_red = solid((1.0, 0.0, 0.0, 0.0))
    half_black = solid((0.0, 0.0, 0.0, 0.5))
    assert_close(mean_rgb(encode_images(transparent_red)[0]), (255, 255, 255))
    assert_close(mean_rgb(encode_images(half_black)[0]), (128, 128, 128))


def test_out_of_range_values_are_clamped_and_nan_is_black():
    (bright,) = encode_images(solid((7.0, -3.0, float("inf"))))
    assert_close(mean_rgb(bright), (255, 0, 255))
    (nan,) = encode_images(solid((float("nan"), float("nan"), float("nan"))))
    assert_close(mean_rgb(nan), (0, 0, 0))
    (nan_alpha,) = encode_images(solid((0.0, 0.0, 0.0, float("nan"))))
    assert_close(mean_rgb(nan_alpha), (255, 255, 255))


def test_non_contiguous_tensor():
    base = solid((0.0, 1.0, 0.0), h=24, w=16)
    transposed = base.permute(0, 2, 1, 3)  # [1, 16, 24, 3] view with swapped strides
    assert not transposed.is_contiguous()
    (jpeg,) = encode_images(transposed)
    assert decode(jpeg).size == (24, 16)
    assert_close(mean_rgb(jpeg), (0, 255, 0))
    (sliced,) = encode_images(solid((0.0, 0.0, 1.0), h=20, w=20)[:, ::2, ::2, :])
    assert decode(sliced).size == (10, 10)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_cuda_tensor():
    (jpeg,) = encode_images(solid((1.0, 0.0, 0.0)).cuda())
    assert_close(mean_rgb(jpeg), (255, 0, 0))


@pytest.mark.parametrize("shape", [(8, 8, 3), (1, 8, 8, 2), (1, 8, 8, 5), (1, 3, 8, 8, 3), (0, 8, 8, 3), (1, 0, 8, 3)])
def test_bad_shapes_get_a_clear_error(shape):
    with pytest.raises(LMStudioError, match="IMAGE tensor"):
        encode_images(torch.zeros(shape))


def test_integer_tensor_is_rejected():
    with pytest.raises(LMStudioError, match="float IMAGE"):
        encode_images(torch.zeros((1, 8, 8, 3), dtype=torch.uint8))


def test_batch_first_by_default_and_all_capped():
    batch = torch.cat([solid((1.0, 0.0, 0.0)), solid((0.0, 0.0, 1.0))] + [solid((0.0, 1.0, 0.0))] * 10)
    first = encode_images(batch)
    assert len(first) == 1
    assert_close(mean_rgb(first[0]), (255, 0, 0))
    everything = encode_images(batch, all_images=True)
    assert len(everything) == MAX_BATCH_IMAGES
    assert_close(mean_rgb(everything[1]), (0, 0, 255))


@pytest.mark.parametrize(
    ("size", "max_side", "expected"),
    [
        ((2048, 1024), 1024, (1024, 512)),  # (width, height)
        ((1000, 3000), 1024, (341, 1024)),
        ((1024, 1024), 1024, (1024, 1024)),
        ((300, 200), 1024, (300, 200)),  # never upscaled
        ((2000, 1500), 0, (2000, 1500)),  # 0 keeps the size
        ((4000, 1), 512, (512, 1)),  # never collapses to zero
    ],
)
def test_resize_bounds(size, max_side, expected):
    width, height = size
    image = torch.rand(height, width, 3)
    assert decode(encode_jpeg(image, max_side=max_side)).size == expected


def test_quality_changes_size():
    image = torch.rand(64, 64, 3)
    assert len(encode_jpeg(image, quality=20)) < len(encode_jpeg(image, quality=95))


def test_data_uri_round_trips_and_names_the_type():
    jpeg = encode_images(solid((0.1, 0.2, 0.3)))[0]
    uri = str(DataUri(jpeg))
    assert uri.startswith("data:image/jpeg;base64,")
    assert base64.b64decode(uri.split(",", 1)[1]) == jpeg
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buffer, format="PNG")
    assert str(DataUri(buffer.getvalue())).startswith("data:image/png;base64,")


@pytest.mark.parametrize(
    ("typed", "expected"),
    [
        ("http://127.0.0.1:1234", "http://127.0.0.1:1234"),
        ("127.0.0.1:1234", "http://127.0.0.1:1234"),
        ("localhost", "http://localhost:1234"),
        ("  http://192.168.1.20:1234/  ", "http://192.168.1.20:1234"),
        ("http://192.168.1.20:1234/v1", "http://192.168.1.20:1234"),
        ("http://192.168.1.20:1234/v1/", "http://192.168.1.20:1234"),
        ("http://host:1234/api/v1", "http://host:1234"),
        ("http://host:1234/api/v1/chat", "http://host:1234"),
        ("http://host:1234/v1/chat/completions", "http://host:1234"),
        ("https://lm.example.com/", "https://lm.example.com"),
        ("https://example.com/lmstudio/v1", "https://example.com/lmstudio"),
        ("[::1]:1234", "http://[::1]:1234"),
        ("", "http://127.0.0.1:1234"),
    ],
)
def test_server_url_is_forgiving(typed, expected):
    assert normalize_server_url(typed) == expected


@pytest.mark.parametrize("typed", ["ftp://host:1234", "http://", "ws://host:1234"])
def test_server_url_rejects_nonsense(typed):
    with pytest.raises(LMStudioError, match="server URL"):
        normalize_server_url(typed)


@pytest.mark.parametrize(
    ("typed", "expected"),
    [
        ("http://127.0.0.1:1234/v1", "127.0.0.1:1234"),
        ("localhost", "localhost:1234"),
        ("http://lmstudio.lan", "lmstudio.lan:80"),
        ("[::1]:1234", "[::1]:1234"),
    ],
)
def test_sdk_api_host(typed, expected):
    assert sdk_api_host(typed) == expected


def test_a_request_body_is_the_json_of_its_payload_with_images_spliced_in():
    jpeg, png = encode_images(solid((0.1, 0.2, 0.3)))[0], b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 40
    payload = {"model": "m", "input": [{"type": "text", "content": 'é "quoted" \u2028 \\ \x00'},
                                       {"type": "image", "data_url": DataUri(jpeg)},
                                       {"type": "image", "data_url": DataUri(png)}], "n": [1, 2.5, None, True]}
    body = json_body(payload)
    assert body == json.dumps(payload, default=str).encode("ascii")
    assert json.loads(body)["input"][2]["data_url"] == "data:image/png;base64," + base64.b64encode(png).decode()
