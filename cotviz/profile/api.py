"""High-level entry points: profile registered models by name (counted, optionally measured); estimate the
memory of a forward before running it; collect latency-vs-accuracy points."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from cotviz.errors import InvalidArgumentError
from cotviz.models.meta import build_meta_model
from cotviz.profile.choices import CONVENTIONS, DTYPES, MIN_SIZE, check_choice
from cotviz.profile.counting import count_model
from cotviz.profile.measure import MeasureOptions, MeasureResult, measure_model, parse_dtype
from cotviz.profile.report import ProfileReport, build_report
from cotviz.resources import check_memory, parse_device

__all__ = ["AccuracyPoint", "accuracy_point", "check_forward_memory", "default_size", "estimate_forward_memory",
           "model_names", "profile_model", "profile_models", "total_stride"]

#: How a caller turns the memory check off (named in the refusal).
_MEMORY_OVERRIDE = "or --no-memory-check / memory_check=False to try anyway"


def total_stride(model: nn.Module) -> int:
    """Total downsampling factor of a backbone (``feature_info[-1].reduction``; 32 for every CoTNet)."""
    info = getattr(model, "feature_info", None)
    return int(info[-1].reduction) if info else 32


def default_size(name: str) -> int:
    """The input size of the model's pretrained weights (``pretrained_cfg.image_size``)."""
    from cotviz.models.registry import model_entry

    return model_entry(name).pretrained_cfg.image_size


def _check_size(size: int, batch: int) -> None:
    if size < MIN_SIZE:
        raise InvalidArgumentError(f"--size must be at least {MIN_SIZE} pixels (the total stride of the networks), "
                                   f"got {size}")
    if batch < 1:
        raise InvalidArgumentError(f"--batch must be at least 1, got {batch}")
    if 64 * batch * size * size >= 2**62:  # widest activations ~16 x batch x size^2 elements: int64 overflow
        raise InvalidArgumentError(f"--size {size} with --batch {batch} is too large to count "
                                   f"(tensors beyond 2^62 elements)")


def estimate_forward_memory(model: nn.Module | str, size: int, batch: int = 1, *, dtype: str = "float32") -> int:
    """Bytes one inference forward of ``model`` on a (batch, 3, size, size) input needs: peak live
    activations (input included), parameters and buffers.

    Counted on the meta device (no memory, no arithmetic): about 0.1-0.5 s for a CoTNet at 224 px on this
    machine, independent of ``size``. ``model``: a registered name or alias (built on meta in ``dtype``) or a
    module (counted on a meta copy in its own dtype; the module is untouched). Activations are those of a
    plain eager forward; hooks that keep tensors (capture) add to them.
    """
    _check_size(int(size), int(batch))
    if isinstance(model, str):
        model = build_meta_model(model, dtype=parse_dtype(dtype))
    result = count_model(model, (int(batch), 3, int(size), int(size)))
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    return int(result.peak_bytes + weights + result.buffer_bytes)


def check_forward_memory(needed: int, name: str, *, size: int, batch: int,
                         device: torch.device | str = "cpu") -> None:
    """Refuse (``ResourceLimitError``) a forward that needs more than the device has available now.

    CPU: :func:`cotviz.resources.check_memory` (``MemAvailable`` and the cgroup limit); CUDA: the device's
    free memory (``torch.cuda.mem_get_info``).
    """
    dev = torch.device(device)
    available = int(torch.cuda.mem_get_info(dev)[0]) if dev.type == "cuda" else None
    check_memory(needed, f"{name} at {size} px, batch {batch}", override=_MEMORY_OVERRIDE, available=available)


def profile_model(name: str, *, size: int | None = None, batch: int = 1, convention: str = "complete",
                  depth: int | None = None, dtype: str = "float32", measure: MeasureOptions | None = None,
                  memory_check: bool = True) -> ProfileReport:
    """Count a registered model (name or alias) on the meta device -- no weights, no arithmetic -- and
    optionally measure it.

    Args:
        name: registered name or alias (unknown names raise ``UnknownModelError`` with suggestions).
        size: square input side, at least 32; default the pretrained input size of the model.
        batch: batch size (MACs and activation memory scale with it).
        convention: ``"complete"`` (every op) or ``"official"`` (the official counter's rules and quirks).
        depth: also report per-module rows at this module-path depth.
        dtype: activation/input dtype for the memory estimate and the measurement (``float32``, ``float16``,
            ``bfloat16``).
        measure: also measure latency and peak memory with these options (``report.measure``).
        memory_check: before measuring, refuse (``ResourceLimitError``) when the counted forward memory
            (``report.memory.forward_bytes``) exceeds what is available; ``False`` tries anyway.
    """
    from cotviz.models.registry import resolve_name

    canonical = resolve_name(name)
    convention = check_choice(convention, CONVENTIONS, "convention")
    dt = parse_dtype(dtype)
    if depth is not None and depth < 1:
        raise InvalidArgumentError(f"--depth must be at least 1, got {depth}")
    size = default_size(canonical) if size is None else int(size)
    _check_size(size, batch)
    if measure is not None:
        measure.check()
    model = build_meta_model(canonical, dtype=dt)
    stride = total_stride(model)
    if size < stride:
        raise InvalidArgumentError(f"--size {size} is smaller than the total stride {stride} of {canonical}; "
                                   f"use at least {stride} (pretrained: {default_size(canonical)})")
    report = build_report(count_model(model, (batch, 3, size, size)), model=canonical, convention=convention,
                          depth=depth)
    if measure is not None:
        if memory_check:
            check_forward_memory(report.memory.forward_bytes, canonical, size=size, batch=batch,
                                 device=parse_device(measure.device))
        report.measure = measure_model(canonical, size=size, batch=batch, device=measure.device, dtype=dtype,
                                       channels_last=measure.channels_last, warmup=measure.warmup,
                                       repeats=measure.repeats, threads=measure.threads, memory_check=False)
    return report


def model_names(names: Sequence[str] | None) -> list[str]:
    """Canonical names of ``names`` (names or aliases; unknown ones raise ``UnknownModelError``), de-duplicated
    in order; ``None``: every registered model."""
    from cotviz.models.registry import list_models, resolve_name

    canonical = list_models() if names is None else list(dict.fromkeys(resolve_name(n) for n in names))
    if not canonical:
        raise InvalidArgumentError("give at least one model name (see `cotviz models`)")
    return canonical


def profile_models(names: Sequence[str] | None = None, *, size: int | None = None, batch: int = 1,
                   convention: str = "complete", depth: int | None = None, dtype: str = "float32",
                   measure: MeasureOptions | None = None, memory_check: bool = True) -> list[ProfileReport]:
    """:func:`profile_model` for several models, every argument validated before the first count.

    ``names``: names or aliases, resolved and de-duplicated in order (``None``: every registered model).
    """
    check_choice(convention, CONVENTIONS, "convention")
    check_choice(dtype, DTYPES, "dtype")
    if depth is not None and depth < 1:
        raise InvalidArgumentError(f"--depth must be at least 1, got {depth}")
    _check_size(MIN_SIZE if size is None else int(size), batch)
    if measure is not None:
        measure.check()
    canonical = model_names(names)
    return [profile_model(n, size=size, batch=batch, convention=convention, depth=depth, dtype=dtype,
                          measure=measure, memory_check=memory_check) for n in canonical]


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
