"""The quantities ``cotviz stats`` accumulates, by name (no torch, so the CLI can list them).

Every map type of ``cotviz attention`` (:data:`cotviz.analysis.catalog.MAP_INFO`, the same definitions and units),
plus the two fusion-weight quantities of the CoT layer (the softmax over the radix, one weight per image and
channel, computed from the globally pooled contexts). What one *sample* is:

* a map: one cell of the block's feature grid of one image (an image of stage 3 of cotnet50 at 224 px gives
  14 x 14 = 196 samples per series);
* ``fusion_dynamic_weight``: one channel of one image (``a_c0``, the weight on the dynamic context K2);
* ``fusion_dynamic_fraction``: one image (the fraction of its channels where K2 gets more weight than K1, as
  :func:`cotviz.analysis.stats.fusion_preference` computes it).

Each quantity has a histogram range fixed before the first image, identical on every rank: the range it is
bounded to by definition, or -- for the unbounded energies -- ``[0, hi]`` with ``hi`` set once from the calibration
images (see :mod:`cotviz.stats.layout`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from cotviz.analysis.catalog import MAP_INFO, pick_names

__all__ = ["DEFAULT_STATS", "STAT_INFO", "StatInfo", "parse_stat_names"]


@dataclass(frozen=True)
class StatInfo:
    """One accumulated quantity.

    Attributes:
        name: ``--maps`` value.
        label, units, formula, taps: as in :class:`cotviz.analysis.catalog.MapInfo`.
        sample: what one sample is (``"cell"``, ``"channel"`` or ``"image"``).
        range: histogram range: ``(lo, hi)``; ``hi = None`` for a range calibrated on the first images;
            ``"ln_window"`` as ``hi``: ``ln(k*k)`` of the block's window (the entropy's maximum).
    """

    name: str
    label: str
    units: str
    formula: str
    taps: tuple[str, ...]
    sample: str
    range: tuple[float, float | str | None]

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "label": self.label, "units": self.units, "formula": self.formula,
                "taps": list(self.taps), "sample": self.sample}


_RANGES: dict[str, tuple[float, float | str | None]] = {
    "attention_energy": (0.0, None), "attention_entropy": (0.0, "ln_window"), "center_weight": (0.0, 1.0),
    "static_energy": (0.0, None), "dynamic_energy": (0.0, None), "dynamic_share": (0.0, 1.0),
    "output_energy": (0.0, None),
}

_FUSION: tuple[StatInfo, ...] = (
    StatInfo("fusion_dynamic_weight", "fusion weight on K2", "softmax weight, 0 … 1",
             "a_c0 = softmax over the radix of the fusion attention (B, C, 2), index 0 on the dynamic context K2; "
             "one sample per image and channel", ("fusion_weights",), "channel", (0.0, 1.0)),
    StatInfo("fusion_dynamic_fraction", "fraction of channels preferring K2", "fraction of channels, 0 … 1",
             "mean_c [a_c0 > a_c1] per image (cotviz.analysis.stats.fusion_preference); per head over the C/M "
             "channels that head aggregates", ("fusion_weights",), "image", (0.0, 1.0)),
)

#: Every quantity by name: the attention command's maps (registry order), then the fusion weights.
STAT_INFO: Mapping[str, StatInfo] = MappingProxyType({
    **{n: StatInfo(n, m.label, m.units, m.formula, m.taps, "cell", _RANGES[n]) for n, m in MAP_INFO.items()},
    **{s.name: s for s in _FUSION},
})
#: Accumulated when ``--maps`` is not given: all of them.
DEFAULT_STATS: tuple[str, ...] = tuple(STAT_INFO)


def parse_stat_names(names: Iterable[str] | None) -> tuple[str, ...]:
    """Validated names in catalog order (comma-separated entries allowed; None or empty: :data:`DEFAULT_STATS`)."""
    return pick_names((p.strip() for n in (names or ()) for p in str(n).split(",") if p.strip()), STAT_INFO,
                      DEFAULT_STATS)
