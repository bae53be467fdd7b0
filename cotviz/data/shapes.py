"""Procedural shapes on clutter with pixel-exact masks: the demo model's data and the localisation ground truth.

Every item is a function of ``(seed, index)`` alone (``numpy.random.default_rng([seed, index])``), so a
``DataLoader`` with any number of workers, any order and any batch size sees the same images, and a split
generated with another seed is a held-out set. One image (``size`` x ``size``, RGB, uint8):

1. Background: a random low-frequency colour field (a 4x4..8x8 grid of random colours, bilinearly
   upsampled) mixed with a sinusoidal grating of random frequency, orientation and colour, plus pixel noise.
2. Distractors, drawn on the background: 3-6 line segments of random width and 1-3 ring outlines (a ring is
   not a class: every class is a filled shape), random colours.
3. The object: one filled shape of the item's class (:data:`CLASS_NAMES`, which differ in outline) at a random
   position (fully inside the frame), scale (``radius`` 0.14..0.30 of ``size``), rotation and colour, with a
   linear shading gradient. Its colour is pushed away from the background under it (luminance distance at least
   :data:`MIN_CONTRAST`) so that the object is always visible.

The mask is the set of pixels the object was composited into (``image[mask]`` is the object's colour texture,
``image[~mask]`` the background and distractors): exact by construction, no anti-aliasing. Labels are exactly
balanced over a dataset (a seeded permutation of ``index % num_classes``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch.utils.data import Dataset

from cotviz.errors import InvalidArgumentError
from cotviz.io import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

__all__ = ["CLASS_NAMES", "MIN_CONTRAST", "ShapeSample", "ShapesDataset"]

#: The object classes, in label order. They differ in outline (all are filled, any colour, any rotation).
CLASS_NAMES: tuple[str, ...] = ("circle", "triangle", "square", "star", "cross", "crescent")
#: Least luminance distance (0..1) between the object's colour and the mean background under it.
MIN_CONTRAST = 0.25
_LUMA = np.array([0.299, 0.587, 0.114])
#: Largest image side the generator accepts (memory and time per item grow with its square).
_MAX_SIZE = 2048


@dataclass(frozen=True)
class ShapeSample:
    """One rendered item before preprocessing.

    Attributes:
        image: (S, S, 3) uint8 RGB.
        mask: (S, S) bool, True where the object's pixels are.
        label: class index into :data:`CLASS_NAMES`.
        center: object centre (x, y) in pixels; radius: its outer radius in pixels; angle: rotation in radians.
    """

    image: np.ndarray
    mask: np.ndarray
    label: int
    center: tuple[float, float]
    radius: float
    angle: float


def _polygon(label: int, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    """Vertices of the polygonal classes (triangle, square, star, cross), rotated by ``angle`` about the centre."""
    name = CLASS_NAMES[label]
    if name == "triangle":
        pts = [(math.cos(a), math.sin(a)) for a in np.arange(3) * 2 * math.pi / 3]
    elif name == "square":
        pts = [(math.cos(a), math.sin(a)) for a in np.arange(4) * math.pi / 2 + math.pi / 4]
    elif name == "star":  # five points, inner radius 0.42
        pts = [((1.0 if k % 2 == 0 else 0.42) * math.cos(k * math.pi / 5),
                (1.0 if k % 2 == 0 else 0.42) * math.sin(k * math.pi / 5)) for k in range(10)]
    elif name == "cross":  # plus sign, arm half-width 0.3
        w = 0.3
        pts = [(w, -1), (w, -w), (1, -w), (1, w), (w, w), (w, 1), (-w, 1), (-w, w), (-1, w), (-1, -w), (-w, -w),
               (-w, -1)]
        pts = [(x / math.hypot(1, w), y / math.hypot(1, w)) for x, y in pts]  # outer radius 1
    else:
        raise ValueError(f"{name} is not a polygon")
    c, s = math.cos(angle), math.sin(angle)
    return [(cx + r * (c * x - s * y), cy + r * (s * x + c * y)) for x, y in pts]


def _shape_mask(label: int, size: int, cx: float, cy: float, r: float, angle: float) -> np.ndarray:
    """(size, size) bool mask of one filled shape (aliased: a pixel is in or out)."""
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    name = CLASS_NAMES[label]
    if name == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
    elif name == "crescent":  # a disk minus a disk of radius 0.8 r shifted 0.45 r along ``angle``
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
        ox, oy = cx + 0.45 * r * math.cos(angle), cy + 0.45 * r * math.sin(angle)
        draw.ellipse((ox - 0.8 * r, oy - 0.8 * r, ox + 0.8 * r, oy + 0.8 * r), fill=0)
    else:
        draw.polygon(_polygon(label, cx, cy, r, angle), fill=255)
    return np.asarray(canvas) > 127


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """(size, size, 3) float in [0, 1]: colour field + grating + noise."""
    cells = int(rng.integers(4, 9))
    field = Image.fromarray(rng.integers(0, 256, (cells, cells, 3), dtype=np.uint8))
    base = np.asarray(field.resize((size, size), Image.Resampling.BILINEAR), dtype=np.float32) / 255.0  # (S, S, 3)
    theta = rng.uniform(0, math.pi)
    freq = rng.uniform(3, 14) * 2 * math.pi / size  # 3..14 periods across the image
    coords = np.arange(size, dtype=np.float32)
    phase = freq * (math.cos(theta) * coords[None, :] + math.sin(theta) * coords[:, None])  # (S, S)
    grating = (0.5 + 0.5 * np.sin(phase + rng.uniform(0, 2 * math.pi)))[..., None]  # (S, S, 1)
    colour = rng.uniform(0, 1, 3).astype(np.float32)  # (3,)
    mix = rng.uniform(0.2, 0.6)
    out = (1 - mix) * base + mix * grating * colour  # (S, S, 3)
    out += rng.normal(0, 0.03, (size, size, 3)).astype(np.float32)
    return out


def _distractors(rng: np.random.Generator, canvas: Image.Image) -> None:
    """Line segments and ring outlines, in place (never a filled shape, so never a class)."""
    size = canvas.size[0]
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(3, 7))):
        x0, y0, x1, y1 = rng.uniform(0, size, 4)
        draw.line((x0, y0, x1, y1), fill=tuple(int(v) for v in rng.integers(0, 256, 3)),
                  width=max(1, int(rng.uniform(0.01, 0.04) * size)))
    for _ in range(int(rng.integers(1, 4))):
        r = rng.uniform(0.05, 0.15) * size
        cx, cy = rng.uniform(0, size, 2)
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), outline=tuple(int(v) for v in rng.integers(0, 256, 3)),
                     width=max(1, int(rng.uniform(0.01, 0.03) * size)))


def _object_colour(rng: np.random.Generator, under: np.ndarray) -> np.ndarray:
    """A random RGB colour in [0, 1] whose luminance differs from ``under``'s (RGB mean) by >= MIN_CONTRAST."""
    colour = rng.uniform(0, 1, 3)
    bg = float(under @ _LUMA)
    luma = float(colour @ _LUMA)
    if abs(luma - bg) < MIN_CONTRAST:  # shift the colour's luminance away from the background's
        target = bg + MIN_CONTRAST if bg < 1 - MIN_CONTRAST else bg - MIN_CONTRAST
        target = target if abs(target - bg) >= MIN_CONTRAST else (bg - MIN_CONTRAST if bg > 0.5 else bg + MIN_CONTRAST)
        colour = np.clip(colour + (target - luma), 0, 1)
        if abs(float(colour @ _LUMA) - bg) < MIN_CONTRAST:  # clipping ate the shift: fall back to grey
            colour = np.full(3, 1.0 if bg < 0.5 else 0.0)
    return colour


def render(seed: int, index: int, size: int = 128, num_classes: int | None = None, label: int | None = None, *,
           with_object: bool = True) -> ShapeSample:
    """Render item ``index`` of the split ``seed`` (``label`` given, or drawn from the item's generator).

    ``with_object=False`` leaves the object out (same background, distractors, pose and mask): the image then
    differs from the full item exactly on the mask."""
    k = len(CLASS_NAMES) if num_classes is None else num_classes
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, int(index)])
    lab = int(rng.integers(0, k)) if label is None else int(label)
    bg = np.clip(_background(rng, size), 0, 1)
    canvas = Image.fromarray((bg * 255 + 0.5).astype(np.uint8))
    _distractors(rng, canvas)
    pixels = np.asarray(canvas, dtype=np.float32) / 255.0  # (S, S, 3)
    r = rng.uniform(0.14, 0.30) * size
    cx, cy = rng.uniform(r + 1, size - r - 1, 2)
    angle = rng.uniform(0, 2 * math.pi)
    mask = _shape_mask(lab, size, cx, cy, r, angle)  # (S, S) bool
    if not mask.any():  # cannot happen for r >= 0.14 * size >= 1 px, but a zero-area object must not pass
        raise RuntimeError(f"empty object mask (seed {seed}, index {index})")
    colour = _object_colour(rng, pixels[mask].mean(axis=0))
    g = rng.uniform(-1, 1, 2)  # shading direction
    ys, xs = np.nonzero(mask)
    shade = 1.0 + 0.15 * ((xs - cx) * g[0] + (ys - cy) * g[1]) / r  # (N,) within 1 +- 0.21
    if with_object:
        pixels[ys, xs] = np.clip(colour[None, :] * shade[:, None], 0, 1)
    image = (pixels * 255 + 0.5).astype(np.uint8)  # (S, S, 3)
    return ShapeSample(image, mask, lab, (float(cx), float(cy)), float(r), float(angle))


class ShapesDataset(Dataset[tuple[torch.Tensor, int, torch.Tensor]]):
    """``length`` seeded images of one shape each on clutter, with pixel-exact masks.

    Items are ``(image, label, mask)``: ``image`` float32 (3, S, S), ``(uint8 / 255 - mean) / std`` (the demo
    models' preprocessing: a PNG written by :meth:`write_folder` and read through ``cotviz.io.preprocess`` with
    the demo ``PretrainedCfg`` gives the same tensor); ``label`` an int; ``mask`` bool (S, S).

    Args:
        length: number of items.
        seed: the split; another seed is an independent (held-out) split.
        size: image side in pixels (default 128: stages 3 and 4 of the demo models see 8x8 and 4x4 cells).
        num_classes: use the first ``num_classes`` of :data:`CLASS_NAMES` (2..6).
        mean, std: per-channel normalisation (ImageNet's by default, as the demo models' cfg).
    """

    def __init__(self, length: int, *, seed: int, size: int = 128, num_classes: int = len(CLASS_NAMES),
                 mean: Sequence[float] = IMAGENET_DEFAULT_MEAN, std: Sequence[float] = IMAGENET_DEFAULT_STD) -> None:
        for name, value, low, high in (("length", length, 0, 10**9), ("size", size, 16, _MAX_SIZE),
                                       ("num_classes", num_classes, 2, len(CLASS_NAMES))):
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise InvalidArgumentError(f"{name} must be an integer from {low} to {high}, got {value!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise InvalidArgumentError(f"seed must be an integer, got {seed!r}")
        self.length, self.seed, self.size, self.num_classes = length, seed, size, num_classes
        self.class_names: tuple[str, ...] = CLASS_NAMES[:num_classes]
        self.mean, self.std = tuple(float(v) for v in mean), tuple(float(v) for v in std)
        self._mean = np.array(self.mean, dtype=np.float32).reshape(3, 1, 1)  # (3, 1, 1)
        self._std = np.array(self.std, dtype=np.float32).reshape(3, 1, 1)  # (3, 1, 1)
        order = np.random.default_rng([seed & 0xFFFFFFFF, 2**31 - 1]).permutation(length)
        self.labels = (order % num_classes).astype(np.int64)  # (length,), exactly balanced

    def __len__(self) -> int:
        return self.length

    def _index(self, index: int) -> int:
        if not -self.length <= index < self.length:
            raise IndexError(f"index {index} out of range for a ShapesDataset of length {self.length}")
        return index % self.length if self.length else index

    def sample(self, index: int) -> ShapeSample:
        """The rendered item (uint8 image, mask and the object's pose) before preprocessing."""
        i = self._index(index)
        return render(self.seed, i, self.size, self.num_classes, int(self.labels[i]))

    def normalize(self, image: np.ndarray) -> torch.Tensor:
        """(S, S, 3) uint8 -> (3, S, S) float32 model input."""
        x = image.transpose(2, 0, 1).astype(np.float32) / np.float32(255.0)  # (3, S, S), numpy: no thread pool
        return torch.from_numpy((x - self._mean) / self._std)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, torch.Tensor]:
        s = self.sample(index)
        return self.normalize(s.image), s.label, torch.from_numpy(s.mask)

    def write_folder(self, out_dir: str | os.PathLike[str], *, count: int | None = None) -> list[Path]:
        """Write the first ``count`` items (all by default) as ``NNNNN_CLASS.png`` + ``NNNNN_CLASS.mask.png``
        (mask: 8-bit, 255 inside, 0 outside) into ``out_dir``; returns the image paths."""
        n = self.length if count is None else count
        if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= self.length:
            raise InvalidArgumentError(f"count must be an integer from 0 to {self.length}, got {count!r}")
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = []
        for i in range(n):
            s = self.sample(i)
            stem = f"{i:05d}_{self.class_names[s.label]}"
            Image.fromarray(s.image).save(out / f"{stem}.png")
            Image.fromarray(s.mask.astype(np.uint8) * 255).save(out / f"{stem}.mask.png")
            paths.append(out / f"{stem}.png")
        return paths
