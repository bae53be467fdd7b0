"""Split-attention conv (ResNeSt, Zhang et al. 2020) with one radix branch, as timm's ``SplitAttnConv2d(radix=1)``.

SE-CoTNetD uses it with ``radix=1`` in the blocks that are not CoT blocks: a KxK conv, BN, act, then a
squeeze-excitation gate (with radix 1 timm's "radix softmax" is a sigmoid). Only that form is
implemented (the official networks use no other). Keys: ``conv``, ``bn0``, ``fc1``, ``bn1``, ``fc2``
(as the official checkpoints).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["SplitAttnConv2d"]


class SplitAttnConv2d(nn.Module):
    """KxK conv, BN, act, then an SE gate from the pooled map. (B, Cin, H, W) -> (B, Cout, H/s, W/s).

    ``fc1`` has ``max(in_channels // reduction_factor, min_attn_chs)`` channels (timm ``attn_chs`` at radix 1).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 dilation: int = 1, groups: int = 1, *, reduction_factor: int = 4, min_attn_chs: int = 32,
                 act_layer: type[nn.Module] = nn.ReLU) -> None:
        super().__init__()
        self.groups = groups
        attn_chs = max(in_channels // reduction_factor, min_attn_chs)
        padding = dilation * (kernel_size - 1) // 2
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation,
                              groups=groups, bias=False)
        self.bn0 = nn.BatchNorm2d(out_channels)
        self.act0 = act_layer(inplace=True)
        self.fc1 = nn.Conv2d(out_channels, attn_chs, 1, groups=groups)
        self.bn1 = nn.BatchNorm2d(attn_chs)
        self.act1 = act_layer(inplace=True)
        self.fc2 = nn.Conv2d(attn_chs, out_channels, 1, groups=groups)

    def forward(self, x: Tensor) -> Tensor:
        x = self.act0(self.bn0(self.conv(x)))  # (B, C, H, W)
        gap = x.mean((2, 3), keepdim=True)  # (B, C, 1, 1)
        gate = torch.sigmoid(self.fc2(self.act1(self.bn1(self.fc1(gap)))))  # (B, C, 1, 1)
        return x * gate
