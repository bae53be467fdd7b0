"""``cotviz profile MODEL``: exact params, MACs/FLOPs, activation memory; optional measured latency and plot.

A shell over :func:`cotviz.profile.profile_models`: options, one library call, printing. The choices come
from the library's registries (:mod:`cotviz.profile.choices`, :data:`cotviz.profile.render.RENDERERS`),
which load without torch, so ``cotviz --help`` stays fast.
"""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from cotviz.cli._common import FLAG, console, handle_errors, settle_gc
from cotviz.profile.choices import CONVENTIONS, DTYPES
from cotviz.profile.render import RENDERERS

__all__ = ["profile"]

Format = Enum("Format", {f: f for f in RENDERERS}, type=str)  # type: ignore[misc]
Convention = Enum("Convention", {c: c for c in CONVENTIONS}, type=str)  # type: ignore[misc]
Dtype = Enum("Dtype", {d: d for d in DTYPES}, type=str)  # type: ignore[misc]
_TABLE, _COMPLETE, _FLOAT32 = Format("table"), Convention("complete"), Dtype("float32")


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


@handle_errors
def profile(
    models: Annotated[list[str] | None, typer.Argument(
        help="Model names or aliases, e.g. cotnext101 (see `cotviz models`).", metavar="MODELS",
        show_default=False)] = None,
    all_models: Annotated[bool, typer.Option("--all", metavar=FLAG, help="Profile every registered model.")] = False,
    size: Annotated[int | None, typer.Option(
        metavar="S", help="Input side in pixels, at least 32. Default: each model's pretrained input size.",
        show_default=False)] = None,
    batch: Annotated[int, typer.Option(metavar="N", help="Batch size.")] = 1,
    convention: Annotated[Convention, typer.Option(  # type: ignore[valid-type]
        metavar="NAME", show_choices=False, case_sensitive=False,
        help="complete: every op counted; official: the official counter's rules and quirks (reproduces the "
             "README table).")] = _COMPLETE,
    depth: Annotated[int | None, typer.Option(
        metavar="N", help="Also list modules down to this path depth (2 = blocks, 3 = block parts, ...).",
        show_default=False)] = None,
    fmt: Annotated[Format, typer.Option(  # type: ignore[valid-type]
        "--format", metavar="FMT", show_choices=False, case_sensitive=False,
        help=f"Output format: {', '.join(RENDERERS)}.")] = _TABLE,
    out: Annotated[Path | None, typer.Option(
        metavar="FILE", help="Write the output to this file instead of stdout.", show_default=False)] = None,
    measure: Annotated[bool, typer.Option(
        "--measure", metavar=FLAG, help="Also measure real latency and peak memory.")] = False,
    device: Annotated[str, typer.Option(
        metavar="DEV", help="Device for --measure / --plot: cpu, cuda or cuda:N.")] = "cpu",
    dtype: Annotated[Dtype, typer.Option(  # type: ignore[valid-type]
        metavar="NAME", show_choices=False, case_sensitive=False,
        help=f"Activation and weight dtype (memory estimate and measurement): {', '.join(DTYPES)}.")] = _FLOAT32,
    channels_last: Annotated[bool, typer.Option(
        "--channels-last", metavar=FLAG, help="Measure in channels-last memory format.")] = False,
    warmup: Annotated[int, typer.Option(metavar="N", help="Untimed warm-up forwards.")] = 3,
    repeats: Annotated[int, typer.Option(metavar="N", help="Timed forwards (median and quartiles reported).")] = 10,
    threads: Annotated[int | None, typer.Option(
        metavar="N", help="CPU threads while measuring, at most the CPUs this process may use. Default: torch's.",
        show_default=False)] = None,
    no_memory_check: Annotated[bool, typer.Option(
        "--no-memory-check", metavar=FLAG,
        help="Measure even if the counted forward memory exceeds the memory available (refused by default).")] = False,
    plot: Annotated[Path | None, typer.Option(
        metavar="FILE", help="Save the measured-latency vs published top-1 chart (png/svg/pdf); implies --measure.",
        show_default=False)] = None,
) -> None:
    """Count parameters, MACs/FLOPs (FLOPs = 2 x MACs) and activation memory on the meta device;
    optionally measure latency and plot latency against published accuracy."""
    from cotviz.errors import InvalidArgumentError
    from cotviz.profile import MeasureOptions, profile_models, render_table
    from cotviz.profile.plot import check_figure_path, plot_reports, save_plot

    settle_gc()
    if not models and not all_models:
        raise InvalidArgumentError("give at least one model name or --all (see `cotviz models`)")
    _check_writable(out, "--out")
    if plot is not None:
        check_figure_path(plot)
    options = MeasureOptions(device, channels_last, warmup, repeats, threads) if measure or plot else None
    reports = profile_models(None if all_models else models, size=size, batch=batch, convention=convention.value,
                             depth=depth, dtype=dtype.value, measure=options, memory_check=not no_memory_check)
    if plot is not None:
        fig, skipped = plot_reports(reports)
        if skipped:
            print(f"plot: no published top-1 for {', '.join(skipped)}; not plotted", file=sys.stderr)
        print(f"wrote {save_plot(fig, plot)}", file=sys.stderr)
    if fmt.value == "table" and out is None:
        render_table(reports, console())
        return
    text = RENDERERS[fmt.value](reports)
    if out is not None:
        _write(text, out)
    else:
        sys.stdout.write(text)
