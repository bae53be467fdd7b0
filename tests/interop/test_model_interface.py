"""cotviz's own side of the interop: timm's model interface on CoTResNet, fx-safe taps, signed Grad-CAM,
the zero-residual warning, the attention folding. No optional tool needed."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import Tensor, fx, nn

import cotviz
from cotviz.analysis.attribution import ZeroResidualWarning, grad_cam
from cotviz.errors import InvalidArgumentError
from cotviz.interop import MissingDependencyError, attention_to_channels, cam_target
from cotviz.interop._deps import require
from cotviz.layers.tap import Tap
from cotviz.models.configs import PretrainedCfg

from .conftest import tiny


def test_forward_intermediates_follows_timm(cot: nn.Module, images: Tensor) -> None:
    with torch.no_grad():
        final, maps = cot.forward_intermediates(images)
        only = cot.forward_intermediates(images, indices=[-1, 1], intermediates_only=True)
        early, two = cot.forward_intermediates(images, indices=[0, 2], stop_early=True)
        features = cot.forward_features(images)
    assert torch.equal(final, features) and len(maps) == 5
    assert [tuple(m.shape[1:]) for m in maps] == [(fi.num_chs, 64 // fi.reduction, 64 // fi.reduction)
                                                  for fi in cot.feature_info]
    assert len(only) == 2 and torch.equal(only[0], maps[1]) and torch.equal(only[1], maps[4])  # forward order
    assert torch.equal(early, maps[2]) and torch.equal(two[1], maps[2])  # stopped after layer2
    for bad in ([5], 0, 6, []):
        with pytest.raises(InvalidArgumentError, match="indices"):
            cot.forward_intermediates(images, indices=bad)
    with pytest.raises(InvalidArgumentError, match="NCHW"):
        cot.forward_intermediates(images, output_fmt="NHWC")


def test_grad_checkpointing_gives_the_same_gradients(images: Tensor) -> None:
    model = tiny(drop_path_rate=0.1).train()  # stochastic depth too: the recomputation replays the RNG
    twin = copy.deepcopy(model)
    twin.set_grad_checkpointing()
    grads = []
    for net in (model, twin):
        torch.manual_seed(3)
        net(images).square().sum().backward()
        grads.append({n: p.grad for n, p in net.named_parameters()})
    assert twin.grad_checkpointing and not model.grad_checkpointing
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, rtol=1e-5, atol=1e-6, msg=name)


def test_checkpointing_really_recomputes(cot: nn.Module, images: Tensor) -> None:
    calls = []
    first = cot.layer2[0].conv1  # the recomputation stops once it has what the backward needs: watch the start
    handle = first.register_forward_hook(lambda *_: calls.append(1))
    try:
        cot.set_grad_checkpointing(True)
        cot(images.requires_grad_(True)).sum().backward()
        assert len(calls) == 2  # forward, then again in the backward pass
        calls.clear()
        with torch.no_grad():
            cot(images)
        assert len(calls) == 1  # no gradients: no checkpoint
    finally:
        handle.remove()


def test_classifier_reset_and_pruning(cot: nn.Module, images: Tensor) -> None:
    assert cot.get_classifier() is cot.fc
    cot.to(torch.float64)
    cot.reset_classifier(3)
    assert cot.fc.weight.dtype == torch.float64 and cot.num_classes == 3
    assert cot(images.double()).shape == (2, 3)
    cot.reset_classifier(0, "max")
    pooled = cot(images.double())
    assert pooled.shape == (2, cot.num_features)
    torch.testing.assert_close(pooled, cot.forward_features(images.double()).amax((2, 3)))
    with pytest.raises(InvalidArgumentError, match="num_classes=0"):
        cot.reset_classifier(5, "")
    kept = cot.prune_intermediate_layers([1, 2])
    assert kept == [1, 2] and isinstance(cot.layer3, nn.Identity) and isinstance(cot.fc, nn.Identity)
    assert cot.forward_head(torch.ones(1, 4, 2, 2), pre_logits=True).shape == (1, 4, 2, 2)  # no pooling now
    assert len(cot.forward_intermediates(images.double(), indices=[1, 2], intermediates_only=True)) == 2


def test_pretrained_cfg_reads_as_timm_reads_it(cot: nn.Module) -> None:
    cfg = cot.pretrained_cfg
    assert isinstance(cfg, PretrainedCfg) and cot.default_cfg is cfg
    assert cfg.get("crop_pct") == 0.875 and cfg["input_size"] == (3, 224, 224) and cfg.get("test_input_size") is None
    assert dict(cfg) == cfg.to_dict() and "mean" in cfg and len(cfg) == len(cfg.to_dict())
    assert cfg["num_classes"] == 10  # the classifier the model was built with
    with pytest.raises(KeyError):
        cfg["url"]
    fi = cot.feature_info[3]
    assert fi == {"num_chs": 1024, "reduction": 16, "module": "layer3"} and fi.num_chs == 1024
    assert cot.inplanes == cot.num_features == 2048  # torchvision's name


def test_taps_are_fx_nodes_and_sa_traces(images: Tensor) -> None:
    for name in ("cotnet50", "sa_demo"):
        model = tiny(name) if name != "sa_demo" else cotviz.create_model(name).eval()
        graph = fx.symbolic_trace(model)
        taps = {n.target for n in graph.graph.nodes if n.op == "call_module"
                and isinstance(graph.get_submodule(str(n.target)), Tap)}
        assert "layer3.0.conv2.attention" in taps and "layer1.0.conv2.output" in taps, name
        with torch.no_grad():
            assert torch.equal(graph(images), model(images)), name
        assert not model.training


def test_signed_grad_cam_and_zero_residual_warning(images: Tensor) -> None:
    live = tiny()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        signed = grad_cam(live, images, 3, [1, 2], relu=False)
        relu = grad_cam(live, images, 3, [1, 2])
    torch.testing.assert_close(relu.cam, signed.cam.clamp(min=0))
    official = cotviz.create_model("cotnet50", layers=[1, 1, 1, 1], base_width=16, num_classes=10)
    with pytest.warns(ZeroResidualWarning, match="explains the shortcuts only"):
        grad_cam(official, images, 3, 0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        grad_cam(official, images, 4, 0)  # layer4's output: nothing after it is cut off
    with pytest.warns(ZeroResidualWarning, match="layer3.0 has its residual branch off"):
        layer, reshape = cam_target(official, stage=3, tap="attention")
    assert layer is official.layer3[0].conv2.attention and reshape is not None


def test_attention_folds_into_channels() -> None:
    attn = torch.arange(2 * 2 * 1 * 3 * 4 * 5 * 6, dtype=torch.float32).reshape(4, 1, 3, 4, 5, 6)  # CoXt: B=2, g=2
    folded = attention_to_channels(attn, groups=2)
    assert folded.shape == (2, 2 * 3 * 4, 5, 6)
    # channel (g*M + m)*KK + k of sample i is map m, tap k of group g (batch row 2i + g)
    assert torch.equal(folded[1, (1 * 3 + 2) * 4 + 3], attn[3, 0, 2, 3])
    with pytest.raises(InvalidArgumentError, match="groups=3"):
        attention_to_channels(attn, groups=3)


def test_a_missing_tool_is_one_line() -> None:
    assert cotviz.register_timm is cotviz.interop.register_timm  # the top-level names
    assert cotviz.backbone_with_fpn is cotviz.interop.backbone_with_fpn
    with pytest.raises(MissingDependencyError, match="needs no-such-tool, which is not installed: pip install"):
        require("cotviz_no_such_tool", "no-such-tool", "this call")
