"""``cotviz attention``: heatmaps of a stage's CoT static context, dynamic attention and fused output.

A shell over :class:`cotviz.explain.Explainer`: options are parsed here, the library validates the request
(stage, blocks, head, maps, point, target; before any image is decoded or the model runs), streams the images
through in batches and returns one :class:`~cotviz.explain.Explanation` per image, which is saved as figure +
``.npz`` + ``.json``. torch, matplotlib and captum are imported only when the command runs (captum only with
``--gradcam``), so ``cotviz --help`` stays fast.
"""

from __future__ import annotations

import sys
from contextlib import nullcontext
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from cotviz.analysis.catalog import DEFAULT_MAPS, MAP_INFO
from cotviz.cli._common import FLAG, err_console, handle_errors, print_json, settle_gc
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
from cotviz.formats import FigureFormat

if TYPE_CHECKING:
    from cotviz.explain import Explainer
    from cotviz.explain.pipeline import SavePool

__all__ = ["attention"]

class ScaleMode(str, Enum):
    shared = "shared"
    per_panel = "per-panel"


def _progress(enabled: bool, total: int, description: str) -> Any:
    """A rich progress bar on stderr, or None (rich.progress is then not even imported)."""
    if not enabled:
        return None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    progress = Progress(TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), console=err_console(), transient=True)
    progress.add_task(description, total=total)
    return progress


def _summary(explainer: Explainer, out_dir: Path, outputs: list[dict[str, Any]],
             failures: list[dict[str, str]]) -> dict[str, Any]:
    """The ``--json`` summary on stdout."""
    import torch

    lm, sel = explainer.loaded, explainer.selection
    return {"model": lm.name, "weights": None if lm.weights is None else {
        "path": str(lm.weights.path), "sha256": lm.weights.sha256}, "untrained": bool(lm.untrained),
        "stage": sel.stage, "blocks": sel.block_names, "head": sel.head, "maps": list(sel.maps),
        "threads": int(torch.get_num_threads()), "out_dir": str(out_dir), "images": outputs, "failed": failures}


def _run(images: list[str], *, out: Path, fmt: str, scale: str, dpi: int, batch_size: int, json_out: bool,
         threads: int | None, workers: int | None, size: int | None, crop_pct: float | None, no_crop: bool,
         **request: Any) -> int:
    """List the inputs, build the explainer (validating the request), stream and save. Returns the exit code."""
    from cotviz.errors import ImageError, InvalidArgumentError
    from cotviz.explain.loader import check_batch_size, check_workers
    from cotviz.io import expand_inputs
    from cotviz.io.outputs import ensure_out_dir
    from cotviz.resources import check_threads

    check_batch_size(batch_size)
    if not 10 <= dpi <= 1200:
        raise InvalidArgumentError(f"--dpi must be between 10 and 1200, got {dpi}")
    check_threads(threads)
    if workers is not None:
        check_workers(workers)
    out_dir = ensure_out_dir(out)
    paths, problems = expand_inputs(images)
    if not paths:
        if len(problems) == 1:
            raise problems[0].to_error()
        for p in problems:
            print(f"error: {p.message}", file=sys.stderr)
        raise ImageError("none of the inputs is an image file")

    import cotviz.viz  # noqa: F401  # the drawing stack, so that settle_gc() below also covers it
    from cotviz.explain import Explainer
    from cotviz.explain.pipeline import SavePool, default_save_workers
    from cotviz.explain.runner import default_threads
    from cotviz.models.untrained import new_model  # noqa: F401  # (imports torch and the zoo before settle_gc)
    from cotviz.resources import torch_threads

    settle_gc()
    failures = [{"input": p.item, "error": p.message} for p in problems]
    workers = default_save_workers(len(paths)) if workers is None else workers
    with torch_threads(threads or default_threads(batch_size, len(paths), workers)):  # the untrained calibration too
        explainer = Explainer(request.pop("model"), preprocess={"size": size, "crop_pct": crop_pct,
                                                                "no_crop": no_crop}, **request)
        for f in failures:
            print(f"error: {f['error']}", file=sys.stderr)
        # The savers start once the request is valid and get ready while the first batch is computed (one
        # image: no pool at all).
        with SavePool(workers) if workers else nullcontext() as pool:
            outputs = _render(explainer, paths, failures, out_dir=out_dir, fmt=fmt, scale=scale, dpi=dpi,
                              batch_size=batch_size, pool=pool, progress=not json_out and sys.stderr.isatty())
        if json_out:
            print_json(_summary(explainer, out_dir, outputs, failures))
    if outputs and not json_out:
        print(f"wrote {len(outputs)} figure(s) to {out_dir}", file=sys.stderr)  # plain: rich costs 0.3 s
    nonfinite = sum(1 for o in outputs if o["nonfinite"])
    return 1 if failures or nonfinite else 0


def _render(explainer: Explainer, paths: list[Path], failures: list[dict[str, str]], *, out_dir: Path, fmt: str,
            scale: str, dpi: int, batch_size: int, pool: SavePool | None, progress: bool) -> list[dict[str, Any]]:
    """Explain and save ``paths`` (in ``pool`` when given); failures are appended to ``failures``."""
    from cotviz.explain.pipeline import explain_and_save

    outputs: list[dict[str, Any]] = []
    bar = _progress(progress, len(paths), f"{explainer.loaded.name} stage {explainer.selection.stage}")
    with bar or nullcontext():
        for path, done in zip(paths, explain_and_save(explainer, paths, out_dir, fmt=fmt, scale=scale,  # type: ignore[arg-type]
                                                      dpi=dpi, batch_size=batch_size, pool=pool), strict=True):
            ex = done.explanation
            if bar is not None:
                bar.advance(0)
            if ex.error is not None or done.files is None:
                failures.append({"input": str(path), "error": str(ex.error)})
                print(f"error: {ex.error}", file=sys.stderr)
                continue
            if ex.nonfinite:
                print(f"error: {path}: non-finite values (NaN/Inf) in {', '.join(ex.nonfinite)}; the weights or "
                      "the input overflow", file=sys.stderr)
            outputs.append({"input": str(path), **done.files.as_dict(), "prediction": ex.to_json()["prediction"],
                            "crop_box": list(ex.crop_box or ()), "statistics": ex.statistics(),
                            "nonfinite": list(ex.nonfinite)})
    return outputs


@handle_errors
def attention(
    images: Annotated[list[str], typer.Argument(help="Image files, directories or glob patterns (quote globs).",
                                                metavar="IMAGES...", show_default=False)],
    stage: StageOpt = 3,
    block: BlocksOpt = None,
    head: Annotated[int | None, typer.Option(
        "--head", metavar="H", help="Attention head, 0-based (C/8 per block). Default: mean over heads.",
        show_default=False)] = None,
    map_: Annotated[list[MapName] | None, typer.Option(  # type: ignore[valid-type]
        "--map", "-m", metavar="NAME", show_choices=False,
        help=f"Map type; repeat for several: {', '.join(MAP_INFO)}. Default: {', '.join(DEFAULT_MAPS)}.",
        show_default=False)] = None,
    point: Annotated[str | None, typer.Option(
        "--point", metavar="X,Y", help="Pixel of the ORIGINAL image: draw each head's k x k kernel at its cell "
                                       "and the local attention rollout.", show_default=False)] = None,
    gradcam: Annotated[bool, typer.Option("--gradcam", metavar=FLAG,
                                          help="Add Grad-CAM (captum LayerGradCam on layerN).")] = False,
    target: Annotated[int | None, typer.Option(
        "--target", metavar="C", help="Class index for Grad-CAM (implies --gradcam). Default: the predicted class.",
        show_default=False)] = None,
    model: ModelOpt = "cotnet50",
    num_classes: NumClassesOpt = None,
    weights: WeightsOpt = None,
    device: DeviceOpt = Device.cpu,
    size: SizeOpt = None,
    crop_pct: CropPctOpt = None,
    no_crop: NoCropOpt = False,
    out: Annotated[Path, typer.Option("--out", "-o", metavar="DIR", help="Output directory.")] = Path("cotviz-out"),
    fmt: Annotated[FigureFormat, typer.Option("--format", help="Figure format.")] = FigureFormat.png,
    scale: Annotated[ScaleMode, typer.Option(
        "--scale", help="Colour scale: shared across the blocks of a map type, or per panel.")] = ScaleMode.shared,
    batch_size: Annotated[int, typer.Option("--batch-size", metavar="N", help="Images per forward pass.")] = 8,
    dpi: Annotated[int, typer.Option("--dpi", metavar="N", help="Figure resolution (PNG).")] = 100,
    json_out: JsonOpt = False,
    allow_nonfinite: Annotated[bool, typer.Option(
        "--allow-nonfinite", metavar=FLAG, help="Load --weights even if they hold NaN/Inf (refused by default); "
                                                "non-finite maps are then reported and the exit code is 1.")] = False,
    no_memory_check: Annotated[bool, typer.Option(
        "--no-memory-check", metavar=FLAG, help="Run even when the forward's estimated memory exceeds what is "
                                                "available (by default such a size or batch is refused).")] = False,
    threads: Annotated[int | None, typer.Option(
        "--threads", metavar="N", help="torch intra-op threads, at most the CPUs this process may use. Default: "
                                       "min(cores - --workers, --batch-size, number of images), at least 1; one "
                                       "image runs on one thread (faster on busy machines, the same numbers "
                                       "every time).",
        show_default=False)] = None,
    workers: Annotated[int | None, typer.Option(
        "--workers", metavar="N", help="Processes that draw and save figures (and one that decodes) while the "
                                       "next batch is computed; 0 = all in this process (the files are the "
                                       "same for the same --threads). Default: one per CPU, at most 4; 0 "
                                       "below 50 images.",
        show_default=False)] = None,
) -> None:
    """Heatmaps of one stage: CoT static context, dynamic attention and fused output, per block.

    Writes <stem>_<model>_stage<N>.png (or .svg/.pdf), .npz (raw maps) and .json (metadata) per image.
    """
    code = _run(images, out=out, fmt=fmt.value, scale=scale.value, dpi=dpi, batch_size=batch_size,
                json_out=json_out, threads=threads, workers=workers, size=size, crop_pct=crop_pct, no_crop=no_crop,
                model=model, stage=stage, blocks=block, head=head, maps=[m.value for m in map_] if map_ else None,
                point=point, gradcam=gradcam, target=target, weights=weights, num_classes=num_classes,
                device=device.value, memory_check=not no_memory_check,
                allow_nonfinite=allow_nonfinite)
    if code:
        raise typer.Exit(code)
