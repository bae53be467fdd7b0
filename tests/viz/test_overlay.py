"""Overlay geometry: extents, and where a hot cell lands in the rendered pixels (no transposes, no flips)."""

from __future__ import annotations

import numpy as np
import pytest

from cotviz.viz.figures import plot_map
from cotviz.viz.overlay import cell_extent, draw_heatmap, new_figure, original_extent


def _render(fig) -> np.ndarray:  # noqa: ANN001
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].astype(np.int32)  # (H_px, W_px, 3), row 0 = top


def test_cell_extent_and_original_extent() -> None:
    assert cell_extent((14, 14), 16) == (0.0, 224.0, 224.0, 0.0)
    assert cell_extent((7, 4), 8) == (0.0, 32.0, 56.0, 0.0)
    # model input 64 x 64 = box (38.75, 7, 151.5, 119.2) of the original
    ext = original_extent((0.0, 64.0, 64.0, 0.0), (38.75, 7.0, 151.5, 119.2), (64, 64))
    assert ext == pytest.approx((38.75, 151.5, 119.2, 7.0))
    # one cell (row 1, col 14) of a 16 x 16 map at stride 4 -> its original-pixel rectangle
    x0, x1, y1, y0 = original_extent((56.0, 60.0, 8.0, 4.0), (38.75, 7.0, 151.5, 119.2), (64, 64))
    assert (x0, x1) == pytest.approx((38.75 + 56 * 112.75 / 64, 38.75 + 60 * 112.75 / 64))
    assert (y0, y1) == pytest.approx((7.0 + 4 * 112.2 / 64, 7.0 + 8 * 112.2 / 64))


@pytest.mark.parametrize("cell", [(1, 14), (12, 2)])
def test_hot_cell_is_drawn_over_its_pixels(cell: tuple[int, int]) -> None:
    """A one-hot (16, 16) map at stride 4 over a black 64 x 64 input: the bright square sits at cell (i, j)."""
    heat = np.zeros((16, 16))
    heat[cell] = 1.0
    display = np.zeros((64, 64, 3), dtype=np.uint8)
    fig = plot_map(heat, display, stride=4, colorbar=False, alpha=1.0, cmap="gray")
    ax = fig.axes[0]
    assert ax.images[-1].get_extent() == [0.0, 64.0, 64.0, 0.0]
    px = _render(fig)
    bbox = ax.get_window_extent()  # display pixels, origin bottom-left
    height = px.shape[0]
    rows = slice(int(np.ceil(height - bbox.y1)), int(height - bbox.y0))  # the axes' pixel rows (top first)
    cols = slice(int(np.ceil(bbox.x0)), int(bbox.x1))
    inside = np.zeros(px.shape[:2], dtype=bool)
    inside[rows, cols] = True
    ys, xs = np.nonzero(inside & (px.sum(axis=2) > 600))  # the white cell inside the axes
    # back to model-input coordinates: u = (x - x0) / width * 64, v = (top - y) / height * 64
    u = (xs + 0.5 - bbox.x0) / bbox.width * 64
    v = ((height - (ys + 0.5)) - bbox.y1) / -bbox.height * 64
    i, j = cell
    assert u.min() >= j * 4 - 0.5 and u.max() <= (j + 1) * 4 + 0.5
    assert v.min() >= i * 4 - 0.5 and v.max() <= (i + 1) * 4 + 0.5
    assert len(xs) > 0.5 * (4 * bbox.width / 64) ** 2  # the whole cell, not a speck


def test_draw_heatmap_rejects_non_2d_and_clips_partial_cells() -> None:
    fig = new_figure()
    ax = fig.add_subplot()
    with pytest.raises(ValueError, match="2-D"):
        draw_heatmap(ax, np.zeros((2, 2, 2)), stride=4)
    im = draw_heatmap(ax, np.zeros((7, 7)), stride=16, input_size=(100, 100))  # 7 x 16 = 112 > 100
    assert im.get_extent() == [0.0, 112.0, 112.0, 0.0]
    assert ax.get_xlim() == (0.0, 100.0) and ax.get_ylim() == (100.0, 0.0)
