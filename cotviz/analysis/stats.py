"""Summary statistics of captured CoT internals (pure functions; inputs are never modified).

Notation: A is the attention of one head at one position, a vector over the K*K window positions
(k = kh*K + kw). A is a GroupNorm output: signed and NOT a distribution. Where a statistic needs a
distribution it uses softmax over the window, p_k = exp(A_k) / sum_j exp(A_j), and says so in its name.

Attention arguments are accepted as a :class:`~cotviz.capture.Record` (its heads are used), the
official ``w`` (G*B, 1, M, K*K, H, W) together with ``groups=G`` (1 for CoT, 2 for CoXt), or the
head view (B, heads, K*K, H, W) from :meth:`Record.heads`. Heads are numbered group-major.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from cotviz.capture.records import Record, attention_heads
from cotviz.errors import CaptureError

__all__ = [
    "attention_energy", "attention_entropy", "center_weight_share", "context_energy", "fusion_preference",
    "fused_output_energy", "summarize_record",
]


def _heads(attn: Tensor | Record, groups: int) -> Tensor:
    """(B, heads, K*K, H, W) from a record, the official ``w`` or the head view."""
    if isinstance(attn, Record):
        return attn.heads("attention")
    return attention_heads(attn, groups)


def _tensor(x: Tensor | Record, name: str) -> Tensor:
    return x.tensor(name) if isinstance(x, Record) else x


def attention_energy(attn: Tensor | Record, *, groups: int = 1) -> Tensor:
    """L2 norm of the attention over the window: ``E = sqrt(sum_k A_k^2)``.

    Returns (B, heads, H, W) (float32 or wider).
    """
    a = _heads(attn, groups).float()  # (B, heads, KK, H, W)
    return torch.linalg.vector_norm(a, dim=2)


def _is_distribution(attn: Tensor | Record) -> bool:
    """Whether the attention already is a softmax over the window (a record of local self-attention)."""
    return isinstance(attn, Record) and attn.attention_normalization == "softmax"


def attention_entropy(attn: Tensor | Record, *, groups: int = 1) -> Tensor:
    """Entropy in nats of the attention over the K*K window: ``-sum_k p_k log p_k``.

    ``p = softmax_k(A)`` for CoT's A (a GroupNorm output, not a distribution: this is the entropy of its softmax);
    ``p = A`` for a record whose attention already is a softmax (``Record.attention_normalization == "softmax"``,
    local self-attention). In [0, log(K*K)] (log 9 = 2.197 for K = 3: uniform; 0: all weight on one position).
    Returns (B, heads, H, W).
    """
    a = _heads(attn, groups).float()  # (B, heads, KK, H, W)
    if _is_distribution(attn):
        return -(a * a.clamp_min(torch.finfo(a.dtype).tiny).log()).sum(dim=2)  # 0 log 0 = 0
    logp = torch.log_softmax(a, dim=2)  # (B, heads, KK, H, W)
    return -(logp.exp() * logp).sum(dim=2)


def center_weight_share(attn: Tensor | Record, *, groups: int = 1) -> Tensor:
    """Share of the window centre, ``p_c`` with ``c = (K*K - 1) / 2`` and ``p`` as in :func:`attention_entropy`
    (softmax(A) for CoT, A itself for a softmax attention). 1/(K*K) when the attention is flat.
    Returns (B, heads, H, W).
    """
    a = _heads(attn, groups).float()  # (B, heads, KK, H, W)
    kk = a.shape[2]
    k = math.isqrt(kk)
    if k * k != kk or k % 2 == 0:
        raise CaptureError(f"attention window has {kk} positions, not an odd square K*K; no centre")
    return (a if _is_distribution(attn) else torch.softmax(a, dim=2))[:, :, kk // 2]


def context_energy(ctx: Tensor | Record, name: str = "static_context") -> Tensor:
    """RMS over channels: ``sqrt(mean_c x_c^2)`` = L2 over channels / sqrt(C).

    ``ctx`` (B, C, H, W), or a record (then its tensor ``name``: ``static_context``,
    ``dynamic_context`` or ``output``). Returns (B, H, W).
    """
    x = _tensor(ctx, name).float()  # (B, C, H, W)
    return x.square().mean(dim=1).sqrt()


def fused_output_energy(output: Tensor | Record) -> Tensor:
    """RMS over channels of the fused output: ``sqrt(mean_c Y_c^2)``. (B, C, H, W) -> (B, H, W)."""
    return context_energy(output, "output")


def fusion_preference(fusion_weights: Tensor | Record) -> dict[str, Tensor]:
    """How much the fusion favours the dynamic context K2, per sample.

    With a = fusion weights (B, C, 2) (``[..., 0]`` weights K2, ``[..., 1]`` K1, a_0 + a_1 = 1):

    - ``fraction`` (B,): ``mean_c [a_c0 > a_c1]``, the fraction of channels where K2 gets more weight;
    - ``mean_weight`` (B,): ``mean_c a_c0``, the mean weight of K2.
    """
    a = _tensor(fusion_weights, "fusion_weights").float()  # (B, C, 2)
    return {"fraction": (a[..., 0] > a[..., 1]).float().mean(dim=1), "mean_weight": a[..., 0].mean(dim=1)}


def summarize_record(record: Record) -> dict[str, float]:
    """Scalar statistics of one record, each the mean over batch, heads/channels and positions.

    Keys (present when the needed tensor was captured): ``attention_energy``,
    ``softmax_entropy`` (entropy of softmax(A) over the window), ``center_share``,
    ``static_energy``, ``dynamic_energy``, ``output_energy``, ``dynamic_fraction``,
    ``dynamic_weight``, and always ``block_output_energy``.
    """
    out: dict[str, float] = {}
    if record.attention is not None and record.has_cot:
        out["attention_energy"] = attention_energy(record).mean().item()
        out["softmax_entropy"] = attention_entropy(record).mean().item()
        out["center_share"] = center_weight_share(record).mean().item()
    if record.static_context is not None:
        out["static_energy"] = context_energy(record.static_context).mean().item()
    if record.dynamic_context is not None:
        out["dynamic_energy"] = context_energy(record.dynamic_context).mean().item()
    if record.output is not None:
        out["output_energy"] = fused_output_energy(record.output).mean().item()
    if record.fusion_weights is not None:
        share = fusion_preference(record.fusion_weights)
        out["dynamic_fraction"] = share["fraction"].mean().item()
        out["dynamic_weight"] = share["mean_weight"].mean().item()
    out["block_output_energy"] = context_energy(record.block_output).mean().item()
    return out
