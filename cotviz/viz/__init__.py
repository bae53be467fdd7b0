"""Figures of CoT internals (object-oriented matplotlib: functions take ``ax=None`` and return the Figure).

* :mod:`cotviz.viz.overlay` -- heatmaps aligned over the pixels the model saw (``cell_extent``, ``draw_heatmap``)
* :mod:`cotviz.viz.figures` -- the ``cotviz attention`` figure and its panels
"""

from __future__ import annotations

from cotviz.viz.figures import (
    AttentionFigureData,
    GradCamView,
    PointView,
    attention_figure,
    kernel_mosaic,
    plot_kernels,
    plot_map,
    shared_norm,
)
from cotviz.viz.overlay import cell_extent, draw_heatmap, draw_input, mark_point, new_figure, original_extent

__all__ = [
    "AttentionFigureData",
    "GradCamView",
    "PointView",
    "attention_figure",
    "cell_extent",
    "draw_heatmap",
    "draw_input",
    "kernel_mosaic",
    "mark_point",
    "new_figure",
    "original_extent",
    "plot_kernels",
    "plot_map",
    "shared_norm",
]
