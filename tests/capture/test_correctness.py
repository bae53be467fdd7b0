"""Captured values are right: closed-form case, recomposition, in-place safety, official goldens."""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cotviz.capture import capture
from cotviz.layers import CotLayer, CoXtLayer
from cotviz.models import create_model
from cotviz.ops.aggregation import local_aggregation_reference

MakeTiny = Callable[[str], nn.Module]
ATOL = RTOL = 1e-4  # float32 vs the float64-computed goldens (reference README)


def _identity_bn(bn: nn.BatchNorm2d) -> None:
    bn.eps = 0.0
    nn.init.ones_(bn.weight)
    nn.init.zeros_(bn.bias)
    bn.running_mean.zero_()  # type: ignore[union-attr]
    bn.running_var.fill_(1.0)  # type: ignore[union-attr]


def test_exact_values_on_hand_set_cot_layer() -> None:
    """Weights set so every tap has a closed form (float64, exact up to rounding).

    key_embed = identity conv + identity BN -> K1 = relu(x); embed outputs 0 before GroupNorm, so
    A = GroupNorm bias: map 0 = centre 1, map 1 = centre 1 + right neighbour 0.5; conv1x1 = identity
    -> V = x; K2 = silu(aggregate); se weights 0, last bias -> fusion (3/4, 1/4) on even channels,
    (1/5, 4/5) on odd ones.
    """
    c, k = 16, 3
    layer = CotLayer(c, k).double().eval()
    with torch.no_grad():
        for m in layer.modules():
            if isinstance(m, nn.BatchNorm2d):
                _identity_bn(m)
        key = layer.key_embed[0].weight  # (C, C/4, K, K)
        key.zero_()
        for ch in range(c):
            key[ch, ch % (c // 4), 1, 1] = 1.0
        layer.embed[0].weight.zero_()
        layer.embed[3].weight.zero_()
        layer.embed[3].bias.zero_()
        gn = layer.embed[4]
        gn.weight.uniform_(0.5, 1.5)  # irrelevant: the normalised input is 0
        gn.bias.zero_()
        gn.bias[4] = 1.0  # map 0, centre
        gn.bias[9 + 4] = 1.0  # map 1, centre
        gn.bias[9 + 5] = 0.5  # map 1, (kh, kw) = (1, 2): right neighbour
        layer.conv1x1[0].weight.copy_(torch.eye(c, dtype=torch.float64)[:, :, None, None])
        layer.se[0].weight.zero_()
        layer.se[3].weight.zero_()
        bias = torch.zeros(c, 2, dtype=torch.float64)
        bias[0::2, 0] = math.log(3.0)
        bias[1::2, 1] = math.log(4.0)
        layer.se[3].bias.copy_(bias.flatten())  # logits (B, 2C) viewed as (B, C, 2)
    x = torch.randn(2, c, 5, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    with capture(layer) as cap:
        y = layer(x)
    rec = cap["layer"]

    attn = torch.zeros(2, 9, dtype=torch.float64)
    attn[0, 4] = attn[1, 4] = 1.0
    attn[1, 5] = 0.5
    expected_attn = attn[None, None, :, :, None, None].expand(2, 1, 2, 9, 5, 6)
    right = F.pad(x[..., 1:], (0, 1))  # x[h, w+1], zero beyond the border
    agg = x.clone()
    agg[:, 1::2] += 0.5 * right[:, 1::2]  # odd channels use map 1
    fw = torch.tensor([[0.75, 0.25], [0.2, 0.8]], dtype=torch.float64).repeat(c // 2, 1).expand(2, c, 2)

    assert torch.allclose(rec.static_context, torch.relu(x), atol=1e-12)
    assert torch.allclose(rec.attention, expected_attn, atol=1e-12)
    assert torch.allclose(rec.dynamic_context, F.silu(agg), atol=1e-12)
    assert torch.allclose(rec.fusion_weights, fw, atol=1e-12)
    expected_out = 0.75 * F.silu(agg) + 0.25 * torch.relu(x)
    expected_out[:, 1::2] = 0.2 * F.silu(agg[:, 1::2]) + 0.8 * torch.relu(x[:, 1::2])
    assert torch.allclose(rec.output, expected_out, atol=1e-12)
    assert torch.equal(rec.output, y)


def _recompose(rec: object) -> Tensor:
    fw = rec.fusion_weights  # type: ignore[attr-defined]  (B, C, 2)
    return rec.dynamic_context * fw[:, :, 0, None, None] + rec.static_context * fw[:, :, 1, None, None]  # type: ignore[attr-defined]


@pytest.mark.parametrize("kind", ["cotnet", "cotnext", "se_cotnetd"])
def test_recomposition_equals_output(make_tiny: MakeTiny, image: Tensor, kind: str) -> None:
    model = make_tiny(kind)
    with capture(model) as cap:
        model(image)
    cot = [r for r in cap.values() if r.has_cot]
    assert cot
    for rec in cot:
        assert torch.allclose(_recompose(rec), rec.output, atol=1e-6, rtol=1e-5), rec.name
        assert torch.allclose(rec.fusion_weights.sum(-1), torch.ones(()), atol=1e-6)


def _recompute_cot(layer: CotLayer, x: Tensor) -> dict[str, Tensor]:
    """A CoT layer's taps recomputed functionally (reference aggregation, out-of-place activations)."""
    b, c, h, w = x.shape
    kk = layer.kernel_size ** 2
    k1 = F.relu(layer.key_embed[1](layer.key_embed[0](x)))
    e = layer.embed
    attn = e[4](e[3](F.relu(e[1](e[0](torch.cat([x, k1], dim=1)))))).view(b, 1, -1, kk, h, w)
    v = layer.conv1x1(x)
    k2 = F.silu(layer.bn(local_aggregation_reference(v, attn, layer.kernel_size, 1, layer.kernel_size // 2, 1)))
    s = layer.se
    a = torch.softmax(s[3](F.relu(s[1](s[0]((k1 + k2).mean((2, 3), keepdim=True))))).view(b, c, 2), dim=2)
    return {"static_context": k1, "attention": attn, "dynamic_context": k2, "fusion_weights": a,
            "output": k2 * a[:, :, 0, None, None] + k1 * a[:, :, 1, None, None]}


def test_clones_survive_in_place_changes(make_tiny: MakeTiny, image: Tensor) -> None:
    """Hooks that run after ours rewrite the very tensors we stored, in place; the records must not change."""
    model = make_tiny("cotnet")
    block = model.layer3[0]
    layer = block.conv2
    inputs: list[Tensor] = []
    plain_out: list[Tensor] = []
    h1 = layer.register_forward_pre_hook(lambda m, a: inputs.append(a[0].clone()))
    h2 = block.register_forward_hook(lambda m, a, out: plain_out.append(out.clone()))
    try:
        model(image)
    finally:
        h1.remove()
        h2.remove()
    expected = _recompute_cot(layer, inputs[0])

    live: list[Tensor] = []  # the very tensors the network computed (no copies)

    def keep(m: nn.Module, a: object, out: Tensor) -> None:
        live.append(out)

    def rewrite_all(m: nn.Module, a: object, out: Tensor) -> None:
        for t in live:
            t.zero_()
        out.add_(100.0)

    with capture(model, stages=[3], blocks=[1]) as cap:
        # registered after the capture's hooks, so they run after them: once the block has finished,
        # every tapped tensor and the block output are rewritten in place
        extra = [getattr(layer, n).register_forward_hook(keep) for n in expected]
        extra.append(block.register_forward_hook(rewrite_all))
        try:
            model(image)
        finally:
            for h in extra:
                h.remove()
    assert len(live) == 5 and all(t.abs().sum() == 0 for t in live)
    rec = cap["stage3.block1"]
    assert rec.dynamic_context.abs().sum() > 0
    for name, ref in expected.items():
        assert torch.allclose(getattr(rec, name), ref, atol=1e-5, rtol=1e-5), name
    assert torch.allclose(rec.block_output, plain_out[0], atol=1e-6)


# --- official goldens (../shared/reference) ----------------------------------------------------------


@lru_cache(maxsize=4)
def _golden(path: Path) -> dict[str, Any]:
    return torch.load(path)


@pytest.mark.parametrize(("file", "entry", "cls", "pre_pool"), [
    ("cot_block_golden.pt", "cot_dim64_k3_s1", CotLayer, False),
    ("cot_block_golden.pt", "cot_dim64_k5_s1", CotLayer, False),
    ("cot_block_golden.pt", "cot_dim128_k3_s2", CotLayer, True),
    ("cot_block_golden_extra.pt", "coxt_dim96_k3_s1", CoXtLayer, False),
])
def test_bare_layer_matches_golden_intermediates(reference_dir: Path, file: str, entry: str, cls: type[CotLayer],
                                                 pre_pool: bool) -> None:
    g = _golden(reference_dir / file)[entry]
    layer = cls(**g["kwargs"]).eval()
    layer.load_state_dict(g["state_dict"], strict=True)
    x = g["input"]
    if pre_pool:  # the network's AvgPool2d(3, 2, 1) before a stride-1 CoT layer
        x = F.avg_pool2d(x, 3, 2, 1)
    with capture(layer) as cap:
        layer(x)
    rec = cap["layer"]
    for name in ("static_context", "attention", "dynamic_context", "fusion_weights", "output"):
        got = getattr(rec, name)
        assert got.shape == g[name].shape, name
        torch.testing.assert_close(got, g[name], atol=ATOL, rtol=RTOL, msg=name)


def test_tiny_cotnet_matches_golden_channel_means(reference_dir: Path) -> None:
    g = torch.load(reference_dir / "tiny_cotnet_golden.pt")
    model = create_model("cotnet50", layers=[1, 1, 1, 1], num_classes=10, base_width=16)
    model.load_state_dict(g["state_dict"], strict=True)
    with capture(model) as cap:
        model(g["input"])
    assert [r.layer_path for r in cap.values()] == g["cot_layer_names"]
    for s, rec in enumerate(cap.values(), start=1):
        torch.testing.assert_close(rec.output.mean((2, 3)), g["channel_means"][f"layer{s}.0.conv2"],
                                   atol=ATOL, rtol=RTOL)
        torch.testing.assert_close(_recompose(rec).mean((2, 3)), g["channel_means"][f"layer{s}.0.conv2"],
                                   atol=ATOL, rtol=RTOL)
        # one block per stage: the block output is the stage output
        torch.testing.assert_close(rec.block_output.mean((2, 3)), g["channel_means"][f"layer{s}"], atol=ATOL, rtol=RTOL)


def test_tiny_se_cotnetd_matches_golden_channel_means(reference_dir: Path) -> None:
    g = torch.load(reference_dir / "tiny_se_cotnetd_golden.pt")
    c = g["constructor_kwargs"]
    model = create_model("se_cotnetd_50", layers=c["layers"], num_classes=10, base_width=16,
                         block_args=dict(conv_dim=set(c["block_args"]["conv_dim"]), c4_dim=c["block_args"]["c4_dim"],
                                         c4_idx=set(c["block_args"]["c4_idx"])))
    model.load_state_dict(g["state_dict"], strict=True)
    with capture(model) as cap:
        model(g["input"])
    assert [r.layer_path for r in cap.values() if r.has_cot] == g["cot_layer_names"]
    for path in g["cot_layer_names"]:
        rec = next(r for r in cap.values() if r.layer_path == path)
        torch.testing.assert_close(rec.output.mean((2, 3)), g["channel_means"][path], atol=ATOL, rtol=RTOL)
    # the last block of each stage gives the stage output, CoT or split attention alike
    for s, name in enumerate(["stage1.block1", "stage2.block1", "stage3.block2", "stage4.block1"], start=1):
        torch.testing.assert_close(cap[name].block_output.mean((2, 3)), g["channel_means"][f"layer{s}"],
                                   atol=ATOL, rtol=RTOL)
    assert not cap["stage3.block2"].has_cot
