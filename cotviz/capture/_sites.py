"""Finding the blocks of a model, their spatial operators, taps and geometry, without running it.

Two layouts are understood:

- a ResNet-style network (``CoTResNet``, possibly wrapped): the first submodule with children
  ``layer1 .. layerN``; each child of ``layer{S}`` is block ``B`` (1-based) of stage ``S``, its spatial
  operator is ``block.conv2``, ``block.avd`` pools before it and ``block.aa`` blur-pools after it.
- anything else that contains CoT layers (a bare ``CotLayer``, a lone ``Bottleneck``, a custom
  wrapper): every CoT layer is one record named by its module path (``"layer"`` for the root), stage 0.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from torch import nn

from cotviz.capture.records import BlockInfo
from cotviz.errors import CaptureError
from cotviz.layers.cot import TAP_NAMES
from cotviz.layers.tap import Tap

__all__ = ["Site", "block_range", "cot_blocks", "find_sites", "model_label", "select_sites", "stage_range",
           "validate_taps"]

#: Taps only a CoT layer has (a block without CoT still yields ``output`` from its operator).
COT_ONLY_TAPS: tuple[str, ...] = tuple(n for n in TAP_NAMES if n != "output")
ROOT_NAME = "layer"


@dataclass(frozen=True, eq=False)
class Site:
    """A block plus the modules and static facts a capture needs (internal)."""

    info: BlockInfo
    block: nn.Module
    op: nn.Module | None
    layer_path: str
    tap_modules: dict[str, Tap]
    map_stride: int | None
    pooled_before: bool
    blurred_after: bool
    kernel_size: int | None
    num_heads: int | None
    groups: int
    share_planes: int | None


def model_label(model: nn.Module) -> str:
    """``model.model_name`` (set by ``create_model``) or the class name, for messages."""
    return str(getattr(model, "model_name", None) or type(model).__name__)


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _taps_of(op: nn.Module | None) -> dict[str, Tap]:
    if op is None:
        return {}
    return {n: t for n in TAP_NAMES if isinstance(t := getattr(op, n, None), Tap)}


def _kernel_size(op: nn.Module | None) -> int | None:
    k = getattr(op, "kernel_size", None)
    if k is None:
        k = getattr(getattr(op, "conv", None), "kernel_size", None)
    if isinstance(k, tuple):
        k = k[0]
    return int(k) if isinstance(k, int) else None


def _op_stride(op: nn.Module | None) -> int:
    """Stride of an operator that downsamples itself (split attention, plain conv), else 1."""
    s = getattr(getattr(op, "conv", None), "stride", None) if op is not None else None
    if isinstance(s, tuple):
        return int(s[0])
    return int(s) if isinstance(s, int) else 1


def _make_site(info: BlockInfo, block: nn.Module, op: nn.Module | None, layer_path: str,
               in_stride: int | None) -> Site:
    taps = _taps_of(op)
    has_cot = len(taps) == len(TAP_NAMES)
    pooled = getattr(block, "avd", None) is not None
    blurred = getattr(block, "aa", None) is not None
    if in_stride is None:
        map_stride = None
    elif pooled:
        map_stride = in_stride * 2  # AvgPool2d(3, 2, 1) before a stride-1 operator
    elif blurred:
        map_stride = in_stride  # the operator runs at full resolution, BlurPool after it
    else:
        map_stride = in_stride * _op_stride(op)
    groups = int(getattr(op, "cardinality", 1) or 1) if has_cot else int(getattr(op, "groups", 1) or 1)
    share = getattr(op, "share_planes", None) if has_cot else None
    dim = getattr(op, "dim", None)
    heads = dim // share // groups if has_cot and isinstance(dim, int) and isinstance(share, int) else None
    return Site(info=info, block=block, op=op, layer_path=layer_path, tap_modules=taps, map_stride=map_stride,
                pooled_before=pooled, blurred_after=blurred, kernel_size=_kernel_size(op), num_heads=heads,
                groups=groups, share_planes=share if has_cot else None)


def _find_skeleton(model: nn.Module) -> tuple[str, nn.Module, list[nn.Module]] | None:
    """(prefix, network, [layer1, ..., layerN]) of the first submodule with stage children, else None."""
    for prefix, mod in model.named_modules():
        stages: list[nn.Module] = []
        while isinstance(s := getattr(mod, f"layer{len(stages) + 1}", None), nn.Module):
            stages.append(s)
        if stages:
            return prefix, mod, stages
    return None


def _stem_stride(net: nn.Module, first_block: nn.Module) -> int | None:
    """Input pixels per cell at the input of ``layer1`` (from ``feature_info``), or None if unknown."""
    for fi in getattr(net, "feature_info", None) or ():
        if getattr(fi, "module", None) == "layer1":
            return int(fi.reduction) // int(getattr(first_block, "stride", 1) or 1)
    return None


def find_sites(model: nn.Module) -> list[Site]:
    """All blocks of ``model`` in forward order (see the module docstring for the two layouts)."""
    found = _find_skeleton(model)
    sites: list[Site] = []
    if found is not None:
        prefix, net, stages = found
        blocks0 = list(stages[0].children())
        in_stride = _stem_stride(net, blocks0[0]) if blocks0 else None
        for s, stage in enumerate(stages, start=1):
            for b, (child_name, block) in enumerate(stage.named_children(), start=1):
                path = _join(prefix, f"layer{s}.{child_name}")
                op = getattr(block, "conv2", None)
                op = op if isinstance(op, nn.Module) else None
                taps = _taps_of(op)
                layer_type = type(op).__name__ if op is not None else type(block).__name__
                info = BlockInfo(f"stage{s}.block{b}", s, b, path, layer_type, len(taps) == len(TAP_NAMES))
                sites.append(_make_site(info, block, op, _join(path, "conv2") if op is not None else path,
                                        in_stride))
                if in_stride is not None:
                    in_stride *= int(getattr(block, "stride", 1) or 1)
        return sites
    # no stages: every module carrying all CoT taps is one record
    paths = {id(m): p for p, m in model.named_modules()}
    parents = {id(c): (m, n) for m in model.modules() for n, c in m.named_children()}
    n = 0
    for path, op in model.named_modules():
        if len(_taps_of(op)) != len(TAP_NAMES):
            continue
        n += 1
        parent = parents.get(id(op))
        block = parent[0] if parent is not None and parent[1] == "conv2" else op
        block_path = paths[id(block)]
        name = path or ROOT_NAME
        info = BlockInfo(name, 0, n, block_path, type(op).__name__, True)
        sites.append(_make_site(info, block, op, path, 1 if block is model or op is model else None))
    return sites


def cot_blocks(model: nn.Module) -> list[BlockInfo]:
    """Every block :func:`cotviz.capture.capture` can record, in forward order; nothing is run."""
    return [s.info for s in find_sites(model)]


def _staged(model: nn.Module, sites: list[Site]) -> dict[int, list[Site]]:
    by_stage: dict[int, list[Site]] = {}
    for s in sites:
        if s.info.stage:
            by_stage.setdefault(s.info.stage, []).append(s)
    if not by_stage:
        raise CaptureError(f"{model_label(model)} has no stages (no layer1..layer4 children); "
                           "leave stages=None and blocks=None to record its CoT layers by module path")
    return by_stage


def stage_range(model: nn.Module) -> range:
    """Valid stage numbers of ``model`` (``range(1, 5)`` for every CoTNet)."""
    by_stage = _staged(model, find_sites(model))
    return range(1, max(by_stage) + 1)


def block_range(model: nn.Module, stage: int) -> range:
    """Valid 1-based block numbers of ``stage`` (``range(1, 7)`` for stage 3 of cotnet50)."""
    by_stage = _staged(model, find_sites(model))
    _check_stage(model, by_stage, stage)
    return range(1, len(by_stage[stage]) + 1)


def _check_stage(model: nn.Module, by_stage: dict[int, list[Site]], stage: int) -> None:
    if stage not in by_stage:
        raise CaptureError(f"stage {stage} out of range: {model_label(model)} has stages 1..{max(by_stage)}")


def _ints(values: Iterable[int] | int, what: str) -> list[int]:
    items = [values] if isinstance(values, int) else list(values)
    for v in items:
        if isinstance(v, bool) or not isinstance(v, int):
            raise CaptureError(f"{what} must be integers, got {v!r}")
    return list(dict.fromkeys(items))


def select_sites(model: nn.Module, sites: list[Site], stages: Iterable[int] | int | None,
                 blocks: Iterable[int] | int | None) -> list[Site]:
    """The sites chosen by ``stages`` / ``blocks`` (None = all), in forward order; range-checked."""
    if stages is None and blocks is None:
        return list(sites)
    by_stage = _staged(model, sites)
    wanted_stages = sorted(by_stage) if stages is None else _ints(stages, "stages")
    for s in wanted_stages:
        _check_stage(model, by_stage, s)
    wanted_blocks = None if blocks is None else _ints(blocks, "blocks")
    if wanted_blocks is not None:
        for s in wanted_stages:
            n = len(by_stage[s])
            for b in wanted_blocks:
                if not 1 <= b <= n:
                    raise CaptureError(f"block {b} out of range: stage {s} of {model_label(model)} has blocks 1..{n}")
    keep = {(s, b) for s in wanted_stages for b in (wanted_blocks or range(1, len(by_stage[s]) + 1))}
    return [site for site in sites if (site.info.stage, site.info.block) in keep]


def validate_taps(model: nn.Module, sites: list[Site], taps: Iterable[str] | str | None) -> tuple[str, ...]:
    """The requested tap names in forward order; unknown names and CoT taps on a CoT-free model raise."""
    if taps is None:
        wanted = TAP_NAMES
    else:
        items = [taps] if isinstance(taps, str) else list(taps)
        for t in items:
            if t not in TAP_NAMES:
                raise CaptureError(f"unknown tap {t!r}; valid taps: {', '.join(TAP_NAMES)}")
        wanted = tuple(n for n in TAP_NAMES if n in items)
    cot_taps = [t for t in wanted if t in COT_ONLY_TAPS]
    if cot_taps and not any(s.info.has_cot for s in sites):
        kinds = ", ".join(dict.fromkeys(s.info.layer_type for s in sites)) or "no blocks"
        raise CaptureError(f"{model_label(model)} has no CoT layers (its blocks use {kinds}), so it has no "
                           f"{'/'.join(cot_taps)}; use a CoT model, or taps=['output'] or taps=[] "
                           "for operator / block outputs only")
    return wanted
