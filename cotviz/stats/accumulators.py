"""Streaming statistics of many series at once, mergeable exactly: moments, extremes, fixed-bin histograms.

A *series* is one (class?, block, head, map) of a run; a run has ``S`` of them, fixed before the first image
(:class:`~cotviz.stats.layout.Layout`). Everything is a tensor over the series axis, so one batch updates every
series in a handful of vectorised ops and ``torch.distributed`` collectives merge whole accumulators:

* ``count`` (S,) int64 finite samples, ``nonfinite`` (S,) int64 NaN/Inf samples (kept out of everything else),
  ``hist`` (S, bins + 2) int64 -- column 0 counts values below the series' ``lo``, columns 1..bins the fixed
  uniform bins of ``[lo, hi]`` (``hi`` itself in the last one), column bins+1 values above ``hi`` -- all merged by
  summing (integers: exact in any order), ``minimum`` / ``maximum`` (S,) float64 merged by min / max (exact).
* mean and variance: per-batch moments ``(n, mean, M2)`` (two passes over the batch, float64 accumulation), merged
  with Chan et al.'s parallel formula (:meth:`Moments.merge`, Chan, Golub & LeVeque 1979/1983)::

      n = na + nb;  d = mb - ma;  mean = ma + d * nb / n;  M2 = M2a + M2b + d^2 * na * nb / n

  Floating-point merges are not associative, so the order of merges is fixed by the data, not by how the work
  was split: batch ``g`` of the global batch sequence is a leaf of one canonical binary tree, and
  :class:`MomentTree` merges two subtrees exactly when they are the two halves of an aligned dyadic block
  (a binary counter). Any split of the batches into contiguous runs -- ranks, checkpoint/resume segments --
  merged in order reproduces the single-pass tree, so the moments come out bit for bit the same.

Inputs are never modified.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from cotviz.errors import InvalidArgumentError

__all__ = ["QUANTILES", "Accumulator", "BatchPartial", "MomentTree", "Moments", "histogram_quantiles"]

#: Quantiles reported for every series (read from the histogram, see :func:`histogram_quantiles`).
QUANTILES: tuple[float, ...] = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)


@dataclass(frozen=True)
class Moments:
    """Count, mean and sum of squared deviations (M2) of ``S`` series: three (S,) float64 tensors.

    ``n`` is stored as float64 (exact for counts below 2**53). An empty series has ``n = mean = M2 = 0``.
    """

    n: Tensor
    mean: Tensor
    m2: Tensor

    @staticmethod
    def zeros(size: int) -> Moments:
        z = torch.zeros(size, dtype=torch.float64)
        return Moments(z, z.clone(), z.clone())

    def merge(self, other: Moments) -> Moments:
        """Chan's parallel combination of two disjoint sample sets (an empty side is an exact identity)."""
        n = self.n + other.n
        safe = torch.where(n > 0, n, torch.ones_like(n))
        delta = other.mean - self.mean
        mean = torch.where(n > 0, self.mean + delta * (other.n / safe), torch.zeros_like(n))
        m2 = torch.where(n > 0, self.m2 + other.m2 + delta * delta * (self.n * other.n / safe), torch.zeros_like(n))
        return Moments(n, mean, m2)

    @property
    def variance(self) -> Tensor:
        """Population variance ``M2 / n`` (NaN for an empty series)."""
        return torch.where(self.n > 0, self.m2 / self.n.clamp_min(1), torch.full_like(self.n, float("nan")))

    def stack(self) -> Tensor:
        """(3, S) float64: n, mean, M2."""
        return torch.stack([self.n, self.mean, self.m2])

    @staticmethod
    def unstack(t: Tensor) -> Moments:
        return Moments(t[0].clone(), t[1].clone(), t[2].clone())


@dataclass
class MomentTree:
    """The moments of a contiguous run of global batches, merged along the canonical binary tree.

    ``entries``: ``(start, size, moments)`` of aligned dyadic blocks of batches, left to right; pushing block
    ``[start, start + size)`` merges the top two entries while they are the two halves of one aligned block
    ``[k * 2s, (k + 1) * 2s)``. A run of ``N`` batches keeps at most ``log2(N) + 1`` entries per gap.
    """

    size: int
    entries: list[tuple[int, int, Moments]] = field(default_factory=list)

    @property
    def end(self) -> int | None:
        """First batch after the run (None when empty)."""
        if not self.entries:
            return None
        start, size, _ = self.entries[-1]
        return start + size

    def push(self, start: int, size: int, moments: Moments) -> None:
        """Append the block ``[start, start + size)`` (it must follow the run and be aligned dyadic)."""
        if size < 1 or size & (size - 1) or start % size:
            raise InvalidArgumentError(f"batch block [{start}, {start + size}) is not an aligned power-of-two block")
        if self.end is not None and start != self.end:
            raise InvalidArgumentError(f"batch block {start} does not follow the run, which ends at {self.end}")
        self.entries.append((start, size, moments))
        while len(self.entries) >= 2:
            (s0, z0, m0), (_, z1, m1) = self.entries[-2], self.entries[-1]
            if z0 != z1 or s0 % (2 * z0):
                break
            self.entries[-2:] = [(s0, 2 * z0, m0.merge(m1))]

    def extend(self, other: MomentTree) -> None:
        """Append ``other``'s run, which must start where this one ends."""
        for start, size, m in other.entries:
            self.push(start, size, m)

    def total(self) -> Moments:
        """All batches: the entries folded left to right (the same fold however the run was split)."""
        out = Moments.zeros(self.size)
        for _, _, m in self.entries:
            out = out.merge(m)
        return out

    def to_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """``(blocks (E, 2) int64 [start, size], moments (E, 3, S) float64)`` for a checkpoint or a collective."""
        blocks = np.array([[s, z] for s, z, _ in self.entries], dtype=np.int64).reshape(-1, 2)
        mom = np.stack([m.stack().numpy() for _, _, m in self.entries]) if self.entries else \
            np.zeros((0, 3, self.size))
        return blocks, mom

    @staticmethod
    def from_arrays(size: int, blocks: np.ndarray, moments: np.ndarray) -> MomentTree:
        tree = MomentTree(size)
        for (s, z), m in zip(blocks.tolist(), moments, strict=True):
            tree.push(int(s), int(z), Moments.unstack(torch.from_numpy(np.array(m, dtype=np.float64))))
        return tree


class BatchPartial:
    """The statistics of one batch for every series (a series not observed in the batch stays empty).

    Fill it with :meth:`observe`, one call per group of series that share a sample count; each series at most
    once per batch.
    """

    def __init__(self, lo: Tensor, hi: Tensor, bins: int) -> None:
        s = lo.shape[0]
        self.lo, self.hi, self.bins = lo, hi, bins
        self.count = torch.zeros(s, dtype=torch.int64)
        self.nonfinite = torch.zeros(s, dtype=torch.int64)
        self.minimum = torch.full((s,), float("inf"), dtype=torch.float64)
        self.maximum = torch.full((s,), float("-inf"), dtype=torch.float64)
        self.hist = torch.zeros(s, bins + 2, dtype=torch.int64)
        self.moments = Moments.zeros(s)
        self._seen = torch.zeros(s, dtype=torch.bool)

    def observe(self, index: Tensor, values: Tensor) -> None:
        """Record ``values`` (K, N) as the samples of series ``index`` (K,) (any float dtype, any device).

        Two passes in the samples' precision (float32; float16 / bfloat16 are widened first), results in float64:
        the mean ``sum(x) / n`` (cascade summation), then ``M2 = sum(d^2) - (sum d)^2 / n`` with ``d = x - mean``
        (the second term corrects for the mean rounded to float32); min / max; the histogram (:meth:`_bins`). Per batch the mean and M2 are good to ~1e-6 relative (float32 rounding,
        the precision of the maps themselves); across batches everything merges in float64.
        Non-finite values are counted in ``nonfinite`` and left out of everything else.
        """
        if values.ndim != 2 or values.shape[0] != index.shape[0]:
            raise InvalidArgumentError(f"values must be (K, N) for K = {index.shape[0]} series, got "
                                       f"{tuple(values.shape)}")
        idx = index.cpu()
        if bool(self._seen[idx].any()):
            raise InvalidArgumentError("a series was observed twice in one batch")
        self._seen[idx] = True
        x = values.detach()
        if x.dtype not in (torch.float32, torch.float64):
            x = x.float()
        k, total = x.shape
        dev = x.device
        sums = x.sum(dim=1)  # (K,) cascade summation in the samples' precision
        dense = bool(torch.isfinite(sums).all())  # every sample finite (else the sum is NaN or infinite)
        finite = None if dense else torch.isfinite(x)  # (K, N)
        if finite is None:
            xs = x
            n = torch.full((k,), total, dtype=torch.int64, device=dev)
        else:
            xs = torch.where(finite, x, torch.zeros_like(x))
            n = finite.sum(dim=1)
            sums = xs.sum(dim=1)
        nf = n.to(torch.float64)
        mean = sums.double() / nf.clamp_min(1)  # (K,)
        d = xs - mean.to(x.dtype)[:, None]  # (K, N) deviations from the (rounded) mean
        if finite is not None:
            d.masked_fill_(~finite, 0)
        sd = d.sum(dim=1).double()
        m2 = (d * d).sum(dim=1).double()  # (K,) (faster than linalg.vecdot here)
        m2 = (m2 - sd * sd / nf.clamp_min(1)).clamp_min(0)  # about the float64 mean
        if total == 0:
            mn = torch.full((k,), float("inf"), dtype=torch.float64, device=dev)
            mx = -mn
        elif finite is None:
            mn, mx = x.amin(dim=1).double(), x.amax(dim=1).double()  # (torch.aminmax along a dim: ~10x slower)
        else:
            mn = torch.where(finite, x, torch.full_like(x, float("inf"))).amin(dim=1).double()
            mx = torch.where(finite, x, torch.full_like(x, float("-inf"))).amax(dim=1).double()
        hist = self._bins(idx, xs, finite)
        self.count[idx] = n.cpu()
        self.nonfinite[idx] = (total - n).cpu()
        self.moments.n[idx] = nf.cpu()
        self.moments.mean[idx] = mean.cpu()
        self.moments.m2[idx] = m2.cpu()
        self.minimum[idx] = mn.cpu()
        self.maximum[idx] = mx.cpu()
        self.hist[idx] = hist.cpu()


    def _bins(self, idx: Tensor, xs: Tensor, finite: Tensor | None) -> Tensor:
        """(K, bins + 2) counts of ``xs`` (K, N): bin ``floor((x - lo) * bins / (hi - lo))`` computed in the samples'
        precision, ``hi`` itself in the last bin, column 0 below ``lo``, the last column above ``hi``; non-finite
        values (``finite`` False) are left out. One vectorised pass over all rows (``bincount`` of row-offset bins)."""
        b = self.bins
        k = xs.shape[0]
        lo, hi = self.lo[idx], self.hi[idx]
        if bool((lo == lo[0]).all() and (hi == hi[0]).all()):  # one range for all rows (always, from the runner)
            lo_t: Tensor | float = float(lo[0])
            hi_t: Tensor | float = float(hi[0])
            scale: Tensor | float = b / (float(hi[0]) - float(lo[0]))
        else:
            lo_t, hi_t = lo.to(xs.device, xs.dtype)[:, None], hi.to(xs.device, xs.dtype)[:, None]  # (K, 1)
            scale = (b / (hi - lo)).to(xs.device, xs.dtype)[:, None]
        t = (xs - lo_t).mul_(scale).floor_().clamp_(-1, b - 1)  # (K, N): -1 below lo, 0 .. b-1 inside (hi: b-1)
        t.masked_fill_(xs > hi_t, b)  # above hi
        t += (torch.arange(k, device=xs.device, dtype=t.dtype) * (b + 2) + 1)[:, None]  # row offset, column
        pos = t.to(torch.int64)
        flat = pos.reshape(-1) if finite is None else pos[finite]
        return torch.bincount(flat, minlength=k * (b + 2)).reshape(k, b + 2).cpu()  # (K, b+2)


class Accumulator:
    """The statistics of a contiguous run of global batches for ``S`` series (see the module docstring).

    Args:
        lo, hi: (S,) float64 histogram range of each series (fixed for the whole run, identical on all ranks).
        bins: uniform bins between ``lo`` and ``hi``.
    """

    def __init__(self, lo: Tensor, hi: Tensor, bins: int) -> None:
        if bins < 1:
            raise InvalidArgumentError(f"bins must be at least 1, got {bins}")
        if lo.shape != hi.shape or lo.ndim != 1 or not bool((hi > lo).all()):
            raise InvalidArgumentError("histogram ranges must be (S,) with hi > lo")
        s = lo.shape[0]
        self.lo, self.hi, self.bins = lo.to(torch.float64), hi.to(torch.float64), bins
        self.count = torch.zeros(s, dtype=torch.int64)
        self.nonfinite = torch.zeros(s, dtype=torch.int64)
        self.minimum = torch.full((s,), float("inf"), dtype=torch.float64)
        self.maximum = torch.full((s,), float("-inf"), dtype=torch.float64)
        self.hist = torch.zeros(s, bins + 2, dtype=torch.int64)
        self.tree = MomentTree(s)

    @property
    def size(self) -> int:
        return int(self.lo.shape[0])

    def partial(self) -> BatchPartial:
        """An empty partial with this accumulator's series and bins, to fill with one batch."""
        return BatchPartial(self.lo, self.hi, self.bins)

    def _absorb(self, other: Accumulator | BatchPartial) -> None:
        """Counts and histograms summed, extremes by min / max (exact in any order; the moments go by the tree)."""
        self.count += other.count
        self.nonfinite += other.nonfinite
        self.minimum = torch.minimum(self.minimum, other.minimum)
        self.maximum = torch.maximum(self.maximum, other.maximum)
        self.hist += other.hist

    def add(self, batch: int, partial: BatchPartial) -> None:
        """Add global batch number ``batch`` (the batch after the last one added)."""
        self._absorb(partial)
        self.tree.push(batch, 1, partial.moments)

    def merge(self, other: Accumulator) -> Accumulator:
        """A new accumulator of this run followed by ``other``'s (which starts where this one ends)."""
        self._check_compatible(other)
        out = self.copy()
        out._absorb(other)
        out.tree.extend(other.tree)
        return out

    def _check_compatible(self, other: Accumulator) -> None:
        if other.size != self.size or other.bins != self.bins or not torch.equal(other.lo, self.lo) \
                or not torch.equal(other.hi, self.hi):
            raise InvalidArgumentError("accumulators of different series or histogram ranges cannot be merged")

    def copy(self) -> Accumulator:
        out = Accumulator(self.lo.clone(), self.hi.clone(), self.bins)
        out.count, out.nonfinite = self.count.clone(), self.nonfinite.clone()
        out.minimum, out.maximum, out.hist = self.minimum.clone(), self.maximum.clone(), self.hist.clone()
        out.tree = MomentTree(self.size, list(self.tree.entries))
        return out

    def moments(self) -> Moments:
        return self.tree.total()

    # -------------------------------------------------------------------------------------- persistence

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Plain arrays (no objects): what a checkpoint stores."""
        blocks, mom = self.tree.to_arrays()
        return {"lo": self.lo.numpy(), "hi": self.hi.numpy(), "bins": np.array(self.bins, dtype=np.int64),
                "count": self.count.numpy(), "nonfinite": self.nonfinite.numpy(), "minimum": self.minimum.numpy(),
                "maximum": self.maximum.numpy(), "hist": self.hist.numpy(), "tree_blocks": blocks,
                "tree_moments": mom}

    @staticmethod
    def from_arrays(arrays: dict[str, np.ndarray]) -> Accumulator:
        """Inverse of :meth:`to_arrays` (shapes checked)."""
        lo = torch.from_numpy(np.array(arrays["lo"], dtype=np.float64))
        hi = torch.from_numpy(np.array(arrays["hi"], dtype=np.float64))
        acc = Accumulator(lo, hi, int(arrays["bins"]))
        s, b = acc.size, acc.bins
        expect = {"count": (s,), "nonfinite": (s,), "minimum": (s,), "maximum": (s,), "hist": (s, b + 2)}
        for key, shape in expect.items():
            if tuple(arrays[key].shape) != shape:
                raise InvalidArgumentError(f"checkpoint array {key} has shape {tuple(arrays[key].shape)}, "
                                           f"expected {shape}")
        acc.count = torch.from_numpy(np.array(arrays["count"], dtype=np.int64))
        acc.nonfinite = torch.from_numpy(np.array(arrays["nonfinite"], dtype=np.int64))
        acc.minimum = torch.from_numpy(np.array(arrays["minimum"], dtype=np.float64))
        acc.maximum = torch.from_numpy(np.array(arrays["maximum"], dtype=np.float64))
        acc.hist = torch.from_numpy(np.array(arrays["hist"], dtype=np.int64))
        mom = np.asarray(arrays["tree_moments"], dtype=np.float64)
        if mom.ndim != 3 or mom.shape[1:] != (3, s):
            raise InvalidArgumentError(f"checkpoint moments have shape {mom.shape}, expected (E, 3, {s})")
        acc.tree = MomentTree.from_arrays(s, np.asarray(arrays["tree_blocks"], dtype=np.int64), mom)
        return acc

    def equal(self, other: Accumulator) -> bool:
        """Bit-for-bit equality of every statistic (NaN-free by construction)."""
        a, b = self.moments(), other.moments()
        return (self.size == other.size and torch.equal(self.count, other.count)
                and torch.equal(self.nonfinite, other.nonfinite) and torch.equal(self.hist, other.hist)
                and torch.equal(self.minimum, other.minimum) and torch.equal(self.maximum, other.maximum)
                and torch.equal(a.n, b.n) and torch.equal(a.mean, b.mean) and torch.equal(a.m2, b.m2))


def histogram_quantiles(hist: np.ndarray, lo: np.ndarray, hi: np.ndarray, minimum: np.ndarray,
                        maximum: np.ndarray, qs: Sequence[float] = QUANTILES) -> np.ndarray:
    """Quantiles ``qs`` of every series from its histogram: (S, bins + 2) counts -> (S, len(qs)).

    The q-quantile is the value where the cumulative count reaches ``q * n``, linearly interpolated inside its
    bin (values spread evenly within a bin); the under- and overflow bins span ``[min, lo)`` and ``(hi, max]``,
    and the result is clamped to ``[min, max]``. Exact to within one bin width ``(hi - lo) / bins`` inside the
    range. NaN for an empty series.
    """
    h = np.asarray(hist, dtype=np.float64)  # (S, b+2)
    s, width = h.shape
    b = width - 2
    n = h.sum(axis=1)  # (S,)
    frac = np.linspace(0.0, 1.0, b + 1)  # (b+1,)
    inner = lo[:, None] + (hi - lo)[:, None] * frac[None, :]  # (S, b+1) regular edges
    left = np.concatenate([np.minimum(minimum, lo)[:, None], inner], axis=1)  # (S, b+2) left edge of each column
    right = np.concatenate([inner, np.maximum(maximum, hi)[:, None]], axis=1)  # (S, b+2) right edges
    left[:, 0] = np.where(np.isfinite(left[:, 0]), left[:, 0], lo)
    right[:, -1] = np.where(np.isfinite(right[:, -1]), right[:, -1], hi)
    cum = np.cumsum(h, axis=1)  # (S, b+2)
    out = np.full((s, len(qs)), np.nan)
    rows = np.arange(s)
    for j, q in enumerate(qs):
        target = q * n  # (S,)
        col = np.argmax(cum >= target[:, None] - 1e-9 * np.maximum(n, 1)[:, None], axis=1)  # first column reaching
        before = np.where(col > 0, cum[rows, np.maximum(col - 1, 0)], 0.0)
        inside = h[rows, col]
        t = np.where(inside > 0, (target - before) / np.where(inside > 0, inside, 1.0), 0.0)
        value = left[rows, col] + np.clip(t, 0.0, 1.0) * (right[rows, col] - left[rows, col])
        value = np.clip(value, minimum, maximum)
        out[:, j] = np.where(n > 0, value, np.nan)
    return out
