"""A comparison as a rich table, JSON, CSV or paper-ready markdown (numbers are formatted here, at the edge)."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from typing import Any

from cotviz.compare.runner import CompareRow, Comparison

__all__ = ["RENDERERS", "render_comparison", "render_csv", "render_json", "render_markdown", "table_rows"]


def _m(n: int) -> str:
    return f"{n / 1e6:.2f}"


def _g(n: int) -> str:
    return f"{n / 1e9:.3f}"


def _mib(n: int | None) -> str:
    return "–" if n is None else f"{n / 2**20:.0f}"


def _header(c: Comparison) -> list[str]:
    head = ["operator", "params M", "GMACs", "GMACs official", "act. MiB"]
    for t in c.rows[0].timings if c.rows else []:
        head += [f"ms b{t.batch}", f"× b{t.batch}"]
    head += ["top-1 % paper"]
    if any(r.paper is not None and r.paper.throughput is not None for r in c.rows):
        head += ["GPU img/s paper"]
    return head


def _cells(c: Comparison, r: CompareRow) -> list[str]:
    cells = [r.spec, _m(r.params), _g(r.complete.macs), _g(r.official.macs),
             _mib(r.complete.memory.activations_peak_bytes)]
    for t in r.timings:
        cells += [f"{t.median_ms:.1f} [{t.q1_ms:.1f}–{t.q3_ms:.1f}]", f"{t.ratio:.2f}"]
    cells.append("–" if r.paper is None else f"{r.paper.top1:.1f}")
    if any(x.paper is not None and x.paper.throughput is not None for x in c.rows):
        cells.append("–" if r.paper is None or r.paper.throughput is None else f"{r.paper.throughput:.0f}")
    return cells


def table_rows(c: Comparison) -> tuple[list[str], list[list[str]]]:
    """Header and formatted cells (one row per operator)."""
    return _header(c), [_cells(c, r) for r in c.rows]


def _notes(c: Comparison) -> list[str]:
    notes = [f"{c.skeleton} skeleton at {c.size} px, counted at batch {c.batch} on the meta device; "
             "GMACs = 1e9 multiply-accumulates under the complete convention (every op; FLOPs = 2 x MACs; the "
             "paper's GFLOPs are GMACs); act. MiB = peak live activations of one forward."]
    skipped = sorted({u.op for r in c.rows for u in r.official.uncounted})
    if skipped:
        notes.append("official convention (the official counter's rules) counts leaf modules only and skips: "
                     + ", ".join(skipped))
    if c.measure:
        notes.append(f"ms bN: latency per batch of N, median [quartiles] of {c.measure['repeats']} rounds, rows "
                     "interleaved; × bN: ratio to the first row; "
                     f"{c.measure['threads']} thread(s) on {c.measure['device']}; random weights (latency does "
                     "not depend on them)")
    if c.rows and any(r.paper is not None for r in c.rows):
        notes.append("top-1 % paper: ImageNet, CoTNet-50 skeleton, Li et al., TPAMI 2023, Tables 5-7; GPU img/s "
                     "paper: Table 7's inference throughput at batch 64; '–' where the paper has no such row")
    return notes


def render_json(c: Comparison) -> str:
    from cotviz.io.outputs import json_text

    return json_text({**c.to_dict(), "notes": _notes(c)})


def render_csv(c: Comparison) -> str:
    """Tidy CSV: one line per (operator, quantity)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["operator", "quantity", "value", "unit"])
    for r in c.rows:
        w.writerow([r.spec, "params", r.params, "parameters"])
        w.writerow([r.spec, "macs_complete", r.complete.macs, "MACs"])
        w.writerow([r.spec, "macs_official", r.official.macs, "MACs"])
        w.writerow([r.spec, "activations_peak", r.complete.memory.activations_peak_bytes, "bytes"])
        for op in r.complete.operators:
            w.writerow([r.spec, f"macs_complete[{op.type}]", op.macs, "MACs"])
        for t in r.timings:
            w.writerow([r.spec, f"latency_median_b{t.batch}", f"{t.median_ms:.4f}", "ms"])
            w.writerow([r.spec, f"latency_ratio_b{t.batch}", f"{t.ratio:.4f}", "x first row"])
        if r.paper is not None:
            w.writerow([r.spec, "paper_top1", r.paper.top1, "%"])
            if r.paper.throughput is not None:
                w.writerow([r.spec, "paper_gpu_throughput_b64", r.paper.throughput, "images/s"])
    return buf.getvalue()


def render_markdown(c: Comparison) -> str:
    """A table a user can paste into a paper or README, with its notes."""
    head, rows = table_rows(c)
    from cotviz.io.outputs import markdown_table

    table = markdown_table(head, [[f"`{row[0]}`", *row[1:]] for row in rows])
    return table + "\n\n" + "\n".join(f"- {n}" for n in _notes(c)) + "\n"


def render_table(c: Comparison, console: Any) -> None:
    """A rich table on ``console``."""
    from rich.table import Table

    head, rows = table_rows(c)
    table = Table(title=f"cotviz compare · {c.skeleton} @ {c.size} px", title_justify="left")
    for i, h in enumerate(head):
        table.add_column(h, justify="left" if i == 0 else "right", no_wrap=i == 0)
    for row in rows:
        table.add_row(*row)
    console.print(table)
    for n in _notes(c):
        console.print(f"[dim]{n}[/dim]")


#: ``--format`` name -> renderer returning text (the table renders on a console instead).
RENDERERS: dict[str, Callable[[Comparison], str]] = {"json": render_json, "csv": render_csv,
                                                     "markdown": render_markdown}


def render_comparison(c: Comparison, fmt: str) -> str:
    return RENDERERS[fmt](c)
