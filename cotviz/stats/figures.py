"""Figures of a stats run (object-oriented matplotlib, no pyplot state; the caller saves and closes them).

* :func:`depth_figure` -- each quantity against depth: one panel per quantity, x = the recorded blocks in
  forward order across stages (stage boundaries marked), the mean as a line, the interquartile range as a band
  and the 5-95 % range as whiskers (head "all": the map `cotviz attention` draws by default).
* :func:`heads_figure` -- per-head distributions for one stage: rows = quantities, columns = the stage's blocks,
  one box per head drawn from the histogram quantiles (box: quartiles, line: median, whiskers: 5-95 %, dot: mean).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from cotviz.errors import InvalidArgumentError
from cotviz.stats.catalog import STAT_INFO
from cotviz.stats.result import StatsResult

__all__ = ["depth_figure", "heads_figure"]


def _maps(result: StatsResult) -> list[str]:
    return list(dict.fromkeys(m for b in result.layout.blocks for m in b.maps))


def _short(block: str) -> str:
    return block.replace("stage", "s").replace(".block", "b")


def depth_figure(result: StatsResult, *, dpi: float = 100) -> Figure:
    """Each quantity against depth (see the module docstring)."""
    maps = _maps(result)
    cols = min(3, len(maps))
    rows = math.ceil(len(maps) / cols)
    blocks = [b for b in result.layout.blocks]
    fig = Figure(figsize=(4.2 * cols, 2.9 * rows + 0.6), dpi=dpi, layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat[len(maps):]:
        ax.set_visible(False)
    for ax, name in zip(axes.flat, maps, strict=False):
        by_block = {r["block"]: r for r in result.select(map=name, head=None)}
        names = [b.name for b in blocks if b.name in by_block]
        x = np.arange(len(names))
        get = {k: np.array([by_block[n][k] for n in names], dtype=float) for k in ("mean", "q05", "q25", "q75", "q95")}
        ax.fill_between(x, get["q25"], get["q75"], color="tab:blue", alpha=0.25, lw=0, label="IQR")
        ax.errorbar(x, get["mean"], yerr=[np.maximum(get["mean"] - get["q05"], 0), np.maximum(get["q95"] - get["mean"], 0)],
                    fmt="-o", ms=3, lw=1.2, color="tab:blue", ecolor="0.55", elinewidth=0.8, capsize=2,
                    label="mean, 5–95 %")
        stages = [int(n.split(".")[0].removeprefix("stage")) if n.startswith("stage") else 0 for n in names]
        for i in range(1, len(names)):
            if stages[i] != stages[i - 1]:
                ax.axvline(i - 0.5, color="0.75", lw=0.8, ls=":")
        ax.set_xticks(x, [_short(n) for n in names], rotation=90 if len(names) > 8 else 0, fontsize=7)
        info = STAT_INFO[name]
        ax.set_title(info.label, fontsize=9)
        ax.set_ylabel(info.units, fontsize=7)
        ax.tick_params(axis="y", labelsize=7)
        ax.grid(True, axis="y", alpha=0.3)
    axes.flat[0].legend(fontsize=7, loc="best")
    fig.suptitle(f"{result.model_name}: statistics against depth over {result.images} images "
                 f"({result.model.get('init', '')[:60]})", fontsize=9)
    return fig


def heads_figure(result: StatsResult, stage: int, *, dpi: float = 100) -> Figure:
    """Per-head distributions of every quantity in the blocks of ``stage`` (see the module docstring)."""
    blocks = [b for b in result.layout.blocks if b.stage == stage]
    if not blocks:
        have = sorted({b.stage for b in result.layout.blocks})
        raise InvalidArgumentError(f"no recorded block in stage {stage}; the run has stages "
                                   f"{', '.join(map(str, have))}")
    maps = [m for m in _maps(result) if any(m in b.maps for b in blocks)]
    per_row = max(1, 3 // len(blocks))  # quantities side by side when the stage has few blocks
    n_rows, n_cols = math.ceil(len(maps) / per_row), per_row * len(blocks)
    width = max(3.4, 0.16 * max(b.heads for b in blocks) + 1.2)
    fig = Figure(figsize=(width * n_cols, 2.3 * n_rows + 0.7), dpi=dpi, layout="constrained")
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    for ax in axes.flat[len(maps) * len(blocks):]:
        ax.set_visible(False)
    for k, name in enumerate(maps):
        for j, b in enumerate(blocks):
            ax = axes[k // per_row, (k % per_row) * len(blocks) + j]
            rows = sorted((r for r in result.select(map=name, stage=stage) if r["block"] == b.name
                           and r["head"] is not None), key=lambda r: r["head"])
            stats: list[dict[str, Any]] = [{"med": r["q50"], "q1": r["q25"], "q3": r["q75"], "whislo": r["q05"],
                                            "whishi": r["q95"], "mean": r["mean"], "label": str(r["head"])}
                                           for r in rows if r["count"]]
            if stats:
                ax.bxp(stats, showmeans=True, showfliers=False, widths=0.6,
                       meanprops={"marker": ".", "markerfacecolor": "tab:red", "markeredgecolor": "tab:red",
                                  "markersize": 3},
                       medianprops={"color": "tab:blue"}, boxprops={"linewidth": 0.7},
                       whiskerprops={"linewidth": 0.7}, capprops={"linewidth": 0.7})
            step = max(1, len(stats) // 16)
            ax.set_xticks(np.arange(1, len(stats) + 1)[::step], [s["label"] for s in stats][::step], fontsize=6)
            ax.tick_params(axis="y", labelsize=6)
            ax.grid(True, axis="y", alpha=0.3)
            info = STAT_INFO[name]
            ax.set_title(f"{_short(b.name)} · {info.label}", fontsize=8)
            ax.set_ylabel(info.units, fontsize=6)
            ax.set_xlabel("head", fontsize=6)
    fig.suptitle(f"{result.model_name} stage {stage}: per-head distributions over {result.images} images\n"
                 "box: quartiles, line: median, whiskers: 5–95 %, dot: mean", fontsize=9)
    return fig
