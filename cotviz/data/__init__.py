"""Synthetic data with exact ground truth: :class:`ShapesDataset` (shapes on clutter, pixel-exact masks).

``python -m cotviz.data.train`` trains the shipped demo models on it.
"""

from __future__ import annotations

from cotviz.data.shapes import CLASS_NAMES, MIN_CONTRAST, ShapeSample, ShapesDataset, render

__all__ = ["CLASS_NAMES", "MIN_CONTRAST", "ShapeSample", "ShapesDataset", "render"]
