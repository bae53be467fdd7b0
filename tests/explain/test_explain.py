"""``cotviz.explain`` as a library: exact values on hand-set networks, alignment through the crop, the request.

Two hand-set networks (``conftest.py``):

* the constant network (tiny, stage1.block1 set by hand): the stage input is a constant, the attention a known
  constant window, so every map, the kernels, the rollout and the fusion weights have closed forms -- asserted
  to float32 rounding;
* the averaging network (cotnet50, stage1.block1 averages brightness): its context maps peak over a bright
  patch, and must peak over the same ORIGINAL pixels through resize, centre crop and the tiling of cells
  (catching transposes, flips and off-by-crop errors).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import cotviz
from cotviz.analysis.maps import MAPS
from cotviz.explain import BlockGeometry, Explanation, UntrainedModelWarning, explain

from .conftest import (
    BETA,
    DECOY,
    HEAD1,
    PATCH,
    H,
    W,
    cell_to_original,
    corner_image,
    expected_crop_box,
    handset_network,
    in_patch,
    tiny_model,
)

ALL_MAPS = list(MAPS)
GRID = 16  # stage 1 at a 64 x 64 input: stride 4


def silu(x: float) -> float:
    return x / (1.0 + math.exp(-x))


def window_count(i: int, j: int, n: int = GRID) -> int:
    """3 x 3 window positions of cell (i, j) inside an n x n grid (the rest is zero padding)."""
    return (3 - (i == 0) - (i == n - 1)) * (3 - (j == 0) - (j == n - 1))


def expected_constant_maps(head: int | None = None) -> dict[str, np.ndarray]:
    """The maps of the constant network's stage1.block1, from the closed forms of ``constant_network``."""
    a1 = np.array(HEAD1)
    p1 = np.exp(a1) / np.exp(a1).sum()  # softmax of head 1 over the window
    per_head = {"attention_energy": (0.0, float(np.linalg.norm(a1))),
                "attention_entropy": (math.log(9), float(-(p1 * np.log(p1)).sum())),
                "center_weight": (1 / 9, float(p1[4]))}
    out: dict[str, np.ndarray] = {}
    for name, (h0, h1) in per_head.items():
        value = (h0 + h1) / 2 if head is None else (h0, h1)[head]
        out[name] = np.full((GRID, GRID), value)
    k1 = np.array([[BETA * window_count(i, j) / 9 for j in range(GRID)] for i in range(GRID)])
    # K2 of head 1's channels (odd c, channel c uses map c % 2): centre weight 1 always inside, top-right
    # weight 2 when the cell above-right exists; head 0's channels (even c): 0
    top_right = np.array([[i >= 1 and j <= GRID - 2 for j in range(GRID)] for i in range(GRID)])
    s = np.vectorize(silu)(BETA * (1 + 2 * top_right))
    if head is None:  # all 16 channels: 8 of head 0 (K2 = 0), 8 of head 1
        out["static_energy"] = k1
        out["dynamic_energy"] = s / math.sqrt(2)
        out["dynamic_share"] = s**2 / (s**2 + 2 * k1**2)
        out["output_energy"] = 0.5 * np.sqrt(((k1 + s) ** 2 + k1**2) / 2)
    else:  # the 8 channels of one head
        k2 = s if head == 1 else np.zeros_like(s)
        out["static_energy"] = k1
        out["dynamic_energy"] = k2
        out["dynamic_share"] = k2**2 / (k2**2 + k1**2)
        out["output_energy"] = 0.5 * np.abs(k1 + k2)
    return out


# ------------------------------------------------------------------------------------- exact values


def test_constant_network_every_map_kernel_rollout_and_fusion_weight_in_closed_form(constant: nn.Module) -> None:
    ex = explain(constant, torch.zeros(3, 64, 64), stage=1, maps=ALL_MAPS, point=(21, 37))
    assert ex.ok and list(ex.maps) == ["stage1.block1"]
    maps = ex.maps["stage1.block1"]
    assert list(maps) == ALL_MAPS
    for name, expected in expected_constant_maps().items():
        assert maps[name].dtype == np.float32 and maps[name].shape == (GRID, GRID), name
        np.testing.assert_allclose(maps[name], expected, rtol=2e-6, atol=1e-7, err_msg=name)
    # the point is in model-input pixels (a tensor image): pixel centre (21.5, 37.5) -> cell (37.5 // 4, 21.5 // 4)
    assert ex.point is not None and ex.point.xy == (21, 37) and ex.point.uv == (21.5, 37.5)
    assert dict(ex.point.cells) == {"stage1.block1": (9, 5)}
    assert ex.kernels is not None
    np.testing.assert_array_equal(ex.kernels["stage1.block1"], np.array([[0.0] * 9, HEAD1]).reshape(2, 3, 3))
    # rollout ("abs" weights, mean over heads; head 0 is all zeros): 1/3 one row up and one column right of the
    # cell (window position top-right), 1/6 on the cell itself, nothing else; half the mass went to head 0's zeros
    assert ex.rollout is not None and ex.rollout.stride == 4 and ex.rollout.from_block == "stage1.block1"
    expected = np.zeros((GRID, GRID))
    expected[8, 6], expected[9, 5] = 1 / 3, 1 / 6
    np.testing.assert_allclose(ex.rollout.values, expected, rtol=1e-7, atol=0)  # float32
    np.testing.assert_allclose(ex.rollout.normalized.sum(), 1.0)
    assert ex.to_json()["point"]["rollout"]["mass_kept"] == pytest.approx(0.5)
    # se outputs 0: softmax over the radix gives both branches 1/2 in every channel
    f = ex.fusion["stage1.block1"]
    assert f.fraction_dynamic_gt_static == 0.0 and f.mean_dynamic_weight == pytest.approx(0.5, abs=1e-7)
    assert ex.geometry == {"stage1.block1": BlockGeometry(
        feature_size=(16, 16), feature_stride=4, pooled_before=False, blurred_after=False, kernel_size=3, heads=2,
        layer_type="CotLayer", module_path="layer1.0")}


@pytest.mark.parametrize("head", [0, 1])
def test_constant_network_one_head_uses_that_heads_map_and_its_channels(constant: nn.Module, head: int) -> None:
    """head h: attention maps of head h; context maps of the channels c with c % 2 == h (the interleaved rule)."""
    ex = explain(constant, torch.zeros(1, 3, 64, 64), stage=1, maps=ALL_MAPS, head=head)
    for name, expected in expected_constant_maps(head).items():
        np.testing.assert_allclose(ex.maps["stage1.block1"][name], expected, rtol=2e-6, atol=1e-7, err_msg=name)
    assert ex.metadata is not None and ex.metadata.selection.head == head
    assert ex.to_json()["head_reduction"].startswith(f"head {head} ")


def test_rollout_drops_the_weight_that_falls_outside_the_grid(constant: nn.Module) -> None:
    """At the top-right cell the top-right window position is zero padding: only the cell's own 1/6 is left."""
    ex = explain(constant, torch.zeros(3, 64, 64), stage=1, maps=["static_energy"], point=(63, 0))
    assert ex.point is not None and ex.point.cells["stage1.block1"] == (0, 15)
    assert ex.rollout is not None
    expected = np.zeros((GRID, GRID))
    expected[0, 15] = 1 / 6
    np.testing.assert_allclose(ex.rollout.values, expected, rtol=1e-7, atol=0)  # float32
    assert ex.to_json()["point"]["rollout"]["mass_kept"] == pytest.approx(1 / 6)


def test_the_constant_network_ignores_the_image_so_a_file_gives_the_same_maps(constant: nn.Module,
                                                                               images: dict) -> None:
    ex = explain(constant, images["corner"], stage=1, maps=["static_energy", "dynamic_energy"],
                        preprocess={"size": 64})
    expected = expected_constant_maps()
    for name in ("static_energy", "dynamic_energy"):
        np.testing.assert_allclose(ex.maps["stage1.block1"][name], expected[name], rtol=2e-6, atol=1e-7)


# --------------------------------------------------------------------------- alignment (averaging network)


@pytest.fixture(scope="module")
def handset() -> nn.Module:
    return handset_network()


def test_alignment_through_resize_crop_and_cells(handset: nn.Module, images: dict) -> None:
    cx, cy = (PATCH[0] + PATCH[2]) // 2, (PATCH[1] + PATCH[3]) // 2
    names = ["static_energy", "dynamic_energy", "output_energy"]
    ex = explain(handset, images["corner"], stage=1, blocks=[1], maps=names, point=(cx, cy),
                        preprocess={"size": 64})
    assert ex.crop_box is not None and ex.crop_box == pytest.approx(expected_crop_box())
    assert ex.original_size == (W, H) and ex.image is not None and ex.image.shape == (64, 64, 3)
    stride = ex.geometry["stage1.block1"].feature_stride
    assert stride == 4
    stats = ex.statistics()
    for name in names:
        m = ex.maps["stage1.block1"][name]
        assert m.shape == (16, 16)
        i, j = np.unravel_index(np.argmax(m), m.shape)
        x, y = cell_to_original(int(i), int(j), stride, ex.crop_box, 64)
        assert in_patch(x, y, PATCH), (name, (i, j), (x, y))
        # everything that lights up is near the patch: top-right cells only
        lit_i, lit_j = np.nonzero(m > 0.05 * m.max())
        assert lit_i.max() < 8 and lit_j.min() >= 8, name
        assert stats[f"stage1.block1/{name}"]["max"] == pytest.approx(float(m.max()), rel=1e-6)
    assert ex.kernels is not None and ex.kernels["stage1.block1"].shape == (8, 3, 3)  # 64 channels / 8 heads
    # the point at the patch centre falls in the argmax neighbourhood, and the rollout surrounds it
    assert ex.point is not None and ex.rollout is not None
    pi, pj = ex.point.cells["stage1.block1"]
    m = ex.maps["stage1.block1"]["static_energy"]
    assert m[pi, pj] > 0.5 * m.max()
    ri, rj = np.unravel_index(np.argmax(ex.rollout.values), ex.rollout.values.shape)
    assert abs(ri - pi) <= 1 and abs(rj - pj) <= 1


def test_alignment_without_crop_on_a_rectangular_box(handset: nn.Module) -> None:
    ex = explain(handset, corner_image(), stage=1, blocks=[1], maps=["static_energy"],
                        preprocess={"size": 64, "no_crop": True})
    box = ex.crop_box
    assert box is not None and box == pytest.approx((0.0, 0.0, W, H))  # the whole landscape image, 3 x 2 original px per input px
    m = ex.maps["stage1.block1"]["static_energy"]
    i, j = np.unravel_index(np.argmax(m), m.shape)
    assert in_patch(*cell_to_original(int(i), int(j), 4, box, 64), PATCH)
    # the decoy is inside this view now: lit, but dimmer than the patch
    di, dj = np.unravel_index(np.argmax(m[:8, :8]), (8, 8))
    assert in_patch(*cell_to_original(int(di), int(dj), 4, box, 64), DECOY, tol=6)
    assert 0 < m[:8, :8].max() < m.max()
    assert ex.metadata is not None and ex.metadata.preprocessing is not None
    assert ex.metadata.preprocessing.crop is False
    assert ex.to_json()["preprocessing"]["resize_shorter_side_to"] is None


# ----------------------------------------------------------------------------------- the request


def test_a_model_object_is_described_not_built(tiny: nn.Module) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", UntrainedModelWarning)
        ex = explain(tiny, torch.zeros(3, 64, 64), stage=2)
    meta = ex.metadata
    assert meta is not None and meta.notes == () and meta.model_label == "cotnet50"
    assert meta.weights_label == "weights given by the caller"
    assert meta.model == {"name": "cotnet50", "init": "a network passed by the caller (its weights are not known to "
                          "cotviz)", "untrained": None, "zero_init_last_bn": None, "residual_scale": None,
                          "batchnorm_calibration": None, "weights": None}
    assert ex.prediction is not None and len(ex.prediction.classes) == 5 and 0 <= ex.prediction.top < 10
    assert ex.prediction.probabilities == tuple(sorted(ex.prediction.probabilities, reverse=True))


def test_explain_leaves_the_model_as_it_was_and_repeats_exactly(tiny: nn.Module, images: dict) -> None:
    before = {k: v.clone() for k, v in tiny.state_dict().items()}
    runs = [explain(tiny, images["a"], stage=3, point=(40, 30), gradcam=True, preprocess={"size": 64})
            for _ in range(2)]
    assert not tiny.training and all(not p.requires_grad or p.grad is None for p in tiny.parameters())
    after = tiny.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    a, b = runs
    for block in a.maps:
        for name in a.maps[block]:
            np.testing.assert_array_equal(a.maps[block][name], b.maps[block][name])
    assert a.kernels is not None and b.kernels is not None and a.rollout is not None and b.rollout is not None
    np.testing.assert_array_equal(a.kernels["stage3.block1"], b.kernels["stage3.block1"])
    np.testing.assert_array_equal(a.rollout.values, b.rollout.values)


def test_gradcam_of_the_predicted_class_or_of_a_target(tiny: nn.Module) -> None:
    x = torch.randn(3, 64, 64, generator=torch.Generator().manual_seed(3))
    ex = explain(tiny, x, stage=3, maps=["attention_energy"], gradcam=True)
    assert ex.gradcam is not None and ex.prediction is not None
    assert ex.gradcam.cam.shape == (4, 4) and ex.gradcam.upsampled.shape == (64, 64)
    assert ex.gradcam.target == ex.prediction.top and ex.gradcam.target_given is False
    assert (ex.gradcam.cam >= 0).all()  # ReLU applied
    other = (ex.prediction.top + 1) % 10
    ex2 = explain(tiny, x, stage=3, maps=["attention_energy"], target=other)  # a target implies Grad-CAM
    assert ex2.gradcam is not None and ex2.gradcam.target == other and ex2.gradcam.target_given is True
    js = ex2.to_json()["gradcam"]
    assert js["layer"] == "layer3" and js["target"] == other and js["target_given"] is True
    assert js["max"] == pytest.approx(float(ex2.gradcam.cam.max()))
    arrays = ex2.arrays()
    assert arrays["stage3/gradcam"].shape == (4, 4) and arrays["stage3/gradcam_upsampled"].shape == (64, 64)
    assert explain(tiny, x, stage=3, maps=["attention_energy"]).gradcam is None


@pytest.fixture(scope="module")
def two_blocks() -> nn.Module:
    """Tiny network with two blocks in stage 2 (block 1 pools before its CoT layer)."""
    return tiny_model(layers=[1, 2, 1, 1])


def test_a_point_records_every_block_up_to_the_last_drawn_one(two_blocks: nn.Module) -> None:
    """blocks=[2] draws block 2 only, but the rollout composes blocks 1..2 from the stage input."""
    ex = explain(two_blocks, torch.zeros(3, 64, 64), stage=2, blocks=[2], point=(40, 20))
    assert list(ex.maps) == ["stage2.block2"]
    assert ex.point is not None and set(ex.point.cells) == {"stage2.block1", "stage2.block2"}
    assert ex.point.cells["stage2.block2"] == (20 // 8, 40 // 8)
    assert ex.kernels is not None and list(ex.kernels) == ["stage2.block2"]
    assert ex.rollout is not None and ex.rollout.from_block == "stage2.block2"
    assert ex.rollout.stride == 4 and ex.rollout.values.shape == (16, 16)  # the stage input, before the pooling
    assert set(ex.geometry) == {"stage2.block1", "stage2.block2"}
    assert ex.geometry["stage2.block1"].pooled_before and ex.geometry["stage2.block1"].feature_stride == 8
    js = ex.to_json()
    assert js["blocks"] == ["stage2.block2"] and list(js["geometry"]["blocks"]) == ["stage2.block2"]
    plain = explain(two_blocks, torch.zeros(3, 64, 64), stage=2, blocks=[2])
    assert plain.point is None and plain.kernels is None and plain.rollout is None
    assert set(plain.geometry) == {"stage2.block2"}  # without a point only the drawn blocks are recorded
    np.testing.assert_allclose(plain.maps["stage2.block2"]["attention_entropy"],
                               ex.maps["stage2.block2"]["attention_entropy"], rtol=1e-6)


def test_default_maps_blocks_and_a_pil_image_equal_the_same_file(two_blocks: nn.Module, images: dict,
                                                                assert_same_maps: Callable[..., None]) -> None:
    ex = explain(two_blocks, images["c"], preprocess={"size": 64})
    assert isinstance(ex, Explanation) and list(ex.maps) == ["stage3.block1"]
    assert list(ex.maps["stage3.block1"]) == ["attention_entropy", "static_energy", "dynamic_energy", "dynamic_share"]
    ex2 = explain(two_blocks, Image.open(images["c"]), stage=2, preprocess={"size": 64})
    assert list(ex2.maps) == ["stage2.block1", "stage2.block2"]
    assert_same_maps(explain(two_blocks, images["c"], stage=2, preprocess={"size": 64}), ex2, rtol=0, atol=0)


def test_cotviz_explain_is_the_function_and_the_package(tiny: nn.Module, monkeypatch: pytest.MonkeyPatch) -> None:
    """``cotviz.explain(model, image)`` works however ``cotviz.explain`` was first reached: ``import cotviz.explain``
    (any ``from cotviz.explain import ...``) binds the package to that name, so the package is callable, and
    ``cotviz.explain.Explainer`` & co. stay reachable."""
    import cotviz.explain as package
    from cotviz.explain import Explainer

    assert cotviz.explain is package and callable(package)
    ex = cotviz.explain(tiny, torch.zeros(3, 64, 64), stage=4, maps=["static_energy"])  # type: ignore[operator]
    assert isinstance(ex, Explanation) and list(ex.maps) == ["stage4.block1"]
    assert cotviz.explain.Explainer is Explainer and cotviz.explain.explain is explain
    monkeypatch.delattr(cotviz, "explain")  # as if nothing had imported the package yet: the lazy attribute
    assert cotviz.explain is package
    assert cotviz.explain_many is package.explain_many and cotviz.Explanation is Explanation
