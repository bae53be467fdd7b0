"""Accumulators: exact merges (any split of the batches gives the single-pass bits), moments, histograms, quantiles."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cotviz.errors import InvalidArgumentError
from cotviz.stats.accumulators import Accumulator, Moments, MomentTree, histogram_quantiles

K = 3  # series
LO = torch.tensor([0.0, -1.0, 0.0], dtype=torch.float64)
HI = torch.tensor([1.0, 1.0, 10.0], dtype=torch.float64)


def _batches(seed: int, count: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        n = int(torch.randint(0, 7, (1,), generator=gen))
        x = (torch.randn(K, n, generator=gen) * 3).float()  # values beyond [lo, hi] too: under/overflow bins
        if n and float(torch.rand(1, generator=gen)) < 0.3:
            x[0, 0] = float("nan")
        out.append(x)
    return out


def _run(batches: list[torch.Tensor], first: int, bins: int = 8) -> Accumulator:
    acc = Accumulator(LO, HI, bins)
    for g, x in enumerate(batches, start=first):
        part = acc.partial()
        part.observe(torch.arange(K), x)
        acc.add(g, part)
    return acc


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), count=st.integers(1, 40), cuts=st.lists(st.integers(1, 39), max_size=6))
def test_any_split_merged_in_order_gives_the_single_pass_bits(seed: int, count: int, cuts: list[int]) -> None:
    batches = _batches(seed, count)
    whole = _run(batches, 0)
    points = sorted({c for c in cuts if c < count})
    bounds = [0, *points, count]
    parts = [_run(batches[a:b], a) for a, b in zip(bounds, bounds[1:], strict=False)]
    merged = parts[0]
    for p in parts[1:]:
        merged = merged.merge(p)
    assert merged.equal(whole)
    # associativity: (a + b) + c == a + (b + c), bit for bit
    if len(parts) >= 3:
        right = parts[1].merge(parts[2])
        assert parts[0].merge(parts[1]).merge(parts[2]).equal(parts[0].merge(right))


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), count=st.integers(1, 25))
def test_moments_histogram_and_extremes_match_numpy(seed: int, count: int) -> None:
    batches = _batches(seed, count)
    acc = _run(batches, 0)
    allx = torch.cat(batches, dim=1).double().numpy()  # (K, N)
    mom = acc.moments()
    for k in range(K):
        x = allx[k][np.isfinite(allx[k])]
        assert int(acc.count[k]) == x.size
        assert int(acc.nonfinite[k]) == np.count_nonzero(~np.isfinite(allx[k]))
        if x.size == 0:
            assert float(mom.n[k]) == 0 and float(mom.mean[k]) == 0
            continue
        scale = float(np.abs(x).max())  # float32 arithmetic per batch, float64 across batches
        assert float(mom.mean[k]) == pytest.approx(x.mean(), rel=1e-6, abs=1e-6 * scale)
        assert float(mom.variance[k]) == pytest.approx(x.var(), rel=1e-5, abs=1e-6 * scale ** 2)
        assert float(acc.minimum[k]) == x.min() and float(acc.maximum[k]) == x.max()
        lo, hi = float(LO[k]), float(HI[k])
        inner, _ = np.histogram(x[(x >= lo) & (x <= hi)], bins=8, range=(lo, hi))
        expect = np.concatenate([[np.count_nonzero(x < lo)], inner, [np.count_nonzero(x > hi)]])
        assert acc.hist[k].tolist() == expect.tolist()


def test_chan_merge_of_two_halves_equals_numpy_within_rounding() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(1e3, 1e-2, 10_001)  # a large mean and a small spread: naive sums would lose the variance
    def mom(v: np.ndarray) -> Moments:
        t = torch.from_numpy(v)
        return Moments(torch.tensor([float(v.size)], dtype=torch.float64), t.mean()[None],
                       ((t - t.mean()) ** 2).sum()[None])
    m = mom(x[:3000]).merge(mom(x[3000:]))
    assert float(m.mean[0]) == pytest.approx(x.mean(), rel=1e-15)
    assert float(m.variance[0]) == pytest.approx(x.var(), rel=1e-9)
    empty = Moments.zeros(1)
    assert torch.equal(empty.merge(m).mean, m.mean) and torch.equal(m.merge(empty).m2, m.m2)


def test_quantiles_from_the_histogram_are_within_one_bin() -> None:
    rng = np.random.default_rng(2)
    x = rng.beta(2, 5, 20_000)
    lo, hi, bins = np.array([0.0]), np.array([1.0]), 64
    inner, _ = np.histogram(x, bins=bins, range=(0, 1))
    hist = np.concatenate([[0], inner, [0]])[None]
    qs = histogram_quantiles(hist, lo, hi, np.array([x.min()]), np.array([x.max()]), (0.05, 0.5, 0.95))
    assert np.all(np.abs(qs[0] - np.quantile(x, [0.05, 0.5, 0.95])) <= 1 / bins)
    empty = histogram_quantiles(np.zeros((1, bins + 2)), lo, hi, np.array([np.inf]), np.array([-np.inf]), (0.5,))
    assert np.isnan(empty[0, 0])


def test_tree_refuses_gaps_and_unaligned_blocks_and_round_trips() -> None:
    tree = MomentTree(1)
    tree.push(4, 1, Moments.zeros(1))
    with pytest.raises(InvalidArgumentError, match="does not follow"):
        tree.push(6, 1, Moments.zeros(1))
    with pytest.raises(InvalidArgumentError, match="aligned"):
        tree.push(5, 2, Moments.zeros(1))
    acc = _run(_batches(3, 11), 5)
    back = Accumulator.from_arrays(acc.to_arrays())
    assert back.equal(acc) and [(s, z) for s, z, _ in back.tree.entries] == [(5, 1), (6, 2), (8, 8)]


def test_a_series_is_observed_once_per_batch() -> None:
    part = Accumulator(LO, HI, 4).partial()
    part.observe(torch.tensor([1]), torch.zeros(1, 3))
    with pytest.raises(InvalidArgumentError, match="twice"):
        part.observe(torch.tensor([1, 2]), torch.zeros(2, 3))
