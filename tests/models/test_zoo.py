"""The model zoo: registry, official state_dict layout, metadata, and registry-wide model checks.

Two shapes of test (``/work/shared/STYLE.md`` point 11):

- layout against the official code: every variant of ``state_dict_manifest.json`` (generated from the
  official JDAI-CV/CoTNet models) is built on the meta device and must reproduce its keys, shapes,
  order, param/buffer split, parameter count, CoT / split-attention module paths and ``default_cfg``;
- registry-parametrized checks (timm ``test_models.py`` style) over ``list_models()`` with small
  configurations: forward (train + eval), backward with a finite gradient for every parameter,
  ``forward_intermediates`` against ``feature_info``, seeding, and what ``create_model`` returns.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from _helpers import OFFICIAL_VARIANTS
from torch import nn

from cotviz.errors import CotvizError, InvalidArgumentError, UnknownModelError
from cotviz.layers import BlurPool2d, ConvBnAct, CotLayer, CoXtLayer, LayerSpec, SplitAttnConv2d
from cotviz.layers.self_attention import LocalSelfAttention
from cotviz.models import (
    Bottleneck,
    CoTResNet,
    PretrainedCfg,
    create_model,
    list_models,
    model_entry,
    register_model,
    resolve_name,
)
from cotviz.models.resnet import StemCfg

#: SE-CoTNetD variants that downsample with a BlurPool AFTER the operator (official ``avd_first=False``).
BLUR_VARIANTS: frozenset[str] = frozenset({"se_cotnetd_152", "se_cotnetd_152_L", "se_cotnetd_200", "se_cotnetd_270"})
#: ``default_cfg`` fields of the official model files that ``PretrainedCfg`` reproduces.
CFG_FIELDS: tuple[str, ...] = ("input_size", "pool_size", "crop_pct", "interpolation", "mean", "std",
                               "num_classes", "first_conv", "classifier")

SMALL_INPUT = (2, 3, 64, 64)
SMALL_CLASSES = 7


def _net(model: nn.Module) -> CoTResNet:
    """Every registered variant is built on the one skeleton."""
    assert isinstance(model, CoTResNet), type(model)
    return model


def _meta_model(name: str, **overrides: Any) -> CoTResNet:
    """Build ``name`` on the meta device: shapes only, no memory, no compute."""
    with torch.device("meta"):
        return _net(create_model(name, seed=None, **overrides))


@pytest.fixture(scope="module")
def official_meta_model(meta_model: Callable[[str], nn.Module]) -> Callable[[str], CoTResNet]:
    """``get(name)``: the full-size variant on the meta device (the session's ``meta_model``, read-only use)."""
    return lambda name: _net(meta_model(name))


def _is_hybrid(name: str) -> bool:
    return "hybrid" in model_entry(name).tags


def small_kwargs(name: str) -> dict[str, Any]:
    """A fast configuration of ``name`` that still has every block kind of the variant.

    One block per stage at a quarter of the width; SE-CoTNetD gets two stage-3 blocks and the routing
    sets scaled to ``base_width=16`` (official ``conv_dim={64,128}, c4_dim=256`` at width 64), so that it
    has split-attention blocks (layer1.0, layer2.0, layer3.1) and CoT blocks (layer3.0, layer4.0).
    """
    if "demo" in model_entry(name).tags:  # already small (one block per stage, planes 16..128)
        return {}
    if _is_hybrid(name):
        return dict(layers=[1, 1, 2, 1], base_width=16,
                    block_args=dict(conv_dim={16, 32}, c4_dim=64, c4_idx={0}))
    return dict(layers=[1, 1, 1, 1], base_width=16)


def _state_dict_layout(model: nn.Module) -> list[tuple[str, list[int], str]]:
    """``[(key, shape, "param" | "buffer"), ...]`` in ``state_dict()`` order, as the manifest records it."""
    params = {name for name, _ in model.named_parameters()}
    return [(key, list(t.shape), "param" if key in params else "buffer") for key, t in model.state_dict().items()]


def _assert_finite(t: torch.Tensor, what: str) -> None:
    assert torch.isfinite(t).all(), f"{what} has NaN/Inf"


# --------------------------------------------------------------------------------------------------
# 1. Layout against the official code (state_dict_manifest.json)
# --------------------------------------------------------------------------------------------------


def test_manifest_lists_exactly_the_official_variants(manifest: dict[str, Any]) -> None:
    assert set(manifest) == set(OFFICIAL_VARIANTS)


def test_every_official_variant_is_registered() -> None:
    assert set(OFFICIAL_VARIANTS) <= set(list_models())


@pytest.mark.parametrize("name", OFFICIAL_VARIANTS)
def test_state_dict_matches_manifest(name: str, manifest: dict[str, Any],
                                     official_meta_model: Callable[[str], CoTResNet]) -> None:
    ref = manifest[name]
    model = official_meta_model(name)
    expected = [(key, list(shape), kind) for key, shape, kind in ref["keys"]]
    got = _state_dict_layout(model)
    assert [k for k, _, _ in got] == [k for k, _, _ in expected], "state_dict keys or their order differ"
    assert got == expected, "shapes or param/buffer classification differ"
    assert len(got) == ref["num_state_dict_entries"]
    assert sum(p.numel() for p in model.parameters()) == ref["params"]
    persistent = dict(model.state_dict())
    buffer_elements = sum(persistent[k].numel() for k, _, kind in got if kind == "buffer")
    assert buffer_elements == ref["buffer_elements"]


@pytest.mark.parametrize("name", OFFICIAL_VARIANTS)
def test_operator_paths_match_manifest(name: str, manifest: dict[str, Any],
                                       official_meta_model: Callable[[str], CoTResNet]) -> None:
    ref = manifest[name]
    model = official_meta_model(name)
    cot = [path for path, m in model.named_modules() if isinstance(m, CotLayer)]
    split = [path for path, m in model.named_modules() if isinstance(m, SplitAttnConv2d)]
    assert cot == ref["cot_layers"]
    assert split == ref["split_attn_conv2d_layers"]
    # CoTNeXt uses the CoXt layer (official cotnet.Bottleneck: cardinality > 1), all others the CoT layer
    coxt = [path for path, m in model.named_modules() if isinstance(m, CoXtLayer)]
    assert coxt == (cot if name.startswith("cotnext") else [])


@pytest.mark.parametrize("name", OFFICIAL_VARIANTS)
def test_pretrained_cfg_matches_manifest_default_cfg(name: str, manifest: dict[str, Any]) -> None:
    cfg = model_entry(name).pretrained_cfg.to_dict()
    default_cfg = manifest[name]["default_cfg"]
    for key in CFG_FIELDS:
        got = list(cfg[key]) if isinstance(cfg[key], tuple) else cfg[key]
        assert got == default_cfg[key], f"{key}: {got} != official {default_cfg[key]}"


@pytest.mark.parametrize("name", OFFICIAL_VARIANTS)
def test_downsampling_placement(name: str, official_meta_model: Callable[[str], CoTResNet]) -> None:
    """Where a strided block downsamples (official cotnet.Bottleneck / CoTBottleneck).

    CoTNet/CoTNeXt and SE-CoTNetD-50/101: AvgPool2d(3, 2, 1) BEFORE a CoT layer, stride in the SE conv;
    SE-CoTNetD-152/200/270: BlurPool AFTER the stride-1 operator (CoT or SE). SE-CoTNetD has no max-pool.
    """
    model = official_meta_model(name)
    strided = [b for b in model.modules() if isinstance(b, Bottleneck) and b.stride > 1]
    assert strided
    for block in strided:
        is_cot = isinstance(block.conv2, CotLayer)
        op_stride = block.conv2.conv.stride[0] if isinstance(block.conv2, SplitAttnConv2d) else 1
        if name in BLUR_VARIANTS:
            assert isinstance(block.aa, BlurPool2d) and block.avd is None and op_stride == 1
        else:
            assert block.aa is None
            assert (block.avd is not None) == is_cot
            assert op_stride == (1 if is_cot else 2)
    assert (model.maxpool is None) == _is_hybrid(name)


# --------------------------------------------------------------------------------------------------
# Registry: names, aliases, errors
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("alias", "canonical"), [
    ("cotnext50", "cotnext50_2x48d"),
    ("cotnext101", "cotnext101_2x48d"),
    ("se_cotnetd50", "se_cotnetd_50"),
    ("se_cotnetd152", "se_cotnetd_152"),
    ("CoTNeXt50", "cotnext50_2x48d"),
    ("SE-CoTNetD-152", "se_cotnetd_152"),
    ("se-cotnetd152", "se_cotnetd_152"),
    ("COTNET50", "cotnet50"),
    ("se_cotnetd_152_l", "se_cotnetd_152_L"),
])
def test_aliases_resolve(alias: str, canonical: str) -> None:
    assert resolve_name(alias) == canonical


def test_alias_builds_the_canonical_model() -> None:
    model = _meta_model("CoTNeXt-50")
    assert model.model_name == "cotnext50_2x48d"
    reference = _meta_model("cotnext50_2x48d")
    assert _state_dict_layout(model) == _state_dict_layout(reference)


def test_unknown_model_suggests_close_names() -> None:
    with pytest.raises(UnknownModelError, match=r"cotnet5.*did you mean.*cotnet50") as info:
        create_model("cotnet5")
    assert isinstance(info.value, CotvizError)
    assert "\n" not in str(info.value)


def test_unknown_model_without_close_match() -> None:
    with pytest.raises(UnknownModelError, match="unknown model 'xyzzy'"):
        create_model("xyzzy")


def test_unknown_override_raises_invalid_argument() -> None:
    with pytest.raises(InvalidArgumentError, match="cotnet50 does not take the argument 'bogus_option'"):
        create_model("cotnet50", bogus_option=1)


def test_unknown_override_named_like_argument_is_reported() -> None:
    with pytest.raises(InvalidArgumentError, match="'not_an_argument'"):
        create_model("cotnet50", not_an_argument=1)


def test_unknown_block_args_raise_invalid_argument() -> None:
    with pytest.raises(InvalidArgumentError, match="block_args"):
        create_model("se_cotnetd_50", block_args=dict(not_a_key=1))


def test_list_models_pattern() -> None:
    assert list_models("cotnext*") == ["cotnext50_2x48d", "cotnext101_2x48d"]
    assert list_models("COTNEXT*") == list_models("cotnext*")
    assert list_models("se_cotnetd_152*") == ["se_cotnetd_152", "se_cotnetd_152_L"]
    assert list_models("no_such_model*") == []
    assert "cotnext50" in list_models("cotnext*", include_aliases=True)
    assert "cotnext50" not in list_models("cotnext*")


def test_a_name_that_normalises_onto_a_registered_one_is_refused() -> None:
    """``resnet_50`` and ``resnet50`` are one lookup key: a second model under it would shadow the first."""

    def resnet_50(**kwargs: Any) -> nn.Module:
        raise AssertionError("never built")

    with pytest.raises(ValueError, match=r"'resnet_50' is already registered \(by 'resnet50'\)"):
        register_model()(resnet_50)
    assert resolve_name("resnet_50") == "resnet50"
    assert "resnet_50" not in list_models()


# --------------------------------------------------------------------------------------------------
# 3. Registry-parametrized model checks on small configurations
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list_models())
def test_small_model_structure(name: str) -> None:
    """The small configuration keeps every block kind of the variant (so the checks below cover it)."""
    model = _meta_model(name, num_classes=SMALL_CLASSES, **small_kwargs(name))
    ops = [type(b.conv2) for b in model.modules() if isinstance(b, Bottleneck)]
    tags = model_entry(name).tags
    if _is_hybrid(name):
        assert model.describe() == {"layer1": ["split_attn"], "layer2": ["split_attn"],
                                    "layer3": ["cot", "split_attn"], "layer4": ["cot"]}
        assert any(isinstance(m, BlurPool2d) for m in model.modules()) == (name in BLUR_VARIANTS)
    elif "cot" in tags:
        assert ops == [CoXtLayer if "coxt" in tags else CotLayer] * 4
    elif "sa" in tags:
        assert ops == [LocalSelfAttention] * 4
    else:
        assert ops == [ConvBnAct] * 4


@pytest.mark.parametrize("name", list_models())
def test_forward_backward_train(name: str, seeded: int) -> None:
    # zero_init_last_bn=False: the official init zeroes every bn3 weight, which makes each residual
    # branch output a constant, so every parameter upstream of a bn3 would get an exactly-zero gradient
    # and the "every parameter is trained" check would be vacuous.
    model = _net(create_model(name, num_classes=SMALL_CLASSES, zero_init_last_bn=False, **small_kwargs(name)))
    model.train()
    x = torch.randn(*SMALL_INPUT)
    out = model(x)
    assert out.shape == (SMALL_INPUT[0], SMALL_CLASSES)
    _assert_finite(out, "train-mode output")
    out.square().mean().backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    no_grad = [n for n, g in grads.items() if g is None]
    assert not no_grad, f"parameters without gradient: {no_grad}"
    if not torch.isfinite(torch.cat([g.flatten() for g in grads.values() if g is not None])).all():
        bad = [n for n, g in grads.items() if g is not None and not torch.isfinite(g).all()]
        raise AssertionError(f"non-finite gradients: {bad}")
    # the weights upstream of bn3 (zero with the official init) do receive a gradient now
    first_conv1 = grads["layer1.0.conv1.weight"]
    assert first_conv1 is not None and first_conv1.abs().sum() > 0


@pytest.mark.parametrize("name", list_models())
def test_forward_eval_and_intermediates(name: str, seeded: int) -> None:
    model = _net(create_model(name, num_classes=SMALL_CLASSES, **small_kwargs(name)))
    x = torch.randn(*SMALL_INPUT)
    with torch.no_grad():
        out = model(x)
        features = model.forward_features(x)
        intermediates = model.forward_intermediates(x, intermediates_only=True)
    assert out.shape == (SMALL_INPUT[0], SMALL_CLASSES)
    _assert_finite(out, "eval-mode output")
    side = SMALL_INPUT[-1]
    assert features.shape == (SMALL_INPUT[0], model.num_features, side // 32, side // 32)
    assert len(intermediates) == len(model.feature_info)
    for feat, info in zip(intermediates, model.feature_info, strict=True):
        assert feat.shape == (SMALL_INPUT[0], info.num_chs, side // info.reduction, side // info.reduction), info
        assert isinstance(model.get_submodule(info.module), nn.Module)
    torch.testing.assert_close(intermediates[-1], features)
    torch.testing.assert_close(model.forward_head(features), out)


def test_forward_intermediates_indices(seeded: int) -> None:
    model = _net(create_model("se_cotnetd_50", num_classes=SMALL_CLASSES, **small_kwargs("se_cotnetd_50")))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        everything = model.forward_intermediates(x, intermediates_only=True)
        last_two = model.forward_intermediates(x, indices=2, intermediates_only=True)
        picked = model.forward_intermediates(x, indices=[1, 3], intermediates_only=True)
    assert len(everything) == 5
    torch.testing.assert_close(last_two, everything[-2:])
    torch.testing.assert_close(picked, [everything[1], everything[3]])
    with pytest.raises((ValueError, CotvizError)):
        model.forward_intermediates(x, indices=[7])


@pytest.mark.parametrize("name", list_models())
def test_seeding_is_deterministic_and_isolated(name: str) -> None:
    kwargs = dict(num_classes=SMALL_CLASSES, **small_kwargs(name))
    rng_before = torch.get_rng_state()
    a = create_model(name, seed=0, **kwargs).state_dict()
    assert torch.equal(torch.get_rng_state(), rng_before), "create_model consumed the global RNG"
    b = create_model(name, seed=0, **kwargs).state_dict()
    c = create_model(name, seed=1, **kwargs).state_dict()
    assert list(a) == list(b) == list(c)
    assert all(torch.equal(a[k], b[k]) for k in a), "same seed gave different weights"
    assert not all(torch.equal(a[k], c[k]) for k in a), "different seeds gave identical weights"
    assert not torch.equal(a["fc.weight"], c["fc.weight"])


@pytest.mark.parametrize("name", ["cotnet50", "cotnext50", "se_cotnetd_152"])
def test_meta_build_initialises_like_a_direct_build(name: str) -> None:
    """create_model builds on meta, then allocates and runs init_weights once: the result must equal building
    on the CPU (default init) and re-initialising (a module init_weights misses would keep uninitialised memory)."""
    kwargs = dict(num_classes=SMALL_CLASSES, **small_kwargs(name))
    fast = create_model(name, seed=3, **kwargs)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        direct = model_entry(name).builder(**kwargs)
        torch.manual_seed(3)
        direct.init_weights()
    a, b = fast.state_dict(), direct.state_dict()
    assert list(a) == list(b)
    for k in a:
        assert a[k].device.type == "cpu" and a[k].dtype == b[k].dtype
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    assert all(isinstance(p, nn.Parameter) and p.requires_grad for p in fast.parameters())


@pytest.mark.parametrize("name", list_models())
def test_create_model_returns_eval_model_with_metadata(name: str) -> None:
    model = _meta_model(name, num_classes=SMALL_CLASSES, **small_kwargs(name))
    assert not any(m.training for m in model.modules())
    assert model.model_name == name
    cfg = model.pretrained_cfg
    assert isinstance(cfg, PretrainedCfg)
    assert cfg.num_classes == SMALL_CLASSES
    entry_cfg = model_entry(name).pretrained_cfg
    assert cfg.input_size == entry_cfg.input_size and cfg.crop_pct == entry_cfg.crop_pct


def test_full_size_cotnet50_forward_224(seeded: int) -> None:
    model = create_model("cotnet50")
    with torch.no_grad():
        out = model(torch.randn(1, 3, 224, 224))
    assert out.shape == (1, 1000)
    _assert_finite(out, "cotnet50 output")


# --------------------------------------------------------------------------------------------------
# The pluggable spatial slot
# --------------------------------------------------------------------------------------------------


def test_spatial_layer_conv_builds_plain_blocks(seeded: int) -> None:
    model = _net(create_model("cotnet50", spatial_layer="conv", layers=[1, 1, 1, 1]))
    blocks = [m for m in model.modules() if isinstance(m, Bottleneck)]
    convs = [b.conv2 for b in blocks if isinstance(b.conv2, ConvBnAct)]
    assert len(blocks) == len(convs) == 4
    assert not any(isinstance(m, CotLayer) for m in model.modules())
    # a conv operator strides itself: no avg-pool before it
    assert all(b.avd is None for b in blocks)
    assert [c.conv.stride for c in convs] == [(1, 1), (2, 2), (2, 2), (2, 2)]
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 64))
    assert out.shape == (1, 1000)


def test_spatial_layer_conv_matches_resnet50_layout() -> None:
    """Swapping the operator name on the CoTNet skeleton gives exactly the ResNet-50 baseline."""
    assert _state_dict_layout(_meta_model("cotnet50", spatial_layer="conv")) == _state_dict_layout(
        _meta_model("resnet50"))
    params = sum(p.numel() for p in _meta_model("resnet50").parameters())
    assert params == 25_557_032  # torchvision / timm resnet50 parameter count


@pytest.mark.parametrize("spatial_layer", ["cot:kernel=5", LayerSpec.of("cot", kernel=5)])
def test_spatial_layer_options_reach_every_block(spatial_layer: str | LayerSpec) -> None:
    model = _meta_model("cotnet50", spatial_layer=spatial_layer, layers=[1, 1, 1, 1], base_width=16)
    cots = [b.conv2 for b in model.modules() if isinstance(b, Bottleneck)]
    assert all(type(c) is CotLayer and c.kernel_size == 5 for c in cots)
    assert [tuple(c.key_embed[0].weight.shape) for c in cots] == [(w, w // 4, 5, 5) for w in (16, 32, 64, 128)]
    assert model.describe() == {f"layer{i}": ["cot:kernel=5"] for i in range(1, 5)}


def test_deep_stem_widths() -> None:
    """Official ``stem_type``: deep = (w, w, 2w), deep_tiered = (3 (w // 4), w, 2w), "" = one 7x7 conv to 64."""
    assert StemCfg.from_type("", 32) == StemCfg(7, (64,))
    assert StemCfg.from_type("deep", 32) == StemCfg(3, (32, 32, 64))
    assert StemCfg.from_type("deep_tiered", 32) == StemCfg(3, (24, 32, 64))
    model = _meta_model("se_cotnetd_50", stem_type="deep_tiered")
    layout = {k: shape for k, shape, _ in _state_dict_layout(model) if k.startswith("conv1.")}
    assert {k: v for k, v in layout.items() if k.endswith("weight")} == {
        "conv1.0.weight": [24, 3, 3, 3], "conv1.1.weight": [24], "conv1.3.weight": [32, 24, 3, 3],
        "conv1.4.weight": [32], "conv1.6.weight": [64, 32, 3, 3]}


@pytest.mark.parametrize(("override", "message"), [
    (dict(stem_type="tiered"), r"stem_type must be one of '', 'deep', 'deep_tiered', got 'tiered'"),
    (dict(downsample_mode="pool"), r"unknown downsample mode 'pool'; choose one of blur, op"),
])
def test_unknown_skeleton_values_name_the_valid_ones(override: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        create_model("cotnet50", layers=[1, 1, 1, 1], base_width=16, **override)


def test_unknown_spatial_layer_is_a_clear_error() -> None:
    with pytest.raises(InvalidArgumentError, match=r"unknown spatial layer 'nope'.*cot") as info:
        create_model("cotnet50", spatial_layer="nope", layers=[1, 1, 1, 1])
    assert "\n" not in str(info.value)
