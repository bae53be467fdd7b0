"""Local relation: per-head dot products of each query with the keys of its k x k window.

The relation of local self-attention (Ramachandran et al. 2019; CoTNet paper Sec. 3.1, ``R = K ⊛ Q``)::

    R[b, head, j, h, w] = sum_{c : c % heads == head} Q[b, c, h, w] * Kpad[b, c, h + dh_j, w + dw_j]

with ``j = kh*K + kw``, ``(dh_j, dw_j) = (kh - K//2, kw - K//2)`` and zero padding (a key outside the
image contributes 0). ``query`` and ``key``: (B, C, H, W); result (B, heads, K*K, H, W). Channel ``c``
belongs to head ``c % heads`` (interleaved), the convention of the local aggregation, so ``softmax(R)``
viewed as (B, 1, heads, K*K, H, W) is a weight :func:`cotviz.ops.local_aggregation` takes as is (channel
``c`` of the values aggregated with head ``c % heads``).

Fast path: the relation *is* the local aggregation's weight gradient. With the aggregation
``agg(x, w)[b, c] = sum_j w[b, 0, c % Cw, j] * xpad[b, c, shifted by j]``, its gradient w.r.t. ``w`` for an
upstream ``g`` is ``grad_w(g, x)[b, 0, cw, j] = sum_{c % Cw == cw} g[b, c] * xpad[b, c, shifted by j]``,
i.e. ``R = grad_w(Q, K)`` with ``Cw = heads``. So :func:`local_relation` calls the registered operator
``torch.ops.cotviz.local_aggregation_grad_weight`` (:mod:`cotviz.ops._library`): its kernel accumulates
the K*K shifted-rectangle products in place and never materialises the K*K-times larger unfolded key
tensor; it is one opaque node for torch.compile / torch.export, has a fake (meta) implementation and a
FLOP formula (``2 * B*C*H*W * K*K``: one multiply-add per channel, tap and pixel), and its autograd
formula is exact to any order: ``dR/dQ`` is ``agg(K, G)`` and ``dR/dK`` is ``grad_x(Q, G)`` for an upstream
``G`` (the adjoint identities ``<grad_w(Q, K), G> = <Q, agg(K, G)> = <K, grad_x(Q, G)>``).

:func:`local_relation_reference` unfolds the keys (K*K times their size); it is the tests' ground truth.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from cotviz.errors import CotvizError
from cotviz.ops import _library  # noqa: F401  (registers torch.ops.cotviz.local_aggregation_grad_weight)

__all__ = ["RelationShapeError", "check_relation", "local_relation", "local_relation_reference"]


class RelationShapeError(CotvizError, ValueError):
    """Query / key / geometry of the local relation do not fit together."""


def check_relation(query: Tensor, key: Tensor, kernel_size: int, heads: int) -> None:
    """Validate the arguments of :func:`local_relation` (raises :class:`RelationShapeError`, one line)."""
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise RelationShapeError(f"local relation needs an odd kernel_size >= 1 (a centred window), got {kernel_size}")
    if query.dim() != 4 or query.shape != key.shape:
        raise RelationShapeError(f"local relation needs query and key of one 4-D shape (B, C, H, W), got "
                                 f"{tuple(query.shape)} and {tuple(key.shape)}")
    c = query.shape[1]
    if heads < 1 or c % heads != 0:
        raise RelationShapeError(f"local relation: heads={heads} must divide the {c} channels")
    if not (query.is_floating_point() and query.dtype == key.dtype and query.device == key.device):
        raise RelationShapeError(f"query and key must share one floating dtype and device, got {query.dtype} on "
                                 f"{query.device} and {key.dtype} on {key.device}")


def local_relation(query: Tensor, key: Tensor, kernel_size: int, heads: int) -> Tensor:
    """Per-head query-key dot products over the k x k window, without unfolding (module docstring).

    Args:
        query, key: (B, C, H, W), contiguous or channels-last; channel ``c`` belongs to head ``c % heads``.
        kernel_size: K (odd); the window is centred and zero-padded ("same" size).
        heads: number of heads; each sums over its ``C / heads`` channels.

    Returns:
        (B, heads, K*K, H, W) in the query's dtype; differentiable w.r.t. both inputs to any order.

    Raises:
        RelationShapeError: (also a ``ValueError``) if shapes, dtypes or the window do not fit.
    """
    check_relation(query, key, kernel_size, heads)
    pad = kernel_size // 2
    r: Tensor = torch.ops.cotviz.local_aggregation_grad_weight(query, key, heads, kernel_size, 1, pad, 1)
    return r.squeeze(1)  # (B, 1, heads, K*K, H, W) -> (B, heads, K*K, H, W)


def local_relation_reference(query: Tensor, key: Tensor, kernel_size: int, heads: int) -> Tensor:
    """The same relation by unfolding the keys: (B, C*K*K, H*W), K*K times the key tensor. Tests only."""
    check_relation(query, key, kernel_size, heads)
    b, c, h, w = query.shape
    kk = kernel_size * kernel_size
    cols = F.unfold(key, kernel_size, padding=kernel_size // 2)  # (B, C*KK, H*W), channel-major
    cols = cols.view(b, c // heads, heads, kk, h, w)  # channel c = g*heads + head
    q = query.reshape(b, c // heads, heads, 1, h, w)  # (B, C/heads, heads, 1, H, W)
    return (cols * q).sum(dim=1)  # (B, heads, KK, H, W)
