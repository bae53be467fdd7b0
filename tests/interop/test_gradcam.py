"""pytorch-grad-cam on cotviz networks: its Grad-CAM equals cotviz's, and the 6-D attention tap through the
documented reshape_transform equals Grad-CAM computed by hand on the folded tap."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import Tensor, nn

import cotviz
from cotviz.analysis.attribution import ZeroResidualWarning, grad_cam
from cotviz.interop import attention_to_channels, cam_target

from .conftest import need, tiny

TARGETS = [3, 7]


def _grad_cam_parts(cam: object, x: Tensor, layer: nn.Module) -> np.ndarray:
    """grad-cam's own un-normalised map at the layer's resolution, from the tensors it captured: (B, h, w)."""
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    store = cam.activations_and_grads  # type: ignore[attr-defined]
    act, grad = store.activations[0].numpy(), store.gradients[0].numpy()
    targets = [ClassifierOutputTarget(t) for t in TARGETS]
    return np.maximum(cam.get_cam_image(x, layer, targets, act, grad), 0)  # type: ignore[attr-defined]


def _run(model: nn.Module, layer: nn.Module, x: Tensor, reshape: object = None) -> tuple[object, np.ndarray]:
    gradcam = need("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    cam = gradcam.GradCAM(model=model, target_layers=[layer], reshape_transform=reshape)
    out = cam(input_tensor=x, targets=[ClassifierOutputTarget(t) for t in TARGETS])  # (B, H, W) in [0, 1]
    return cam, out


def _scaled(cam: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """grad-cam's normalisation and resize (its scale_cam_image, twice as its forward does) of a (B, h, w) map."""
    from pytorch_grad_cam.utils.image import scale_cam_image

    return scale_cam_image(scale_cam_image(cam, size))


def test_grad_cam_equals_cotviz_grad_cam(cot: nn.Module, images: Tensor) -> None:
    cam, out = _run(cot, cot.layer4, images)
    theirs = _grad_cam_parts(cam, images, cot.layer4)
    ours = grad_cam(cot, images, 4, TARGETS).cam.numpy()
    assert ours.max() > 0
    np.testing.assert_allclose(theirs, ours, rtol=1e-6, atol=1e-6 * float(ours.max()))
    np.testing.assert_allclose(out, _scaled(ours, (64, 64)), rtol=0, atol=1e-5)


def test_attention_tap_through_reshape_transform(images: Tensor) -> None:
    model = tiny("cotnext50_2x48d")  # CoXt: the tap's batch holds two groups per sample
    layer, reshape = cam_target(model, stage=3, tap="attention")
    cam, out = _run(model, layer, images, reshape)
    theirs = _grad_cam_parts(cam, images, layer)
    stored: list[Tensor] = []
    handle = layer.register_forward_hook(lambda m, i, o: stored.append(o))
    try:
        logits = model(images)
    finally:
        handle.remove()
    (grad,) = torch.autograd.grad(logits[torch.arange(2), TARGETS].sum(), stored[0])
    a, g = attention_to_channels(stored[0].detach(), 2), attention_to_channels(grad, 2)  # (B, 2*M*KK, h, w)
    ours = (g.mean((2, 3), keepdim=True) * a).sum(1).clamp(min=0).numpy()  # (B, h, w)
    assert theirs.shape == ours.shape == (2, 4, 4) and ours.max() > 0
    np.testing.assert_allclose(theirs, ours, rtol=1e-5, atol=1e-6 * float(ours.max()))
    np.testing.assert_allclose(out, _scaled(ours, (64, 64)), rtol=0, atol=1e-5)


def test_a_tap_of_a_zero_residual_branch_warns_and_is_zero(images: Tensor) -> None:
    official = cotviz.create_model("cotnet50", layers=[1, 1, 1, 1], base_width=16, num_classes=10)
    with pytest.warns(ZeroResidualWarning, match="exactly zero"):
        layer, reshape = cam_target(official, stage=2, tap="attention")
    _, out = _run(official, layer, images, reshape)
    assert not out.any()  # what the warning said
