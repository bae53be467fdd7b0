"""Where a strided bottleneck loses resolution around its spatial operator: a small registry of modes.

A mode maps ``(channels, stride, operator can stride)`` to a :class:`Downsample` plan: a module that
runs before the operator (the block's ``avd``), the stride the operator is built with, and a module
that runs after it (the block's ``aa``). The pools are parameter-free, so the mode never changes the
state_dict. Registered modes (official code in parentheses)::

    "op"    the operator strides itself (plain conv, split attention: ResNet-B); one that cannot (CoT and the
            operators built like it) gets AvgPool2d(3, 2, padding=1) BEFORE it (CoTNet ``Bottleneck.avd``;
            SE-CoTNetD-50/101 ``avd_first``)
    "blur"  the operator runs at stride 1, a BlurPool2d AFTER it (SE-CoTNetD-152/200/270, ``avd_first=False``
            with ``aa_layer=BlurPool2d``)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from cotviz.errors import InvalidArgumentError
from cotviz.layers.blur import BlurPool2d

__all__ = ["Downsample", "DownsampleMode", "check_downsample_mode", "create_downsample", "list_downsample_modes",
           "register_downsample_mode"]


@dataclass(frozen=True, eq=False)
class Downsample:
    """How one block downsamples: ``before`` -> operator (built with ``op_stride``) -> ``after``."""

    before: nn.Module | None
    op_stride: int
    after: nn.Module | None


#: ``mode(channels, stride, op_strides) -> Downsample``; ``stride > 1`` when it is called.
DownsampleMode = Callable[[int, int, bool], Downsample]

_MODES: dict[str, DownsampleMode] = {}


def register_downsample_mode(name: str) -> Callable[[DownsampleMode], DownsampleMode]:
    """Register a downsample mode under ``name`` (refuses duplicates)."""

    def deco(fn: DownsampleMode) -> DownsampleMode:
        if name in _MODES:
            raise ValueError(f"downsample mode {name!r} is already registered")
        _MODES[name] = fn
        return fn

    return deco


def list_downsample_modes() -> list[str]:
    """Names accepted by :func:`create_downsample`, sorted."""
    return sorted(_MODES)


def check_downsample_mode(name: str) -> None:
    """Raise :class:`InvalidArgumentError` naming the valid modes unless ``name`` is registered."""
    if name not in _MODES:
        raise InvalidArgumentError(
            f"unknown downsample mode {name!r}; choose one of {', '.join(list_downsample_modes())}")


def create_downsample(mode: str, channels: int, stride: int, *, op_strides: bool) -> Downsample:
    """The plan of a block whose operator has ``channels`` channels and which has stride ``stride``.

    ``op_strides``: whether the operator can be built with a stride. Stride 1 needs no downsampling.
    """
    check_downsample_mode(mode)
    if stride == 1:
        return Downsample(None, 1, None)
    return _MODES[mode](channels, stride, op_strides)


@register_downsample_mode("op")
def _in_operator(channels: int, stride: int, op_strides: bool) -> Downsample:
    if op_strides:
        return Downsample(None, stride, None)
    return Downsample(nn.AvgPool2d(3, stride, padding=1), 1, None)  # (B, C, H, W) -> (B, C, H/2, W/2) at stride 2


@register_downsample_mode("blur")
def _blur_after(channels: int, stride: int, op_strides: bool) -> Downsample:
    return Downsample(None, 1, BlurPool2d(channels, stride=stride))
