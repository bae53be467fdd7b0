"""The CoT paper's Table 5 ablations: ways of exploiting the two contexts, built from the CoT layer's parts.

Li et al., "Contextual Transformer Networks for Visual Recognition", Sec. 4.4 / Table 5 (CoTNet-50
skeleton, ImageNet top-1 in parentheses, CoT itself 79.2). With the official layer's names
(:class:`~cotviz.layers.cot.CotLayer`): K1 = ``key_embed(x)`` (the static context) and
K2 = ``act(bn(local_conv(conv1x1(x), GroupNorm(embed([x, K1])))))`` (the dynamic context)::

    static    Y = K1                                   (77.1)  only key_embed is kept
    dynamic   Y = K2                                   (78.5)  K1 still feeds the attention; no fusion
    linear    Y = K1 + K2                              (78.7)  no fusion
    concat    Y = BN(Conv1x1_{2C->C}(cat[K1, K2]))     (78.9)  ``fuse.0`` (1x1, no bias), ``fuse.1`` (BN)

Each is a :class:`CotLayer` subclass without the parts it does not use (``se`` and the
``fusion_weights`` tap everywhere; also ``embed``, ``conv1x1``, ``local_conv``, ``bn``, ``act`` and the
``attention`` / ``dynamic_context`` taps for ``static``), so every key it keeps has the official name
and shape, and it exposes the taps it has: ``static_context`` and ``output`` (static), plus
``attention`` and ``dynamic_context`` (the others). Code that meets an ``isinstance(m, CotLayer)`` must
not assume the parts a subclass removed. Cardinality > 1 gives the CoXt form of the same parts.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from cotviz.layers.cot import CotLayer

__all__ = ["CotConcat", "CotDynamic", "CotLinear", "CotStatic"]


class CotStatic(CotLayer):
    """Static context only: Y = K1 = ReLU(BN(KxK grouped conv(x))). (B, C, H, W) -> (B, C, H, W).

    Taps: ``static_context``, ``output``; keys ``key_embed.{0,1}``.
    """

    def __init__(self, dim: int, kernel_size: int = 3, **kwargs: Any) -> None:
        super().__init__(dim, kernel_size, **kwargs)
        for name in ("embed", "conv1x1", "local_conv", "bn", "act", "se",
                     "attention", "dynamic_context", "fusion_weights"):
            delattr(self, name)

    def forward(self, x: Tensor) -> Tensor:
        return self.output(self.static_context(self.key_embed(x)))  # (B, C, H, W)


class _Unfused(CotLayer):
    """CoT's two contexts without the radix-2 fusion (``se``, ``fusion_weights`` removed); subclasses combine them."""

    def __init__(self, dim: int, kernel_size: int = 3, **kwargs: Any) -> None:
        super().__init__(dim, kernel_size, **kwargs)
        del self.se, self.fusion_weights


class CotDynamic(_Unfused):
    """Dynamic context only: Y = K2 (K1 still computed: it feeds the attention). Taps: all but ``fusion_weights``."""

    def forward(self, x: Tensor) -> Tensor:
        _, v = self._contexts(x)
        return self.output(v)


class CotLinear(_Unfused):
    """Linear fusion: Y = K1 + K2. Taps: all but ``fusion_weights``."""

    def forward(self, x: Tensor) -> Tensor:
        k, v = self._contexts(x)
        return self.output(k + v)


class CotConcat(_Unfused):
    """Concatenation fusion: Y = BN(Conv1x1_{2C->C}(cat[K1, K2])). Taps: all but ``fusion_weights``.

    Extra keys: ``fuse.0.weight`` (C, 2C, 1, 1), ``fuse.1.*`` (BN of C).
    """

    def __init__(self, dim: int, kernel_size: int = 3, **kwargs: Any) -> None:
        super().__init__(dim, kernel_size, **kwargs)
        self.fuse = nn.Sequential(nn.Conv2d(2 * dim, dim, 1, bias=False), nn.BatchNorm2d(dim))

    def forward(self, x: Tensor) -> Tensor:
        k, v = self._contexts(x)
        return self.output(self.fuse(torch.cat([k, v], dim=1)))  # (B, 2C, H, W) -> (B, C, H, W)
