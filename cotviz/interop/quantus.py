"""Quantus glue: cotviz's Grad-CAM as an ``explain_func`` (``quantus.MPRT``, ``quantus.RandomLogit``, ...).

::

    import quantus
    mprt = quantus.MPRT(skip_layers=True, return_last_correlation=True)
    scores = mprt(model=model, x_batch=x, y_batch=y, explain_func=cotviz.interop.quantus_grad_cam,
                  explain_func_kwargs={"stage": 4})

By default the map is the absolute value of the signed Grad-CAM (``relu=False, absolute=True``): Quantus
refuses an explanation that is all zero (the ReLU'd CAM of a randomised network often is: ``AssertionError:
... all equal to zero``) and one that is all negative (the signed CAM of a randomised network can be:
``Attributions should not all be less than zero``); the magnitude is neither, and is what Adebayo et al.'s
sanity checks compare as well. ``absolute=False`` hands Quantus the signed map.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from cotviz.analysis.attribution import grad_cam
from cotviz.errors import InvalidArgumentError

__all__ = ["quantus_grad_cam"]


def quantus_grad_cam(model: nn.Module, inputs: Any, targets: Any, *, stage: int = 4, relu: bool = False,
                     absolute: bool = True, device: str | torch.device | None = None, **kwargs: Any) -> np.ndarray:
    """Quantus ``explain_func``: Grad-CAM of ``targets`` at ``layer{stage}``, upsampled to the input.

    Args:
        model: a cotviz network (Quantus hands its randomised copies too).
        inputs: (B, 3, H, W) array or tensor; targets: (B,) class indices.
        stage: 1..4. relu: the ReLU of Grad-CAM (default off: the signed map).
        absolute: the magnitude of the map (default; see the module docstring).
        device: where to run (default: the model's device). Other keyword arguments are refused.

    Returns:
        float32 array (B, 1, H, W).
    """
    if kwargs:
        raise InvalidArgumentError(f"quantus_grad_cam takes stage, relu, absolute and device; got {sorted(kwargs)}")
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    x = torch.as_tensor(np.asarray(inputs) if not isinstance(inputs, torch.Tensor) else inputs,
                        dtype=torch.float32).to(dev)
    y = [int(t) for t in np.asarray(targets).reshape(-1)]
    result = grad_cam(model.eval(), x, stage, y, relu=relu)
    cam = result.upsampled.abs() if absolute else result.upsampled  # (B, H, W)
    return cam[:, None].cpu().numpy().astype(np.float32)
