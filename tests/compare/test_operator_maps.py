"""Capture and maps for every operator, and the side-by-side figure of ``compare --image``."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from cotviz.analysis.maps import block_maps
from cotviz.capture import capture, cot_blocks
from cotviz.compare import compare_maps
from cotviz.errors import CaptureError, InvalidArgumentError
from cotviz.explain import Explainer, explain
from cotviz.models import create_model

REPO = Path(__file__).resolve().parents[2]
COFFEE = REPO / "examples" / "coffee.png"
TINY = {"layers": [1, 1, 1, 1], "base_width": 16, "num_classes": 10, "zero_init_last_bn": False}
EXPECTED_TAPS = {
    "cot": ("static_context", "attention", "dynamic_context", "fusion_weights", "output"),
    "sa": ("attention", "output"),
    "static": ("static_context", "output"),
    "dynamic": ("static_context", "attention", "dynamic_context", "output"),
    "linear": ("static_context", "attention", "dynamic_context", "output"),
    "concat": ("static_context", "attention", "dynamic_context", "output"),
    "conv": (),
}


@pytest.mark.parametrize("spec", sorted(EXPECTED_TAPS))
def test_capture_records_the_taps_each_operator_has(spec: str) -> None:
    model = create_model("cotnet50", spatial_layer=spec, **TINY)
    (info,) = [b for b in cot_blocks(model) if b.stage == 3]
    assert info.taps == EXPECTED_TAPS[spec]
    assert info.heads == (None if "attention" not in info.taps else 64 // 8)
    wanted = list(EXPECTED_TAPS[spec]) or ["output"]  # every operator has an output (from its module)
    with torch.inference_mode(), capture(model, stages=[3], taps=wanted) as cap:
        model(torch.randn(2, 3, 64, 64))
    rec = cap["stage3.block1"]
    assert rec.taps == tuple(wanted)
    if "attention" in EXPECTED_TAPS[spec]:
        assert rec.heads("attention").shape == (2, 8, 9, 4, 4)
        assert rec.attention_normalization == ("softmax" if spec == "sa" else "groupnorm")
    for m in model.modules():  # nothing left behind
        assert not m._forward_hooks and not m._forward_pre_hooks


def test_sa_maps_use_its_own_distribution_and_missing_taps_are_named() -> None:
    model = create_model("cotnet50", spatial_layer="sa", **TINY)
    with torch.inference_mode(), capture(model, stages=[3], taps=["attention"]) as cap:
        model(torch.randn(1, 3, 64, 64))
    rec = cap["stage3.block1"]
    a = rec.heads("attention").double()  # (1, M, 9, H, W), already a softmax
    torch.testing.assert_close(a.sum(dim=2), torch.ones_like(a.sum(dim=2)))
    maps = block_maps(rec, ["attention_entropy", "center_weight"], head=2)
    want = -(a * a.log()).sum(dim=2)[:, 2]  # entropy of A itself (no second softmax)
    torch.testing.assert_close(maps["attention_entropy"].double(), want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(maps["center_weight"].double(), a[:, 2, 4], rtol=1e-5, atol=1e-6)
    assert float(maps["attention_entropy"].max()) <= math.log(9) + 1e-5
    with pytest.raises(CaptureError, match=r"has no static_context/dynamic_context/fusion_weights, so no dynamic"):
        block_maps(rec, ["dynamic_share"])
    with pytest.raises(InvalidArgumentError, match="need the taps static_context"):
        Explainer(model, stage=3, maps=["static_energy"])


def test_explain_refuses_a_container_of_several_networks() -> None:
    both = nn.ModuleDict({"a": create_model("cotnet50", **TINY), "b": create_model("cotnet50", **TINY)}).eval()
    with pytest.raises(InvalidArgumentError, match="holds 2 CoT networks"):
        explain(both, torch.zeros(3, 64, 64))


def test_compare_maps_side_by_side(tmp_path: Path) -> None:
    files = compare_maps(["cot", "sa", "conv"], COFFEE, out_dir=tmp_path, preprocess={"size": 64})
    assert files.figure.stat().st_size > 0
    meta = json.loads(files.json.read_text())
    assert meta["command"] == "compare" and list(meta["operators"]) == ["cot", "sa", "conv"]
    assert meta["operators"]["conv"] == {"attention": False, "note": "no local attention in this operator"}
    assert meta["operators"]["sa"]["model"]["untrained"] is True
    assert "formula_by_attention" in meta["operators"]["sa"]["maps"]["attention_entropy"]
    with np.load(files.npz) as npz:
        assert npz["input"].shape == (64, 64, 3)
        assert npz["sa/stage3.block6/attention_entropy"].shape == (4, 4)
        assert npz["cot/stage3.block6/center_weight"].shape == (4, 4)
    with pytest.raises(InvalidArgumentError, match="not among the compared operators"):
        compare_maps(["cot"], COFFEE, out_dir=tmp_path, weights={"sa": "x.pt"})


def test_capture_without_taps_records_what_the_operator_has() -> None:
    model = create_model("cotnet50", spatial_layer="sa", **TINY)
    with torch.inference_mode(), capture(model, stages=[3]) as cap:
        model(torch.randn(1, 3, 64, 64))
    assert cap["stage3.block1"].taps == ("attention", "output")


@pytest.mark.parametrize("spec", ["sa", "static", "dynamic"])
def test_no_hook_is_left_after_a_failing_forward(spec: str) -> None:
    model = create_model("cotnet50", spatial_layer=spec, **TINY)
    with pytest.raises(RuntimeError), torch.inference_mode(), capture(model, stages=[3]):
        model(torch.randn(1, 5, 64, 64))  # wrong channel count: the stem raises
    for m in model.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks
