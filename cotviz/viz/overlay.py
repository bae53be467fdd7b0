"""Heatmaps drawn exactly over the pixels the model saw.

Geometry convention (shared by every figure and by :mod:`cotviz.analysis.rollout`): a feature map of
shape ``(h, w)`` with stride ``s`` (input pixels per cell) is drawn with ``imshow(extent=(0, w*s, h*s, 0))``
and ``origin="upper"``, so cell ``(i, j)`` (row i, column j) covers model-input pixels ``[j*s, (j+1)*s)``
horizontally and ``[i*s, (i+1)*s)`` vertically; the axes show the model input ``[0, S_w] x [0, S_h]``. When
``s`` divides the input size this tiles the input square exactly (14 x 14 cells of 16 px at 224); otherwise
the last row/column of cells is partial and clipped at the input border, as in the network.
The same picture in ORIGINAL image coordinates is the affine image of that extent through the crop box
(:func:`original_extent`), e.g. to draw over the full photograph.

Where that picture lands is a :class:`Panel`: a whole Axes (its limits set to the input), or a rectangle of
one shared "canvas" Axes. A figure of many panels draws much faster on one canvas (matplotlib's cost grows
with the number of Axes -- each builds tick machinery -- far more than with the number of images).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from matplotlib.artist import Artist
from matplotlib.axes import Axes
from matplotlib.colors import Colormap, Normalize
from matplotlib.figure import Figure
from matplotlib.image import AxesImage
from matplotlib.patches import Rectangle
from matplotlib.transforms import Affine2D, Bbox, Transform, TransformedBbox

__all__ = [
    "Panel",
    "as_panel",
    "axes_or_new",
    "background",
    "cell_extent",
    "draw_heatmap",
    "draw_input",
    "mark_point",
    "new_figure",
    "original_extent",
    "to_grayscale",
]

Extent = tuple[float, float, float, float]


def new_figure(figsize: tuple[float, float] = (4.0, 4.0), dpi: float = 100) -> Figure:
    """A Figure with an Agg canvas attached (object-oriented matplotlib; no pyplot state).

    Images are never merged: in SVG/PDF output every image stays its own element (the Agg/PNG path
    never merges them anyway)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = Figure(figsize=figsize, dpi=dpi)
    FigureCanvasAgg(fig)
    fig.suppressComposite = True  # SVG/PDF: one element per image (heatmap and background apart, gids kept)
    return fig


def axes_or_new(ax: Axes | None, figsize: tuple[float, float] = (4.0, 4.0)) -> tuple[Figure, Axes]:
    """``(figure, ax)`` for a given ``ax``, or a new Agg figure with one axes."""
    if ax is not None:
        fig = ax.figure
        while not isinstance(fig, Figure):  # a SubFigure: walk up to the root Figure
            fig = fig.figure
        return fig, ax
    fig = new_figure(figsize)
    return fig, fig.add_subplot()


@dataclass(frozen=True)
class Panel:
    """Where the model input ``[0, S_w] x [0, S_h]`` (y down) is drawn.

    Attributes:
        ax: the Axes drawn on.
        size: ``(S_h, S_w)``, the extent the panel shows (model-input pixels, or any grid such as a kernel mosaic).
        box: ``(x, y, w, h)`` of the panel in ``ax``'s data coordinates, which must point right and DOWN
            (a canvas Axes with ``ylim(H, 0)``), or ``None``: the whole ``ax`` (its limits are set to the input).
            Input ``(u, v)`` lands at ``(x + u * w / S_w, y + v * h / S_h)``.
    """

    ax: Axes
    size: tuple[float, float]
    box: tuple[float, float, float, float] | None = None

    @property
    def transform(self) -> Transform:
        """Model-input coordinates -> display, through the panel's box."""
        if self.box is None:
            return self.ax.transData
        x, y, w, h = self.box
        sh, sw = self.size
        return Affine2D().scale(w / sw, h / sh).translate(x, y) + self.ax.transData

    @property
    def aspect(self) -> Literal["equal", "auto"]:
        """``imshow`` aspect: square pixels on a whole Axes; a canvas box already has the right shape."""
        return "equal" if self.box is None else "auto"

    def clip(self, artist: Artist) -> None:
        """Clip ``artist`` to the panel (to the Axes itself for a whole-Axes panel).

        A clip box, not a clip path: the same pixels, and cheaper to set up and to draw."""
        if self.box is not None:
            x, y, w, h = self.box
            artist.set_clip_path(None)
            artist.set_clip_box(TransformedBbox(Bbox.from_bounds(x, y, w, h), self.ax.transData))

    def frame(self, *, linewidth: float = 0.8, color: str = "black") -> None:
        """A thin frame around a canvas panel (a whole Axes has its spines)."""
        if self.box is not None:
            x, y, w, h = self.box
            # add_artist, not add_patch: the canvas' limits are fixed, and updating its data limits from every
            # frame's path was ~10 % of building the attention figure
            self.ax.add_artist(Rectangle((x, y), w, h, fill=False, linewidth=linewidth, edgecolor=color, zorder=4))

    def place(self, artist: AxesImage) -> AxesImage:
        """Put an image drawn in panel coordinates into the panel (transform and clip); fix a whole Axes' limits."""
        artist.set_transform(self.transform)
        self.clip(artist)
        if self.box is None:
            sh, sw = self.size
            self.ax.set_xlim(0, sw)
            self.ax.set_ylim(sh, 0)
            self.ax.set_xticks([])
            self.ax.set_yticks([])
        return artist


def as_panel(target: Axes | Panel, size: Sequence[float]) -> Panel:
    """``target`` itself, or a whole-Axes :class:`Panel` showing ``size = (S_h, S_w)``."""
    if isinstance(target, Panel):
        return target
    return Panel(target, (float(size[0]), float(size[1])))


def cell_extent(shape: Sequence[int], stride: float) -> Extent:
    """``imshow`` extent ``(left, right, bottom, top)`` of an (h, w) map of stride ``s``: ``(0, w*s, h*s, 0)``."""
    h, w = int(shape[0]), int(shape[1])
    return (0.0, float(w * stride), float(h * stride), 0.0)


def original_extent(extent: Extent, crop_box: Sequence[float], input_size: Sequence[int]) -> Extent:
    """Map a model-input extent to original-image coordinates through the crop box.

    ``crop_box = (left, top, right, bottom)`` of the model input in the original image, ``input_size = (S_h, S_w)``:
    ``x = left + u * (right - left) / S_w``, ``y = top + v * (bottom - top) / S_h``.
    """
    left, top, right, bottom = (float(v) for v in crop_box)
    sh, sw = float(input_size[0]), float(input_size[1])
    sx, sy = (right - left) / sw, (bottom - top) / sh
    x0, x1, y0, y1 = extent
    return (left + x0 * sx, left + x1 * sx, top + y0 * sy, top + y1 * sy)


def to_grayscale(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (H, W) float in [0, 1] (ITU-R 601 luma)."""
    rgb = np.asarray(image, dtype=np.float32) / 255.0
    return rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)


def background(image: np.ndarray, *, gray: bool = False, dim: float = 1.0, max_side: int | None = None) -> np.ndarray:
    """The picture under the heatmaps: (S_h, S_w, 3) uint8 -> float RGB or luma in [0, 1], optionally
    area-averaged (PIL box filter) down to ``max_side`` pixels, i.e. the panel's size on screen.

    Pre-shrinking once per figure makes drawing many panels cheap (no per-panel antialiasing pass); the
    result still covers the same model-input extent (see :func:`draw_input`'s ``size``).
    """
    arr = np.asarray(image)
    sh, sw = arr.shape[:2]
    if max_side is not None and max(sh, sw) > max_side:
        from PIL import Image

        scale = max_side / max(sh, sw)
        size = (max(1, round(sw * scale)), max(1, round(sh * scale)))
        arr = np.asarray(Image.fromarray(arr.astype(np.uint8)).resize(size, Image.Resampling.BOX))
    out = to_grayscale(arr) if gray else np.asarray(arr, dtype=np.float32) / 255.0
    return np.clip(out * dim, 0.0, 1.0)


def draw_input(target: Axes | Panel, image: np.ndarray, *, gray: bool = False, dim: float = 1.0,
               size: Sequence[int] | None = None, gid: str | None = None) -> AxesImage:
    """Draw the model-input image over ``[0, S_w] x [0, S_h]`` of ``target`` (an Axes: its limits are fixed to it).

    ``image``: (S_h, S_w, 3) uint8, or a :func:`background` array (float RGB / luma, any resolution) with
    ``size = (S_h, S_w)`` giving the model-input extent it covers. ``gray``/``dim`` as in :func:`background`.
    ``gid``: the artist's id (an element id in SVG output).
    """
    arr = np.asarray(image)
    sh, sw = (int(size[0]), int(size[1])) if size is not None else arr.shape[:2]
    panel = as_panel(target, (sh, sw))
    if arr.dtype == np.uint8:
        arr = background(arr, gray=gray, dim=dim)
        interpolation = "antialiased"
    else:
        interpolation = "nearest"  # already at screen resolution
    kwargs: dict[str, Any] = {"cmap": "gray", "vmin": 0.0, "vmax": 1.0} if arr.ndim == 2 else {}
    im = panel.ax.imshow(arr, extent=(0, sw, sh, 0), origin="upper", interpolation=interpolation,
                         aspect=panel.aspect, gid=gid, **kwargs)
    return panel.place(im)


def draw_heatmap(target: Axes | Panel, heat: np.ndarray, *, stride: float, cmap: str | Colormap = "inferno",
                 norm: Normalize | None = None, alpha: float = 0.65, interpolation: str = "nearest",
                 input_size: Sequence[int] | None = None, **kwargs: Any) -> AxesImage:
    """Draw an (h, w) map with :func:`cell_extent` (cell (i, j) over its pixels) on top of what ``target`` shows.

    ``input_size = (S_h, S_w)`` clips the drawing to the model input (default: the map's own extent);
    a :class:`Panel` brings its own size. A full-resolution map (S_h, S_w) is drawn with ``stride=1``.
    """
    heat = np.asarray(heat)
    if heat.ndim != 2:
        raise ValueError(f"a heatmap must be 2-D (h, w), got shape {heat.shape}")
    extent = cell_extent(heat.shape, stride)
    size = (extent[2], extent[1]) if input_size is None else (input_size[0], input_size[1])
    panel = as_panel(target, size)
    im = panel.ax.imshow(heat, extent=extent, origin="upper", cmap=cmap, norm=norm, alpha=alpha,
                         interpolation=interpolation, aspect=panel.aspect, **kwargs)
    return panel.place(im)


def mark_point(target: Axes | Panel, u: float, v: float, *, size: float = 7.0) -> None:
    """A cross-hair marker at model-input coordinates ``(u, v)`` (visible on any colour map)."""
    ax, transform = (target.ax, target.transform) if isinstance(target, Panel) else (target, target.transData)
    for colour, markersize, width, z in (("black", size + 2, 2.4, 5), ("white", size, 1.2, 6)):
        ax.plot([u], [v], marker="+", markersize=markersize, color=colour, markeredgewidth=width, zorder=z,
                transform=transform)
