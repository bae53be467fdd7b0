"""CoT statistics over a whole dataset: streaming, resumable, data-parallel with torchrun (``cotviz stats``).

::

    from cotviz.stats import compute_stats
    res = compute_stats("cotnet50", "imagenet/val/", weights="cotnet50.pth.tar", stages="3-4", out="stats/")
    res.select(map="dynamic_share", head=None)      # one row per block: count, mean, std, min, max, quantiles

* :mod:`cotviz.stats.runner` -- :func:`compute_stats` (the library function behind the command)
* :mod:`cotviz.stats.accumulators` -- exact, mergeable moments / extremes / histograms over many series
* :mod:`cotviz.stats.layout` -- which series, their histogram ranges, the samples a record gives them
* :mod:`cotviz.stats.sharding` -- exact batch-aligned shards (no padding); :mod:`cotviz.stats.distributed`
* :mod:`cotviz.stats.checkpoint` -- atomic per-rank checkpoints without pickle
* :mod:`cotviz.stats.dataset` -- folder / class tree / glob / list file -> sorted list
* :mod:`cotviz.stats.result`, :mod:`cotviz.stats.outputs`, :mod:`cotviz.stats.figures` -- results and files
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cotviz.stats.accumulators import Accumulator, Moments, MomentTree
    from cotviz.stats.catalog import STAT_INFO
    from cotviz.stats.dataset import StatsData, list_dataset
    from cotviz.stats.result import SCHEMA_VERSION, StatsResult
    from cotviz.stats.runner import Progress, compute_stats
    from cotviz.stats.sharding import Shard, shard

__all__ = ["SCHEMA_VERSION", "STAT_INFO", "Accumulator", "MomentTree", "Moments", "Progress", "Shard", "StatsData",
           "StatsResult", "compute_stats", "list_dataset", "shard"]

#: Where each public name lives (imported on first use: ``cotviz.stats.catalog`` alone does not import torch).
_HOME = {"Accumulator": "accumulators", "Moments": "accumulators", "MomentTree": "accumulators",
         "STAT_INFO": "catalog", "StatsData": "dataset", "list_dataset": "dataset", "SCHEMA_VERSION": "result",
         "StatsResult": "result", "Progress": "runner", "compute_stats": "runner", "Shard": "sharding",
         "shard": "sharding"}


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module 'cotviz.stats' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"cotviz.stats.{_HOME[name]}"), name)
    globals()[name] = value
    return value
