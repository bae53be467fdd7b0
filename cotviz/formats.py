"""The file formats cotviz writes, by name (no heavy imports: the CLI builds its choices from here).

* :class:`FigureFormat` -- figures: ``png``, ``svg``, ``pdf`` (:func:`cotviz.io.outputs.save_figure`)
* :class:`ReportFormat` -- tables of numbers (``compare``, ``sanity``): a rich ``table`` on the terminal, ``json``,
  tidy ``csv``, paper-ready ``markdown``
"""

from __future__ import annotations

from enum import Enum

__all__ = ["FigureFormat", "ReportFormat"]


class FigureFormat(str, Enum):
    """Figure file formats."""

    png = "png"
    svg = "svg"
    pdf = "pdf"


class ReportFormat(str, Enum):
    """Report formats of the commands that print tables."""

    table = "table"
    json = "json"
    csv = "csv"
    markdown = "markdown"
