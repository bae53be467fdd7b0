"""canvas_colorbar: matplotlib's tick choice and labels, drawn on a canvas Axes without an Axes of its own."""

from __future__ import annotations

import matplotlib
import numpy as np
import pytest
from matplotlib.colors import Normalize, TwoSlopeNorm

from cotviz.viz.colorbar import canvas_colorbar
from cotviz.viz.overlay import new_figure

CMAP = matplotlib.colormaps["viridis"]


def canvas(width: float = 3.0, height: float = 3.0):  # type: ignore[no-untyped-def]
    fig = new_figure((width, height), dpi=100)
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0))
    ax.set_xlim(0.0, width)
    ax.set_ylim(height, 0.0)
    ax.set_axis_off()
    return fig, ax


def matplotlib_ticks(norm: Normalize, height: float, fontsize: float) -> tuple[list[float], list[str], str]:
    """What a real vertical matplotlib Colorbar of that length and tick font shows."""
    fig = new_figure((3.0, 3.0), dpi=100)
    cax = fig.add_axes((0.4, 0.1, 0.04, height / 3.0))
    im = fig.add_axes((0.0, 0.0, 0.1, 0.1)).imshow(np.zeros((2, 2)), norm=norm, cmap=CMAP)
    cb = fig.colorbar(im, cax=cax)
    cb.ax.tick_params(labelsize=fontsize)
    fig.canvas.draw()
    lo, hi = float(norm.vmin), float(norm.vmax)  # type: ignore[arg-type]
    ticks = [float(t) for t in cb.get_ticks() if lo - 1e-12 <= t <= hi + 1e-12]
    labels = [t.get_text() for t in cb.ax.get_yticklabels()
              if lo - 1e-12 <= t.get_position()[1] <= hi + 1e-12 and t.get_text()]
    return ticks, labels, cb.ax.yaxis.get_offset_text().get_text()


@pytest.mark.parametrize(("vmin", "vmax"), [(0.0, 1.0), (1.02, 2.07), (-3.3, 0.4), (1e-4, 7.5e-4), (100000.0, 100003.0)])
def test_vertical_ticks_and_labels_are_matplotlibs(vmin: float, vmax: float) -> None:
    fig, ax = canvas()
    norm = Normalize(vmin, vmax)
    bar = canvas_colorbar(ax, (1.0, 0.5, 0.12, 1.5), CMAP, norm, label="units", fontsize=7.0)
    ticks, labels, offset = matplotlib_ticks(norm, 1.5, 7.0)
    assert bar.ticks == pytest.approx(ticks)
    assert list(bar.labels) == labels
    assert bar.offset == offset
    texts = [t.get_text() for t in ax.texts]
    assert all(s in texts for s in labels) and "units" in texts and (not offset or offset in texts)


def test_ramp_and_tick_positions_follow_the_norm() -> None:
    fig, ax = canvas()
    norm = TwoSlopeNorm(vcenter=0.0, vmin=-1.0, vmax=3.0)  # the centre is in the middle of the bar
    bar = canvas_colorbar(ax, (1.0, 0.5, 0.12, 2.0), CMAP, norm, label="A", gid="colorbar/x")
    ramp = np.asarray(bar.ramp.get_array())
    np.testing.assert_allclose(ramp[0, 0], CMAP(1.0))  # vmax at the top (y grows downwards)
    np.testing.assert_allclose(ramp[-1, 0], CMAP(0.0))
    assert bar.ramp.get_gid() == "colorbar/x" and bar.ramp.get_alpha() is None  # opaque
    (segments,) = [c.get_segments() for c in ax.collections]
    ys = {float(t): float(s[0][1]) for t, s in zip(bar.ticks, segments, strict=True)}
    assert ys[0.0] == pytest.approx(0.5 + 1.0)  # value 0 at the middle
    assert ys[3.0] == pytest.approx(0.5) and ys[-1.0] == pytest.approx(2.5)


def test_horizontal_bar_label_and_offset_sit_under_the_ticks_without_overlap() -> None:
    fig, ax = canvas(3.0, 1.0)
    bar = canvas_colorbar(ax, (0.3, 0.2, 2.0, 0.08), CMAP, Normalize(100000.0, 100004.0), orientation="horizontal",
                          label="share of the input", fontsize=6.0, nbins=3, tick_length=2.0, pad=1.0, labelpad=1.0)
    assert 2 <= len(bar.ticks) <= 4 and bar.offset
    renderer = fig.canvas.get_renderer()
    boxes = {t.get_text(): t.get_window_extent(renderer) for t in ax.texts}
    label_box = boxes["share of the input"]
    assert all(not label_box.overlaps(b) for s, b in boxes.items() if s != "share of the input")
    assert boxes[bar.offset].y0 > label_box.y1  # the offset line is above the label (display y grows upwards)
