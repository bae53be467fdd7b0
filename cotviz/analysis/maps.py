"""Per-block 2-D maps of a CoT layer: a registry of named map definitions and their computation.

Every map is a function of one :class:`cotviz.capture.Record` giving ``(B, H, W)`` on the block's CoT
feature grid (``record.feature_size``, ``record.feature_stride`` input pixels per cell). The registry
(:data:`MAPS`) says what each map is, in which units, and which taps it needs; the statistics come from
:mod:`cotviz.analysis.stats` (this module only selects heads and arranges them as maps).

Heads: the attention has ``M = C/8`` maps per position ("heads", numbered group-major for CoXt, see
:meth:`Record.heads`). ``head=None`` gives, for attention maps, the mean over heads of the per-head map;
for channel maps (contexts, output, dynamic share), all C channels. ``head=h`` restricts attention maps
to head ``h`` and channel maps to the ``C/M`` channels that head ``h`` aggregates (channel ``c`` with
``c % M == h`` for CoT).

Map names (``--map``) -- the :data:`MAPS` keys:

=====================  ======================================================================================
``attention_energy``   ``||A||_2`` over the k x k window (A = GroupNorm output, signed)
``attention_entropy``  entropy (nats) of ``softmax(A)`` over the k x k window, in ``[0, ln k^2]``
``center_weight``      ``softmax(A)`` weight of the window centre, in ``[0, 1]`` (``1/k^2`` when flat)
``static_energy``      RMS over channels of the static context K1
``dynamic_energy``     RMS over channels of the dynamic context K2
``dynamic_share``      share of the fused output's energy that comes from the dynamic branch, per cell
``output_energy``      RMS over channels of the fused output Y
=====================  ======================================================================================
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import torch
from torch import Tensor

from cotviz.analysis import stats
from cotviz.analysis.catalog import DEFAULT_MAPS, MAP_INFO, MapInfo, pick_names
from cotviz.capture.records import TAP_NAMES, Record
from cotviz.errors import CaptureError, InvalidArgumentError

__all__ = [
    "DEFAULT_MAPS",
    "MAPS",
    "MapSpec",
    "block_maps",
    "compute_maps",
    "dynamic_share_map",
    "kernels_at",
    "map_key",
    "map_statistics",
    "parse_map_names",
    "select_head",
    "taps_for",
]

MapFn = Callable[[Record, "int | None"], Tensor]


@dataclass(frozen=True)
class MapSpec(MapInfo):
    """A map type of :data:`cotviz.analysis.catalog.MAP_INFO` with its computation.

    ``compute``: ``(record, head) -> (B, H, W)``.
    """

    compute: MapFn = field(kw_only=True)


def select_head(per_head: Tensor, head: int | None) -> Tensor:
    """(B, M, H, W) -> (B, H, W): head ``head``, or the mean over heads when None."""
    if head is None:
        return per_head.mean(dim=1)
    if not 0 <= head < per_head.shape[1]:
        raise InvalidArgumentError(f"head {head} out of range: this block has heads 0..{per_head.shape[1] - 1}")
    return per_head[:, head]


def _channels(record: Record, tap: str, head: int | None) -> Tensor:
    """The tap's channels as (B, C', H, W): all C channels, or the C/M channels head ``head`` aggregates."""
    if head is None:
        return record.tensor(tap)
    by_head = record.heads(tap)  # (B, M, C/M, H, W) or (B, M, C/M, 2) for fusion weights
    if not 0 <= head < by_head.shape[1]:
        raise InvalidArgumentError(f"head {head} out of range: {record.name} has heads 0..{by_head.shape[1] - 1}")
    return by_head[:, head]


def dynamic_share_map(static_context: Tensor, dynamic_context: Tensor, fusion_weights: Tensor) -> Tensor:
    """Share of the fused output's energy carried by the dynamic branch, per cell.

    With ``a`` the fusion weights (B, C, 2) (``a[..., 0]`` on K2, ``a[..., 1]`` on K1) and the fused
    output ``Y = a0 K2 + a1 K1``::

        share(p) = sum_c (a_c0 K2_c(p))^2 / sum_c [(a_c0 K2_c(p))^2 + (a_c1 K1_c(p))^2]

    in ``[0, 1]`` (0 where both branches are zero; NaN where either is not finite). Shapes: K1, K2 (B, C, H, W), a (B, C, 2) -> (B, H, W).
    """
    a = fusion_weights.float()
    dyn = (a[:, :, 0, None, None] * dynamic_context.float()).square().sum(dim=1)  # (B, H, W)
    sta = (a[:, :, 1, None, None] * static_context.float()).square().sum(dim=1)  # (B, H, W)
    total = dyn + sta
    share = torch.where(total > 0, dyn / total.clamp_min(torch.finfo(total.dtype).tiny), torch.zeros_like(total))
    return torch.where(torch.isfinite(total), share, torch.full_like(total, math.nan))  # NaN/Inf stays visible


def _attention_map(stat: Callable[[Record], Tensor]) -> MapFn:
    def compute(record: Record, head: int | None) -> Tensor:
        return select_head(stat(record), head)

    return compute


def _context_map(tap: str) -> MapFn:
    def compute(record: Record, head: int | None) -> Tensor:
        return stats.context_energy(_channels(record, tap, head))  # (B, H, W)

    return compute


def _dynamic_share(record: Record, head: int | None) -> Tensor:
    return dynamic_share_map(_channels(record, "static_context", head), _channels(record, "dynamic_context", head),
                             _channels(record, "fusion_weights", head))


_COMPUTE: dict[str, MapFn] = {
    "attention_energy": _attention_map(stats.attention_energy),
    "attention_entropy": _attention_map(stats.attention_entropy),
    "center_weight": _attention_map(stats.center_weight_share),
    "static_energy": _context_map("static_context"),
    "dynamic_energy": _context_map("dynamic_context"),
    "dynamic_share": _dynamic_share,
    "output_energy": _context_map("output"),
}

#: Every map type by name, in display order (read-only).
MAPS: Mapping[str, MapSpec] = MappingProxyType({n: MapSpec(**vars(info), compute=_COMPUTE[n])
                                                for n, info in MAP_INFO.items()})


def parse_map_names(names: Iterable[str] | None) -> tuple[str, ...]:
    """Validated, de-duplicated map names in registry order (None or empty: :data:`DEFAULT_MAPS`)."""
    return pick_names(names or (), MAPS, DEFAULT_MAPS)


def taps_for(names: Iterable[str], *, attention: bool = False) -> tuple[str, ...]:
    """The capture taps the maps need (plus ``attention`` when kernels/rollout are drawn)."""
    wanted = {t for n in names for t in MAPS[n].taps}
    if attention:
        wanted.add("attention")
    return tuple(t for t in TAP_NAMES if t in wanted)


def map_key(block: str, name: str) -> str:
    """npz / JSON key of one map: ``"stage3.block2/attention_energy"``."""
    return f"{block}/{name}"


def block_maps(record: Record, names: Sequence[str], head: int | None = None) -> dict[str, Tensor]:
    """The maps ``names`` of one record: ``{name: (B, H, W) float32 on the CPU}``."""
    missing = {n: [t for t in MAPS[n].taps if getattr(record, t) is None] for n in names}
    missing = {n: t for n, t in missing.items() if t}
    if missing:
        if not record.has_cot and record.attention is None and record.static_context is None:
            raise CaptureError(f"{record.name} is a {record.layer_type} block without a CoT layer; it has no CoT maps")
        first = next(iter(missing))
        raise CaptureError(f"{record.name} ({record.layer_type}) has no {'/'.join(missing[first])}, so no {first} "
                           f"map (unavailable for this operator)")
    return {n: MAPS[n].compute(record, head).float().cpu() for n in names}


def compute_maps(records: Mapping[str, Record], names: Sequence[str], head: int | None = None,
                 blocks: Iterable[str] | None = None) -> dict[str, Tensor]:
    """Maps of several records: ``{"stage3.block2/attention_energy": (B, H, W)}`` in record order.

    ``blocks``: record names to use (default: every record).
    """
    chosen = list(records) if blocks is None else list(blocks)
    out: dict[str, Tensor] = {}
    for block in chosen:
        for name, m in block_maps(records[block], names, head).items():
            out[map_key(block, name)] = m
    return out


def map_statistics(m: Tensor | Any) -> dict[str, float]:
    """``{"min", "max", "mean"}`` of one map (finite values; NaN if none)."""
    t = torch.as_tensor(m).double()
    t = t[torch.isfinite(t)]
    if t.numel() == 0:
        return {"min": math.nan, "max": math.nan, "mean": math.nan}
    return {"min": t.min().item(), "max": t.max().item(), "mean": t.mean().item()}


def kernels_at(record: Record, index: int, cell: tuple[int, int]) -> Tensor:
    """Raw attention A of every head at one cell of image ``index``: (M, K, K), window row-major (kh, kw)."""
    heads = record.heads("attention")  # (B, M, K*K, H, W)
    k = record.kernel_size or math.isqrt(heads.shape[2])
    r, c = cell
    return heads[index, :, :, r, c].reshape(heads.shape[1], k, k)  # (M, K*K) -> (M, K, K)
