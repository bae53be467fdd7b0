"""The ResNet skeleton every cotviz network is built on, with a pluggable 3x3 slot.

Reproduces both official network classes of JDAI-CV/CoTNet with one skeleton:

- ``models/resnet.py:ResNet`` + ``models/cotnet.py:Bottleneck`` (CoTNet, CoTNeXt): 7x7 stem, max-pool,
  ``downsample.{0,1}`` = 1x1 conv (stride) + BN, and for a strided block an ``AvgPool2d(3, 2, 1)``
  (``avd``) BEFORE the stride-1 CoT layer. No BN after the CoT layer (it ends in its own fusion).
- ``models/cotnet_hybrid.py:CoTHybridNet`` + ``CoTBottleneck`` (SE-CoTNetD): deep stem
  (``conv1.{0,1,3,4,6}``), NO max-pool (``layer1`` has stride 2 instead), average-pool shortcut
  (``downsample.{1,2}``; index 0 is the parameter-free pool), CoT or split-attention (SE) per block
  by width/index routing, and for 152/200/270 a ``BlurPool2d`` AFTER the stride-1 operator.

The operator in ``conv2`` is chosen by a spec (:mod:`cotviz.layers.spec`: ``"cot"``, ``"cot:kernel=5"``,
``"sa:kernel=7"``, ``"cot@4"``), so the same skeleton hosts CoT, CoXt, split attention, plain conv,
local self-attention, the paper's ablations or any later operator. Where a strided block downsamples is
a registered mode (:mod:`cotviz.layers.downsample`), the stem a :class:`StemCfg` of explicit widths.

The network follows timm's model interface where it uses timm's names (``pretrained_cfg`` / ``default_cfg``,
``feature_info`` dicts, ``forward_intermediates``, ``forward_head(pre_logits=)``, ``get_classifier`` /
``reset_classifier``, ``set_grad_checkpointing``, ``prune_intermediate_layers``) and torchvision's where its
detection helpers read an attribute (``inplanes``), so those tools take a cotviz network as one of their own
(:mod:`cotviz.interop`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from cotviz.errors import InvalidArgumentError
from cotviz.layers.downsample import check_downsample_mode, create_downsample
from cotviz.layers.spec import LayerSpec, as_layer_spec

__all__ = ["Bottleneck", "CoTResNet", "FeatureInfo", "HybridRouting", "SpatialRouting", "StemCfg", "get_act_layer",
           "zero_residual_blocks"]

_ACTS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "silu": nn.SiLU, "swish": nn.SiLU, "gelu": nn.GELU}


def get_act_layer(act: str | type[nn.Module]) -> type[nn.Module]:
    """An activation class by name (``relu``, ``silu``/``swish``, ``gelu``) or the class itself."""
    if isinstance(act, str):
        try:
            return _ACTS[act.lower()]
        except KeyError:
            raise ValueError(f"unknown activation {act!r}; choose one of {', '.join(sorted(_ACTS))}") from None
    return act


#: Chooses the spatial operator (a spec or its text) of block ``block_idx`` (0-based) of stage ``stage`` (1..4),
#: width ``width``.
SpatialRouting = Callable[[int, int, int], str | LayerSpec]


@dataclass(frozen=True)
class HybridRouting:
    """SE-CoTNetD's per-block choice between CoT and split attention (official ``CoTBottleneck``).

    A block of bottleneck width ``w`` is a split-attention (SE) block when ``w in conv_dim``, or when
    ``w == c4_dim`` and its index in the stage is not in ``c4_idx``; otherwise it is a CoT block.
    Official SE-CoTNetD: ``conv_dim={64, 128}`` (stages 1-2 all SE), ``c4_dim=256`` (stage 3 alternates,
    CoT at even indices), stage 4 all CoT.
    """

    conv_dim: frozenset[int]
    c4_dim: int
    c4_idx: frozenset[int]
    cot_layer: str = "cot"
    other_layer: str = "split_attn"

    def __call__(self, stage: int, block_idx: int, width: int) -> str:
        if width in self.conv_dim or (width == self.c4_dim and block_idx not in self.c4_idx):
            return self.other_layer
        return self.cot_layer


@dataclass(frozen=True)
class _ByStage:
    """Routing of one spec: its operator in the stages it names, plain ``conv`` in the others."""

    spec: LayerSpec

    def __call__(self, stage: int, block_idx: int, width: int) -> LayerSpec:
        return self.spec.for_stage(stage)


#: Stem types of the official constructors -> conv widths for a ``stem_width`` (timm ResNet ``stem_type``).
_STEM_TYPES: dict[str, Callable[[int], tuple[int, ...]]] = {
    "": lambda w: (64,),  # one 7x7 conv to 64 channels (stem_width unused, as the official code)
    "deep": lambda w: (w, w, 2 * w),
    "deep_tiered": lambda w: (3 * (w // 4), w, 2 * w),
}


@dataclass(frozen=True)
class StemCfg:
    """The stem's convolutions: one 7x7 stride-2 conv (``kernel_size=7``, one width) or a deep stem of
    3x3 convs, the first with stride 2 (``kernel_size=3``), BN + act between them.

    ``widths``: output channels of each conv; the last is the stem's output (BN ``bn1`` and act ``act1``
    follow it in the network). Keys: ``conv1`` (7x7) or ``conv1.{0,1,3,4,6}`` (three 3x3 convs).
    """

    kernel_size: int
    widths: tuple[int, ...]

    def __post_init__(self) -> None:
        if self.kernel_size not in (3, 7) or not self.widths or (self.kernel_size == 7) != (len(self.widths) == 1):
            raise ValueError(f"a stem is one 7x7 conv or several 3x3 convs, got kernel_size={self.kernel_size}, "
                             f"widths={self.widths}")

    @classmethod
    def from_type(cls, stem_type: str, stem_width: int) -> StemCfg:
        """The official ``stem_type`` (``""``, ``"deep"``, ``"deep_tiered"``) at ``stem_width``."""
        try:
            widths = _STEM_TYPES[stem_type](stem_width)
        except KeyError:
            raise ValueError(f"stem_type must be one of {', '.join(map(repr, _STEM_TYPES))}, got {stem_type!r}") from None
        return cls(7 if len(widths) == 1 else 3, widths)

    @property
    def out_channels(self) -> int:
        return self.widths[-1]

    def build(self, in_chans: int, act: type[nn.Module]) -> nn.Module:
        """(B, in_chans, H, W) -> (B, out_channels, H/2, W/2), before ``bn1``."""
        if self.kernel_size == 7:
            return nn.Conv2d(in_chans, self.widths[0], kernel_size=7, stride=2, padding=3, bias=False)
        layers: list[nn.Module] = []
        for i, (cin, cout) in enumerate(zip((in_chans, *self.widths[:-1]), self.widths, strict=True)):
            if i:
                layers += [nn.BatchNorm2d(cin), act(inplace=True)]
            layers.append(nn.Conv2d(cin, cout, 3, stride=2 if i == 0 else 1, padding=1, bias=False))
        return nn.Sequential(*layers)


class FeatureInfo(dict[str, Any]):
    """A feature map a backbone user can take: channels, stride w.r.t. the input, and module path.

    In timm's format: a ``dict`` with ``num_chs``, ``reduction`` and ``module`` (timm's
    ``timm.models.FeatureInfo(model.feature_info, out_indices)`` adds ``index``), readable as attributes too
    (``fi.num_chs``, ``fi.reduction``, ``fi.module``).
    """

    def __init__(self, num_chs: int, reduction: int, module: str, **extra: Any) -> None:
        super().__init__(num_chs=num_chs, reduction=reduction, module=module, **extra)

    @property
    def num_chs(self) -> int:
        return int(self["num_chs"])

    @property
    def reduction(self) -> int:
        return int(self["reduction"])

    @property
    def module(self) -> str:
        return str(self["module"])


class DropPath(nn.Module):
    """Stochastic depth per sample (Huang et al. 2016); identity in eval mode."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep


class Bottleneck(nn.Module):
    """ResNet bottleneck (expansion 4) whose 3x3 operator ``conv2`` is a spatial layer spec.

    ``conv1`` 1x1 -> ``bn1`` -> ``act1`` -> [``avd``] -> ``conv2`` -> [``aa``] -> ``conv3`` 1x1 -> ``bn3``
    -> (+ shortcut) -> ``act3``; ``avd`` / ``aa`` and the operator's stride come from the downsample mode
    (``"op"``: the operator strides, or AvgPool(3, 2, 1) before one that cannot; ``"blur"``: BlurPool after
    it). Width = floor(planes * base_width / 64) * cardinality.
    (B, inplanes, H, W) -> (B, 4 planes, H/stride, W/stride).
    """

    expansion = 4

    @staticmethod
    def width_of(planes: int, base_width: int, cardinality: int) -> int:
        """Channels of the 3x3 slot: ``floor(planes * base_width / 64) * cardinality`` (timm ResNet)."""
        return int(math.floor(planes * (base_width / 64)) * cardinality)

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None, *,
                 spatial_layer: str | LayerSpec = "cot", cardinality: int = 1, base_width: int = 64,
                 act_layer: type[nn.Module] = nn.ReLU, spatial_act_layer: type[nn.Module] = nn.ReLU,
                 downsample_mode: str = "op", drop_path: float = 0.0) -> None:
        super().__init__()
        width = self.width_of(planes, base_width, cardinality)
        outplanes = planes * self.expansion
        spec = as_layer_spec(spatial_layer)
        if spec.stages is not None:
            raise InvalidArgumentError(
                f"a block takes one operator; stage selection ({spec}) is the network's spatial_layer")
        self.spatial_layer = spec
        self.stride = stride
        plan = create_downsample(downsample_mode, width, stride, op_strides=spec.supports_stride)
        self.conv1 = nn.Conv2d(inplanes, width, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.act1 = act_layer(inplace=True)
        self.avd = plan.before
        self.conv2 = spec.build(width, stride=plan.op_stride, cardinality=cardinality, act_layer=spatial_act_layer)
        self.aa = plan.after
        self.conv3 = nn.Conv2d(width, outplanes, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(outplanes)
        self.act3 = act_layer(inplace=True)
        self.downsample = downsample
        self.drop_path = DropPath(drop_path) if drop_path > 0 else None

    def zero_init_last_bn(self) -> None:
        nn.init.zeros_(self.bn3.weight)

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x
        x = self.act1(self.bn1(self.conv1(x)))  # (B, width, H, W)
        if self.avd is not None:
            x = self.avd(x)  # (B, width, H/2, W/2)
        x = self.conv2(x)
        if self.aa is not None:
            x = self.aa(x)
        x = self.bn3(self.conv3(x))  # (B, 4 planes, H/s, W/s)
        if self.drop_path is not None:
            x = self.drop_path(x)
        if self.downsample is not None:
            shortcut = self.downsample(shortcut)
        x += shortcut
        return self.act3(x)


def zero_residual_blocks(model: nn.Module) -> list[str]:
    """Module paths of the bottlenecks of ``model`` whose residual branch is off: last BN weight all zero, as
    the official ``zero_init_last_bn`` leaves an untrained network (each such block passes its shortcut only).
    A folded BN (:func:`cotviz.models.inference.prepare_for_inference`) is not looked at."""
    return [name for name, m in model.named_modules() if isinstance(m, Bottleneck)
            and isinstance(m.bn3, nn.BatchNorm2d) and not bool(m.bn3.weight.detach().any())]


_POOLS: dict[str, Callable[[], nn.Module]] = {
    "avg": lambda: nn.AdaptiveAvgPool2d(1),
    "max": lambda: nn.AdaptiveMaxPool2d(1),
    "": nn.Identity,  # no pooling: forward_head returns the (B, C, h, w) map (only without a classifier)
}


def _check_pool(global_pool: str, num_classes: int) -> None:
    if global_pool not in _POOLS:
        raise InvalidArgumentError(f"global_pool must be one of {', '.join(map(repr, _POOLS))}, got {global_pool!r}")
    if global_pool == "" and num_classes > 0:
        raise InvalidArgumentError("global_pool='' (no pooling) needs num_classes=0: the classifier takes pooled "
                                   "(B, C) features")


def _downsample(inplanes: int, outplanes: int, stride: int, avg_down: bool) -> nn.Module:
    """Projection shortcut: ``downsample.{0,1}`` (1x1 conv stride s + BN) or, with ``avg_down``,
    ``downsample.{0,1,2}`` = AvgPool2d(2, s, ceil_mode, count_include_pad=False) (Identity at s=1) + 1x1 + BN."""
    if not avg_down:
        return nn.Sequential(nn.Conv2d(inplanes, outplanes, 1, stride=stride, bias=False), nn.BatchNorm2d(outplanes))
    pool: nn.Module = (nn.AvgPool2d(2, stride, ceil_mode=True, count_include_pad=False) if stride > 1
                       else nn.Identity())
    return nn.Sequential(pool, nn.Conv2d(inplanes, outplanes, 1, bias=False), nn.BatchNorm2d(outplanes))


class CoTResNet(nn.Module):
    """ResNet-style network with a named spatial operator in every bottleneck.

    Args (official constructor names):
        layers: blocks per stage, e.g. ``[3, 4, 6, 3]``.
        num_classes, in_chans: classifier outputs and input channels.
        cardinality, base_width: bottleneck width = floor(planes * base_width / 64) * cardinality.
        stem_width, stem_type: ``""`` (7x7 conv) or ``"deep"`` / ``"deep_tiered"`` (three 3x3 convs), see
            :class:`StemCfg`.
        stem_pool: max-pool after the stem (CoTNet); without it ``layer1`` has stride 2 (SE-CoTNetD).
        avg_down: average-pool projection shortcut (ResNet-D).
        spatial_layer: an operator spec (``"cot"``, ``"cot:kernel=5"``, ``"cot@4"``: the named stages get the
            operator, the others plain ``conv``; text or :class:`~cotviz.layers.spec.LayerSpec`), or a routing
            callable (stage, block_idx, width) -> spec.
        act_layer: stem and bottleneck activation; spatial_act_layer: activation inside split-attention convs.
        downsample_mode: a registered mode (:mod:`cotviz.layers.downsample`): ``"op"`` (operator strides, or
            avg-pool before it) or ``"blur"`` (BlurPool after it).
        drop_rate, drop_path_rate: classifier dropout and stochastic-depth rate.
        zero_init_last_bn: zero the last BN of each block at init (official default).
        stage_planes: bottleneck planes of ``layer1..layer4`` (official ``64, 128, 256, 512``; a stage outputs
            4x its planes). Smaller values give the narrow demo networks (``cotnet_demo``).
        global_pool: ``"avg"`` (official), ``"max"``, or ``""`` (no pooling; only with ``num_classes=0``).
    """

    def __init__(self, layers: Sequence[int], *, num_classes: int = 1000, in_chans: int = 3,
                 cardinality: int = 1, base_width: int = 64, stem_width: int = 64, stem_type: str = "",
                 stem_pool: bool = True, avg_down: bool = False,
                 spatial_layer: str | LayerSpec | SpatialRouting = "cot", act_layer: str | type[nn.Module] = "relu",
                 spatial_act_layer: str | type[nn.Module] = "relu", downsample_mode: str = "op",
                 drop_rate: float = 0.0, drop_path_rate: float = 0.0, zero_init_last_bn: bool = True,
                 stage_planes: Sequence[int] = (64, 128, 256, 512), global_pool: str = "avg") -> None:
        super().__init__()
        _check_pool(global_pool, num_classes)
        if len(layers) != 4 or any(int(n) < 1 for n in layers):
            raise ValueError(f"layers must be 4 positive block counts, got {list(layers)}")
        if len(stage_planes) != 4 or any(int(n) < 1 for n in stage_planes):
            raise ValueError(f"stage_planes must be 4 positive plane counts, got {list(stage_planes)}")
        self.stem_cfg = StemCfg.from_type(stem_type, stem_width)
        check_downsample_mode(downsample_mode)
        act = get_act_layer(act_layer)
        spatial_act = get_act_layer(spatial_act_layer)
        route: SpatialRouting = (_ByStage(as_layer_spec(spatial_layer)) if isinstance(spatial_layer, str | LayerSpec)
                                 else spatial_layer)
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        self.layers = [int(n) for n in layers]

        inplanes = self.stem_cfg.out_channels
        self.conv1 = self.stem_cfg.build(in_chans, act)
        self.bn1 = nn.BatchNorm2d(inplanes)
        self.act1 = act(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1) if stem_pool else None
        self.feature_info: list[FeatureInfo] = [FeatureInfo(inplanes, 2, "act1")]

        net_blocks = sum(self.layers)
        block_no = 0
        for stage, (planes, depth) in enumerate(zip([int(n) for n in stage_planes], self.layers, strict=True), start=1):
            stride = 1 if (stage == 1 and stem_pool) else 2
            outplanes = planes * Bottleneck.expansion
            blocks = []
            for idx in range(depth):
                s = stride if idx == 0 else 1
                down = _downsample(inplanes, outplanes, s, avg_down) if idx == 0 and (
                    s != 1 or inplanes != outplanes) else None
                width = Bottleneck.width_of(planes, base_width, cardinality)
                dpr = drop_path_rate * block_no / max(net_blocks - 1, 1)
                blocks.append(Bottleneck(
                    inplanes, planes, s, down, spatial_layer=route(stage, idx, width), cardinality=cardinality,
                    base_width=base_width, act_layer=act, spatial_act_layer=spatial_act,
                    downsample_mode=downsample_mode, drop_path=dpr))
                inplanes = outplanes
                block_no += 1
            self.add_module(f"layer{stage}", nn.Sequential(*blocks))
            self.feature_info.append(FeatureInfo(outplanes, 2 ** (stage + 1), f"layer{stage}"))
        self.num_features = inplanes
        self.global_pool_type = global_pool
        self.global_pool = _POOLS[global_pool]()
        self.fc = nn.Linear(inplanes, num_classes) if num_classes > 0 else nn.Identity()
        self.grad_checkpointing = False
        self._zero_init_last_bn = zero_init_last_bn
        if not self.bn1.weight.is_meta:  # on the meta device there are no values to initialise
            self.init_weights()

    def init_weights(self) -> None:
        """(Re)initialise every parameter and buffer as the official (timm ResNet) code does.

        Conv weights Kaiming-normal (fan-out, ReLU gain); every other module its PyTorch default
        (``reset_parameters``: BN/GroupNorm 1/0 and fresh running statistics, Linear, conv biases
        uniform in +-1/sqrt(fan_in)); then, with ``zero_init_last_bn``, the last BN of each block zeroed.
        :func:`cotviz.create_model` builds on the meta device and calls this once, so nothing is
        initialised twice.
        """
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    bound = 1.0 / math.sqrt(m.weight[0].numel())  # fan_in = Cin/groups * k * k
                    nn.init.uniform_(m.bias, -bound, bound)
            elif m is not self and callable(getattr(m, "reset_parameters", None)):
                m.reset_parameters()  # type: ignore[operator]
        if self._zero_init_last_bn:
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    m.zero_init_last_bn()

    def stages(self) -> list[nn.Module]:
        """``[layer1, layer2, layer3, layer4]`` (the paper's res2..res5; ``nn.Identity`` where pruned)."""
        return [self.get_submodule(f"layer{i}") for i in range(1, 5)]

    @property
    def inplanes(self) -> int:
        """Channels of the last stage's output (torchvision ``ResNet.inplanes``, read by its
        ``_resnet_fpn_extractor``: ``inplanes // 8 * 2 ** (i - 1)`` channels at ``layer{i}``)."""
        return self.num_features

    @property
    def default_cfg(self) -> Any:
        """timm's older name of ``pretrained_cfg`` (set by :func:`cotviz.create_model`)."""
        return self.pretrained_cfg

    # --------------------------------------------------------------------------------------- forward

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each bottleneck in the backward pass instead of keeping its activations (timm's switch,
        ``torch.utils.checkpoint`` non-reentrant, one block per segment). Applies while gradients are on;
        forward values and gradients are unchanged. Train-mode BatchNorm updates its running statistics
        again during the recomputation (as in timm), and capture hooks fire again in the backward pass."""
        self.grad_checkpointing = bool(enable)

    def _run_stage(self, stage: nn.Module, x: Tensor) -> Tensor:
        if self.grad_checkpointing and torch.is_grad_enabled() and isinstance(stage, nn.Sequential):
            for block in stage:
                x = checkpoint(block, x, use_reentrant=False)  # type: ignore[assignment]
            return x
        out: Tensor = stage(x)
        return out

    def forward_stem(self, x: Tensor) -> Tensor:
        """(B, in_chans, H, W) -> (B, inplanes, H/4, W/4) with max-pool, else (B, inplanes, H/2, W/2)."""
        x = self.act1(self.bn1(self.conv1(x)))
        return self.maxpool(x) if self.maxpool is not None else x

    def forward_features(self, x: Tensor) -> Tensor:
        """(B, in_chans, H, W) -> last feature map (B, num_features, H/32, W/32), before pooling."""
        x = self.forward_stem(x)
        for stage in self.stages():
            x = self._run_stage(stage, x)
        return x

    def _take_indices(self, indices: int | Sequence[int] | None) -> list[int]:
        """Absolute ``feature_info`` positions (timm ``feature_take_indices``): None = all, an int n = the last n,
        a sequence = those positions (negative counting from the end), in the order given."""
        n = len(self.feature_info)
        if indices is None:
            return list(range(n))
        if isinstance(indices, bool) or not isinstance(indices, int | Sequence):
            raise InvalidArgumentError(f"indices must be None, an int or a sequence of ints, got {indices!r}")
        if isinstance(indices, int):
            if not 0 < indices <= n:
                raise InvalidArgumentError(f"indices: the last n features need n from 1 to {n}, got {indices}")
            return list(range(n - indices, n))
        take = []
        for i in indices:
            idx = n + int(i) if int(i) < 0 else int(i)
            if not 0 <= idx < n:
                raise InvalidArgumentError(f"indices: feature index {i} out of range (0 to {n - 1}, or -{n} to -1)")
            take.append(idx)
        if not take:
            raise InvalidArgumentError("indices: an empty selection")
        return take

    def forward_intermediates(self, x: Tensor, indices: int | Sequence[int] | None = None, norm: bool = False,
                              stop_early: bool = False, output_fmt: str = "NCHW",
                              intermediates_only: bool = False) -> list[Tensor] | tuple[Tensor, list[Tensor]]:
        """Feature maps at ``feature_info`` positions: 0 = stem (``act1``), 1..4 = ``layer1..layer4`` (timm's
        signature and return value).

        Args:
            x: (B, in_chans, H, W).
            indices: the positions to return: None = all five, an int n = the last n, a sequence = those
                (negative from the end).
            norm: accepted for timm (a ResNet has no final norm; nothing to apply).
            stop_early: stop after the last stage asked for (the returned final map is then that stage's).
            output_fmt: ``"NCHW"`` only (as timm's ResNet).
            intermediates_only: return only the list.

        Returns:
            ``(final, intermediates)``: ``final`` = ``forward_features(x)`` (B, num_features, H/32, W/32), and
            the list of maps in forward order, map i with ``feature_info[i].num_chs`` channels at stride
            ``feature_info[i].reduction``; with ``intermediates_only`` the list alone (the stages after the last
            one asked for are not run).
        """
        if output_fmt != "NCHW":
            raise InvalidArgumentError(f"output_fmt must be 'NCHW' (a ResNet's maps), got {output_fmt!r}")
        take = set(self._take_indices(indices))
        last = max(take)
        intermediates: list[Tensor] = []
        x = self.act1(self.bn1(self.conv1(x)))  # (B, stem, H/2, W/2)
        if 0 in take:
            intermediates.append(x)
        if self.maxpool is not None:
            x = self.maxpool(x)
        stages = self.stages()
        if stop_early or intermediates_only:
            stages = stages[:last]
        for i, stage in enumerate(stages, start=1):
            x = self._run_stage(stage, x)
            if i in take:
                intermediates.append(x)
        if intermediates_only:
            return intermediates
        return x, intermediates

    def prune_intermediate_layers(self, indices: int | Sequence[int] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """Drop what ``forward_intermediates(indices=...)`` does not need (timm's method): the stages after
        the last position asked for become ``nn.Identity``, and with ``prune_head`` the classifier and the
        pooling go (``reset_classifier(0, "")``). ``prune_norm``: accepted for timm (no final norm). Modifies
        the model in place; returns the absolute positions kept."""
        take = self._take_indices(indices)
        for i in range(max(take) + 1, len(self.feature_info)):
            setattr(self, f"layer{i}", nn.Identity())
        if prune_head:
            self.reset_classifier(0, "")
        return take

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """(B, C, h, w) -> pooled (B, C) (``pre_logits``) or logits (B, num_classes); with
        ``global_pool=""`` the map itself."""
        x = self.global_pool(x)
        if self.global_pool_type:
            x = x.flatten(1)  # (B, C, 1, 1) -> (B, C)
        if self.drop_rate > 0:
            x = F.dropout(x, p=self.drop_rate, training=self.training)
        return x if pre_logits else self.fc(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    # ------------------------------------------------------------------------------------ classifier

    def get_classifier(self) -> nn.Module:
        """The classifier module (``fc``; ``nn.Identity`` without classes)."""
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A new, freshly initialised classifier for ``num_classes`` (0: none, the model returns pooled
        features), on the device and dtype of the current weights; ``global_pool`` (``"avg"``, ``"max"``,
        ``""``) replaces the pooling, None keeps it. ``pretrained_cfg`` keeps describing the weights."""
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
            raise InvalidArgumentError(f"num_classes must be a non-negative integer, got {num_classes!r}")
        pool = self.global_pool_type if global_pool is None else global_pool
        _check_pool(pool, num_classes)
        ref = self.bn1.weight
        self.global_pool_type = pool
        self.global_pool = _POOLS[pool]()
        self.num_classes = num_classes
        self.fc = (nn.Linear(self.num_features, num_classes, device=ref.device, dtype=ref.dtype) if num_classes > 0
                   else nn.Identity())

    def describe(self) -> dict[str, list[str]]:
        """The operator spec of every block, per stage: ``{"layer1": ["conv"], ..., "layer4": ["cot"]}``."""
        return {f"layer{i}": [str(b.spatial_layer) for b in s] for i, s in enumerate(self.stages(), start=1)
                if isinstance(s, nn.Sequential)}

