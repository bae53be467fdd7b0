"""The map types, by name: what each is, in which units, and which taps it needs (no torch, so the CLI can list them).

:mod:`cotviz.analysis.maps` attaches the computation to each entry (``MAPS``); this module is the one list of
names, labels, units and formulas. The formulas are written to the JSON metadata verbatim.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from cotviz.errors import InvalidArgumentError

__all__ = ["DEFAULT_MAPS", "MAP_INFO", "MapInfo", "pick_names"]


@dataclass(frozen=True)
class MapInfo:
    """Definition of one map type.

    Attributes:
        name: registry key (``--map`` value, npz key suffix).
        label: short human name for titles.
        units: what a colour bar value means (the map's real units).
        formula: exact definition, as written to the JSON metadata.
        taps: capture taps the map needs.
        per_head: True for maps defined per attention head (mean over heads by default).
        cmap: matplotlib colour map name for figures.
        by_attention: the definition for an operator whose attention tap holds something else than CoT's
            GroupNorm output, by :attr:`cotviz.capture.Record.attention_normalization` (``"softmax"``: local
            self-attention, whose A is already a distribution over the window).
    """

    name: str
    label: str
    units: str
    formula: str
    taps: tuple[str, ...]
    per_head: bool
    cmap: str
    by_attention: Mapping[str, str] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        """JSON-ready definition."""
        out = {"name": self.name, "label": self.label, "units": self.units, "formula": self.formula,
               "taps": list(self.taps), "per_head": self.per_head}
        if self.by_attention:
            out["formula_by_attention"] = dict(self.by_attention)
        return out


_INFO: tuple[MapInfo, ...] = (
    MapInfo("attention_energy", "attention energy", "||A||₂ over the k×k window (GroupNorm units)",
            "E(p) = sqrt(sum_j A_j(p)^2), A = GroupNorm output of embed (signed), j over the k*k window",
            ("attention",), True, "magma",
            {"softmax": "E(p) = sqrt(sum_j A_j(p)^2), A = softmax over the k*k window (local self-attention): "
                        "1/k for a flat window, 1 when all weight is on one position"}),
    MapInfo("attention_entropy", "attention entropy (softmax over k×k)", "nats, 0 … ln k²",
            "H(p) = -sum_j p_j log p_j with p = softmax_j(A_j(p)) over the k*k window (A is not a "
            "distribution; this is the entropy of its softmax)",
            ("attention",), True, "viridis",
            {"softmax": "H(p) = -sum_j A_j(p) log A_j(p): A is already a softmax over the k*k window (local "
                        "self-attention), so its own entropy"}),
    MapInfo("center_weight", "centre weight (softmax over k×k)", "softmax share of the centre, 0 … 1",
            "c(p) = softmax_j(A_j(p))[centre]; 1/k^2 when the window is flat",
            ("attention",), True, "cividis",
            {"softmax": "c(p) = A_centre(p): A is already a softmax over the k*k window (local self-attention)"}),
    MapInfo("static_energy", "static context energy", "RMS over channels of K1",
            "sqrt(mean_c K1_c(p)^2), K1 = key_embed(x) (k×k grouped conv, BN, ReLU)",
            ("static_context",), False, "inferno"),
    MapInfo("dynamic_energy", "dynamic context energy", "RMS over channels of K2",
            "sqrt(mean_c K2_c(p)^2), K2 = SiLU(BN(local aggregation of values with A))",
            ("dynamic_context",), False, "inferno"),
    MapInfo("dynamic_share", "dynamic share of fused output", "fraction of ||Y||², 0 … 1",
            "sum_c (a_c0 K2_c)^2 / sum_c [(a_c0 K2_c)^2 + (a_c1 K1_c)^2], a = fusion weights (B, C, 2), "
            "a_c0 on the dynamic context K2, a_c1 on the static context K1",
            ("static_context", "dynamic_context", "fusion_weights"), False, "coolwarm"),
    MapInfo("output_energy", "fused output energy", "RMS over channels of Y",
            "sqrt(mean_c Y_c(p)^2), Y = a_0 K2 + a_1 K1 (the CoT layer output)",
            ("output",), False, "inferno"),
)

#: Every map type by name, in display order (read-only).
MAP_INFO: Mapping[str, MapInfo] = MappingProxyType({m.name: m for m in _INFO})
#: Maps drawn when ``--map`` is not given.
DEFAULT_MAPS: tuple[str, ...] = ("attention_entropy", "static_energy", "dynamic_energy", "dynamic_share")


def pick_names(items: Iterable[str], known: Mapping[str, Any], default: tuple[str, ...]) -> tuple[str, ...]:
    """``items`` validated against the registry ``known`` and de-duplicated in its order (``default`` when empty).

    Raises:
        InvalidArgumentError: a name ``known`` does not have (the message lists the valid ones).
    """
    chosen = list(items)
    if not chosen:
        return default
    for n in chosen:
        if n not in known:
            raise InvalidArgumentError(f"unknown map {n!r}; choose from {', '.join(known)}")
    return tuple(n for n in known if n in chosen)
