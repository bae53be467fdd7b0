"""The page in a real browser (headless Chromium via Playwright): offline, and its numbers are the npz's.

One browser for the module; each test opens the page in a fresh context with every request but the page's own
file aborted, and checks that nothing else was requested and no console error was logged. Hovering targets a
cell's pixel centre computed from the page's geometry (canvas box, model-input size, the block's stride), so
the test does not depend on the window size.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from cotviz.analysis.catalog import MAP_INFO
from cotviz.analysis.rollout import KernelStep, local_rollout, plan_stage
from cotviz.explain import Explanation

from .conftest import SIZE

REPO = Path(__file__).resolve().parents[2]
SCREENSHOT = REPO / "docs" / "explore.png"


class Opened:
    """A page loaded offline, with what it requested and logged."""

    def __init__(self, browser: Any, path: Path, viewport: tuple[int, int]) -> None:
        self.url = path.resolve().as_uri()
        self.context = browser.new_context(viewport={"width": viewport[0], "height": viewport[1]})
        self.requests: list[str] = []
        self.errors: list[str] = []
        self.context.route("**/*", lambda route: route.continue_() if route.request.url == self.url
                           else route.abort())
        self.page = self.context.new_page()
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.goto(self.url)
        self.page.wait_for_function("window.cotvizExplorer && window.cotvizExplorer.ready")

    def js(self, expr: str, arg: Any = None) -> Any:
        return self.page.evaluate(expr, arg)

    def hover(self, block: str, cell: tuple[int, int], stride: int) -> None:
        """Move the mouse to the pixel centre of ``cell`` (select ``block`` first)."""
        self.page.select_option(".cvx-block", block)
        self.page.locator(".cvx-view").scroll_into_view_if_needed()
        g = self.js("cotvizExplorer.geometry()")
        scale = g["width"] / g["size"]
        self.page.mouse.move(g["left"] + (cell[1] + 0.5) * stride * scale, g["top"] + (cell[0] + 0.5) * stride * scale)

    def check_outline(self, cell: tuple[int, int], stride: int) -> None:
        """The cell's outline lies on its own pixels: black on its first and last canvas column/row, white just
        inside (the canvas is the model input magnified by an integer zoom)."""
        zoom = self.js("document.querySelector('.cvx-view').width") // SIZE
        x0, y0, side = cell[1] * stride * zoom, cell[0] * stride * zoom, stride * zoom
        mid_x, mid_y = x0 + side // 2, y0 + side // 2
        read = ("(pts) => pts.map(([x, y]) => Array.from(document.querySelector('.cvx-view').getContext('2d')"
                ".getImageData(x, y, 1, 1).data))")
        edges = self.js(read, [[x0, mid_y], [x0 + side - 1, mid_y], [mid_x, y0], [mid_x, y0 + side - 1]])
        inside = self.js(read, [[x0 + 1, mid_y], [x0 + side - 2, mid_y], [mid_x, y0 + 1], [mid_x, y0 + side - 2]])
        assert edges == [[0, 0, 0, 255]] * 4 and inside == [[255, 255, 255, 255]] * 4

    def shown_cell(self) -> tuple[str, int, int]:
        info = self.page.locator(".cvx-cellinfo")
        return info.get_attribute("data-block") or "", int(info.get_attribute("data-row") or -1), \
            int(info.get_attribute("data-col") or -1)

    def kernels(self) -> dict[tuple[int, int, int], float]:
        cells = self.page.eval_on_selector_all(
            ".cvx-kcell", "els => els.map(e => [+e.dataset.head, +e.dataset.kh, +e.dataset.kw, e.dataset.value, "
                          "e.textContent])")
        for _, _, _, value, text in cells:
            assert abs(float(text) - float(value)) <= 0.005 + 1e-9  # shown to 2 decimals
        return {(h, kh, kw): float(v) for h, kh, kw, v, _ in cells}

    def values(self, kind: str) -> dict[str, tuple[float, str]]:
        rows = self.page.eval_on_selector_all(
            f".cvx-values td[data-kind={kind}]", "els => els.map(e => [e.parentElement.dataset.map, "
                                                 "e.dataset.value, e.dataset.dtype])")
        return {m: (float(v), d) for m, v, d in rows}

    def check_clean(self) -> None:
        assert self.errors == []
        assert self.requests == [self.url]  # nothing but the file itself was requested

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def tiny_page(browser: Any, page_files: dict[str, Path]) -> Iterator[Opened]:
    opened = Opened(browser, page_files["tiny"], (1280, 1000))
    yield opened
    opened.check_clean()
    opened.close()


def expect_kernels(ex: Explanation, block: str, cell: tuple[int, int]) -> dict[tuple[int, int, int], float]:
    assert ex.cells is not None
    a = ex.cells.attention[block][..., cell[0], cell[1]]  # (M, K, K)
    return {(h, kh, kw): float(a[h, kh, kw]) for h in range(a.shape[0]) for kh in range(a.shape[1])
            for kw in range(a.shape[2])}


def test_hover_shows_the_kernels_and_map_values_of_the_cell(tiny_page: Opened, explained: Explanation) -> None:
    p, ex = tiny_page, explained
    assert ex.cells is not None
    for block, cell in (("stage3.block2", (1, 4)), ("stage3.block1", (4, 0)), ("stage3.block1", (5, 5))):
        stride = ex.geometry[block].feature_stride
        p.hover(block, cell, stride)
        assert p.shown_cell() == (block, *cell)
        p.check_outline(cell, stride)
        got, want = p.kernels(), expect_kernels(ex, block, cell)
        assert got == want  # float32 values, printed and read back exactly
        mean = p.values("mean")
        assert set(mean) == set(MAP_INFO)
        for name, (value, dtype) in mean.items():
            assert dtype == "float32" and np.float32(value) == ex.maps[block][name][cell], name  # the npz map


def test_switching_head_block_and_map_changes_what_is_shown(tiny_page: Opened, explained: Explanation) -> None:
    p, ex = tiny_page, explained
    assert ex.cells is not None
    cell = (2, 3)
    p.hover("stage3.block1", cell, 16)
    before = p.kernels()
    p.page.select_option(".cvx-head", "5")
    heads = p.values("head")
    for name, (value, dtype) in heads.items():
        ref = ex.cells.head_maps["stage3.block1"][name][5][cell]
        assert value == float(np.float16(ref) if dtype == "float16" else ref), name
    assert p.page.locator(".cvx-kernel.cvx-selected").get_attribute("data-head") == "5"
    assert p.kernels() == before  # every head's kernel stays; the selected one is outlined
    p.page.select_option(".cvx-block", "stage3.block2")
    assert p.shown_cell() == ("stage3.block2", *cell)  # the cursor stays on the same pixels
    assert p.kernels() == expect_kernels(ex, "stage3.block2", cell) != before
    assert p.js("cotvizExplorer.state.head") == 5
    pixel = "([x, y]) => Array.from(document.querySelector('.cvx-view').getContext('2d').getImageData(x, y, 1, 1).data)"
    probe = [int(p.js("cotvizExplorer.geometry()")["width"] * 0.1)] * 2
    for name in ("static_energy", "attention_entropy"):
        colour = p.js(pixel, probe)
        p.page.select_option(".cvx-map", name)
        assert p.page.locator(".cvx-cb-units").get_attribute("data-units") == MAP_INFO[name].units
        per_head = [ex.cells.head_maps[b][name][5] for b in ex.maps]
        lo, hi = p.js("cotvizExplorer.limits()")
        assert lo == pytest.approx(min(float(m.min()) for m in per_head), rel=1e-3)  # shared by the blocks
        assert hi == pytest.approx(max(float(m.max()) for m in per_head), rel=1e-3)
        assert p.js(pixel, probe) != colour  # the overlay was redrawn with the new map
    p.page.check("input[name=cvx-scale][value=block]")
    lo, hi = p.js("cotvizExplorer.limits()")
    own = ex.cells.head_maps["stage3.block2"]["attention_entropy"][5]
    assert (lo, hi) == (pytest.approx(float(own.min()), rel=1e-3), pytest.approx(float(own.max()), rel=1e-3))


def test_keyboard_and_click_move_and_pin_the_cell(tiny_page: Opened) -> None:
    p = tiny_page
    p.hover("stage3.block2", (3, 3), 16)
    p.page.mouse.down()
    p.page.mouse.up()  # a click pins the cell
    p.hover("stage3.block2", (0, 0), 16)
    assert p.shown_cell() == ("stage3.block2", 3, 3)
    p.page.focus(".cvx-view")
    p.page.keyboard.press("ArrowRight")
    p.page.keyboard.press("ArrowUp")
    assert p.shown_cell() == ("stage3.block2", 2, 4)
    for _ in range(9):
        p.page.keyboard.press("ArrowRight")
    assert p.shown_cell() == ("stage3.block2", 2, 5)  # stops at the border


def library_rollout(ex: Explanation, block: str, cell: tuple[int, int]) -> np.ndarray:
    """cotviz.analysis.rollout on the explanation's attention, blocks 1..b (the steps up to b's window: the cell
    lies on b's grid, before a BlurPool that follows b)."""
    assert ex.cells is not None
    b = int(block.rsplit("block", 1)[1])
    stage = block.split(".")[0]
    names = [f"{stage}.block{i}" for i in range(1, b + 1)]
    attention = {i + 1: torch.from_numpy(ex.cells.attention[n]).flatten(1, 2) for i, n in enumerate(names)}
    geo = [ex.geometry[n] for n in names]
    steps = plan_stage(attention, kernel_size=3, pooled_before={i + 1: g.pooled_before for i, g in enumerate(geo)},
                       blurred_after={i + 1: g.blurred_after for i, g in enumerate(geo)},
                       stage_input_size=ex.cells.rollout.grid)
    last = max(i for i, s in enumerate(steps) if isinstance(s, KernelStep))
    return local_rollout(steps[:last + 1], cell).numpy()


def test_rollout_in_the_page_is_the_librarys(browser: Any, page_files: dict[str, Path], explained: Explanation,
                                             blur_explained: Explanation) -> None:
    for key, ex, probes in (("tiny", explained, [("stage3.block1", (0, 0)), ("stage3.block2", (2, 5)),
                                                 ("stage3.block2", (5, 5))]),
                            ("blur", blur_explained, [("stage2.block1", (7, 15)), ("stage2.block2", (0, 3)),
                                                      ("stage2.block2", (7, 7))])):
        p = Opened(browser, page_files[key], (1280, 1000))
        try:
            for block, cell in probes:
                got = np.array(p.js("([b, r, c]) => cotvizExplorer.rolloutFrom(b, r, c)", [block, *cell]))
                want = library_rollout(ex, block, cell)
                np.testing.assert_allclose(got.reshape(want.shape), want, rtol=1e-12, atol=1e-15, err_msg=block)
                assert want.sum() > 0
            block, cell = probes[-1]
            p.hover(block, cell, ex.geometry[block].feature_stride)  # the hovered cell's rollout is drawn
            shown = p.js("cotvizExplorer.rollout()")
            assert (shown["block"], tuple(shown["cell"])) == (block, cell)
            np.testing.assert_allclose(np.array(shown["values"]).reshape(shown["grid"]),
                                       library_rollout(ex, block, cell), rtol=1e-12, atol=1e-15)
            p.check_clean()
        finally:
            p.close()


def test_small_window_hover_lands_on_the_cell_and_the_screenshot_is_not_blank(
        browser: Any, page_files: dict[str, Path], explained: Explanation, tmp_path: Path) -> None:
    small = Opened(browser, page_files["tiny"], (640, 480))  # the canvas needs scrolling: hover by geometry
    try:
        small.hover("stage3.block2", (5, 2), 16)
        assert small.shown_cell() == ("stage3.block2", 5, 2)
        assert small.kernels() == expect_kernels(explained, "stage3.block2", (5, 2))
        small.check_clean()
    finally:
        small.close()
    p = Opened(browser, page_files["tiny"], (1200, 860))
    try:
        p.hover("stage3.block2", (2, 4), 16)
        png = p.page.screenshot()
        p.check_clean()
    finally:
        p.close()
    shot = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    assert shot.shape[:2] == (860, 1200)
    assert shot.std() > 20 and len(np.unique(shot.reshape(-1, 3), axis=0)) > 500  # image, maps, kernels: not blank
    (tmp_path / "explore.png").write_bytes(png)
    if os.environ.get("COTVIZ_UPDATE_SCREENSHOT") == "1":  # refresh the README's screenshot explicitly
        SCREENSHOT.parent.mkdir(exist_ok=True)
        Image.open(io.BytesIO(png)).save(SCREENSHOT, optimize=True)


def test_notebook_display_runs_the_same_explorer_inline(browser: Any, explained: Explanation) -> None:
    """``_repr_html_`` (what Jupyter shows): the page in a sandboxed iframe, no server, no request."""
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    requests: list[str] = []
    errors: list[str] = []
    context.route("**/*", lambda route: route.abort())
    try:
        page = context.new_page()
        page.on("request", lambda r: requests.append(r.url))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.set_content(f"<html><body><p>notebook cell</p>{explained._repr_html_()}</body></html>")
        frame = page.frames[1]
        frame.wait_for_function("window.cotvizExplorer && window.cotvizExplorer.ready")
        frame.evaluate("cotvizExplorer.setCell(1, 2)")
        cells = frame.eval_on_selector_all(".cvx-kcell", "els => els.map(e => [+e.dataset.head, +e.dataset.kh, "
                                                         "+e.dataset.kw, +e.dataset.value])")
        assert {(h, kh, kw): v for h, kh, kw, v in cells} == expect_kernels(explained, "stage3.block2", (1, 2))
        assert errors == [] and [r for r in requests if not r.startswith(("about:", "data:"))] == []
    finally:
        context.close()
