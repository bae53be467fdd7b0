"""``cotviz attention``: heatmaps of a stage's CoT static context, dynamic attention and fused output.

Thin command: options are parsed and validated here (everything that can be checked is checked before
an image is decoded or the model runs), then each batch goes through the library:
``io.load_image`` -> ``io.preprocess`` -> ``capture`` -> ``analysis.maps`` / ``rollout`` / ``attribution``
-> ``viz.attention_figure`` -> ``io.outputs``. torch, matplotlib and captum are imported only when the
command runs (captum only with ``--gradcam``), so ``cotviz --help`` stays fast.
"""

from __future__ import annotations

import gc
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from cotviz.cli._common import err_console, handle_errors, print_json, settle_gc

if TYPE_CHECKING:
    import torch
    from torch import nn

    from cotviz.capture import Record
    from cotviz.io import LoadedImage, PreprocessConfig, Preprocessed
    from cotviz.io.outputs import OutputPaths
    from cotviz.models import PretrainedCfg
    from cotviz.models.checkpoint import CheckpointInfo
    from cotviz.viz import PointView

__all__ = ["attention"]

#: Seed of the random initialisation used when no ``--weights`` are given.
RANDOM_INIT_SEED = 0


class MapName(str, Enum):
    """``--map`` choices; kept equal to ``cotviz.analysis.maps.MAPS`` (a test checks it)."""

    attention_energy = "attention_energy"
    attention_entropy = "attention_entropy"
    center_weight = "center_weight"
    static_energy = "static_energy"
    dynamic_energy = "dynamic_energy"
    dynamic_share = "dynamic_share"
    output_energy = "output_energy"


class Device(str, Enum):
    cpu = "cpu"
    cuda = "cuda"


class Format(str, Enum):
    png = "png"
    svg = "svg"
    pdf = "pdf"


class ScaleMode(str, Enum):
    shared = "shared"
    per_panel = "per-panel"


# ----------------------------------------------------------------------------------------- validation


def parse_point(text: str | None) -> tuple[int, int] | None:
    """``"X,Y"`` (integer pixel column and row of the ORIGINAL image) -> ``(X, Y)``."""
    from cotviz.errors import InvalidArgumentError

    if text is None:
        return None
    parts = [p.strip() for p in text.split(",")]
    try:
        if len(parts) != 2:
            raise ValueError
        x, y = int(parts[0]), int(parts[1])
    except ValueError:
        raise InvalidArgumentError(f"--point must be X,Y in whole pixels of the original image, e.g. 320,180; "
                                   f"got {text!r}") from None
    if x < 0 or y < 0:
        raise InvalidArgumentError(f"--point {x},{y} lies outside the image: coordinates start at 0,0 (top left)")
    return x, y


@dataclass(frozen=True)
class Selection:
    """What to compute, validated against the model before any image is read."""

    stage: int
    blocks: tuple[int, ...]  # 1-based, drawn
    capture_blocks: tuple[int, ...]  # 1-based, recorded (1..max(blocks) with --point, for the rollout)
    head: int | None
    num_heads: int
    maps: tuple[str, ...]
    taps: tuple[str, ...]


def _select(model: nn.Module, model_name: str, stage: int, blocks: Sequence[int] | None, head: int | None,
            maps: tuple[str, ...], point: bool) -> Selection:
    """Check stage, blocks and head against ``model`` (messages state the valid ranges)."""
    from cotviz.analysis.maps import taps_for
    from cotviz.capture import block_range, cot_blocks, stage_range
    from cotviz.errors import InvalidArgumentError

    stages = stage_range(model)
    if stage not in stages:
        raise InvalidArgumentError(f"stage {stage} out of range: {model_name} has stages "
                                   f"{stages.start}..{stages.stop - 1}")
    n_blocks = block_range(model, stage)
    infos = [b for b in cot_blocks(model) if b.stage == stage]
    cot = [b.block for b in infos if b.has_cot]
    if not cot:
        kinds = ", ".join(dict.fromkeys(b.layer_type for b in infos))
        with_cot = sorted({b.stage for b in cot_blocks(model) if b.has_cot})
        hint = f"; stages with CoT layers: {', '.join(map(str, with_cot))}" if with_cot else ""
        raise InvalidArgumentError(f"stage {stage} of {model_name} has no CoT layers (its blocks use {kinds}){hint}")
    chosen = tuple(dict.fromkeys(blocks)) if blocks else tuple(cot)
    for b in chosen:
        if b not in n_blocks:
            raise InvalidArgumentError(f"block {b} out of range: stage {stage} of {model_name} has blocks "
                                       f"{n_blocks.start}..{n_blocks.stop - 1}")
        if b not in cot:
            layer = next(i.layer_type for i in infos if i.block == b)
            raise InvalidArgumentError(f"block {b} of stage {stage} ({model_name}) is a {layer} block without a "
                                       f"CoT layer; CoT blocks: {', '.join(map(str, cot))}")
    chosen = tuple(sorted(chosen))
    layer = getattr(model, f"layer{stage}")
    heads = {int(blk.conv2.dim // blk.conv2.share_planes) for i, blk in enumerate(layer, start=1) if i in chosen}
    num_heads = min(heads)
    if head is not None and not 0 <= head < num_heads:
        raise InvalidArgumentError(f"head {head} out of range: stage {stage} of {model_name} has heads "
                                   f"0..{num_heads - 1} (C/8 attention maps per position)")
    capture_blocks = chosen
    if point:
        missing = [b for b in range(1, max(chosen) + 1) if b not in cot]
        if missing:
            usable = missing[0] - 1  # blocks 1..usable all have CoT layers
            hint = f"--block {usable}" if usable else "a stage whose first block uses CoT"
            raise InvalidArgumentError(f"--point composes blocks 1..{max(chosen)} of stage {stage}, but block "
                                       f"{missing[0]} ({model_name}) has no CoT layer; use {hint}")
        capture_blocks = tuple(range(1, max(chosen) + 1))
    return Selection(stage, chosen, capture_blocks, head, num_heads, maps, taps_for(maps, attention=point))


# ------------------------------------------------------------------------------------------ the model


@dataclass
class LoadedModel:
    model: nn.Module
    name: str
    weights: CheckpointInfo | None
    init: str  # how the weights came about, for titles and metadata

    @property
    def weights_label(self) -> str:
        return self.weights.path.name if self.weights is not None else "random init (untrained)"


#: The untrained demo network (no ``--weights``): calibration batch, image side (pixels), residual scale.
CALIBRATION_BATCH, CALIBRATION_SIDE, RESIDUAL_SCALE = 4, 64, 0.25
UNTRAINED_NOTE = (f"random weights (seed {RANDOM_INIT_SEED}; zero_init_last_bn=False with every block's last BN "
                  f"weight set to {RESIDUAL_SCALE}; BatchNorm statistics calibrated on seeded noise)")


def calibrate_batchnorm(model: nn.Module, *, mean_std: tuple[Sequence[float], Sequence[float]],
                        seed: int = RANDOM_INIT_SEED, batch: int = CALIBRATION_BATCH,
                        side: int = CALIBRATION_SIDE) -> None:
    """Set every BatchNorm's running statistics from one train-mode pass over fixed smooth random images.

    Data-dependent initialisation (cf. Mishkin & Matas, "All you need is a good init", ICLR 2016). The
    images are seeded Gaussian noise at two scales (side/16 and side/4, bilinearly upsampled), squashed to
    (0, 1) like photographs and normalised with ``mean_std``: (``batch``, 3, side, side), independent of the
    user's inputs, so the same seed gives the same network. Only the running statistics change.
    """
    import torch
    import torch.nn.functional as F

    gen = torch.Generator().manual_seed(seed)
    coarse = torch.randn(batch, 3, max(1, side // 16), max(1, side // 16), generator=gen)  # (B, 3, s/16, s/16)
    fine = torch.randn(batch, 3, max(1, side // 4), max(1, side // 4), generator=gen)  # (B, 3, s/4, s/4)
    field = (F.interpolate(coarse, size=(side, side), mode="bilinear", align_corners=False)
             + 0.5 * F.interpolate(fine, size=(side, side), mode="bilinear", align_corners=False))  # (B, 3, s, s)
    pixels = torch.sigmoid(3.0 * field / field.std())  # (B, 3, s, s) in (0, 1), saturating like photographs
    mean = torch.tensor(mean_std[0]).view(1, 3, 1, 1)  # (1, 3, 1, 1)
    std = torch.tensor(mean_std[1]).view(1, 3, 1, 1)  # (1, 3, 1, 1)
    x = (pixels - mean) / std  # (B, 3, s, s), normalised like a model input
    device = next(model.parameters()).device
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    was_training = model.training
    try:
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # cumulative average: after one batch, running stats = that batch's stats
        model.train()
        with torch.no_grad():
            model(x.to(device))
    finally:
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum
        model.train(was_training)


def _pretrained_cfg(model: nn.Module) -> PretrainedCfg:
    """``model.pretrained_cfg`` as set by ``create_model``."""
    from cotviz.models import PretrainedCfg

    cfg = getattr(model, "pretrained_cfg", None)
    if not isinstance(cfg, PretrainedCfg):
        raise TypeError(f"{type(model).__name__} has no pretrained_cfg; build it with cotviz.create_model")
    return cfg


def make_untrained(model: nn.Module) -> nn.Module:
    """Turn ``model`` (built with ``zero_init_last_bn=False``) into the deterministic untrained network drawn
    when no ``--weights`` are given (eval mode).

    Why not the official init as is: it zero-initialises the last BN of every block
    (``zero_init_last_bn``), so every residual branch is a no-op and every block of a stage sees the same
    input. With live branches (``zero_init_last_bn=False``) and the init's identity BN statistics, a random
    CoTNet blows activations up instead (cotnet50 on examples/coffee.png: RMS ~1e5 at stage 3, ~1e11 at
    stage 4; calibrating BN alone still leaves x2-3 growth per block at a specular highlight), so every map
    shows that blow-up. The demo therefore (1) keeps the branches live (``zero_init_last_bn=False``),
    (2) scales them by setting every block's last BN weight to :data:`RESIDUAL_SCALE` (SkipInit-style,
    De & Smith 2020: between the official 0 and 1), and (3) calibrates every BN's statistics with
    :func:`calibrate_batchnorm`. All of it is stated in the warning, the figure and the JSON metadata.
    """
    import torch

    from cotviz.models import Bottleneck

    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, Bottleneck):
                m.bn3.weight.fill_(RESIDUAL_SCALE)
    cfg = _pretrained_cfg(model)
    calibrate_batchnorm(model, mean_std=(cfg.mean, cfg.std))
    return model.eval()


def _create_model(name: str, untrained: bool, num_classes: int | None = None) -> nn.Module:
    """The network with its seeded initialisation, before weights or the untrained-demo steps."""
    from cotviz.models import create_model

    overrides: dict[str, Any] = {} if num_classes is None else {"num_classes": num_classes}
    if untrained:
        overrides["zero_init_last_bn"] = False
    return create_model(name, seed=RANDOM_INIT_SEED, **overrides)


def _finish_model(model: nn.Module, name: str, weights: Path | None) -> LoadedModel:
    """Load ``--weights`` into ``model`` (safely, strictly), or turn it into the untrained demo network."""
    if weights is None:
        init = (f"{UNTRAINED_NOTE}: calibration over {CALIBRATION_BATCH} smooth-noise images of "
                f"{CALIBRATION_SIDE} px; the network is UNTRAINED")
        return LoadedModel(make_untrained(model), name, None, init)
    lm = LoadedModel(model, name, None, "checkpoint")
    _load_weights(lm, weights)
    return lm


def _load_weights(lm: LoadedModel, weights: Path) -> None:
    """Load a checkpoint safely and strictly (``CheckpointError`` when it does not fit the model)."""
    from cotviz.models.checkpoint import load_checkpoint

    info = load_checkpoint(lm.model, weights)
    lm.model.eval()
    lm.weights = info
    lm.init = f"checkpoint {info.path.name} ({info.source}{', EMA' if info.used_ema else ''})"


def _device(device: Device) -> torch.device:
    import torch

    from cotviz.errors import InvalidArgumentError

    if device is Device.cuda and not torch.cuda.is_available():
        raise InvalidArgumentError("--device cuda: CUDA is not available here (no GPU or a CPU-only torch); "
                                   "use --device cpu")
    return torch.device(device.value)


# --------------------------------------------------------------------------------------------- per image


@dataclass
class Item:
    """One input on its way through a batch."""

    index: int  # position in the run (for names)
    path: Path
    loaded: LoadedImage | None = None
    pre: Preprocessed | None = None
    uv: tuple[float, float] | None = None


@dataclass
class RunReport:
    outputs: list[dict[str, Any]] = field(default_factory=list)
    failures: list[dict[str, str]] = field(default_factory=list)

    def fail(self, item: str, message: str) -> None:
        self.failures.append({"input": item, "error": message})
        print(f"error: {message}", file=sys.stderr)


def _prepare(item: Item, cfg: PreprocessConfig, point: tuple[int, int] | None) -> None:
    """Decode and preprocess one image; check the point lies inside it and inside the model's view."""
    from cotviz.errors import InvalidArgumentError
    from cotviz.io import load_image, preprocess

    loaded = load_image(item.path, max_side=cfg.decode_side())
    pre = preprocess(loaded, cfg)
    if point is not None:
        x, y = point
        w, h = loaded.original_size
        if not (0 <= x < w and 0 <= y < h):
            raise InvalidArgumentError(f"--point {x},{y} lies outside {item.path.name} ({w}x{h} px: x in 0..{w - 1}, "
                                       f"y in 0..{h - 1})")
        u, v = pre.to_model(x + 0.5, y + 0.5)  # pixel centre
        s = pre.input_size
        if not (0 <= u < s and 0 <= v < s):
            box = ", ".join(f"{b:.1f}" for b in pre.crop_box)
            raise InvalidArgumentError(f"--point {x},{y} lies outside the centre crop the model saw in "
                                       f"{item.path.name} (box {box}); pick a point inside it or use --no-crop")
        item.uv = (float(u), float(v))
    item.loaded, item.pre = loaded, pre


def _batches(items: list[Item], size: int) -> Iterator[list[Item]]:
    for i in range(0, len(items), size):
        yield items[i: i + size]


def _geometry(rec: Record) -> dict[str, Any]:
    return {"feature_size": rec.feature_size, "feature_stride": rec.feature_stride,
            "pooled_before": rec.pooled_before, "blurred_after": rec.blurred_after,
            "kernel_size": rec.kernel_size, "heads": rec.total_heads, "layer_type": rec.layer_type,
            "module_path": rec.module_path}


@dataclass(frozen=True)
class RunSettings:
    sel: Selection
    cfg: PreprocessConfig
    lm: LoadedModel
    point: tuple[int, int] | None
    gradcam: bool
    target: int | None
    scale: str
    fmt: str
    dpi: int


def _point_outputs(records: list[Record], shown: list[str], i: int, xy: tuple[int, int], uv: tuple[float, float],
                   arrays: dict[str, Any]) -> tuple[PointView, dict[str, Any]]:
    """Kernels at the point's cell (shown blocks) and the rollout (blocks 1..n) of image ``i``.

    Adds ``"<block>/kernels"`` (M, K, K) and ``"stage<S>/rollout"`` (H0, W0) to ``arrays``.
    """
    from cotviz.analysis.maps import kernels_at
    from cotviz.analysis.rollout import cell_at, normalize_mass, stage_rollout
    from cotviz.viz import PointView

    u, v = uv
    cells: dict[str, tuple[int, int]] = {}
    kernels: dict[str, Any] = {}
    for rec in records:
        grid = rec.feature_size or (1, 1)
        cells[rec.name] = cell_at(u, v, int(rec.feature_stride or 1), (int(grid[0]), int(grid[1])))
        if rec.name in shown:
            kernels[rec.name] = kernels_at(rec, i, cells[rec.name]).float().numpy()  # (M, K, K)
            arrays[f"{rec.name}/kernels"] = kernels[rec.name]
    last = records[-1]
    roll, roll_stride = stage_rollout(records, i, cells[last.name])  # (H0, W0) on the stage-input grid
    arrays[f"stage{last.stage}/rollout"] = roll.float().numpy()
    view = PointView(xy=xy, uv=uv, cells={k: cells[k] for k in kernels}, kernels=kernels,
                     rollout=normalize_mass(roll).float().numpy(), rollout_stride=roll_stride,
                     rollout_block=last.name)
    meta = {"xy_original": xy, "uv_model_input": uv, "cells": {k: list(c) for k, c in cells.items()},
            "rollout": {"from_block": last.name, "stage_input_stride": roll_stride,
                        "stage_input_grid": list(roll.shape), "mass_kept": float(roll.sum()),
                        "normalization": "abs", "definition": "see cotviz.analysis.rollout"}}
    return view, meta


def _render_batch(batch: list[Item], names: list[OutputPaths], st: RunSettings, device: torch.device,
                  report: RunReport) -> None:
    """Forward one batch, compute maps, render and write each image's figure, npz and JSON."""
    import torch

    from cotviz._version import __version__
    from cotviz.analysis import stats
    from cotviz.analysis.maps import MAPS, compute_maps, map_key, map_statistics
    from cotviz.capture import capture
    from cotviz.io.outputs import save_figure, write_json, write_npz
    from cotviz.viz import AttentionFigureData, GradCamView, attention_figure

    sel, model = st.sel, st.lm.model
    x = torch.stack([it.pre.tensor for it in batch]).to(device)  # type: ignore[union-attr]  # (B, 3, S, S)
    with torch.inference_mode(), capture(model, stages=[sel.stage], blocks=sel.capture_blocks, taps=sel.taps,
                                         device="cpu") as cap:
        logits = model(x).float().cpu()  # (B, num_classes)
    records = [cap[f"stage{sel.stage}.block{b}"] for b in sel.capture_blocks]
    shown = [f"stage{sel.stage}.block{b}" for b in sel.blocks]
    maps = compute_maps(cap, sel.maps, sel.head, blocks=shown)  # key -> (B, H, W)
    cam = None
    if st.gradcam:
        from cotviz.analysis.attribution import grad_cam

        cam = grad_cam(model, x, sel.stage, st.target if st.target is not None else logits.argmax(dim=1).tolist())
    probs = logits.softmax(dim=1)
    fusion = {name: stats.dynamic_share(cap[name]) for name in shown if cap[name].fusion_weights is not None}

    for i, (item, out) in enumerate(zip(batch, names, strict=True)):
        pre, loaded = item.pre, item.loaded
        assert pre is not None and loaded is not None
        arrays: dict[str, Any] = {"input": pre.display}
        per_map: dict[str, dict[str, Any]] = {n: {} for n in sel.maps}
        statistics: dict[str, dict[str, float]] = {}
        for block in shown:
            for n in sel.maps:
                key = map_key(block, n)
                m = maps[key][i].numpy()  # (H, W)
                arrays[key] = m
                per_map[n][block] = m
                statistics[key] = map_statistics(m)
        point_view, meta_point = None, None
        if item.uv is not None and st.point is not None:
            point_view, meta_point = _point_outputs(records, shown, i, st.point, item.uv, arrays)
        cam_view, meta_cam = None, None
        if cam is not None:
            arrays[f"stage{sel.stage}/gradcam"] = cam.cam[i].numpy()
            arrays[f"stage{sel.stage}/gradcam_upsampled"] = cam.upsampled[i].numpy()
            target = int(cam.target[i])
            cam_view = GradCamView(cam.upsampled[i].numpy(), target, sel.stage)
            meta_cam = {"layer": f"layer{sel.stage}", "target": target, "target_given": st.target is not None,
                        "upsampling": "bilinear, align_corners=False", **map_statistics(cam.cam[i])}
        notes = []
        if st.lm.weights is None:
            notes.append(f"Untrained network, {UNTRAINED_NOTE}. "
                         "Pass --weights with an official checkpoint for meaningful maps.")
        data = AttentionFigureData(
            display=pre.display, maps=per_map, strides={b: int(cap[b].feature_stride or 1) for b in shown},
            blocks=shown, model=st.lm.name, weights=st.lm.weights_label, stage=sel.stage, head=sel.head,
            num_heads=sel.num_heads, source=item.path.name, crop_box=pre.crop_box,
            original_size=pre.original_size, gradcam=cam_view, point=point_view, notes=notes)
        if report.outputs:  # free the previous figure (a reference cycle) now, not at some later GC pass
            gc.collect()
        fig = attention_figure(data, scale=st.scale, dpi=st.dpi)  # type: ignore[arg-type]
        save_figure(fig, out.figure, st.fmt, dpi=st.dpi)
        del fig  # no fig.clear(): clearing ~30 axes costs 0.3 s; gc.collect() above frees it
        write_npz(out.npz, arrays)
        top = int(probs[i].argmax())
        meta = {
            "cotviz_version": __version__,
            "command": "attention",
            "input": {"path": str(item.path), "original_size": list(pre.original_size), "format": loaded.format,
                      "mode": loaded.source_mode, "exif_orientation": loaded.orientation,
                      "decode_reduction": loaded.reduction},
            "model": {"name": st.lm.name, "init": st.lm.init, "untrained": st.lm.weights is None,
                      "zero_init_last_bn": None if st.lm.weights is not None else False,
                      "residual_scale": None if st.lm.weights is not None else RESIDUAL_SCALE,
                      "batchnorm_calibration": None if st.lm.weights is not None else {
                          "images": CALIBRATION_BATCH, "side": CALIBRATION_SIDE, "seed": RANDOM_INIT_SEED,
                          "data": "seeded Gaussian noise at side/16 + 0.5 x noise at side/4 (bilinear "
                                  "upsampling), squashed to (0, 1) by a sigmoid, normalised with the model's "
                                  "mean/std"},
                      "weights": None if st.lm.weights is None else {
                          "path": str(st.lm.weights.path), "sha256": st.lm.weights.sha256,
                          "source": st.lm.weights.source, "used_ema": st.lm.weights.used_ema}},
            "preprocessing": {"input_size": st.cfg.input_size, "crop": st.cfg.crop, "crop_pct": st.cfg.crop_pct,
                              "resize_shorter_side_to": st.cfg.scale_size if st.cfg.crop else None,
                              "interpolation": st.cfg.interpolation, "mean": st.cfg.mean, "std": st.cfg.std},
            "crop_box": list(pre.crop_box),
            "geometry": {
                "convention": "cell (i, j) of a map with stride s covers model-input pixels [j*s, (j+1)*s) x "
                              "[i*s, (i+1)*s); model input (u, v) -> original (x, y) = (left + u*(right-left)/S, "
                              "top + v*(bottom-top)/S) with crop_box = (left, top, right, bottom)",
                "blocks": {b: _geometry(cap[b]) for b in shown}},
            "stage": sel.stage, "blocks": shown, "head": sel.head,
            "head_reduction": "mean over heads (attention maps); all channels (context maps)" if sel.head is None
            else f"head {sel.head} (attention maps); the channels that head aggregates (context maps, "
                 "Record.heads numbering)",
            "scale": st.scale,
            "maps": {n: MAPS[n].describe() for n in sel.maps},
            "statistics": statistics,
            "fusion_weights": {b: {"fraction_dynamic_gt_static": float(f["fraction"][i]),
                                   "mean_dynamic_weight": float(f["mean_weight"][i])} for b, f in fusion.items()},
            "prediction": {"class": top, "probability": float(probs[i, top]), "logit": float(logits[i, top])},
            "gradcam": meta_cam,
            "point": meta_point,
            "outputs": {"figure": str(out.figure), "npz": str(out.npz)},
        }
        write_json(out.json, meta)
        report.outputs.append({"input": str(item.path), **out.as_dict(), "prediction": meta["prediction"],
                               "crop_box": list(pre.crop_box),
                               "statistics": {k: v for k, v in statistics.items()}})


def _progress(enabled: bool) -> Any:
    """A rich progress bar on stderr, or a do-nothing stand-in (rich.progress is not even imported)."""
    if not enabled:
        return _NoProgress()
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=err_console(), transient=True)


class _NoProgress:
    """The part of ``rich.progress.Progress`` the command uses, doing nothing."""

    def __enter__(self) -> _NoProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def add_task(self, description: str, total: int) -> int:
        return 0

    def advance(self, task: int, advance: int = 1) -> None:
        return None


def _run(images: list[str], *, stage: int, block: list[int] | None, head: int | None, maps: list[str] | None,
         point_text: str | None, gradcam: bool, target: int | None, model_name: str, weights: Path | None,
         device: Device, size: int | None, crop_pct: float | None, no_crop: bool, out: Path, fmt: Format,
         scale: ScaleMode, batch_size: int, dpi: int, json_out: bool, threads: int | None = None,
         num_classes: int | None = None) -> int:
    """Validate everything that can be validated without images, then :func:`_execute`. Returns the exit code."""
    from cotviz.errors import ImageError, InvalidArgumentError

    # 1. options that need nothing but themselves
    point = parse_point(point_text)
    if batch_size < 1:
        raise InvalidArgumentError(f"--batch-size must be at least 1, got {batch_size}")
    if size is not None and size < 32:
        raise InvalidArgumentError(f"--size must be at least 32 pixels (the network's total stride), got {size}")
    if crop_pct is not None and not 0 < crop_pct <= 1:
        raise InvalidArgumentError(f"--crop-pct must be in (0, 1], got {crop_pct}")
    if num_classes is not None and num_classes < 1:
        raise InvalidArgumentError(f"--num-classes must be at least 1, got {num_classes}")
    if not 10 <= dpi <= 1200:
        raise InvalidArgumentError(f"--dpi must be between 10 and 1200, got {dpi}")
    if target is not None:
        if target < 0:
            raise InvalidArgumentError(f"--target must be a class index >= 0, got {target}")
        gradcam = True  # --target implies --gradcam
    from cotviz.analysis.maps import parse_map_names

    map_names = parse_map_names(maps)
    if threads is not None and threads < 1:
        raise InvalidArgumentError(f"--threads must be at least 1, got {threads}")
    from cotviz.io.outputs import ensure_out_dir

    out_dir = ensure_out_dir(out)
    from cotviz.io import expand_inputs

    # 2. inputs (listed, not decoded)
    paths, problems = expand_inputs(images)
    report = RunReport()
    if not paths:
        if len(problems) == 1:
            raise problems[0].to_error()
        for p in problems:
            report.fail(p.item, p.message)
        raise ImageError("none of the inputs is an image file")
    # 3. model and selection, validated before any image is decoded
    import torch

    import cotviz.viz  # noqa: F401  # the drawing stack, so that settle_gc() below also covers it

    settle_gc()

    dev = _device(device)
    from cotviz.models import resolve_name

    canonical = resolve_name(model_name)
    model = _create_model(canonical, untrained=weights is None, num_classes=num_classes)  # built, not run: validation needs its layout
    sel = _select(model, canonical, stage, block, head, map_names, point is not None)
    num_classes = _pretrained_cfg(model).num_classes
    if target is not None and target >= num_classes:
        raise InvalidArgumentError(f"--target {target} out of range: {canonical} has classes 0..{num_classes - 1}")
    n_threads = threads if threads is not None else max(1, min(torch.get_num_threads(), batch_size, len(paths)))
    with _torch_threads(n_threads):
        return _execute(paths, problems, report, model=model, sel=sel, canonical=canonical, weights=weights, dev=dev,
                        size=size, crop_pct=crop_pct, no_crop=no_crop, out_dir=out_dir, fmt=fmt, point=point,
                        gradcam=gradcam, target=target, scale=scale, dpi=dpi, batch_size=batch_size,
                        json_out=json_out)


def _threads_now() -> int:
    import torch

    return int(torch.get_num_threads())


@contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    """Run with ``n`` intra-op threads, then restore the previous count."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _execute(paths: list[Path], problems: list[Any], report: RunReport, *, model: nn.Module, sel: Selection,
             canonical: str,
             weights: Path | None, dev: torch.device, size: int | None, crop_pct: float | None, no_crop: bool,
             out_dir: Path, fmt: Format, point: tuple[int, int] | None, gradcam: bool, target: int | None,
             scale: ScaleMode, dpi: int, batch_size: int, json_out: bool) -> int:
    """Build the model, then stream the images through in batches (everything is validated by now)."""
    from cotviz.errors import CotvizError
    from cotviz.io import PreprocessConfig
    from cotviz.io.outputs import OutputPaths

    lm = _finish_model(model, canonical, weights)
    lm.model.to(dev)
    cfg = PreprocessConfig.from_pretrained_cfg(_pretrained_cfg(lm.model).to_dict(), size=size, crop_pct=crop_pct,
                                               no_crop=no_crop)
    if lm.weights is None:
        print(f"warning: no --weights: the maps show an UNTRAINED {lm.name}: {UNTRAINED_NOTE}", file=sys.stderr)
    for p in problems:
        report.fail(p.item, p.message)
    from cotviz.io.outputs import output_bases

    names = [OutputPaths(out_dir, base, fmt.value) for base in output_bases(paths, lm.name, sel.stage)]
    st = RunSettings(sel, cfg, lm, point, gradcam, target, scale.value, fmt.value, dpi)

    # 4. stream the images through in batches
    items = [Item(i, p) for i, p in enumerate(paths)]
    show_progress = not json_out and sys.stderr.isatty()
    with _progress(show_progress) as progress:
        task = progress.add_task(f"{lm.name} stage {sel.stage}", total=len(items))
        for batch in _batches(items, batch_size):
            ready: list[Item] = []
            for it in batch:
                try:
                    _prepare(it, cfg, point)
                    ready.append(it)
                except CotvizError as err:
                    report.fail(str(it.path), str(err))
                    progress.advance(task)
            if ready:
                _render_batch(ready, [names[it.index] for it in ready], st, dev, report)
                progress.advance(task, len(ready))
            for it in batch:  # drop decoded pixels and tensors: memory stays flat over many batches
                it.loaded = it.pre = None
    if json_out:
        print_json({"model": lm.name, "weights": None if lm.weights is None else {
            "path": str(lm.weights.path), "sha256": lm.weights.sha256}, "untrained": lm.weights is None,
            "stage": sel.stage, "blocks": [f"stage{sel.stage}.block{b}" for b in sel.blocks], "head": sel.head,
            "maps": list(sel.maps),
            "threads": _threads_now(), "out_dir": str(out_dir), "images": report.outputs, "failed": report.failures})
    elif report.outputs:
        print(f"wrote {len(report.outputs)} figure(s) to {out_dir}", file=sys.stderr)  # plain: rich costs 0.3 s
    return 1 if report.failures else 0


@handle_errors
def attention(
    images: Annotated[list[str], typer.Argument(help="Image files, directories or glob patterns (quote globs).",
                                                show_default=False)],
    stage: Annotated[int, typer.Option("--stage", "-s", help="Stage 1..4 (layer1..layer4; 3 = 14x14 at 224).")] = 3,
    block: Annotated[list[int] | None, typer.Option(
        "--block", "-b", help="Block of the stage, 1-based; repeat for several. Default: every CoT block.",
        show_default=False)] = None,
    head: Annotated[int | None, typer.Option(
        "--head", help="Attention head, 0-based (C/8 per block). Default: mean over heads.", show_default=False)] = None,
    map_: Annotated[list[MapName] | None, typer.Option(
        "--map", "-m", help="Map type; repeat for several. Default: attention_entropy, static_energy, "
                            "dynamic_energy, dynamic_share.", show_default=False)] = None,
    point: Annotated[str | None, typer.Option(
        "--point", metavar="X,Y", help="Pixel of the ORIGINAL image: draw each head's k x k kernel at its cell "
                                       "and the local attention rollout.", show_default=False)] = None,
    gradcam: Annotated[bool, typer.Option("--gradcam", help="Add Grad-CAM (captum LayerGradCam on layerN).")] = False,
    target: Annotated[int | None, typer.Option(
        "--target", help="Class index for Grad-CAM (implies --gradcam). Default: the predicted class.",
        show_default=False)] = None,
    model: Annotated[str, typer.Option("--model", help="Model name or alias (see `cotviz models`).")] = "cotnet50",
    num_classes: Annotated[int | None, typer.Option(
        "--num-classes", help="Classifier outputs, for checkpoints fine-tuned on another label set. "
                              "Default: the model's (1000).", show_default=False)] = None,
    weights: Annotated[Path | None, typer.Option(
        "--weights", help="Checkpoint to load (official .pth.tar, state_dict or .safetensors; loaded safely). "
                          "Without it: untrained random weights.", show_default=False)] = None,
    device: Annotated[Device, typer.Option("--device", help="Where the model runs.")] = Device.cpu,
    size: Annotated[int | None, typer.Option(
        "--size", help="Model input side S in pixels. Default: the model's pretrained size.",
        show_default=False)] = None,
    crop_pct: Annotated[float | None, typer.Option(
        "--crop-pct", help="Centre-crop fraction: the shorter side is resized to S / crop_pct. Default: the model's.",
        show_default=False)] = None,
    no_crop: Annotated[bool, typer.Option("--no-crop", help="Resize the whole image to S x S instead of cropping.")] = False,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output directory.")] = Path("cotviz-out"),
    fmt: Annotated[Format, typer.Option("--format", help="Figure format.")] = Format.png,
    scale: Annotated[ScaleMode, typer.Option(
        "--scale", help="Colour scale: shared across the blocks of a map type, or per panel.")] = ScaleMode.shared,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Images per forward pass.")] = 8,
    dpi: Annotated[int, typer.Option("--dpi", help="Figure resolution (PNG).")] = 100,
    json_out: Annotated[bool, typer.Option("--json", help="Print a machine-readable summary on stdout.")] = False,
    threads: Annotated[int | None, typer.Option(
        "--threads", help="torch intra-op threads. Default: min(cores, --batch-size, number of images); one "
                          "image runs on one thread (faster on busy machines, the same numbers every time).",
        show_default=False)] = None,
) -> None:
    """Heatmaps of one stage: CoT static context, dynamic attention and fused output, per block.

    Writes <stem>_<model>_stage<N>.png (or .svg/.pdf), .npz (raw maps) and .json (metadata) per image.
    """
    code = _run(images, stage=stage, block=block, head=head, maps=[m.value for m in map_] if map_ else None,
                point_text=point, gradcam=gradcam, target=target, model_name=model, weights=weights, device=device,
                size=size, crop_pct=crop_pct, no_crop=no_crop, out=out, fmt=fmt, scale=scale, batch_size=batch_size,
                dpi=dpi, json_out=json_out, threads=threads, num_classes=num_classes)
    if code:
        raise typer.Exit(code)
