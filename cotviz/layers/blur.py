"""Anti-aliased downsampling (BlurPool, Zhang 2019), as timm's ``BlurPool2d`` used by SE-CoTNetD-152+."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["BlurPool2d"]


class BlurPool2d(nn.Module):
    """Depthwise binomial blur then subsample: reflect-pad, ``[1,2,1]^T [1,2,1] / 16`` filter (3x3), stride 2.

    The filter is a non-persistent buffer, so it adds no state_dict keys (as in the official model).
    (B, C, H, W) -> (B, C, ceil(H/2), ceil(W/2)) for filt_size 3, stride 2.
    """

    def __init__(self, channels: int, filt_size: int = 3, stride: int = 2) -> None:
        super().__init__()
        self.channels = channels
        self.filt_size = filt_size
        self.stride = stride
        pad = ((stride - 1) + (filt_size - 1)) // 2  # timm get_padding(filt_size, stride, dilation=1)
        self.padding = (pad, pad, pad, pad)
        self.filt: Tensor
        self.register_buffer("filt", torch.empty(channels, 1, filt_size, filt_size), persistent=False)
        self.reset_parameters()

    def _binomial_filter(self) -> Tensor:
        """(f, f) on the CPU: outer product of the binomial coefficients of (0.5 + 0.5 z)^(f-1)."""
        n = self.filt_size - 1
        coeffs = torch.tensor([math.comb(n, k) / 2**n for k in range(n + 1)])
        return coeffs[:, None] * coeffs[None, :]

    def reset_parameters(self) -> None:
        """Fill the fixed filter (C, 1, f, f); nothing to fill on the meta device (the model is then built
        there and allocated and re-initialised later, see :func:`cotviz.create_model`)."""
        if self.filt.is_meta:
            return
        with torch.no_grad():
            self.filt.copy_(self._binomial_filter().expand_as(self.filt))

    def forward(self, x: Tensor) -> Tensor:
        x = F.pad(x, self.padding, mode="reflect")
        return F.conv2d(x, self.filt.to(x.dtype), stride=self.stride, groups=x.shape[1])

    def extra_repr(self) -> str:
        return f"{self.channels}, filt_size={self.filt_size}, stride={self.stride}"
