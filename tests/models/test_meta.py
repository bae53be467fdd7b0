"""Models on the meta device: the meta build, meta copies, and the recorded figures ``cotviz models`` shows."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

from cotviz.models import create_model, list_models
from cotviz.models.meta import (
    RECORDED_FIGURES,
    ModelFigures,
    build_meta_model,
    count_figures,
    meta_copy,
    model_figures,
)

TINY_SE = {"layers": [1, 1, 2, 1], "num_classes": 10}


def test_recorded_figures_equal_a_meta_build_of_every_registered_model(meta_model: Callable[[str], nn.Module]) -> None:
    assert list(RECORDED_FIGURES) == list_models()  # a new variant needs its figures recorded
    built = {name: count_figures(meta_model(name)) for name in list_models()}
    assert RECORDED_FIGURES == built


def test_recorded_figures_match_the_official_manifest(manifest: dict[str, Any]) -> None:
    for name, ref in manifest.items():
        assert RECORDED_FIGURES[name] == ModelFigures(ref["params"], len(ref["cot_layers"])), name


def test_unrecorded_model_is_counted_on_meta(monkeypatch: pytest.MonkeyPatch) -> None:
    recorded = RECORDED_FIGURES["cotnext50_2x48d"]
    monkeypatch.delitem(RECORDED_FIGURES, "cotnext50_2x48d")
    assert model_figures("cotnext50") == recorded  # alias resolved, figures counted on a meta build


def test_meta_build_has_the_real_architecture() -> None:
    meta = build_meta_model("se_cotnetd_152", **TINY_SE)
    real = create_model("se_cotnetd_152", **TINY_SE)
    assert [(k, v.shape, v.dtype) for k, v in meta.state_dict().items()] == \
        [(k, v.shape, v.dtype) for k, v in real.state_dict().items()]
    assert all(t.is_meta for t in [*meta.parameters(), *meta.buffers()])
    assert not meta.training
    half = build_meta_model("cotnet50", dtype=torch.float16, layers=[1, 1, 1, 1], base_width=16, num_classes=10)
    assert {p.dtype for p in half.parameters()} == {torch.float16}


class _Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 4)
        self.b.weight = self.a.weight  # tied
        self.bn = nn.BatchNorm1d(4)
        self.a.bias.requires_grad_(False)


def test_meta_copy_keeps_ties_and_flags_and_leaves_the_original_alone() -> None:
    model = _Tied()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    copy = meta_copy(model)
    assert all(t.is_meta for t in [*copy.parameters(), *copy.buffers()])
    assert copy.b.weight is copy.a.weight and copy.a.weight is not model.a.weight
    assert isinstance(copy.a.weight, nn.Parameter) and not copy.a.bias.requires_grad and copy.a.weight.requires_grad
    assert [(k, v.shape, v.dtype) for k, v in copy.state_dict().items()] == \
        [(k, v.shape, v.dtype) for k, v in model.state_dict().items()]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not any(t.is_meta for t in model.parameters())
