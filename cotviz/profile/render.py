"""Render profile reports as JSON, CSV (tidy: one value per row, with its unit), markdown or rich tables.

One report renders in full; several (``--all``) render as JSON / CSV in full and as one summary row per
model in markdown and tables. Tables are built from the report's numbers (ints stay ints) and each
renderer formats them at the edge: exact with thousands separators in markdown, compact (``1.104 G``) in
terminal tables. :data:`RENDERERS` is the registry of output formats (``cotviz profile --format``).
Importing this module does not import torch.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cotviz.profile.report import ProfileReport, Row

__all__ = ["CSV_HEADER", "RENDERERS", "render_csv", "render_json", "render_markdown", "render_reports",
           "render_table", "render_text"]

#: A table cell: an exact count (formatted by the renderer) or text.
Cell = int | str

CSV_HEADER: tuple[str, ...] = ("model", "size", "batch", "convention", "section", "name", "quantity", "value", "unit")


# ------------------------------------------------------------------------------------------- numbers

def _int(n: int) -> str:
    return f"{n:,}"


def _si(n: float, unit: str = "") -> str:
    for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= scale:
            return f"{n / scale:.3f} {prefix}{unit}"
    return f"{n:g} {unit}".strip()


def _bytes(n: int | None) -> str:
    if n is None:
        return "n/a"
    for scale, unit in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n} B"


def _share(part: int, total: int) -> str:
    return f"{100.0 * part / total:.2f}%" if total else "-"


# ------------------------------------------------------------------------------------------- json

def render_json(reports: Sequence[ProfileReport]) -> str:
    """One report -> a JSON object; several -> a JSON list of objects (cotviz's one JSON encoder,
    :func:`cotviz.io.outputs.json_text`)."""
    from cotviz.io.outputs import json_text

    data: Any = reports[0].to_dict() if len(reports) == 1 else [r.to_dict() for r in reports]
    return json_text(data)


# ------------------------------------------------------------------------------------------- csv

def _csv_rows(r: ProfileReport) -> Iterator[tuple[str, str, str, Any, str]]:
    """(section, name, quantity, value, unit) rows of one report."""
    yield "total", r.model, "params", r.params, "count"
    yield "total", r.model, "buffers", r.buffers, "count"
    yield "total", r.model, "macs", r.macs, "MAC"
    yield "total", r.model, "flops", r.flops, "FLOP"
    other = r.other_convention
    yield "other_convention", other["convention"], "macs", other["macs"], "MAC"
    for section, rows in (("stage", r.stages), ("block", r.blocks), ("module", r.modules or [])):
        for row in rows:
            yield section, row.name, "params", row.params, "count"
            yield section, row.name, "macs", row.macs, "MAC"
            yield section, row.name, "flops", row.flops, "FLOP"
            yield section, row.name, "activation_bytes", row.activation_bytes, "byte"
    for op in r.operators:
        yield "operator", op.type, "macs", op.macs, "MAC"
        yield "operator", op.type, "flops", op.flops, "FLOP"
        yield "operator", op.type, "calls", op.calls, "count"
    for u in r.uncounted:
        name = f"{u.op} in {u.module_type}"
        yield "uncounted", name, "calls", u.calls, "count"
        if u.macs_complete is not None:
            yield "uncounted", name, "macs_complete", u.macs_complete, "MAC"
    for mtype, macs in r.module_types.items():
        yield "module_type", mtype, "macs", macs, "MAC"
    m = r.memory
    yield "memory", "input", "bytes", m.input_bytes, "byte"
    yield "memory", "output", "bytes", m.output_bytes, "byte"
    yield "memory", "activations_total", "bytes", m.activations_total_bytes, "byte"
    yield "memory", "activations_peak", "bytes", m.activations_peak_bytes, "byte"
    for dtype, n in m.weights_bytes.items():
        yield "memory", f"weights_{dtype}", "bytes", n, "byte"
    yield "memory", "buffers", "bytes", m.buffers_bytes, "byte"
    if r.measure is not None:
        ms = r.measure
        for key in ("median", "q1", "q3", "min", "max"):
            yield "measure", key, "latency", getattr(ms, f"{key}_ms"), "ms"
        yield "measure", "threads", "threads", ms.threads, "count"
        yield "measure", "repeats", "repeats", ms.repeats, "count"
        if ms.peak_memory_bytes is not None:
            yield "measure", "peak_memory", "bytes", ms.peak_memory_bytes, "byte"


def render_csv(reports: Sequence[ProfileReport]) -> str:
    """Tidy CSV: ``model,size,batch,convention,section,name,quantity,value,unit``, one value per row."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_HEADER)
    for r in reports:
        for section, name, quantity, value, unit in _csv_rows(r):
            writer.writerow((r.model, r.size, r.batch, r.convention, section, name, quantity, value, unit))
    return buf.getvalue()


# ------------------------------------------------------------------------------------------- shared tables

def _summary(r: ProfileReport) -> list[tuple[str, str]]:
    other = r.other_convention
    rows = [
        ("input", f"{r.batch} x 3 x {r.size} x {r.size} ({r.memory.dtype})"),
        ("convention", r.convention),
        ("params", f"{_int(r.params)} ({_si(r.params)})"),
        ("MACs", f"{_int(r.macs)} ({_si(r.macs, 'MAC')})"),
        ("FLOPs (= 2 x MACs)", f"{_int(r.flops)} ({_si(r.flops, 'FLOP')})"),
        (f"MACs, {other['convention']} convention", f"{_int(other['macs'])} ({_si(other['macs'], 'MAC')})"),
        ("activations, peak (estimate)", f"{_bytes(r.memory.activations_peak_bytes)} (at {r.memory.peak_module})"),
        ("activations, all tensors", _bytes(r.memory.activations_total_bytes)),
        ("weights fp32 / fp16 / int8", " / ".join(_bytes(r.memory.weights_bytes[k])
                                                  for k in ("float32", "float16", "int8"))),
    ]
    if r.measure is not None:
        ms = r.measure
        rows += [
            ("latency median [q1, q3] (ms)", f"{ms.median_ms:.2f} [{ms.q1_ms:.2f}, {ms.q3_ms:.2f}] on "
                                              f"{ms.device}, {ms.threads} threads, {ms.dtype}"
                                              f"{', channels-last' if ms.channels_last else ''}"),
            ("latency min / max (ms)", f"{ms.min_ms:.2f} / {ms.max_ms:.2f} ({ms.repeats} repeats, "
                                       f"{ms.warmup} warm-up)"),
            ("peak memory, measured", _bytes(ms.peak_memory_bytes)),
        ]
    return rows


_PART_COLS = ("params", "MACs", "FLOPs", "activation bytes")


def _part_cells(row: Row) -> list[Cell]:
    return [row.params, row.macs, row.flops, row.activation_bytes]


def _sections(r: ProfileReport) -> list[tuple[str, list[str], list[list[Cell]]]]:
    """(title, header, rows) of every table of a full report; counts stay ints."""
    out: list[tuple[str, list[str], list[list[Cell]]]] = [
        ("Stages", ["stage", "type", *_PART_COLS], [[s.name, s.type, *_part_cells(s)] for s in r.stages])]
    out.append(("Operators", ["operator", "MACs", "FLOPs", "calls", "share"],
                [[o.type, o.macs, o.flops, o.calls, _share(o.macs, r.macs)] for o in r.operators]))
    if r.module_types:
        out.append(("Module types (official counter)", ["module type", "MACs"],
                    [[k, v] for k, v in sorted(r.module_types.items(), key=lambda kv: -kv[1])]))
    if r.modules is not None:
        out.append((f"Modules (depth {r.depth})", ["module", "type", *_PART_COLS],
                    [[m.name, m.type, *_part_cells(m)] for m in r.modules]))
    out.append(("Uncounted", ["op", "module type", "calls", "MACs (complete)", "reason"],
                [[u.op, u.module_type, u.calls, "no rule" if u.macs_complete is None else u.macs_complete, u.reason]
                 for u in r.uncounted] or [["(none)", "-", 0, 0, "every op is counted"]]))
    return out


def _overview(reports: Sequence[ProfileReport]) -> tuple[list[str], list[list[Cell]]]:
    header = ["model", "size", "batch", "convention", "params", "MACs", "GMACs", "FLOPs", "peak activations"]
    measured = any(r.measure is not None for r in reports)
    if measured:
        header.append("latency median (ms)")
    rows: list[list[Cell]] = []
    for r in reports:
        row: list[Cell] = [r.model, str(r.size), str(r.batch), r.convention, r.params, r.macs,
                           f"{r.macs / 1e9:.4f}", r.flops, _bytes(r.memory.activations_peak_bytes)]
        if measured:
            row.append(f"{r.measure.median_ms:.2f}" if r.measure else "-")
        rows.append(row)
    return header, rows


# ------------------------------------------------------------------------------------------- markdown

def _md_table(header: Sequence[str], rows: Sequence[Sequence[Cell]]) -> str:
    from cotviz.io.outputs import markdown_table

    # counts exact, with thousands separators
    return markdown_table(header, [[_int(c) if isinstance(c, int) else str(c) for c in row] for row in rows])


def render_markdown(reports: Sequence[ProfileReport]) -> str:
    """Markdown: one full report (summary, stages, operators, modules, uncounted, notes) or an overview."""
    if len(reports) > 1:
        header, rows = _overview(reports)
        notes = "\n".join(f"- {n}" for n in reports[0].notes[:1])
        return f"## cotviz profile ({len(reports)} models)\n\n{_md_table(header, rows)}\n\n{notes}\n"
    r = reports[0]
    parts = [f"## {r.model}: {r.size}x{r.size}, batch {r.batch}, convention `{r.convention}`",
             _md_table(["quantity", "value"], _summary(r))]
    for title, header, rows in _sections(r):
        parts += [f"### {title}", _md_table(header, rows)]
    parts += ["### Notes", "\n".join(f"- {n}" for n in r.notes)]
    return "\n\n".join(parts) + "\n"


# ------------------------------------------------------------------------------------------- rich

def _compact(n: int) -> str:
    """``1104075776`` -> ``"1.104 G"`` (M = 1e6, G = 1e9; below a million exact) so terminal tables fit;
    exact values stay in the json/csv/markdown formats."""
    if abs(n) >= 1e9:
        return f"{n / 1e9:.3f} G"
    return f"{n / 1e6:.2f} M" if abs(n) >= 1e6 else _int(n)


def render_table(reports: Sequence[ProfileReport], console: Any) -> None:
    """Rich tables on ``console``: a full report, or an overview of several models."""
    from rich.table import Table

    def table(title: str, header: Sequence[str], rows: Sequence[Sequence[Cell]], left: int = 1,
              compact: bool = True) -> Any:
        t = Table(title=title, title_justify="left")
        for i, h in enumerate(header):  # numbers never wrap mid-digit; text columns fold
            if i == 0:
                t.add_column(h, justify="left", no_wrap=True)
            elif i < left:
                t.add_column(h, justify="left", overflow="fold", min_width=10)
            else:
                t.add_column(h, justify="right", no_wrap=True)
        for row in rows:
            t.add_row(*(c if isinstance(c, str) else _compact(c) if compact else _int(c) for c in row))
        return t

    if len(reports) > 1:
        header, rows = _overview(reports)
        console.print(table("cotviz profile (MACs; FLOPs = 2 x MACs)", header, rows, left=4, compact=False))
        console.print(f"[dim]{reports[0].notes[0]}[/dim]")
        return
    r = reports[0]
    console.print(table(f"{r.model}: {r.size}x{r.size}, batch {r.batch}, convention '{r.convention}'",
                        ["quantity", "value"], _summary(r), left=2))
    for title, header, rows in _sections(r):
        left = 2 if title.startswith(("Stages", "Modules", "Uncounted")) else 1
        console.print(table(title, header, rows, left=left))
    for note in r.notes:
        console.print(f"[dim]- {note}[/dim]", highlight=False)


def render_text(reports: Sequence[ProfileReport], width: int = 140) -> str:
    """The rich tables as plain text (for ``--format table --out FILE``)."""
    from rich.console import Console

    buf = io.StringIO()
    render_table(reports, Console(file=buf, width=width, color_system=None, force_terminal=False))
    return buf.getvalue()


#: The output formats of ``cotviz profile --format``: name -> renderer of one or several reports.
RENDERERS: dict[str, Callable[[Sequence[ProfileReport]], str]] = {
    "table": render_text, "json": render_json, "csv": render_csv, "markdown": render_markdown,
}


def render_reports(reports: Sequence[ProfileReport], fmt: str) -> str:
    """``reports`` in the output format ``fmt`` (a key of :data:`RENDERERS`)."""
    from cotviz.profile.choices import check_choice

    return RENDERERS[check_choice(fmt, tuple(RENDERERS), "format")](reports)
