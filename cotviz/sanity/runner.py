"""``sanity(model, images)``: how much the maps change when the weights are randomised (Adebayo et al. 2018).

For each randomisation step (:class:`~cotviz.sanity.randomize.Randomizer`: cascading from the logits down and
independent, one unit at a time) every image goes through the runner (:class:`cotviz.explain.Explainer`, in
batches: memory flat in the number of images) and each map is compared with the trained network's map of the
same image by Spearman rank correlation (:func:`cotviz.analysis.sanity.spearman`): per image, the mean over the
stage's CoT blocks; per step, the mean over images with its standard deviation.

A map is flagged *insensitive to the weights* when its mean similarity is still above ``threshold`` at the
cascading step that has randomised everything from the logits down to (and including) the first block of its
stage. Forward maps of stage ``s`` cannot change before that step (nothing before it lies upstream of them):
their similarity is exactly 1 there, which the table shows as a check of the tool itself.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from cotviz.analysis.attribution import grad_cam
from cotviz.analysis.catalog import MAP_INFO
from cotviz.analysis.sanity import spearman
from cotviz.errors import ImageError, InvalidArgumentError
from cotviz.explain import Explainer, Explanation
from cotviz.explain.inputs import Prepared
from cotviz.explain.loader import Failure, load_batches
from cotviz.io import expand_inputs
from cotviz.models.untrained import LoadedModel, describe_model
from cotviz.sanity.randomize import SEED, Mode, Randomizer

__all__ = ["GRADCAM", "SanityResult", "SanityStep", "sanity"]

#: The name Grad-CAM has among the maps of a sanity result.
GRADCAM = "gradcam"
#: ``IMAGE.mask.png`` beside ``IMAGE.png`` is the ground-truth mask of that image (never an input to explain).
MASK_SUFFIX = ".mask"
ProgressFn = Callable[[str, int, int], None]


@dataclass(frozen=True)
class SanityStep:
    """One row: the similarity of every map after a randomisation step.

    Attributes:
        mode: ``"cascading"`` or ``"independent"``.
        index: 0 = trained network, k = after randomising k units (cascading) or unit k alone (independent).
        unit: the unit randomised at this step (None at step 0).
        mean, std: map name -> mean and standard deviation over the images of the per-image Spearman ρ (NaN if
            no image gave a defined correlation).
        count: map name -> images with a defined correlation (a constant map has none).
    """

    mode: str
    index: int
    unit: str | None
    mean: dict[str, float]
    std: dict[str, float]
    count: dict[str, int]


@dataclass
class SanityResult:
    """What :func:`sanity` found.

    Attributes:
        model: the network's name; weights: its weights label; stage: the stage of the maps.
        maps: the compared maps (the CoT map names, then ``"gradcam"`` when it was asked).
        units: the randomisation units, logits first. images: how many images were compared; errors: the inputs
            that could not be read (source, message).
        steps: one :class:`SanityStep` per mode and step. check_step: the cascading step whose similarity decides
            the flags. threshold: the flag threshold. insensitive: the maps flagged insensitive to the weights.
        examples: mode -> step -> map -> the first image's map (the stage's last CoT block; Grad-CAM's cam).
    """

    model: str
    weights: str
    stage: int
    maps: list[str]
    units: list[str]
    images: int
    errors: list[tuple[str, str]]
    steps: list[SanityStep]
    check_step: int
    threshold: float
    insensitive: list[str]
    examples: dict[str, dict[int, dict[str, np.ndarray]]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready result (NaN -> None by the JSON encoder)."""
        return {
            "model": self.model, "weights": self.weights, "stage": self.stage, "maps": self.maps,
            "units": self.units, "images": self.images, "errors": [{"source": s, "error": e} for s, e in self.errors],
            "metric": "Spearman rank correlation between the trained and the randomised network's map, per image "
                      "(mean over the stage's CoT blocks), then mean and std over images",
            "check_step": self.check_step, "check_unit": self.units[self.check_step - 1] if self.check_step else None,
            "threshold": self.threshold, "insensitive": self.insensitive,
            "steps": [{"mode": s.mode, "step": s.index, "unit": s.unit, "mean": s.mean, "std": s.std,
                       "count": s.count} for s in self.steps],
        }


def _inputs(images: Any) -> tuple[list[Any], list[tuple[str, str]]]:
    """Paths/directories/globs expanded once (like the CLI; ``*.mask.png`` masks left out); other images as they are."""
    items = [images] if isinstance(images, (str, os.PathLike)) or not isinstance(images, Iterable) else list(images)
    out: list[Any] = []
    problems: list[tuple[str, str]] = []
    for item in items:
        if isinstance(item, (str, os.PathLike)):
            expanded = expand_inputs([item])
            problems += [(p.item, p.message) for p in expanded.problems]
            out += [p for p in expanded.paths if not p.stem.endswith(MASK_SUFFIX)]  # IMAGE.mask.png: a mask
        else:
            out.append(item)
    return out, problems


def _per_image(ex: Explanation, maps: Sequence[str], cam: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """map name -> (blocks, H, W) stack of the stage's CoT blocks (Grad-CAM: (1, h, w), ``cam`` or the
    explanation's)."""
    out = {name: np.stack([ex.maps[b][name] for b in ex.maps]) for name in maps if name != GRADCAM}
    if GRADCAM in maps:
        if cam is None:
            assert ex.gradcam is not None
            cam = ex.gradcam.cam
        out[GRADCAM] = cam[None]
    return out


def summary(values: Iterable[float]) -> tuple[float, float, int]:
    """``(mean, std, count)`` of the finite ``values`` (none: NaN, NaN, 0)."""
    v = np.array([x for x in values if math.isfinite(x)])
    return (float(v.mean()), float(v.std()), len(v)) if len(v) else (float("nan"), float("nan"), 0)


def finite_mean(values: Iterable[float]) -> float:
    """The mean of the finite ``values`` (none: NaN)."""
    return summary(values)[0]


def _similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over blocks of the Spearman ρ of each block's map (NaN blocks left out; all NaN -> NaN)."""
    return finite_mean(spearman(x, y) for x, y in zip(a, b, strict=True))


def _check_step(units: list[str], stage: int) -> int:
    """The cascading step after which every unit from the logits down to the stage's first block is random."""
    prefix = f"layer{stage}."
    hits = [k for k, u in enumerate(units, start=1) if u.startswith(prefix)]
    return hits[-1] if hits else len(units)


def sanity(model: nn.Module | LoadedModel, images: Any, *, stage: int = 3, maps: Iterable[str] | None = None,
           gradcam: bool = True, modes: Sequence[Mode] = ("cascading", "independent"), batch_size: int = 8,
           threshold: float = 0.5, seed: int = SEED, examples: bool = True, preprocess: Any = None,
           progress: ProgressFn | None = None) -> SanityResult:
    """Run the model parameter randomisation test on ``images``.

    Args:
        model: a trained cotviz network (eval mode) or a :class:`LoadedModel`; never modified.
        images: paths, directories, globs (expanded like the CLI), PIL images, arrays or tensors.
        stage: the stage whose CoT maps (and Grad-CAM) are compared. maps: CoT map names (default: all).
        gradcam: also compare Grad-CAM at the stage (target: the trained network's predicted class, kept fixed).
        modes: ``"cascading"`` and/or ``"independent"``. batch_size: images per forward pass.
        threshold: a map whose mean ρ at the check step exceeds it is flagged insensitive.
        seed: seed of the re-initialisation. examples: keep the first image's maps per step (for the figure).
        preprocess: as for :class:`cotviz.explain.Explainer`.
        progress: called with (mode, step, steps) before each step.

    Raises:
        InvalidArgumentError: a bad stage/map/threshold. ImageError: no image could be read.
    """
    if not isinstance(threshold, (int, float)) or not -1 <= threshold <= 1:
        raise InvalidArgumentError(f"--threshold must be a number in [-1, 1], got {threshold}")
    modes = tuple(dict.fromkeys(modes))
    if not modes:
        raise InvalidArgumentError("no randomisation mode given (cascading, independent)")
    loaded = model if isinstance(model, LoadedModel) else describe_model(model)
    names = list(maps) if maps is not None else list(MAP_INFO)
    request: dict[str, Any] = dict(stage=stage, maps=names, preprocess=preprocess)
    base = Explainer(loaded, gradcam=gradcam, **request)  # validates stage and maps before any randomising
    names = list(base.selection.maps) + ([GRADCAM] if gradcam else [])
    inputs, errors = _inputs(images)
    randomizer = Randomizer(loaded.model, seed=seed)
    units = [u.name for u in randomizer.units]

    # Step 0: the trained network's maps of every readable image (and the Grad-CAM targets, kept fixed).
    originals: list[dict[str, np.ndarray]] = []
    targets: list[int] = []
    readable: list[Any] = []
    for item, ex in zip(inputs, base.stream(inputs, batch_size), strict=True):
        if ex.error is not None:
            errors.append((ex.source, ex.error))
            continue
        originals.append(_per_image(ex, names))
        targets.append(ex.gradcam.target if ex.gradcam is not None else -1)
        readable.append(item)
    if not readable:
        raise ImageError("no image could be read" + (f": {errors[0][0]}: {errors[0][1]}" if errors else ""))
    kept: dict[str, dict[int, dict[str, np.ndarray]]] = {}
    rows: list[SanityStep] = []
    first = {n: originals[0][n][-1] for n in names}
    for mode in modes:
        kept[mode] = {0: first} if examples else {}
        ones = {n: 1.0 for n in names}
        rows.append(SanityStep(mode, 0, None, dict(ones), {n: 0.0 for n in names}, {n: len(readable) for n in names}))
        for step in randomizer.steps(mode):
            if step.index == 0:
                continue
            if progress is not None:
                progress(mode, step.index, len(units))
            values: dict[str, list[float]] = {n: [] for n in names}
            # one Explainer for the maps; Grad-CAM of the trained network's prediction (not the random one's), per image
            explainer = Explainer(step.model, **request)
            done = 0
            for batch in load_batches(readable, explainer.preprocess, batch_size=batch_size):
                for p in batch:
                    if isinstance(p, Failure):  # the file changed between steps
                        raise ImageError(f"{p.source} became unreadable during the run: {p.message}")
                explanations = explainer.explain_prepared(batch)
                cams = None
                if gradcam:
                    x = torch.stack([p.tensor for p in batch if isinstance(p, Prepared)]).to(explainer.device)
                    cams = grad_cam(step.model, x, stage, targets[done:done + len(batch)]).cam.numpy()
                for j, ex in enumerate(explanations):
                    i = done + j
                    now = _per_image(ex, names, None if cams is None else cams[j])
                    for n in names:
                        values[n].append(_similarity(originals[i][n], now[n]))
                    if examples and i == 0:
                        kept[mode][step.index] = {n: now[n][-1] for n in names}
                done += len(batch)
            del explainer  # it holds the randomised copy: free it before the next step builds another
            mean, std, count = {}, {}, {}
            for n in names:
                mean[n], std[n], count[n] = summary(values[n])
            rows.append(SanityStep(mode, step.index, step.unit, mean, std, count))
            del step
    check = _check_step(units, stage)
    flagged: list[str] = []
    if "cascading" in modes:
        at = next(r for r in rows if r.mode == "cascading" and r.index == check)
        flagged = [n for n in names if math.isfinite(at.mean[n]) and at.mean[n] > threshold]
    return SanityResult(loaded.name, loaded.weights_label, stage, names, units, len(readable), errors, rows, check,
                        float(threshold), flagged, kept)
