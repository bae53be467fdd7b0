"""Split-attention conv (ResNeSt, Zhang et al. 2020), as timm's ``SplitAttnConv2d``.

SE-CoTNetD uses it with ``radix=1`` in the blocks that are not CoT blocks: a 3x3 conv, BN, act, then a
squeeze-excitation gate (with radix 1 the "radix softmax" is a sigmoid). Keys: ``conv``, ``bn0``,
``fc1``, ``bn1``, ``fc2`` (as the official checkpoints).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["SplitAttnConv2d"]


class SplitAttnConv2d(nn.Module):
    """KxK conv with split attention over ``radix`` branches. (B, Cin, H, W) -> (B, Cout, H/s, W/s)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 dilation: int = 1, groups: int = 1, *, radix: int = 1, reduction_factor: int = 4,
                 min_attn_chs: int = 32, act_layer: type[nn.Module] = nn.ReLU) -> None:
        super().__init__()
        self.radix = radix
        self.groups = groups
        mid_chs = out_channels * radix
        attn_chs = max(in_channels * radix // reduction_factor, min_attn_chs)
        padding = dilation * (kernel_size - 1) // 2
        self.conv = nn.Conv2d(in_channels, mid_chs, kernel_size, stride, padding, dilation,
                              groups=groups * radix, bias=False)
        self.bn0 = nn.BatchNorm2d(mid_chs)
        self.act0 = act_layer(inplace=True)
        self.fc1 = nn.Conv2d(out_channels, attn_chs, 1, groups=groups)
        self.bn1 = nn.BatchNorm2d(attn_chs)
        self.act1 = act_layer(inplace=True)
        self.fc2 = nn.Conv2d(attn_chs, mid_chs, 1, groups=groups)

    def _radix_softmax(self, logits: Tensor) -> Tensor:
        """timm ``RadixSoftmax``: softmax over the radix per cardinal group, sigmoid when radix == 1."""
        b = logits.shape[0]
        if self.radix == 1:
            return torch.sigmoid(logits)
        logits = logits.view(b, self.groups, self.radix, -1).transpose(1, 2)  # (B, radix, groups, C/groups)
        return torch.softmax(logits, dim=1).reshape(b, -1, 1, 1)  # (B, radix*C, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.act0(self.bn0(self.conv(x)))  # (B, radix*C, H, W)
        b, rc, h, w = x.shape
        if self.radix > 1:
            xs = x.view(b, self.radix, rc // self.radix, h, w)  # (B, radix, C, H, W)
            gap = xs.sum(dim=1)
        else:
            gap = x
        gap = gap.mean((2, 3), keepdim=True)  # (B, C, 1, 1)
        attn = self.fc2(self.act1(self.bn1(self.fc1(gap))))  # (B, radix*C, 1, 1)
        attn = self._radix_softmax(attn).view(b, -1, 1, 1)
        if self.radix > 1:
            return (xs * attn.view(b, self.radix, rc // self.radix, 1, 1)).sum(dim=1)
        return x * attn
