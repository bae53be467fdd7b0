"""``cotviz sanity``: do the maps depend on what the network learnt? (Adebayo et al. 2018 randomisation test)

A shell over :func:`cotviz.sanity.sanity`: options, the model (a checkpoint, the shipped demo weights or the
untrained demo network), one library call, printing. torch and matplotlib are imported only when the command runs.
"""

from __future__ import annotations

import sys
from contextlib import nullcontext
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from cotviz.analysis.catalog import MAP_INFO
from cotviz.cli._common import FLAG, console, err_console, handle_errors, settle_gc, write_output
from cotviz.formats import FigureFormat
from cotviz.formats import ReportFormat as Format

__all__ = ["sanity"]

#: ``--map`` choices, from the map registry.
MapName = Enum("MapName", {n: n for n in MAP_INFO}, type=str)  # type: ignore[misc]


class ModeChoice(str, Enum):
    both = "both"
    cascading = "cascading"
    independent = "independent"


@handle_errors
def sanity(
    images: Annotated[list[str], typer.Argument(metavar="IMAGES...", help="Image files, directories or globs.")],
    model: Annotated[str, typer.Option("--model", "-m", metavar="NAME", help="Registered model name.")] = "cotnet_demo",
    weights: Annotated[str | None, typer.Option(
        "--weights", "-w", metavar="FILE", help="Checkpoint to load, or 'demo' for the shipped demo weights. "
                                                "Default: the untrained demo network.", show_default=False)] = None,
    num_classes: Annotated[int | None, typer.Option("--num-classes", metavar="N", help="Classes of the checkpoint.",
                                                    show_default=False)] = None,
    stage: Annotated[int, typer.Option("--stage", metavar="N", help="Stage of the maps (1-4).")] = 3,
    maps: Annotated[list[MapName] | None, typer.Option(  # type: ignore[valid-type]
        "--map", metavar="NAME", show_choices=False, show_default=False,
        help=f"Map type to compare; repeat for several: {', '.join(MAP_INFO)}. Default: all.")] = None,
    gradcam: Annotated[bool, typer.Option("--gradcam/--no-gradcam", help="Also compare Grad-CAM.")] = True,
    mode: Annotated[ModeChoice, typer.Option("--mode", help="Randomisation: cascading, independent or both.")]
    = ModeChoice.both,
    threshold: Annotated[float, typer.Option(
        "--threshold", metavar="RHO", help="Flag a map whose mean Spearman ρ stays above this after randomising "
                                           "down to its stage.")] = 0.5,
    strict: Annotated[bool, typer.Option("--strict", metavar=FLAG,
                                         help="Exit with code 3 when a map is flagged.")] = False,
    seed: Annotated[int, typer.Option("--seed", metavar="N", help="Seed of the re-initialisation.")] = 1,
    batch_size: Annotated[int, typer.Option("--batch-size", metavar="N", help="Images per forward pass.")] = 8,
    fmt: Annotated[Format, typer.Option("--format", help="Output format.")] = Format.table,
    out: Annotated[Path | None, typer.Option("--out", metavar="FILE", help="Write the output to this file.",
                                             show_default=False)] = None,
    figure: Annotated[Path | None, typer.Option(
        "--figure", metavar="FILE", help="Write the figure (curve + strip of the first image's maps).",
        show_default=False)] = None,
    fig_format: Annotated[FigureFormat, typer.Option("--fig-format", help="Figure format.")] = FigureFormat.png,
    localise: Annotated[bool, typer.Option(
        "--localisation", metavar=FLAG, help="Instead: localisation against masks (IMAGE.mask.png beside each image) "
                                             "for the model, the same architecture untrained, and the model fully "
                                             "randomised; every stage.")] = False,
) -> None:
    """Randomise the weights from the logits down and measure how much each map changes (Spearman ρ)."""
    import warnings

    from cotviz.errors import InvalidArgumentError, OutputError
    from cotviz.models.untrained import load_model
    from cotviz.sanity import RENDERERS, render_table
    from cotviz.sanity import sanity as run_sanity

    settle_gc()
    for path in (out, figure):
        if path is not None and not path.parent.is_dir():
            raise OutputError(f"{path}: directory {path.parent} does not exist")
    if num_classes is not None and num_classes < 1:
        raise InvalidArgumentError(f"--num-classes must be at least 1, got {num_classes}")
    if weights is None:
        warnings.warn(f"no weights given: randomising an UNTRAINED {model} (pass --weights)", UserWarning, stacklevel=1)
    if localise:
        _localisation(images, model, weights, [m.value for m in maps] if maps else None, gradcam, seed, batch_size,
                      fmt, out)
        return
    loaded = load_model(model, weights, num_classes=num_classes)
    modes: Any = ("cascading", "independent") if mode is ModeChoice.both else (mode.value,)
    names = [m.value for m in maps] if maps else None
    show = fmt is Format.table and out is None and sys.stderr.isatty()
    bar: Any = None
    if show:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                       console=err_console(), transient=True)
        task = bar.add_task("randomising", total=None)
    with bar if bar is not None else nullcontext():
        def progress(m: str, step: int, steps: int) -> None:
            if bar is not None:
                bar.update(task, description=f"{m} randomisation", completed=step - 1, total=steps)

        result = run_sanity(loaded, images, stage=stage, maps=names, gradcam=gradcam, modes=modes,
                            batch_size=batch_size, threshold=threshold, seed=seed, examples=figure is not None,
                            progress=progress)
    if figure is not None:
        from cotviz.io.outputs import save_figure
        from cotviz.sanity import sanity_figure

        save_figure(sanity_figure(result), figure, fig_format.value)
        print(f"wrote {figure}", file=sys.stderr)
    if fmt is Format.table and out is None:
        render_table(result, console())
    else:
        write_output(RENDERERS["markdown" if fmt is Format.table else fmt.value](result), out)
    if strict and result.insensitive:
        print(f"insensitive to the weights: {', '.join(result.insensitive)}", file=sys.stderr)
        raise typer.Exit(3)


def _localisation(images: list[str], model: str, weights: str | None, maps: list[str] | None, gradcam: bool,
                  seed: int, batch_size: int, fmt: Format, out: Path | None) -> None:
    from cotviz.sanity.localisation import (
        baselines,
        localisation,
        localisation_note,
        localisation_rows,
        masked_inputs,
        render_localisation,
    )

    masked_inputs(images)  # a missing mask is reported before any network is built
    result = localisation(baselines(model, weights, seed=seed), images, maps=maps, gradcam=gradcam,
                          batch_size=batch_size)
    if fmt is Format.table and out is None:
        from rich.table import Table

        head, rows = localisation_rows(result)
        table = Table(title=f"cotviz sanity --localisation: {model}")
        for i, h in enumerate(head):
            table.add_column(h, justify="right" if i >= 2 else "left")
        for row in rows:
            table.add_row(*row)
        console().print(table)
        console().print(localisation_note(result), highlight=False)
        return
    write_output(render_localisation(result, "markdown" if fmt is Format.table else fmt.value), out)
