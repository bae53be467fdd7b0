"""Exact, hand-computed counts on small modules, under both conventions (captum ``BasicModel_*`` style).

Every expected number below is written out from the layer's shapes, not taken from the counter.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cotviz.layers import BlurPool2d, CotLayer, CoXtLayer, LocalAggregation
from cotviz.profile import build_report, count_model
from cotviz.profile.counting import CountResult
from cotviz.profile.rules import ACT, CONV, DATA, ELEMENTWISE, LINEAR, LOCAL_AGG, NORM, POOL


def _meta(factory: type[nn.Module] | object, *args: object, **kwargs: object) -> nn.Module:
    with torch.device("meta"):
        return factory(*args, **kwargs)  # type: ignore[operator]


def _complete(r: CountResult, kind: str | None = None) -> int:
    return sum(o.macs for o in r.ops if kind is None or o.kind == kind)


def _official(r: CountResult) -> int:
    return sum(c.macs for c in r.official)


def test_conv_with_groups_and_bias() -> None:
    conv = _meta(nn.Conv2d, 8, 16, 3, stride=2, padding=1, groups=4, bias=True)
    r = count_model(conv, (2, 8, 10, 10))
    # out (2, 16, 5, 5) = 800 elements, each (8/4) * 3*3 = 18 MACs, plus one bias add each
    assert _complete(r, CONV) == 800 * 18 + 800 == 15_200
    # official: K*K*Cin/groups*Cout*Ho*Wo*B + Cout*Ho*Wo*B = 9*8/4*16*25*2 + 16*25*2
    assert _official(r) == 9 * 2 * 16 * 25 * 2 + 16 * 25 * 2 == 15_200
    assert r.params == 16 * 2 * 3 * 3 + 16 == 304


def test_conv_without_bias_and_dilation() -> None:
    conv = _meta(nn.Conv2d, 4, 6, 3, padding=2, dilation=2, bias=False)
    r = count_model(conv, (1, 4, 7, 7))
    # out (1, 6, 7, 7) = 294 elements, 4 * 9 = 36 MACs each
    assert _complete(r) == _official(r) == 294 * 36 == 10_584


def test_linear_bias_counted_only_in_complete() -> None:
    fc = _meta(nn.Linear, 10, 5)
    r = count_model(fc, (3, 10))
    assert _complete(r, LINEAR) == 3 * 5 * 10 + 3 * 5 == 165  # addmm: M*N*K + M*N bias adds
    assert _official(r) == 3 * 10 * 5 == 150  # official hook: in * out (times batch), no bias


class _Agg(nn.Module):
    """Feeds a (B, C, H, W) tensor and a (B, 1, Cw, K*K, H, W) weight into a LocalAggregation."""

    def __init__(self, channels: int, cw: int, k: int) -> None:
        super().__init__()
        self.cw, self.k = cw, k
        self.local_conv = LocalAggregation(channels, k)

    def forward(self, x: Tensor) -> Tensor:
        b, _, h, w = x.shape
        weight = x.new_empty(b, 1, self.cw, self.k * self.k, h, w)  # (B, 1, Cw, K*K, H, W)
        return self.local_conv(x, weight)


def test_local_aggregation_counted_once_as_its_own_type() -> None:
    m = _meta(_Agg, 6, 3, 3)
    r = count_model(m, (2, 6, 5, 5))
    # B * C * K*K * H * W = 2 * 6 * 9 * 25
    agg = [o for o in r.ops if o.kind == LOCAL_AGG]
    assert len(agg) == 1 and agg[0].macs == 2 * 6 * 9 * 25 == 2_700
    assert agg[0].module == "local_conv" and agg[0].op == "LocalAggregation"
    assert _complete(r) == 2_700  # the kernel's internal multiply-adds are not counted a second time
    assert _official(r) == 2_700  # here in_channels == C: no quirk
    assert not [o for o in r.ops if o.kind is None]


def test_coxt_local_aggregation_double_count_is_official_only() -> None:
    layer = _meta(CoXtLayer, 32, 3)
    r = count_model(layer, (1, 32, 6, 6))
    true = 1 * 32 * 9 * 6 * 6  # B * C * K*K * H * W
    assert _complete(r, LOCAL_AGG) == true == 10_368
    local = [c for c in r.official if c.module_type == "LocalAggregation"]
    # official: input.shape[0] (2B) * in_channels (C) * K*K * Ho * Wo
    assert [c.macs for c in local] == [2 * 32 * 9 * 6 * 6] == [2 * true]


def _by_module(r: CountResult) -> dict[str, int]:
    out: dict[str, int] = {}
    for o in r.ops:
        out[o.module] = out.get(o.module, 0) + o.macs
    return out


def test_cot_layer_counted_by_hand_under_both_conventions() -> None:
    """CotLayer(16) on (1, 16, 5, 5): every op written out from the layer's shapes (C=16, N=H*W=25, K*K=9,
    C/8=2 maps, embed width C/2=8, fusion width max(2C/4, 32)=32)."""
    layer = _meta(CotLayer, 16)
    r = count_model(layer, (1, 16, 5, 5))
    complete = {
        "key_embed.0": 400 * 16 // 4 * 9,  # KxK conv, groups 4: 400 outputs x (C/4)*9
        "key_embed.1": 2 * 400, "key_embed.2": 400,  # BN, ReLU
        "embed.0": 200 * 32,  # 1x1 conv 2C -> C/2: 200 outputs x 2C
        "embed.1": 2 * 200, "embed.2": 200,
        "embed.3": 450 * 8 + 450,  # 1x1 conv C/2 -> 9*2 with bias: 450 outputs x 8, + bias
        "embed.4": 4 * 450,  # GroupNorm
        "conv1x1.0": 400 * 16, "conv1x1.1": 2 * 400,
        "local_conv": 16 * 9 * 25,  # C * K*K * H*W, once
        "bn": 2 * 400, "act": 400,
        "se.0": 32 * 16 + 32, "se.1": 2 * 32, "se.2": 32, "se.3": 32 * 32 + 32,  # on the (1, C, 1, 1) gap
        # the layer's own ops: two means (numel in), their sum, softmax (3/element), k*a, addcmul (2/element)
        "": 400 + 400 + 16 + 3 * 32 + 400 + 2 * 400,
    }
    assert {k: v for k, v in _by_module(r).items() if v} == complete
    assert sum(complete.values()) == _complete(r) == 44_258
    # official: the same per leaf module (conv with bias, BN x2, acts, pools numel); no GroupNorm, no functional ops
    official = {k: v for k, v in complete.items() if k not in ("", "embed.4")}
    assert {c.module: c.macs for c in r.official} == official
    assert _official(r) == 44_258 - 2_112 - 1_800


class _NoAggregation(CotLayer):
    """A CoT-layer subclass whose 3x3 slot holds no local aggregation (a comparison operator's shape)."""

    def __init__(self, dim: int) -> None:
        super().__init__(dim)
        del self.local_conv
        self.mix = nn.Conv2d(dim, dim, 3, padding=1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.mix(self.key_embed(x))


def test_cot_subclass_without_local_conv_counts() -> None:
    r = count_model(_meta(_NoAggregation, 8), (2, 8, 4, 4))  # raised AttributeError before
    out = 2 * 8 * 16  # (2, 8, 4, 4)
    assert _complete(r, CONV) == out * 8 // 4 * 9 + out * 8 * 9  # grouped key conv + the 3x3 mix
    assert _complete(r, LOCAL_AGG) == 0 and not [o for o in r.ops if o.kind is None]
    assert _official(r) == out * 2 * 9 + 2 * out + out + out * 8 * 9  # conv, BN (x2), ReLU, conv


class _EinsumAggregation(LocalAggregation):
    """The same aggregation, computed by unfold + multiply + sum instead of the cotviz kernel (stride 1)."""

    def forward(self, x: Tensor, weight: Tensor) -> Tensor:
        b, c, h, w = x.shape
        cw, kk = weight.shape[2], self.kernel_size ** 2
        cols = F.unfold(x, self.kernel_size, padding=self.padding).view(b, c // cw, cw, kk, h, w)
        return (cols * weight.view(b, 1, cw, kk, h, w)).sum(3).view(b, c, h, w)  # (B, C, H, W)


def test_aggregation_is_counted_at_its_module_whatever_runs_inside() -> None:
    m = _meta(_Agg, 6, 3, 3)
    m.local_conv = _EinsumAggregation(6, 3)
    r = count_model(m, (2, 6, 5, 5))
    assert [(o.module, o.kind, o.macs) for o in r.ops if o.macs] == [("local_conv", LOCAL_AGG, 2 * 6 * 9 * 25)]
    assert not [o for o in r.ops if o.kind is None]  # im2col, mul, sum inside: neither counted nor uncounted
    assert _official(r) == 0  # the official counter hooks exact types only (ptflops)


@pytest.mark.parametrize("affine, official", [(True, 2 * 72), (False, 72)])
def test_batchnorm(affine: bool, official: int) -> None:
    bn = _meta(nn.BatchNorm2d, 4, affine=affine)
    r = count_model(bn, (2, 4, 3, 3))  # 72 elements
    assert _complete(r, NORM) == 2 * 72  # folded scale and shift per element
    assert _official(r) == official  # ptflops: numel, x2 if affine


def test_groupnorm_complete_only_and_listed_by_official() -> None:
    gn = _meta(nn.GroupNorm, 2, 4)
    r = count_model(gn, (2, 4, 3, 3))  # 72 elements
    assert _complete(r, NORM) == 4 * 72 == 288  # sum x, sum x^2, one folded multiply-add
    assert _official(r) == 0
    rep = build_report(r, model="gn", convention="official")
    assert [(u.op, u.module_type, u.calls, u.macs_complete) for u in rep.uncounted] == [
        ("aten.native_group_norm", "GroupNorm", 1, 288)]


def test_activations_and_pools() -> None:
    m = _meta(nn.Sequential, nn.ReLU(), nn.SiLU(), nn.MaxPool2d(3, 2, 1), nn.AdaptiveAvgPool2d(1))
    r = count_model(m, (1, 2, 8, 8))  # 128 elements; max-pool output (1, 2, 4, 4) = 32
    assert _complete(r, ACT) == 128 + 128
    assert _complete(r, POOL) == 32 * 9 + 32  # window of 9 per output; adaptive pool: numel(input)
    assert _official(r) == 128 + 128 + 128 + 32  # acts numel(out); pools numel(in)


class _Functional(nn.Module):
    """The functional ops a module hook cannot see: softmax, cat, mean, a fused multiply-add, a residual add."""

    def forward(self, x: Tensor) -> Tensor:
        a = F.softmax(x, dim=1)  # 3 per element
        y = torch.cat([x, a], dim=1)  # data movement
        g = y.mean((2, 3), keepdim=True)  # numel(in)
        z = x * g[:, :2] + a  # mul + add
        z += x  # residual add (in place)
        return z


def test_functional_ops_counted_and_official_lists_them() -> None:
    m = _meta(_Functional)
    r = count_model(m, (1, 2, 3, 3))  # 18 elements
    assert _complete(r, ACT) == 3 * 18
    assert _complete(r, POOL) == 36  # mean over the (1, 4, 3, 3) concat
    assert _complete(r, ELEMENTWISE) == 18 + 18 + 18
    assert sum(o.kind == DATA for o in r.ops) >= 1  # cat (and the slice view)
    assert _official(r) == 0
    rep = build_report(r, model="f", convention="official")
    listed = {u.op for u in rep.uncounted}
    assert {"aten._softmax", "aten.mean", "aten.mul", "aten.add", "aten.add_"} <= listed
    assert sum(u.macs_complete or 0 for u in rep.uncounted) == _complete(r)


class _Unknown(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return torch.cumsum(x, dim=1) + 1.0


def test_unknown_op_is_listed_never_silently_zero() -> None:
    r = count_model(_meta(_Unknown), (1, 4))
    unknown = [o for o in r.ops if o.kind is None]
    assert [o.op for o in unknown] == ["aten.cumsum"]
    for convention in ("complete", "official"):
        rep = build_report(r, model="u", convention=convention)
        row = [u for u in rep.uncounted if u.op == "aten.cumsum"]
        assert row and row[0].macs_complete is None and row[0].calls == 1
        assert any("no counting rule" in n for n in rep.notes)


def test_blurpool_is_pooling_and_skipped_by_official() -> None:
    blur = _meta(BlurPool2d, 4)
    r = count_model(blur, (1, 4, 8, 8))
    # reflect pad (data movement), then a depthwise 3x3 conv, stride 2: out (1, 4, 4, 4) = 64, 9 MACs each
    assert _complete(r, POOL) == 64 * 9 == 576
    assert _complete(r, CONV) == 0
    assert _official(r) == 0


class _Shared(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4, bias=False)
        self.again = self.fc  # the same parameters registered twice

    def forward(self, x: Tensor) -> Tensor:
        return self.again(self.fc(x))


def test_shared_parameters_counted_once_calls_twice() -> None:
    r = count_model(_meta(_Shared), (2, 4))
    assert r.params == 16  # equal to sum(numel) over model.parameters()
    assert _complete(r, LINEAR) == 2 * (2 * 4 * 4)  # two calls, mm: M*N*K each


def test_real_model_is_counted_on_a_meta_copy_and_left_untouched() -> None:
    conv = nn.Conv2d(3, 4, 3, padding=1)
    before = conv.weight.detach().clone()
    r = count_model(conv, (1, 3, 5, 5))
    assert _complete(r) == 4 * 25 * 27 + 4 * 25
    assert conv.weight.device.type == "cpu" and torch.equal(conv.weight.detach(), before)
    assert conv.training  # the train/eval flag is restored


def test_hooks_are_removed_after_success_and_failure() -> None:
    conv = _meta(nn.Conv2d, 3, 4, 3)
    count_model(conv, (1, 3, 5, 5))
    assert not conv._forward_hooks and not conv._forward_pre_hooks
    with pytest.raises(RuntimeError):
        count_model(conv, (1, 2, 5, 5))  # wrong channel count: the forward fails
    assert not conv._forward_hooks and not conv._forward_pre_hooks


def test_local_relation_is_counted_once_at_its_module() -> None:
    """sa's K ⊛ Q: every (head, window tap, position) output is a dot product over the head's C/heads channels."""
    from cotviz.layers.self_attention import LocalRelation
    from cotviz.profile.counting import count_model
    from cotviz.profile.report import build_report

    class Wrap(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rel = LocalRelation(heads=4, kernel_size=3)

        def forward(self, x: Tensor) -> Tensor:
            return self.rel(x, x)

    rep = build_report(count_model(Wrap(), (2, 16, 5, 5)), model="rel")
    macs = {o.type: o.macs for o in rep.operators if o.macs}
    assert macs == {"local relation": 2 * 4 * 9 * 5 * 5 * (16 // 4)} and not rep.uncounted
