"""``cotviz compare --blocks cot,sa,conv``: one skeleton, the 3x3 slot filled by each operator in turn.

A shell over :func:`cotviz.compare.compare` (and :func:`cotviz.compare.compare_maps` for ``--image``): options,
one library call, printing. torch is imported only when the command runs.
"""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from cotviz.cli._common import FLAG, console, handle_errors, settle_gc, write_output
from cotviz.formats import FigureFormat
from cotviz.formats import ReportFormat as Format

__all__ = ["compare", "split_specs"]


class Paper(str, Enum):
    table5 = "table5"
    table6 = "table6"
    table7 = "table7"


def split_specs(values: list[str] | None) -> list[str]:
    """``--blocks cot,sa:kernel=7,conv`` (repeatable) -> ``["cot", "sa:kernel=7", "conv"]``.

    A comma separates operators unless what follows is another ``opt=value`` of the same operator
    (``cot:kernel=5,key_kernel=3,sa`` -> ``["cot:kernel=5,key_kernel=3", "sa"]``).
    """
    specs: list[str] = []
    for value in values or ():
        for part in (p.strip() for p in value.split(",")):
            if not part:
                continue
            if specs and "=" in part and ":" not in part and ":" in specs[-1] and "@" not in specs[-1]:
                specs[-1] = f"{specs[-1]},{part}"
            else:
                specs.append(part)
    return specs


def _weights(values: list[str] | None) -> dict[str, Path]:
    from cotviz.errors import InvalidArgumentError

    out: dict[str, Path] = {}
    for v in values or ():
        spec, sep, path = v.rpartition("=")
        if not sep or not spec or not path:
            raise InvalidArgumentError(f"--weights takes SPEC=FILE (e.g. cot=cotnet50.pth.tar), got {v!r}")
        out[spec] = Path(path)
    return out


@handle_errors
def compare(
    blocks: Annotated[list[str] | None, typer.Option(
        "--blocks", metavar="SPECS", help="Operators, comma-separated or repeated: NAME[:opt=value,...][@stages], "
                                          "e.g. cot,sa:kernel=7,conv or cot@4.", show_default=False)] = None,
    paper: Annotated[Paper | None, typer.Option(
        "--paper", help="The rows of the paper's Table 5 (context), 6 (kernel size) or 7 (stages), with the "
                        "published top-1.", show_default=False)] = None,
    skeleton: Annotated[str, typer.Option("--skeleton", metavar="NAME",
                                          help="cotnet50, cotnet101 or cotnext50.")] = "cotnet50",
    size: Annotated[int | None, typer.Option(
        "--size", metavar="S", help="Input side in pixels. Default: the skeleton's pretrained size.",
        show_default=False)] = None,
    measure: Annotated[bool, typer.Option("--measure", metavar=FLAG,
                                          help="Also measure latency, every row interleaved in one run.")] = False,
    batch: Annotated[list[int] | None, typer.Option(
        "--batch", metavar="N", help="Batch sizes to measure (repeat). Default: 1 and 8.", show_default=False)] = None,
    device: Annotated[str, typer.Option("--device", metavar="DEV", help="cpu, cuda or cuda:N.")] = "cpu",
    threads: Annotated[int | None, typer.Option(
        "--threads", metavar="N", help="CPU threads while measuring, at most the CPUs this process may use.",
        show_default=False)] = None,
    channels_last: Annotated[bool, typer.Option("--channels-last", metavar=FLAG,
                                                help="Measure in channels-last memory format.")] = False,
    repeats: Annotated[int, typer.Option("--repeats", metavar="N", help="Timed rounds.")] = 10,
    fmt: Annotated[Format, typer.Option("--format", help="Output format.")] = Format.table,
    out: Annotated[Path | None, typer.Option("--out", metavar="FILE", help="Write the output to this file.",
                                             show_default=False)] = None,
    image: Annotated[Path | None, typer.Option(
        "--image", metavar="IMG", help="Also draw the attention maps of every operator that has attention, side "
                                       "by side, for this image.", show_default=False)] = None,
    stage: Annotated[int, typer.Option("--stage", metavar="N", help="Stage of the --image maps.")] = 3,
    weights: Annotated[list[str] | None, typer.Option(
        "--weights", metavar="SPEC=FILE", help="Checkpoint per operator for --image (repeat). Default: untrained.",
        show_default=False)] = None,
    fig_dir: Annotated[Path, typer.Option("--fig-dir", metavar="DIR",
                                          help="Where the --image figure, .npz and .json go.")] = Path("cotviz-out"),
    fig_format: Annotated[FigureFormat, typer.Option("--fig-format", help="Figure format.")] = FigureFormat.png,
) -> None:
    """Compare operators in one skeleton: params, MACs/FLOPs, memory, latency, published top-1, attention maps."""
    from cotviz.compare import compare as run_compare
    from cotviz.compare.render import RENDERERS, render_table
    from cotviz.errors import OutputError

    settle_gc()
    if out is not None and not out.parent.is_dir():
        raise OutputError(f"--out {out}: directory {out.parent} does not exist")
    specs = split_specs(blocks)
    result = run_compare(specs or None, paper=paper.value if paper else None, skeleton=skeleton, size=size,
                         measure=measure, batches=tuple(batch or (1, 8)), device=device, threads=threads,
                         channels_last=channels_last, repeats=repeats)
    if image is not None:
        from cotviz.compare import compare_maps

        files = compare_maps([r.spec for r in result.rows], image, skeleton=result.skeleton, stage=stage,
                             weights=_weights(weights), out_dir=fig_dir, format=fig_format.value,
                             preprocess=None if size is None else {"size": size})
        print(f"wrote {files.figure}, {files.npz.name}, {files.json.name}", file=sys.stderr)
    if fmt is Format.table and out is None:
        render_table(result, console())
        return
    write_output(RENDERERS["markdown" if fmt is Format.table else fmt.value](result), out)
