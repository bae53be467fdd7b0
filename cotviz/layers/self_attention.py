"""Local multi-head self-attention: the ``sa`` operator the CoT paper compares against.

Li et al., "Contextual Transformer Networks for Visual Recognition", Sec. 3.1 (the conventional
self-attention of SASA, Ramachandran et al. 2019, in the CoT paper's notation). On x (B, C, H, W),
with ``heads = C / share_planes`` (C/8, as many attention maps as a CoT layer) and channel ``c`` in head
``c % heads`` for Q, K and V alike::

    Q, K, V = query(x), key(x), value(x)        three 1x1 convs, no bias
    R  = K ⊛ Q                                  local relation: per head, the dot products of each query with
                                                the keys of its k x k window (zero padded): (B, heads, k², H, W)
    R^ = R + P ⊛ Q                              relative position: P (k², C/heads) learnt, shared by the heads
    A  = softmax_j(R^)                          over the k² window, per head and pixel: a real distribution
    Y  = act(bn(V ⊛ A))                         local aggregation (channel c with map c % heads), BN, ReLU

No 1/sqrt(d) scaling (the paper's formula has none). At the border the window includes zero-padded
positions: their relation is 0 (plus the position term) and their value 0, so every window's weights
still sum to 1. Taps: ``attention`` (A as (B, 1, heads, k², H, W), the layout of CoT's attention tap --
here probabilities, not GroupNorm outputs) and ``output``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from cotviz.layers.aggregation import LocalAggregation
from cotviz.layers.tap import Tap, fx_leaf_call
from cotviz.ops.relation import local_relation

__all__ = ["LocalRelation", "LocalSelfAttention"]


class LocalRelation(nn.Module):
    """Parameter-free module of :func:`cotviz.ops.relation.local_relation` (visible to hooks and profilers).

    ``forward(query, key)``: (B, C, H, W) twice -> (B, heads, K*K, H, W).
    """

    def __init__(self, heads: int, kernel_size: int) -> None:
        super().__init__()
        self.heads = heads
        self.kernel_size = kernel_size

    def forward(self, query: Tensor, key: Tensor) -> Tensor:
        traced = fx_leaf_call(self, query, key)  # one fx node: its shape checks cannot run on Proxies
        if traced is not None:
            return traced  # type: ignore[return-value]
        return local_relation(query, key, self.kernel_size, self.heads)

    def extra_repr(self) -> str:
        return f"heads={self.heads}, kernel_size={self.kernel_size}"


class LocalSelfAttention(nn.Module):
    """Local multi-head self-attention over k x k windows (module docstring). Stride 1; (B, C, H, W) -> same.

    Args:
        dim: channels C in and out.
        kernel_size: k, the window (odd).
        share_planes: channels per head (C / share_planes heads).
        groups: groups of the three 1x1 convs (the skeleton's cardinality; 1 in SASA).
        act_layer: activation after the BN.

    Keys: ``query.weight``, ``key.weight``, ``value.weight`` (C, C/groups, 1, 1), ``rel_pos`` (k², C/heads),
    ``bn.*``.
    """

    #: What the ``attention`` tap holds: a softmax over the k x k window (a distribution per head and pixel).
    attention_normalization = "softmax"

    def __init__(self, dim: int, kernel_size: int = 3, *, share_planes: int = 8, groups: int = 1,
                 act_layer: type[nn.Module] = nn.ReLU) -> None:
        super().__init__()
        self.dim = dim
        self.kernel_size = kernel_size
        self.share_planes = share_planes
        self.groups = groups
        self.heads = dim // share_planes
        self.query = nn.Conv2d(dim, dim, 1, groups=groups, bias=False)
        self.key = nn.Conv2d(dim, dim, 1, groups=groups, bias=False)
        self.value = nn.Conv2d(dim, dim, 1, groups=groups, bias=False)
        self.rel_pos = nn.Parameter(torch.empty(kernel_size * kernel_size, share_planes))  # (k², C/heads)
        self.relation = LocalRelation(self.heads, kernel_size)
        self.attend = nn.Softmax(dim=2)
        self.local_conv = LocalAggregation(dim, kernel_size, stride=1, padding=kernel_size // 2)
        self.bn = nn.BatchNorm2d(dim)
        self.act = act_layer(inplace=True)
        self.attention = Tap()
        self.output = Tap()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The relative-position table ~ N(0, (C/heads)^-1) (timm's relative position embeddings); the convs and
        BN keep their own initialisers."""
        nn.init.normal_(self.rel_pos, std=self.share_planes**-0.5)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        q, k, v = self.query(x), self.key(x), self.value(x)  # (B, C, H, W) each
        r = self.relation(q, k)  # (B, heads, k², H, W)
        qh = q.view(b, self.share_planes, self.heads, h, w)  # channel c = d*heads + head: (B, C/heads, heads, H, W)
        pos = torch.einsum("jd,bdnhw->bnjhw", self.rel_pos, qh)  # P ⊛ Q: (B, heads, k², H, W)
        a = self.attend(r + pos)  # softmax over the k² window: (B, heads, k², H, W)
        a = self.attention(a.unsqueeze(1))  # (B, 1, heads, k², H, W)
        y = self.local_conv(v, a)  # (B, C, H, W); channel c with map c % heads
        return self.output(self.act(self.bn(y)))

    def extra_repr(self) -> str:
        return f"{self.dim}, kernel_size={self.kernel_size}, heads={self.heads}"
