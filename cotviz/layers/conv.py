"""Plain KxK convolution + BN + activation: the ResNet bottleneck's 3x3 operator (the baseline)."""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["ConvBnAct"]


class ConvBnAct(nn.Module):
    """``conv`` (KxK, no bias, ``groups``) -> ``bn`` -> ``act``. (B, Cin, H, W) -> (B, Cout, H/s, W/s)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 dilation: int = 1, groups: int = 1, *, act_layer: type[nn.Module] = nn.ReLU) -> None:
        super().__init__()
        padding = dilation * (kernel_size - 1) // 2
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation,
                              groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.act = act_layer(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(self.conv(x)))
