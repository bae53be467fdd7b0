"""The bottleneck's pluggable spatial operator: one name -> one layer type.

The 3x3 slot of a ResNet bottleneck (``conv2``) is filled by name, so comparing operators inside a
fixed skeleton means changing one string (timm ``create_attn`` / ``byoanet`` style)::

    create_spatial_layer("cot", 64)          # CoT layer (CoXt when cardinality > 1, as the official code)
    create_spatial_layer("split_attn", 64)   # SE / split-attention 3x3 conv (SE-CoTNetD's non-CoT blocks)
    create_spatial_layer("conv", 64)         # plain 3x3 conv + BN + ReLU (ResNet)

A builder receives ``(channels, stride=..., cardinality=..., act_layer=...)`` and returns a module
mapping (B, C, H, W) -> (B, C, H/stride, W/stride). Layers registered with ``supports_stride=False``
(CoT) are always built with stride 1; the bottleneck then pools before them.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from cotviz.layers.conv import ConvBnAct
from cotviz.layers.cot import CotLayer, CoXtLayer
from cotviz.layers.split_attn import SplitAttnConv2d

__all__ = ["SpatialLayerBuilder", "register_spatial_layer", "create_spatial_layer", "list_spatial_layers",
           "spatial_layer_supports_stride"]

SpatialLayerBuilder = Callable[..., nn.Module]

_BUILDERS: dict[str, tuple[SpatialLayerBuilder, bool]] = {}


def register_spatial_layer(name: str, *, supports_stride: bool) -> Callable[[SpatialLayerBuilder], SpatialLayerBuilder]:
    """Register a spatial-operator builder under ``name`` (refuses duplicates)."""

    def deco(fn: SpatialLayerBuilder) -> SpatialLayerBuilder:
        if name in _BUILDERS:
            raise ValueError(f"spatial layer {name!r} is already registered")
        _BUILDERS[name] = (fn, supports_stride)
        return fn

    return deco


def list_spatial_layers() -> list[str]:
    """Names accepted by :func:`create_spatial_layer`."""
    return sorted(_BUILDERS)


def _lookup(name: str) -> tuple[SpatialLayerBuilder, bool]:
    try:
        return _BUILDERS[name]
    except KeyError:
        raise ValueError(f"unknown spatial layer {name!r}; choose one of {', '.join(list_spatial_layers())}") from None


def spatial_layer_supports_stride(name: str) -> bool:
    """Whether the operator downsamples itself (else the bottleneck pools around it)."""
    return _lookup(name)[1]


def create_spatial_layer(name: str, channels: int, *, stride: int = 1, cardinality: int = 1,
                         act_layer: type[nn.Module] = nn.ReLU) -> nn.Module:
    """Build the spatial operator ``name`` for ``channels`` in/out channels."""
    builder, supports_stride = _lookup(name)
    if stride != 1 and not supports_stride:
        raise ValueError(f"spatial layer {name!r} has no stride; pool around it instead")
    return builder(channels, stride=stride, cardinality=cardinality, act_layer=act_layer)


@register_spatial_layer("cot", supports_stride=False)
def _cot(channels: int, *, stride: int, cardinality: int, act_layer: type[nn.Module]) -> nn.Module:
    # official cotnet.Bottleneck: CotLayer if cardinality == 1 else CoXtLayer
    if cardinality == 1:
        return CotLayer(channels, kernel_size=3)
    return CoXtLayer(channels, kernel_size=3, cardinality=cardinality)


@register_spatial_layer("split_attn", supports_stride=True)
def _split_attn(channels: int, *, stride: int, cardinality: int, act_layer: type[nn.Module]) -> nn.Module:
    return SplitAttnConv2d(channels, channels, 3, stride=stride, groups=cardinality, radix=1, act_layer=act_layer)


@register_spatial_layer("conv", supports_stride=True)
def _conv(channels: int, *, stride: int, cardinality: int, act_layer: type[nn.Module]) -> nn.Module:
    return ConvBnAct(channels, channels, 3, stride=stride, groups=cardinality, act_layer=act_layer)
