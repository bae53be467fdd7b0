"""The attention figure: panels, shared vs per-panel colour scales, titles, and no overlapping text."""

from __future__ import annotations

import io
import re
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest
from matplotlib.figure import Figure
from matplotlib.image import AxesImage
from matplotlib.text import Text

from cotviz.analysis.maps import MAPS
from cotviz.viz import (
    AttentionFigureData,
    GradCamView,
    PointView,
    attention_figure,
    kernel_mosaic,
    plot_kernels,
)
from cotviz.viz.figures import shared_norm

BLOCKS = ["stage3.block1", "stage3.block2", "stage3.block3"]


def make_data(*, point: bool = False, gradcam: bool = False, notes: tuple[str, ...] = ()) -> AttentionFigureData:
    rng = np.random.default_rng(0)
    maps = {
        "attention_entropy": {b: rng.uniform(0.5 + i, 2.0 + i, (4, 4)) for i, b in enumerate(BLOCKS)},
        "static_energy": {b: rng.uniform(0, 10 * (i + 1), (4, 4)) for i, b in enumerate(BLOCKS)},
    }
    pv = None
    if point:
        pv = PointView(xy=(10, 20), uv=(30.5, 12.5), cells={b: (0, 1) for b in BLOCKS},
                       kernels={b: rng.normal(size=(16, 3, 3)) for b in BLOCKS}, rollout=rng.uniform(size=(8, 8)),
                       rollout_stride=8, rollout_block=BLOCKS[-1])
    gc = GradCamView(rng.uniform(size=(64, 64)), target=7, stage=3) if gradcam else None
    return AttentionFigureData(display=rng.integers(0, 255, (64, 64, 3), dtype=np.uint8), maps=maps,
                               strides={b: 16 for b in BLOCKS}, blocks=BLOCKS, model="cotnet50",
                               weights="random init (untrained)", stage=3, head=None, num_heads=16,
                               source="photo.jpg", crop_box=(10.0, 0.0, 74.0, 64.0), original_size=(84, 64),
                               gradcam=gc, point=pv, notes=notes)


def texts(fig: Figure) -> list[Text]:
    """Every text that is drawn: figure texts, titles, axis labels, offsets and the tick labels in view."""
    found: list[Text] = list(fig.texts)
    for ax in fig.axes:
        found += [ax.title, ax.xaxis.label, ax.yaxis.label, ax.xaxis.offsetText, ax.yaxis.offsetText, *ax.texts]
        for axis in (ax.xaxis, ax.yaxis):
            lo, hi = sorted(axis.get_view_interval())
            eps = 1e-9 * (hi - lo)
            for loc, tick in zip(axis.get_majorticklocs(), axis.get_major_ticks(), strict=False):
                if lo - eps <= loc <= hi + eps:
                    found += [tick.label1, tick.label2]
    return [t for t in found if t.get_visible() and t.get_text().strip()]


def images(fig: Figure, prefix: str) -> dict[str, AxesImage]:
    """The figure's images whose gid starts with ``prefix``, by gid."""
    return {im.get_gid(): im for ax in fig.axes for im in ax.images if (im.get_gid() or "").startswith(prefix)}


def overlapping(fig: Figure) -> list[tuple[str, str]]:
    renderer = fig.canvas.get_renderer()
    boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in texts(fig)]
    return [(a, b) for (a, ba), (b, bb) in combinations(boxes, 2)
            if ba.width > 0 and bb.width > 0 and ba.shrunk(0.98, 0.9).overlaps(bb.shrunk(0.98, 0.9))]


def test_shared_scale_one_colour_bar_per_row() -> None:
    data = make_data()
    fig = attention_figure(data)
    fig.canvas.draw()
    heat = images(fig, "map/")
    assert sorted(heat) == sorted(f"map/{n}/{b}" for n in data.maps for b in BLOCKS)
    assert len(images(fig, "background/")) == len(heat) and "input" in images(fig, "input")
    assert len({im.axes for im in heat.values()}) == 1  # every panel on the one canvas Axes
    for name in data.maps:
        norms = {(heat[f"map/{name}/{b}"].norm.vmin, heat[f"map/{name}/{b}"].norm.vmax) for b in BLOCKS}
        assert len(norms) == 1  # shared across the blocks of one map
        lo = min(float(m.min()) for m in data.maps[name].values())
        hi = max(float(m.max()) for m in data.maps[name].values())
        assert norms.pop() == pytest.approx((lo, hi))
    assert sorted(images(fig, "colorbar/")) == sorted(f"colorbar/{n}" for n in data.maps)  # one bar per row
    assert len(fig.axes) == 1  # the colour bars are drawn on the canvas, not in Axes of their own
    canvas_texts = [t.get_text() for t in fig.axes[0].texts]
    assert all(MAPS[n].units in canvas_texts for n in data.maps)
    labels = [t.get_text() for t in texts(fig)]
    assert any("nats" in t for t in labels) and any("RMS over channels of K1" in t for t in labels)
    title = " ".join(t.get_text() for t in fig.texts)  # one Text per title line
    assert "cotnet50" in title and "stage 3" in title and "random init" in title and "mean over 16 heads" in title
    assert {"block 1", "block 2", "block 3"} <= set(labels)
    assert not overlapping(fig)


def test_per_panel_scale_and_every_extra_panel_without_overlaps() -> None:
    fig = attention_figure(make_data(point=True, gradcam=True, notes=("untrained weights",)), scale="per-panel")
    fig.canvas.draw()
    heat = images(fig, "map/")
    ranges = {(im.norm.vmin, im.norm.vmax) for im in heat.values()}
    assert len(ranges) == len(heat) == 2 * len(BLOCKS)  # every panel has its own scale
    assert {"gradcam", "rollout"} <= set(images(fig, "")) and len(images(fig, "kernels/")) == len(BLOCKS)
    labels = " | ".join(t.get_text() for t in texts(fig))
    for expected in ("Grad-CAM of class 7", "local attention rollout", "A at cell (0, 1)", "untrained weights",
                     "point (10, 20)"):
        assert expected in labels
    assert not overlapping(fig)
    with pytest.raises(ValueError, match="scale"):
        attention_figure(make_data(), scale="global")  # type: ignore[arg-type]


@pytest.mark.parametrize("cell", [(0, 3), (3, 0), (2, 1)])
def test_hot_cell_lands_on_its_pixels_in_every_panel(cell: tuple[int, int]) -> None:
    """One-hot (4, 4) maps at stride 16 over a black 64 x 64 input: in each block's panel of the rendered
    figure the bright square sits over cell (i, j) -- no transposes, flips or offsets between panels."""
    i, j = cell
    one_hot = np.zeros((4, 4))
    one_hot[i, j] = 1.0
    dim = {b: one_hot * (k + 1) for k, b in enumerate(BLOCKS)}  # shared scale: only the last block is full
    data = AttentionFigureData(display=np.zeros((64, 64, 3), dtype=np.uint8), maps={"static_energy": dim},
                               strides={b: 16 for b in BLOCKS}, blocks=BLOCKS, model="m", weights="w", stage=3,
                               head=None, num_heads=1)
    fig = attention_figure(data, scale="per-panel", dpi=100)
    fig.canvas.draw()
    px = np.asarray(fig.canvas.buffer_rgba())[..., :3].astype(np.int32)  # row 0 = top
    for b in BLOCKS:
        im = images(fig, f"map/static_energy/{b}")[f"map/static_energy/{b}"]
        # the panel: model input (0, 0) and (64, 64) through the image's transform to display pixels
        (x0, y0), (x1, y1) = im.get_transform().transform([(0, 0), (64, 64)])
        top, bottom = px.shape[0] - y0, px.shape[0] - y1  # display y is bottom-up
        inside = np.zeros(px.shape[:2], dtype=bool)
        inside[int(np.ceil(top)) + 1:int(bottom) - 1, int(np.ceil(x0)) + 1:int(x1) - 1] = True  # skip the frame
        ys, xs = np.nonzero(inside & (px.sum(axis=2) > 300))  # the hot cell (inferno's bright end)
        u = (xs + 0.5 - x0) / (x1 - x0) * 64
        v = (ys + 0.5 - top) / (bottom - top) * 64
        assert len(xs) > 0.5 * ((x1 - x0) / 4) ** 2, b  # the whole cell, not a speck
        assert u.min() >= j * 16 - 1 and u.max() <= (j + 1) * 16 + 1, b
        assert v.min() >= i * 16 - 1 and v.max() <= (i + 1) * 16 + 1, b


def test_shared_figure_with_point_and_gradcam_has_no_overlaps() -> None:
    fig = attention_figure(make_data(point=True, gradcam=True, notes=("a note",)))
    fig.canvas.draw()
    assert not overlapping(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    assert buf.getvalue()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("scale", ["shared", "per-panel"])
def test_notes_clear_the_colour_bars_under_the_last_row(scale: str) -> None:
    """Per panel, the kernel row has colour bars under it like every other row; the notes go below them."""
    note = "a note as wide as the figure, " + "running under every column " * 6
    fig = attention_figure(make_data(point=True, notes=(note,)), scale=scale)  # type: ignore[arg-type]
    fig.canvas.draw()
    assert not overlapping(fig)


def test_kernel_mosaic_places_head_h_row_major() -> None:
    k = np.arange(10 * 9, dtype=float).reshape(10, 3, 3)
    assert kernel_mosaic(np.zeros((32, 3, 3))).shape == (4 * 4 - 1, 8 * 4 - 1)  # 8 per row for 32 heads
    mos = kernel_mosaic(k, per_row=4)
    assert mos.shape == (3 * 4 - 1, 4 * 4 - 1)
    np.testing.assert_array_equal(mos[0:3, 4:7], k[1])  # head 1: row 0, column 1
    np.testing.assert_array_equal(mos[4:7, 0:3], k[4])  # head 4: row 1, column 0
    assert np.isnan(mos[3]).all() and np.isnan(mos[:, 3]).all()  # gaps
    fig = plot_kernels(k)
    assert fig.axes[0].images[0].norm.vmin == -fig.axes[0].images[0].norm.vmax  # symmetric around 0


def test_shared_norm_handles_constant_maps() -> None:
    n = shared_norm([np.full((2, 2), 3.0)])
    assert n.vmin < 3.0 < n.vmax


@pytest.mark.parametrize("n_blocks", [1, 3])
def test_every_text_stays_inside_a_narrow_figure(n_blocks: int) -> None:
    """Long titles and notes are wrapped to the figure width instead of running off the page."""
    data = make_data(point=True, notes=("Untrained network, random weights (seed 0; zero_init_last_bn=False with "
                                        "every block's last BN weight set to 0.25; BatchNorm statistics calibrated "
                                        "on seeded noise). Pass --weights for meaningful maps.",))
    maps = {n: {b: m for b, m in row.items() if b in BLOCKS[:n_blocks]} for n, row in data.maps.items()}
    narrow = AttentionFigureData(**{**data.__dict__, "maps": maps, "blocks": BLOCKS[:n_blocks]})
    fig = attention_figure(narrow)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    page = fig.bbox
    for t in texts(fig):
        box = t.get_window_extent(renderer)
        assert box.x0 >= page.x0 - 1 and box.x1 <= page.x1 + 1 and box.y0 >= page.y0 - 1 and box.y1 <= page.y1 + 1, \
            t.get_text()
    assert not overlapping(fig)


def test_svg_keeps_every_image_as_its_own_element_with_its_gid(tmp_path: Path) -> None:
    """Images are not merged into one raster in vector output: each panel's heatmap and background stay
    separate, addressable elements (e.g. to restyle one layer in a vector editor)."""
    from cotviz.io.outputs import save_figure

    data = make_data(point=True)
    path = tmp_path / "fig.svg"
    save_figure(attention_figure(data), path, "svg")
    svg = path.read_text()
    for name in data.maps:
        for b in BLOCKS:
            assert f'id="map/{name}/{b}"' in svg and f'id="background/{name}/{b}"' in svg
    assert 'id="input"' in svg and 'id="rollout"' in svg and f'id="kernels/{BLOCKS[0]}"' in svg
    ids = re.findall(r'<image [^>]*?id="((?:map|background|input|rollout|kernels)[^"]*)"', svg)
    assert len(ids) == len(set(ids)) == 2 * len(data.maps) * len(BLOCKS) + 1 + 2 + len(BLOCKS)
