"""Colour bars drawn on a canvas Axes (inches from the figure's top left, y down), without an Axes of their own.

A matplotlib ``Colorbar`` lives in an Axes with the whole tick machinery (two Axis objects, Tick objects created
on every draw, label placement from tick-label boxes): the attention figure's four colour-bar Axes were ~40 % of
drawing it and ~25 % of building it, paid again for every image of a folder. :func:`canvas_colorbar` draws the same
information as a handful of plain artists on the canvas Axes the panels already use:

* the colour ramp: one (256, 1) / (1, 256) RGBA image of the colour map over ``norm``'s range, opaque (the bar shows
  the colour map itself, not the translucent overlay);
* its frame (a Rectangle) and the tick marks (one LineCollection, pointing out of the bar);
* tick labels and the exponent/offset text chosen as matplotlib's own colour bars choose them: ticks from
  :class:`~matplotlib.ticker.MaxNLocator` (for a vertical bar ``nbins`` as ``AutoLocator`` derives it from the bar's
  length: one tick per two label heights, at most 9, steps 1-2-2.5-5-10), labels from
  :class:`~matplotlib.ticker.ScalarFormatter`;
* the label, beyond the widest tick label (vertical: rotated, to the right) or under the tick labels (horizontal).

A tick at value ``v`` sits at fraction ``norm(v)`` of the bar (linear for ``Normalize``; for a ``TwoSlopeNorm``
the centre is in the middle, as in matplotlib).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from matplotlib.axes import Axes
from matplotlib.collections import LineCollection
from matplotlib.colors import Colormap, Normalize
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from matplotlib.image import AxesImage
from matplotlib.patches import Rectangle
from matplotlib.text import Text
from matplotlib.ticker import MaxNLocator, ScalarFormatter

from cotviz.viz.text import text_size_px

__all__ = ["CanvasColorbar", "canvas_colorbar"]

Box = tuple[float, float, float, float]  # (x, top, width, height) in inches from the figure's top left
_RAMP = 256  # colour samples along the bar
_PT = 1.0 / 72.0  # inches per point


@dataclass(frozen=True)
class CanvasColorbar:
    """What :func:`canvas_colorbar` drew.

    Attributes:
        ticks: tick values inside the range, increasing; ``labels`` their texts (``offset``: the shared
            offset / exponent text, ``""`` if none).
        ramp: the colour-ramp image; ``label``: the label Text (None without a label).
    """

    ticks: tuple[float, ...]
    labels: tuple[str, ...]
    offset: str
    ramp: AxesImage
    label: Text | None


def _ticks(norm: Normalize, nbins: int) -> tuple[np.ndarray, list[str], str]:
    """Tick values inside ``[vmin, vmax]``, their labels and the offset text (matplotlib's locator and formatter)."""
    vmin, vmax = float(norm.vmin), float(norm.vmax)  # type: ignore[arg-type]  # set by shared_norm
    locs = np.asarray(MaxNLocator(nbins=nbins, steps=[1, 2, 2.5, 5, 10]).tick_values(vmin, vmax), dtype=np.float64)
    eps = 1e-10 * (vmax - vmin)
    locs = locs[(locs >= vmin - eps) & (locs <= vmax + eps)]
    fmt = ScalarFormatter()
    fmt.create_dummy_axis()
    fmt.axis.set_view_interval(vmin, vmax)  # type: ignore[union-attr]  # the dummy axis just created
    fmt.axis.set_data_interval(vmin, vmax)  # type: ignore[union-attr]
    labels = fmt.format_ticks(list(locs))
    return locs, labels, fmt.get_offset()


def _size_in(fig: Figure, text: str, fontsize: float) -> tuple[float, float]:
    """(width, height) of one line of plain ``text`` in the default font at ``fontsize``, inches (the renderer's
    metrics, as ``Text`` lays it out, cached across figures; several times cheaper than a Text's window extent)."""
    w, h, _ = text_size_px(fig, text, FontProperties(size=fontsize))
    return w / fig.dpi, h / fig.dpi


def _line_height_in(fig: Figure, fontsize: float) -> float:
    """Height of a one-line Text of digits at ``fontsize``, inches: at least that of "lp" (ascender to
    descender), as ``Text`` sizes every line."""
    return max(_size_in(fig, "lp", fontsize)[1], _size_in(fig, "0123456789.−e+", fontsize)[1])


def canvas_colorbar(ax: Axes, box: Box, cmap: Colormap, norm: Normalize, *,
                    orientation: Literal["vertical", "horizontal"] = "vertical", label: str | None = None,
                    fontsize: float = 7.0, nbins: int | None = None, tick_length: float = 3.5, pad: float = 3.5,
                    labelpad: float = 4.0, gid: str | None = None) -> CanvasColorbar:
    """Draw a colour bar for ``cmap`` over ``norm``'s range in ``box`` of the canvas ``ax``.

    Args:
        ax: a canvas Axes whose data coordinates are inches from the figure's top left, y down.
        box: ``(x, top, width, height)`` of the bar itself, inches.
        orientation: ``"vertical"`` (ticks and label on the right) or ``"horizontal"`` (below).
        nbins: at most this many intervals between ticks (default: from the bar's length, as ``AutoLocator``).
        tick_length, pad, labelpad: tick mark length, tick-label gap and label gap, in points (matplotlib's
            defaults: 3.5, 3.5 and 4).
        gid: id of the ramp image (an element id in SVG output).
    """
    fig = ax.get_figure(root=True)
    if not isinstance(fig, Figure):
        raise ValueError("canvas_colorbar needs an Axes of a Figure")
    x, top, w, h = box
    vertical = orientation == "vertical"
    along = np.linspace(0.0, 1.0, _RAMP)
    colours = cmap(along[::-1, None] if vertical else along[None, :])  # (256, 1, 4) / (1, 256, 4) RGBA
    ramp = ax.imshow(colours, extent=(x, x + w, top + h, top), origin="upper", interpolation="nearest",
                     aspect="auto", zorder=3, gid=gid)
    ax.add_artist(Rectangle((x, top), w, h, fill=False, linewidth=0.8, edgecolor="black", zorder=4))  # limits fixed
    if nbins is None:
        length_pt = (h if vertical else w) / _PT
        nbins = int(np.clip(np.floor(length_pt / (fontsize * (2 if vertical else 3))), 1, 9))
    locs, labels, offset = _ticks(norm, nbins)
    frac = np.clip(np.asarray(norm(locs), dtype=np.float64), 0.0, 1.0)
    tick = tick_length * _PT
    gap = (tick_length + pad) * _PT
    if vertical:
        ys = top + h * (1.0 - frac)
        segs = [((x + w, y), (x + w + tick, y)) for y in ys]
        for y, s in zip(ys, labels, strict=True):
            ax.text(x + w + gap, float(y), s, fontsize=fontsize, ha="left", va="center_baseline")
    else:
        xs = x + w * frac
        segs = [((xx, top + h), (xx, top + h + tick)) for xx in xs]
        for xx, s in zip(xs, labels, strict=True):
            ax.text(float(xx), top + h + gap, s, fontsize=fontsize, ha="center", va="top")
    ax.add_collection(LineCollection(segs, colors="black", linewidths=0.8, zorder=4), autolim=False)
    label_text = None
    if vertical:
        if offset:  # above the bar, where matplotlib puts a y axis' offset text
            ax.text(x + w, top - 2 * _PT, offset, fontsize=fontsize, ha="left", va="bottom")
        if label:
            widest = max((_size_in(fig, s, fontsize)[0] for s in labels), default=0.0)
            lx = x + w + gap + widest + labelpad * _PT
            label_text = ax.text(lx, top + h / 2, label, fontsize=fontsize, rotation=90, ha="left", va="center")
    else:
        line = _line_height_in(fig, fontsize)
        below = top + h + gap + (line if labels else 0.0)
        if offset:  # its own line under the tick labels, at the right end; the label goes under it
            ax.text(x + w, below, offset, fontsize=fontsize, ha="right", va="top")
            below += line
        if label:
            label_text = ax.text(x + w / 2, below + labelpad * _PT, label, fontsize=fontsize, ha="center", va="top")
    return CanvasColorbar(tuple(float(v) for v in locs), tuple(labels), offset, ramp, label_text)
