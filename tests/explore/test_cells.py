"""Every cell's kernels and each head's maps are the library's numbers (the ones the npz holds)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from cotviz.analysis.rollout import local_rollout, plan_stage
from cotviz.errors import InvalidArgumentError
from cotviz.explain import Explanation, explain
from cotviz.io.outputs import write_npz

from .conftest import COFFEE, EVERY_MAP, SIZE


def original_point(ex: Explanation, block: str, cell: tuple[int, int]) -> tuple[int, int]:
    """An original-image pixel whose model-input position lies inside ``cell`` of ``block`` (through the crop)."""
    assert ex.crop_box is not None
    left, top, right, bottom = ex.crop_box
    s = ex.geometry[block].feature_stride
    u, v = (cell[1] + 0.5) * s, (cell[0] + 0.5) * s
    return round(left + u * (right - left) / SIZE), round(top + v * (bottom - top) / SIZE)


def test_every_cell_holds_the_npz_kernels_of_a_point_there(net: nn.Module, explained: Explanation,
                                                            tmp_path) -> None:
    assert explained.cells is not None
    for block, cell in (("stage3.block1", (1, 4)), ("stage3.block2", (4, 2))):
        xy = original_point(explained, block, cell)
        at = explain(net, COFFEE, stage=3, point=xy, preprocess={"size": SIZE})
        assert at.point is not None and at.point.cells[block] == cell
        write_npz(tmp_path / "at.npz", at.arrays())
        with np.load(tmp_path / "at.npz") as npz:
            kernels = npz[f"{block}/kernels"]  # (M, K, K)
        r, c = cell
        np.testing.assert_array_equal(explained.cells.attention[block][:, :, :, r, c], kernels)


def test_maps_are_unchanged_and_each_heads_maps_are_head_h_explanations(net: nn.Module,
                                                                         explained: Explanation) -> None:
    plain = explain(net, COFFEE, stage=3, maps=EVERY_MAP, preprocess={"size": SIZE})
    for block, maps in plain.maps.items():
        for name, m in maps.items():
            np.testing.assert_array_equal(explained.maps[block][name], m)
    assert explained.cells is not None
    for head in (0, 5):
        one = explain(net, COFFEE, stage=3, maps=EVERY_MAP, head=head, preprocess={"size": SIZE})
        for block, maps in one.maps.items():
            for name, m in maps.items():
                np.testing.assert_array_equal(explained.cells.head_maps[block][name][head], m, err_msg=name)


def test_the_rollout_plan_is_the_stages_and_composes_the_points_rollout(net: nn.Module,
                                                                        explained: Explanation) -> None:
    cells = explained.cells
    assert cells is not None
    assert [dict(s) for s in cells.rollout.steps] == [
        {"kind": "avgpool", "in": [12, 12], "out": [6, 6]},  # block 1 average-pools before its CoT layer
        {"kind": "kernel", "block": "stage3.block1"}, {"kind": "kernel", "block": "stage3.block2"}]
    assert (cells.rollout.stride, cells.rollout.grid) == (8, (12, 12))
    cell = (2, 3)
    at = explain(net, COFFEE, stage=3, point=original_point(explained, "stage3.block2", cell),
                        preprocess={"size": SIZE})
    attention = {b: torch.from_numpy(cells.attention[f"stage3.block{b}"]).flatten(1, 2) for b in (1, 2)}
    steps = plan_stage(attention, kernel_size=3, pooled_before={1: True, 2: False},
                       blurred_after={1: False, 2: False}, stage_input_size=(12, 12))
    assert at.rollout is not None
    np.testing.assert_allclose(local_rollout(steps, cell).numpy(), at.rollout.values, rtol=1e-6, atol=1e-9)


def test_without_cells_there_is_no_explorer(net: nn.Module) -> None:
    plain = explain(net, COFFEE, stage=3, preprocess={"size": 64})
    assert plain.cells is None and plain._repr_html_() is None
    with pytest.raises(InvalidArgumentError, match="cells=True"):
        plain.explore()


def test_a_point_with_cells_opens_the_page_on_its_cell(net: nn.Module, explained: Explanation) -> None:
    xy = original_point(explained, "stage3.block2", (5, 1))
    ex = explain(net, COFFEE, stage=3, maps=["static_energy"], point=xy, cells=True, preprocess={"size": SIZE})
    assert ex.kernels is not None and ex.cells is not None
    np.testing.assert_array_equal(ex.cells.attention["stage3.block2"][..., 5, 1], ex.kernels["stage3.block2"])
    page = ex.explore(head=3).html
    assert '"cell": [\n      5,\n      1\n    ]' in page and '"head": 3' in page
    with pytest.raises(InvalidArgumentError, match="head 8 out of range"):
        ex.explore(head=8)


def test_a_later_block_alone_still_records_the_blocks_its_rollout_composes(net: nn.Module) -> None:
    ex = explain(net, COFFEE, stage=3, blocks=[2], maps=["static_energy"], cells=True, preprocess={"size": 64})
    assert ex.cells is not None
    assert list(ex.cells.attention) == ["stage3.block1", "stage3.block2"]  # block 1 feeds the rollout
    assert list(ex.cells.head_maps) == ["stage3.block2"] and list(ex.maps) == ["stage3.block2"]
    data = ex.explorer_data()
    assert [(b.name, b.shown) for b in data.blocks] == [("stage3.block1", False), ("stage3.block2", True)]
