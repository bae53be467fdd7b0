"""The ``cotviz attention`` figure: maps of one stage per block, aligned over the model input.

Object-oriented matplotlib only (captum's ``use_pyplot=False`` style): every function builds on a
``matplotlib.figure.Figure`` with an Agg canvas, takes ``ax=None`` where it draws one panel, and returns
the Figure; the caller saves and closes it. No pyplot, no rcParams.

Layout of :func:`attention_figure` (columns = blocks of the stage, rows = map types)::

    [input as the model saw it]  | block 1 | block 2 | ... | colour bar (map 1, real units)
    [Grad-CAM (optional)]        | ...                     | colour bar (map 2)
    [rollout of --point (opt.)]  | k x k kernels of each head at the point's cell  | colour bar (A)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.colorbar import Colorbar
from matplotlib.colors import Colormap, Normalize, TwoSlopeNorm
from matplotlib.figure import Figure
from matplotlib.image import AxesImage
from matplotlib.text import Text

from cotviz.analysis.maps import MAPS
from cotviz.viz.colorbar import Box, CanvasColorbar, canvas_colorbar
from cotviz.viz.overlay import (
    Panel,
    as_panel,
    axes_or_new,
    background,
    draw_heatmap,
    draw_input,
    mark_point,
    new_figure,
)
from cotviz.viz.raster import PanelRow, PixelBox, panel_background, pixel_box
from cotviz.viz.render import mark_static
from cotviz.viz.text import text_size_px

__all__ = [
    "AttentionFigureData",
    "GradCamView",
    "PointView",
    "Scale",
    "attention_figure",
    "draw_kernels",
    "kernel_mosaic",
    "mosaic_columns",
    "plot_kernels",
    "plot_map",
    "shared_norm",
]

Scale = Literal["shared", "per-panel"]

_FONT = 7.0  # pt, panel text
_TITLE = 8.0  # pt, column titles
_PANEL = 1.5  # inches per panel side
_KERNEL_CMAP = "RdBu_r"


@dataclass(frozen=True)
class GradCamView:
    """Grad-CAM to draw: ``heat`` (S_h, S_w) on the model input, for class ``target`` at ``stage``."""

    heat: np.ndarray
    target: int
    stage: int


@dataclass(frozen=True)
class PointView:
    """What ``--point`` adds.

    Attributes:
        xy: the point in original-image pixels (as given).
        uv: the same point in model-input coordinates (pixel centre).
        cells: block name -> (row, col) of the feature cell under the point.
        kernels: block name -> (M, K, K) raw attention A of every head at that cell (signed).
        rollout: (H0, W0) rollout on the stage-input grid (normalised to sum 1).
        rollout_stride: input pixels per stage-input cell.
        rollout_block: the block the rollout starts from (its kernels and all before it are composed).
    """

    xy: tuple[int, int]
    uv: tuple[float, float]
    cells: Mapping[str, tuple[int, int]]
    kernels: Mapping[str, np.ndarray]
    rollout: np.ndarray
    rollout_stride: int
    rollout_block: str


@dataclass(frozen=True)
class AttentionFigureData:
    """Everything :func:`attention_figure` draws for one image.

    Attributes:
        display: (S_h, S_w, 3) uint8, the pixels the model saw.
        maps: map name -> block name -> (h, w) map (raw values, real units), in display order.
        strides: block name -> input pixels per cell of that block's maps.
        blocks: block names in column order (``"stage3.block1"``, ...).
        model, weights: names for the title (``weights`` e.g. ``"cotnet50.pth.tar"`` or ``"random init"``).
        stage, head, num_heads: what was selected (``head=None``: mean over heads / all channels).
        source: the input file name; ``crop_box`` (left, top, right, bottom) in original pixels and
            ``original_size`` (W, H), for the subtitle.
    """

    display: np.ndarray
    maps: Mapping[str, Mapping[str, np.ndarray]]
    strides: Mapping[str, int]
    blocks: Sequence[str]
    model: str
    weights: str
    stage: int
    head: int | None
    num_heads: int
    source: str = ""
    crop_box: tuple[float, float, float, float] | None = None
    original_size: tuple[int, int] | None = None
    gradcam: GradCamView | None = None
    point: PointView | None = None
    notes: Sequence[str] = field(default_factory=tuple)


def shared_norm(arrays: Sequence[np.ndarray], *, symmetric: bool = False) -> Normalize:
    """One colour scale over several arrays (min..max of their finite values; symmetric around 0 if asked)."""
    finite = [a[np.isfinite(a)] for a in (np.asarray(x, dtype=np.float64) for x in arrays)]
    values = np.concatenate([f.ravel() for f in finite]) if finite else np.zeros(1)
    if values.size == 0:
        values = np.zeros(1)
    lo, hi = float(values.min()), float(values.max())
    if symmetric:
        m = max(abs(lo), abs(hi)) or 1.0
        return TwoSlopeNorm(vcenter=0.0, vmin=-m, vmax=m)
    if hi <= lo:  # a constant map: a small window around the value keeps the colour bar readable
        pad = abs(lo) * 1e-3 or 1e-3
        lo, hi = lo - pad, hi + pad
    return Normalize(vmin=lo, vmax=hi)


def mosaic_columns(num_heads: int) -> int:
    """Kernels per mosaic row: ``ceil(sqrt(2 M))`` (a mosaic about twice as wide as tall; 8 for 32 heads)."""
    return max(1, math.ceil(math.sqrt(2 * num_heads)))


def kernel_mosaic(kernels: np.ndarray, per_row: int | None = None) -> np.ndarray:
    """(M, K, K) -> one image of the M kernels, ``per_row`` per row, separated by 1-cell NaN gaps.

    ``per_row`` defaults to :func:`mosaic_columns`.

    Head ``h`` sits at mosaic row ``h // per_row``, column ``h % per_row`` (row-major). Shape:
    ``(rows*(K+1) - 1, cols*(K+1) - 1)`` with ``cols = min(M, per_row)``, ``rows = ceil(M / per_row)``.
    """
    kernels = np.asarray(kernels, dtype=np.float64)
    if kernels.ndim != 3 or kernels.shape[1] != kernels.shape[2]:
        raise ValueError(f"kernels must be (M, K, K), got {kernels.shape}")
    m, k, _ = kernels.shape
    cols = max(1, min(m, per_row or mosaic_columns(m)))
    rows = math.ceil(m / cols)
    out = np.full((rows * (k + 1) - 1, cols * (k + 1) - 1), np.nan)
    for h in range(m):
        r, c = divmod(h, cols)
        out[r * (k + 1): r * (k + 1) + k, c * (k + 1): c * (k + 1) + k] = kernels[h]
    return out


def plot_map(heat: np.ndarray, display: np.ndarray, *, stride: float, name: str | None = None,
             ax: Axes | None = None, norm: Normalize | None = None, cmap: str | None = None,
             colorbar: bool = True, alpha: float = 0.65) -> Figure:
    """One (h, w) map over the (S_h, S_w, 3) model input; cell (i, j) over pixels ``[i*s, (i+1)*s)``.

    ``name``: a :data:`cotviz.analysis.maps.MAPS` key (colour map, title and colour-bar units).
    """
    fig, ax = axes_or_new(ax)
    spec = MAPS.get(name) if name else None
    draw_input(ax, display, gray=True, dim=0.9)
    im = draw_heatmap(ax, heat, stride=stride, cmap=cmap or (spec.cmap if spec else "inferno"),
                      norm=norm or shared_norm([heat]), alpha=alpha, input_size=display.shape[:2])
    if spec is not None:
        ax.set_title(spec.label, fontsize=_TITLE)
    if colorbar:
        cb = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03)
        _opaque(cb)
        if spec is not None:
            cb.set_label(spec.units, fontsize=_FONT)
        cb.ax.tick_params(labelsize=_FONT)
    return fig


def plot_kernels(kernels: np.ndarray, *, ax: Axes | None = None, norm: Normalize | None = None,
                 per_row: int | None = None, colorbar: bool = True) -> Figure:
    """The k x k attention kernels of every head (M, K, K) as small multiples (see :func:`kernel_mosaic`).

    Values are the raw, signed attention A (GroupNorm output); colours are symmetric around 0.
    """
    fig, ax = axes_or_new(ax)
    im = draw_kernels(ax, kernels, norm=norm, per_row=per_row)
    for side in ax.spines.values():
        side.set_visible(False)
    if colorbar:
        cb = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03)
        cb.set_label("A (GroupNorm output, signed)", fontsize=_FONT)
        cb.ax.tick_params(labelsize=_FONT)
    return fig


def draw_kernels(target: Axes | Panel, kernels: np.ndarray, *, norm: Normalize | None = None,
                 per_row: int | None = None, gid: str | None = None) -> AxesImage:
    """Draw the :func:`kernel_mosaic` of (M, K, K) kernels into ``target`` (white gaps); returns the image.

    A :class:`Panel` target should have the mosaic's aspect ratio (its ``size`` is ignored: the mosaic's
    own (rows, cols) is mapped onto the panel's box)."""
    mosaic = kernel_mosaic(kernels, per_row)
    size = mosaic.shape
    panel = replace(target, size=size) if isinstance(target, Panel) else as_panel(target, size)
    if panel.box is None:
        panel.ax.set_facecolor("white")
    im = panel.ax.imshow(np.ma.masked_invalid(mosaic), cmap=_KERNEL_CMAP,
                         norm=norm or shared_norm([kernels], symmetric=True), interpolation="nearest",
                         origin="upper", extent=(0, size[1], size[0], 0), aspect=panel.aspect, gid=gid)
    return panel.place(im)


def _fmt_box(box: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:.1f}".rstrip("0").rstrip(".") for v in box) + ")"


def _block_label(name: str) -> str:
    return name.split(".")[-1].replace("block", "block ")


def _opaque(cb: Colorbar) -> None:
    """Colour bars show the colour map itself, not the translucent overlay colours."""
    if cb.solids is not None:
        cb.solids.set_alpha(1.0)


def _norm(im: AxesImage) -> Normalize:
    norm = im.norm
    if not isinstance(norm, Normalize):
        raise TypeError(f"a colour bar needs a Normalize, got {type(norm).__name__}")
    return norm


def _row_colorbar(ax: Axes, box: Box, cmap: Colormap, norm: Normalize, label: str, gid: str) -> CanvasColorbar:
    """A row's colour bar, right of its last panel, in the map's units."""
    return canvas_colorbar(ax, box, cmap, norm, label=label, fontsize=_FONT, gid=gid)


def _inset_colorbar(ax: Axes, box: Box, cmap: Colormap, norm: Normalize, label: str | None,
                    gid: str) -> CanvasColorbar:
    """A thin horizontal colour bar under a panel (per-panel scales and the left column): at most 3 intervals."""
    return canvas_colorbar(ax, box, cmap, norm, orientation="horizontal", label=label, fontsize=_FONT - 1, nbins=3,
                           tick_length=2.0, pad=1.0, labelpad=1.0, gid=gid)


def _wrap(segments: Sequence[str], width_in: float, fontsize: float, sep: str = " · ") -> list[str]:
    """Join ``segments`` with ``sep`` into lines that fit ``width_in`` inches at ``fontsize`` points.

    Width estimate: 0.6 em per character (DejaVu Sans averages ~0.55 em); a segment longer than a line is
    wrapped at spaces.
    """
    import textwrap

    max_chars = max(20, int(width_in * 72 / (0.6 * fontsize)))
    lines: list[str] = []
    current = ""
    for seg in segments:
        for piece in textwrap.wrap(seg, max_chars) or [""]:
            candidate = f"{current}{sep}{piece}" if current else piece
            if len(candidate) <= max_chars:
                current = candidate
            else:
                lines.append(current)
                current = piece
    if current:
        lines.append(current)
    return lines


def _title(data: AttentionFigureData, n_heads_label: str) -> list[list[str]]:
    """The title as lines of segments (each line is wrapped separately)."""
    line1 = [data.model, f"weights: {data.weights}", f"stage {data.stage} (layer{data.stage})", n_heads_label]
    parts = [data.source] if data.source else []
    s = data.display.shape
    if data.crop_box is not None and data.original_size is not None:
        parts.append(f"model input {s[1]}×{s[0]} px = box {_fmt_box(data.crop_box)} of the "
                     f"{data.original_size[0]}×{data.original_size[1]} original")
    if data.point is not None:
        parts.append(f"point ({data.point.xy[0]}, {data.point.xy[1]})")
    return [line1, parts] if parts else [line1]


def _wrap_label(label: str) -> str:
    """Put a parenthetical part of a row label on its own line."""
    head, sep, tail = label.partition(" (")
    return f"{head}\n({tail}" if sep else label


class _Layout:
    """Axes rectangles of :func:`attention_figure`, computed in inches (no layout solver, no overlaps)."""

    @staticmethod
    def width_for(n_blocks: int, per_panel: bool) -> float:
        """Figure width in inches for ``n_blocks`` columns."""
        gap_h = 0.24 if per_panel else 0.08
        return 0.25 + _PANEL + 0.62 + n_blocks * _PANEL + (n_blocks - 1) * gap_h + 0.1 + 0.12 + 0.8

    def __init__(self, *, n_blocks: int, n_rows: int, kernel_aspect: float | None, n_left: int, per_panel: bool,
                 n_notes: int, n_title: int = 2) -> None:
        p = _PANEL
        self.p = p
        self.left_x = 0.25
        self.grid_x = self.left_x + p + 0.62  # room for the row labels (two lines, rotated)
        self.gap_h = 0.24 if per_panel else 0.08
        self.cbar_x = self.grid_x + n_blocks * p + (n_blocks - 1) * self.gap_h + 0.1
        self.width = self.cbar_x + 0.12 + 0.8
        assert abs(self.width - self.width_for(n_blocks, per_panel)) < 1e-9
        self.header = 0.3 + 0.16 * n_title + 0.22  # title lines + column titles
        gap_v = 0.5 if per_panel else 0.22
        self.rows: list[tuple[float, float]] = []  # (top, height) in inches from the figure top
        y = self.header
        for _ in range(n_rows):
            self.rows.append((y, p))
            y += p + gap_v
        if kernel_aspect is not None:
            y += 0.12  # the kernel titles
            h = p * kernel_aspect
            self.rows.append((y, h))
            y += h + gap_v
        grid_bottom = y if per_panel else y - gap_v  # per panel, the last row has colour bars under it too
        self.left: list[tuple[float, float]] = []
        y = self.header
        for _ in range(n_left):
            self.left.append((y, p))
            y += p + 0.82  # two-line title of the next panel + the colour bar under this one
        left_bottom = y - 0.82 + (0.45 if n_left > 1 else 0.0)
        self.notes_y = max(grid_bottom, left_bottom) + 0.12
        self.height = self.notes_y + 0.16 * n_notes + 0.1

    def block(self, row: int, col: int) -> Box:
        top, h = self.rows[row]
        return (self.grid_x + col * (self.p + self.gap_h), top, self.p, h)

    def cbar(self, row: int) -> Box:
        top, h = self.rows[row]
        return (self.cbar_x, top, 0.12, h)

    def left_panel(self, i: int) -> Box:
        top, h = self.left[i]
        return (self.left_x, top, self.p, h)

    @staticmethod
    def under(box: Box) -> Box:
        """A thin colour bar just under a panel."""
        x, top, w, h = box
        return (x + 0.06 * w, top + h + 0.055 * h, 0.88 * w, 0.055 * h)


def _canvas(fig: Figure, lay: _Layout) -> Axes:
    """One Axes over the whole figure whose data coordinates are inches from the top left (y down).

    Every image panel is a :class:`Panel` of it: one Axes instead of ~30 makes the figure ~3x faster to
    build and draw."""
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0))
    ax.set_xlim(0.0, lay.width)
    ax.set_ylim(lay.height, 0.0)
    ax.set_autoscale_on(False)
    ax.set_axis_off()
    return ax


def _static(ax: Axes, text: Text) -> None:
    """Mark a canvas text outside every panel as part of the figure's static layer (see :mod:`cotviz.viz.render`)."""
    fig = ax.get_figure(root=True)
    if isinstance(fig, Figure):
        mark_static(fig, [text])


def _line_tops(fig: Figure, lines: Sequence[str], fontsize: float) -> list[float]:
    """Where one multi-line matplotlib Text (default font, ``linespacing="normal"``) puts the top of each line
    of ``lines``, in points below its own top: so one one-line Text per line (``va="top"``) draws the same.

    As ``Text._get_layout``: each line is at least the font's ascent + descent high (OS/2, else hhea table) plus
    its line gap, half of it above the line."""
    from matplotlib.font_manager import FontProperties, findfont, get_font

    if len(lines) < 2:
        return [0.0] * len(lines)
    prop = FontProperties(size=fontsize)
    font: Any = get_font(findfont(prop))  # get_sfnt_table's stubs want literal table names
    em = font.get_sfnt_table("head")["unitsPerEm"]
    min_a, min_d, gap = 0.0, 0.0, 0.0
    for table, g, up, down in (("OS/2", "sTypoLineGap", "sTypoAscender", "sTypoDescender"),
                               ("hhea", "lineGap", "ascent", "descent")):
        m = font.get_sfnt_table(table)
        if m is not None:
            min_a, min_d, gap = (m[up] / em * fontsize, -m[down] / em * fontsize, m[g] / em * fontsize)
            break
    to_pt = 72.0 / fig.dpi
    tops, y = [], gap / 2
    for line in lines:
        _, h, d = text_size_px(fig, line, prop)  # pixels
        a_pt, d_pt = max((h - d) * to_pt, min_a), max(d * to_pt, min_d)
        tops.append(y)
        y += a_pt + d_pt + gap
    return tops


def _panel_title(ax: Axes, box: Box, text: str, fontsize: float, pad_pt: float = 6.0) -> None:
    x, top, w, _ = box
    _static(ax, ax.text(x + w / 2, top - pad_pt / 72, text, fontsize=fontsize, ha="center", va="bottom",
                        multialignment="center"))


def _row_label(ax: Axes, box: Box, text: str) -> None:
    x, top, _, h = box
    _static(ax, ax.text(x - 4 / 72, top + h / 2, text, fontsize=_FONT, rotation=90, ha="right", va="center",
                        multialignment="center"))


def attention_figure(data: AttentionFigureData, *, scale: Scale = "shared", dpi: float = 100,
                     raster: bool = False) -> Figure:
    """The figure of one image (see the module docstring); returns the Figure (Agg canvas attached).

    ``scale="shared"``: one colour scale per map type across the blocks (one colour bar per row, in the
    map's units); ``"per-panel"``: each panel scaled to its own range with its own colour bar.

    Image panels and colour bars are drawn on one canvas Axes (``fig.axes[0]``, the figure's only Axes; colour
    bars by :func:`cotviz.viz.colorbar.canvas_colorbar`, ramp gids ``colorbar/...``). Every
    image artist has a gid (an element id in SVG): ``input``, ``map/<map>/<block>`` (heatmap),
    ``background/<map>/<block>``, ``gradcam``, ``rollout``, ``kernels/<block>``.

    ``raster=True`` (for PNG at this ``dpi``; :meth:`cotviz.explain.Explanation.save` uses it): each row of map
    panels is composed in numpy (:mod:`cotviz.viz.raster`) and drawn as one pixel-aligned image ``map/<map>``
    instead of two images per panel, handed to the renderer without resampling -- the same picture (no colour
    more than 3 of 255 levels apart) for ~60 instead of ~95 ms of building and drawing. Drawn at another dpi or
    saved as SVG/PDF the rows are resampled, so keep the default there.
    """
    if scale not in ("shared", "per-panel"):
        raise ValueError(f"scale must be 'shared' or 'per-panel', got {scale!r}")
    names = list(data.maps)
    blocks = list(data.blocks)
    per_panel = scale == "per-panel"
    left_items = ["input"] + (["gradcam"] if data.gradcam is not None else []) + (
        ["rollout"] if data.point is not None else [])
    kernel_aspect = None
    if data.point is not None and data.point.kernels:
        mosaic = kernel_mosaic(np.asarray(next(iter(data.point.kernels.values()))))
        kernel_aspect = mosaic.shape[0] / mosaic.shape[1]
    n_blocks = max(1, len(blocks))
    text_width = _Layout.width_for(n_blocks, per_panel) - 0.4
    head_label = (f"head {data.head} of {data.num_heads}" if data.head is not None
                  else f"mean over {data.num_heads} heads (attention maps), all channels (context maps)")
    title_groups = [_wrap(segs, text_width, _TITLE) for segs in _title(data, head_label)]
    title = [ln for group in title_groups for ln in group]
    notes = [ln for note in data.notes for ln in _wrap([note], text_width, _FONT - 0.5)]
    lay = _Layout(n_blocks=n_blocks, n_rows=len(names), kernel_aspect=kernel_aspect, n_left=len(left_items),
                  per_panel=per_panel, n_notes=len(notes), n_title=len(title))
    fig = new_figure((lay.width, lay.height), dpi=dpi)
    canvas = _canvas(fig, lay)
    # one Text per title line, where one multi-line Text puts them: the first group (model, weights, stage,
    # heads) repeats over a folder and joins the static layer
    for i, (line, top) in enumerate(zip(title, _line_tops(fig, title, _TITLE), strict=True)):
        t = fig.text(0.5, 1.0 - (0.1 + top / 72) / lay.height, line, fontsize=_TITLE, ha="center", va="top")
        if i < len(title_groups[0]):
            mark_static(fig, [t])
    display = data.display
    size = (int(display.shape[0]), int(display.shape[1]))
    uv = data.point.uv if data.point is not None else None
    side_px = int(round(_PANEL * dpi))  # a panel's side on screen: shrink the backgrounds once, to that
    bg = background(display, gray=True, dim=0.9, max_side=side_px)
    colour = background(display, max_side=side_px)

    def panel(box: Box) -> Panel:
        p = Panel(canvas, size, box)
        p.frame()
        return p

    im: AxesImage | None = None
    # --- left column
    for r, item in enumerate(left_items):
        box = lay.left_panel(r)
        pan = panel(box)
        if item == "input":
            draw_input(pan, colour, size=size, gid="input")
            _panel_title(canvas, box, "input as the model saw it", _TITLE)
        elif item == "gradcam" and data.gradcam is not None:
            draw_input(pan, bg, size=size, gid="background/gradcam")
            im = draw_heatmap(pan, data.gradcam.heat, stride=1, cmap="jet", norm=shared_norm([data.gradcam.heat]),
                              alpha=0.5, interpolation="bilinear", gid="gradcam")
            _panel_title(canvas, box, f"Grad-CAM of class {data.gradcam.target}\n(layer{data.gradcam.stage}, "
                         "bilinear)", _FONT)
            _inset_colorbar(canvas, lay.under(box), im.get_cmap(), _norm(im), "ReLU(Σ_c α_c F_c), a.u.", "colorbar/gradcam")
        elif item == "rollout" and data.point is not None:
            draw_input(pan, bg, size=size, gid="background/rollout")
            im = draw_heatmap(pan, data.point.rollout, stride=data.point.rollout_stride, cmap="magma",
                              norm=shared_norm([data.point.rollout]), alpha=0.7, gid="rollout")
            _panel_title(canvas, box, f"local attention rollout from {_block_label(data.point.rollout_block)}\n"
                         f"(|A| per window, mean over heads)", _FONT)
            _inset_colorbar(canvas, lay.under(box), im.get_cmap(), _norm(im),
                            f"share of the point's input per {data.point.rollout_stride} px cell", "colorbar/rollout")
        if uv is not None:
            mark_point(pan, *uv)

    # --- map rows: per panel, the dimmed input and the heatmap over it (raster: composed, one image per row)
    greys: dict[tuple[tuple[int, int], float], np.ndarray] = {}

    def grey(box: PixelBox, dim: float) -> np.ndarray:
        shape = (box[3] - box[1], box[2] - box[0])
        if (shape, dim) not in greys:
            greys[shape, dim] = panel_background(display, shape, dim=dim)
        return greys[shape, dim]

    for r, name in enumerate(names):
        spec = MAPS[name]
        row = data.maps[name]
        cmap = colormaps[spec.cmap]
        norm = None if per_panel else shared_norm([row[b] for b in blocks if b in row])
        pixels = PanelRow([pixel_box(lay.block(r, c), dpi) for c in range(len(blocks))]) if raster and blocks else None
        for c, block in enumerate(blocks):
            box = lay.block(r, c)
            pbox = pixel_box(box, dpi)
            pan = panel(box)
            if r == 0:
                _panel_title(canvas, box, _block_label(block), _TITLE)
            if c == 0:
                _row_label(canvas, box, _wrap_label(spec.label))
            if block not in row:  # rare: a block without CoT
                if pixels is not None:
                    pixels.paint(pbox, grey(pbox, 0.5))
                else:
                    dark = background(display, gray=True, dim=0.5, max_side=side_px)
                    draw_input(pan, dark, size=size, gid=f"background/{name}/{block}")
                canvas.text(box[0] + box[2] / 2, box[1] + box[3] / 2, "no CoT layer", ha="center", va="center",
                            fontsize=_FONT, color="white")
                continue
            heat = np.asarray(row[block])
            block_norm = shared_norm([heat]) if norm is None else norm
            if pixels is not None:
                pixels.paint(pbox, grey(pbox, 0.9), heat, stride=data.strides[block], input_size=size, cmap=cmap,
                             norm=block_norm)
            else:
                draw_input(pan, bg, size=size, gid=f"background/{name}/{block}")
                draw_heatmap(pan, heat, stride=data.strides[block], cmap=cmap, norm=block_norm,
                             gid=f"map/{name}/{block}")
            if per_panel:
                _inset_colorbar(canvas, lay.under(box), cmap, block_norm, spec.units if c == 0 else None,
                                f"colorbar/{name}/{block}")
            if uv is not None:
                mark_point(pan, *uv, size=5)
        if pixels is not None:
            pixels.draw(canvas, dpi, gid=f"map/{name}")
        if norm is not None and any(b in row for b in blocks):
            _row_colorbar(canvas, lay.cbar(r), cmap, norm, spec.units, f"colorbar/{name}")

    # --- kernels at the point
    if data.point is not None and kernel_aspect is not None:
        r = len(names)
        kern = [np.asarray(data.point.kernels[b]) for b in blocks if b in data.point.kernels]
        norm = shared_norm(kern, symmetric=True) if not per_panel else None
        im = None
        for c, block in enumerate(blocks):
            if block not in data.point.kernels:
                continue
            box = lay.block(r, c)
            k = np.asarray(data.point.kernels[block])
            im = draw_kernels(Panel(canvas, size, box), k, norm=norm or shared_norm([k], symmetric=True),
                              gid=f"kernels/{block}")
            cell = data.point.cells[block]
            _panel_title(canvas, box, f"A at cell ({cell[0]}, {cell[1]})", _FONT, pad_pt=2.0)
            if c == 0:
                per_row = min(k.shape[0], mosaic_columns(k.shape[0]))
                _row_label(canvas, box, f"{k.shape[-1]}×{k.shape[-1]} kernels of\n{k.shape[0]} heads, {per_row}/row")
            if per_panel:
                _inset_colorbar(canvas, lay.under(box), im.get_cmap(), _norm(im), None, f"colorbar/kernels/{block}")
        if not per_panel and im is not None:
            _row_colorbar(canvas, lay.cbar(r), im.get_cmap(), _norm(im), "A (signed)", "colorbar/kernels")
    for i, note in enumerate(notes):
        mark_static(fig, [fig.text(lay.left_x / lay.width, 1.0 - (lay.notes_y + 0.16 * i) / lay.height, note,
                                   fontsize=_FONT - 0.5, color="0.3", ha="left", va="top")])
    return fig
