"""A sanity result as a rich table, JSON, CSV or markdown, and its figure (numbers formatted here, at the edge)."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from cotviz.io.outputs import json_text, markdown_table
from cotviz.sanity.runner import SanityResult, SanityStep

__all__ = ["RENDERERS", "render_csv", "render_json", "render_markdown", "render_table", "sanity_figure"]


def _cell(step: SanityStep, name: str) -> str:
    m, s = step.mean[name], step.std[name]
    return "–" if not math.isfinite(m) else f"{m:.2f} ± {s:.2f}"


def _rows(r: SanityResult) -> tuple[list[str], list[list[str]]]:
    head = ["mode", "step", "randomised"] + r.maps
    rows = []
    for s in r.steps:
        what = "— (trained)" if s.unit is None else (f"… {s.unit}" if s.mode == "cascading" else s.unit)
        rows.append([s.mode, str(s.index), what] + [_cell(s, n) for n in r.maps])
    return head, rows


def _notes(r: SanityResult) -> list[str]:
    unit = r.units[r.check_step - 1] if r.check_step else "–"
    notes = [f"{r.model} ({r.weights}), stage {r.stage}, {r.images} image(s): Spearman ρ between the trained and the "
             "randomised network's map (mean ± std over images; per image the mean over the stage's CoT blocks). "
             "Cascading: every unit from the logits down to the one named is re-initialised; independent: that unit "
             "alone."]
    if r.insensitive:
        notes.append(f"INSENSITIVE to the weights (ρ > {r.threshold:g} after randomising down to {unit}): "
                     + ", ".join(r.insensitive))
    elif any(s.mode == "cascading" for s in r.steps):
        notes.append(f"every map falls to ρ ≤ {r.threshold:g} once the network is randomised down to {unit}")
    for source, error in r.errors:
        notes.append(f"skipped {source}: {error}")
    return notes


def render_json(r: SanityResult) -> str:
    return json_text(r.to_dict())


def render_csv(r: SanityResult) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["mode", "step", "unit", "map", "spearman_mean", "spearman_std", "images"])
    for s in r.steps:
        for n in r.maps:
            w.writerow([s.mode, s.index, s.unit or "", n, f"{s.mean[n]:.6g}", f"{s.std[n]:.6g}", s.count[n]])
    return buf.getvalue()


def render_markdown(r: SanityResult) -> str:
    head, rows = _rows(r)
    return "\n".join([markdown_table(head, rows, left=3), ""] + [f"- {n}" for n in _notes(r)]) + "\n"


def render_table(r: SanityResult, console: Any) -> None:
    from rich.table import Table

    head, rows = _rows(r)
    table = Table(title=f"cotviz sanity: {r.model}, stage {r.stage}")
    for i, h in enumerate(head):
        table.add_column(h, justify="right" if i >= 3 else "left")
    for s, row in zip(r.steps, rows, strict=True):
        flagged = s.mode == "cascading" and s.index == r.check_step
        table.add_row(*row, style="bold" if flagged else None)
    console.print(table)
    for n in _notes(r):
        console.print(n, style="red" if n.startswith("INSENSITIVE") else None, highlight=False)


RENDERERS: dict[str, Callable[[SanityResult], str]] = {"json": render_json, "csv": render_csv,
                                                        "markdown": render_markdown}


def sanity_figure(r: SanityResult, *, dpi: float = 100) -> Figure:
    """The Adebayo-style curve (ρ vs randomised depth, one line per map, ±1 std band; independent steps as open
    markers) above a strip of the first image's maps per cascading step (each normalised to its own range)."""
    cascade = [s for s in r.steps if s.mode == "cascading"]
    indep = [s for s in r.steps if s.mode == "independent"]
    steps = cascade or indep
    strip = r.examples.get("cascading") or r.examples.get("independent") or {}
    n_strip = len(strip)
    rows = len(r.maps) if n_strip else 0
    width = max(7.0, 0.9 * len(steps) + 2)
    fig = Figure(figsize=(width, 3.2 + 0.85 * rows), dpi=dpi, layout="constrained")
    grid = fig.add_gridspec(1 + rows, max(n_strip, 1), height_ratios=[3.2] + [0.85] * rows)
    ax = fig.add_subplot(grid[0, :])
    x = np.arange(len(steps))
    for k, n in enumerate(r.maps):
        colour = f"C{k % 10}"
        if cascade:
            m = np.array([s.mean[n] for s in cascade])
            sd = np.array([s.std[n] for s in cascade])
            ax.plot(x, m, "-o", color=colour, label=n, ms=3)
            ax.fill_between(x, m - sd, m + sd, color=colour, alpha=0.15, lw=0)
        if indep:
            ax.plot(np.arange(len(indep)), [s.mean[n] for s in indep], "o", mfc="none", color=colour, ms=5,
                    label=None if cascade else n)
    ax.axhline(r.threshold, color="0.4", ls="--", lw=0.8)
    if cascade and r.check_step < len(cascade):
        ax.axvline(r.check_step, color="0.6", ls=":", lw=0.8)
    ax.set_xticks(x, ["trained"] + [s.unit or "" for s in steps[1:]], rotation=45, ha="right", fontsize=7)
    ax.set_ylabel("Spearman ρ vs trained")
    ax.set_ylim(-0.5, 1.05)
    ax.set_title(f"{r.model} stage {r.stage}: cascading randomisation (lines), independent (circles)", fontsize=9)
    ax.legend(fontsize=7, ncol=2, loc="lower left")
    for j, (index, maps) in enumerate(sorted(strip.items())):
        for i, n in enumerate(r.maps):
            a = fig.add_subplot(grid[1 + i, j])
            v = np.asarray(maps[n], dtype=float)
            lo, hi = np.nanmin(v), np.nanmax(v)
            a.imshow((v - lo) / (hi - lo) if hi > lo else np.zeros_like(v), cmap="magma", vmin=0, vmax=1)
            a.set_xticks([])
            a.set_yticks([])
            if j == 0:
                a.set_ylabel(n.replace("_", "\n"), fontsize=6, rotation=0, ha="right", va="center")
            if i == 0:
                a.set_title("trained" if index == 0 else (steps[index].unit or ""), fontsize=6)
    return fig
