"""Layers: taps, BlurPool2d, split-attention conv, SE-CoTNetD routing and the spatial-operator factory.

Exact values on tiny hand-made cases (captum ``BasicModel_*`` style) and the tap contract of
``/work/shared/DESIGN.md``: every CoT / CoXt layer exposes the parameter-free taps ``static_context,
attention, dynamic_context, fusion_weights, output``, they fire in that order, with the documented shapes.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from _helpers import randomize_norms
from torch import Tensor, nn

from cotviz.errors import InvalidArgumentError
from cotviz.layers import (
    TAP_NAMES,
    BlurPool2d,
    ConvBnAct,
    CotLayer,
    CoXtLayer,
    SplitAttnConv2d,
    Tap,
    create_downsample,
    create_spatial_layer,
    list_spatial_layers,
    register_spatial_layer,
    spatial_layer_type,
)
from cotviz.models import HybridRouting, create_model


@contextmanager
def tap_recorder(model: nn.Module) -> Iterator[list[tuple[str, Tensor]]]:
    """Record ``(module path, clone of output)`` of every :class:`Tap` in firing order; hooks removed on exit."""
    fired: list[tuple[str, Tensor]] = []
    handles = []

    def make_hook(path: str) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...], output: Tensor) -> None:
            fired.append((path, output.detach().clone()))
        return hook

    try:
        for path, m in model.named_modules():
            if isinstance(m, Tap):
                handles.append(m.register_forward_hook(make_hook(path)))
        yield fired
    finally:
        for h in handles:
            h.remove()


# --------------------------------------------------------------------------------------------------
# Tap
# --------------------------------------------------------------------------------------------------


def test_tap_is_parameter_free_identity() -> None:
    tap = Tap()
    assert list(tap.parameters()) == [] and list(tap.buffers()) == []
    assert tap.state_dict() == {}
    x = torch.randn(2, 3, 4, 5)
    assert tap(x) is x


@pytest.mark.parametrize("cls", [CotLayer, CoXtLayer])
def test_taps_add_no_state_dict_keys(cls: type[CotLayer]) -> None:
    layer = cls(32)
    children = [name for name, m in layer.named_children() if isinstance(m, Tap)]
    assert children == list(TAP_NAMES)
    keys = list(layer.state_dict())
    assert not [k for k in keys if k.split(".")[0] in TAP_NAMES]
    params_and_buffers = [n for n, _ in layer.named_parameters()] + [n for n, _ in layer.named_buffers()]
    assert sorted(keys) == sorted(params_and_buffers)


@pytest.mark.parametrize(("cls", "groups"), [(CotLayer, 1), (CoXtLayer, 2)])
def test_taps_fire_in_forward_order_with_documented_shapes(cls: type[CotLayer], groups: int) -> None:
    gen = torch.Generator().manual_seed(0)
    b, c, h, w, k = 2, 32, 6, 5, 3
    layer = cls(c, k)
    randomize_norms(layer, gen)
    layer.eval()
    x = torch.randn(b, c, h, w, generator=gen)
    with torch.no_grad():
        plain = layer(x)
        with tap_recorder(layer) as fired:
            out = layer(x)
    assert [name for name, _ in fired] == list(TAP_NAMES)
    rec = dict(fired)
    assert rec["static_context"].shape == (b, c, h, w)
    assert rec["attention"].shape == (b * groups, 1, c // (8 * groups), k * k, h, w)
    assert rec["dynamic_context"].shape == (b, c, h, w)
    assert rec["fusion_weights"].shape == (b, c, 2)
    torch.testing.assert_close(rec["fusion_weights"].sum(-1), torch.ones(b, c))
    # index 0 weights the dynamic context, index 1 the static context
    fw = rec["fusion_weights"][..., None, None]  # (B, C, 2, 1, 1)
    fused = fw[:, :, 0] * rec["dynamic_context"] + fw[:, :, 1] * rec["static_context"]
    torch.testing.assert_close(fused, rec["output"])
    assert torch.equal(rec["output"], out)
    assert torch.equal(out, plain), "hooks on the taps changed the result"


@pytest.mark.parametrize(("name", "kwargs"), [
    ("cotnet50", dict(layers=[1, 1, 1, 1], base_width=16)),
    ("cotnext50_2x48d", dict(layers=[1, 1, 1, 1], base_width=16)),
    ("se_cotnetd_152", dict(layers=[1, 1, 2, 1], base_width=16,
                            block_args=dict(conv_dim={16, 32}, c4_dim=64, c4_idx={0}))),
])
def test_every_cot_layer_in_a_network_fires_its_taps_in_order(name: str, kwargs: dict[str, Any]) -> None:
    model = create_model(name, num_classes=5, **kwargs)
    cot_paths = [p for p, m in model.named_modules() if isinstance(m, CotLayer)]
    assert cot_paths
    with torch.no_grad(), tap_recorder(model) as fired:
        model(torch.randn(1, 3, 64, 64))
    # taps exist only inside CoT layers, and each layer's taps fire once each, in order, back to back
    expected = [f"{layer}.{tap}" for layer in cot_paths for tap in TAP_NAMES]
    assert [path for path, _ in fired] == expected


# --------------------------------------------------------------------------------------------------
# BlurPool2d
# --------------------------------------------------------------------------------------------------


def test_blurpool_hand_computed_4x4() -> None:
    """Reflect pad 1, filter [1,2,1]^T [1,2,1] / 16, stride 2, depthwise.

    Channel 0, a single 16 at (1, 1): output (0,0) sees it via the reflected row/col -1 and row/col 1
    (weight 1/4 + 1/4 per axis) -> 16 * 1/2 * 1/2 = 4; (0,1) -> 16 * 1/2 * 1/4 = 2; (1,0) = 2;
    (1,1) -> 16 * 1/4 * 1/4 = 1. (Zero padding would give 1 at (0,0).)
    Channel 1, x[i, j] = 4i + j: the blur averages the index along each axis with weights 1/4, 1/2, 1/4,
    centres 0 and 2 after reflection average to i = 0.5 and 2 -> [[2.5, 4], [8.5, 10]].
    """
    x = torch.zeros(1, 2, 4, 4)
    x[0, 0, 1, 1] = 16.0
    x[0, 1] = torch.arange(16.0).view(4, 4)
    expected = torch.tensor([[[4.0, 2.0], [2.0, 1.0]], [[2.5, 4.0], [8.5, 10.0]]])[None]
    pool = BlurPool2d(2)
    torch.testing.assert_close(pool(x), expected, atol=0.0, rtol=0.0)
    torch.testing.assert_close(pool(x.double()), expected.double(), atol=0.0, rtol=0.0)


def test_blurpool_filter_survives_the_meta_build_of_create_model() -> None:
    """create_model builds on meta (no filter computed) and fills the non-persistent filter afterwards."""
    from cotviz.models import create_model

    model = create_model("se_cotnetd_152", layers=[1, 1, 2, 1], base_width=16, num_classes=4,
                         block_args=dict(conv_dim={16, 32}, c4_dim=64, c4_idx={0}))
    pools = [m for m in model.modules() if isinstance(m, BlurPool2d)]
    assert pools
    k = torch.tensor([0.25, 0.5, 0.25])
    for pool in pools:
        torch.testing.assert_close(pool.filt, (k[:, None] * k[None, :]).expand_as(pool.filt), atol=0.0, rtol=0.0)
    with torch.device("meta"):
        assert BlurPool2d(4).filt.is_meta


def test_blurpool_has_no_state_dict_keys_and_rounds_up() -> None:
    pool = BlurPool2d(8)
    assert pool.state_dict() == {}
    assert list(pool.parameters()) == []
    assert pool(torch.randn(2, 8, 7, 9)).shape == (2, 8, 4, 5)


# --------------------------------------------------------------------------------------------------
# Split-attention conv (radix 1 = SE gate)
# --------------------------------------------------------------------------------------------------


def _bn(x: Tensor, bn: nn.BatchNorm2d) -> Tensor:
    return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)


@pytest.mark.parametrize(("stride", "groups"), [(1, 1), (2, 1), (1, 2)])
def test_split_attn_radix1_equals_hand_computed_se(stride: int, groups: int) -> None:
    gen = torch.Generator().manual_seed(1)
    m = SplitAttnConv2d(16, 16, 3, stride=stride, groups=groups, act_layer=nn.SiLU).double()
    randomize_norms(m, gen)
    m.eval()
    x = torch.randn(2, 16, 9, 9, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        got = m(x)
        y = F.silu(_bn(F.conv2d(x, m.conv.weight, stride=stride, padding=1, groups=groups), m.bn0))  # (B, C, H', W')
        gap = y.mean(dim=(2, 3), keepdim=True)  # (B, C, 1, 1)
        z = F.silu(_bn(F.conv2d(gap, m.fc1.weight, m.fc1.bias, groups=groups), m.bn1))  # (B, attn_chs, 1, 1)
        gate = torch.sigmoid(F.conv2d(z, m.fc2.weight, m.fc2.bias, groups=groups))  # (B, C, 1, 1)
        expected = y * gate
    side = (9 - 1) // stride + 1  # 3x3, padding 1
    assert got.shape == (2, 16, side, side)
    torch.testing.assert_close(got, expected, atol=1e-12, rtol=1e-12)
    assert m.fc1.out_channels == 32  # max(16 // 4, min_attn_chs=32)


def test_split_attn_keys_are_the_official_ones() -> None:
    keys = {k.rsplit(".", 1)[0] for k in SplitAttnConv2d(64, 64).state_dict()}
    assert keys == {"conv", "bn0", "fc1", "bn1", "fc2"}


# --------------------------------------------------------------------------------------------------
# SE-CoTNetD routing
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("stage", "block_idx", "width", "expected"), [
    (1, 0, 64, "split_attn"),   # width in conv_dim: stages 1-2 are all SE
    (1, 2, 64, "split_attn"),
    (2, 3, 128, "split_attn"),
    (3, 0, 256, "cot"),         # width == c4_dim: CoT at the indices in c4_idx ...
    (3, 1, 256, "split_attn"),  # ... SE elsewhere
    (3, 4, 256, "cot"),
    (3, 5, 256, "split_attn"),
    (4, 0, 512, "cot"),         # other widths: CoT
    (4, 1, 512, "cot"),
    (4, 3, 512, "cot"),         # c4_idx only matters at c4_dim
])
def test_hybrid_routing_truth_table(stage: int, block_idx: int, width: int, expected: str) -> None:
    routing = HybridRouting(conv_dim=frozenset({64, 128}), c4_dim=256, c4_idx=frozenset({0, 2, 4}))
    assert routing(stage, block_idx, width) == expected


def test_hybrid_routing_operator_names_are_configurable() -> None:
    routing = HybridRouting(frozenset({64}), 256, frozenset({0}), cot_layer="conv", other_layer="cot")
    assert routing(1, 0, 64) == "cot" and routing(4, 0, 512) == "conv"


# --------------------------------------------------------------------------------------------------
# Factory
# --------------------------------------------------------------------------------------------------


def test_factory_names_and_types() -> None:
    assert {"cot", "split_attn", "conv"} <= set(list_spatial_layers())
    assert type(create_spatial_layer("cot", 32)) is CotLayer
    assert type(create_spatial_layer("cot", 32, cardinality=2)) is CoXtLayer
    assert isinstance(create_spatial_layer("split_attn", 32, stride=2), SplitAttnConv2d)
    conv = create_spatial_layer("conv", 32, stride=2, cardinality=2)
    assert isinstance(conv, ConvBnAct) and conv.conv.stride == (2, 2) and conv.conv.groups == 2


def test_factory_options_are_read_off_the_builder_signature() -> None:
    cot = spatial_layer_type("cot")
    assert list(cot.options) == ["kernel", "key_kernel", "share_planes"]
    assert (cot.options["kernel"].type, cot.options["kernel"].default) == (int, 3)
    assert cot.options["key_kernel"].optional and cot.options["key_kernel"].default is None
    assert not cot.supports_stride and spatial_layer_type("conv").supports_stride
    assert list(spatial_layer_type("conv").options) == ["kernel"]


@pytest.mark.parametrize(("options", "key_shape", "maps"), [
    (dict(kernel=5), (32, 8, 5, 5), 4 * 25),                         # window and static-context conv
    (dict(key_kernel=1), (32, 8, 1, 1), 4 * 9),                      # static-context conv alone
    (dict(kernel=5, key_kernel=3), (32, 8, 3, 3), 4 * 25),
    (dict(share_planes=4), (32, 8, 3, 3), 8 * 9),                    # 32 / 4 = 8 attention maps
])
def test_cot_options(options: dict[str, int], key_shape: tuple[int, ...], maps: int) -> None:
    layer = create_spatial_layer("cot", 32, **options)
    assert isinstance(layer, CotLayer)
    assert tuple(layer.key_embed[0].weight.shape) == key_shape  # (C, C / 4 groups, k, k)
    assert layer.embed[3].out_channels == maps  # K*K * C/share_planes
    out = layer.eval()(torch.randn(1, 32, 6, 6))
    assert out.shape == (1, 32, 6, 6)


def test_conv_and_split_attn_take_a_kernel() -> None:
    assert create_spatial_layer("conv", 16, kernel=5).conv.kernel_size == (5, 5)
    assert create_spatial_layer("split_attn", 16, kernel=1).conv.kernel_size == (1, 1)


@pytest.mark.parametrize(("name", "options", "message"), [
    ("nope", {}, r"^unknown spatial layer 'nope'; choose one of .*cot.*split_attn"),
    ("cot", dict(kernal=5), r"^spatial layer 'cot' has no option 'kernal'; its options: kernel \(default 3\), "
                            r"key_kernel \(optional\), share_planes \(default 8\)$"),
    ("cot", dict(kernel=5.0), r"^option 'kernel' of spatial layer 'cot' takes an integer, got 5.0$"),
    ("cot", dict(kernel=True), r"takes an integer, got True"),
    ("cot", dict(kernel=4), r"^option 'kernel' of spatial layer 'cot' must be an odd integer >= 1, got 4$"),
    ("cot", dict(key_kernel=0), r"'key_kernel' .* must be an odd integer >= 1, got 0"),
    ("cot", dict(share_planes=3), r"'share_planes' .* must divide the 32 channels, got 3"),
    ("conv", dict(kernel=2), r"'kernel' of spatial layer 'conv' must be an odd"),
])
def test_factory_errors_are_one_line_and_name_the_valid_choices(name: str, options: dict[str, object],
                                                                message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=message) as info:
        create_spatial_layer(name, 32, **options)
    assert "\n" not in str(info.value)


def test_factory_refuses_stride_on_cot() -> None:
    with pytest.raises(InvalidArgumentError, match=r"'cot' has no stride"):
        create_spatial_layer("cot", 32, stride=2)


def test_factory_refuses_duplicate_registration() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_spatial_layer("cot", supports_stride=False)(lambda channels, **kw: nn.Identity())
    assert type(create_spatial_layer("cot", 32)) is CotLayer


def test_factory_refuses_an_option_without_type_or_default() -> None:
    def untyped(channels: int, *, stride: int, cardinality: int, act_layer: type[nn.Module], size=3):  # type: ignore[no-untyped-def]
        return nn.Identity()

    def no_default(channels: int, *, stride: int, cardinality: int, act_layer: type[nn.Module], size: int) -> nn.Module:
        return nn.Identity()

    with pytest.raises(TypeError, match="option 'size': an option must be annotated int, float, bool or str"):
        register_spatial_layer("untyped_test_layer", supports_stride=True)(untyped)
    with pytest.raises(TypeError, match="'size' needs a default"):
        register_spatial_layer("no_default_test_layer", supports_stride=True)(no_default)
    assert not {"untyped_test_layer", "no_default_test_layer"} & set(list_spatial_layers())


# --------------------------------------------------------------------------------------------------
# Downsample modes
# --------------------------------------------------------------------------------------------------


def test_downsample_modes() -> None:
    """"op": the operator strides if it can, else AvgPool2d(3, 2, 1) before it; "blur": BlurPool after it."""
    strided = create_downsample("op", 16, 2, op_strides=True)
    assert (strided.before, strided.op_stride, strided.after) == (None, 2, None)
    pooled = create_downsample("op", 16, 2, op_strides=False)
    assert isinstance(pooled.before, nn.AvgPool2d) and pooled.op_stride == 1 and pooled.after is None
    assert (pooled.before.kernel_size, pooled.before.stride, pooled.before.padding) == (3, 2, 1)
    for op_strides in (True, False):
        blur = create_downsample("blur", 16, 2, op_strides=op_strides)
        assert blur.before is None and blur.op_stride == 1 and isinstance(blur.after, BlurPool2d)
        assert blur.after.channels == 16
    for mode in ("op", "blur"):
        plain = create_downsample(mode, 16, 1, op_strides=False)
        assert (plain.before, plain.op_stride, plain.after) == (None, 1, None)
    with pytest.raises(InvalidArgumentError, match="unknown downsample mode 'avg'; choose one of blur, op"):
        create_downsample("avg", 16, 2, op_strides=True)
