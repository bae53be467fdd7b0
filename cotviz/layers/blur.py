"""Anti-aliased downsampling (BlurPool, Zhang 2019), as timm's ``BlurPool2d`` used by SE-CoTNetD-152+."""

from __future__ import annotations

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
        self.register_buffer("filt", self._binomial_filter(), persistent=False)

    def _binomial_filter(self) -> Tensor:
        """(C, 1, f, f): outer product of the binomial coefficients of (0.5 + 0.5 z)^(f-1)."""
        coeffs = torch.tensor([1.0])
        for _ in range(self.filt_size - 1):
            coeffs = torch.cat([coeffs, torch.zeros(1)]) * 0.5 + torch.cat([torch.zeros(1), coeffs]) * 0.5
        return (coeffs[:, None] * coeffs[None, :])[None, None].repeat(self.channels, 1, 1, 1)

    def reset_parameters(self) -> None:
        """Refill the fixed filter (after ``to_empty``, e.g. when the model was built on the meta device)."""
        with torch.no_grad():
            self.filt.copy_(self._binomial_filter())

    def forward(self, x: Tensor) -> Tensor:
        x = F.pad(x, self.padding, mode="reflect")
        return F.conv2d(x, self.filt.to(x.dtype), stride=self.stride, groups=x.shape[1])

    def extra_repr(self) -> str:
        return f"{self.channels}, filt_size={self.filt_size}, stride={self.stride}"
