"""``cotviz stats DATA``: CoT statistics over a whole dataset, streaming, resumable, distributed with torchrun.

A shell over :func:`cotviz.stats.compute_stats`: options, one library call, printing (rank 0 only under
``torchrun --nproc_per_node N -m cotviz stats ...``). torch and matplotlib are imported only when the command runs.
"""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from cotviz.cli._common import FLAG, err_console, handle_errors, print_json, settle_gc
from cotviz.cli._options import Device
from cotviz.formats import FigureFormat
from cotviz.stats.catalog import STAT_INFO, parse_stat_names

__all__ = ["stats"]

#: Every quantity ``--maps`` accepts (the catalog imports no torch).
STAT_NAMES = tuple(STAT_INFO)


class DType(str, Enum):
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


class _Bar:
    """A rich progress bar on stderr with images/s and ETA (rank 0, a TTY); unreadable files as lines above it."""

    def __init__(self, enabled: bool) -> None:
        self.progress: Any = None
        self.task: Any = None
        self.enabled = enabled

    def __call__(self, p: Any) -> None:
        for message in p.skipped:
            self._print(f"skipped: {message}")
        if not self.enabled or p.rank != 0:
            return
        if self.progress is None:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.progress = Progress(TextColumn("[progress.description]{task.description}"), BarColumn(),
                                     MofNCompleteColumn(), TextColumn("{task.fields[rate]}"),
                                     TextColumn("ETA {task.fields[eta]}"), TimeElapsedColumn(),
                                     console=err_console(), transient=True)
            where = f" (rank 0 of {p.world_size})" if p.world_size > 1 else ""
            self.task = self.progress.add_task(f"stats{where}", total=p.total, rate="", eta="–")
            self.progress.start()
        fresh = p.done - p.resumed
        rate = fresh / p.seconds if p.seconds > 0 else 0.0
        eta = (p.total - p.done) / rate if rate > 0 else None
        self.progress.update(self.task, completed=p.done, rate=f"{rate:.1f} images/s",
                             eta="–" if eta is None else f"{int(eta // 60)}:{int(eta % 60):02d}")

    def _print(self, text: str) -> None:
        if self.progress is not None:
            self.progress.console.print(text, markup=False, highlight=False)
        else:
            print(text, file=sys.stderr)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()


@handle_errors
def stats(
    data: Annotated[str, typer.Argument(
        metavar="DATA", help="A folder (searched recursively; class folders for --by-class), a glob pattern "
                             "(quoted), or a list file with one image path per line.", show_default=False)],
    model: Annotated[str, typer.Option("--model", metavar="NAME",
                                       help="Model name or alias (see `cotviz models`).")] = "cotnet50",
    weights: Annotated[str | None, typer.Option(
        "--weights", metavar="FILE", help="Checkpoint to load (loaded safely), or 'demo' for a demo model's "
                                          "shipped weights. Without it: untrained random weights.",
        show_default=False)] = None,
    num_classes: Annotated[int | None, typer.Option("--num-classes", metavar="N", help="Classes of the checkpoint.",
                                                    show_default=False)] = None,
    stages: Annotated[str | None, typer.Option(
        "--stages", metavar="S", help="Stages, e.g. 1-4, 3 or 2,4. Default: all.", show_default=False)] = None,
    maps: Annotated[list[str] | None, typer.Option(
        "--maps", metavar="NAMES", help=f"Quantities, comma-separated or repeated: {', '.join(STAT_NAMES)}. "
                                        "Default: all.", show_default=False)] = None,
    by_class: Annotated[bool, typer.Option(
        "--by-class", metavar=FLAG, help="Also per class: the first-level folder under DATA (head 'all').")] = False,
    size: Annotated[int | None, typer.Option(
        "--size", metavar="S", help="Model input side S in pixels. Default: the model's pretrained size.",
        show_default=False)] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", metavar="N", help="Images per forward pass.")] = 16,
    workers: Annotated[int | None, typer.Option(
        "--workers", metavar="N", help="Decoding processes (DataLoader workers); 0 decodes in process. Default: "
                                       "from the CPU count.", show_default=False)] = None,
    device: Annotated[Device, typer.Option("--device", help="Where the model runs (under torchrun: "
                                                             "cuda:LOCAL_RANK).")] = Device.cpu,
    dtype: Annotated[DType | None, typer.Option(
        "--dtype", metavar="DTYPE", show_choices=False, show_default=False,
        help="Forward dtype: float32, bfloat16 or float16. Default: the model's.")] = None,
    threads: Annotated[int | None, typer.Option(
        "--threads", metavar="N", help="torch threads per process. Default: the usable CPUs divided by the "
                                       "processes on this node.", show_default=False)] = None,
    checkpoint_every: Annotated[int | None, typer.Option(
        "--checkpoint-every", metavar="N", help="Checkpoint every N images (per process) under OUT/checkpoints.",
        show_default=False)] = None,
    resume: Annotated[bool, typer.Option(
        "--resume", metavar=FLAG, help="Continue from the checkpoints in OUT (same options and data).")] = False,
    bins: Annotated[int, typer.Option("--bins", metavar="N", help="Histogram bins per series.")] = 64,
    figure_stage: Annotated[int | None, typer.Option(
        "--figure-stage", metavar="N", help="Stage of the per-head figure. Default: 3 if selected, else the "
                                            "last selected.", show_default=False)] = None,
    fmt: Annotated[FigureFormat, typer.Option("--format", help="Figure format.")] = FigureFormat.png,
    no_figures: Annotated[bool, typer.Option("--no-figures", metavar=FLAG,
                                             help="Write the numbers only (no figures).")] = False,
    out: Annotated[Path, typer.Option("--out", "-o", metavar="DIR", help="Output directory.")] = Path("stats"),
    json_out: Annotated[bool, typer.Option("--json", metavar=FLAG,
                                           help="Print a machine-readable summary on stdout.")] = False,
) -> None:
    """Statistics of the CoT maps over a dataset: per stage, block, head and map.

    Writes stats.json, stats.csv, summary.md, histograms.npz and figures to OUT. Runs data-parallel under
    `torchrun --nproc_per_node N -m cotviz stats ...`.
    """
    from cotviz.errors import InvalidArgumentError
    from cotviz.resources import check_threads, torch_threads, usable_cpus

    check_threads(threads)
    names = parse_stat_names(maps)  # before anything heavy
    if figure_stage is not None and not 1 <= figure_stage <= 4:
        raise InvalidArgumentError(f"--figure-stage must be a stage 1..4, got {figure_stage}")
    from cotviz.stats import compute_stats
    from cotviz.stats.distributed import world_from_env

    settle_gc()
    world = world_from_env()
    bar = _Bar(enabled=not json_out and sys.stderr.isatty())
    try:
        # default: the usable CPUs shared by the processes of this node (torchrun's LOCAL_WORLD_SIZE)
        with torch_threads(threads or max(1, usable_cpus() // world.local_size)):
            result = compute_stats(model, data, weights=weights, num_classes=num_classes, stages=stages, maps=names,
                                   by_class=by_class, batch_size=batch_size, workers=workers, device=device.value,
                                   dtype=None if dtype is None else dtype.value, checkpoint_every=checkpoint_every,
                                   resume=resume, out=out, bins=bins, figure_stage=figure_stage,
                                   preprocess=None if size is None else {"size": size},
                                   figures=not no_figures, figure_format=fmt.value, progress=bar)
    finally:
        bar.close()
    if world.rank != 0:
        return
    run = result.run
    if json_out:
        from cotviz.stats.outputs import output_files

        files = output_files(out, result, figure_stage=figure_stage, fmt=fmt.value, figures=not no_figures)
        print_json({"out_dir": str(out), "files": files, "model": result.model, "data": result.data, "run": run,
                    "failures": result.failures})
        return
    note = f"; {run['failed']} unreadable file(s) skipped (listed in stats.json)" if run["failed"] else ""
    print(f"wrote stats of {run['images']} images ({len(result.layout)} series) to {out}{note}", file=sys.stderr)

