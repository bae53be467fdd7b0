"""torchvision glue: a cotviz network as a detection / segmentation backbone, and feature extraction by fx.

::

    from torchvision.models.detection import FasterRCNN
    model = cotviz.create_model("cotnet50", weights="cotnet50.pth.tar")
    detector = FasterRCNN(cotviz.backbone_with_fpn(model), num_classes=91)

``torchvision.models.feature_extraction.create_feature_extractor`` / ``get_graph_node_names`` take a cotviz
network as it is (no ``tracer_kwargs``): every tap is a graph node named by its module path
(``layer3.0.conv2.attention``; its values are those :func:`cotviz.capture` records, bit for bit), the
aggregation one node per CoT layer. torchvision's own failure path leaves a model in train mode
(it switches modes to trace both without restoring them on an error); :func:`feature_extractor` is the same
call with the mode of every module restored whatever happens. torchvision's ``_resnet_fpn_extractor`` works
too (it reads ``inplanes``), for networks whose stages double their channels as the official ones do.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

from cotviz.errors import InvalidArgumentError
from cotviz.interop._deps import require

__all__ = ["backbone_with_fpn", "feature_extractor"]


def _stage_channels(model: nn.Module) -> dict[int, int]:
    """``{stage: channels}`` from a cotviz network's ``feature_info`` (stem = 0)."""
    info = getattr(model, "feature_info", None)
    if not isinstance(info, list) or not all(hasattr(model, f"layer{i}") for i in range(1, 5)):
        raise InvalidArgumentError(f"{type(model).__name__} is not a cotviz network (no feature_info and "
                                   "layer1..layer4); build it with cotviz.create_model")
    return {i: int(fi["num_chs"]) for i, fi in enumerate(info)}


def backbone_with_fpn(model: nn.Module, returned_layers: Sequence[int] = (1, 2, 3, 4), out_channels: int = 256, *,
                      trainable_layers: int | None = None, extra_blocks: nn.Module | None = None,
                      norm_layer: Callable[..., nn.Module] | None = None) -> nn.Module:
    """torchvision's ``BackboneWithFPN`` over a cotviz network, for ``FasterRCNN``, ``MaskRCNN``, ``RetinaNet``...

    Args:
        model: a cotviz network (``create_model``); its modules are shared, not copied (the head
            ``global_pool`` / ``fc`` is left out of the backbone).
        returned_layers: the stages 1..4 whose outputs feed the FPN (torchvision's default: all four).
        out_channels: FPN channels (the backbone's ``out_channels``, which the detectors read).
        trainable_layers: as torchvision's ``resnet_fpn_backbone``: 0..5 of ``layer4, layer3, layer2, layer1,
            conv1`` (+ ``bn1`` at 5) keep ``requires_grad``, the rest is frozen; None leaves every parameter
            as it is.
        extra_blocks: the FPN's extra levels (default ``LastLevelMaxPool()``, one more map at stride 64).
        norm_layer: FPN normalisation (torchvision's argument; default none).

    Returns:
        ``BackboneWithFPN``: (B, 3, H, W) -> ``OrderedDict`` ``"0", "1", ...`` of (B, out_channels, H/s, W/s),
        s = 4, 8, 16, 32 (for ``(1, 2, 3, 4)``) then 64 (``"pool"``). Its ``body`` holds the network's modules:
        to train a detector on small batches with the BatchNorm statistics kept (torchvision's frozen BN), call
        ``backbone.body.eval()`` after ``detector.train()``.
    """
    channels = _stage_channels(model)
    layers = [int(i) for i in returned_layers]
    if not layers or sorted(set(layers)) != layers or not all(1 <= i <= 4 for i in layers):
        raise InvalidArgumentError(f"returned_layers must be increasing stages from 1 to 4, got {list(returned_layers)}")
    if trainable_layers is not None:
        if isinstance(trainable_layers, bool) or not 0 <= trainable_layers <= 5:
            raise InvalidArgumentError(f"trainable_layers must be 0 to 5 or None, got {trainable_layers!r}")
        train = ["layer4", "layer3", "layer2", "layer1", "conv1"][:trainable_layers] + (
            ["bn1"] if trainable_layers == 5 else [])
        for name, p in model.named_parameters():
            if not any(name == t or name.startswith(t + ".") for t in train):
                p.requires_grad_(False)
    backbone_utils = require("torchvision.models.detection.backbone_utils", "torchvision", "backbone_with_fpn")
    ops_fpn = require("torchvision.ops.feature_pyramid_network", "torchvision", "backbone_with_fpn")
    return_layers = {f"layer{i}": str(k) for k, i in enumerate(layers)}
    fpn: nn.Module = backbone_utils.BackboneWithFPN(
        model, return_layers=return_layers, in_channels_list=[channels[i] for i in layers], out_channels=out_channels,
        extra_blocks=ops_fpn.LastLevelMaxPool() if extra_blocks is None else extra_blocks, norm_layer=norm_layer)
    return fpn


def feature_extractor(model: nn.Module, return_nodes: Sequence[str] | dict[str, str] | None = None,
                      **kwargs: Any) -> nn.Module:
    """torchvision's ``create_feature_extractor(model, return_nodes, **kwargs)`` with every module's
    train/eval mode restored afterwards, also when it raises (torchvision traces in both modes and leaves the
    model in train mode on an error). Node names: ``get_graph_node_names(model)`` (taps:
    ``layer{S}.{i}.conv2.{tap}``; a module path such as ``"layer3"`` means its last node)."""
    fe = require("torchvision.models.feature_extraction", "torchvision", "feature_extractor")
    modes = [(m, m.training) for m in model.modules()]
    try:
        extractor: nn.Module = fe.create_feature_extractor(model, return_nodes=return_nodes, **kwargs)
    finally:
        for m, mode in modes:
            m.training = mode
    return extractor
