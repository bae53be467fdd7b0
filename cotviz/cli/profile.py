"""``cotviz profile MODEL``: exact params, MACs/FLOPs, activation memory; optional measured latency and plot."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from cotviz.cli._common import OutputFormat, console, handle_errors, settle_gc


def _choice(value: str, choices: tuple[str, ...], option: str) -> str:
    from cotviz.errors import InvalidArgumentError

    v = value.strip().lower()
    if v not in choices:
        raise InvalidArgumentError(f"unknown {option} {value!r}; choose one of {', '.join(choices)}")
    return v


def _names(models: list[str] | None, all_models: bool) -> list[str]:
    from cotviz.errors import InvalidArgumentError
    from cotviz.models.registry import list_models, resolve_name

    if all_models:
        return list_models()
    if not models:
        raise InvalidArgumentError("give at least one model name or --all (see `cotviz models`)")
    return list(dict.fromkeys(resolve_name(m) for m in models))  # canonical, de-duplicated, in order


def _check_writable(path: Path | None, option: str) -> None:
    """Fail before any slow work if the output's directory does not exist."""
    from cotviz.errors import OutputError

    if path is not None and not path.parent.is_dir():
        raise OutputError(f"{option} {path}: directory {path.parent} does not exist")


def _write(text: str, out: Path) -> None:
    from cotviz.errors import OutputError

    try:
        out.write_text(text)
    except OSError as err:
        raise OutputError(f"--out {out}: cannot write ({err.strerror or err})") from None
    print(f"wrote {out}", file=sys.stderr)


def _plot(reports: list[Any], measures: dict[str, Any], path: Path) -> None:
    from cotviz.profile.api import accuracy_point
    from cotviz.profile.plot import plot_latency_vs_accuracy, save_figure

    points = [p for r in reports if (p := accuracy_point(r.model, measures[r.model])) is not None]
    skipped = [r.model for r in reports if r.model not in {p.model for p in points}]
    if skipped:
        print(f"plot: no published top-1 for {', '.join(skipped)}; not plotted", file=sys.stderr)
    m = next(iter(measures.values()))
    title = (f"CoTNet variants: measured latency vs published ImageNet top-1\n{m.device_name}, {m.device}, "
             f"{m.threads} threads, batch {m.batch}, {m.dtype}{', channels-last' if m.channels_last else ''}, "
             f"median of {m.repeats}")
    fig = plot_latency_vs_accuracy(points, title=title)
    print(f"wrote {save_figure(fig, path)}", file=sys.stderr)


@handle_errors
def profile(
    models: Annotated[list[str] | None, typer.Argument(help="Model names or aliases, e.g. cotnext101.")] = None,
    all_models: Annotated[bool, typer.Option("--all", help="Profile every registered model.")] = False,
    size: Annotated[int | None, typer.Option(
        help="Input side in pixels (default: each model's pretrained input size).")] = None,
    batch: Annotated[int, typer.Option(help="Batch size.")] = 1,
    convention: Annotated[str, typer.Option(
        help="complete: every op counted; official: the official counter's rules and quirks "
             "(reproduces the README table).")] = "complete",
    depth: Annotated[int | None, typer.Option(
        help="Also list modules down to this path depth (2 = blocks, 3 = block parts, ...).")] = None,
    fmt: Annotated[str, typer.Option("--format", help="table, json, csv or markdown.")] = "table",
    out: Annotated[Path | None, typer.Option(help="Write the output to this file instead of stdout.")] = None,
    measure: Annotated[bool, typer.Option(help="Also measure real latency and peak memory.")] = False,
    device: Annotated[str, typer.Option(help="Device for --measure / --plot: cpu or cuda.")] = "cpu",
    dtype: Annotated[str, typer.Option(help="float32, float16 or bfloat16 (measurement and memory).")] = "float32",
    channels_last: Annotated[bool, typer.Option(help="Measure in channels-last memory format.")] = False,
    warmup: Annotated[int, typer.Option(help="Untimed warm-up forwards.")] = 3,
    repeats: Annotated[int, typer.Option(help="Timed forwards (median and quartiles reported).")] = 10,
    threads: Annotated[int | None, typer.Option(help="CPU threads while measuring (default: torch's).")] = None,
    plot: Annotated[Path | None, typer.Option(
        help="Save the measured-latency vs published top-1 chart (png/svg/pdf); implies --measure.")] = None,
) -> None:
    """Count parameters, MACs/FLOPs (FLOPs = 2 x MACs) and activation memory on the meta device;
    optionally measure latency and plot latency against published accuracy."""
    from cotviz.errors import InvalidArgumentError
    from cotviz.profile.api import profile_model
    from cotviz.profile.measure import measure_model, parse_device, parse_dtype
    from cotviz.profile.render import render_csv, render_json, render_markdown, render_table, render_text
    from cotviz.profile.report import CONVENTIONS

    settle_gc()
    output = OutputFormat(_choice(fmt, tuple(f.value for f in OutputFormat), "format"))
    conv = _choice(convention, CONVENTIONS, "convention")
    parse_dtype(dtype)
    if measure or plot is not None:
        parse_device(device)
        if warmup < 0 or repeats < 1:
            raise InvalidArgumentError(f"need --warmup >= 0 and --repeats >= 1, got {warmup} and {repeats}")
    _check_writable(out, "--out")
    if plot is not None:
        from cotviz.profile.plot import check_figure_path

        check_figure_path(plot)
    names = _names(models, all_models)

    reports, measures = [], {}
    for name in names:
        report = profile_model(name, size=size, batch=batch, convention=conv, depth=depth, dtype=dtype)
        if measure or plot is not None:
            m = measure_model(name, size=report.size, batch=batch, device=device, dtype=dtype,
                              channels_last=channels_last, warmup=warmup, repeats=repeats, threads=threads)
            report.measure = m.to_dict()
            measures[name] = m
        reports.append(report)
    if plot is not None:
        _plot(reports, measures, plot)

    if output is OutputFormat.table:
        if out is not None:
            _write(render_text(reports), out)
        else:
            render_table(reports, console())
        return
    text = {OutputFormat.json: render_json, OutputFormat.csv: render_csv,
            OutputFormat.markdown: render_markdown}[output](reports)
    if out is not None:
        _write(text, out)
    else:
        sys.stdout.write(text)
