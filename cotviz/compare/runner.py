"""``compare``: one skeleton, its 3x3 slot filled by each operator in turn, everything else identical.

Per row (an operator spec such as ``cot``, ``sa:kernel=7`` or ``cot@4``; :mod:`cotviz.layers.spec`):

* counted on the meta device (no weights in memory): parameters, MACs under the ``complete`` and ``official``
  conventions (:mod:`cotviz.profile.rules`), the split by operator type, the peak activation memory, and what
  the official counter's rules skip;
* optionally measured: latency at each batch size with every row interleaved in one run (A, B, C, A, B, C, ...),
  medians and quartiles, the ratio to the first row, and the peak memory growth of the first forward;
* the paper's published top-1 (and Table 7's GPU throughput) beside the rows it has (:mod:`cotviz.compare.paper`).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from cotviz.compare.paper import PAPER_TABLES, PaperRow, published, table_specs
from cotviz.errors import InvalidArgumentError
from cotviz.profile.api import check_forward_memory, default_size, total_stride
from cotviz.profile.counting import count_model
from cotviz.profile.report import ProfileReport, build_report
from cotviz.resources import parse_device, torch_threads

__all__ = ["SKELETONS", "Comparison", "CompareRow", "Timing", "compare", "resolve_specs"]

#: Skeletons a comparison can be built on (the operator replaces every bottleneck's 3x3 slot).
SKELETONS: tuple[str, ...] = ("cotnet50", "cotnet101", "cotnext50_2x48d")


@dataclass(frozen=True)
class Timing:
    """Measured latency of one row at one batch size (ms per batch), interleaved with the other rows."""

    batch: int
    median_ms: float
    q1_ms: float
    q3_ms: float
    ratio: float  # median / the first row's median at the same batch
    peak_memory_bytes: int | None
    times_ms: tuple[float, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"batch": self.batch, "median_ms": self.median_ms, "q1_ms": self.q1_ms, "q3_ms": self.q3_ms,
                "ratio_to_first": self.ratio, "images_per_s": self.batch * 1000.0 / self.median_ms,
                "peak_memory_bytes": self.peak_memory_bytes, "times_ms": list(self.times_ms)}


@dataclass
class CompareRow:
    """One operator in the skeleton: counts under both conventions, the published figures, measurements."""

    spec: str
    complete: ProfileReport
    official: ProfileReport
    paper: PaperRow | None
    has_attention: bool
    timings: list[Timing] = field(default_factory=list)

    @property
    def params(self) -> int:
        return self.complete.params

    def to_dict(self) -> dict[str, Any]:
        c, o = self.complete, self.official
        return {
            "spec": self.spec, "params": c.params,
            "macs": {"complete": c.macs, "official": o.macs}, "flops": {"complete": c.flops, "official": o.flops},
            "operators": {r.type: r.macs for r in c.operators},
            "official_skips": sorted({u.op for u in o.uncounted}),
            "activation_peak_bytes": c.memory.activations_peak_bytes, "forward_bytes": c.memory.forward_bytes,
            "has_attention": self.has_attention,
            "paper": None if self.paper is None else {"label": self.paper.label, "top1": self.paper.top1,
                                                      "gpu_images_per_s_batch64": self.paper.throughput},
            "measure": [t.to_dict() for t in self.timings],
        }


@dataclass
class Comparison:
    """The rows of one comparison and how they were obtained."""

    skeleton: str
    size: int
    batch: int
    table: str | None
    rows: list[CompareRow]
    measure: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"skeleton": self.skeleton, "size": self.size, "count_batch": self.batch, "paper_table": self.table,
                "units": {"macs": "multiply-accumulates", "flops": "2 x MACs", "memory": "bytes",
                          "latency": "ms per batch"},
                "measure": self.measure, "rows": [r.to_dict() for r in self.rows]}


def resolve_specs(specs: Sequence[str] | None, table: str | None) -> list[str]:
    """The rows: ``specs`` as given, or a paper table's (``table5`` / ``table6`` / ``table7``); validated."""
    from cotviz.layers.spec import parse_layer_spec

    if table is not None and table not in PAPER_TABLES:
        raise InvalidArgumentError(f"unknown paper table {table!r}; choose one of {', '.join(PAPER_TABLES)}")
    items = list(specs or ()) or (table_specs(table) if table else [])
    if not items:
        raise InvalidArgumentError("give the operators to compare (--blocks cot,sa,conv) or --paper table5|6|7")
    for s in items:
        parse_layer_spec(s)  # one clear line for an unknown name, option or stage
    return list(dict.fromkeys(items))


def _build(skeleton: str, spec: str, *, meta: bool) -> nn.Module:
    from cotviz.models import create_model
    from cotviz.models.meta import build_meta_model

    if meta:
        return build_meta_model(skeleton, spatial_layer=spec)
    return create_model(skeleton, spatial_layer=spec, seed=0)


def _has_attention(model: nn.Module) -> bool:
    """Whether any operator of ``model`` exposes an ``attention`` tap (a local k x k attention to show)."""
    from cotviz.capture import cot_blocks

    return any("attention" in b.taps for b in cot_blocks(model))


def _interleaved(models: list[nn.Module], x: torch.Tensor, *, warmup: int, repeats: int,
                 device: torch.device) -> list[tuple[list[float], int | None]]:
    """Time one inference forward of every model in turn (A, B, C, A, B, C, ...): per model the times (ms) and
    the peak RSS growth of its first forward (CPU; None elsewhere)."""
    from cotviz.profile.measure import peak_memory, synchronize

    out: list[tuple[list[float], int | None]] = []
    with torch.inference_mode():
        for m in models:
            peak, _ = peak_memory(m, x, device)
            for _ in range(warmup):
                m(x)
            out.append(([], peak))
        for _ in range(repeats):
            for m, (times, _) in zip(models, out, strict=True):
                synchronize(device)
                t0 = time.perf_counter()
                m(x)
                synchronize(device)
                times.append((time.perf_counter() - t0) * 1000.0)
    return out


def _quartiles(times: list[float]) -> tuple[float, float, float]:
    if len(times) < 2:
        return times[0], times[0], times[0]
    q = statistics.quantiles(times, n=4, method="inclusive")
    return q[0], statistics.median(times), q[2]


def compare(specs: Sequence[str] | None = None, *, paper: str | None = None, skeleton: str = "cotnet50",
            size: int | None = None, batch: int = 1, measure: bool = False, batches: Sequence[int] = (1, 8),
            device: str = "cpu", threads: int | None = None, channels_last: bool = False, warmup: int = 2,
            repeats: int = 10, memory_check: bool = True) -> Comparison:
    """Count (and optionally measure) ``skeleton`` with each operator spec in its 3x3 slot.

    Args:
        specs: operator specs (``["cot", "sa:kernel=7", "conv"]``); or ``paper="table5"|"table6"|"table7"``.
        skeleton: one of :data:`SKELETONS`.
        size: input side (default: the skeleton's pretrained size); ``batch``: the counting batch.
        measure: also time every row at each of ``batches`` (random init, eval mode), rows interleaved.
        device, threads, channels_last, warmup, repeats: how to measure.
        memory_check: refuse (before allocating) a measurement whose forward cannot fit in memory.
    """
    from cotviz.models import resolve_name

    name = resolve_name(skeleton)
    if name not in SKELETONS:
        raise InvalidArgumentError(f"unknown skeleton {skeleton!r}; choose one of {', '.join(SKELETONS)}")
    rows_specs = resolve_specs(specs, paper)
    size = default_size(name) if size is None else int(size)
    if batch < 1 or any(int(b) < 1 for b in batches) or repeats < 1 or warmup < 0:
        raise InvalidArgumentError("--batch values and --repeats must be at least 1, --warmup at least 0")
    dev = parse_device(device)
    rows: list[CompareRow] = []
    for spec in rows_specs:
        model = _build(name, spec, meta=True)
        if size < total_stride(model):
            raise InvalidArgumentError(f"--size {size} is smaller than the total stride {total_stride(model)}")
        result = count_model(model, (batch, 3, size, size))
        label = f"{name}[{spec}]"
        rows.append(CompareRow(spec, build_report(result, model=label, convention="complete"),
                               build_report(result, model=label, convention="official"), published(spec, paper),
                               _has_attention(model)))
    info = None
    if measure:
        info = {"device": str(dev), "threads": threads or torch.get_num_threads(), "channels_last": channels_last,
                "warmup": warmup, "repeats": repeats, "order": "interleaved: every row once per round"}
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        if memory_check:
            largest = max(int(x) for x in batches)
            for r in rows:
                check_forward_memory(r.complete.memory.forward_bytes * largest // max(batch, 1), r.spec, size=size,
                                     batch=largest, device=dev)
        models = [_build(name, r.spec, meta=False).to(dev, memory_format=fmt).eval()  # type: ignore[call-overload]
                  for r in rows]  # built once, timed at every batch size
        with torch_threads(threads):
            info["threads"] = torch.get_num_threads()
            for b in batches:
                gen = torch.Generator().manual_seed(0)
                x = torch.randn(int(b), 3, size, size, generator=gen).to(dev, memory_format=fmt)
                results = _interleaved(models, x, warmup=warmup, repeats=repeats, device=dev)
                first = statistics.median(results[0][0])
                for r, (times, peak) in zip(rows, results, strict=True):
                    q1, med, q3 = _quartiles(times)
                    r.timings.append(Timing(int(b), med, q1, q3, med / first, peak, tuple(times)))
        del models
    return Comparison(name, size, batch, paper, rows, info)
