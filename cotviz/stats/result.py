"""The result of a stats run: every series' statistics, the run's facts, and the ``stats.json`` schema.

``stats.json`` (``schema_version`` 1)::

    {
      "schema_version": 1,
      "kind": "cotviz.stats",
      "model": {...}                 # provenance: name, init, untrained, weights path + sha256 (as `attention`)
      "data": {"root", "kind", "images" (listed), "classes" (count or null), "sha256" (of the sorted list)},
      "run": {"images": accumulated, "failed": unreadable, "world_size", "batch_size", "workers", "device",
              "dtype", "threads_per_rank", "seconds" (the slowest rank's streaming loop, this session),
              "images_per_second" (images of this session / seconds), "resumed": bool},
      "preprocessing": {...},        # the model's pretrained preprocessing as applied
      "histogram": {"bins", "calibration_images": [first readable files], "ranges": {"<block>/<map>": [lo, hi]},
                    "note"},
      "quantities": {"<map>": {"label", "units", "formula", "taps", "sample"}},
      "blocks": [{"name", "stage", "block", "heads", "kernel_size", "maps"}],
      "classes": [names] | null,
      "series": [ {"class": null | name, "block": "stage3.block2", "stage": 3, "block_index": 2,
                   "head": null (= all) | 0.., "map": name, "count", "nonfinite", "mean", "std", "variance",
                   "min", "max", "q01", "q05", "q25", "q50", "q75", "q95", "q99", "underflow", "overflow"} ],
      "failures": [{"input", "error"}]
    }

``count`` = finite samples (see :mod:`cotviz.stats.catalog` for what a sample is); ``variance`` is the population
variance (M2 / count); quantiles come from the histogram (within one bin width); ``histograms.npz`` holds the
counts: ``counts`` (S, bins + 2) int64 (column 0 below ``lo``, last above ``hi``), ``lo`` / ``hi`` (S,), rows in
``series`` order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cotviz.stats.accumulators import QUANTILES, Accumulator, histogram_quantiles
from cotviz.stats.catalog import STAT_INFO
from cotviz.stats.layout import Layout

__all__ = ["SCHEMA_VERSION", "StatsResult"]

SCHEMA_VERSION = 1
QUANTILE_KEYS: tuple[str, ...] = tuple(f"q{round(q * 100):02d}" for q in QUANTILES)


@dataclass
class StatsResult:
    """Statistics of a dataset (what :func:`cotviz.stats.compute_stats` returns; the same on every rank).

    Attributes:
        layout: the series (:class:`~cotviz.stats.layout.Layout`). accumulator: their merged statistics.
        model: provenance (the JSON ``model`` section). model_name: its label.
        data: the dataset's description. run: counts, world size, timings. preprocessing: as applied.
        calibration: the calibration images and the histogram ranges.
        failures: ``[{"input", "error"}]``, every unreadable file.
    """

    layout: Layout
    accumulator: Accumulator
    model: dict[str, Any]
    model_name: str
    data: dict[str, Any]
    run: dict[str, Any]
    preprocessing: dict[str, Any]
    calibration: dict[str, Any]
    failures: list[dict[str, Any]] = field(default_factory=list)
    _rows: list[dict[str, Any]] | None = field(default=None, repr=False)

    @property
    def images(self) -> int:
        """Images whose statistics were accumulated."""
        return int(self.run["images"])

    def rows(self) -> list[dict[str, Any]]:
        """One dict per series (the ``series`` of the schema), in layout order."""
        if self._rows is not None:
            return self._rows
        acc = self.accumulator
        mom = acc.moments()
        var = mom.variance.numpy()
        mn, mx = acc.minimum.numpy(), acc.maximum.numpy()
        qs = histogram_quantiles(acc.hist.numpy(), acc.lo.numpy(), acc.hi.numpy(), mn, mx)
        count, nonfinite, hist = acc.count.numpy(), acc.nonfinite.numpy(), acc.hist.numpy()
        mean = mom.mean.numpy()
        rows = []
        for s in self.layout.series:
            i = s.index
            empty = count[i] == 0
            row: dict[str, Any] = {
                "class": s.cls, "block": s.block, "stage": s.stage, "block_index": s.block_index, "head": s.head,
                "map": s.map, "count": int(count[i]), "nonfinite": int(nonfinite[i]),
                "mean": math.nan if empty else float(mean[i]), "std": math.sqrt(var[i]) if not empty else math.nan,
                "variance": float(var[i]), "min": math.nan if empty else float(mn[i]),
                "max": math.nan if empty else float(mx[i])}
            row.update({k: float(qs[i, j]) for j, k in enumerate(QUANTILE_KEYS)})
            row["underflow"], row["overflow"] = int(hist[i, 0]), int(hist[i, -1])
            rows.append(row)
        self._rows = rows
        return rows

    def select(self, *, map: str | None = None, head: Any = "any", cls: Any = None, stage: int | None = None,
               ) -> list[dict[str, Any]]:
        """Rows filtered by quantity, head (None = "all"; default any head), class (default: all images) and stage."""
        return [r for r in self.rows() if (map is None or r["map"] == map) and (head == "any" or r["head"] == head)
                and r["class"] == cls and (stage is None or r["stage"] == stage)]

    def histograms(self) -> dict[str, np.ndarray]:
        """``{"counts": (S, bins + 2) int64, "lo": (S,), "hi": (S,)}`` in series order."""
        acc = self.accumulator
        return {"counts": acc.hist.numpy(), "lo": acc.lo.numpy(), "hi": acc.hi.numpy()}

    def to_dict(self) -> dict[str, Any]:
        """The ``stats.json`` document (see the module docstring)."""
        maps = list(dict.fromkeys(m for b in self.layout.blocks for m in b.maps))
        return {
            "schema_version": SCHEMA_VERSION, "kind": "cotviz.stats", "model": self.model, "data": self.data,
            "run": self.run, "preprocessing": self.preprocessing,
            "histogram": {"bins": self.layout.bins, **self.calibration},
            "quantities": {m: STAT_INFO[m].describe() for m in maps},
            "blocks": [b.to_dict() for b in self.layout.blocks],
            "classes": None if self.layout.classes is None else list(self.layout.classes),
            "series": self.rows(), "failures": self.failures,
        }
