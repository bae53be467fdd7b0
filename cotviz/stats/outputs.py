"""The files of a stats run: ``stats.json``, tidy ``stats.csv``, ``summary.md``, ``histograms.npz`` and figures.

Every file is written atomically (:mod:`cotviz.io.outputs`); JSON through the one encoder (``json_text``: NaN ->
null). ``stats.csv`` has one row per series -- (class, stage, block, head, quantity) -- with the columns of the
JSON ``series`` entries; ``head`` is ``all`` or the head number, ``class`` is empty for all images.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

from cotviz.io.outputs import save_figure, write_json, write_npz, write_text
from cotviz.stats.catalog import STAT_INFO
from cotviz.stats.result import QUANTILE_KEYS, StatsResult

__all__ = ["CSV_COLUMNS", "output_files", "render_csv", "render_markdown", "save_outputs"]

CSV_COLUMNS: tuple[str, ...] = ("class", "stage", "block_index", "block", "head", "map", "count", "nonfinite", "mean",
                                "std", "variance", "min", "max", *QUANTILE_KEYS, "underflow", "overflow")


def _fmt(v: Any) -> Any:
    if isinstance(v, float):
        return "" if not math.isfinite(v) else repr(v)
    return v


def render_csv(result: StatsResult) -> str:
    """Tidy CSV: one row per series (full float precision; empty cells for NaN)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for r in result.rows():
        row = {**r, "class": r["class"] or "", "head": "all" if r["head"] is None else r["head"]}
        w.writerow([_fmt(row[c]) for c in CSV_COLUMNS])
    return buf.getvalue()


def _g(v: float) -> str:
    return "–" if not math.isfinite(v) else f"{v:.4g}"


def render_markdown(result: StatsResult) -> str:
    """A summary a researcher can paste: the run, then per quantity a table over blocks (head "all")."""
    run, data = result.run, result.data
    lines = [f"# cotviz stats · {result.model_name}", "",
             f"- data: {data['root']} ({data['kind']}), {data['images']} images listed"
             + (f", {data['classes']} classes" if data.get("classes") else ""),
             f"- accumulated: {run['images']} images; unreadable: {run['failed']}",
             f"- weights: {result.model.get('init')}",
             f"- run: {run['world_size']} process(es), batch {run['batch_size']}, {run['device']}, {run['dtype']}",
             f"- quantiles from {result.layout.bins}-bin histograms (within one bin width); std = population "
             "standard deviation over all samples (cells × images)", ""]
    for name in dict.fromkeys(m for b in result.layout.blocks for m in b.maps):
        info = STAT_INFO[name]
        lines += [f"## {info.label} (`{name}`)", "", f"{info.units}; one sample = one {info.sample}. "
                  f"Definition: {info.formula}", "",
                  "| block | heads | mean | std | q05 | median | q95 | min | max |", "|---|---|---|---|---|---|---|---|---|"]
        heads = {b.name: b.heads for b in result.layout.blocks}
        for r in result.select(map=name, head=None):
            lines.append(f"| {r['block']} | {heads[r['block']]} | {_g(r['mean'])} | {_g(r['std'])} | {_g(r['q05'])} "
                         f"| {_g(r['q50'])} | {_g(r['q95'])} | {_g(r['min'])} | {_g(r['max'])} |")
        lines.append("")
    if result.failures:
        lines += ["## Unreadable files", ""]
        lines += [f"- {f['input']}: {f['error']}" for f in result.failures[:50]]
        if len(result.failures) > 50:
            lines.append(f"- … and {len(result.failures) - 50} more (stats.json lists all)")
        lines.append("")
    return "\n".join(lines)


def default_figure_stage(result: StatsResult) -> int:
    stages = sorted({b.stage for b in result.layout.blocks})
    return 3 if 3 in stages else stages[-1]


def output_files(out_dir: Path, result: StatsResult, *, figure_stage: int | None = None, fmt: str = "png",
                 figures: bool = True) -> dict[str, Path]:
    """The files :func:`save_outputs` writes, by kind."""
    out_dir = Path(out_dir)
    stage = default_figure_stage(result) if figure_stage is None else figure_stage
    files = {"json": out_dir / "stats.json", "csv": out_dir / "stats.csv", "summary": out_dir / "summary.md",
             "histograms": out_dir / "histograms.npz"}
    if figures:
        files.update({"depth_figure": out_dir / f"depth.{fmt}", "heads_figure": out_dir / f"heads_stage{stage}.{fmt}"})
    return files


def save_outputs(result: StatsResult, out_dir: Path, *, figure_stage: int | None = None, fmt: str = "png",
                 dpi: float = 100, figures: bool = True) -> dict[str, Path]:
    """Write every file into ``out_dir`` (the figures only with ``figures``); returns ``{kind: path}`` written."""
    files = output_files(out_dir, result, figure_stage=figure_stage, fmt=fmt, figures=figures)
    stage = default_figure_stage(result) if figure_stage is None else figure_stage
    write_json(files["json"], result.to_dict())
    write_text(files["csv"], render_csv(result))
    write_text(files["summary"], render_markdown(result))
    write_npz(files["histograms"], result.histograms())
    if not figures:
        return files
    from cotviz.stats.figures import depth_figure, heads_figure

    save_figure(depth_figure(result, dpi=dpi), files["depth_figure"], fmt)
    save_figure(heads_figure(result, stage, dpi=dpi), files["heads_figure"], fmt)
    return files
