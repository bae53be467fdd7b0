"""Contextual Transformer layers: CoT (CoTNet) and CoXt (CoTNeXt).

Li, Yao, Pan, Mei, "Contextual Transformer Networks for Visual Recognition", arXiv 2107.12292
(TPAMI 2023), Sec. 3.2 and Fig. 2; reproduces ``CotLayer`` / ``CoXtLayer`` of the official
``models/cotnet.py`` (JDAI-CV/CoTNet), module for module, so the official state_dict keys load as is.

One CoT layer on x (B, C, H, W)::

    K1 = key_embed(x)                         static context: KxK grouped conv (groups 4), BN, ReLU
    A  = GroupNorm(embed([x, K1]))            local KxK attention, C/8 maps, NOT softmax-normalised
    V  = conv1x1(x)                           values: 1x1 conv, BN
    K2 = SiLU(BN(aggregate(V, A)))            dynamic context; channel c uses map c % (C/8)
    a  = softmax(se(mean_hw(K1 + K2)))        radix-2 split attention, (B, C, 2): [dynamic, static]
    Y  = a[..., 0] * K2 + a[..., 1] * K1

Taps (named parameter-free submodules, see ``../shared/DESIGN.md``): ``static_context``,
``attention``, ``dynamic_context``, ``fusion_weights``, ``output``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cotviz.layers.aggregation import LocalAggregation
from cotviz.layers.tap import Tap

__all__ = ["CotLayer", "CoXtLayer", "TAP_NAMES"]

#: The taps every CoT/CoXt layer exposes, in forward order.
TAP_NAMES: tuple[str, ...] = ("static_context", "attention", "dynamic_context", "fusion_weights", "output")


class CotLayer(nn.Module):
    """The CoT block's spatial operator (stride 1; the network pools before it to downsample).

    Args:
        dim: channels C in and out.
        kernel_size: K of the local attention window (and of the static-context conv by default).
        key_kernel_size: K of the static-context conv alone (``None``: ``kernel_size``; Table 6 of the paper).
        share_planes: channels sharing one attention map; C/share_planes maps per position.
        factor: channel reduction of the first 1x1 conv of ``embed`` (2C -> C/factor).
        key_groups: groups of the KxK static-context conv.
        radix: number of fused branches (dynamic, static).
        reduction_factor: channel reduction of the fusion ``se`` bottleneck (at least ``min_attn_chs``).
        cardinality: 1 for CoT; >1 gives the CoXt layer (grouped 1x1 convs, interleaved concat).

    Shapes: (B, C, H, W) -> (B, C, H, W).
    """

    #: What the ``attention`` tap holds: GroupNorm outputs (signed; not a distribution over the window).
    attention_normalization = "groupnorm"

    def __init__(self, dim: int, kernel_size: int = 3, *, key_kernel_size: int | None = None,
                 share_planes: int = 8, factor: int = 2,
                 key_groups: int = 4, radix: int = 2, reduction_factor: int = 4, min_attn_chs: int = 32,
                 cardinality: int = 1) -> None:
        super().__init__()
        self.dim = dim
        self.kernel_size = kernel_size
        self.share_planes = share_planes
        self.radix = radix
        self.cardinality = cardinality
        g = cardinality
        num_maps = dim // share_planes  # attention maps per position, over all groups
        key_k = kernel_size if key_kernel_size is None else key_kernel_size
        self.key_kernel_size = key_k
        self.key_embed = nn.Sequential(
            nn.Conv2d(dim, dim, key_k, stride=1, padding=key_k // 2, groups=key_groups, bias=False),
            nn.BatchNorm2d(dim),
            nn.ReLU(inplace=True),
        )
        self.embed = nn.Sequential(
            nn.Conv2d(2 * dim, dim // factor, 1, groups=g, bias=False),
            nn.BatchNorm2d(dim // factor),
            nn.ReLU(inplace=True),
            nn.Conv2d(dim // factor, kernel_size * kernel_size * num_maps, 1, groups=g),
            nn.GroupNorm(num_groups=num_maps, num_channels=kernel_size * kernel_size * num_maps),
        )
        self.conv1x1 = nn.Sequential(
            nn.Conv2d(dim, dim, kernel_size=1, groups=g, bias=False),
            nn.BatchNorm2d(dim),
        )
        self.local_conv = LocalAggregation(dim // g, kernel_size, stride=1, padding=(kernel_size - 1) // 2)
        self.bn = nn.BatchNorm2d(dim)
        self.act = nn.SiLU(inplace=True)
        attn_chs = max(dim * radix // reduction_factor, min_attn_chs)
        self.se = nn.Sequential(
            nn.Conv2d(dim, attn_chs, 1),
            nn.BatchNorm2d(attn_chs),
            nn.ReLU(inplace=True),
            nn.Conv2d(attn_chs, radix * dim, 1),
        )
        self.static_context = Tap()
        self.attention = Tap()
        self.dynamic_context = Tap()
        self.fusion_weights = Tap()
        self.output = Tap()

    def _query_key(self, x: Tensor, k: Tensor) -> Tensor:
        """[x, K1] as the official layer concatenates it: (B, 2C, H, W)."""
        if self.cardinality == 1:
            return torch.cat([x, k], dim=1)  # (B, 2C, H, W): x channels, then K1 channels
        b, c, h, w = x.shape
        # CoXt interleaves: (B, C, 2, H, W) -> (B, 2C, H, W) = x0, k0, x1, k1, ...
        return torch.stack([x, k], dim=2).reshape(b, 2 * c, h, w)  # a copy only for channels-last inputs

    def _contexts(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(K1, K2), both (B, C, H, W), through their taps (and the attention through its tap)."""
        b, c, h, w = x.shape
        g, kk = self.cardinality, self.kernel_size * self.kernel_size
        maps = self.dim // self.share_planes // g  # attention maps per group, C/(8g); explicit so B = 0 works
        k = self.static_context(self.key_embed(x))  # (B, C, H, W)
        attn = self.embed(self._query_key(x, k))  # (B, KK*C/8, H, W)
        # (B*g, 1, C/(8g), KK, H, W): group j of sample i sits at batch index i*g + j. reshape, not view:
        # for CoXt (g = 2) a channels-last tensor cannot merge B with the group dimension without a copy
        attn = self.attention(attn.reshape(b * g, 1, maps, kk, h, w))
        v = self.conv1x1(x).reshape(b * g, c // g, h, w)  # (B*g, C/g, H, W)
        v = self.local_conv(v, attn).reshape(b, c, h, w)  # (B, C, H, W)
        return k, self.dynamic_context(self.act(self.bn(v)))  # K1, K2

    def forward(self, x: Tensor) -> Tensor:
        b, c = x.shape[:2]
        k, v = self._contexts(x)  # (B, C, H, W) each
        gap = v.mean((2, 3), keepdim=True) + k.mean((2, 3), keepdim=True)  # (B, C, 1, 1): mean of K2 + K1
        logits = self.se(gap).view(b, c, self.radix)  # (B, C, radix)
        a = self.fusion_weights(F.softmax(logits, dim=2))  # (B, C, 2): [dynamic, static]
        # a0 K2 + a1 K1 = K1 + a0 (K2 - K1), as a1 = 1 - a0 (softmax over 2): one pass (lerp) instead of a
        # product and a multiply-add (1.5 vs 2.5 ms at B=8, C=64, 56x56, CPU, 1 thread); equal to float rounding
        out = torch.lerp(k, v, a[:, :, 0, None, None])  # (B, C, H, W)
        return self.output(out)


class CoXtLayer(CotLayer):
    """CoTNeXt's layer (official ``CoXtLayer``): a CoT layer in ``cardinality`` (=2) groups.

    Differences to :class:`CotLayer`: [x, K1] is concatenated channel-interleaved; ``embed`` and
    ``conv1x1`` 1x1 convs are grouped; the KxK static-context conv has 8 groups; the attention
    tensor is (2B, 1, C/16, K*K, H, W) (group ``j`` of sample ``i`` at batch index ``2i + j``), and
    the value channels of group j (C/2 of them) use that group's C/16 maps, channel c with map c % (C/16).
    """

    def __init__(self, dim: int, kernel_size: int = 3, *, cardinality: int = 2, key_groups: int = 8,
                 **kwargs: int) -> None:
        super().__init__(dim, kernel_size, cardinality=cardinality, key_groups=key_groups, **kwargs)
