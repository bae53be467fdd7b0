"""Which series a run accumulates, where each lives in the accumulators, and the samples a record gives each one.

Series order (the row order of ``stats.json`` / ``stats.csv`` / ``histograms.npz``)::

    for each block (forward order), for each quantity the block has (catalog order):
        head "all" (the map exactly as `cotviz attention` draws it by default), then heads 0 .. M-1
    then, with classes, for each block, for each quantity, for each class: head "all"

Per class only the head-"all" series are kept: per-head x per-class would be ``M`` times more series (cotnet50,
1000 classes, every stage: 4.4 million histograms), which nobody reads and few machines hold.

Histogram ranges are per (block, quantity), shared by its heads and classes: the quantity's bounds by definition
(:data:`cotviz.stats.catalog.STAT_INFO`), or ``[0, hi]`` with ``hi`` from the *calibration images* -- the first
readable images of the sorted dataset, which every rank reads itself, so the range does not depend on the number
of ranks; rank 0's ranges are then broadcast so that all ranks use identical edges, and a resumed run takes them
from its checkpoint. ``hi`` = 1.5 x the largest calibration value, rounded up to two significant digits; values
above it land in the overflow bin (their min / max / mean / variance stay exact; quantiles there are interpolated
between ``hi`` and the maximum).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from cotviz.analysis.maps import MAPS, dynamic_share_map, select_head
from cotviz.analysis.stats import context_energy, fusion_preference
from cotviz.capture import Record
from cotviz.stats.catalog import STAT_INFO

__all__ = ["BlockLayout", "Layout", "Series", "block_layout", "nice_ceil", "record_values"]

#: ``hi`` of a calibrated range: this many times the largest calibration value, before rounding up.
HEADROOM = 1.5


@dataclass(frozen=True)
class BlockLayout:
    """One recorded block: its record name, stage, 1-based block, heads (C/8), window side and quantities."""

    name: str
    stage: int
    block: int
    heads: int
    kernel_size: int | None
    maps: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "stage": self.stage, "block": self.block, "heads": self.heads,
                "kernel_size": self.kernel_size, "maps": list(self.maps)}

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> BlockLayout:
        k = d.get("kernel_size")
        return BlockLayout(str(d["name"]), int(d["stage"]), int(d["block"]), int(d["heads"]),
                           None if k is None else int(k), tuple(str(m) for m in d["maps"]))


@dataclass(frozen=True)
class Series:
    """One accumulated series: ``cls`` None for all images, ``head`` None for "all"."""

    index: int
    cls: str | None
    block: str
    stage: int
    block_index: int
    head: int | None
    map: str


def block_layout(record: Record, names: Sequence[str]) -> BlockLayout:
    """The layout of ``record``'s block: the quantities of ``names`` whose taps it recorded."""
    maps = tuple(n for n in names if all(getattr(record, t) is not None for t in STAT_INFO[n].taps))
    return BlockLayout(record.name, record.stage, record.block, int(record.total_heads or 0), record.kernel_size,
                       maps)


class Layout:
    """The series of a run (see the module docstring) and their histogram ranges.

    Args:
        blocks: the recorded blocks, in forward order.
        classes: class names (``--by-class``), or None.
        bins: histogram bins per series.
    """

    def __init__(self, blocks: Sequence[BlockLayout], classes: Sequence[str] | None, bins: int) -> None:
        self.blocks = tuple(blocks)
        self.classes = None if classes is None else tuple(classes)
        self.bins = bins
        self.series: list[Series] = []
        self.offsets: dict[tuple[str, str], int] = {}
        self.class_offsets: dict[tuple[str, str], int] = {}
        for b in self.blocks:
            for m in b.maps:
                self.offsets[(b.name, m)] = len(self.series)
                for head in (None, *range(b.heads)):
                    self.series.append(Series(len(self.series), None, b.name, b.stage, b.block, head, m))
        if self.classes is not None:
            for b in self.blocks:
                for m in b.maps:
                    self.class_offsets[(b.name, m)] = len(self.series)
                    for c in self.classes:
                        self.series.append(Series(len(self.series), c, b.name, b.stage, b.block, None, m))

    def __len__(self) -> int:
        return len(self.series)

    def describe(self) -> dict[str, Any]:
        """What identifies the layout (compared on resume)."""
        return {"blocks": [b.to_dict() for b in self.blocks], "classes": None if self.classes is None
                else list(self.classes), "bins": self.bins}

    def fixed_range(self, block: BlockLayout, name: str) -> tuple[float, float] | None:
        """The range of ``name`` in ``block`` when it is known without data, else None (calibrated)."""
        lo, hi = STAT_INFO[name].range
        if hi == "ln_window":
            return lo, math.log((block.kernel_size or 3) ** 2)
        if hi is None:
            return None
        return lo, float(hi)

    def edges(self, ranges: Mapping[tuple[str, str], tuple[float, float]]) -> tuple[Tensor, Tensor]:
        """(S,) float64 ``lo`` and ``hi`` of every series from the per-(block, quantity) ranges."""
        lo = torch.empty(len(self.series), dtype=torch.float64)
        hi = torch.empty(len(self.series), dtype=torch.float64)
        for s in self.series:
            lo[s.index], hi[s.index] = ranges[(s.block, s.map)]
        return lo, hi

    def ranges(self, calibration_max: Mapping[tuple[str, str], float]) -> dict[tuple[str, str], tuple[float, float]]:
        """Per (block, quantity): the fixed range, or ``[0, nice_ceil(HEADROOM * max)]`` from the calibration."""
        out: dict[tuple[str, str], tuple[float, float]] = {}
        for b in self.blocks:
            for m in b.maps:
                fixed = self.fixed_range(b, m)
                if fixed is not None:
                    out[(b.name, m)] = fixed
                    continue
                top = calibration_max.get((b.name, m), 0.0)
                out[(b.name, m)] = (0.0, nice_ceil(HEADROOM * top) if math.isfinite(top) and top > 0 else 1.0)
        return out


def nice_ceil(v: float) -> float:
    """``v`` > 0 rounded up to two significant digits (0.01234 -> 0.013, 7.01 -> 7.1)."""
    e = math.floor(math.log10(v)) - 1
    step = 10.0 ** e
    return round(math.ceil(v / step - 1e-9) * step, max(0, -e))


def record_values(record: Record, names: Sequence[str]) -> dict[str, tuple[Tensor, Tensor]]:
    """The samples of each quantity of one record: ``{name: (all (B, N), per_head (B, M, N_h))}``.

    ``all`` is the map as :func:`cotviz.analysis.maps.block_maps` computes it with ``head=None`` (mean over heads
    for attention maps, all C channels for the others), flattened over its cells; ``per_head[:, h]`` the map of
    head ``h`` (``block_maps(record, [name], head=h)``), vectorised over the heads: channel maps reshape the
    (B, M, C/M, H, W) head view to (B*M, C/M, H, W) and reuse the same functions. Fusion quantities: per image
    and channel (``fusion_dynamic_weight``, N = C or C/M) or per image (``fusion_dynamic_fraction``, N = 1).
    Values stay on the record's device, float32.
    """
    out: dict[str, tuple[Tensor, Tensor]] = {}
    m = int(record.total_heads or 0)
    for name in names:
        if name in MAPS and MAPS[name].per_head:
            per_head = _attention_per_head(record, name)  # (B, M, H, W)
            full = select_head(per_head, None)  # (B, H, W): the attention command's head=None map
        elif name in MAPS:
            per_head = _channel_per_head(record, name, m)  # (B, M, H, W)
            full = MAPS[name].compute(record, None).float()  # (B, H, W)
        elif name == "fusion_dynamic_weight":
            full = record.tensor("fusion_weights")[..., 0].float()  # (B, C)
            per_head = record.heads("fusion_weights")[..., 0].float()  # (B, M, C/M)
        else:  # fusion_dynamic_fraction
            full = fusion_preference(record)["fraction"][:, None]  # (B, 1)
            by_head = record.heads("fusion_weights")  # (B, M, C/M, 2)
            b = by_head.shape[0]
            per_head = fusion_preference(by_head.reshape(b * m, -1, 2))["fraction"].reshape(b, m, 1)  # (B, M, 1)
        out[name] = (full.reshape(full.shape[0], -1), per_head.reshape(per_head.shape[0], m, -1))
    return out


def _attention_per_head(record: Record, name: str) -> Tensor:
    from cotviz.analysis import stats

    fn = {"attention_energy": stats.attention_energy, "attention_entropy": stats.attention_entropy,
          "center_weight": stats.center_weight_share}[name]
    return fn(record).float()  # (B, M, H, W)


def _channel_per_head(record: Record, name: str, m: int) -> Tensor:
    """(B, M, H, W) of a channel map, every head at once."""
    if name == "dynamic_share":
        k1, k2 = record.heads("static_context"), record.heads("dynamic_context")  # (B, M, S, H, W)
        a = record.heads("fusion_weights")  # (B, M, S, 2)
        b, _, s, h, w = k1.shape
        share = dynamic_share_map(k1.reshape(b * m, s, h, w), k2.reshape(b * m, s, h, w), a.reshape(b * m, s, 2))
        return share.reshape(b, m, h, w)  # (B*M, H, W) -> (B, M, H, W)
    tap = {"static_energy": "static_context", "dynamic_energy": "dynamic_context", "output_energy": "output"}[name]
    x = record.heads(tap)  # (B, M, S, H, W)
    b, _, s, h, w = x.shape
    return context_energy(x.reshape(b * m, s, h, w)).reshape(b, m, h, w)  # (B*M, H, W) -> (B, M, H, W)
