"""Image conversion speed: our path vs the bare path, measured in the same run. Run on purpose, not in CI.

    python bench/bench_image.py

The bare path is the least any conversion must do: float -> uint8, Pillow JPEG encode, base64. Ours adds NaN
handling, clamping, rounding, alpha and resize checks, and must stay within 1.3x of it (issue 2).
"""

from __future__ import annotations

import base64
import importlib.util
import io
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("lmstudio_pack_utils", ROOT / "utils.py")
utils = importlib.util.module_from_spec(spec)
spec.loader.exec_module(utils)

LIMIT = 1.3


def bare(images: torch.Tensor) -> str:
    array = (images[0].numpy() * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=90)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def ours(images: torch.Tensor) -> str:
    return str(utils.DataUri(utils.encode_images(images)[0]))


def median_seconds(fn, images, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn(images)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(rounds: int = 300) -> int:
    torch.manual_seed(0)
    images = torch.rand(1, 1024, 1024, 3)  # noise is JPEG's worst case: encoding dominates either way
    smooth = torch.linspace(0, 1, 1024).expand(1, 1024, 1024).unsqueeze(-1).repeat(1, 1, 1, 3).contiguous()
    worst = 0.0
    for name, batch in (("noise", images), ("gradient", smooth)):
        for fn in (bare, ours):  # warm-up
            fn(batch)
        bare_s, ours_s = [], []
        for _ in range(15):  # paired blocks: each ratio compares runs made moments apart, so drifts cancel
            bare_s.append(median_seconds(bare, batch, rounds // 15))
            ours_s.append(median_seconds(ours, batch, rounds // 15))
        b, o = statistics.median(bare_s), statistics.median(ours_s)
        ratio = statistics.median(ours / bare for ours, bare in zip(ours_s, bare_s, strict=True))
        worst = max(worst, ratio)
        print(f"1024x1024 RGB {name:8s}: bare {b * 1000:6.1f} ms | ours {o * 1000:6.1f} ms | ratio {ratio:.2f}x")
    print(f"worst ratio {worst:.2f}x (limit {LIMIT}x): {'OK' if worst <= LIMIT else 'TOO SLOW'}")
    return 0 if worst <= LIMIT else 1


if __name__ == "__main__":
    sys.exit(main())
