"""The ``cotviz compare --image`` figure: one row per operator, the same maps in the same columns and colour scales.

Object-oriented matplotlib only (no pyplot). Operators without a local attention (``conv``, ``static``) get a row
that says so instead of being dropped silently.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from cotviz.analysis.catalog import MAP_INFO
from cotviz.viz.figures import shared_norm
from cotviz.viz.overlay import draw_heatmap, draw_input, new_figure

__all__ = ["OperatorMaps", "comparison_figure"]

_PANEL = 1.6  # inches per panel side
_FONT = 7.0


@dataclass(frozen=True)
class OperatorMaps:
    """One row: ``label`` (the operator spec), ``maps`` map name -> (h, w) (None: the operator has no attention),
    ``stride`` model-input pixels per cell, ``note`` why a map or the row is missing."""

    label: str
    maps: Mapping[str, np.ndarray] | None
    stride: int = 1
    note: str = ""
    missing: Sequence[str] = field(default_factory=tuple)


def comparison_figure(display: np.ndarray, rows: Sequence[OperatorMaps], maps: Sequence[str], *, title: str,
                      notes: Sequence[str] = (), dpi: float = 100) -> Figure:
    """Rows = operators, columns = ``maps`` over the (S, S, 3) model input; one colour scale per map column
    (shared by every operator), colour bars in the maps' units."""
    n_rows, n_cols = len(rows), len(maps) + 1
    width = n_cols * _PANEL + 0.6
    wrapped = [line for note in notes for line in textwrap.wrap(note, int(width * 17))]  # ~17 chars per inch at 6.5 pt
    extra = 0.75 + 0.13 * len(wrapped)
    fig = new_figure((width, n_rows * _PANEL + extra + 0.6), dpi=dpi)
    norms = {}
    for name in maps:
        arrays = [r.maps[name] for r in rows if r.maps is not None and name in r.maps]
        norms[name] = shared_norm(arrays) if arrays else None
    grid = fig.add_gridspec(n_rows + 1, n_cols, height_ratios=[1.0] * n_rows + [0.08], left=0.02, right=0.98,
                            top=1 - 0.6 / fig.get_figheight(), bottom=extra / fig.get_figheight(), hspace=0.25,
                            wspace=0.08)
    images: dict[str, Any] = {}
    for i, row in enumerate(rows):
        ax = fig.add_subplot(grid[i, 0])
        draw_input(ax, display)
        ax.set_axis_off()
        ax.text(-0.04, 0.5, row.label, transform=ax.transAxes, rotation=90, ha="right", va="center",
                fontsize=_FONT + 1, family="monospace")
        for j, name in enumerate(maps, start=1):
            ax = fig.add_subplot(grid[i, j])
            ax.set_axis_off()
            if i == 0:
                ax.set_title(textwrap.fill(MAP_INFO[name].label, 24), fontsize=_FONT)
            if row.maps is None or name not in row.maps:
                draw_input(ax, display, gray=True, dim=0.35)
                reason = row.note if row.maps is None else f"no {name} for this operator"
                ax.text(0.5, 0.5, textwrap.fill(reason, 18), transform=ax.transAxes, ha="center", va="center",
                        fontsize=_FONT, color="white", bbox={"facecolor": "black", "alpha": 0.6, "pad": 2})
                continue
            draw_input(ax, display, gray=True, dim=0.9)
            im = draw_heatmap(ax, row.maps[name], stride=row.stride, cmap=MAP_INFO[name].cmap, norm=norms[name],
                              alpha=0.65, input_size=display.shape[:2])
            images.setdefault(name, im)
    for j, name in enumerate(maps, start=1):
        if name in images:
            cax = fig.add_subplot(grid[n_rows, j])
            cb = fig.colorbar(images[name], cax=cax, orientation="horizontal")
            cb.set_label(textwrap.fill(MAP_INFO[name].units, 26), fontsize=_FONT - 1)
            cb.ax.tick_params(labelsize=_FONT - 1)
    fig.suptitle(title, fontsize=_FONT + 2, y=1 - 0.12 / fig.get_figheight(), va="top")
    for k, note in enumerate(wrapped):
        fig.text(0.02, (extra - 0.55 - 0.13 * k) / fig.get_figheight(), note, fontsize=_FONT - 0.5, va="top")
    return fig
