"""torchvision: fx feature extraction on the taps (bit for bit cotviz.capture), the mode kept, detection."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

import cotviz
from cotviz.interop import backbone_with_fpn, feature_extractor

from .conftest import need, tiny

TAPS = ("static_context", "attention", "dynamic_context", "fusion_weights", "output")


@pytest.mark.parametrize("name", ["cotnet50", "cotnext50_2x48d"])
def test_feature_extractor_taps_match_capture(name: str, images: Tensor) -> None:
    fx_api = need("torchvision.models.feature_extraction")
    model = tiny(name)
    train_nodes, eval_nodes = fx_api.get_graph_node_names(model)  # no tracer_kwargs
    nodes = {f"layer{s}.0.conv2.{t}": f"{s}.{t}" for s in (2, 3) for t in TAPS}
    assert set(nodes) <= set(eval_nodes) and set(nodes) <= set(train_nodes)
    extractor = fx_api.create_feature_extractor(model, return_nodes={**nodes, "layer4": "layer4"})
    assert not model.training
    with torch.no_grad():
        out = extractor(images)
        with cotviz.capture(model, stages=[2, 3]) as cap:
            logits = model(images)
    for s in (2, 3):
        rec = cap[f"stage{s}.block1"]
        for t in TAPS:
            assert torch.equal(out[f"{s}.{t}"], getattr(rec, t)), (s, t)
    assert torch.equal(out["layer4"], model.forward_features(images)) and logits.shape == (2, 10)


def test_a_failed_extraction_keeps_the_mode() -> None:
    need("torchvision.models.feature_extraction")
    sa = cotviz.create_model("sa_demo").eval()  # its relation's shape checks used to stop the trace
    extractor = feature_extractor(sa, return_nodes=["layer3.0.conv2.attention"])
    assert not sa.training and not extractor.training
    model = tiny().train()
    model.layer2.eval()  # a mixed state comes back as it was
    with pytest.raises(ValueError):
        feature_extractor(model, return_nodes=["layer9.no_such_node"])
    assert model.training and not model.layer2.training and model.layer1.training


def test_backbone_with_fpn_from_feature_info() -> None:
    need("torchvision.models.detection")
    model = tiny("cotnet_demo", base_width=64)  # stages of 64..512 channels
    backbone = backbone_with_fpn(model, returned_layers=(2, 3, 4), out_channels=32, trainable_layers=3)
    assert backbone.out_channels == 32
    assert not model.conv1[0].weight.requires_grad and not model.layer1[0].conv1.weight.requires_grad
    assert model.layer2[0].conv1.weight.requires_grad
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        maps = backbone(x)
        _, stages = model.forward_intermediates(x, indices=(2, 3, 4))
    assert list(maps) == ["0", "1", "2", "pool"]
    assert [tuple(m.shape) for m in maps.values()] == [(1, 32, 8, 8), (1, 32, 4, 4), (1, 32, 2, 2), (1, 32, 1, 1)]
    assert torch.equal(backbone.body(x)["2"], stages[2])  # the network's own layer4, shared
    with pytest.raises(cotviz.CotvizError, match="returned_layers"):
        backbone_with_fpn(model, returned_layers=(3, 2))


def test_torchvisions_own_resnet_fpn_extractor() -> None:
    utils = need("torchvision.models.detection.backbone_utils")
    backbone = utils._resnet_fpn_extractor(tiny(), trainable_layers=5)  # reads inplanes
    with torch.no_grad():
        maps = backbone(torch.randn(1, 3, 64, 64))
    assert [m.shape[1] for m in maps.values()] == [256] * 5
    with pytest.raises(cotviz.CotvizError, match="not a cotviz network"):
        backbone_with_fpn(nn.Conv2d(3, 3, 1))


def test_the_detection_example_runs(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """FasterRCNN over backbone_with_fpn: one training step (losses) and one inference on a 96 px image."""
    need("torchvision.models.detection")
    import runpy
    from pathlib import Path

    from torch._dynamo import config as dynamo_config

    example = Path(__file__).resolve().parents[2] / "examples" / "detection_fpn.py"
    monkeypatch.setattr("sys.argv", [str(example)])
    # without its compiled operators torchvision's roi_align runs its Python version under torch.compile (30 s of
    # compilation here): eager is the same computation
    with dynamo_config.patch(disable=True):
        runpy.run_path(str(example), run_name="__main__")
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "FPN maps: 0 (64, 12, 12), 1 (64, 6, 6), 2 (64, 3, 3), pool (64, 2, 2)"
    assert lines[1].startswith("one training step: loss_classifier ") and "loss_rpn_box_reg" in lines[1]
    assert lines[2].startswith("shape box [") and "detections, top scores" in lines[2]
