"""Benchmark: load + preprocess of a large JPEG, reduced decoding (draft) vs. naive full decode.

Generates a 6000x4000 JPEG in a temporary directory (no network), then times, with the cotnet50 preprocessing
(224 input, crop_pct 0.875, bicubic):

* ``draft``: ``load_image(path, max_side=cfg.decode_side())`` (JPEG DCT scaling to 1/N) + ``preprocess``
* ``naive``: ``Image.open(path).convert("RGB")`` (full decode) + ``preprocess``

and prints the medians side by side with their ratio, plus how much the model input differs between the two.

Usage: ``python benchmarks/bench_image_io.py [--repeats 7] [--width 6000] [--height 4000]``
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cotviz.io import PreprocessConfig, Preprocessed, load_image, preprocess
from cotviz.models import model_entry


def make_jpeg(path: Path, width: int, height: int, seed: int = 0) -> None:
    """A photo-like JPEG: smooth colour field + fine noise (so the entropy decoder has real work)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(height // 100 + 1, width // 100 + 1, 3), dtype=np.uint8)
    smooth = np.asarray(
        Image.fromarray(coarse).resize((width, height), Image.Resampling.BILINEAR)
    )  # (H, W, 3)
    noise = rng.integers(-12, 13, size=(height, width, 1), dtype=np.int16)  # (H, W, 1), same for all channels
    Image.fromarray(np.clip(smooth + noise, 0, 255).astype(np.uint8)).save(path, quality=90)


def median_seconds(fn: Callable[[], Preprocessed], repeats: int) -> tuple[float, Preprocessed]:
    """Median wall time of ``fn()`` over ``repeats`` runs (after one warm-up) and the last result."""
    result = fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--width", type=int, default=6000)
    parser.add_argument("--height", type=int, default=4000)
    args = parser.parse_args()
    torch.set_num_threads(2)
    cfg = PreprocessConfig.from_pretrained_cfg(model_entry("cotnet50").pretrained_cfg.to_dict())

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "big.jpg"
        make_jpeg(path, args.width, args.height)
        size_mb = path.stat().st_size / 1e6

        def drafted() -> Preprocessed:
            return preprocess(load_image(path, max_side=cfg.decode_side()), cfg)

        def naive() -> Preprocessed:
            with Image.open(path) as im:
                return preprocess(im.convert("RGB"), cfg)

        t_draft, out_draft = median_seconds(drafted, args.repeats)
        t_naive, out_naive = median_seconds(naive, args.repeats)
        reduction = load_image(path, max_side=cfg.decode_side()).reduction

    diff = np.abs(out_draft.display.astype(np.int16) - out_naive.display.astype(np.int16))  # (S, S, 3)
    box_shift = max(abs(a - b) for a, b in zip(out_draft.crop_box, out_naive.crop_box, strict=True))
    print(
        f"image: {args.width}x{args.height} JPEG ({size_mb:.1f} MB), cotnet50 preprocessing (224, crop 0.875)"
    )
    print(f"max_side = {cfg.decode_side()} -> decoded at 1/{reduction}; median of {args.repeats} runs")
    print(f"{'path':<42}{'median ms':>12}")
    print(f"{'draft   (load_image max_side + preprocess)':<42}{t_draft * 1e3:>12.1f}")
    print(f"{'naive   (full decode + preprocess)':<42}{t_naive * 1e3:>12.1f}")
    print(f"speed-up naive / draft: {t_naive / t_draft:.2f}x")
    print(
        f"model input difference (uint8): mean {diff.mean():.3f}, max {diff.max()}; "
        f"crop box shift {box_shift:.3g} original px"
    )


if __name__ == "__main__":
    main()
