"""Raster map rows: exact compositing on hand-set panels, pixel-for-pixel placement, the vector figure's picture."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from matplotlib.colors import ListedColormap, Normalize

from cotviz.io.outputs import save_figure
from cotviz.viz import AttentionFigureData, attention_figure
from cotviz.viz.raster import DeviceImage, PanelRow, panel_background, pixel_box
from cotviz.viz.render import render_rgba

from .test_figures import BLOCKS, images, make_data

RED_BLUE = ListedColormap(["#ff0000", "#0000ff"])


def test_pixel_box_rounds_each_edge_to_a_device_pixel() -> None:
    assert pixel_box((2.37, 0.68, 1.5, 1.5), 100) == (237, 68, 387, 218)
    assert pixel_box((1.0, 1.0, 1.5, 1.5), 75) == (75, 75, 188, 188)  # 187.5 -> 188: edges, not sizes, are rounded


def test_paint_blends_each_cell_over_the_grey_in_bytes() -> None:
    """Grey 0.4 under a red | blue map at alpha 0.5: 0.5 * 255 + 0.5 * 0.4 * 255 = 178.5 -> 179 (half up) where
    the colour is, 0.4 * 255 * 0.5 = 51 where it is not; a NaN cell leaves the grey (102); gaps stay transparent."""
    row = PanelRow([(0, 0, 8, 4), (10, 0, 18, 4)])
    grey = np.full((4, 8), 0.4, dtype=np.float32)
    row.paint((0, 0, 8, 4), grey, np.array([[0.0, 1.0]]), stride=2, input_size=(2, 4), cmap=RED_BLUE,
              norm=Normalize(0, 1), alpha=0.5)
    row.paint((10, 0, 18, 4), grey, np.array([[np.nan, 1.0]]), stride=2, input_size=(2, 4), cmap=RED_BLUE,
              norm=Normalize(0, 1), alpha=0.5)
    px = row.pixels
    assert px.shape == (4, 18, 4)
    np.testing.assert_array_equal(px[:, 0:4], np.broadcast_to([179, 51, 51, 255], (4, 4, 4)))  # cell 0: red
    np.testing.assert_array_equal(px[:, 4:8], np.broadcast_to([51, 51, 179, 255], (4, 4, 4)))  # cell 1: blue
    np.testing.assert_array_equal(px[:, 8:10], 0)  # between the panels: transparent
    np.testing.assert_array_equal(px[:, 10:14], np.broadcast_to([102, 102, 102, 255], (4, 4, 4)))  # NaN: grey
    np.testing.assert_array_equal(px[:, 14:18], np.broadcast_to([51, 51, 179, 255], (4, 4, 4)))


def test_each_pixel_shows_the_cell_under_its_centre() -> None:
    """3 pixels across 4 input pixels of stride-2 cells: centres at 0.67, 2.0, 3.33 -> cells 0, 1, 1; a partial last
    cell (5 input pixels, stride 2, 3 cells) is clipped at the input border, as in the network."""
    row = PanelRow([(0, 0, 3, 1)])
    row.paint((0, 0, 3, 1), np.zeros((1, 3), np.float32), np.array([[0.0, 1.0]]), stride=2, input_size=(1, 4),
              cmap=RED_BLUE, norm=Normalize(0, 1), alpha=1.0)
    assert [tuple(p[:3]) for p in row.pixels[0]] == [(255, 0, 0), (0, 0, 255), (0, 0, 255)]
    row = PanelRow([(0, 0, 5, 1)])
    heat = np.array([[0.0, 1.0, 0.0]])
    row.paint((0, 0, 5, 1), np.zeros((1, 5), np.float32), heat, stride=2, input_size=(1, 5), cmap=RED_BLUE,
              norm=Normalize(0, 1), alpha=1.0)
    assert [int(p[2] == 255) for p in row.pixels[0]] == [0, 0, 1, 1, 0]  # input pixels 0-1, 2-3, 4


def test_grey_only_panel_and_refused_inputs() -> None:
    row = PanelRow([(0, 0, 2, 2)])
    row.paint((0, 0, 2, 2), np.array([[0.0, 1.0], [0.5, 0.25]], np.float32))
    np.testing.assert_array_equal(row.pixels[..., 0], [[0, 255], [128, 64]])  # 127.5 -> 128, 63.75 -> 64
    assert (row.pixels[..., 0] == row.pixels[..., 2]).all() and (row.pixels[..., 3] == 255).all()
    with pytest.raises(ValueError, match="background"):
        row.paint((0, 0, 2, 2), np.zeros((3, 3), np.float32))
    with pytest.raises(ValueError, match="colour map"):
        row.paint((0, 0, 2, 2), np.zeros((2, 2), np.float32), np.zeros((1, 1)))
    with pytest.raises(ValueError, match="at least one"):
        PanelRow([])


def test_panel_background_box_filters_down_and_repeats_up() -> None:
    """Luma of pure green (0.587) dimmed by 0.9 -> 0.5283, on the gray colour map's 256 levels: floor(135.2) = 135."""
    green = np.zeros((4, 4, 3), np.uint8)
    green[..., 1] = 255
    np.testing.assert_array_equal(panel_background(green, (2, 2), dim=0.9), np.full((2, 2), 135 / 255, np.float32))
    checker = np.zeros((2, 2, 3), np.uint8)
    checker[0, 0] = checker[1, 1] = 255
    up = panel_background(checker, (4, 4), dim=1.0)
    np.testing.assert_array_equal(up, np.kron([[1.0, 0.0], [0.0, 1.0]], np.ones((2, 2))).astype(np.float32))
    half = panel_background(np.kron(checker, np.ones((2, 2, 1), np.uint8)), (2, 2), dim=1.0)  # 4x4 -> 2x2: box
    np.testing.assert_array_equal(half, up[::2, ::2])


def at_224(data: AttentionFigureData, *, one_hot: bool = False) -> AttentionFigureData:
    """``data`` at the CLI's geometry: a 224 px input under 14 x 14 maps of stride 16 (cell edges never fall on a
    pixel centre of a 150 px panel, where two nearest-neighbour rules may pick different sides of a tie)."""
    rng = np.random.default_rng(1)
    if one_hot:
        hot = np.zeros((14, 14))
        hot[3, 9] = 1.0
        maps = {"static_energy": {b: hot * (k + 1) for k, b in enumerate(BLOCKS)}}
        display = np.zeros((224, 224, 3), np.uint8)
    else:
        maps = {n: {b: rng.uniform(k, 2 * k + 1, (14, 14)) for k, b in enumerate(row)} for n, row in data.maps.items()}
        display = rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)
    return replace(data, display=display, maps=maps, strides={b: 16 for b in BLOCKS})


@pytest.mark.parametrize(("scale", "case"), [("shared", "random"), ("per-panel", "extras"), ("shared", "one-hot"),
                                             ("per-panel", "missing block")])
def test_raster_rows_draw_the_picture_of_the_vector_figure(scale: str, case: str) -> None:
    """Composed in numpy or drawn by matplotlib image by image, the figure is the same picture: no pixel off by
    more than 3 levels (the two blends round differently), so every cell sits in the same place in every panel."""
    data = at_224(make_data(point=case == "extras", gradcam=case == "extras", notes=("a note",)),
                  one_hot=case == "one-hot")
    if case == "missing block":
        data = replace(data, maps={n: {b: m for b, m in row.items() if b != BLOCKS[1]} for n, row in data.maps.items()})
    vector = attention_figure(data, scale=scale)  # type: ignore[arg-type]
    raster = attention_figure(data, scale=scale, raster=True)  # type: ignore[arg-type]
    assert sorted(images(raster, "map/")) == sorted(f"map/{n}" for n in data.maps)  # one image per row
    assert not [g for g in images(raster, "background/") if g.count("/") == 2]  # no map panel's own background
    a = np.array(render_rgba(vector)).astype(np.int16)
    b = np.array(render_rgba(raster)).astype(np.int16)
    diff = np.abs(a - b).max(axis=2)
    assert diff.max() <= 3 and diff.mean() < 1.0
    if case == "one-hot":  # the hot cell is bright in the last panel, in both
        assert (a.sum(axis=2) > 600).sum() == (b.sum(axis=2) > 600).sum() > 50


@pytest.mark.parametrize("dpi", [100, 75])
def test_every_row_pixel_lands_on_one_device_pixel(dpi: int) -> None:
    """The row image is copied, not resampled: inside each panel (away from its frame) the canvas holds exactly
    the composed bytes, also at a dpi where the panel edges fall between pixels."""
    fig = attention_figure(make_data(), raster=True, dpi=dpi)
    canvas = np.array(render_rgba(fig))
    for im in images(fig, "map/").values():
        px = np.asarray(im.get_array())
        left, right, bottom, top = im.get_extent()
        x0, y0 = round(left * dpi), round(top * dpi)
        assert (round(right * dpi) - x0, round(bottom * dpi) - y0) == px.shape[1::-1]
        region = canvas[y0:y0 + px.shape[0], x0:x0 + px.shape[1]]
        inside = px[..., 3] == 255
        inside &= np.roll(inside, 3, 0) & np.roll(inside, -3, 0) & np.roll(inside, 3, 1) & np.roll(inside, -3, 1)
        inside[:3] = inside[-3:] = False
        inside[:, :3] = inside[:, -3:] = False
        assert inside.sum() > 0.6 * (px[..., 3] == 255).sum()  # most of every panel is compared
        np.testing.assert_array_equal(region[inside], px[inside])


def test_rows_are_drawn_as_they_are_at_their_dpi_and_resampled_elsewhere(monkeypatch: pytest.MonkeyPatch,
                                                                         tmp_path: Path) -> None:
    """At the dpi the rows were composed for, no resampling runs for them; at another dpi, or in SVG, they are
    resampled like any image and still show the same picture."""
    data = at_224(make_data())
    fig = attention_figure(data, raster=True, dpi=100)
    rows = list(images(fig, "map/").values())
    assert rows and all(isinstance(im, DeviceImage) for im in rows)

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("resampled")

    monkeypatch.setattr(DeviceImage, "_make_image", refuse)
    at_100 = np.array(render_rgba(fig))
    fig.set_dpi(150)
    with pytest.raises(AssertionError, match="resampled"):
        render_rgba(fig)
    monkeypatch.undo()
    at_150 = np.array(render_rgba(fig))
    left, _, _, top = rows[0].get_extent()

    def first_panel_centre(px: np.ndarray, dpi: int) -> np.ndarray:
        """Mean RGB of the middle square inch of the row's first panel (1.5 in wide)."""
        cx, cy = int((left + 0.75) * dpi), int((top + 0.75) * dpi)
        return px[cy - dpi // 2:cy + dpi // 2, cx - dpi // 2:cx + dpi // 2, :3].astype(np.float64).mean(axis=(0, 1))

    assert np.abs(first_panel_centre(at_150, 150) - first_panel_centre(at_100, 100)).max() < 4.0
    save_figure(attention_figure(data, raster=True), tmp_path / "fig.svg", "svg")
    svg = (tmp_path / "fig.svg").read_text()
    assert all(f'id="map/{n}"' in svg for n in data.maps)
