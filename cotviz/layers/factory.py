"""The bottleneck's pluggable spatial operator: one name (plus keyword options) -> one layer type.

The 3x3 slot of a ResNet bottleneck (``conv2``) is filled by name, so comparing operators inside a
fixed skeleton means changing one string (timm ``create_attn`` / ``byoanet`` style)::

    create_spatial_layer("cot", 64)             # CoT layer (CoXt when cardinality > 1, as the official code)
    create_spatial_layer("cot", 64, kernel=5)   # a 5x5 CoT layer: an option, not a new registration
    create_spatial_layer("split_attn", 64)      # SE / split-attention 3x3 conv (SE-CoTNetD's non-CoT blocks)
    create_spatial_layer("conv", 64)            # plain 3x3 conv + BN + ReLU (ResNet)
    create_spatial_layer("sa", 64, kernel=7)    # local multi-head self-attention (the paper's Sec. 3.1)
    create_spatial_layer("linear", 64)          # a Table 5 ablation: static, dynamic, linear, concat

A builder is registered with :func:`register_spatial_layer` and has the signature
``builder(channels, *, stride, cardinality, act_layer, **options)``: it maps (B, C, H, W) ->
(B, C, H/stride, W/stride). Its *options* are its other keyword-only parameters; their annotations
(``int``, ``float``, ``bool``, ``str``, optionally ``| None``) and defaults are read off the signature
once, at registration, so the builder is the one place an option is declared (the spec parser of
:mod:`cotviz.layers.spec` converts ``"cot:kernel=5"`` with the same table). Layers registered with
``supports_stride=False`` (CoT and the operators built like it) are always built with stride 1; the
bottleneck then pools around them (:mod:`cotviz.layers.downsample`).
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType, NoneType, UnionType
from typing import Any

from torch import nn

from cotviz.errors import InvalidArgumentError
from cotviz.layers.ablations import CotConcat, CotDynamic, CotLinear, CotStatic
from cotviz.layers.conv import ConvBnAct
from cotviz.layers.cot import CotLayer, CoXtLayer
from cotviz.layers.self_attention import LocalSelfAttention
from cotviz.layers.split_attn import SplitAttnConv2d

__all__ = [
    "LayerOption", "SpatialLayerBuilder", "SpatialLayerType", "create_spatial_layer", "list_spatial_layers",
    "register_spatial_layer", "spatial_layer_type",
]

SpatialLayerBuilder = Callable[..., nn.Module]

#: Keyword arguments every builder receives from the bottleneck (not options).
_CONTEXT: tuple[str, ...] = ("stride", "cardinality", "act_layer")
_OPTION_TYPES: tuple[type, ...] = (bool, int, float, str)


@dataclass(frozen=True)
class LayerOption:
    """One keyword option of a spatial layer type: its name, value type and default."""

    name: str
    type: type  # bool, int, float or str
    default: Any
    optional: bool  # ``None`` is a valid value (it then means "derived", e.g. key_kernel = kernel)

    def accepts(self, value: Any) -> bool:
        """Whether ``value`` has this option's type (an int is a valid float; a bool is not an int)."""
        if value is None:
            return self.optional
        if self.type is float:
            return isinstance(value, int | float) and not isinstance(value, bool)
        if self.type is int:
            return isinstance(value, int) and not isinstance(value, bool)
        return isinstance(value, self.type)

    @property
    def type_name(self) -> str:
        return {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}[self.type]


@dataclass(frozen=True)
class SpatialLayerType:
    """A registered spatial operator: builder, whether it can stride, and its options (in signature order)."""

    name: str
    builder: SpatialLayerBuilder
    supports_stride: bool
    options: Mapping[str, LayerOption]
    description: str

    def check_options(self, options: Mapping[str, Any]) -> None:
        """Raise :class:`InvalidArgumentError` (one line, naming the valid options) for an unknown option
        or a value of the wrong type."""
        for key, value in options.items():
            opt = self.options.get(key)
            if opt is None:
                raise InvalidArgumentError(f"spatial layer {self.name!r} has no option {key!r}; {self.option_help()}")
            if not opt.accepts(value):
                raise InvalidArgumentError(
                    f"option {key!r} of spatial layer {self.name!r} takes {opt.type_name}, got {value!r}")

    def option_help(self) -> str:
        """``"its options: kernel (default 3), ..."`` or ``"it takes no options"``."""
        if not self.options:
            return "it takes no options"
        items = [f"{o.name} ({'optional' if o.default is None else f'default {o.default}'})" for o in self.options.values()]
        return "its options: " + ", ".join(items)


_TYPES: dict[str, SpatialLayerType] = {}


def _option_type(annotation: Any, where: str) -> tuple[type, bool]:
    """(value type, None allowed) of an option annotation ``T`` or ``T | None``."""
    args = typing.get_args(annotation) if typing.get_origin(annotation) in (UnionType, typing.Union) else (annotation,)
    optional = NoneType in args
    rest = [a for a in args if a is not NoneType]
    if len(rest) != 1 or rest[0] not in _OPTION_TYPES:
        raise TypeError(f"{where}: an option must be annotated int, float, bool or str (optionally | None), "
                        f"got {annotation!r}")
    return rest[0], optional


def _options_of(name: str, fn: SpatialLayerBuilder) -> dict[str, LayerOption]:
    """The keyword-only parameters of ``fn`` other than the bottleneck's context, in signature order."""
    hints = typing.get_type_hints(fn)
    options: dict[str, LayerOption] = {}
    for p in inspect.signature(fn).parameters.values():
        if p.kind is not inspect.Parameter.KEYWORD_ONLY or p.name in _CONTEXT:
            continue
        where = f"spatial layer {name!r} option {p.name!r}"
        if p.default is inspect.Parameter.empty:
            raise TypeError(f"{where} needs a default")
        typ, optional = _option_type(hints.get(p.name, p.annotation), where)
        options[p.name] = LayerOption(p.name, typ, p.default, optional)
    return options


def register_spatial_layer(name: str, *, supports_stride: bool) -> Callable[[SpatialLayerBuilder], SpatialLayerBuilder]:
    """Register a spatial-operator builder under ``name`` (refuses duplicates); options come from its signature."""

    def deco(fn: SpatialLayerBuilder) -> SpatialLayerBuilder:
        if name in _TYPES:
            raise ValueError(f"spatial layer {name!r} is already registered")
        doc = inspect.getdoc(fn) or ""
        _TYPES[name] = SpatialLayerType(name, fn, supports_stride, MappingProxyType(_options_of(name, fn)),
                                        doc.split("\n", 1)[0])
        return fn

    return deco


def list_spatial_layers() -> list[str]:
    """Names accepted by :func:`create_spatial_layer`, sorted."""
    return sorted(_TYPES)


def spatial_layer_type(name: str) -> SpatialLayerType:
    """The registered layer type ``name``; an unknown name raises :class:`InvalidArgumentError` naming the valid ones."""
    try:
        return _TYPES[name]
    except KeyError:
        raise InvalidArgumentError(
            f"unknown spatial layer {name!r}; choose one of {', '.join(list_spatial_layers())}") from None


def create_spatial_layer(name: str, channels: int, *, stride: int = 1, cardinality: int = 1,
                         act_layer: type[nn.Module] = nn.ReLU, **options: Any) -> nn.Module:
    """Build the spatial operator ``name`` for ``channels`` in/out channels with keyword ``options``.

    (B, channels, H, W) -> (B, channels, H/stride, W/stride). Raises :class:`InvalidArgumentError` for
    an unknown name or option, a value of the wrong type or out of range, or a stride on an operator
    that cannot stride.
    """
    entry = spatial_layer_type(name)
    entry.check_options(options)
    if stride != 1 and not entry.supports_stride:
        raise InvalidArgumentError(f"spatial layer {name!r} has no stride; pool around it instead")
    return entry.builder(channels, stride=stride, cardinality=cardinality, act_layer=act_layer, **options)


def _check_kernel(name: str, option: str, kernel: int) -> None:
    """An attention window / conv kernel must be odd and positive ("same" padding keeps H x W)."""
    if kernel < 1 or kernel % 2 == 0:
        raise InvalidArgumentError(f"option {option!r} of spatial layer {name!r} must be an odd integer >= 1, "
                                   f"got {kernel}")


def _check_share_planes(name: str, channels: int, share_planes: int, cardinality: int = 1) -> None:
    """``channels`` must split into ``channels / share_planes`` attention maps (per cardinal group)."""
    if share_planes < 1 or channels % (share_planes * cardinality) != 0:
        raise InvalidArgumentError(
            f"option 'share_planes' of spatial layer {name!r} must divide the {channels} channels"
            + (f" per group of {cardinality}" if cardinality > 1 else "") + f", got {share_planes}")


def _cot_family(name: str, cls: type[CotLayer], channels: int, cardinality: int, kernel: int,
                key_kernel: int | None, share_planes: int) -> CotLayer:
    """A CoT-family layer ``cls`` with the official CoT / CoXt constants (CoXt's when ``cardinality > 1``).

    Shared by ``cot`` and the Table 5 ablations, so every one of them takes the same options with the
    same checks.
    """
    _check_kernel(name, "kernel", kernel)
    if key_kernel is not None:
        _check_kernel(name, "key_kernel", key_kernel)
    _check_share_planes(name, channels, share_planes, cardinality)
    # official cotnet.Bottleneck: CotLayer if cardinality == 1 else CoXtLayer (8 static-context groups)
    return cls(channels, kernel, key_kernel_size=key_kernel, share_planes=share_planes,
               key_groups=4 if cardinality == 1 else 8, cardinality=cardinality)


@register_spatial_layer("cot", supports_stride=False)
def _cot(channels: int, *, stride: int, cardinality: int, act_layer: type[nn.Module], kernel: int = 3,
         key_kernel: int | None = None, share_planes: int = 8) -> nn.Module:
    """Contextual Transformer layer (CoXt when cardinality > 1): static + dynamic context, fused."""
    cls = CotLayer if cardinality == 1 else CoXtLayer
    return _cot_family("cot", cls, channels, cardinality, kernel, key_kernel, share_planes)


@register_spatial_layer("split_attn", supports_stride=True)
def _split_attn(channels: int, *, stride: int, cardinality: int, act_layer: type[nn.Module],
                kernel: int = 3) -> nn.Module:
    """Split-attention (radix 1 = SE-gated) KxK conv of SE-CoTNetD's non-CoT blocks."""
    _check_kernel("split_attn", "kernel", kernel)
    return SplitAttnConv2d(channels, channels, kernel, stride=stride, groups=cardinality, act_layer=act_layer)


@register_spatial_layer("conv", supports_stride=True)
def _conv(channels: int, *, stride: int, cardinality: int, act_layer: type[nn.Module], kernel: int = 3) -> nn.Module:
    """Plain KxK conv + BN + activation (ResNet)."""
    _check_kernel("conv", "kernel", kernel)
    return ConvBnAct(channels, channels, kernel, stride=stride, groups=cardinality, act_layer=act_layer)


@register_spatial_layer("sa", supports_stride=False)
def _sa(channels: int, *, stride: int, cardinality: int, act_layer: type[nn.Module], kernel: int = 3,
        share_planes: int = 8) -> nn.Module:
    """Local multi-head self-attention over k x k windows (softmax attention, C/share_planes heads), BN, ReLU."""
    _check_kernel("sa", "kernel", kernel)
    _check_share_planes("sa", channels, share_planes)
    return LocalSelfAttention(channels, kernel, share_planes=share_planes, groups=cardinality)


@register_spatial_layer("static", supports_stride=False)
def _static(channels: int, *, stride: int, cardinality: int, act_layer: type[nn.Module],
            kernel: int = 3) -> nn.Module:
    """Table 5 ablation: the static context K1 only (KxK grouped conv, BN, ReLU)."""
    return _cot_family("static", CotStatic, channels, cardinality, kernel, None, 8)


@register_spatial_layer("dynamic", supports_stride=False)
def _dynamic(channels: int, *, stride: int, cardinality: int, act_layer: type[nn.Module], kernel: int = 3,
             key_kernel: int | None = None, share_planes: int = 8) -> nn.Module:
    """Table 5 ablation: the dynamic context K2 only (no fusion)."""
    return _cot_family("dynamic", CotDynamic, channels, cardinality, kernel, key_kernel, share_planes)


@register_spatial_layer("linear", supports_stride=False)
def _linear(channels: int, *, stride: int, cardinality: int, act_layer: type[nn.Module], kernel: int = 3,
            key_kernel: int | None = None, share_planes: int = 8) -> nn.Module:
    """Table 5 ablation: K1 + K2 (no fusion)."""
    return _cot_family("linear", CotLinear, channels, cardinality, kernel, key_kernel, share_planes)


@register_spatial_layer("concat", supports_stride=False)
def _concat(channels: int, *, stride: int, cardinality: int, act_layer: type[nn.Module], kernel: int = 3,
            key_kernel: int | None = None, share_planes: int = 8) -> nn.Module:
    """Table 5 ablation: BN(1x1 conv 2C -> C of [K1, K2]) (no fusion)."""
    return _cot_family("concat", CotConcat, channels, cardinality, kernel, key_kernel, share_planes)
