"""The result of explaining one image: :class:`Explanation`, its typed :class:`Metadata`, its JSON, figure and files.

JSON schema (``schema_version`` 1; what ``cotviz attention`` writes beside each figure and what
:meth:`Explanation.to_json` returns; non-finite numbers are written as ``null``):

====================  ==============================================================================================
``schema_version``    1
``cotviz_version``    the version that wrote it
``command``           ``"attention"`` (the pipeline that wrote the file)
``input``             ``path``, ``original_size`` [W, H], ``format``, ``mode``, ``exif_orientation``,
                      ``decode_reduction`` (null for a tensor image; path null for a PIL image or an array)
``model``             ``name``, ``init`` (one sentence), ``untrained`` (null: not known), the untrained recipe
                      (``zero_init_last_bn``, ``residual_scale``, ``batchnorm_calibration``) or ``weights``
                      (``path``, ``sha256``, ``source``, ``used_ema``)
``preprocessing``     ``input_size``, ``crop``, ``crop_pct``, ``resize_shorter_side_to``, ``interpolation``,
                      ``mean``, ``std`` (null for a tensor image)
``crop_box``          [left, top, right, bottom] of the model input in original pixels (null for a tensor image)
``geometry``          ``convention`` (in words) and per block: ``feature_size``, ``feature_stride``,
                      ``pooled_before``, ``blurred_after``, ``kernel_size``, ``heads``, ``layer_type``,
                      ``module_path``
``stage``, ``blocks``  the stage and the drawn blocks (``"stage3.block2"``); ``head`` (null = mean over heads)
``head_reduction``    how heads were reduced, in words
``scale``             the figure's colour scale (``shared`` / ``per-panel``)
``maps``              map name -> definition (``label``, ``units``, ``formula``, ``taps``, ``per_head``)
``statistics``        ``"<block>/<map>"`` -> ``min``, ``max``, ``mean`` of the finite values
``fusion_weights``    block -> ``fraction_dynamic_gt_static``, ``mean_dynamic_weight``
``prediction``        ``class``, ``probability``, ``logit`` of the top class, ``top5`` [{``class``, ``probability``}]
``gradcam``           null, or ``layer``, ``target``, ``target_given``, ``upsampling``, ``min``/``max``/``mean``
``point``             null, or ``xy_original``, ``uv_model_input``, ``cells`` (block -> [row, col]),
                      ``rollout`` (``from_block``, ``stage_input_stride``, ``stage_input_grid``, ``mass_kept``,
                      ``normalization``, ``definition``)
``nonfinite``         ``"<block>/<map>"`` keys (and ``"prediction"``) with NaN/Inf values; empty when all finite
``outputs``           ``figure``, ``npz`` (only in files written by :meth:`Explanation.save`)
====================  ==============================================================================================
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cotviz._version import __version__
from cotviz.analysis.maps import MAPS, map_key, map_statistics
from cotviz.errors import InvalidArgumentError
from cotviz.explain.selection import Point, Selection
from cotviz.io import PreprocessConfig
from cotviz.io.outputs import FigureFormat, OutputPaths, output_bases, save_figure, write_json, write_npz

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from cotviz.explore import CellData, Explorer, ExplorerData
    from cotviz.viz.figures import Scale

__all__ = [
    "BlockGeometry",
    "Explanation",
    "FusionSummary",
    "GradCam",
    "InputInfo",
    "Metadata",
    "PointResult",
    "Prediction",
    "Rollout",
    "SCHEMA_VERSION",
]

#: Version of the JSON written beside each figure (see the module docstring).
SCHEMA_VERSION = 1

GEOMETRY_CONVENTION = ("cell (i, j) of a map with stride s covers model-input pixels [j*s, (j+1)*s) x "
                       "[i*s, (i+1)*s); model input (u, v) -> original (x, y) = (left + u*(right-left)/S, "
                       "top + v*(bottom-top)/S) with crop_box = (left, top, right, bottom)")
ROLLOUT_DEFINITION = "see cotviz.analysis.rollout"
GRADCAM_UPSAMPLING = "bilinear, align_corners=False"


@dataclass(frozen=True)
class InputInfo:
    """Where the image came from (JSON ``input``); every field None where it does not apply."""

    path: str | None
    original_size: tuple[int, int] | None
    format: str | None
    mode: str | None
    exif_orientation: int | None
    decode_reduction: int | None

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "original_size": self.original_size, "format": self.format, "mode": self.mode,
                "exif_orientation": self.exif_orientation, "decode_reduction": self.decode_reduction}


@dataclass(frozen=True)
class BlockGeometry:
    """How one block's maps lie over the model input.

    ``feature_size`` (H, W) cells of ``feature_stride`` model-input pixels; the block average-pools before its
    CoT layer (``pooled_before``) or blur-pools after it (``blurred_after``); ``kernel_size`` k of the k x k
    window; ``heads`` attention maps per position (C/8, all groups).
    """

    feature_size: tuple[int, int]
    feature_stride: int
    pooled_before: bool
    blurred_after: bool
    kernel_size: int | None
    heads: int | None
    layer_type: str
    module_path: str

    def to_dict(self) -> dict[str, Any]:
        return {"feature_size": self.feature_size, "feature_stride": self.feature_stride,
                "pooled_before": self.pooled_before, "blurred_after": self.blurred_after,
                "kernel_size": self.kernel_size, "heads": self.heads, "layer_type": self.layer_type,
                "module_path": self.module_path}


@dataclass(frozen=True)
class Metadata:
    """How an explanation came about: the input, the model, the preprocessing and the request.

    ``model`` is the JSON ``model`` section (:meth:`cotviz.models.LoadedModel.provenance`); ``preprocessing``
    is None for a tensor image; ``notes`` are the lines the figure carries (e.g. the untrained warning).
    """

    input: InputInfo | None
    model: Mapping[str, Any]
    model_label: str
    weights_label: str
    preprocessing: PreprocessConfig | None
    selection: Selection
    notes: tuple[str, ...] = ()
    cotviz_version: str = __version__

    def preprocessing_dict(self) -> dict[str, Any] | None:
        cfg = self.preprocessing
        if cfg is None:
            return None
        return {"input_size": cfg.input_size, "crop": cfg.crop, "crop_pct": cfg.crop_pct,
                "resize_shorter_side_to": cfg.scale_size if cfg.crop else None,
                "interpolation": cfg.interpolation, "mean": cfg.mean, "std": cfg.std}


@dataclass(frozen=True)
class Prediction:
    """The model's top-5: ``classes`` (5,) int, ``probabilities`` (5,) softmax, ``logit`` of the top class."""

    classes: tuple[int, ...]
    probabilities: tuple[float, ...]
    logit: float

    @property
    def top(self) -> int:
        return self.classes[0]

    def to_dict(self) -> dict[str, Any]:
        return {"class": self.top, "probability": self.probabilities[0], "logit": self.logit,
                "top5": [{"class": c, "probability": p} for c, p in zip(self.classes, self.probabilities, strict=True)]}


@dataclass(frozen=True)
class GradCam:
    """Grad-CAM at ``layer{stage}``: ``cam`` (h, w) un-normalised (ReLU applied), ``upsampled`` (S, S) bilinear."""

    cam: np.ndarray
    upsampled: np.ndarray
    target: int
    target_given: bool


@dataclass(frozen=True)
class Rollout:
    """Local attention rollout of the point's cell back to the stage input.

    ``values`` (H0, W0) float (raw mass; see :mod:`cotviz.analysis.rollout`), ``stride`` model-input pixels
    per stage-input cell, ``from_block`` the block it starts from.
    """

    values: np.ndarray
    stride: int
    from_block: str

    @property
    def normalized(self) -> np.ndarray:
        """``values`` scaled to sum 1 (zeros stay zeros)."""
        total = float(np.sum(self.values))
        return self.values / total if total > 0 else np.zeros_like(self.values)


@dataclass(frozen=True)
class PointResult:
    """A point: ``xy`` in original pixels (model-input pixels for a tensor image), ``uv`` in model-input
    coordinates (pixel centre), ``cells`` block -> (row, col) of the cell under it (every recorded block)."""

    xy: Point
    uv: tuple[float, float]
    cells: Mapping[str, tuple[int, int]]


@dataclass(frozen=True)
class FusionSummary:
    """Fusion weights of one block: share of channels where a_dynamic > a_static, and the mean a_dynamic."""

    fraction_dynamic_gt_static: float
    mean_dynamic_weight: float


@dataclass(eq=False)
class Explanation:
    """What ``cotviz.explain`` found in one image.

    Attributes:
        source: the path as given, or ``"<PIL.Image>"`` / ``"<array>"`` / ``"<tensor>"``.
        error: why this image could not be explained (``explain_many`` only; every other field is then empty).
        maps: block -> map name -> (H, W) float32 map in the map's raw units
            (``{"stage3.block2": {"attention_entropy": ...}}``; definitions in ``cotviz.analysis.maps.MAPS``).
        kernels: with a point: block -> (M, K, K) raw attention A of every head at the point's cell.
        rollout: with a point: the local rollout of the point's cell (:class:`Rollout`).
        point: with a point: where it lies (:class:`PointResult`).
        gradcam: when asked: :class:`GradCam`.
        image: (S, S, 3) uint8, the pixels the model saw.
        crop_box: (left, top, right, bottom) of the model input in original pixels (None for a tensor image:
            there is no original image to map back to).
        original_size: (W, H) of the original image (None for a tensor image).
        geometry: block -> :class:`BlockGeometry` (feature stride and grid of every recorded block).
        prediction: the model's top-5 (:class:`Prediction`).
        fusion: block -> :class:`FusionSummary` (when the fusion weights were captured).
        nonfinite: map keys ``"<block>/<map>"`` (and ``"prediction"``) that hold NaN or Inf.
        metadata: :class:`Metadata`.
        cells: with ``cells=True``: every cell's kernels, each head's maps and the rollout plan
            (:class:`cotviz.explore.CellData`), what :meth:`explore` shows.
    """

    source: str
    error: str | None = None
    maps: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    kernels: dict[str, np.ndarray] | None = None
    rollout: Rollout | None = None
    point: PointResult | None = None
    gradcam: GradCam | None = None
    image: np.ndarray | None = None
    crop_box: tuple[float, float, float, float] | None = None
    original_size: tuple[int, int] | None = None
    geometry: dict[str, BlockGeometry] = field(default_factory=dict)
    prediction: Prediction | None = None
    fusion: dict[str, FusionSummary] = field(default_factory=dict)
    nonfinite: tuple[str, ...] = ()
    metadata: Metadata | None = None
    cells: CellData | None = None

    @property
    def ok(self) -> bool:
        """True when the image was explained (no :attr:`error`)."""
        return self.error is None

    def _require(self) -> Metadata:
        if self.error is not None or self.metadata is None:
            raise ValueError(f"{self.source} was not explained: {self.error}")
        return self.metadata

    # -------------------------------------------------------------------------------------------- numbers

    def arrays(self) -> dict[str, np.ndarray]:
        """The raw arrays as the ``.npz`` holds them: ``input`` (S, S, 3), ``"<block>/<map>"`` (H, W),
        ``"<block>/kernels"`` (M, K, K), ``"stage<S>/rollout"`` (H0, W0), ``"stage<S>/gradcam"`` (h, w) and
        ``"stage<S>/gradcam_upsampled"`` (S, S)."""
        meta = self._require()
        stage = meta.selection.stage
        assert self.image is not None
        out: dict[str, np.ndarray] = {"input": self.image}
        for block, maps in self.maps.items():
            for name, m in maps.items():
                out[map_key(block, name)] = m
        for block, k in (self.kernels or {}).items():
            out[f"{block}/kernels"] = k
        if self.rollout is not None:
            out[f"stage{stage}/rollout"] = self.rollout.values
        if self.gradcam is not None:
            out[f"stage{stage}/gradcam"] = self.gradcam.cam
            out[f"stage{stage}/gradcam_upsampled"] = self.gradcam.upsampled
        return out

    def statistics(self) -> dict[str, dict[str, float]]:
        """``"<block>/<map>"`` -> ``{"min", "max", "mean"}`` of the finite values (NaN if none)."""
        return {map_key(b, n): map_statistics(m) for b, maps in self.maps.items() for n, m in maps.items()}

    def to_json(self, *, scale: Scale = "shared", outputs: OutputPaths | None = None) -> dict[str, Any]:
        """The metadata JSON (see the module docstring), exactly as ``cotviz attention`` writes it beside each
        figure (``outputs``: the files written, as :meth:`save` records them)."""
        meta = self._require()
        sel = meta.selection
        point = None
        if self.point is not None and self.rollout is not None:
            point = {"xy_original": self.point.xy, "uv_model_input": self.point.uv,
                     "cells": {k: list(c) for k, c in self.point.cells.items()},
                     "rollout": {"from_block": self.rollout.from_block, "stage_input_stride": self.rollout.stride,
                                 "stage_input_grid": list(self.rollout.values.shape),
                                 "mass_kept": float(np.sum(self.rollout.values)), "normalization": "abs",
                                 "definition": ROLLOUT_DEFINITION}}
        cam = None
        if self.gradcam is not None:
            cam = {"layer": f"layer{sel.stage}", "target": self.gradcam.target,
                   "target_given": self.gradcam.target_given, "upsampling": GRADCAM_UPSAMPLING,
                   **map_statistics(self.gradcam.cam)}
        shown = sel.block_names
        data: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "cotviz_version": meta.cotviz_version,
            "command": "attention",
            "input": None if meta.input is None else meta.input.to_dict(),
            "model": dict(meta.model),
            "preprocessing": meta.preprocessing_dict(),
            "crop_box": None if self.crop_box is None else list(self.crop_box),
            "geometry": {"convention": GEOMETRY_CONVENTION,
                         "blocks": {b: self.geometry[b].to_dict() for b in shown}},
            "stage": sel.stage, "blocks": shown, "head": sel.head, "head_reduction": sel.head_reduction,
            "scale": scale,
            "maps": {n: MAPS[n].describe() for n in sel.maps},
            "statistics": self.statistics(),
            "fusion_weights": {b: {"fraction_dynamic_gt_static": f.fraction_dynamic_gt_static,
                                   "mean_dynamic_weight": f.mean_dynamic_weight} for b, f in self.fusion.items()},
            "prediction": None if self.prediction is None else self.prediction.to_dict(),
            "gradcam": cam,
            "point": point,
            "nonfinite": list(self.nonfinite),
        }
        if outputs is not None:
            data["outputs"] = {"figure": str(outputs.figure), "npz": str(outputs.npz)}
        return data

    # -------------------------------------------------------------------------------------------- figures

    def figure(self, scale: Scale = "shared", dpi: float = 100, *, raster: bool = False) -> Figure:
        """The ``cotviz attention`` figure (object-oriented matplotlib, no pyplot state); the caller saves it.

        ``raster=True`` composes the map panels into one image per row for PNG output at ``dpi`` (what :meth:`save`
        does for PNG; see :func:`cotviz.viz.attention_figure`); keep the default for SVG/PDF or another dpi."""
        from cotviz.viz import AttentionFigureData, GradCamView, PointView, attention_figure

        meta = self._require()
        sel = meta.selection
        assert self.image is not None
        shown = sel.block_names
        point_view = None
        if self.point is not None and self.rollout is not None and self.kernels is not None:
            point_view = PointView(xy=self.point.xy, uv=self.point.uv,
                                   cells={b: self.point.cells[b] for b in self.kernels}, kernels=self.kernels,
                                   rollout=self.rollout.normalized, rollout_stride=self.rollout.stride,
                                   rollout_block=self.rollout.from_block)
        cam_view = None
        if self.gradcam is not None:
            cam_view = GradCamView(self.gradcam.upsampled, self.gradcam.target, sel.stage)
        notes = self._notes(meta)
        data = AttentionFigureData(
            display=self.image, maps={n: {b: self.maps[b][n] for b in shown} for n in sel.maps},
            strides={b: self.geometry[b].feature_stride for b in shown}, blocks=shown, model=meta.model_label,
            weights=meta.weights_label, stage=sel.stage, head=sel.head, num_heads=sel.num_heads,
            source=Path(self.source).name if meta.input is not None and meta.input.path else self.source,
            crop_box=self.crop_box, original_size=self.original_size, gradcam=cam_view, point=point_view, notes=notes)
        return attention_figure(data, scale=scale, dpi=dpi, raster=raster)

    def _notes(self, meta: Metadata) -> list[str]:
        """The notes under a figure or page: the run's notes, then the non-finite maps, if any."""
        notes = list(meta.notes)
        if self.nonfinite:
            notes.append(f"NON-FINITE values (NaN/Inf) in {', '.join(self.nonfinite)}: those cells are blank.")
        return notes

    def default_base(self) -> str:
        """``<stem>_<model>_stage<N>``: the file base :meth:`save` uses unless told otherwise."""
        meta = self._require()
        stem = Path(self.source) if meta.input is not None and meta.input.path else Path("image")
        return output_bases([stem], meta.model_label, meta.selection.stage)[0]

    def save(self, out_dir: str | Path, format: str = "png", *, scale: Scale = "shared", dpi: float = 100,
             base: str | None = None) -> OutputPaths:
        """Write the figure (png/svg/pdf), the raw ``.npz`` and the metadata ``.json`` under ``out_dir``.

        Every file is written atomically (a temporary name, then a rename) and without timestamps; names are
        ``<base>.<ext>`` with ``base`` = :meth:`default_base` unless given (``cotviz attention`` passes names
        that stay unique within a run). Returns the paths.
        """
        from cotviz.io.outputs import ensure_out_dir
        from cotviz.viz.render import render_rgba

        try:
            fmt = FigureFormat(format).value
        except ValueError:
            raise InvalidArgumentError(f"unknown figure format {format!r}; choose one of "
                                       f"{', '.join(f.value for f in FigureFormat)}") from None
        out = OutputPaths(ensure_out_dir(out_dir), base or self.default_base(), fmt)
        fig = self.figure(scale=scale, dpi=dpi, raster=fmt == "png")  # PNG: map panels composed, one image per row
        save_figure(fig, out.figure, fmt, dpi=dpi, render=render_rgba)  # PNG: static titles/labels drawn once
        del fig  # no fig.clear(): clearing ~30 axes costs 0.3 s; the reference cycle goes at the next collection
        write_npz(out.npz, self.arrays())
        write_json(out.json, self.to_json(scale=scale, outputs=out))
        return out

    # -------------------------------------------------------------------------------------------- explorer

    def explore(self, *, head: int | None = None) -> Explorer:
        """The interactive HTML explorer of this explanation (:mod:`cotviz.explore`): ``.save("page.html")``
        writes the self-contained file; in a notebook it displays itself. Needs ``explain(..., cells=True)``.

        ``head``: the head the page opens on (default: the explanation's head; None = mean over heads).
        """
        from cotviz.explore import build_page

        return build_page(self.explorer_data(head=head))

    def explorer_data(self, *, head: int | None = None) -> ExplorerData:
        """What :meth:`explore` shows, as plain arrays (:class:`cotviz.explore.ExplorerData`)."""
        from cotviz.explore import BlockView, ExplorerData

        meta = self._require()
        if self.cells is None:
            raise InvalidArgumentError("this explanation has the kernels of one point only; explain with cells=True "
                                       "(cotviz.explain(model, image, cells=True)) to explore every cell")
        assert self.image is not None
        sel = meta.selection
        shown = set(sel.block_names)
        blocks = [BlockView(b, g.feature_size, g.feature_stride, int(g.kernel_size or 3), int(g.heads or 1),
                            b in shown, g.pooled_before, g.blurred_after)
                  for b, g in self.geometry.items() if b in self.cells.attention]
        details = {"model": meta.model_label, "weights": meta.weights_label, "input": self.source,
                   "model input": f"{self.image.shape[1]}x{self.image.shape[0]} px"
                                  + (f", crop box {tuple(round(v, 1) for v in self.crop_box)} of the original "
                                     f"{self.original_size}" if self.crop_box is not None else ""),
                   "stage": f"{sel.stage} (layer{sel.stage})", "cotviz": meta.cotviz_version}
        if self.prediction is not None:
            details["prediction"] = ", ".join(f"class {c}: {p:.3f}" for c, p in
                                              zip(self.prediction.classes, self.prediction.probabilities, strict=True))
        if head is not None and not 0 <= head < sel.num_heads:
            raise InvalidArgumentError(f"head {head} out of range: stage {sel.stage} has heads 0..{sel.num_heads - 1}")
        initial: dict[str, Any] = {"head": sel.head if head is None else head}
        if self.point is not None:
            initial["block"] = sel.block_names[-1]
            initial["cell"] = list(self.point.cells[sel.block_names[-1]])
        notes = self._notes(meta)
        return ExplorerData(image=self.image, blocks=blocks, maps=self.maps if sel.head is None else None,
                            cells=self.cells, map_names=sel.maps,
                            title=f"cotviz explore: {Path(self.source).name} · {meta.model_label} · stage {sel.stage}",
                            notes=notes, details=details, crop_box=self.crop_box, original_size=self.original_size,
                            initial=initial)

    def _repr_html_(self) -> str | None:
        """In a notebook: the explorer inline (with ``cells=True``; otherwise None, so the plain repr is shown)."""
        if self.cells is None or self.error is not None:
            return None
        return self.explore()._repr_html_()

    def __repr__(self) -> str:
        if self.error is not None:
            return f"Explanation(source={self.source!r}, error={self.error!r})"
        blocks = ", ".join(self.maps)
        top = self.prediction.top if self.prediction is not None else None
        return f"Explanation(source={self.source!r}, blocks=[{blocks}], prediction={top})"


def nonfinite_keys(maps: Mapping[str, Mapping[str, np.ndarray]]) -> tuple[str, ...]:
    """``"<block>/<map>"`` keys whose maps hold NaN or Inf."""
    return tuple(map_key(b, n) for b, ms in maps.items() for n, m in ms.items() if not np.isfinite(m).all())

