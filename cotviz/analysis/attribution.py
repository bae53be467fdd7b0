"""Grad-CAM (Selvaraju et al., ICCV 2017) of a stage, through captum's ``LayerGradCam``.

``cam = ReLU(sum_c alpha_c F_c)`` with ``alpha_c = mean_{h,w} d logit_target / d F_c(h, w)``, where ``F``
is the output of the stage module ``layer{N}`` (B, C, h, w). captum is imported only when this runs,
so commands that do not ask for Grad-CAM never pay its import time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cotviz.errors import InvalidArgumentError

__all__ = ["GradCamResult", "grad_cam"]


@dataclass(frozen=True)
class GradCamResult:
    """Grad-CAM of one batch.

    Attributes:
        cam: (B, h, w) at the stage's output resolution (ReLU applied, un-normalised).
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


def grad_cam(model: nn.Module, x: Tensor, stage: int, target: int | Sequence[int] | None = None) -> GradCamResult:
    """Grad-CAM of ``target`` (default: the predicted class per sample) at ``model.layer{stage}``.

    Args:
        model: a cotviz network in eval mode.
        x: (B, 3, S_h, S_w) model input.
        stage: 1..4.
        target: a class index for every sample, one per sample, or None for the arg-max class (costs an
            extra forward: a caller that already has the logits passes ``logits.argmax(1).tolist()``).

    Runs with gradients enabled (one forward for the logits when ``target`` is None, one forward and
    backward inside captum). The model's parameters do not accumulate gradients.
    """
    from captum.attr import LayerGradCam

    layer = _stage_module(model, stage)
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
            cam = LayerGradCam(model, layer).attribute(xg, target=targets.tolist(), relu_attributions=True)
        finally:
            for p in params:
                p.requires_grad_(True)
        cam = cam.detach()[:, 0]  # (B, 1, h, w) -> (B, h, w)
    up = F.interpolate(cam[:, None], size=tuple(x.shape[-2:]), mode="bilinear", align_corners=False)[:, 0]
    return GradCamResult(cam=cam, upsampled=up, target=targets)
