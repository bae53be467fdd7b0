"""Tiny networks and image datasets made in the test (nothing downloaded), for tests/stats."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from torch import nn

from cotviz.models import create_model

__all__ = ["make_tree", "tiny_model"]


def tiny_model() -> nn.Module:
    """cotnet50's layout, one block per stage, 16 base channels (stage 1: 2 heads); seed 0, eval mode."""
    return create_model("cotnet50", seed=0, layers=[1, 1, 1, 1], base_width=16, num_classes=10).eval()


def make_tree(root: Path, per_class: int = 4, classes: tuple[str, ...] = ("cat", "dog"), size: tuple[int, int] = (48, 40),
              bad: bool = True, seed: int = 0) -> Path:
    """``root/<class>/<i>.png`` random images (plus one unreadable ``dog/zz_bad.png`` when ``bad``)."""
    rng = np.random.default_rng(seed)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    if bad:
        (root / classes[-1] / "zz_bad.png").write_bytes(b"this is not an image")
    return root
