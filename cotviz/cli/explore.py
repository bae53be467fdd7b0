"""``cotviz explore``: one self-contained HTML page to explore a stage's local attention cell by cell.

A shell over :class:`cotviz.explain.Explainer` with ``cells=True`` (every cell's kernels, each head's maps, the
rollout plan) and :meth:`cotviz.explain.Explanation.explore` (the page). torch is imported only when the command
runs, so ``cotviz --help`` stays fast.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from cotviz.analysis.catalog import MAP_INFO
from cotviz.cli._common import FLAG, handle_errors, print_json
from cotviz.cli._options import (
    BlocksOpt,
    CropPctOpt,
    Device,
    DeviceOpt,
    JsonOpt,
    MapName,
    ModelOpt,
    NoCropOpt,
    NumClassesOpt,
    SizeOpt,
    StageOpt,
    WeightsOpt,
)

__all__ = ["explore"]


def _run(image: str, *, out: Path, json_out: bool, threads: int | None, size: int | None, crop_pct: float | None,
         no_crop: bool, initial_head: int | None, **request: Any) -> int:
    """Explain one image with every cell kept, write the page, report its size. Returns the exit code."""
    from cotviz.errors import ImageError, InvalidArgumentError
    from cotviz.explain import Explainer
    from cotviz.explore.page import BUDGET_BYTES, check_out_path
    from cotviz.io import expand_inputs
    from cotviz.resources import check_threads, format_bytes, torch_threads

    check_threads(threads)
    check_out_path(out)
    paths, problems = expand_inputs([image])
    if problems:
        raise problems[0].to_error()
    if len(paths) != 1:
        raise ImageError(f"cotviz explore takes one image; {image!r} gives {len(paths)} (pick one file)")
    start = time.perf_counter()
    with torch_threads(threads):
        explainer = Explainer(request.pop("model"), preprocess={"size": size, "crop_pct": crop_pct,
                                                                "no_crop": no_crop}, cells=True, **request)
        heads = explainer.selection.num_heads
        if initial_head is not None and not 0 <= initial_head < heads:
            raise InvalidArgumentError(f"head {initial_head} out of range: stage {explainer.selection.stage} of "
                                       f"{explainer.loaded.name} has heads 0..{heads - 1} (C/8 attention maps per "
                                       "position)")
        ex = explainer.explain(paths[0])
    page = ex.explore(head=initial_head)
    written = page.save(out)
    seconds = time.perf_counter() - start
    f16 = sorted(k for k, v in page.dtypes.items() if v == "float16")
    sel = explainer.selection
    if json_out:
        print_json({"input": str(paths[0]), "out": str(written), "bytes": page.nbytes, "budget_bytes": BUDGET_BYTES,
                    "model": explainer.loaded.name, "stage": sel.stage, "blocks": sel.block_names,
                    "maps": list(sel.maps), "float16": f16,
                    "float32": sorted(k for k, v in page.dtypes.items() if v == "float32"),
                    "nonfinite": list(ex.nonfinite), "seconds": round(seconds, 3)})
    else:
        print(f"wrote {written} ({format_bytes(page.nbytes)}, {page.nbytes} bytes; {len(sel.block_names)} block(s) "
              f"of stage {sel.stage}, {len(sel.maps)} maps, {len(f16)} of {len(page.dtypes)} arrays float16)",
              file=sys.stderr)
    if ex.nonfinite:
        print(f"error: {paths[0]}: non-finite values (NaN/Inf) in {', '.join(ex.nonfinite)}; the weights or "
              "the input overflow", file=sys.stderr)
        return 1
    return 0


@handle_errors
def explore(
    image: Annotated[str, typer.Argument(help="Image file.", metavar="IMAGE", show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", metavar="FILE",
                                      help="The HTML page to write.")] = Path("explore.html"),
    stage: StageOpt = 3,
    block: BlocksOpt = None,
    head: Annotated[int | None, typer.Option(
        "--head", metavar="H", help="Head the page opens on (0-based; every head is in the page). Default: mean "
                                    "over heads.", show_default=False)] = None,
    map_: Annotated[list[MapName] | None, typer.Option(  # type: ignore[valid-type]
        "--map", "-m", metavar="NAME", show_choices=False,
        help=f"Map type; repeat for several: {', '.join(MAP_INFO)}. Default: every map.",
        show_default=False)] = None,
    point: Annotated[str | None, typer.Option(
        "--point", metavar="X,Y", help="Pixel of the ORIGINAL image whose cell the page opens on.",
        show_default=False)] = None,
    model: ModelOpt = "cotnet50",
    num_classes: NumClassesOpt = None,
    weights: WeightsOpt = None,
    device: DeviceOpt = Device.cpu,
    size: SizeOpt = None,
    crop_pct: CropPctOpt = None,
    no_crop: NoCropOpt = False,
    json_out: JsonOpt = False,
    allow_nonfinite: Annotated[bool, typer.Option(
        "--allow-nonfinite", metavar=FLAG, help="Load --weights even if they hold NaN/Inf (refused by "
                                                "default).")] = False,
    threads: Annotated[int | None, typer.Option(
        "--threads", metavar="N", help="torch intra-op threads, at most the CPUs this process may use. "
                                       "Default: torch's.", show_default=False)] = None,
) -> None:
    """One self-contained HTML page (works offline): hover a cell to see every head's k x k kernel there, each
    map's value and the local rollout back to the input pixels.

    Prints the page's size (the budget: 5 MB for stage 3 of cotnet50 at 224, every block).
    """
    maps = [m.value for m in map_] if map_ else list(MAP_INFO)
    code = _run(image, out=out, json_out=json_out, threads=threads, size=size, crop_pct=crop_pct, no_crop=no_crop,
                model=model, stage=stage, blocks=block, head=None, maps=maps, point=point, weights=weights,
                num_classes=num_classes, device=device.value, allow_nonfinite=allow_nonfinite, initial_head=head)
    if code:
        raise typer.Exit(code)
