"""prepare_for_inference: BatchNorm folding leaves outputs and every capture tap unchanged, on every variant.

Tiny networks with live residual branches (``zero_init_last_bn=False`` and :func:`randomize_norms`: non-trivial
BN statistics and affine parameters), so a fold that broke a branch could not hide behind a zero-init BN.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from _helpers import TINY_GOLDEN_NETS, randomize_norms
from torch import Tensor, nn

import cotviz
from cotviz import create_model, prepare_for_inference
from cotviz.capture import capture
from cotviz.errors import InvalidArgumentError
from cotviz.layers import TAP_NAMES, CotLayer, CoXtLayer
from cotviz.models.inference import ChannelShift
from cotviz.profile.counting import count_model

TINY: dict[str, Any] = dict(layers=[1, 1, 1, 1], base_width=16, num_classes=10, zero_init_last_bn=False)
SE_TINY = TINY_GOLDEN_NETS["tiny_se_cotnetd_golden.pt"][1]

#: (id, registry name, overrides, taps capture can record)
NETS: tuple[tuple[str, str, dict[str, Any], tuple[str, ...]], ...] = (
    ("cotnet", "cotnet50", {}, TAP_NAMES),
    ("cotnext", "cotnext50_2x48d", {}, TAP_NAMES),
    ("se_cotnetd", "se_cotnetd_50", {k: v for k, v in SE_TINY.items() if k != "num_classes"}, TAP_NAMES),
    ("se_cotnetd_blur", "se_cotnetd_152", {}, TAP_NAMES),
    ("resnet", "resnet50", {}, ("output",)),
    ("sa", "cotnet50", dict(spatial_layer="sa"), ("output",)),
    ("static", "cotnet50", dict(spatial_layer="static"), ("static_context", "output")),
    ("dynamic", "cotnet50", dict(spatial_layer="dynamic"), ("static_context", "attention", "dynamic_context", "output")),
    ("concat", "cotnet50", dict(spatial_layer="concat"), ("static_context", "attention", "dynamic_context", "output")),
)


def _live(name: str, seed: int = 1, **overrides: Any) -> nn.Module:
    return randomize_norms(create_model(name, **{**TINY, **overrides}), seed=seed).eval()


def _max_rel(a: Tensor, b: Tensor) -> float:
    """max |a - b| relative to max |a| (at least 1e-12)."""
    return float((a - b).abs().max() / a.abs().max().clamp_min(1e-12))


def _run(model: nn.Module, x: Tensor, taps: tuple[str, ...]) -> tuple[Tensor, dict[str, dict[str, Tensor]]]:
    with torch.no_grad(), capture(model, taps=list(taps)) as cap:
        y = model(x)
    return y, {block: {t: getattr(rec, t) for t in taps} for block, rec in cap.items()}


@pytest.mark.parametrize(("name", "overrides", "taps"), [n[1:] for n in NETS], ids=[n[0] for n in NETS])
def test_fold_keeps_outputs_and_taps(name: str, overrides: dict[str, Any], taps: tuple[str, ...]) -> None:
    model = _live(name, **overrides)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    y0, rec0 = _run(model, x, taps)
    assert prepare_for_inference(model) is model  # in place
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    y1, rec1 = _run(model, x, taps)
    assert _max_rel(y0, y1) <= 1e-5
    assert rec0.keys() == rec1.keys() and rec0
    seen = set()
    for block, values in rec0.items():
        for tap, value in values.items():
            assert (value is None) == (rec1[block][tap] is None), (block, tap)  # SE blocks have no CoT taps
            if value is not None:
                assert _max_rel(value, rec1[block][tap]) <= 1e-5, (block, tap)
                seen.add(tap)
    assert seen == set(taps)  # every tap was compared somewhere


@pytest.mark.parametrize("layer_cls", [CotLayer, CoXtLayer])
def test_fold_bare_layer_channels_last(layer_cls: type[CotLayer]) -> None:
    """A lone CoT / CoXt layer (no network around it), channels-last, float64: the fold is exact to rounding."""
    torch.manual_seed(0)
    layer = randomize_norms(layer_cls(32), seed=2).eval().double()
    layer.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # torch's stubs lack memory_format
    x = torch.randn(2, 32, 9, 9, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        y0 = layer(x)
        y1 = prepare_for_inference(layer)(x)
    assert isinstance(layer.bn, ChannelShift) and isinstance(layer.conv1x1[1], nn.Identity)
    assert layer.conv1x1[0].bias is not None and layer.key_embed[0].bias is not None
    assert _max_rel(y0, y1) <= 1e-12


def test_training_mode_is_refused() -> None:
    model = _live("cotnet50").train()
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(InvalidArgumentError, match=r"eval-mode model.*call model\.eval\(\) first"):
        prepare_for_inference(model)
    model.eval()
    model.get_submodule("layer2.0.conv2").train()  # one submodule left in training mode is refused too, naming it
    with pytest.raises(InvalidArgumentError, match=r"layer2\.0\.conv2 and .* more modules are in training mode"):
        prepare_for_inference(model)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in sd.items())  # nothing was changed


def test_folding_twice_is_harmless() -> None:
    model = prepare_for_inference(_live("cotnet50"))
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        y1 = model(x)
        y2 = prepare_for_inference(model)(x)
    assert model.state_dict().keys() == sd.keys()
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in sd.items())
    assert torch.equal(y1, y2)


def test_folded_state_dict_layout_and_reload() -> None:
    """BN keys go, absorbing convs gain a bias, the CoT layer's ``bn`` keeps only its shift; a folded model's
    own state_dict loads strictly into another folded model of the same configuration."""
    model = _live("cotnet50")
    before = model.state_dict()
    folded = prepare_for_inference(model)
    after = folded.state_dict()
    assert not any(k.endswith(("running_mean", "running_var", "num_batches_tracked")) for k in after)
    cot = "layer3.0.conv2."
    assert {k[len(cot):] for k in after if k.startswith(cot)} == {
        "key_embed.0.weight", "key_embed.0.bias", "embed.0.weight", "embed.0.bias", "embed.3.weight",
        "embed.3.bias", "embed.4.weight", "embed.4.bias", "conv1x1.0.weight", "conv1x1.0.bias", "bn.bias",
        "se.0.weight", "se.0.bias", "se.3.weight", "se.3.bias"}
    assert "layer3.0.bn1.weight" in before and "layer3.0.bn1.weight" not in after and "layer3.0.conv1.bias" in after
    other = prepare_for_inference(_live("cotnet50", seed=7))
    other.load_state_dict(after, strict=True)
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        assert torch.equal(other(x), folded(x))


def test_unfolded_layout_is_untouched() -> None:
    """Building (and folding a deep copy) leaves the original's official state_dict as it was."""
    model = _live("cotnet50")
    keys = list(model.state_dict())
    prepare_for_inference(copy.deepcopy(model))
    assert list(model.state_dict()) == keys
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def test_counting_a_folded_model() -> None:
    """The meta-device counter still counts every op of a folded model; the BatchNorms' element ops are gone."""
    model = _live("cotnet50")
    before = count_model(model, (1, 3, 64, 64))
    after = count_model(prepare_for_inference(model), (1, 3, 64, 64))
    assert not [op for op in after.ops if op.kind is None]  # nothing uncounted
    kinds_before = {op.kind for op in before.ops}
    assert "normalisation" in kinds_before
    norm_after = [op for op in after.ops if op.kind == "normalisation"]
    assert norm_after and all(op.op.startswith("aten.native_group_norm") or "group_norm" in op.op
                              for op in norm_after)  # only the CoT GroupNorms are left
    agg = [op.macs for op in before.ops if op.kind == "local aggregation"]
    assert agg == [op.macs for op in after.ops if op.kind == "local aggregation"]
    assert sum(op.macs for op in after.ops) < sum(op.macs for op in before.ops)


def test_public_export() -> None:
    assert cotviz.prepare_for_inference is prepare_for_inference
    assert "prepare_for_inference" in cotviz.__all__
