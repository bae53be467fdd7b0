"""Inference preparation: every eval-mode BatchNorm folded into the convolution before it.

In eval mode a BatchNorm is a per-channel affine map ``y = s * x + t`` with ``s = gamma / sqrt(var + eps)``
and ``t = beta - s * mean``; after a convolution ``x = W * u + b`` it folds into that convolution:
``W' = s W``, ``b' = s b + t`` (the standard conv-BN fusion, as ``torch.fx.experimental.optimization.fuse``
and ``torch.nn.utils.fusion.fuse_conv_bn_eval``). A CoT layer has five BatchNorms, four of them right after
a conv (``key_embed.1``, ``embed.1``, ``conv1x1.1``, ``se.1``); the fifth (``bn``) follows the local
aggregation, which is linear in its input *per channel* (output channel ``c`` only reads value channel
``c``), so its scale folds into the value conv ``conv1x1.0`` and its shift stays as a per-channel bias
(:class:`ChannelShift`). The shift cannot move into the values: the aggregation weights (GroupNorm outputs,
or a softmax cut by zero padding at the border) do not sum to 1.

Folded here (post-order, so a parent sees its children already folded):

=====================================  ==============================================================
module                                 BatchNorms folded
=====================================  ==============================================================
any ``nn.Sequential``                  every ``Conv2d`` -> ``BatchNorm2d`` pair (CoT ``key_embed``,
                                       ``embed``, ``conv1x1``, ``se``; the shortcut ``downsample``;
                                       the deep stem; the ``concat`` ablation's ``fuse``)
``CoTResNet``                          ``bn1`` into the stem's last conv
``Bottleneck``                         ``bn1`` into ``conv1``, ``bn3`` into ``conv3``
``ConvBnAct`` (``conv``)               ``bn`` into ``conv``
``SplitAttnConv2d`` (``split_attn``)   ``bn0`` into ``conv``, ``bn1`` into ``fc1``
``CotLayer`` / ``CoXtLayer`` and the   ``bn`` (after the aggregation): scale into ``conv1x1.0``, shift
ablations ``dynamic``, ``linear``,     -> :class:`ChannelShift`
``concat``
``LocalSelfAttention`` (``sa``)        ``bn``: scale into ``value``, shift -> :class:`ChannelShift`
=====================================  ==============================================================

A folded BatchNorm is replaced by ``nn.Identity`` (a Sequential keeps its indices, so every other module
keeps its name: the taps, ``capture`` and the profiler find the same layout). A BatchNorm in a module not
listed (a user's own head, a BN without running statistics) is left as it is, still correct.

The fold works **in place** and returns the same model: a copy would double the memory of a full
network (the demo/CLI policy of building models lives in :mod:`cotviz.models.untrained`). Copy first
(``copy.deepcopy``) to keep the original. Folding again is a no-op (nothing is left to fold).

``state_dict()`` of a folded model is no longer the official layout: every folded BatchNorm's keys
(``weight``, ``bias``, ``running_mean``, ``running_var``, ``num_batches_tracked``) are gone, every conv
that absorbed one has a ``bias`` (float, ``(C_out,)``) if it had none, and each CoT / ``sa`` layer's
``bn.*`` becomes ``bn.bias`` (the shift, ``(C,)``). Official checkpoints therefore load into the model
*before* :func:`prepare_for_inference`, not after (a folded model's own ``state_dict`` loads into a
folded model of the same configuration). Parameter counts change accordingly (BN affine parameters out,
conv biases in); :mod:`cotviz.profile` counts a folded model as any other (every op counted, the
BatchNorms' element operations gone, the convs' bias adds and the :class:`ChannelShift` adds counted).
A folded network cannot be re-initialised (``init_weights`` zero-inits ``bn3``, which is gone) nor
re-calibrated: build, load, calibrate, then fold.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch
from torch import Tensor, nn

from cotviz.errors import InvalidArgumentError
from cotviz.layers.conv import ConvBnAct
from cotviz.layers.cot import CotLayer
from cotviz.layers.pointwise import PointwiseConv2d, pointwise_eligible
from cotviz.layers.self_attention import LocalSelfAttention
from cotviz.layers.split_attn import SplitAttnConv2d
from cotviz.models.resnet import Bottleneck, CoTResNet

__all__ = ["ChannelShift", "prepare_for_inference"]

M = TypeVar("M", bound=nn.Module)


class ChannelShift(nn.Module):
    """``x + bias[c]`` per channel: what is left of a BatchNorm whose scale was folded upstream.

    ``bias``: (C,). (B, C, H, W) -> (B, C, H, W), in place when the caller allows it (``inplace``).
    """

    def __init__(self, bias: Tensor, inplace: bool = True, requires_grad: bool = True) -> None:
        super().__init__()
        self.bias = nn.Parameter(bias.detach().clone(), requires_grad=requires_grad)
        self.inplace = inplace

    def forward(self, x: Tensor) -> Tensor:
        shift = self.bias.view(1, -1, 1, 1)  # (1, C, 1, 1)
        if self.inplace and not torch.is_grad_enabled():
            return x.add_(shift)
        return x + shift

    def extra_repr(self) -> str:
        return f"{self.bias.numel()}"


def _foldable(bn: nn.Module) -> bool:
    """An eval-mode BatchNorm2d with running statistics (what folding replaces exactly)."""
    return (isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats and bn.running_mean is not None
            and bn.running_var is not None)


def _affine(bn: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    """(scale s, shift t), both (C,) float64: eval-mode ``bn(x) = s * x + t``."""
    assert bn.running_mean is not None and bn.running_var is not None
    var, mean = bn.running_var.double(), bn.running_mean.double()
    scale = torch.rsqrt(var + bn.eps)
    shift = -mean * scale
    if bn.weight is not None:
        scale = scale * bn.weight.double()
        shift = shift * bn.weight.double()
    if bn.bias is not None:
        shift = shift + bn.bias.double()
    return scale, shift


def _scale_conv(conv: nn.Conv2d, scale: Tensor, shift: Tensor | None) -> None:
    """``conv <- scale * conv + shift`` per output channel (float64 arithmetic, stored in conv's dtype)."""
    w = conv.weight
    with torch.no_grad():
        conv.weight = nn.Parameter((w.double() * scale.view(-1, 1, 1, 1)).to(w.dtype), w.requires_grad)
        bias = conv.bias.double() * scale if conv.bias is not None else None
        if shift is not None:
            bias = shift if bias is None else bias + shift
        if bias is not None:
            conv.bias = nn.Parameter(bias.to(w.dtype), w.requires_grad)


def _fold_into(conv: nn.Module, bn: nn.Module) -> bool:
    """Fold eval-mode ``bn`` into the Conv2d ``conv`` before it; False (nothing changed) if either does not fit."""
    if not (isinstance(conv, nn.Conv2d) and _foldable(bn)):
        return False
    assert isinstance(bn, nn.BatchNorm2d)
    if conv.out_channels != bn.num_features:
        return False
    scale, shift = _affine(bn)
    _scale_conv(conv, scale, shift)
    return True


def _identity() -> nn.Module:
    """What takes a folded BatchNorm's place (eval mode, as the model it joins)."""
    return nn.Identity().eval()


def _fold_attr(module: nn.Module, conv_name: str, bn_name: str) -> int:
    """Fold ``module.<bn_name>`` into ``module.<conv_name>`` and replace the BN by Identity; returns 0 or 1."""
    conv, bn = getattr(module, conv_name, None), getattr(module, bn_name, None)
    if isinstance(conv, nn.Sequential) and len(conv) > 0:  # deep stem: the BN follows its last conv
        conv = conv[-1]
    if conv is None or bn is None or not _fold_into(conv, bn):
        return 0
    setattr(module, bn_name, _identity())
    return 1


def _fold_sequential(seq: nn.Module) -> int:
    """Every Conv2d -> BatchNorm2d pair of an ``nn.Sequential``; the BN's slot becomes Identity."""
    assert isinstance(seq, nn.Sequential)
    done = 0
    for i in range(len(seq) - 1):
        if _fold_into(seq[i], seq[i + 1]):
            seq[i + 1] = _identity()
            done += 1
    return done


def _fold_after_aggregation(module: nn.Module, value_conv: nn.Module) -> int:
    """``module.bn`` after the aggregation: scale into ``value_conv`` (the conv producing the aggregated
    values, channel for channel), shift -> :class:`ChannelShift`."""
    bn = getattr(module, "bn", None)
    if bn is None or not _foldable(bn) or not isinstance(value_conv, nn.Conv2d):
        return 0
    assert isinstance(bn, nn.BatchNorm2d)
    if value_conv.out_channels != bn.num_features:
        return 0
    scale, shift = _affine(bn)
    _scale_conv(value_conv, scale, None)
    assert bn.running_mean is not None
    module.bn = ChannelShift(shift.to(bn.running_mean.dtype), requires_grad=value_conv.weight.requires_grad).eval()
    return 1


def _fold_cot(m: nn.Module) -> int:
    """CoT / CoXt layers and the ablations that keep ``conv1x1`` and ``bn`` (their Sequentials are done first)."""
    conv1x1 = getattr(m, "conv1x1", None)
    if not isinstance(conv1x1, nn.Sequential) or len(conv1x1) == 0:
        return 0  # the ``static`` ablation has no dynamic context
    if len(conv1x1) > 1 and not isinstance(conv1x1[1], nn.Identity):
        return 0  # its BN could not be folded: the aggregation's BN scale cannot pass it
    return _fold_after_aggregation(m, conv1x1[0])


def _fold_sa(m: nn.Module) -> int:
    assert isinstance(m, LocalSelfAttention)
    return _fold_after_aggregation(m, m.value)


#: Module type -> folding of the BatchNorms it owns directly (children are folded before their parent).
_RULES: tuple[tuple[type[nn.Module], Callable[[nn.Module], int]], ...] = (
    (nn.Sequential, _fold_sequential),
    (CoTResNet, lambda m: _fold_attr(m, "conv1", "bn1")),
    (Bottleneck, lambda m: _fold_attr(m, "conv1", "bn1") + _fold_attr(m, "conv3", "bn3")),
    (ConvBnAct, lambda m: _fold_attr(m, "conv", "bn")),
    (SplitAttnConv2d, lambda m: _fold_attr(m, "conv", "bn0") + _fold_attr(m, "fc1", "bn1")),
    (CotLayer, _fold_cot),
    (LocalSelfAttention, _fold_sa),
)


def _fold_tree(module: nn.Module) -> int:
    done = sum(_fold_tree(child) for child in module.children())
    for cls, rule in _RULES:
        if isinstance(module, cls):
            done += rule(module)
    return done


def prepare_for_inference(model: M, *, pointwise: bool = True) -> M:
    """Fold every eval-mode BatchNorm of ``model`` into the convolution before it, **in place**; run its 1x1
    convolutions through oneDNN on CPU (``pointwise``).

    Same outputs (and the same values at every capture tap: static context, attention, dynamic context,
    fusion weights, output) up to float rounding (1e-5 relative measured on tiny networks with live
    residual branches); fewer operations per forward. See the module docstring for what is folded and
    what ``state_dict()`` looks like afterwards. Folding an already folded model changes nothing.

    Args:
        model: a network or layer in eval mode (``model.eval()``), any device and floating dtype.
        pointwise: make every plain 1x1 ``nn.Conv2d`` a :class:`cotviz.layers.pointwise.PointwiseConv2d` (the
            same module, its class swapped): in eager CPU float32 channels-last inference it runs through oneDNN,
            which PyTorch skips for 1x1 convolutions when single-threaded (2-2.7x slower per convolution there).
            Elsewhere (GPU, NCHW, autograd, compile/export/trace) it is ``nn.Conv2d``.

    Returns:
        ``model`` itself, folded (not a copy; ``copy.deepcopy`` first to keep the original).

    Raises:
        InvalidArgumentError: if ``model`` or any submodule is in training mode (a training BatchNorm
            normalises with the batch's statistics, which no fold can reproduce).
    """
    training = [name or type(model).__name__ for name, m in model.named_modules() if m.training]
    if training:
        raise InvalidArgumentError(
            f"prepare_for_inference needs an eval-mode model, but {training[0]}"
            f"{f' and {len(training) - 1} more modules are' if len(training) > 1 else ' is'} in training mode; "
            "call model.eval() first")
    _fold_tree(model)
    if pointwise:
        for m in model.modules():
            if pointwise_eligible(m):
                m.__class__ = PointwiseConv2d  # same state, another forward: names, hooks and taps stay
    return model
