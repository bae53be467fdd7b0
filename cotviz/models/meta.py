"""Models on the meta device: shapes, dtypes and parameter counts without memory, arithmetic or init.

* :func:`build_meta_model` -- a registered model built on the meta device (what profiling counts);
* :func:`meta_copy` -- a meta-device copy of any module, made without copying its weights;
* :func:`model_figures` -- a registered model's parameter and CoT-layer counts, from the figures recorded
  below (``tests/models/test_meta.py`` checks every one against a meta build), so ``cotviz models`` lists
  the zoo without building it (a meta build of all twelve variants takes ~1 s of Python module set-up).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

__all__ = ["ModelFigures", "RECORDED_FIGURES", "build_meta_model", "count_figures", "meta_copy", "model_figures"]


@dataclass(frozen=True)
class ModelFigures:
    """What ``cotviz models`` shows of a model's architecture (default configuration)."""

    params: int  # sum of numel over model.parameters() (shared parameters once)
    cot_layers: int  # CotLayer modules (CoXtLayer included)


#: Default-configuration figures of the registered variants (params equal the official
#: ``state_dict_manifest.json`` for the ten CoTNet variants).
RECORDED_FIGURES: dict[str, ModelFigures] = {
    "cotnet50": ModelFigures(22_222_416, 16),
    "cotnet101": ModelFigures(38_272_048, 33),
    "cotnext50_2x48d": ModelFigures(30_046_276, 16),
    "cotnext101_2x48d": ModelFigures(53_346_068, 33),
    "se_cotnetd_50": ModelFigures(23_107_784, 6),
    "se_cotnetd_101": ModelFigures(40_912_392, 15),
    "se_cotnetd_152": ModelFigures(55_783_688, 21),
    "se_cotnetd_152_L": ModelFigures(55_783_688, 21),
    "se_cotnetd_200": ModelFigures(60_399_368, 21),
    "se_cotnetd_270": ModelFigures(83_380_648, 31),
    "resnet50": ModelFigures(25_557_032, 0),
    "resnet101": ModelFigures(44_549_160, 0),
    "cotnet_demo": ModelFigures(463_008, 4),
    "resnet_demo": ModelFigures(515_830, 0),
    "sa_demo": ModelFigures(385_558, 0),
}


def build_meta_model(name: str, *, dtype: torch.dtype = torch.float32, **overrides: Any) -> nn.Module:
    """A registered model (name or alias) on the meta device, in eval mode: shapes only, no memory.

    Args:
        name: registered name or alias.
        dtype: parameter and buffer dtype (floating tensors only).
        **overrides: constructor overrides, as for :func:`cotviz.models.create_model`.
    """
    from cotviz.models.registry import create_model

    with torch.device("meta"):  # create_model builds modules without allocating or filling anything there
        model = create_model(name, seed=None, **overrides)
    return model.to(dtype=dtype) if dtype != torch.float32 else model


def meta_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` whose parameters and buffers are meta tensors; ``model`` is untouched.

    Unlike ``copy.deepcopy(model).to("meta")`` no weight is copied first: every tensor is replaced by an
    empty meta tensor of the same shape, dtype and ``requires_grad`` in the copy's memo (tied tensors stay
    tied, as the memo is keyed by identity).
    """
    memo: dict[int, Any] = {}
    for t in [*model.parameters(), *model.buffers()]:
        if id(t) not in memo:
            empty = torch.empty(t.shape, dtype=t.dtype, device="meta")
            memo[id(t)] = nn.Parameter(empty, t.requires_grad) if isinstance(t, nn.Parameter) else empty
    return copy.deepcopy(model, memo)


def count_figures(model: nn.Module) -> ModelFigures:
    """Parameter and CoT-layer counts of a built model (any device)."""
    from cotviz.layers.cot import CotLayer

    return ModelFigures(params=sum(p.numel() for p in model.parameters()),
                        cot_layers=sum(isinstance(m, CotLayer) for m in model.modules()))


def model_figures(name: str) -> ModelFigures:
    """The figures of a registered model's default configuration: recorded, or counted on a meta build."""
    from cotviz.models.registry import resolve_name

    canonical = resolve_name(name)
    recorded = RECORDED_FIGURES.get(canonical)
    return recorded if recorded is not None else count_figures(build_meta_model(canonical))
