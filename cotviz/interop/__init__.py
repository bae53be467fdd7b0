"""Glue to the tools researchers already use: timm, torchvision, pytorch-grad-cam, captum, Quantus.

Every tool is optional: cotviz imports and works without them; a function here imports its tool when it
runs and says in one line (:class:`MissingDependencyError`) when it is missing or does not load. Install
them, keeping a CPU torch, with ``pip install -c constraints-cpu.txt -e '.[interop]'`` (README).

- timm (:mod:`cotviz.interop.timm`): :func:`register_timm` puts the variants in timm's registry. The networks
  themselves follow timm's interface (``pretrained_cfg``, ``feature_info``, ``forward_intermediates``, ...).
- torchvision (:mod:`cotviz.interop.torchvision`): :func:`backbone_with_fpn` for detection / segmentation,
  :func:`feature_extractor` (``create_feature_extractor`` with the mode kept).
- pytorch-grad-cam (:mod:`cotviz.interop.gradcam`): :func:`cam_target`, :func:`attention_reshape_transform`.
- captum works as it is; cotviz's Grad-CAM is :func:`cotviz.analysis.attribution.grad_cam` (``relu=False``
  for the signed map).
- Quantus (:mod:`cotviz.interop.quantus`): :func:`quantus_grad_cam` as ``explain_func``.
"""

from __future__ import annotations

from cotviz.interop._deps import MissingDependencyError
from cotviz.interop.gradcam import attention_reshape_transform, attention_to_channels, cam_target
from cotviz.interop.quantus import quantus_grad_cam
from cotviz.interop.timm import create_timm_model, register_timm, timm_name
from cotviz.interop.torchvision import backbone_with_fpn, feature_extractor

__all__ = [
    "MissingDependencyError", "attention_reshape_transform", "attention_to_channels", "backbone_with_fpn",
    "cam_target", "create_timm_model", "feature_extractor", "quantus_grad_cam", "register_timm", "timm_name",
]
