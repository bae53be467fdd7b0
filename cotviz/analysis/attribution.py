"""Grad-CAM (Selvaraju et al., ICCV 2017) of a stage, through captum's ``LayerGradCam``.

``cam = ReLU(sum_c alpha_c F_c)`` with ``alpha_c = mean_{h,w} d logit_target / d F_c(h, w)``, where ``F``
is the output of the stage module ``layer{N}`` (B, C, h, w); ``relu=False`` keeps the signed sum (captum's
``relu_attributions=False``; what a randomisation test such as Quantus' MPRT needs, whose randomised
networks often give an all-negative sum). captum is imported only when this runs, so commands that do not
ask for Grad-CAM never pay its import time.

A network whose residual branches are off (the official ``zero_init_last_bn`` of an untrained
``create_model("cotnet50")``) passes only its shortcuts: no gradient reaches a residual branch (a Grad-CAM or
any attribution on a CoT layer or its taps is exactly zero), and a stage's Grad-CAM explains the stem and the
1x1 shortcut projections, not the CoT layers. :func:`grad_cam` says so with one :class:`ZeroResidualWarning`;
load weights, or build with ``zero_init_last_bn=False`` (the untrained demo policy keeps the branches live).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cotviz.errors import InvalidArgumentError
from cotviz.models.resnet import Bottleneck, zero_residual_blocks

__all__ = ["GradCamResult", "ZeroResidualWarning", "grad_cam", "warn_if_zero_residuals"]


class ZeroResidualWarning(UserWarning):
    """Residual branches of the network are off (last BN weight zero: an untrained network with the official
    zero init): attributions inside a branch are exactly zero, those of a stage explain the shortcuts only."""


def warn_if_zero_residuals(model: nn.Module, stage: int | None = None, *, block: str | None = None,
                           stacklevel: int = 2) -> bool:
    """Warn once (:class:`ZeroResidualWarning`) and return True when an attribution target is cut off.

    Args:
        model: the network.
        stage: a stage-level target (``layer{stage}``'s output): warns when every bottleneck after it has its
            branch off (the logits then see that stage through shortcuts only).
        block: the module path of the bottleneck a target sits in (e.g. ``"layer3.0"`` for a CoT tap of
            its ``conv2``): warns when that block's branch is off (the target gets no gradient at all).
        stacklevel: as :func:`warnings.warn`, counted from the caller of this function.
    """
    off = set(zero_residual_blocks(model))
    if not off:
        return False
    if block is not None:
        if block not in off:
            return False
        where = f"{block} has its residual branch off, so every attribution inside it (its CoT layer and taps) is "
        where += "exactly zero"
    else:
        later = [n for n in _bottlenecks(model) if stage is None or int(n[5]) > stage]
        if not later or any(n not in off for n in later):
            return False
        where = (f"every bottleneck after stage {stage} has its residual branch off, so its Grad-CAM explains the "
                 "shortcuts only (the CoT layers take no part)" if stage is not None else
                 "every residual branch is off, so the network's attributions explain its shortcuts only")
    warnings.warn(f"{where}: an untrained network with the official zero init of the last BN; load weights "
                  "(weights=...) or build with zero_init_last_bn=False", ZeroResidualWarning,
                  stacklevel=stacklevel + 1)
    return True


def _bottlenecks(model: nn.Module) -> list[str]:
    """Module paths ``layer{S}.{i}`` of the bottlenecks of a cotviz network."""
    return [n for n, m in model.named_modules() if isinstance(m, Bottleneck) and n[:5] == "layer" and n[5:6].isdigit()]


@dataclass(frozen=True)
class GradCamResult:
    """Grad-CAM of one batch.

    Attributes:
        cam: (B, h, w) at the stage's output resolution (ReLU applied unless ``relu=False``, un-normalised).
        upsampled: (B, S_h, S_w) bilinear upsampling of ``cam`` to the model input (``align_corners=False``:
            cell (i, j) is centred on input pixel ``((j + 0.5) * S_w / w, (i + 0.5) * S_h / h)``).
        target: (B,) class index explained per sample.
    """

    cam: Tensor
    upsampled: Tensor
    target: Tensor


def _stage_module(model: nn.Module, stage: int) -> nn.Module:
    layer = getattr(model, f"layer{stage}", None)
    if not isinstance(layer, nn.Module):
        raise InvalidArgumentError(f"stage {stage} out of range: the model has no module layer{stage}")
    return layer


def grad_cam(model: nn.Module, x: Tensor, stage: int, target: int | Sequence[int] | None = None, *,
             relu: bool = True) -> GradCamResult:
    """Grad-CAM of ``target`` (default: the predicted class per sample) at ``model.layer{stage}``.

    Args:
        model: a cotviz network in eval mode.
        x: (B, 3, S_h, S_w) model input.
        stage: 1..4.
        target: a class index for every sample, one per sample, or None for the arg-max class (costs an
            extra forward: a caller that already has the logits passes ``logits.argmax(1).tolist()``).
        relu: apply the ReLU of Grad-CAM (default); False gives the signed map (captum's
            ``relu_attributions=False``).

    Runs with gradients enabled (one forward for the logits when ``target`` is None, one forward and
    backward inside captum). The model's parameters do not accumulate gradients. Warns
    (:class:`ZeroResidualWarning`) when every block after ``stage`` has its residual branch off.
    """
    from captum.attr import LayerGradCam

    layer = _stage_module(model, stage)
    warn_if_zero_residuals(model, stage)
    x = x.detach()
    with torch.inference_mode(False), torch.enable_grad():
        xg = x.clone().requires_grad_(True)  # captum needs a graph from the input
        if target is None:
            with torch.no_grad():
                targets = model(xg).argmax(dim=1)  # (B,)
        else:
            items = [target] * x.shape[0] if isinstance(target, int) else list(target)
            if len(items) != x.shape[0]:
                raise InvalidArgumentError(f"{len(items)} targets for a batch of {x.shape[0]}")
            num_classes = int(model.num_classes)  # type: ignore[arg-type]
            for t in items:
                if not 0 <= int(t) < num_classes:
                    raise InvalidArgumentError(f"target class {t} out of range: the model has classes "
                                               f"0..{num_classes - 1}")
            targets = torch.tensor([int(t) for t in items], device=x.device)
        params = [p for p in model.parameters() if p.requires_grad]
        for p in params:  # gradients w.r.t. activations only: leave .grad of the weights untouched
            p.requires_grad_(False)
        try:
            cam = LayerGradCam(model, layer).attribute(xg, target=targets.tolist(), relu_attributions=bool(relu))
        finally:
            for p in params:
                p.requires_grad_(True)
        cam = cam.detach()[:, 0]  # (B, 1, h, w) -> (B, h, w)
    up = F.interpolate(cam[:, None], size=tuple(x.shape[-2:]), mode="bilinear", align_corners=False)[:, 0]
    return GradCamResult(cam=cam, upsampled=up, target=targets)
