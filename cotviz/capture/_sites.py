"""Finding the blocks of a model, their spatial operators, taps and geometry, without running it.

Two layouts are understood, and may be mixed:

- ResNet-style networks (``CoTResNet``, possibly wrapped): every outermost submodule with children
  ``layer1 .. layerN`` is a *CoT network*; each child of ``layer{S}`` is block ``B`` (1-based) of stage
  ``S``, its spatial operator is ``block.conv2``, ``block.avd`` pools before it and ``block.aa`` blur-pools
  after it. One network (the model itself or wrapped, e.g. ``nn.Sequential(nn.Upsample(...), net)``): records
  are named ``"stage{S}.block{B}"``. Several (an ensemble, a teacher and a student): every name is prefixed
  with the network's module path, ``"teacher.stage3.block2"``, ``"0.stage3.block2"``, so none hides another.
- CoT layers outside any such network (a bare ``CotLayer``, a lone ``Bottleneck``, a custom wrapper, a CoT
  head beside a network): each is one record named by its module path (``"layer"`` for the root), stage 0.

Geometry comes from the CoT network's own input (a forward-pre hook on the network, not on the outer model),
so a wrapper that resizes the input first does not falsify ``input_size`` or the feature stride; stage-0
records use the model's input.
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
    network: str  # module path of the CoT network ("" for the model itself); stage-0 sites: their own path
    input_module: nn.Module | None  # whose input gives ``input_size`` (the CoT network; None = the model)
    layer_path: str
    tap_modules: dict[str, Tap]
    map_stride: int | None
    pooled_before: bool
    blurred_after: bool
    kernel_size: int | None
    heads_per_group: int | None
    groups: int
    share_planes: int | None
    attention_normalization: str | None = None


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


def _total_heads(op: nn.Module | None, taps: dict[str, Tap]) -> int | None:
    """Attention maps per position over all groups (``dim / share_planes`` = C/8), or None without attention."""
    dim, share = getattr(op, "dim", None), getattr(op, "share_planes", None)
    if "attention" not in taps or not isinstance(dim, int) or not isinstance(share, int):
        return None
    return dim // share


def _make_site(info: BlockInfo, block: nn.Module, op: nn.Module | None, layer_path: str,
               in_stride: int | None, network: str, input_module: nn.Module | None) -> Site:
    taps = _taps_of(op)
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
    attends = "attention" in taps
    # attention groups: CoXt folds its groups into the batch of the attention tensor (cardinality); others have one
    groups = int(getattr(op, "cardinality", 1) or 1) if attends else int(getattr(op, "groups", 1) or 1)
    share = getattr(op, "share_planes", None) if attends else None
    dim = getattr(op, "dim", None)
    heads = dim // share // groups if attends and isinstance(dim, int) and isinstance(share, int) else None
    return Site(info=info, block=block, op=op, network=network, input_module=input_module,
                layer_path=layer_path, tap_modules=taps, map_stride=map_stride,
                pooled_before=pooled, blurred_after=blurred, kernel_size=_kernel_size(op), heads_per_group=heads,
                groups=groups, share_planes=share if attends else None,
                attention_normalization=str(getattr(op, "attention_normalization", "groupnorm")) if attends else None)


def _stages_of(mod: nn.Module) -> list[nn.Module]:
    """``[layer1, ..., layerN]`` children of ``mod`` (empty if it has no ``layer1``)."""
    stages: list[nn.Module] = []
    while isinstance(s := getattr(mod, f"layer{len(stages) + 1}", None), nn.Module):
        stages.append(s)
    return stages


def _find_networks(model: nn.Module) -> list[tuple[str, nn.Module, list[nn.Module]]]:
    """``(prefix, network, [layer1, ..., layerN])`` of every outermost submodule with stage children."""
    found: list[tuple[str, nn.Module, list[nn.Module]]] = []
    for prefix, mod in model.named_modules():  # parents before children
        if any(prefix == p or prefix.startswith(f"{p}.") or not p for p, _, _ in found):
            continue  # inside a network already found
        if stages := _stages_of(mod):
            found.append((prefix, mod, stages))
    return found


def _stem_stride(net: nn.Module, first_block: nn.Module) -> int | None:
    """Input pixels per cell at the input of ``layer1`` (from ``feature_info``), or None if unknown."""
    for fi in getattr(net, "feature_info", None) or ():
        if getattr(fi, "module", None) == "layer1":
            return int(fi.reduction) // int(getattr(first_block, "stride", 1) or 1)
    return None


def _network_sites(prefix: str, net: nn.Module, stages: list[nn.Module], name_prefix: str) -> list[Site]:
    """The blocks of one CoT network, in forward order; record names start with ``name_prefix``."""
    sites: list[Site] = []
    blocks0 = list(stages[0].children())
    in_stride = _stem_stride(net, blocks0[0]) if blocks0 else None
    for s, stage in enumerate(stages, start=1):
        for b, (child_name, block) in enumerate(stage.named_children(), start=1):
            path = _join(prefix, f"layer{s}.{child_name}")
            op = getattr(block, "conv2", None)
            op = op if isinstance(op, nn.Module) else None
            taps = _taps_of(op)
            layer_type = type(op).__name__ if op is not None else type(block).__name__
            info = BlockInfo(f"{name_prefix}stage{s}.block{b}", s, b, path, layer_type, len(taps) == len(TAP_NAMES),
                             tuple(taps), _total_heads(op, taps))
            sites.append(_make_site(info, block, op, _join(path, "conv2") if op is not None else path,
                                    in_stride, prefix, net))
            if in_stride is not None:
                in_stride *= int(getattr(block, "stride", 1) or 1)
    return sites


def find_sites(model: nn.Module) -> list[Site]:
    """All blocks of ``model``: those of its CoT networks in network order, then stray CoT layers.

    See the module docstring for the layouts and the record names.
    """
    networks = _find_networks(model)
    sites: list[Site] = []
    for prefix, net, stages in networks:
        sites += _network_sites(prefix, net, stages, f"{prefix}." if len(networks) > 1 else "")
    inside = [p for p, _, _ in networks]
    # CoT layers outside every network: one record each, named by module path
    paths = {id(m): p for p, m in model.named_modules()}
    parents = {id(c): (m, n) for m in model.modules() for n, c in m.named_children()}
    n = 0
    for path, op in model.named_modules():
        if len(_taps_of(op)) != len(TAP_NAMES) or any(not p or path.startswith(f"{p}.") for p in inside):
            continue
        n += 1
        parent = parents.get(id(op))
        block = parent[0] if parent is not None and parent[1] == "conv2" else op
        block_path = paths[id(block)]
        name = path or ROOT_NAME
        info = BlockInfo(name, 0, n, block_path, type(op).__name__, True, tuple(taps_of_op := _taps_of(op)),
                         _total_heads(op, taps_of_op))
        sites.append(_make_site(info, block, op, path, 1 if block is model or op is model else None,
                                name, None))
    return sites


def cot_blocks(model: nn.Module) -> list[BlockInfo]:
    """Every block :func:`cotviz.capture.capture` can record, in forward order; nothing is run."""
    return [s.info for s in find_sites(model)]


def _staged(model: nn.Module, sites: list[Site]) -> dict[str, dict[int, list[Site]]]:
    """``{network: {stage: [sites]}}`` of the staged sites; a model without stages raises."""
    nets: dict[str, dict[int, list[Site]]] = {}
    for s in sites:
        if s.info.stage:
            nets.setdefault(s.network, {}).setdefault(s.info.stage, []).append(s)
    if not nets:
        raise CaptureError(f"{model_label(model)} has no stages (no layer1..layer4 children); "
                           "leave stages=None and blocks=None to record its CoT layers by module path")
    return nets


def _common_stages(nets: dict[str, dict[int, list[Site]]]) -> list[int]:
    """Stage numbers every CoT network has (with several networks a number selects that stage in each)."""
    return sorted(set.intersection(*(set(stages) for stages in nets.values())))


def _block_count(nets: dict[str, dict[int, list[Site]]], stage: int) -> int:
    """Blocks of ``stage`` that every network has."""
    return min(len(stages[stage]) for stages in nets.values())


def stage_range(model: nn.Module) -> range:
    """Valid stage numbers of ``model`` (``range(1, 5)`` for every CoTNet; for several networks: in each)."""
    stages = _common_stages(_staged(model, find_sites(model)))
    return range(1, max(stages, default=0) + 1)


def block_range(model: nn.Module, stage: int) -> range:
    """Valid 1-based block numbers of ``stage`` (``range(1, 7)`` for stage 3 of cotnet50; several networks: in each)."""
    nets = _staged(model, find_sites(model))
    _check_stage(model, nets, stage)
    return range(1, _block_count(nets, stage) + 1)


def _check_stage(model: nn.Module, nets: dict[str, dict[int, list[Site]]], stage: int) -> None:
    stages = _common_stages(nets)
    if stage not in stages:
        raise CaptureError(f"stage {stage} out of range: {model_label(model)} has stages 1..{max(stages, default=0)}"
                           + (f" in each of its {len(nets)} CoT networks" if len(nets) > 1 else ""))


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
    nets = _staged(model, sites)
    wanted_stages = _common_stages(nets) if stages is None else _ints(stages, "stages")
    for s in wanted_stages:
        _check_stage(model, nets, s)
    wanted_blocks = None if blocks is None else _ints(blocks, "blocks")
    if wanted_blocks is not None:
        for s in wanted_stages:
            n = _block_count(nets, s)
            for b in wanted_blocks:
                if not 1 <= b <= n:
                    each = f" in each of its {len(nets)} CoT networks" if len(nets) > 1 else ""
                    raise CaptureError(f"block {b} out of range: stage {s} of {model_label(model)} has blocks "
                                       f"1..{n}{each}")
    chosen = set(wanted_stages)
    return [site for site in sites if site.info.stage in chosen
            and (wanted_blocks is None or site.info.block in wanted_blocks)]


def validate_taps(model: nn.Module, sites: list[Site], taps: Iterable[str] | str | None) -> tuple[str, ...]:
    """The requested tap names in forward order (None: every tap some layer of the model has); unknown names,
    and taps no layer has, raise."""
    exposed = {t for site in sites for t in site.tap_modules}
    if taps is None:
        wanted = TAP_NAMES if not exposed - {"output"} else tuple(n for n in TAP_NAMES if n in exposed | {"output"})
    else:
        items = [taps] if isinstance(taps, str) else list(taps)
        for t in items:
            if t not in TAP_NAMES:
                raise CaptureError(f"unknown tap {t!r}; valid taps: {', '.join(TAP_NAMES)}")
        wanted = tuple(n for n in TAP_NAMES if n in items)
    absent = [t for t in wanted if t in COT_ONLY_TAPS and t not in exposed]
    if absent:
        kinds = ", ".join(dict.fromkeys(s.info.layer_type for s in sites)) or "no blocks"
        if not exposed - {"output"}:
            raise CaptureError(f"{model_label(model)} has no CoT layers (its blocks use {kinds}), so it has no "
                               f"{'/'.join(absent)}; use a CoT model, or taps=['output'] or taps=[] "
                               "for operator / block outputs only")
        have = ", ".join(t for t in TAP_NAMES if t in exposed)
        raise CaptureError(f"{model_label(model)} has no layer with {'/'.join(absent)} (its blocks use {kinds}; "
                           f"taps they have: {have}); ask for those taps only")
    return wanted
