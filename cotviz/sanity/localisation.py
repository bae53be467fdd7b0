"""Localisation against ground truth: do the maps sit on the object? (relevance mass, pointing game, ROC-AUC)

Inputs are images with masks: ``IMAGE.png`` + ``IMAGE.mask.png`` (any image format; the mask is read as
grey, > 127 inside, and must have the image's size), as :meth:`cotviz.data.ShapesDataset.write_folder` writes
them. Each image goes through the runner (:class:`cotviz.explain.Explainer`) once per stage; the mask is carried
into model-input pixels through the same crop box (nearest neighbour), every map (a CoT map per block, Grad-CAM of
the stage) is bilinearly upsampled to the model input, and per image and stage (mean over the stage's CoT blocks):

* relevance-mass ratio (:func:`cotviz.analysis.sanity.relevance_mass_ratio`): 1 = no better than a uniform map,
* pointing game (:func:`~cotviz.analysis.sanity.pointing_game`): the maximum is on the object,
* ROC-AUC (:func:`~cotviz.analysis.sanity.roc_auc`): the map as a per-pixel object detector, 0.5 = chance.

:func:`localisation` runs several networks on the same images (typically the trained demo, the same architecture
untrained, and the trained one after full cascading randomisation: :func:`baselines`) into one table.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch import nn

from cotviz.analysis.catalog import MAP_INFO
from cotviz.analysis.sanity import pointing_game, relevance_mass_ratio, roc_auc, upsample_to
from cotviz.errors import ImageError, InvalidArgumentError
from cotviz.explain import Explainer, Explanation
from cotviz.io import expand_inputs
from cotviz.io.outputs import json_text, markdown_table
from cotviz.models.untrained import LoadedModel, describe_model, load_model
from cotviz.sanity.randomize import SEED, Randomizer
from cotviz.sanity.runner import GRADCAM, MASK_SUFFIX, finite_mean, summary

__all__ = ["METRICS", "LocalisationResult", "baselines", "localisation", "localisation_note", "localisation_rows",
           "mask_path", "masked_inputs", "render_localisation"]

#: Metric name -> function of (map upsampled to the model input, mask in model-input pixels).
METRICS = {"mass_ratio": relevance_mass_ratio, "pointing": pointing_game, "auc": roc_auc}


def mask_path(image: Path) -> Path:
    """``photo.png`` -> ``photo.mask.png`` (the same folder, PNG)."""
    return image.with_name(image.stem + MASK_SUFFIX + ".png")


def masked_inputs(items: Iterable[str | os.PathLike[str]]) -> list[tuple[Path, Path]]:
    """Image files, directories and globs expanded like the CLI, masks left out, each image paired with its mask.

    Raises:
        ImageError: an input that does not exist, or an image without its ``IMAGE.mask.png``.
    """
    expanded = expand_inputs([str(i) for i in items])
    if expanded.problems:
        p = expanded.problems[0]
        raise ImageError(f"{p.item}: {p.message}")
    pairs = []
    for path in expanded.paths:
        if path.stem.endswith(MASK_SUFFIX):
            continue
        mask = mask_path(path)
        if not mask.is_file():
            raise ImageError(f"{path}: missing mask {mask.name} (localisation needs IMAGE.png + IMAGE.mask.png)")
        pairs.append((path, mask))
    if not pairs:
        raise ImageError("no image with a mask found")
    return pairs


def _mask_in_input(mask_file: Path, ex: Explanation) -> np.ndarray:
    """The mask (original pixels) carried into the (S, S) model input through the explanation's crop box."""
    with Image.open(mask_file) as im:
        grey = im.convert("L")
    if ex.original_size is not None and grey.size != tuple(ex.original_size):
        raise ImageError(f"{mask_file.name} is {grey.size[0]}x{grey.size[1]} but its image is "
                         f"{ex.original_size[0]}x{ex.original_size[1]}: the mask must have the image's size")
    assert ex.image is not None and ex.crop_box is not None
    side = ex.image.shape[0]
    left, top, right, bottom = (float(v) for v in ex.crop_box)
    resized = grey.resize((side, side), Image.Resampling.NEAREST, box=(left, top, right, bottom))
    return np.asarray(resized) > 127  # (S, S)


@dataclass
class LocalisationResult:
    """``values[network][stage][map][metric]`` = (mean, std, count) over images; ``networks`` in order."""

    networks: list[str]
    stages: list[int]
    maps: list[str]
    images: int
    values: dict[str, dict[int, dict[str, dict[str, tuple[float, float, int]]]]] = field(default_factory=dict)
    area_share: float = float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {"networks": self.networks, "stages": self.stages, "maps": self.maps, "images": self.images,
                "mask_area_share": self.area_share, "metrics": list(METRICS),
                "values": [{"network": n, "stage": s, "map": m, "metric": k, "mean": v[0], "std": v[1], "count": v[2]}
                           for n in self.networks for s in self.stages for m in self.maps
                           for k, v in self.values[n][s].get(m, {}).items()]}


def baselines(name: str, weights: str | os.PathLike[str] | None, *, seed: int = SEED) -> dict[str, LoadedModel]:
    """The three networks of the table: ``trained`` (``weights``), ``untrained`` (cotviz's untrained demo
    network of the same architecture) and ``randomised`` (the trained one after full cascading randomisation)."""
    trained = load_model(name, weights)
    untrained = load_model(name, None)
    rnd = Randomizer(trained.model, seed=seed)
    randomised = rnd.randomized(tuple(u.name for u in rnd.units))
    return {"trained": trained, "untrained": untrained,
            "randomised": LoadedModel(randomised, trained.name, None, None, "trained network, every unit re-initialised")}


def localisation(networks: Mapping[str, nn.Module | LoadedModel], images: Iterable[str | os.PathLike[str]], *,
                 stages: Iterable[int] = (1, 2, 3, 4), maps: Iterable[str] | None = None, gradcam: bool = True,
                 batch_size: int = 8) -> LocalisationResult:
    """Localisation metrics of every network, stage and map on ``images`` (each with ``IMAGE.mask.png``).

    Raises:
        ImageError: a missing mask, a mask whose size differs from its image's, an unreadable image.
        InvalidArgumentError: a stage or map the networks do not have.
    """
    pairs = masked_inputs(images)
    stage_list = sorted(dict.fromkeys(int(s) for s in stages))
    names = list(maps) if maps is not None else list(MAP_INFO)
    result = LocalisationResult(list(networks), stage_list, [*names, *([GRADCAM] if gradcam else [])], len(pairs))
    shares: list[float] = []
    for label, net in networks.items():
        loaded = net if isinstance(net, LoadedModel) else describe_model(net)
        result.values[label] = {}
        for stage in stage_list:
            try:
                explainer = Explainer(loaded, stage=stage, maps=names, gradcam=gradcam)
            except InvalidArgumentError as err:
                raise InvalidArgumentError(f"{label}: {err}") from None
            per: dict[str, dict[str, list[float]]] = {m: {k: [] for k in METRICS} for m in result.maps}
            for (path, mask_file), ex in zip(pairs, explainer.stream([p for p, _ in pairs], batch_size), strict=True):
                if ex.error is not None:
                    raise ImageError(f"{path}: {ex.error}")
                mask = _mask_in_input(mask_file, ex)
                if label == result.networks[0] and stage == stage_list[0]:
                    shares.append(float(mask.mean()))
                side = mask.shape
                for m in names:
                    blocks = [upsample_to(ex.maps[b][m], side) for b in ex.maps]
                    for k, fn in METRICS.items():
                        per[m][k].append(finite_mean(fn(v, mask) for v in blocks))
                if gradcam:
                    assert ex.gradcam is not None
                    cam = upsample_to(ex.gradcam.cam, side)
                    for k, fn in METRICS.items():
                        per[GRADCAM][k].append(fn(cam, mask))
            result.values[label][stage] = {
                m: {k: summary(v) for k, v in per[m].items()} for m in result.maps}
    result.area_share = float(np.mean(shares)) if shares else float("nan")
    return result


def localisation_rows(r: LocalisationResult) -> tuple[list[str], list[list[str]]]:
    """Header and cells: one row per (stage, map); per network: mass ratio, pointing game, AUC (means)."""
    head = ["stage", "map"] + [f"{n} {k}" for n in r.networks for k in ("mass", "point", "AUC")]
    rows = []
    for s in r.stages:
        for m in r.maps:
            cells = [str(s), m]
            for n in r.networks:
                vals = r.values[n][s][m]
                cells += [_fmt(vals["mass_ratio"][0]), _fmt(vals["pointing"][0]), _fmt(vals["auc"][0])]
            rows.append(cells)
    return head, rows


def localisation_note(r: LocalisationResult) -> str:
    return (f"{r.images} image(s), mean mask area share {r.area_share:.3f}. mass = relevance-mass ratio (1 = uniform "
            "map), point = pointing-game hit rate, AUC = ROC-AUC of the map as an object detector (0.5 = chance); "
            "means over images, per image the mean over the stage's CoT blocks.")


def render_localisation(r: LocalisationResult, fmt: str) -> str:
    """``"markdown"``, ``"csv"`` (one line per network, stage, map and metric, with std) or ``"json"``."""
    if fmt == "json":
        return json_text(r.to_dict())
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["network", "stage", "map", "metric", "mean", "std", "images"])
        for v in r.to_dict()["values"]:
            w.writerow([v["network"], v["stage"], v["map"], v["metric"], f"{v['mean']:.6g}", f"{v['std']:.6g}",
                        v["count"]])
        return buf.getvalue()
    head, rows = localisation_rows(r)
    return markdown_table(head, rows, left=2) + "\n\n" + localisation_note(r) + "\n"


def _fmt(v: float) -> str:
    return "–" if not math.isfinite(v) else f"{v:.2f}"
