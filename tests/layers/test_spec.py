"""Operator specs ``NAME[:opt=value,...][@stages]``: parsing, canonical text, errors, and the skeleton built from one."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from cotviz.errors import InvalidArgumentError
from cotviz.layers import ConvBnAct, CotLayer, LayerSpec, parse_layer_spec
from cotviz.models import Bottleneck, CoTResNet, create_model


@pytest.mark.parametrize(("text", "name", "options", "stages", "canonical"), [
    ("cot", "cot", {}, None, "cot"),
    ("cot:kernel=5", "cot", {"kernel": 5}, None, "cot:kernel=5"),
    ("cot:key_kernel=1", "cot", {"key_kernel": 1}, None, "cot:key_kernel=1"),
    (" COT : Key_Kernel = 1 , kernel=5 ", "cot", {"kernel": 5, "key_kernel": 1}, None, "cot:kernel=5,key_kernel=1"),
    ("cot:key_kernel=none", "cot", {"key_kernel": None}, None, "cot:key_kernel=none"),
    ("cot@4", "cot", {}, {4}, "cot@4"),
    ("cot@3-4", "cot", {}, {3, 4}, "cot@3-4"),
    ("cot@2-4", "cot", {}, {2, 3, 4}, "cot@2-4"),
    ("cot@4,1", "cot", {}, {1, 4}, "cot@1,4"),
    ("cot@1,3-4", "cot", {}, {1, 3, 4}, "cot@1,3-4"),
    ("cot@1-4", "cot", {}, None, "cot"),  # every stage is the same spec as no stage list
    ("cot:kernel=5@3-4", "cot", {"kernel": 5}, {3, 4}, "cot:kernel=5@3-4"),
    ("conv:kernel=1", "conv", {"kernel": 1}, None, "conv:kernel=1"),
])
def test_valid_specs(text: str, name: str, options: dict[str, Any], stages: set[int] | None, canonical: str) -> None:
    spec = parse_layer_spec(text)
    assert spec.name == name and spec.kwargs == options
    assert spec.stages == (None if stages is None else frozenset(stages))
    assert str(spec) == canonical
    assert parse_layer_spec(str(spec)) == spec


def test_python_spelling_equals_the_text() -> None:
    assert LayerSpec.of("cot", key_kernel=1, kernel=5) == parse_layer_spec("cot:kernel=5,key_kernel=1")
    assert LayerSpec.of("cot", stages=frozenset({4})) == parse_layer_spec("cot@4")
    assert hash(LayerSpec.of("cot", kernel=5)) == hash(parse_layer_spec("cot:kernel=5"))


@pytest.mark.parametrize(("text", "message"), [
    ("nope", r"^unknown spatial layer 'nope'; choose one of .*conv, cot, .*split_attn"),
    ("nope:kernel=3@4", r"^unknown spatial layer 'nope'; choose one of"),
    ("", r"has no operator name; write NAME\[:opt=value,...\]\[@stages\]"),
    (":kernel=3", r"has no operator name"),
    ("cot:kernal=5", r"^spatial layer 'cot' has no option 'kernal' \(in 'cot:kernal=5'\); its options: kernel "
                     r"\(default 3\), key_kernel \(optional\), share_planes \(default 8\)$"),
    ("conv:share_planes=4", r"'conv' has no option 'share_planes' .*its options: kernel \(default 3\)$"),
    ("cot:kernel=five", r"^option 'kernel' of spatial layer 'cot' takes an integer, got 'five' in 'cot:kernel=five'$"),
    ("cot:kernel=5.0", r"takes an integer, got '5.0'"),
    ("cot:", r"has ':' but no options"),
    ("cot:kernel", r"^option 'kernel' in 'cot:kernel' is not opt=value; 'cot': its options: kernel"),
    ("cot:kernel=", r"is not opt=value"),
    ("cot:kernel=3,kernel=5", r"^option 'kernel' given twice in 'cot:kernel=3,kernel=5'$"),
    ("cot@5", r"^bad stages '5' in 'cot@5': name stages 1-4 as N, N-M or a comma list \(e.g. cot@4, cot@3-4"),
    ("cot@0", r"bad stages '0'"),
    ("cot@4-3", r"bad stages '4-3'"),
    ("cot@res5", r"bad stages 'res5'"),
    ("cot@", r"bad stages ''"),
    ("cot@2,,4", r"bad stages '2,,4'"),
])
def test_invalid_specs_are_one_line_naming_the_valid_choices(text: str, message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=message) as info:
        parse_layer_spec(text)
    assert "\n" not in str(info.value)
    assert info.value.exit_code == 2


def test_constructing_a_spec_validates_it() -> None:
    with pytest.raises(InvalidArgumentError, match="has no option 'kernal'"):
        LayerSpec.of("cot", kernal=5)
    with pytest.raises(InvalidArgumentError, match="takes an integer"):
        LayerSpec.of("cot", kernel="5")
    with pytest.raises(InvalidArgumentError, match=r"stages \[0, 5\] of 'cot' must be among 1-4"):
        LayerSpec.of("cot", stages=frozenset({0, 5}))
    with pytest.raises(InvalidArgumentError, match="unknown spatial layer"):
        LayerSpec("cott")


def test_for_stage() -> None:
    spec = parse_layer_spec("cot:kernel=5@3-4")
    assert [str(spec.for_stage(s)) for s in (1, 2, 3, 4)] == ["conv", "conv", "cot:kernel=5", "cot:kernel=5"]
    every = parse_layer_spec("cot:kernel=5")
    assert all(every.for_stage(s) is every for s in (1, 2, 3, 4))


def test_build() -> None:
    layer = parse_layer_spec("cot:kernel=5,key_kernel=1").build(32)
    assert isinstance(layer, CotLayer) and layer.kernel_size == 5 and layer.key_embed[0].kernel_size == (1, 1)
    conv = parse_layer_spec("conv").build(16, stride=2, cardinality=2)
    assert isinstance(conv, ConvBnAct) and conv.conv.stride == (2, 2) and conv.conv.groups == 2


# --------------------------------------------------------------------------------------------------
# The skeleton built from a spec (the paper's Table 7 rows)
# --------------------------------------------------------------------------------------------------


def _tiny(spatial_layer: str, **kwargs: Any) -> CoTResNet:
    with torch.device("meta"):
        model = create_model("cotnet50", layers=[1, 1, 2, 1], base_width=16, num_classes=10,
                             spatial_layer=spatial_layer, seed=None, **kwargs)
    assert isinstance(model, CoTResNet)
    return model


def _layout(model: nn.Module) -> list[tuple[str, tuple[int, ...]]]:
    return [(k, tuple(v.shape)) for k, v in model.state_dict().items()]


@pytest.mark.parametrize(("text", "cot_stages"), [("cot@4", {4}), ("cot@3-4", {3, 4}), ("cot@2-4", {2, 3, 4}),
                                                  ("cot", {1, 2, 3, 4}), ("conv", set())])
def test_stage_selection_keeps_plain_conv_bottlenecks_elsewhere(text: str, cot_stages: set[int]) -> None:
    model = _tiny(text)
    plain = _tiny("conv")
    cot = _tiny("cot")
    for stage, (mine, p, c) in enumerate(zip(model.stages(), plain.stages(), cot.stages(), strict=True), start=1):
        ref = c if stage in cot_stages else p
        assert _layout(mine) == _layout(ref), f"layer{stage}"
        for block, ref_block in zip(mine, ref, strict=True):
            assert isinstance(block, Bottleneck) and isinstance(ref_block, Bottleneck)
            assert type(block.conv2) is type(ref_block.conv2)
            # the plain bottleneck's own stride handling: the conv strides, no pool before it; CoT pools before
            assert type(block.avd) is type(ref_block.avd)
            assert (block.conv2.conv.stride if isinstance(block.conv2, ConvBnAct) else None) == (
                ref_block.conv2.conv.stride if isinstance(ref_block.conv2, ConvBnAct) else None)
    assert model.describe() == {f"layer{s}": ["cot" if s in cot_stages else "conv"] * n
                                for s, n in zip((1, 2, 3, 4), (1, 1, 2, 1), strict=True)}


def test_cot_at_4_is_resnet50_with_cot_in_layer4() -> None:
    with torch.device("meta"):
        model = create_model("cotnet50", spatial_layer="cot@4", seed=None)
        resnet = create_model("resnet50", seed=None)
        cotnet = create_model("cotnet50", seed=None)
    ours = dict(_layout(model))
    expected = {k: v for k, v in _layout(resnet) if not k.startswith("layer4.")}
    expected |= {k: v for k, v in _layout(cotnet) if k.startswith("layer4.")}
    assert ours == expected
    assert [k for k, _ in _layout(model)] == [k for k, _ in _layout(resnet) if not k.startswith(("layer4.", "fc."))] + [
        k for k, _ in _layout(cotnet) if k.startswith(("layer4.", "fc."))]


def test_a_block_refuses_a_stage_list() -> None:
    with pytest.raises(InvalidArgumentError, match=r"stage selection \(cot@4\) is the network's spatial_layer"):
        Bottleneck(64, 16, spatial_layer="cot@4")


def test_the_spec_runs_forward_and_backward() -> None:
    model = create_model("cotnet50", layers=[1, 1, 1, 1], base_width=16, num_classes=10, spatial_layer="cot:kernel=5@3-4")
    model.train()
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    assert all(p.grad is not None for p in model.parameters())
