"""Summary statistics: each formula checked on hand-made tensors with known answers."""

from __future__ import annotations

import math

import pytest
import torch

from cotviz.analysis.stats import (
    attention_energy,
    attention_entropy,
    center_weight_share,
    context_energy,
    fused_output_energy,
    fusion_preference,
    summarize_record,
)
from cotviz.capture import Record, capture
from cotviz.errors import CaptureError
from cotviz.layers import CotLayer, CoXtLayer


def _attn(values: torch.Tensor, b: int = 1, m: int = 1, h: int = 2, w: int = 3) -> torch.Tensor:
    """Official layout (B, 1, M, K*K, H, W) with the window ``values`` at every head and position."""
    return values[None, None, None, :, None, None].expand(b, 1, m, values.numel(), h, w).clone()


def test_flat_attention() -> None:
    a = _attn(torch.full((9,), -0.7))
    assert torch.allclose(attention_energy(a), torch.full((1, 1, 2, 3), 0.7 * 3.0))  # sqrt(9 * 0.49)
    assert torch.allclose(attention_entropy(a), torch.full((1, 1, 2, 3), math.log(9.0)))
    assert torch.allclose(center_weight_share(a), torch.full((1, 1, 2, 3), 1 / 9))


def test_peaked_attention() -> None:
    v = torch.zeros(9)
    v[4] = 50.0  # centre dominates after softmax
    a = _attn(v)
    assert torch.allclose(attention_energy(a), torch.full((1, 1, 2, 3), 50.0))
    assert attention_entropy(a).abs().max() < 1e-15
    assert torch.allclose(center_weight_share(a), torch.ones(1, 1, 2, 3))
    v = torch.zeros(9)
    v[0] = math.log(8.0)  # softmax: 8/16 on the corner, 1/16 on each of the other 8
    a = _attn(v)
    p = torch.tensor([0.5] + [1 / 16] * 8)
    assert torch.allclose(attention_entropy(a), -(p * p.log()).sum().expand(1, 1, 2, 3))
    assert torch.allclose(center_weight_share(a), torch.full((1, 1, 2, 3), 1 / 16))
    assert torch.allclose(attention_energy(a), torch.full((1, 1, 2, 3), math.log(8.0)))


def test_coxt_layout_heads_are_group_major() -> None:
    # (2B, 1, M, 9, H, W) with B = 1, G = 2, M = 2: head g*M + m gets energy 10*g + m + 1 at its centre
    a = torch.zeros(2, 1, 2, 9, 1, 1)
    for g in range(2):
        for m in range(2):
            a[g, 0, m, 4] = 10 * g + m + 1
    e = attention_energy(a, groups=2)
    assert e.shape == (1, 4, 1, 1)
    assert e.flatten().tolist() == [1.0, 2.0, 11.0, 12.0]
    assert attention_energy(a, groups=1).shape == (2, 2, 1, 1)  # read as CoT: two samples


def test_context_energy_is_rms_over_channels() -> None:
    x = torch.zeros(2, 4, 1, 2)
    x[0, :, 0, 0] = torch.tensor([1.0, -1.0, 1.0, -1.0])  # RMS 1
    x[1, :, 0, 1] = torch.tensor([2.0, 0.0, 0.0, 0.0])  # RMS sqrt(4/4) = 1
    x[1, :, 0, 0] = 3.0
    expected = torch.tensor([[[1.0, 0.0]], [[3.0, 1.0]]])
    assert torch.allclose(context_energy(x), expected)
    assert torch.allclose(fused_output_energy(x), expected)


def test_fusion_preference() -> None:
    w0 = torch.tensor([[0.9, 0.6, 0.2, 0.5], [0.1, 0.1, 0.1, 0.7]])
    fw = torch.stack([w0, 1 - w0], dim=-1)  # (B=2, C=4, 2)
    share = fusion_preference(fw)
    assert share["fraction"].tolist() == [0.5, 0.25]  # 0.5 vs 0.5 is not "favours K2"
    assert torch.allclose(share["mean_weight"], torch.tensor([0.55, 0.25]))


def test_inputs_are_not_modified() -> None:
    a = torch.randn(1, 1, 2, 9, 3, 3)
    fw = torch.softmax(torch.randn(1, 16, 2), -1)
    before = (a.clone(), fw.clone())
    attention_energy(a), attention_entropy(a), center_weight_share(a), fusion_preference(fw)
    assert torch.equal(a, before[0]) and torch.equal(fw, before[1])


def test_non_square_window_has_no_centre() -> None:
    with pytest.raises(CaptureError, match="odd square"):
        center_weight_share(torch.zeros(1, 1, 1, 8, 2, 2))


@pytest.mark.parametrize("cls", [CotLayer, CoXtLayer])
def test_record_inputs_and_summary(cls: type[CotLayer]) -> None:
    layer = cls(32).eval()
    x = torch.randn(2, 32, 5, 5)
    with capture(layer) as cap:
        layer(x)
    rec: Record = cap["layer"]
    heads = rec.heads()  # (B, C/8, 9, H, W)
    assert attention_energy(rec).shape == (2, 4, 5, 5)
    assert torch.equal(attention_energy(rec), attention_energy(rec.attention, groups=rec.groups))
    assert torch.equal(attention_entropy(rec), attention_entropy(heads))
    assert torch.equal(center_weight_share(rec), center_weight_share(heads))
    assert torch.equal(context_energy(rec, "dynamic_context"), context_energy(rec.dynamic_context))
    s = summarize_record(rec)
    assert set(s) == {"attention_energy", "softmax_entropy", "center_share", "static_energy", "dynamic_energy",
                      "output_energy", "dynamic_fraction", "dynamic_weight", "block_output_energy"}
    assert 0.0 <= s["softmax_entropy"] <= math.log(9.0) and 0.0 <= s["dynamic_fraction"] <= 1.0
    assert s["dynamic_weight"] == pytest.approx(rec.fusion_weights[..., 0].mean().item())
    with capture(layer, taps=["output"]) as cap:
        layer(x)
    assert set(summarize_record(cap["layer"])) == {"output_energy", "block_output_energy"}
    with pytest.raises(CaptureError, match="attention was not captured"):
        attention_energy(cap["layer"])
