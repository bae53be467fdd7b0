"""The registered variants: CoTNet, CoTNeXt, SE-CoTNetD and the ResNet baselines.

Each entrypoint builds the official constructor's argument dict (``models/cotnet.py`` and
``models/cotnet_hybrid.py`` of JDAI-CV/CoTNet) and calls one builder. ``**kwargs`` are the official
constructor arguments a user may override (``layers``, ``num_classes``, ``base_width``, ...).
Published accuracies: official README table (ImageNet-1k val, single crop).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from cotviz.models.configs import PaperResult, PretrainedCfg
from cotviz.models.demo import DEMO_ACCURACY
from cotviz.models.registry import register_model
from cotviz.models.resnet import CoTResNet, HybridRouting

__all__: list[str] = []

_GD = "https://drive.google.com/file/d/{}/view?usp=sharing"
_BD = "https://pan.baidu.com/s/{}"
_CFG_224 = PretrainedCfg()
_CFG_256 = PretrainedCfg(input_size=(3, 256, 256), pool_size=(8, 8), crop_pct=0.888)
_CFG_320 = PretrainedCfg(input_size=(3, 320, 320), pool_size=(10, 10), crop_pct=0.909)
#: The demo models' input: ``cotviz.data.ShapesDataset(size=96)`` images as they are (crop_pct 1: no resize, no
#: crop; other sizes are resized whole), ImageNet mean/std; six classes (``cotviz.data.CLASS_NAMES``). 96 px:
#: stages 3 and 4 see 6x6 and 3x3 cells; 1.7x cheaper to train than 128 px on this machine.
_CFG_DEMO = PretrainedCfg(input_size=(3, 96, 96), pool_size=(3, 3), crop_pct=1.0, interpolation="bilinear",
                          num_classes=6)


def _paper(name: str, res: int, params: str, gflops: str, top1: float, top5: float, gd: str, bd: str) -> PaperResult:
    return PaperResult(name, res, params, gflops, top1, top5, _GD.format(gd), _BD.format(bd))


def _cotnet(**kwargs: Any) -> nn.Module:
    """Official ``models/resnet.py:ResNet(block=cotnet.Bottleneck, ...)``: 7x7 stem, CoT in every block."""
    return CoTResNet(**{"spatial_layer": "cot", **kwargs})


def _hybrid(default_layers: list[int], stem_width: int, blur: bool, **kwargs: Any) -> nn.Module:
    """Official ``CoTHybridNet(block=CoTBottleneck, act_layer=swish, stem_type='deep', avg_down=True)``.

    ``block_args`` takes the official keys: ``conv_dim``, ``c4_dim``, ``c4_idx`` (routing, see
    :class:`HybridRouting`; ``c4_idx`` defaults to the even block indices of stage 3), ``radix`` (1),
    ``avd``/``avd_first`` and top-level ``aa_layer`` (``"blur"``/``"BlurPool2d"`` or None), which select
    where a block downsamples: avg-pool before CoT / strided SE conv, or BlurPool after the operator.
    The swish of the official constructor acts inside the split-attention convs; stem and bottleneck
    activations are ReLU (what the official code computes).
    """
    block_args = dict(kwargs.pop("block_args", None) or {})
    aa_layer = kwargs.pop("aa_layer", "BlurPool2d" if blur else None)
    layers = list(kwargs.pop("layers", default_layers))
    radix = block_args.pop("radix", 1)
    if radix != 1:
        raise ValueError(f"SE-CoTNetD uses radix=1 split attention; radix={radix} is not supported")
    avd = block_args.pop("avd", blur)
    avd_first = block_args.pop("avd_first", not blur)
    routing = HybridRouting(
        conv_dim=frozenset(block_args.pop("conv_dim", {64, 128})),
        c4_dim=int(block_args.pop("c4_dim", 256)),
        c4_idx=frozenset(block_args.pop("c4_idx", range(0, layers[2], 2))),
    )
    if block_args:
        raise ValueError(f"unknown block_args {sorted(block_args)}")
    if aa_layer is not None and str(aa_layer).lower() not in ("blur", "blurpool2d"):
        raise ValueError(f"aa_layer must be None or 'BlurPool2d', got {aa_layer!r}")
    use_blur = aa_layer is not None and avd and not avd_first
    args: dict[str, Any] = dict(
        layers=layers, stem_type="deep", stem_width=kwargs.pop("stem_width", stem_width), stem_pool=False, avg_down=True,
        spatial_layer=routing, act_layer="relu", spatial_act_layer="silu",
        downsample_mode="blur" if use_blur else "op",
    )
    args.update(kwargs)
    return CoTResNet(**args)


@register_model(pretrained_cfg=_CFG_224, tags=("cot",),
                paper=_paper("CoTNet-50", 224, "22.2M", "3.3", 81.3, 95.6, "1SR5ezIu7LN943zHaUh4mC0ehxBVMqtfv",
                             "1czr00SglgD8dNVK8jT1yLg"))
def cotnet50(**kwargs: Any) -> nn.Module:
    """CoTNet-50: ResNet-50 with every 3x3 conv replaced by a CoT layer."""
    return _cotnet(**{"layers": [3, 4, 6, 3], **kwargs})


@register_model(pretrained_cfg=_CFG_224, tags=("cot",),
                paper=_paper("CoTNet-101", 224, "38.3M", "6.1", 82.8, 96.2, "11jExbPEg4Eq5PApisZyE5k-1CbRYnsQb",
                             "1Olpta0AV7N4OoiC8PB4BnA"))
def cotnet101(**kwargs: Any) -> nn.Module:
    """CoTNet-101."""
    return _cotnet(**{"layers": [3, 4, 23, 3], **kwargs})


@register_model(aliases=("cotnext50",), pretrained_cfg=_CFG_224, tags=("cot", "coxt"),
                paper=_paper("CoTNeXt-50", 224, "30.1M", "4.3", 82.1, 95.9, "1j6b5D3xcZ5L_bHiQV0WfqyOieqZLVOCv",
                             "1CeV9IH_P5N9yuO-wOpdGNw"))
def cotnext50_2x48d(**kwargs: Any) -> nn.Module:
    """CoTNeXt-50 (2x48d): CoXt layers, cardinality 2, base width 48."""
    return _cotnet(**{"layers": [3, 4, 6, 3], "cardinality": 2, "base_width": 48, **kwargs})


@register_model(aliases=("cotnext101",), pretrained_cfg=_CFG_224, tags=("cot", "coxt"),
                paper=_paper("CoTNeXt-101", 224, "53.4M", "8.2", 83.2, 96.4, "1des5wgkBDUscQAs8IYOmKCKKUA46QLfJ",
                             "1FM0QRZJee7uY7iKaEiUA-w"))
def cotnext101_2x48d(**kwargs: Any) -> nn.Module:
    """CoTNeXt-101 (2x48d)."""
    return _cotnet(**{"layers": [3, 4, 23, 3], "cardinality": 2, "base_width": 48, **kwargs})


@register_model(aliases=("se_cotnetd50",), pretrained_cfg=_CFG_224, tags=("cot", "hybrid"),
                paper=_paper("SE-CoTNetD-50", 224, "23.1M", "4.1", 81.6, 95.8, "1D2b5fr3lxpBpiFcCYBKngmmSgfVHt_56",
                             "1s5Xg7AqzWuwFJUzOJDoo4Q"))
def se_cotnetd_50(**kwargs: Any) -> nn.Module:
    """SE-CoTNetD-50: deep stem, avg-down, SE blocks in stages 1-2, CoT/SE alternating in 3, CoT in 4."""
    return _hybrid([3, 4, 6, 3], 32, False, **kwargs)


@register_model(aliases=("se_cotnetd101",), pretrained_cfg=_CFG_224, tags=("cot", "hybrid"),
                paper=_paper("SE-CoTNetD-101", 224, "40.9M", "8.5", 83.2, 96.5, "1PWIltQYpYZiDrpfZORRQzGzQeXVd2b2f",
                             "1WGFzuwio5lWJKiOOJTnjdg"))
def se_cotnetd_101(**kwargs: Any) -> nn.Module:
    """SE-CoTNetD-101."""
    return _hybrid([3, 4, 23, 3], 64, False, **kwargs)


@register_model(aliases=("se_cotnetd152",), pretrained_cfg=_CFG_256, tags=("cot", "hybrid"),
                paper=_paper("SE-CoTNetD-152", 224, "55.8M", "17.0", 84.0, 97.0, "1MkMx0a8an3ikt6LZwClIOyabBnMfR91v",
                             "14mNVsSf-6WI3mxLN2WinWw"))
def se_cotnetd_152(**kwargs: Any) -> nn.Module:
    """SE-CoTNetD-152: stem width 64, BlurPool after the operator in strided blocks."""
    return _hybrid([3, 8, 36, 3], 64, True, **kwargs)


@register_model(aliases=("se_cotnetd152_l",), pretrained_cfg=_CFG_320, tags=("cot", "hybrid"),
                paper=_paper("SE-CoTNetD-152", 320, "55.8M", "26.5", 84.6, 97.1, "1E43T2jS37gR07p_FVWnjJNkMWeYMXgX9",
                             "1kO5of8IPgL4HOudLeykS6w"))
def se_cotnetd_152_L(**kwargs: Any) -> nn.Module:  # noqa: N802  (official name)
    """SE-CoTNetD-152 trained and evaluated at 320 px (same architecture)."""
    return _hybrid([3, 8, 36, 3], 64, True, **kwargs)


@register_model(aliases=("se_cotnetd200",), pretrained_cfg=_CFG_256, tags=("cot", "hybrid"))
def se_cotnetd_200(**kwargs: Any) -> nn.Module:
    """SE-CoTNetD-200 (no released checkpoint)."""
    return _hybrid([3, 24, 36, 3], 64, True, **kwargs)


@register_model(aliases=("se_cotnetd270",), pretrained_cfg=_CFG_256, tags=("cot", "hybrid"))
def se_cotnetd_270(**kwargs: Any) -> nn.Module:
    """SE-CoTNetD-270 (no released checkpoint)."""
    return _hybrid([4, 29, 53, 4], 64, True, **kwargs)


@register_model(pretrained_cfg=_CFG_224, tags=("baseline",))
def resnet50(**kwargs: Any) -> nn.Module:
    """ResNet-50 baseline on the same skeleton (plain 3x3 conv + BN + ReLU in ``conv2``)."""
    return CoTResNet(**{"layers": [3, 4, 6, 3], "spatial_layer": "conv", **kwargs})


@register_model(pretrained_cfg=_CFG_224, tags=("baseline",))
def resnet101(**kwargs: Any) -> nn.Module:
    """ResNet-101 baseline on the same skeleton."""
    return CoTResNet(**{"layers": [3, 4, 23, 3], "spatial_layer": "conv", **kwargs})


def _demo(spatial_layer: str, **kwargs: Any) -> nn.Module:
    """The demo skeleton (trained by ``python -m cotviz.data.train``): one bottleneck per stage, planes
    16/32/64/128 (outputs 64..512), deep stem of width 16, six classes; ``spatial_layer`` in every block."""
    return CoTResNet(**{"layers": [1, 1, 1, 1], "stage_planes": (16, 32, 64, 128), "stem_type": "deep",
                        "stem_width": 16, "num_classes": 6, "spatial_layer": spatial_layer, **kwargs})


@register_model(pretrained_cfg=_CFG_DEMO, tags=("cot", "demo"),
                description=f"small CoTNet trained on cotviz.data shapes: weights='demo', {DEMO_ACCURACY['cotnet_demo']}% "
                            "held-out accuracy")
def cotnet_demo(**kwargs: Any) -> nn.Module:
    """Small CoTNet trained on the synthetic shapes (``weights="demo"`` loads the shipped checkpoint)."""
    return _demo("cot", **kwargs)


@register_model(pretrained_cfg=_CFG_DEMO, tags=("baseline", "demo"),
                description=f"conv counterpart of cotnet_demo, same data and recipe: weights='demo', "
                            f"{DEMO_ACCURACY['resnet_demo']}% held-out")
def resnet_demo(**kwargs: Any) -> nn.Module:
    """The demo skeleton with a plain 3x3 conv in every block (the conv counterpart of ``cotnet_demo``)."""
    return _demo("conv", **kwargs)


@register_model(pretrained_cfg=_CFG_DEMO, tags=("sa", "demo"),
                description=f"local self-attention counterpart of cotnet_demo, same recipe: weights='demo', "
                            f"{DEMO_ACCURACY['sa_demo']}% held-out")
def sa_demo(**kwargs: Any) -> nn.Module:
    """The demo skeleton with local multi-head self-attention in every block (``spatial_layer="sa"``)."""
    return _demo("sa", **kwargs)
