"""Aggregate a :class:`~cotviz.profile.counting.CountResult` into a :class:`ProfileReport`.

A report gives one convention's numbers (``complete`` or ``official``) per model, per stage, per block,
per module (at a chosen depth) and per operator type, the other convention's total for comparison,
the ops that are not counted, and the activation / weight memory. Units: MACs (multiply-accumulates)
and FLOPs = 2 x MACs, both exact integers; memory in bytes.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from cotviz.errors import InvalidArgumentError
from cotviz.profile.choices import CONVENTIONS, Convention, check_choice
from cotviz.profile.counting import CountResult
from cotviz.profile.measure import MeasureResult
from cotviz.profile.rules import DATA, KINDS

__all__ = ["CONVENTIONS", "Convention", "MemoryEstimate", "OperatorRow", "ProfileReport", "Row", "UncountedOp",
           "build_report"]

#: Bytes per element of the weight dtypes reported.
_WEIGHT_DTYPES: dict[str, int] = {"float32": 4, "float16": 2, "bfloat16": 2, "int8": 1}
_STAGE = re.compile(r"^layer\d+$")
_MAX_PATHS = 5  # module paths listed per uncounted op


class _HasMacs:
    """Mixin of the row dataclasses: FLOPs derived from MACs, and the dict form with both."""

    macs: int

    @property
    def flops(self) -> int:
        return 2 * self.macs

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "flops": self.flops}  # type: ignore[call-overload]


@dataclass(frozen=True)
class Row(_HasMacs):
    """Counts of one model part (stage, block or module): parameters, MACs, allocated activation bytes."""

    name: str
    type: str
    params: int
    macs: int
    activation_bytes: int


@dataclass(frozen=True)
class OperatorRow(_HasMacs):
    """MACs of one operator type (conv, linear, local aggregation, ...) and how many calls produced them."""

    type: str
    macs: int
    calls: int


@dataclass(frozen=True)
class UncountedOp:
    """An op the chosen convention does not count, with where it runs and why.

    ``macs_complete``: what the complete convention counts for it (``None``: no rule at all).
    """

    op: str
    module_type: str
    calls: int
    modules: tuple[str, ...]
    macs_complete: int | None
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "modules": list(self.modules)}


@dataclass(frozen=True)
class MemoryEstimate:
    """Inference memory from the meta-device forward (bytes) and the weights at several dtypes."""

    dtype: str
    input_bytes: int
    output_bytes: int
    activations_total_bytes: int
    activations_peak_bytes: int
    peak_module: str
    weights_bytes: dict[str, int]
    buffers_bytes: int
    method: str

    @property
    def forward_bytes(self) -> int:
        """Memory of one inference forward: peak activations (input included) + weights at ``dtype`` + buffers."""
        return self.activations_peak_bytes + self.weights_bytes[self.dtype] + self.buffers_bytes

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ProfileReport:
    """Everything ``cotviz profile`` reports for one model at one input size."""

    model: str
    size: int
    batch: int
    convention: str
    params: int
    buffers: int
    macs: int
    other_convention: dict[str, Any]
    stages: list[Row]
    blocks: list[Row]
    operators: list[OperatorRow]
    uncounted: list[UncountedOp]
    memory: MemoryEstimate
    notes: list[str]
    module_types: dict[str, int] = field(default_factory=dict)
    depth: int | None = None
    modules: list[Row] | None = None
    measure: MeasureResult | None = None  # set by ``profile_model(..., measure=...)``

    @property
    def flops(self) -> int:
        return 2 * self.macs

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (see ``cotviz profile --format json``)."""
        out: dict[str, Any] = {
            "model": self.model, "size": self.size, "batch": self.batch,
            "input_shape": [self.batch, 3, self.size, self.size], "convention": self.convention,
            "units": {"macs": "multiply-accumulates", "flops": "2 x MACs", "memory": "bytes"},
            "params": self.params, "buffers": self.buffers, "macs": self.macs, "flops": self.flops,
            "gmacs": round(self.macs / 1e9, 4), "other_convention": self.other_convention,
            "stages": [r.to_dict() for r in self.stages], "blocks": [r.to_dict() for r in self.blocks],
            "operators": [r.to_dict() for r in self.operators], "uncounted": [u.to_dict() for u in self.uncounted],
            "memory": self.memory.to_dict(), "notes": list(self.notes),
        }
        if self.module_types:
            out["module_types"] = dict(self.module_types)
        if self.modules is not None:
            out["depth"] = self.depth
            out["modules"] = [r.to_dict() for r in self.modules]
        if self.measure is not None:
            out["measure"] = self.measure.to_dict()
        return out


# ------------------------------------------------------------------------------------------- grouping

def _stage_mapper(paths: list[str]) -> Callable[[str], str]:
    """path -> stage name: ``stem`` / ``layerN`` / ``head`` for ResNets, else the top-level child."""
    top = [p for p in paths if p and "." not in p]
    stages = [p for p in top if _STAGE.match(p)]
    if not stages:
        return lambda path: path.split(".")[0] if path else "(top level)"
    first, last = top.index(stages[0]), top.index(stages[-1])
    where = {p: ("stem" if i < first else "head" if i > last else p) for i, p in enumerate(top)}
    return lambda path: where.get(path.split(".")[0], "(top level)") if path else "(top level)"


def _truncate(path: str, depth: int) -> str:
    return ".".join(path.split(".")[:depth]) if path else ""


class _Acc:
    """Per-key sums of params, MACs and allocation bytes, keeping first-seen order."""

    def __init__(self) -> None:
        self.params: dict[str, int] = defaultdict(int)
        self.macs: dict[str, int] = defaultdict(int)
        self.bytes: dict[str, int] = defaultdict(int)
        self.order: dict[str, int] = {}

    def touch(self, key: str, rank: int) -> None:
        self.order.setdefault(key, rank)

    def rows(self, type_of: Callable[[str], str], label: Callable[[str], str] = str) -> list[Row]:
        """Non-empty rows in first-seen (module registration) order."""
        keys = sorted(self.order, key=lambda k: self.order[k])
        return [Row(label(k), type_of(k), self.params[k], self.macs[k], self.bytes[k])
                for k in keys if self.params[k] or self.macs[k] or self.bytes[k]]


def _aggregate(result: CountResult, macs_by_path: list[tuple[str, int]],
               key: Callable[[str], str | None]) -> _Acc:
    """Sum params / MACs / allocations per ``key(path)`` (``None``: skip)."""
    rank = {p: i for i, p in enumerate(result.module_types)}
    acc = _Acc()
    for path, n in result.module_params.items():
        k = key(path)
        if k is not None:
            acc.params[k] += n
            acc.touch(k, rank.get(path, 0))
    for path, m in macs_by_path:
        k = key(path)
        if k is not None:
            acc.macs[k] += m
            acc.touch(k, rank.get(path, 0))
    for path, b in result.allocations:
        k = key(path)
        if k is not None:
            acc.bytes[k] += b
            acc.touch(k, rank.get(path, 0))
    return acc


# ------------------------------------------------------------------------------------------- uncounted

def _group_uncounted(items: Sequence[tuple[str, str, str, int | None]], reason: str) -> list[UncountedOp]:
    """(op, module type, path, macs) items -> one :class:`UncountedOp` per (op, module type)."""
    calls: dict[tuple[str, str], int] = defaultdict(int)
    macs: dict[tuple[str, str], int | None] = {}
    paths: dict[tuple[str, str], list[str]] = defaultdict(list)
    for op, mtype, path, m in items:
        k = (op, mtype)
        calls[k] += 1
        macs[k] = None if m is None else (macs.get(k) or 0) + m
        if path not in paths[k] and len(paths[k]) < _MAX_PATHS:
            paths[k].append(path)
    ordered = sorted(calls, key=lambda k: -(macs[k] or 0))  # biggest omissions first
    return [UncountedOp(k[0], k[1], calls[k], tuple(paths[k]), macs[k], reason) for k in ordered]


def _uncounted(result: CountResult, convention: str) -> list[UncountedOp]:
    types = result.module_types
    unknown = [(o.op, types.get(o.module, "?"), o.module, None) for o in result.ops if o.kind is None]
    out = _group_uncounted(unknown, "no counting rule: not in the totals")
    if convention == "official":
        skipped = [(o.op, types.get(o.module, "?"), o.module, o.macs) for o in result.ops
                   if o.kind is not None and o.macs > 0 and not o.official]
        out += _group_uncounted(skipped, "no hook in the official counter")
    return out


# ------------------------------------------------------------------------------------------- notes

def _notes(convention: str, by_kind: dict[str, dict[str, int]], totals: dict[str, int],
           uncounted: list[UncountedOp], result: CountResult) -> list[str]:
    notes = ["MACs = multiply-accumulates; FLOPs = 2 x MACs. Non multiply-add ops (comparisons, exp, lone adds) "
             "count one MAC per element. The official README 'FLOPs' column is GMACs (official counter)."]
    diff = totals["complete"] - totals["official"]
    parts = [f"{k} {by_kind['complete'][k] - by_kind['official'][k]:+,}" for k in KINDS
             if by_kind["complete"][k] != by_kind["official"][k]]
    if convention == "complete":
        notes.append("convention 'complete': every aten op of the forward is counted (incl. GroupNorm, softmax, "
                     "cat/mean, fusion multiply-adds, residual adds, BlurPool, biases); the local aggregation "
                     "once, C*k*k*H*W MACs per sample.")
        notes.append(f"the official counter (--convention official) gives {totals['official']:,} MACs; "
                     f"this count minus the official one: {diff:+,} in all; by operator type: "
                     f"{', '.join(parts) or 'no difference'}.")
    else:
        notes.append("convention 'official': the rules and quirks of JDAI-CV/CoTNet utils/flops_counter.py "
                     "(leaf modules only: Conv2d, BatchNorm2d, ReLU/SiLU/Sigmoid, pools, Linear without bias, "
                     "LocalConvolution with the CoXt double count); everything else is listed as uncounted.")
        notes.append(f"the complete count (--convention complete) is {totals['complete']:,} MACs; complete "
                     f"minus official: {diff:+,} in all; by operator type: {', '.join(parts) or 'no difference'}.")
    if any(u.macs_complete is None for u in uncounted):
        notes.append("some ops have no counting rule; they are listed under 'uncounted' and not in the totals.")
    notes.append("activation memory: every tensor an op allocates in one eager inference forward on the meta "
                 "device (views and in-place results excluded), live until its last reference dies; the peak "
                 "includes the input and excludes weights.")
    return notes


# ------------------------------------------------------------------------------------------- the report

def build_report(result: CountResult, *, model: str, convention: str = "complete",
                 depth: int | None = None) -> ProfileReport:
    """Aggregate raw counts into the report of one convention.

    Args:
        result: from :func:`cotviz.profile.counting.count_model` on a (B, 3, S, S) input.
        model: model name for the report.
        convention: ``"complete"`` or ``"official"``.
        depth: also report per-module rows at this module-path depth (1 = top-level children).
    """
    convention = check_choice(convention, CONVENTIONS, "convention")
    if depth is not None and depth < 1:
        raise InvalidArgumentError(f"--depth must be at least 1, got {depth}")
    complete_macs = [(o.module, o.macs) for o in result.ops]
    official_macs = [(c.module, c.macs) for c in result.official]
    macs_by_path = complete_macs if convention == "complete" else official_macs
    totals = {"complete": sum(m for _, m in complete_macs), "official": sum(m for _, m in official_macs)}
    by_kind: dict[str, dict[str, int]] = {c: dict.fromkeys(KINDS, 0) for c in CONVENTIONS}
    calls: dict[str, dict[str, int]] = {c: dict.fromkeys(KINDS, 0) for c in CONVENTIONS}
    for o in result.ops:
        if o.kind is not None:
            by_kind["complete"][o.kind] += o.macs
            calls["complete"][o.kind] += 1
    for c in result.official:
        by_kind["official"][c.kind] += c.macs
        calls["official"][c.kind] += 1
    module_types: dict[str, int] = defaultdict(int)
    if convention == "official":
        for c in result.official:
            module_types[c.module_type] += c.macs

    types = result.module_types
    stage_of = _stage_mapper(list(types))
    top = [p for p in types if p and "." not in p]
    children = {k: [p.rsplit(".", 1)[-1] for p in types if p.count(".") == k.count(".") + 1 and p.startswith(k + ".")]
                for k in top}

    def stage_type(k: str) -> str:  # "stem: conv1, bn1, ..." / "3 x Bottleneck"
        if k in ("stem", "head"):
            return ", ".join(p for p in top if stage_of(p) == k)
        kids = children.get(k, [])
        kinds = sorted({types[f"{k}.{c}"] for c in kids})
        return f"{len(kids)} x {'/'.join(kinds)}" if kids else types.get(k, k)

    stages = _aggregate(result, macs_by_path, stage_of).rows(stage_type)
    stage_names = {r.name for r in stages} - {"stem", "head", "(top level)"}

    def block_key(path: str) -> str | None:  # layerN.i for the blocks of every stage
        parts = path.split(".")
        return ".".join(parts[:2]) if len(parts) >= 2 and parts[0] in stage_names else None

    def block_type(k: str) -> str:  # "Bottleneck (CotLayer)": the block and its spatial operator
        op = types.get(f"{k}.conv2")
        return f"{types.get(k, '?')} ({op})" if op else types.get(k, "?")

    blocks = _aggregate(result, macs_by_path, block_key).rows(block_type)
    modules = None
    if depth is not None:
        has_children = {p.rsplit(".", 1)[0] if "." in p else "" for p in types if p}  # parents of some module

        def module_label(k: str) -> str:  # a shallower row holds the module's own (functional) ops only
            own = k in has_children and (k.count(".") + 1 if k else 0) < depth
            return (k or "(top level)") + (" (own ops)" if own else "")

        modules = _aggregate(result, macs_by_path, lambda p: _truncate(p, depth)).rows(
            lambda k: types.get(k, "?"), label=module_label)
    operators = [OperatorRow(k, by_kind[convention][k], calls[convention][k]) for k in KINDS
                 if convention == "complete" or k != DATA]
    uncounted = _uncounted(result, convention)
    dtype = str(result.dtype).replace("torch.", "")
    memory = MemoryEstimate(
        dtype=dtype, input_bytes=result.input_bytes, output_bytes=result.output_bytes,
        activations_total_bytes=sum(n for _, n in result.allocations),
        activations_peak_bytes=result.peak_bytes, peak_module=result.peak_module,
        weights_bytes={k: result.params * v for k, v in _WEIGHT_DTYPES.items()},
        buffers_bytes=result.buffer_bytes,
        method="meta-device forward, every allocation tracked until its last reference dies (eager inference)")
    other = "official" if convention == "complete" else "complete"
    return ProfileReport(
        model=model, size=int(result.input_shape[-1]), batch=int(result.input_shape[0]), convention=convention,
        params=result.params, buffers=result.buffer_elements, macs=totals[convention],
        other_convention={"convention": other, "macs": totals[other], "flops": 2 * totals[other],
                          "macs_by_operator": by_kind[other]},
        stages=stages, blocks=blocks, operators=operators, uncounted=uncounted, memory=memory,
        notes=_notes(convention, by_kind, totals, uncounted, result), module_types=dict(module_types),
        depth=depth, modules=modules)
