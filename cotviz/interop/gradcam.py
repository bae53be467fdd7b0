"""pytorch-grad-cam (``grad-cam`` on PyPI) glue: CAM targets inside a cotviz network, the attention tap as
channels.

pytorch-grad-cam works unchanged on ``model.layer4[-1]`` and on the 4-D taps (``static_context``,
``dynamic_context``, ``output`` of ``model.layer3[0].conv2``). The ``attention`` tap is 6-D, (B, 1, M, K*K,
H, W) with M = C/8 maps (CoXt: (2B, 1, C/16, K*K, H, W), the two groups of sample i at batch 2i, 2i+1);
grad-cam takes 4-D activations, so :func:`attention_reshape_transform` folds maps x taps into channels::

    from pytorch_grad_cam import GradCAM
    layer, reshape = cotviz.interop.cam_target(model, stage=3, tap="attention")
    cam = GradCAM(model, target_layers=[layer], reshape_transform=reshape)(x)   # (B, H_in, W_in)

Channel ``(g*M + m)*K*K + k`` of the folded tensor is window tap k of attention map m of group g, so a
Grad-CAM over it weights every (map, tap) pair by its mean gradient, as over any feature channels.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from cotviz.analysis.attribution import warn_if_zero_residuals
from cotviz.capture.records import attention_heads
from cotviz.errors import InvalidArgumentError

__all__ = ["attention_reshape_transform", "attention_to_channels", "cam_target"]


def attention_to_channels(attention: Tensor, groups: int = 1) -> Tensor:
    """(B*groups, 1, M, K*K, H, W) attention tap -> (B, groups*M*K*K, H, W), group-major, then map, then tap.

    ``groups``: the layer's cardinality (1 for CoT, 2 for CoXt: rows 2i and 2i+1 are sample i's groups).
    Also takes the gradient of the tap (grad-cam reshapes activations and gradients alike). A view when the
    tap is contiguous: :func:`cotviz.capture.attention_heads` (the heads layout), heads and taps flattened."""
    if attention.ndim != 6 or attention.shape[1] != 1:
        raise InvalidArgumentError(f"an attention tap is (B*groups, 1, maps, K*K, H, W), got {tuple(attention.shape)}")
    if groups < 1 or attention.shape[0] % groups:
        raise InvalidArgumentError(f"groups={groups} does not divide the tap's batch dimension {attention.shape[0]}")
    return attention_heads(attention, groups).flatten(1, 2)  # (B, g*M, KK, H, W) -> (B, g*M*KK, H, W)


def attention_reshape_transform(layer: nn.Module | None = None, *, groups: int | None = None) -> Callable[[Tensor], Tensor]:
    """grad-cam's ``reshape_transform`` for the ``attention`` tap of ``layer`` (a CoT / CoXt layer: its
    ``cardinality`` gives the groups) or of ``groups`` groups (default 1)."""
    g = groups if groups is not None else int(getattr(layer, "cardinality", 1) or 1)

    def reshape_transform(t: Tensor) -> Tensor:
        return attention_to_channels(t, g)

    return reshape_transform


def cam_target(model: nn.Module, stage: int = 4, block: int = -1, tap: str | None = None
               ) -> tuple[nn.Module, Callable[[Tensor], Tensor] | None]:
    """The module to hand grad-cam as a target layer, and the ``reshape_transform`` it needs (None for 4-D).

    Args:
        model: a cotviz network.
        stage: 1..4 (``layer{stage}``).
        block: index of the bottleneck in the stage (Python index; -1 = last).
        tap: None = the bottleneck's output (grad-cam's usual ``model.layer4[-1]``); a tap name
            (``static_context``, ``attention``, ``dynamic_context``, ``output``) = that tap of the block's
            spatial operator ``conv2``.

    Warns :class:`cotviz.analysis.attribution.ZeroResidualWarning` when the target is cut off by residual
    branches that are off (untrained network, official zero init).
    """
    layer = getattr(model, f"layer{stage}", None)
    if not isinstance(layer, nn.Sequential):
        raise InvalidArgumentError(f"stage {stage} out of range: the model has no stage layer{stage}")
    try:
        target: nn.Module = layer[block]
    except IndexError:
        raise InvalidArgumentError(f"layer{stage} has {len(layer)} blocks; block {block} does not exist") from None
    index = block % len(layer)
    if tap is None:
        warn_if_zero_residuals(model, stage if index == len(layer) - 1 else None)
        return target, None
    op = getattr(target, "conv2", None)
    module = getattr(op, tap, None) if tap != "fusion_weights" else None
    if not isinstance(module, nn.Module):
        raise InvalidArgumentError(f"layer{stage}.{index}.conv2 ({type(op).__name__}) has no CAM-able tap {tap!r}; "
                                   "taps: static_context, attention, dynamic_context, output")
    warn_if_zero_residuals(model, block=f"layer{stage}.{index}")
    return module, attention_reshape_transform(op) if tap == "attention" else None
