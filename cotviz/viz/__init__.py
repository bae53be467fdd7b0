"""Figures of CoT internals (object-oriented matplotlib: functions take ``ax=None`` and return the Figure).

* :mod:`cotviz.viz.overlay` -- heatmaps aligned over the pixels the model saw (``cell_extent``, ``draw_heatmap``),
  on a whole Axes or a :class:`Panel` of a shared canvas Axes
* :mod:`cotviz.viz.figures` -- the ``cotviz attention`` figure and its panels
"""

from __future__ import annotations

from cotviz.viz.figures import (
    AttentionFigureData,
    GradCamView,
    PointView,
    attention_figure,
    draw_kernels,
    kernel_mosaic,
    plot_kernels,
    plot_map,
    shared_norm,
)
from cotviz.viz.overlay import (
    Panel,
    as_panel,
    cell_extent,
    draw_heatmap,
    draw_input,
    mark_point,
    new_figure,
    original_extent,
)

__all__ = [
    "AttentionFigureData",
    "GradCamView",
    "Panel",
    "PointView",
    "as_panel",
    "attention_figure",
    "cell_extent",
    "draw_heatmap",
    "draw_input",
    "draw_kernels",
    "kernel_mosaic",
    "mark_point",
    "new_figure",
    "original_extent",
    "plot_kernels",
    "plot_map",
    "shared_norm",
]
