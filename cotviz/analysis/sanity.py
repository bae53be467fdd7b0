"""Similarity and localisation metrics for saliency sanity checks (numpy only, exact on hand-made cases).

* :func:`spearman` -- Spearman rank correlation of two maps (Adebayo et al. 2018, "Sanity Checks for Saliency
  Maps": the similarity between the map of the trained network and of a randomised one).
* :func:`upsample_to` -- a map on its feature grid, bilinearly resized to the image (for the masks).
* :func:`relevance_mass_ratio` -- the map's mass inside the mask / the mask's area share (1 = no better than
  uniform; Arras et al. 2022, "CLEVR-XAI", relevance mass accuracy, divided by the area share).
* :func:`pointing_game` -- the map's maximum lies inside the mask (Zhang et al. 2018, "Top-down neural attention
  by excitation backprop").
* :func:`roc_auc` -- the map as a per-pixel predictor of the mask (Mann-Whitney U / (n_in n_out), ties count 1/2).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["pointing_game", "rank", "relevance_mass_ratio", "roc_auc", "spearman", "upsample_to"]


def rank(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n of a 1-D array, ties given the mean of the ranks they span (``scipy.stats.rankdata``)."""
    x = np.asarray(values, dtype=np.float64).ravel()
    order = np.argsort(x, kind="mergesort")
    sorted_x = x[order]
    starts = np.flatnonzero(np.r_[True, sorted_x[1:] != sorted_x[:-1]])  # first index of each run of ties
    ends = np.r_[starts[1:], len(x)]
    mean_rank = (starts + ends + 1) / 2.0  # ranks start..end-1 (0-based) -> mean of start+1..end
    out = np.empty(len(x))
    out[order] = np.repeat(mean_rank, ends - starts)
    return out


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two maps of the same shape (Pearson correlation of their tie-averaged ranks).

    NaN when either map is constant (the correlation is undefined) or holds a non-finite value.
    """
    x, y = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"maps of different sizes: {np.shape(a)} and {np.shape(b)}")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        return float("nan")
    rx, ry = rank(x) - (len(x) + 1) / 2.0, rank(y) - (len(y) + 1) / 2.0  # centred ranks
    den = float(np.sqrt((rx * rx).sum() * (ry * ry).sum()))
    return float((rx * ry).sum() / den) if den > 0 else float("nan")


def upsample_to(values: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(h, w) map -> (H, W) by bilinear interpolation (``align_corners=False``: cell centres on pixel centres of
    a grid of stride H/h, as the figures draw them)."""
    t = torch.as_tensor(np.asarray(values, dtype=np.float32))[None, None]  # (1, 1, h, w)
    return F.interpolate(t, size=size, mode="bilinear", align_corners=False)[0, 0].numpy()  # (H, W)


def _check(values: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    v = np.asarray(values, dtype=np.float64)
    m = np.asarray(mask, dtype=bool)
    if v.shape != m.shape:
        raise ValueError(f"map {v.shape} and mask {m.shape} differ in size")
    return v, m


def relevance_mass_ratio(values: np.ndarray, mask: np.ndarray) -> float:
    """``(sum of the map inside the mask / sum of the map) / (mask area / image area)`` over non-negative maps
    (negative values are clipped to 0 first: a map's "mass" is where it is high).

    1 means the map puts on the object the share a uniform map would; ``1 / area share`` is the most possible.
    NaN for an empty or full mask or a map with no positive mass.
    """
    v, m = _check(values, mask)
    v = np.clip(v, 0, None)
    total, share = float(v.sum()), float(m.mean())
    if total <= 0 or not 0 < share < 1 or not np.isfinite(total):
        return float("nan")
    return float(v[m].sum()) / total / share


def pointing_game(values: np.ndarray, mask: np.ndarray) -> float:
    """1.0 when the map's maximum lies inside the mask, else 0.0 (with several maxima: the share of them inside).
    NaN for an empty mask or a map without finite values."""
    v, m = _check(values, mask)
    if not m.any() or not np.isfinite(v).any():
        return float("nan")
    top = v == np.nanmax(np.where(np.isfinite(v), v, -np.inf))
    return float(m[top].mean())


def roc_auc(values: np.ndarray, mask: np.ndarray) -> float:
    """Area under the ROC curve of the map as a score for "pixel inside the mask": the probability that a random
    pixel inside scores higher than a random pixel outside (ties count 1/2). 0.5 = chance. NaN when the mask is
    empty or full, or the map is not finite."""
    v, m = _check(values, mask)
    n_in, n_out = int(m.sum()), int((~m).sum())
    if n_in == 0 or n_out == 0 or not np.isfinite(v).all():
        return float("nan")
    r = rank(v)
    u = float(r.ravel()[m.ravel()].sum()) - n_in * (n_in + 1) / 2.0  # Mann-Whitney U of the inside pixels
    return u / (n_in * n_out)
