"""timm takes cotviz networks as its own: data config and transform, FeatureInfo, feature backbones, registry."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from torch import Tensor, nn

import cotviz
from cotviz.errors import InvalidArgumentError
from cotviz.interop import register_timm, timm_name
from cotviz.io.preprocess import PreprocessConfig, preprocess

from .conftest import need, tiny


@pytest.fixture(scope="module")
def timm_registered() -> list[str]:
    need("timm")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # timm warns "Overwriting ... in registry" on a name clash
        names = register_timm()
        assert register_timm() == names  # idempotent
    return names


def test_data_config_and_transform_are_cotviz_preprocessing() -> None:
    timm = need("timm")
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (200, 301, 3), dtype=np.uint8))
    for name in ("cotnet50", "se_cotnetd_152", "cotnet_demo"):
        with torch.device("meta"):  # the cfg is all timm reads
            model = cotviz.create_model(name)
        cfg = model.pretrained_cfg
        data_cfg = timm.data.resolve_model_data_config(model)
        assert data_cfg == timm.data.resolve_data_config(model=model) == timm.data.resolve_data_config(
            pretrained_cfg=cfg.to_dict())
        transform = timm.data.create_transform(**data_cfg)
        ours = preprocess(image, PreprocessConfig.from_pretrained_cfg(cfg)).tensor
        assert torch.equal(transform(image), ours), name


def test_feature_info_and_feature_backbone(timm_registered: list[str], images: Tensor) -> None:
    timm = need("timm")
    model = tiny()
    info = timm.models.FeatureInfo(model.feature_info, out_indices=(1, 2, 3, 4))
    assert info.channels() == [256, 512, 1024, 2048] and info.reduction() == [4, 8, 16, 32]
    assert info.module_name() == ["layer1", "layer2", "layer3", "layer4"]
    backbone = timm.create_model("cotnet50", features_only=True, out_indices=(2, 4), layers=[1, 1, 1, 1],
                                 base_width=16, zero_init_last_bn=False)
    assert backbone.feature_info.channels() == [512, 2048]
    with torch.no_grad():
        maps = backbone(images)
        _, expected = model.forward_intermediates(images, indices=(2, 4))
    assert [m.shape for m in maps] == [e.shape for e in expected]
    assert isinstance(backbone.model.layer4, nn.Sequential) and isinstance(backbone.model.fc, nn.Identity)


def test_registry_keeps_timms_resnets(timm_registered: list[str]) -> None:
    timm = need("timm")
    assert "cotnet50" in timm_registered and "cotviz_resnet50" in timm_registered
    assert "resnet50" not in timm_registered and timm_name("resnet50") == "cotviz_resnet50"
    with torch.device("meta"):
        assert type(timm.create_model("resnet50")).__module__ == "timm.models.resnet"
    ours = timm.create_model("cotviz_resnet50", layers=[1, 1, 1, 1], base_width=16, num_classes=7)
    assert isinstance(ours, cotviz.models.CoTResNet) and ours.describe()["layer1"] == ["conv"]
    model = timm.create_model("cotnet50", layers=[1, 1, 1, 1], base_width=16, num_classes=10, drop_rate=0.1)
    same = cotviz.create_model("cotnet50", layers=[1, 1, 1, 1], base_width=16, num_classes=10)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), same.state_dict().values(), strict=True))
    cfg = timm.models.get_pretrained_cfg("se_cotnetd_152")
    assert cfg.input_size == (3, 256, 256) and cfg.crop_pct == 0.888 and cfg.paper_ids == "arXiv:2107.12292"
    assert set(timm.list_models("cot*")) >= {"cotnet50", "cotnext50_2x48d"}


def test_pretrained_and_unsupported_arguments(timm_registered: list[str], images: Tensor) -> None:
    timm = need("timm")
    demo = timm.create_model("cotnet_demo", pretrained=True)
    assert torch.equal(demo.state_dict()["fc.weight"], cotviz.create_model("cotnet_demo", weights="demo").fc.weight)
    with pytest.raises(InvalidArgumentError, match="pass weights="):
        timm.create_model("cotnet50", pretrained=True)
    with pytest.raises(InvalidArgumentError, match="output_stride must be 32"):
        timm.create_model("cotnet50", output_stride=16)
    with torch.device("meta"):
        overlay = timm.create_model("cotnet50", pretrained_cfg_overlay={"crop_pct": 1.0})
    assert timm.data.resolve_model_data_config(overlay)["crop_pct"] == 1.0
