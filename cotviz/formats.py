"""The file formats cotviz writes, by name (no heavy imports: the CLI builds its choices from here).

* :class:`FigureFormat` -- figures: ``png``, ``svg``, ``pdf`` (:func:`cotviz.io.outputs.save_figure`)
"""

from __future__ import annotations

from enum import Enum

__all__ = ["FigureFormat"]


class FigureFormat(str, Enum):
    """Figure file formats."""

    png = "png"
    svg = "svg"
    pdf = "pdf"
