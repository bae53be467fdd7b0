"""High-level entry points: profile a registered model by name; collect latency-vs-accuracy points."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from cotviz.errors import InvalidArgumentError
from cotviz.profile.counting import build_meta_model, count_model
from cotviz.profile.measure import MeasureResult, parse_dtype
from cotviz.profile.report import CONVENTIONS, ProfileReport, summarize

__all__ = ["AccuracyPoint", "accuracy_point", "default_size", "profile_model", "total_stride"]


def total_stride(model: nn.Module) -> int:
    """Total downsampling factor of a backbone (``feature_info[-1].reduction``; 32 for every CoTNet)."""
    info = getattr(model, "feature_info", None)
    return int(info[-1].reduction) if info else 32


def default_size(name: str) -> int:
    """The input size of the model's pretrained weights (``pretrained_cfg.image_size``)."""
    from cotviz.models.registry import model_entry

    return model_entry(name).pretrained_cfg.image_size


def profile_model(name: str, *, size: int | None = None, batch: int = 1, convention: str = "complete",
                  depth: int | None = None, dtype: str = "float32") -> ProfileReport:
    """Count a registered model (name or alias) on the meta device: no weights, no arithmetic.

    Args:
        name: registered name or alias (unknown names raise ``UnknownModelError`` with suggestions).
        size: square input side; default the pretrained input size of the model.
        batch: batch size (MACs and activation memory scale with it).
        convention: ``"complete"`` (every op) or ``"official"`` (the official counter's rules and quirks).
        depth: also report per-module rows at this module-path depth.
        dtype: activation/input dtype for the memory estimate (``float32``, ``float16``, ``bfloat16``).
    """
    from cotviz.models.registry import resolve_name

    canonical = resolve_name(name)
    if convention not in CONVENTIONS:
        raise InvalidArgumentError(f"unknown convention {convention!r}; choose one of {', '.join(CONVENTIONS)}")
    if depth is not None and depth < 1:
        raise InvalidArgumentError(f"--depth must be at least 1, got {depth}")
    size = default_size(canonical) if size is None else int(size)
    if size < 1:
        raise InvalidArgumentError(f"--size must be a positive number of pixels, got {size}")
    if batch < 1:
        raise InvalidArgumentError(f"--batch must be at least 1, got {batch}")
    model = build_meta_model(canonical, dtype=parse_dtype(dtype))
    stride = total_stride(model)
    if size < stride:
        raise InvalidArgumentError(f"--size {size} is smaller than the total stride {stride} of {canonical}; "
                                   f"use at least {stride} (pretrained: {default_size(canonical)})")
    result = count_model(model, (batch, 3, size, size))
    return summarize(result, model=canonical, convention=convention, depth=depth)


@dataclass(frozen=True)
class AccuracyPoint:
    """One model on the latency-vs-accuracy chart: measured latency, published top-1."""

    model: str
    paper_name: str
    size: int
    latency_ms: float
    q1_ms: float
    q3_ms: float
    top1: float
    paper_resolution: int


def accuracy_point(name: str, measure: MeasureResult) -> AccuracyPoint | None:
    """Pair a measurement with the model's published ImageNet-1k top-1 (``None`` if none was published).

    Top-1 values are those of the official README results table (github.com/JDAI-CV/CoTNet, snapshot
    895e024, single-crop ImageNet-1k val), carried by ``model_entry(name).paper``.
    """
    from cotviz.models.registry import model_entry

    entry = model_entry(name)
    if entry.paper is None:
        return None
    return AccuracyPoint(entry.name, entry.paper.name, measure.size, measure.median_ms, measure.q1_ms,
                         measure.q3_ms, entry.paper.top1, entry.paper.resolution)
