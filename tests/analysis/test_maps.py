"""The map registry: definitions, head selection, hand-checked values and the kernel orientation."""

from __future__ import annotations

import math

import pytest
import torch

from cotviz.analysis import stats
from cotviz.analysis.maps import (
    DEFAULT_MAPS,
    MAPS,
    block_maps,
    compute_maps,
    dynamic_share_map,
    kernels_at,
    map_key,
    map_statistics,
    parse_map_names,
    select_head,
    taps_for,
)
from cotviz.capture import Record, capture
from cotviz.errors import CaptureError, InvalidArgumentError
from cotviz.layers.cot import CotLayer
from cotviz.ops.aggregation import local_aggregation_reference


@pytest.fixture(scope="module")
def cot_record() -> Record:
    """A real CoT layer (16 channels -> 2 heads, K=3) recorded on a 2 x 16 x 6 x 7 input."""
    gen = torch.Generator().manual_seed(0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        layer = CotLayer(16, 3).eval()
        for m in layer.modules():  # non-trivial BN statistics so every branch carries signal
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    x = torch.randn(2, 16, 6, 7, generator=gen)
    with torch.inference_mode(), capture(layer) as cap:
        layer(x)
    return cap["layer"]


def test_registry_is_complete_and_documented() -> None:
    from cotviz.cli._options import MapName

    assert [m.value for m in MapName] == list(MAPS)  # the CLI choices follow the registry
    assert set(DEFAULT_MAPS) <= set(MAPS)
    for name, spec in MAPS.items():
        assert spec.name == name and spec.units and spec.formula and spec.label and spec.taps
        assert spec.describe()["units"] == spec.units
    assert "softmax" in MAPS["attention_entropy"].label and "nats" in MAPS["attention_entropy"].units


def test_parse_map_names_and_taps() -> None:
    assert parse_map_names(None) == DEFAULT_MAPS
    assert parse_map_names(["output_energy", "attention_energy", "output_energy"]) == ("attention_energy",
                                                                                        "output_energy")
    with pytest.raises(InvalidArgumentError, match="unknown map 'energy'; choose from attention_energy"):
        parse_map_names(["energy"])
    assert taps_for(["dynamic_share"]) == ("static_context", "dynamic_context", "fusion_weights")
    assert taps_for(["output_energy"], attention=True) == ("attention", "output")


def test_select_head() -> None:
    per_head = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).view(2, 3, 2, 2)
    torch.testing.assert_close(select_head(per_head, None), per_head.mean(1))
    torch.testing.assert_close(select_head(per_head, 2), per_head[:, 2])
    with pytest.raises(InvalidArgumentError, match="heads 0..2"):
        select_head(per_head, 3)


def test_dynamic_share_by_hand() -> None:
    k1 = torch.tensor([[[[3.0]], [[0.0]]]])  # (1, 2, 1, 1)
    k2 = torch.tensor([[[[0.0]], [[4.0]]]])
    a = torch.tensor([[[0.5, 0.5], [0.25, 0.75]]])  # (1, 2, 2): [dynamic, static]
    # dynamic: (0.25*4)^2 = 1; static: (0.5*3)^2 = 2.25
    assert dynamic_share_map(k1, k2, a).item() == pytest.approx(1 / 3.25)
    assert dynamic_share_map(k1 * 0, k2 * 0, a).item() == 0.0


def test_maps_of_a_real_record(cot_record: Record) -> None:
    rec = cot_record
    maps = block_maps(rec, list(MAPS))
    for name, m in maps.items():
        assert m.shape == (2, 6, 7) and m.dtype == torch.float32 and torch.isfinite(m).all(), name
    torch.testing.assert_close(maps["attention_energy"], stats.attention_energy(rec).mean(1))
    torch.testing.assert_close(maps["static_energy"], rec.static_context.square().mean(1).sqrt())
    ent = maps["attention_entropy"]
    assert (ent >= 0).all() and (ent <= math.log(9) + 1e-5).all()
    assert ((maps["dynamic_share"] >= 0) & (maps["dynamic_share"] <= 1)).all()
    assert ((maps["center_weight"] > 0) & (maps["center_weight"] < 1)).all()


def test_head_restriction_uses_the_channels_the_head_aggregates(cot_record: Record) -> None:
    rec = cot_record
    m = rec.total_heads
    assert m == 2
    for h in range(m):
        got = block_maps(rec, ["dynamic_energy", "attention_energy", "dynamic_share"], head=h)
        chans = [c for c in range(16) if c % m == h]  # channel c is aggregated with map c % M
        want = rec.dynamic_context[:, chans].square().mean(1).sqrt()
        torch.testing.assert_close(got["dynamic_energy"], want)
        torch.testing.assert_close(got["attention_energy"], stats.attention_energy(rec)[:, h])
        share = dynamic_share_map(rec.static_context[:, chans], rec.dynamic_context[:, chans],
                                  rec.fusion_weights[:, chans])
        torch.testing.assert_close(got["dynamic_share"], share)
    with pytest.raises(InvalidArgumentError, match="out of range"):
        block_maps(rec, ["static_energy"], head=2)


def test_compute_maps_keys(cot_record: Record) -> None:
    out = compute_maps({"layer": cot_record}, ["output_energy", "center_weight"])
    assert list(out) == [map_key("layer", "output_energy"), map_key("layer", "center_weight")]
    assert map_key("stage3.block2", "attention_energy") == "stage3.block2/attention_energy"


def test_kernels_at_is_oriented_like_the_aggregation(cot_record: Record) -> None:
    """kernel[h, kh, kw] is the weight the aggregation gives to the neighbour (r + kh - 1, c + kw - 1)."""
    rec = cot_record
    heads = rec.heads()  # (B, M, 9, H, W)
    r, c = 2, 4
    kern = kernels_at(rec, 1, (r, c))  # (M, 3, 3)
    assert kern.shape == (2, 3, 3)
    for dr in (-1, 0, 1):
        for dc in (-1, 0, 1):
            x = torch.zeros(1, 1, 6, 7)
            x[0, 0, r + dr, c + dc] = 1.0  # a single lit neighbour
            for h in range(2):
                w = heads[1:2, h][:, None, None]  # (1, 1, 1, 9, H, W)
                out = local_aggregation_reference(x, w, 3, 1, 1, 1)  # (1, 1, H, W)
                assert out[0, 0, r, c].item() == pytest.approx(kern[h, dr + 1, dc + 1].item())


def test_map_statistics_and_non_cot_records() -> None:
    s = map_statistics(torch.tensor([[1.0, float("nan")], [3.0, 2.0]]))
    assert s == {"min": 1.0, "max": 3.0, "mean": 2.0}
    assert all(math.isnan(v) for v in map_statistics(torch.tensor([float("nan")])).values())
    from cotviz.models import create_model

    model = create_model("se_cotnetd_50", layers=[1, 1, 2, 1], base_width=16,
                         block_args=dict(conv_dim={16, 32}, c4_dim=64, c4_idx={0}))
    with torch.inference_mode(), capture(model, stages=[3], taps=["output"]) as cap:
        model(torch.randn(1, 3, 64, 64))
    with pytest.raises(CaptureError, match="without a CoT layer"):
        block_maps(cap["stage3.block2"], ["attention_entropy"])
    # the operator's output exists for every operator: its energy is a map of any block
    assert block_maps(cap["stage3.block2"], ["output_energy"])["output_energy"].shape == (1, 4, 4)
