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
from typing import Any, NamedTuple

import torch
from torch import Tensor

from cotviz.analysis.stats import fusion_preference
from cotviz.capture import Record
from cotviz.stats.catalog import STAT_INFO

__all__ = ["BlockLayout", "Layout", "Samples", "Series", "block_layout", "nice_ceil", "record_values"]

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


class Samples(NamedTuple):
    """The samples one record gives one quantity.

    ``all`` (B, N): head "all"; ``heads`` (M, B, N_h): head-major, ``heads[h]`` the samples of head ``h``;
    ``rows`` (1 + M, B, N): both in one tensor (``rows[0] = all``) when ``N_h == N`` (every map), else None.
    """

    all: Tensor
    heads: Tensor
    rows: Tensor | None


def record_values(record: Record, names: Sequence[str]) -> dict[str, Samples]:
    """The samples of each quantity of one record (float32, on the record's device).

    The fast path of :func:`cotviz.analysis.maps.block_maps`, every head at once, equal to it within float32
    rounding (a test compares them): head ``h`` is ``block_maps(record, [name], head=h)`` and head "all" is
    ``block_maps(record, [name])`` -- the mean over heads for attention maps, all C channels for the others
    (computed as ``sqrt(mean over heads of the per-head mean square)`` and ``sum dyn / sum (dyn + sta)``, the same
    quantity summed in another order). Sums over the k x k window and over a head's C/M channels run as loops
    of contiguous slices (a reduction over a middle axis is several times slower on the CPU), written head-major
    into one buffer so the accumulator reads them without a copy. Fusion quantities: per image and channel
    (``fusion_dynamic_weight``: N = C for "all", C/M per head) or per image (``fusion_dynamic_fraction``).
    """
    out: dict[str, Samples] = {}
    attention = [n for n in names if n in _ATTENTION]
    if attention:
        out.update(_attention_samples(record, attention))
    for name in names:
        if name in _CONTEXT_TAPS:
            out[name] = _energy_samples(record, _CONTEXT_TAPS[name])
        elif name == "dynamic_share":
            out[name] = _share_samples(record)
        elif name == "fusion_dynamic_weight":
            full = record.tensor("fusion_weights")[..., 0].float()  # (B, C)
            heads = record.heads("fusion_weights")[..., 0].float().transpose(0, 1)  # (B, M, C/M) -> (M, B, C/M)
            out[name] = Samples(full, heads, None)
        elif name == "fusion_dynamic_fraction":
            m = int(record.total_heads or 0)
            by_head = record.heads("fusion_weights")  # (B, M, C/M, 2)
            b = by_head.shape[0]
            frac = fusion_preference(by_head.reshape(b * m, -1, 2))["fraction"].reshape(b, m)  # (B, M)
            full = fusion_preference(record)["fraction"][:, None]  # (B, 1)
            out[name] = Samples(full, frac.t()[:, :, None].contiguous(), None)
    return {n: out[n] for n in names}


_ATTENTION = ("attention_energy", "attention_entropy", "center_weight")
_CONTEXT_TAPS = {"static_energy": "static_context", "dynamic_energy": "dynamic_context", "output_energy": "output"}


def _buffer(m: int, like: Tensor, b: int, h: int, w: int) -> Tensor:
    return torch.empty(m + 1, b, h, w, dtype=torch.float32, device=like.device)  # (1 + M, B, H, W)


def _samples(rows: Tensor) -> Samples:
    m1, b, h, w = rows.shape
    flat = rows.reshape(m1, b, h * w)  # (1 + M, B, N)
    return Samples(flat[0], flat[1:], flat)


def _attention_samples(record: Record, names: Sequence[str]) -> dict[str, Samples]:
    """Energy, entropy and centre weight of every head (see :mod:`cotviz.analysis.stats` for the definitions)."""
    a = record.heads("attention").float()  # (B, M, KK, H, W)
    b, m, kk, h, w = a.shape
    at = a.transpose(0, 1)  # (M, B, KK, H, W) view: head-major
    out: dict[str, Samples] = {}
    if "attention_energy" in names:
        rows = _buffer(m, a, b, h, w)
        hv = rows[1:]  # (M, B, H, W)
        torch.mul(at[:, :, 0], at[:, :, 0], out=hv)
        for j in range(1, kk):
            hv.addcmul_(at[:, :, j], at[:, :, j])
        hv.sqrt_()  # ||A||_2 over the window
        torch.mean(hv, dim=0, out=rows[0])
        out["attention_energy"] = _samples(rows)
    if "attention_entropy" in names or "center_weight" in names:
        if record.attention_normalization == "softmax":  # already a distribution (local self-attention)
            p, logp = a, a.clamp_min(torch.finfo(a.dtype).tiny).log()
        else:  # CoT: softmax of the GroupNorm output over the window
            logp = torch.log_softmax(a, dim=2)  # (B, M, KK, H, W)
            p = logp.exp()
        pt, lt = p.transpose(0, 1), logp.transpose(0, 1)  # (M, B, KK, H, W)
        if "attention_entropy" in names:
            rows = _buffer(m, a, b, h, w)
            hv = rows[1:]
            torch.mul(pt[:, :, 0], lt[:, :, 0], out=hv)
            for j in range(1, kk):
                hv.addcmul_(pt[:, :, j], lt[:, :, j])
            hv.neg_()  # -sum_j p_j log p_j
            torch.mean(hv, dim=0, out=rows[0])
            out["attention_entropy"] = _samples(rows)
        if "center_weight" in names:
            rows = _buffer(m, a, b, h, w)
            rows[1:].copy_(pt[:, :, kk // 2])  # p of the window centre
            torch.mean(rows[1:], dim=0, out=rows[0])
            out["center_weight"] = _samples(rows)
    return out


def _head_view(record: Record, x: Tensor) -> Tensor:
    """(B, C, ...) channels as (B, G, S, MG, ...): channel ``g*C/G + s*MG + m`` belongs to head ``g*MG + m``."""
    g, mg = record.groups, int(record.heads_per_group or 0)
    b, c = x.shape[:2]
    return x.reshape(b, g, c // (g * mg), mg, *x.shape[2:])


def _energy_samples(record: Record, tap: str) -> Samples:
    """RMS over the channels of each head, and over all channels (as :func:`cotviz.analysis.stats.context_energy`)."""
    x = record.tensor(tap).float()  # (B, C, H, W)
    b, c, h, w = x.shape
    g, mg = record.groups, int(record.heads_per_group or 0)
    xv = _head_view(record, x)  # (B, G, S, MG, H, W)
    s = xv.shape[2]
    rows = _buffer(g * mg, x, b, h, w)
    hv = rows[1:].view(g, mg, b, h, w)  # head h = g*MG + m
    first = xv[:, :, 0].permute(1, 2, 0, 3, 4)  # (G, MG, B, H, W)
    torch.mul(first, first, out=hv)
    for j in range(1, s):
        sl = xv[:, :, j].permute(1, 2, 0, 3, 4)
        hv.addcmul_(sl, sl)
    rows[1:].div_(s)  # mean square per head
    torch.mean(rows[1:], dim=0, out=rows[0])  # mean square over all C channels (every head has S of them)
    rows.sqrt_()
    return _samples(rows)


def _share_samples(record: Record) -> Samples:
    """Dynamic share of each head's channels and of all channels (as :func:`cotviz.analysis.maps.dynamic_share_map`)."""
    k1, k2 = record.tensor("static_context").float(), record.tensor("dynamic_context").float()  # (B, C, H, W)
    a = record.tensor("fusion_weights").float()  # (B, C, 2)
    b, c, h, w = k1.shape
    g, mg = record.groups, int(record.heads_per_group or 0)
    v1, v2, va = _head_view(record, k1), _head_view(record, k2), _head_view(record, a)  # (B, G, S, MG, ...)
    energy = torch.zeros(2, g, mg, b, h, w, dtype=torch.float32, device=k1.device)  # dyn, sta per head
    for j in range(v1.shape[2]):
        dyn = (v2[:, :, j] * va[:, :, j, :, None, None, 0]).permute(1, 2, 0, 3, 4)  # (G, MG, B, H, W) a_c0 K2_c
        sta = (v1[:, :, j] * va[:, :, j, :, None, None, 1]).permute(1, 2, 0, 3, 4)  # a_c1 K1_c
        energy[0].addcmul_(dyn, dyn)
        energy[1].addcmul_(sta, sta)
    e = energy.reshape(2, g * mg, b, h, w)
    rows = _buffer(g * mg, k1, b, h, w)
    _share(e[0], e[0] + e[1], out=rows[1:])
    _share(e[0].sum(dim=0), e.sum(dim=(0, 1)), out=rows[0])
    return _samples(rows)


def _share(dyn: Tensor, total: Tensor, out: Tensor) -> None:
    """``dyn / total`` with :func:`cotviz.analysis.maps.dynamic_share_map`'s conventions: 0 where both branches are
    zero, NaN where the energy is not finite."""
    share = torch.where(total > 0, dyn / total.clamp_min(torch.finfo(total.dtype).tiny), torch.zeros_like(total))
    out.copy_(torch.where(torch.isfinite(total), share, torch.full_like(total, math.nan)))
