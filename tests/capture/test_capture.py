"""The capture API: keys, selection, every variant, geometry, storage options, streaming, graphs."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

import cotviz
from cotviz.capture import TAP_NAMES, Capture, Record, block_range, capture, cot_blocks, stage_range
from cotviz.layers import CotLayer, CoXtLayer

from .conftest import leftover_hooks

MakeTiny = Callable[[str], nn.Module]


def test_keys_in_forward_order_with_all_fields(make_tiny: MakeTiny, image: torch.Tensor) -> None:
    model = make_tiny("cotnet")
    with capture(model) as cap:
        model(image)
    assert list(cap.keys()) == ["stage1.block1", "stage2.block1", "stage3.block1", "stage3.block2", "stage4.block1"]
    assert len(cap) == 5 and list(cap) == list(cap.keys())
    rec = cap["stage3.block2"]
    assert (rec.name, rec.stage, rec.block, rec.module_path, rec.layer_path) == (
        "stage3.block2", 3, 2, "layer3.1", "layer3.1.conv2")
    assert (rec.layer_type, rec.has_cot, rec.kernel_size, rec.groups, rec.share_planes) == ("CotLayer", True, 3, 1, 8)
    c = model.layer3[1].conv2.dim  # 64
    assert rec.heads_per_group == c // 8 and rec.total_heads == c // 8
    assert rec.static_context.shape == (2, c, 4, 4)
    assert rec.attention.shape == (2, 1, c // 8, 9, 4, 4)
    assert rec.dynamic_context.shape == (2, c, 4, 4)
    assert rec.fusion_weights.shape == (2, c, 2)
    assert rec.output.shape == (2, c, 4, 4)
    assert rec.block_output.shape == (2, 1024, 4, 4)
    assert rec.taps == TAP_NAMES
    assert set(rec.tensors()) == set(TAP_NAMES) | {"block_output"}


def test_top_level_lazy_capture_is_callable(make_tiny: MakeTiny, image: torch.Tensor) -> None:
    # `import cotviz.capture` binds the subpackage as cotviz.capture; calling it must still work
    import cotviz.capture as capture_pkg

    model = make_tiny("cotnet")
    for entry in (cotviz.capture, capture_pkg):
        with entry(model, stages=[2]) as cap:
            model(image)
        assert isinstance(cap, Capture) and list(cap) == ["stage2.block1"]


@pytest.mark.parametrize(("stages", "blocks", "expected"), [
    ([3], None, ["stage3.block1", "stage3.block2"]),
    (3, 2, ["stage3.block2"]),
    ([4, 1], [1], ["stage1.block1", "stage4.block1"]),
    (None, [1], ["stage1.block1", "stage2.block1", "stage3.block1", "stage4.block1"]),
])
def test_selection_hooks_only_selected_blocks(make_tiny: MakeTiny, image: torch.Tensor, stages: object,
                                              blocks: object, expected: list[str]) -> None:
    model = make_tiny("cotnet")
    selected = {f"layer{k[5]}.{int(k[-1]) - 1}" for k in expected}
    with capture(model, stages=stages, blocks=blocks) as cap:  # type: ignore[arg-type]
        hooked = {name for name, m in model.named_modules() if m._forward_hooks}
        model(image)
    assert list(cap) == expected
    # every hooked module lies inside a selected block (the root only has a forward-pre hook)
    assert hooked and all(any(n == s or n.startswith(s + ".") for s in selected) for n in hooked)


def test_taps_subset_stores_only_those(make_tiny: MakeTiny, image: torch.Tensor) -> None:
    model = make_tiny("cotnet")
    with capture(model, stages=[3], taps=["fusion_weights", "attention"]) as cap:
        model(image)
    rec = cap["stage3.block1"]
    assert rec.taps == ("attention", "fusion_weights")
    assert rec.static_context is None and rec.dynamic_context is None and rec.output is None
    assert rec.block_output is not None
    with capture(model, stages=[3], taps=[]) as cap:
        model(image)
    assert cap["stage3.block1"].taps == () and cap["stage3.block1"].feature_size == (4, 4)


def test_cotnext_shapes_and_group_major_heads(make_tiny: MakeTiny, image: torch.Tensor) -> None:
    model = make_tiny("cotnext")
    with capture(model, stages=[3], blocks=[2]) as cap:
        model(image)
    rec = cap["stage3.block2"]
    c = model.layer3[1].conv2.dim
    m = c // 16
    assert isinstance(model.layer3[1].conv2, CoXtLayer)
    assert (rec.layer_type, rec.groups, rec.heads_per_group, rec.total_heads) == ("CoXtLayer", 2, m, 2 * m)
    assert rec.attention.shape == (4, 1, m, 9, 4, 4)  # (2B, 1, C/16, K*K, H, W)
    heads = rec.heads()
    assert heads.shape == (2, 2 * m, 9, 4, 4)
    for b in range(2):
        for g in range(2):
            for j in range(m):
                assert torch.equal(heads[b, g * m + j], rec.attention[b * 2 + g, 0, j])
    dyn = rec.heads("dynamic_context")  # (B, 2M, 8, H, W)
    assert dyn.shape == (2, 2 * m, 8, 4, 4)
    for g in range(2):
        for j in range(m):
            for s in range(8):
                assert torch.equal(dyn[1, g * m + j, s], rec.dynamic_context[1, g * (c // 2) + s * m + j])
    fw = rec.heads("fusion_weights")
    assert fw.shape == (2, 2 * m, 8, 2) and torch.equal(fw[0, m + 1, 3], rec.fusion_weights[0, c // 2 + 3 * m + 1])


def test_cot_heads_interleave_channels(make_tiny: MakeTiny, image: torch.Tensor) -> None:
    model = make_tiny("cotnet")
    with capture(model, stages=[2]) as cap:
        model(image)
    rec = cap["stage2.block1"]
    m = rec.heads_per_group
    assert torch.equal(rec.heads(), rec.attention[:, 0])
    out = rec.heads("output")  # channel c uses map c % M
    assert torch.equal(out[1, 2, 5], rec.output[1, 5 * m + 2])


def test_se_cotnetd_split_attention_blocks_record_what_they_have(make_tiny: MakeTiny, image: torch.Tensor) -> None:
    model = make_tiny("se_cotnetd")
    with capture(model) as cap:
        model(image)
    assert [(r.name, r.layer_type, r.has_cot) for r in cap.values()] == [
        ("stage1.block1", "SplitAttnConv2d", False), ("stage2.block1", "SplitAttnConv2d", False),
        ("stage3.block1", "CotLayer", True), ("stage3.block2", "SplitAttnConv2d", False),
        ("stage4.block1", "CotLayer", True)]
    se = cap["stage3.block2"]
    assert se.taps == ("output",) and se.output.shape == (2, 64, 4, 4) and se.block_output.shape == (2, 1024, 4, 4)
    assert se.attention is None and se.heads_per_group is None
    with pytest.raises(cotviz.CotvizError, match="has no attention"):
        se.heads()
    assert cap["stage3.block1"].attention.shape == (2, 1, 8, 9, 4, 4)
    assert [(b.name, b.has_cot) for b in cot_blocks(model)] == [(r.name, r.has_cot) for r in cap.values()]


def test_resnet_records_block_and_operator_outputs(make_tiny: MakeTiny, image: torch.Tensor) -> None:
    model = make_tiny("resnet")
    with capture(model, stages=[3], taps=["output"]) as cap:
        model(image)
    assert [(r.layer_type, r.has_cot, r.taps) for r in cap.values()] == [("ConvBnAct", False, ("output",))] * 2


@pytest.mark.parametrize(("kind", "strides", "pooled", "blurred"), [
    ("cotnet", [4, 8, 16, 16, 32], [False, True, True, False, True], [False] * 5),
    ("se_cotnetd", [4, 8, 16, 16, 32], [False, False, True, False, True], [False] * 5),
    # SE-CoTNetD-152 style: operator at full resolution, BlurPool after it in strided blocks
    ("se_cotnetd_blur", [2, 4, 8, 16, 16], [False] * 5, [True, True, True, False, True]),
])
def test_geometry(make_tiny: MakeTiny, image: torch.Tensor, kind: str, strides: list[int], pooled: list[bool],
                  blurred: list[bool]) -> None:
    model = make_tiny(kind)
    with capture(model, taps=["output"]) as cap:
        model(image)
    recs = list(cap.values())
    assert [r.feature_stride for r in recs] == strides
    assert [r.pooled_before for r in recs] == pooled and [r.blurred_after for r in recs] == blurred
    for r in recs:
        assert r.input_size == (64, 64)
        assert r.feature_size == tuple(r.output.shape[-2:])
        assert r.feature_size[0] * r.feature_stride == 64


def test_cot_blocks_and_ranges_run_nothing(make_tiny: MakeTiny) -> None:
    model = make_tiny("cotnet")
    calls: list[int] = []
    handle = model.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        blocks = cot_blocks(model)
        assert stage_range(model) == range(1, 5) and block_range(model, 3) == range(1, 3)
    finally:
        handle.remove()
    assert not calls
    assert [(b.name, b.module_path, b.layer_type) for b in blocks][2] == ("stage3.block1", "layer3.0", "CotLayer")


def test_bare_cot_layer_and_wrapped_network(make_tiny: MakeTiny, image: torch.Tensor) -> None:
    layer = CotLayer(16, 3).eval()
    x = torch.randn(2, 16, 6, 6)
    with capture(layer) as cap:
        y = layer(x)
    rec = cap["layer"]
    assert (rec.stage, rec.has_cot, rec.feature_stride, rec.input_size) == (0, True, 1, (6, 6))
    assert torch.equal(rec.output, y) and torch.equal(rec.block_output, y)
    # a wrapped network keeps its stage keys; module paths carry the wrapper's prefix
    wrapped = nn.Sequential(nn.Identity(), make_tiny("cotnet"))
    with capture(wrapped, stages=[3], blocks=[1]) as cap:
        wrapped(image)
    assert list(cap) == ["stage3.block1"] and cap["stage3.block1"].module_path == "1.layer3.0"
    assert cap["stage3.block1"].feature_stride == 16


def test_streaming_callback_gets_every_record_and_keeps_nothing(make_tiny: MakeTiny, image: torch.Tensor) -> None:
    model = make_tiny("cotnet")
    seen: list[Record] = []
    with capture(model, stages=[3, 4], on_record=seen.append) as cap:
        for i in range(3):
            model(image[i % 2:i % 2 + 1])
            assert [r.name for r in seen[-3:]] == ["stage3.block1", "stage3.block2", "stage4.block1"]
    assert len(cap) == 0 and cap.nbytes == 0
    assert len(seen) == 9 and all(r.output.shape[0] == 1 for r in seen)
    assert torch.equal(seen[0].output, seen[6].output)  # same image, same values
    assert not torch.equal(seen[0].output, seen[3].output)


def test_later_forward_overwrites(make_tiny: MakeTiny, image: torch.Tensor) -> None:
    model = make_tiny("cotnet")
    with capture(model, stages=[3]) as cap:
        model(image)
        model(image[:1])
    assert [r.output.shape[0] for r in cap.values()] == [1, 1]


def test_dtype_and_device_of_stored_tensors(make_tiny: MakeTiny, image: torch.Tensor) -> None:
    model = make_tiny("cotnet")
    with capture(model, stages=[3]) as full:
        model(image)
    with capture(model, stages=[3], dtype=torch.float16) as half:
        model(image)
    for name, t in half["stage3.block1"].tensors().items():
        ref = full["stage3.block1"].tensors()[name]
        assert t.dtype == torch.float16 and torch.allclose(t.float(), ref, rtol=1e-3, atol=1e-3)
    assert half.nbytes * 2 == full.nbytes
    with capture(model, stages=[3], device="meta") as moved:
        model(image)
    assert all(t.device.type == "meta" for t in moved["stage3.block2"].tensors().values())


def test_detached_by_default_and_keep_graph(make_tiny: MakeTiny, image: torch.Tensor) -> None:
    model = make_tiny("cotnet")
    x = image.clone().requires_grad_(True)
    with capture(model, stages=[3]) as cap:
        model(x)
    assert all(not t.requires_grad and t.grad_fn is None for t in cap["stage3.block1"].tensors().values())
    with capture(model, stages=[3], keep_graph=True) as cap:
        model(x)
    rec = cap["stage3.block1"]
    assert all(t.requires_grad for t in rec.tensors().values())
    (grad,) = torch.autograd.grad(rec.attention.square().sum(), x)
    assert grad.shape == x.shape and grad.abs().sum() > 0


def test_no_grad_and_grad_enabled_give_same_values(make_tiny: MakeTiny, image: torch.Tensor) -> None:
    model = make_tiny("cotnext")
    with torch.no_grad(), capture(model, stages=[3]) as a:
        model(image)
    with capture(model, stages=[3]) as b:
        model(image)
    for name in a:
        for key, t in a[name].tensors().items():
            assert torch.equal(t, b[name].tensors()[key])


def test_model_untouched(make_tiny: MakeTiny, image: torch.Tensor) -> None:
    model = make_tiny("cotnet")
    model.layer1.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    plain = model(image)
    with capture(model) as cap:
        captured = model(image)
    assert torch.equal(plain, captured)
    assert cap and not leftover_hooks(model)
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert not any(m.training for m in model.modules())
    model.train()
    with capture(model, stages=[2]):
        model(image)
    assert all(m.training for m in model.modules())


def test_hooks_exist_only_inside_with(make_tiny: MakeTiny, image: torch.Tensor) -> None:
    model = make_tiny("cotnet")
    cap = capture(model, stages=[3])
    assert not leftover_hooks(model) and not cap.active
    with cap:
        assert cap.active and leftover_hooks(model)
        model(image)
    assert not leftover_hooks(model) and not cap.active
    assert len(cap) == 2
    model(image)  # a forward after the with block records nothing
    assert len(cap) == 2
