"""Map panels composed in numpy for raster output: one pixel-aligned image per row of panels.

Drawn by matplotlib, each panel of the attention figure is two images (the dimmed input, the heatmap over it):
48 images for 6 blocks x 4 maps, each ~0.9 ms of resampling and bookkeeping, the largest part of drawing a PNG.
For raster output the same picture is composed here at the device resolution and drawn as one image per row whose
pixels land exactly on the canvas' pixels (copied, not resampled). Vector output (SVG/PDF) keeps each panel's
images apart, with their gids and at any resolution (:func:`cotviz.viz.figures.attention_figure`).

The row is a :class:`DeviceImage`: at the dpi it was composed for, its pixels are handed to the renderer as they
are (matplotlib would resample even a 1:1 image: ~4 ms per row at 950 x 150 px); at any other dpi, or in vector
output, it is resampled like any image.

Geometry as :mod:`cotviz.viz.overlay`: cell (i, j) of an (h, w) map of stride s covers model-input pixels
``[j s, (j+1) s) x [i s, (i+1) s)``; a device pixel shows the cell (and the input pixel) under its centre.
Colours as matplotlib's: the heatmap's colour map and norm, its alpha over the background.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.colors import Colormap, Normalize
from matplotlib.image import AxesImage
from matplotlib.transforms import IdentityTransform

from cotviz.viz.overlay import background

__all__ = ["DeviceImage", "PanelRow", "PixelBox", "panel_background", "pixel_box"]

#: ``(x0, y0, x1, y1)``: device pixels from the figure's top left, ends exclusive.
PixelBox = tuple[int, int, int, int]


def pixel_box(box: Sequence[float], dpi: float) -> PixelBox:
    """A canvas box ``(x, top, w, h)`` in inches -> the device pixels it covers (edges rounded to pixels)."""
    x, top, w, h = (float(v) for v in box)
    return (round(x * dpi), round(top * dpi), round((x + w) * dpi), round((top + h) * dpi))


def _centres(n_px: int, extent: float, step: float, n: int) -> np.ndarray:
    """Index (< ``n``) of the step-``step`` cell under the centre of each of ``n_px`` pixels spanning ``extent``."""
    u = (np.arange(n_px, dtype=np.float64) + 0.5) * (extent / n_px)
    return np.minimum((u // step).astype(np.intp), n - 1)


def panel_background(image: np.ndarray, shape: tuple[int, int], *, dim: float) -> np.ndarray:
    """(S_h, S_w, 3) uint8 model input -> (ph, pw) float32 grey in [0, 1] at a panel's device size ``shape``.

    :func:`cotviz.viz.overlay.background` (luma, dimmed, area-averaged down to the panel's longer side), each device
    pixel showing the input pixel under its centre, quantised as matplotlib's ``gray`` colour map does."""
    ph, pw = shape
    luma = background(image, gray=True, dim=dim, max_side=max(ph, pw))  # (h, w) float32
    grey = luma[_centres(ph, float(luma.shape[0]), 1.0, luma.shape[0])][:, _centres(pw, float(luma.shape[1]), 1.0,
                                                                                    luma.shape[1])]
    return np.minimum(np.floor(grey * 256.0), 255.0).astype(np.float32) / 255.0  # the gray LUT's 256 levels


class DeviceImage(AxesImage):
    """An RGBA uint8 image whose pixels are device pixels: drawn as they are where its extent lands exactly on that
    many whole pixels of the renderer (no resampling, no colour mapping); resampled as any ``AxesImage`` elsewhere."""

    def make_image(self, renderer: Any, magnification: float = 1.0,
                   unsampled: bool = False) -> tuple[Any, float, float, Any]:
        pixels = np.asarray(self.get_array())
        if not unsampled and magnification == 1.0 and pixels.ndim == 3 and pixels.dtype == np.uint8:
            left, right, bottom, top = self.get_extent()
            (x0, y0), (x1, y1) = self.get_transform().transform([(left, bottom), (right, top)])
            if (abs(x0 - round(x0)) < 1e-6 and abs(y0 - round(y0)) < 1e-6
                    and (round(x1 - x0), round(y1 - y0)) == (pixels.shape[1], pixels.shape[0])):
                return pixels[::-1], float(round(x0)), float(round(y0)), IdentityTransform()  # rows bottom-up
        return super().make_image(renderer, magnification, unsampled)


class PanelRow:
    """The RGBA pixels of a row of panels (transparent between them), painted panel by panel, drawn as one image.

    Args:
        boxes: each panel's :data:`PixelBox` (at the dpi the figure is drawn at).
    """

    def __init__(self, boxes: Sequence[PixelBox]) -> None:
        if not boxes:
            raise ValueError("a PanelRow needs at least one panel")
        self.x0, self.y0 = min(b[0] for b in boxes), min(b[1] for b in boxes)
        self.x1, self.y1 = max(b[2] for b in boxes), max(b[3] for b in boxes)
        self.pixels = np.zeros((self.y1 - self.y0, self.x1 - self.x0, 4), dtype=np.uint8)  # (H_px, W_px, RGBA)
        # the same bytes as one little-endian uint32 per pixel (R in the low byte): a panel is written in one pass
        self._words = self.pixels.view(np.dtype("<u4"))[..., 0]  # (H_px, W_px)
        self._scratch: dict[tuple[int, ...], np.ndarray] = {}

    def _buffer(self, shape: tuple[int, ...], dtype: type[np.generic]) -> np.ndarray:
        """A reused scratch array: fresh ~100 kB arrays per panel cost more in page faults than the arithmetic."""
        key = (*shape, np.dtype(dtype).num)
        if key not in self._scratch:
            self._scratch[key] = np.empty(shape, dtype=dtype)
        return self._scratch[key]

    def paint(self, box: PixelBox, grey: np.ndarray, heat: np.ndarray | None = None, *, stride: float = 1.0,
              input_size: tuple[int, int] = (1, 1), cmap: Colormap | None = None, norm: Normalize | None = None,
              alpha: float = 0.65) -> None:
        """Fill ``box`` with ``grey`` (ph, pw) in [0, 1] and, if given, the (h, w) ``heat`` map over it.

        ``heat``'s cells are ``stride`` model-input pixels of an ``input_size = (S_h, S_w)`` input; colours are
        ``cmap(norm(heat))`` at ``alpha`` over the grey, rounded to bytes; non-finite cells leave the grey bare."""
        x0, y0, x1, y1 = box
        ph, pw = y1 - y0, x1 - x0
        if grey.shape != (ph, pw):
            raise ValueError(f"the background is {grey.shape}, the panel {(ph, pw)}")
        rgb = self._buffer((3, ph, pw), np.float32)
        if heat is None:
            np.multiply(grey, np.float32(255.0), out=rgb[0])
            rgb[1:] = rgb[0]
        else:
            if cmap is None or norm is None:
                raise ValueError("a heatmap needs its colour map and norm")
            h, w = heat.shape
            colours = np.asarray(cmap(norm(heat)), dtype=np.float32)  # (h, w, RGBA); NaN -> the "bad" colour
            a = np.where(np.isfinite(heat), colours[..., 3] * np.float32(alpha), np.float32(0.0))  # (h, w)
            # per cell and channel: the heatmap's share (premultiplied) and what is left of the grey, in bytes
            share = np.ascontiguousarray((colours[..., :3] * (a[..., None] * np.float32(255.0))).transpose(2, 0, 1))
            left = (1.0 - a) * np.float32(255.0)
            sh, sw = input_size
            rows, cols = _centres(ph, float(sh), stride, h), _centres(pw, float(sw), stride, w)
            np.take(np.take(share, rows, axis=1), cols, axis=2, out=rgb)  # (3, ph, pw)
            grey_part = self._buffer((ph, pw), np.float32)
            np.take(np.take(left, rows, axis=0), cols, axis=1, out=grey_part)
            np.multiply(grey_part, grey, out=grey_part)
            np.add(rgb, grey_part, out=rgb)
        np.add(rgb, np.float32(0.5), out=rgb)  # round half up, by truncation below (values are >= 0)
        np.clip(rgb, 0.0, 255.0, out=rgb)
        words = self._buffer((3, ph, pw), np.uint32)
        np.copyto(words, rgb, casting="unsafe")
        np.left_shift(words[1], 8, out=words[1])
        np.left_shift(words[2], 16, out=words[2])
        np.bitwise_or(words[0], words[1], out=words[0])
        np.bitwise_or(words[0], words[2], out=words[0])
        np.bitwise_or(words[0], np.uint32(0xFF000000), out=self._words[y0 - self.y0:y1 - self.y0,
                                                                      x0 - self.x0:x1 - self.x0])

    def draw(self, ax: Axes, dpi: float, *, gid: str | None = None) -> AxesImage:
        """Put the row on a canvas Axes (data units: inches from the top left, y down) drawn at ``dpi``: every
        pixel of :attr:`pixels` on one device pixel."""
        extent = (self.x0 / dpi, self.x1 / dpi, self.y1 / dpi, self.y0 / dpi)
        image = DeviceImage(ax, origin="upper", interpolation="nearest", extent=extent)
        image.set_data(self.pixels)
        image.set_gid(gid)
        return ax.add_image(image)  # not imshow: the canvas' aspect and limits stay as they are
