"""Every cell of every block: the full attention tensors, each head's maps and the stage's rollout plan.

:class:`cotviz.explain.Explainer` keeps, per image, the kernels at ONE point (``Explanation.kernels``). The
explorer needs the kernels at every cell, so ``Explainer(..., cells=True)`` calls :func:`cell_data` on the
same capture pass and stores the result as ``Explanation.cells``. Everything here is computed by the library
(:meth:`cotviz.capture.Record.heads`, :func:`cotviz.analysis.maps.block_maps`,
:func:`cotviz.analysis.rollout.plan_stage`); nothing is re-derived.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from cotviz.analysis.maps import block_maps
from cotviz.analysis.rollout import KernelStep, stage_plan
from cotviz.capture.records import Record

__all__ = ["CellData", "RolloutPlan", "cell_data"]


@dataclass(frozen=True)
class RolloutPlan:
    """The forward-ordered steps of :func:`cotviz.analysis.rollout.plan_stage` as plain data.

    ``steps``: ``{"kind": "kernel", "block": name}``, or ``{"kind": "avgpool" | "blur", "in": [Hi, Wi],
    "out": [Ho, Wo]}``;
    ``stride`` / ``grid``: the stage input's stride in model-input pixels and its (H0, W0) grid.
    The rollout of a cell of block b composes the steps up to and including b's kernel step.
    """

    steps: tuple[Mapping[str, Any], ...]
    stride: int
    grid: tuple[int, int]

    def to_dict(self) -> dict[str, Any]:
        return {"steps": [dict(s) for s in self.steps], "stage_input_stride": self.stride,
                "stage_input_grid": list(self.grid)}


@dataclass(frozen=True)
class CellData:
    """What the explorer shows at every cell of one image.

    Attributes:
        attention: block -> (M, K, K, H, W) float32, the raw attention A of every head at every cell
            (``attention[b][:, :, :, r, c]`` is ``Explanation.kernels[b]`` for a point on cell (r, c)); every
            recorded block, 1..n of the stage.
        head_maps: shown block -> map name -> (M, H, W) float32, the map restricted to head h
            (``explain(..., head=h)``'s map; context maps use the channels head h aggregates).
        rollout: the stage's steps, to compose the local rollout of any cell (:class:`RolloutPlan`).
    """

    attention: Mapping[str, np.ndarray]
    head_maps: Mapping[str, Mapping[str, np.ndarray]]
    rollout: RolloutPlan

    @property
    def nbytes(self) -> int:
        """Bytes held by the arrays."""
        return sum(a.nbytes for a in self.attention.values()) + \
            sum(m.nbytes for maps in self.head_maps.values() for m in maps.values())


def _head_maps(record: Record, names: Sequence[str]) -> dict[str, torch.Tensor]:
    """map name -> (B, M, H, W): each head's map for the whole batch, from the registry (the computation of
    ``head=h``, on the whole batch, as the runner computes it)."""
    heads = int(record.heads("attention").shape[1])
    per_head = [block_maps(record, names, h) for h in range(heads)]  # the runner's maps, one head at a time
    return {n: torch.stack([maps[n] for maps in per_head], dim=1) for n in names}  # (B, M, H, W)


def cell_data(records: Sequence[Record], maps: Sequence[str], shown: Sequence[str]) -> list[CellData]:
    """Attention at every cell, per-head maps and the rollout plan of every image of the batch, in batch order.

    Args:
        records: blocks 1..n of ONE stage, in order, each with its attention captured.
        maps: map names (registry keys) to compute per head.
        shown: record names whose per-head maps are wanted (the drawn blocks).
    """
    batch_maps = {rec.name: _head_maps(rec, maps) for rec in records if rec.name in shown}  # once per batch
    out: list[CellData] = []
    for index in range(int(records[0].heads("attention").shape[0])):
        attention: dict[str, np.ndarray] = {}
        for rec in records:
            heads = rec.heads("attention")[index]  # (M, K*K, H, W)
            kb = math.isqrt(int(heads.shape[1]))
            attention[rec.name] = heads.float().reshape(heads.shape[0], kb, kb, *heads.shape[2:]).cpu().numpy()
        head_maps = {b: {n: m[index].clone().numpy() for n, m in per_map.items()}  # own copy: no batch kept
                     for b, per_map in batch_maps.items()}
        plan, stride, grid = stage_plan(records, index)
        steps: list[Mapping[str, Any]] = []
        kernel_blocks = iter(sorted(records, key=lambda r: r.block))  # one KernelStep per block, in order
        for step in plan:
            if isinstance(step, KernelStep):
                steps.append({"kind": "kernel", "block": next(kernel_blocks).name})
            else:
                steps.append({"kind": step.kind, "in": list(step.in_size), "out": list(step.out_size)})
        out.append(CellData(attention, head_maps, RolloutPlan(tuple(steps), stride, grid)))
    return out
