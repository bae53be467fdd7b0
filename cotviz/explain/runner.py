"""The runner: a model and a request in, one :class:`~cotviz.explain.result.Explanation` per image out.

The one place that turns "an image and a model" into maps (DESIGN.md): ``cotviz attention``, and every command
after it, is a consumer of :class:`Explainer`, :func:`explain` and :func:`explain_many`.

Per batch: decode + preprocess each image (:mod:`cotviz.explain.inputs`; a file that cannot be read becomes an
``Explanation`` whose ``error`` says why) -> one forward under :func:`cotviz.capture.capture` (inference mode,
only the selected stage, blocks and taps) -> maps (:mod:`cotviz.analysis.maps`), kernels and local rollout at the
point (:mod:`cotviz.analysis.rollout`), Grad-CAM (:mod:`cotviz.analysis.attribution`, captum, from the capture
pass's logits) -> the typed result. Nothing is drawn or written here: ``Explanation.figure`` / ``.save`` do that.
"""

from __future__ import annotations

import os
import warnings
from collections import deque
from collections.abc import Generator, Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from cotviz.analysis.maps import compute_maps, kernels_at, map_key
from cotviz.analysis.rollout import cell_at, stage_rollout
from cotviz.analysis.stats import fusion_preference
from cotviz.capture import Record, capture
from cotviz.errors import InvalidArgumentError
from cotviz.explain.inputs import ImageInput, Prepared, prepare
from cotviz.explain.loader import Failure, check_batch_size, check_workers, load_batches
from cotviz.explain.result import (
    BlockGeometry,
    Explanation,
    FusionSummary,
    GradCam,
    InputInfo,
    Metadata,
    PointResult,
    Prediction,
    Rollout,
    nonfinite_keys,
)
from cotviz.explain.selection import Selection, select
from cotviz.io import PreprocessConfig, expand_inputs
from cotviz.models.untrained import (
    UNTRAINED_NOTE,
    LoadedModel,
    describe_model,
    finish_model,
    new_model,
    pretrained_cfg_of,
)
from cotviz.resources import parse_device

__all__ = ["Explainer", "UntrainedModelWarning", "explain", "explain_many", "preprocess_config"]


class UntrainedModelWarning(UserWarning):
    """The maps come from the untrained demo network (no weights were given)."""


def _caller_level() -> int:
    """``stacklevel`` of the first frame outside cotviz (a warning then points at the user's own line)."""
    import sys

    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_globals.get("__name__", "").startswith("cotviz"):
        frame, level = frame.f_back, level + 1  # type: ignore[assignment]
    return level


def untrained_message(name: str) -> str:
    return f"no weights given: the maps show an UNTRAINED {name}: {UNTRAINED_NOTE}"


def preprocess_config(model: nn.Module, *, size: int | None = None, crop_pct: float | None = None,
                      no_crop: bool = False) -> PreprocessConfig:
    """The model's pretrained preprocessing with the CLI's overrides (``--size``, ``--crop-pct``, ``--no-crop``)."""
    if size is not None and size < 32:
        raise InvalidArgumentError(f"--size must be at least 32 pixels (the network's total stride), got {size}")
    if crop_pct is not None and not 0 < crop_pct <= 1:
        raise InvalidArgumentError(f"--crop-pct must be in (0, 1], got {crop_pct}")
    return PreprocessConfig.from_pretrained_cfg(pretrained_cfg_of(model).to_dict(), size=size, crop_pct=crop_pct,
                                                no_crop=no_crop)


def _geometry(rec: Record) -> BlockGeometry:
    size = rec.feature_size or (1, 1)
    return BlockGeometry(feature_size=(int(size[0]), int(size[1])), feature_stride=int(rec.feature_stride or 1),
                         pooled_before=rec.pooled_before, blurred_after=rec.blurred_after,
                         kernel_size=rec.kernel_size, heads=rec.total_heads, layer_type=rec.layer_type,
                         module_path=rec.module_path)


def _input_info(prep: Prepared) -> InputInfo | None:
    if prep.crop_box is None:
        return None  # a tensor image: no original
    return InputInfo(None if prep.path is None else str(prep.path), prep.original_size, prep.input_format,
                     prep.input_mode, prep.orientation, prep.reduction)


class Explainer:
    """A network and a validated request, ready to explain images in batches.

    Everything that can be checked without an image is checked here, in the order the CLI reports it: the
    selection against the network's layout (before a checkpoint is loaded or the untrained network is
    calibrated), then the Grad-CAM target, then the weights.

    Args:
        model: a cotviz network (used as is, on its device unless ``device`` is given), or a registered name:
            then it is built like the CLI builds it (``weights`` loaded safely, or the untrained demo network
            with an :class:`UntrainedModelWarning`), or a :class:`cotviz.models.untrained.LoadedModel`.
        stage, blocks, head, maps, point: what to compute (see :func:`cotviz.explain.selection.select`).
        gradcam, target: Grad-CAM of ``target`` (default: the predicted class); a target implies Grad-CAM.
        preprocess: how images become model inputs: a :class:`cotviz.io.PreprocessConfig`, or overrides of the
            model's pretrained config (``{"size": 320, "crop_pct": 1.0, "no_crop": False}``); default: the model's.
        weights, num_classes: with a model name, the checkpoint and its class count.
        device: ``"cpu"`` / ``"cuda"`` / ``"cuda:N"``.
        memory_check: refuse (``ResourceLimitError``, before allocating) a batch whose forward would need more
            memory than the device has available (:func:`cotviz.profile.estimate_forward_memory`).
        allow_nonfinite: load ``weights`` even if they hold NaN/Inf (refused by default); the maps that come out
            non-finite are then listed in ``Explanation.nonfinite``.
        cells: also keep every cell's kernels, each head's maps and the rollout plan (``Explanation.cells``,
            :func:`cotviz.explore.cell_data`, what ``Explanation.explore()`` shows); blocks 1..max(blocks) are
            then recorded, as for a point.
    """

    def __init__(self, model: nn.Module | str | LoadedModel, *, stage: int = 3, blocks: Iterable[int] | None = None,
                 head: int | None = None, maps: Iterable[str] | None = None, point: Any = None,
                 gradcam: bool = False, target: int | None = None,
                 preprocess: PreprocessConfig | Mapping[str, Any] | None = None,
                 weights: str | os.PathLike[str] | None = None, num_classes: int | None = None,
                 device: str | torch.device | None = None, memory_check: bool = True,
                 allow_nonfinite: bool = False, cells: bool = False) -> None:
        if target is not None:
            if isinstance(target, bool) or not isinstance(target, int) or target < 0:
                raise InvalidArgumentError(f"--target must be a class index >= 0, got {target}")
            gradcam = True  # a target implies Grad-CAM
        if num_classes is not None and num_classes < 1:
            raise InvalidArgumentError(f"--num-classes must be at least 1, got {num_classes}")
        dev = None if device is None else parse_device(str(device))
        if isinstance(model, str):
            from cotviz.models import resolve_name

            name = resolve_name(model)
            net = new_model(name, untrained=weights is None, num_classes=num_classes)  # built, not run
        else:
            if weights is not None or num_classes is not None:
                raise InvalidArgumentError("weights= and num_classes= apply to a model name; load the checkpoint "
                                           "into your network yourself (cotviz.load_checkpoint)")
            net = model.model if isinstance(model, LoadedModel) else model
            name = model.name if isinstance(model, LoadedModel) else \
                str(getattr(model, "model_name", None) or type(model).__name__)
            if net.training:  # BatchNorm would normalise with (and update) the batch's statistics
                raise InvalidArgumentError(f"{name} is in training mode: its maps would depend on the batch and "
                                           "explaining would change its BatchNorm statistics; call model.eval() first")
        self.selection: Selection = select(net, stage=stage, blocks=blocks, head=head, maps=maps, point=point,
                                           model_name=name, every_cell=cells)
        self.cells = cells
        classes = int(getattr(net, "num_classes", 0) or 0)
        if target is not None and classes and target >= classes:
            raise InvalidArgumentError(f"--target {target} out of range: {name} has classes 0..{classes - 1}")
        self.gradcam, self.target = gradcam, target
        self.preprocess = preprocess if isinstance(preprocess, PreprocessConfig) else \
            preprocess_config(net, **dict(preprocess or {}))
        self.memory_check = memory_check
        self._checked: set[tuple[int, int]] = set()
        self._check_memory(net, name, self.preprocess.input_size, 1)  # before weights load or an image is decoded
        if isinstance(model, str):
            self.loaded: LoadedModel = finish_model(net, name, weights, allow_nonfinite=allow_nonfinite)
            if self.loaded.untrained:
                warnings.warn(untrained_message(name), UntrainedModelWarning, stacklevel=_caller_level())
        elif isinstance(model, LoadedModel):
            self.loaded = model  # built by cotviz.models.untrained: it knows how its weights came about
        else:
            self.loaded = describe_model(net)
        if dev is not None:
            self.loaded.model.to(dev)
        param = next(self.loaded.model.parameters(), None)
        self.device = param.device if param is not None else torch.device("cpu")
        notes = []
        if self.loaded.untrained:
            notes.append(f"Untrained network, {UNTRAINED_NOTE}. Pass --weights with an official checkpoint for "
                         "meaningful maps.")
        self._notes = tuple(notes)

    @property
    def model(self) -> nn.Module:
        return self.loaded.model

    # ------------------------------------------------------------------------------------------ batches

    def explain(self, image: ImageInput) -> Explanation:
        """Explain one image (errors are raised, not returned)."""
        prep = prepare(image, self.preprocess, self.selection.point)
        return self._run([prep])[0]

    def explain_batch(self, images: Sequence[ImageInput]) -> list[Explanation]:
        """Explain ``images`` in one forward pass; an image that cannot be read gives an Explanation with ``error``."""
        if not images:
            return []
        batch = next(load_batches(images, self.preprocess, point=self.selection.point, batch_size=len(images)))
        return self.explain_prepared(batch)

    def explain_prepared(self, batch: Sequence[Prepared | Failure]) -> list[Explanation]:
        """One forward pass over the prepared images of ``batch`` (as :func:`cotviz.explain.loader.load_batches`
        yields them); a :class:`~cotviz.explain.loader.Failure` becomes an Explanation with ``error``, in its place."""
        ready = [p for p in batch if isinstance(p, Prepared)]
        done = iter(self._run(ready)) if ready else iter(())
        return [next(done) if isinstance(p, Prepared) else Explanation(p.source, error=p.message) for p in batch]

    def stream(self, images: Iterable[ImageInput | Explanation], batch_size: int = 8, workers: int = 0,
               ) -> Generator[Explanation, None, None]:
        """Explain ``images`` ``batch_size`` at a time, yielding each result as its batch finishes, in input order
        (memory stays flat in the number of images: nothing is kept between batches). An ``Explanation`` among
        the inputs (an input already known to be unreadable) is passed through in its place.

        ``workers``: processes that decode and preprocess the next batches while this one runs
        (:func:`cotviz.explain.loader.load_batches`; the results are identical whatever the number); 0 = decode
        here, lazily. With workers the inputs are listed first (paths: a few bytes each).
        """
        check_batch_size(batch_size)
        check_workers(workers, "workers")
        self.check_memory(self.preprocess.input_size, batch_size)
        before: deque[list[Explanation]] = deque()  # per loadable input: the passed-through results just before it
        passed: list[Explanation] = []

        def loadable() -> Iterator[ImageInput]:
            for item in images:
                if isinstance(item, Explanation):
                    passed.append(item)
                    continue
                before.append(passed[:])
                passed.clear()
                yield item

        items: Iterable[ImageInput] = loadable() if workers == 0 else list(loadable())
        batches = load_batches(items, self.preprocess, point=self.selection.point, batch_size=batch_size,
                               workers=workers)
        try:
            for batch in batches:
                for ex in self.explain_prepared(batch):
                    yield from before.popleft()
                    yield ex
        finally:
            batches.close()  # the decoding workers stop now (also on an error or Ctrl-C), not at collection
        yield from passed

    def check_memory(self, size: int, batch: int) -> None:
        """Refuse a (batch, 3, size, size) forward that needs more memory than the device has available now.

        Cheap for ordinary inputs: the meta-device count (~0.1 s) runs only when a generous bound (2 KiB per
        input pixel and image plus the weights, about 10x what the CoTNets need) exceeds half the available memory.
        """
        self._check_memory(self.loaded.model, self.loaded.name, size, batch)

    def _check_memory(self, model: nn.Module, name: str, size: int, batch: int) -> None:
        if not self.memory_check or (size, batch) in self._checked:
            return
        from cotviz.profile.api import check_forward_memory, estimate_forward_memory
        from cotviz.resources import available_memory

        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        weights = sum(p.numel() * p.element_size() for p in model.parameters())
        bound = 2048 * batch * size * size + weights
        avail = available_memory() if device.type == "cpu" else None
        if device.type != "cpu" or avail is None or bound > avail // 2:
            check_forward_memory(estimate_forward_memory(model, size, batch), name, size=size, batch=batch,
                                 device=device)
        self._checked.add((size, batch))

    def _run(self, batch: list[Prepared]) -> list[Explanation]:
        """Forward one batch under capture and turn the records into explanations."""
        sel, model = self.selection, self.loaded.model
        self.check_memory(int(batch[0].tensor.shape[-1]), len(batch))
        x = torch.stack([p.tensor for p in batch]).to(self.device)  # (B, 3, S, S)
        with torch.inference_mode(), capture(model, stages=[sel.stage], blocks=sel.capture_blocks, taps=sel.taps,
                                             device="cpu") as cap:
            logits = model(x).float().cpu()  # (B, num_classes)
        records = [cap[name] for name in sel.capture_names]
        shown = sel.block_names
        maps = compute_maps(cap, sel.maps, sel.head, blocks=shown)  # "<block>/<map>" -> (B, H, W)
        cam = None
        if self.gradcam:
            from cotviz.analysis.attribution import grad_cam

            targets = self.target if self.target is not None else logits.argmax(dim=1).tolist()
            cam = grad_cam(model, x, sel.stage, targets)
        probs = logits.softmax(dim=1)  # (B, num_classes)
        top = probs.topk(min(5, probs.shape[1]), dim=1)
        fusion = {b: fusion_preference(cap[b]) for b in shown if cap[b].fusion_weights is not None}
        geometry = {r.name: _geometry(r) for r in records}
        meta_base = dict(model=self.loaded.provenance(), model_label=self.loaded.name,
                         weights_label=self.loaded.weights_label, selection=sel, notes=self._notes)
        every: list[Any] = [None] * len(batch)
        if self.cells:
            from cotviz.explore.cells import cell_data

            every = list(cell_data(records, sel.maps, shown))  # per image, the per-head maps computed once per batch
        results = []
        for i, prep in enumerate(batch):
            per_block = {b: {n: maps[map_key(b, n)][i].numpy() for n in sel.maps} for b in shown}
            kernels = rollout = point = None
            if prep.uv is not None and sel.point is not None:
                kernels, rollout, point = self._point(records, shown, i, prep.uv, sel.point)
            gc_result = None
            if cam is not None:
                gc_result = GradCam(cam.cam[i].numpy(), cam.upsampled[i].numpy(), int(cam.target[i]),
                                    self.target is not None)
            bad = nonfinite_keys(per_block)
            if not torch.isfinite(logits[i]).all():
                bad = (*bad, "prediction")
            results.append(Explanation(
                source=prep.source, maps=per_block, kernels=kernels, rollout=rollout, point=point, gradcam=gc_result,
                image=prep.display, crop_box=prep.crop_box, original_size=prep.original_size, geometry=geometry,
                prediction=Prediction(tuple(int(c) for c in top.indices[i]),
                                      tuple(float(p) for p in top.values[i]), float(logits[i, top.indices[i, 0]])),
                fusion={b: FusionSummary(float(f["fraction"][i]), float(f["mean_weight"][i])) for b, f in fusion.items()},
                nonfinite=bad, cells=every[i],
                metadata=Metadata(input=_input_info(prep), preprocessing=None if prep.crop_box is None
                                  else self.preprocess, **meta_base)))  # type: ignore[arg-type]
        return results

    @staticmethod
    def _point(records: list[Record], shown: list[str], i: int, uv: tuple[float, float], xy: tuple[int, int],
               ) -> tuple[dict[str, np.ndarray], Rollout, PointResult]:
        """Kernels at the point's cell in the ``shown`` blocks and the rollout of image ``i`` from the last recorded
        block (blocks 1..n of the stage) back to the stage input."""
        u, v = uv
        cells: dict[str, tuple[int, int]] = {}
        for rec in records:
            grid = rec.feature_size or (1, 1)
            cells[rec.name] = cell_at(u, v, int(rec.feature_stride or 1), (int(grid[0]), int(grid[1])))
        kernels = {rec.name: kernels_at(rec, i, cells[rec.name]).float().numpy()  # (M, K, K)
                   for rec in records if rec.name in shown}
        last = records[-1]
        roll, stride = stage_rollout(records, i, cells[last.name])  # (H0, W0) on the stage-input grid
        return kernels, Rollout(roll.float().numpy(), stride, last.name), PointResult(xy, uv, cells)


def _flatten_inputs(images: ImageInput | Iterable[ImageInput]) -> Iterator[ImageInput | Explanation]:
    """Paths, directories and glob patterns expanded like the CLI (``cotviz.io.expand_inputs``); other images as
    they are. A pattern that matches nothing or a missing file yields an error Explanation in its place."""
    items: Iterable[Any] = [images] if isinstance(images, (str, os.PathLike, torch.Tensor, np.ndarray)) or \
        not isinstance(images, Iterable) else images
    for item in items:
        if isinstance(item, (str, os.PathLike)):
            expanded = expand_inputs([item])
            for problem in expanded.problems:
                yield Explanation(problem.item, error=problem.message)
            yield from expanded.paths
        else:
            yield item


def explain(model: nn.Module | str, image: ImageInput, *, stage: int = 3, blocks: Iterable[int] | None = None,
            head: int | None = None, maps: Iterable[str] | None = None, point: Any = None, gradcam: bool = False,
            target: int | None = None, preprocess: PreprocessConfig | Mapping[str, Any] | None = None,
            **options: Any) -> Explanation:
    """Explain one image: the CoT maps of ``stage`` (every CoT block, or ``blocks``), kernels and rollout at
    ``point``, Grad-CAM when asked.

    Args:
        model: a cotviz network, or a registered name (``"cotnet50"``: built like the CLI builds it; without
            ``weights=`` the untrained demo network, with an :class:`UntrainedModelWarning`).
        image: a path, a ``PIL.Image``, an (H, W, 3) uint8 array, or a preprocessed (3, S, S) / (1, 3, S, S)
            tensor (then ``crop_box`` is None and ``point`` is in model-input pixels).
        stage: 1..4 (``layer1..layer4``). blocks: 1-based. head: 0-based, None = mean over heads.
        maps: names from ``cotviz.analysis.maps.MAPS`` (default: entropy, static, dynamic, dynamic share).
        point: (x, y) or ``"x,y"`` in original-image pixels.
        gradcam, target: Grad-CAM of ``target`` (default: the predicted class).
        preprocess: a :class:`cotviz.io.PreprocessConfig`, or overrides of the model's pretrained config
            (``{"size": 320}``, ``crop_pct``, ``no_crop``); default: the model's.
        **options: ``weights``, ``num_classes`` (with a model name), ``device``, ``cells`` (keep every cell's
            kernels and each head's maps for :meth:`Explanation.explore`).

    Raises:
        CotvizError: a request out of range (the message names the valid range), an unreadable image.
    """
    return Explainer(model, stage=stage, blocks=blocks, head=head, maps=maps, point=point, gradcam=gradcam,
                     target=target, preprocess=preprocess, **options).explain(image)


def explain_many(model: nn.Module | str, images: ImageInput | Iterable[ImageInput], *, batch_size: int = 8,
                 workers: int = 0, **request: Any) -> Iterator[Explanation]:
    """Explain many images, ``batch_size`` per forward pass, yielding results as they are ready.

    ``images``: paths, directories and glob patterns (expanded like the CLI), PIL images, arrays or tensors,
    or an iterable of them. An input that cannot be read yields an ``Explanation`` whose ``error`` says why
    (never raised in the middle of a batch). ``request``: the keywords of :func:`explain`. Memory is flat in the
    number of images. The request is validated before the first image is read. ``workers``: processes that
    decode the next batches meanwhile (:meth:`Explainer.stream`; the same results). To save every result with
    figures drawn in parallel, see :func:`cotviz.explain.pipeline.explain_and_save`.
    """
    explainer = Explainer(model, **request)
    check_batch_size(batch_size)  # now, not at the first image (stream is lazy)
    check_workers(workers, "workers")
    return explainer.stream(_flatten_inputs(images), batch_size, workers)


def default_threads(batch_size: int, n_images: int, save_workers: int = 0) -> int:
    """The CLI's default intra-op threads: ``min(cores - save_workers, batch size, images)``, at least 1 (one
    image runs on one thread: faster on busy machines and the same numbers every time; the figure-saving
    processes get cores of their own)."""
    return max(1, min(torch.get_num_threads() - save_workers, batch_size, n_images))
