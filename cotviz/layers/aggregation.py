"""Module wrapper of the local k x k aggregation (official ``LocalConvolution``)."""

from __future__ import annotations

from torch import Tensor, nn

from cotviz.ops.aggregation import local_aggregation

__all__ = ["LocalAggregation"]


class LocalAggregation(nn.Module):
    """Parameter-free ``local_conv`` of the official CoT layer.

    ``forward(x, weight)``: x (B, C, H, W), weight (B, heads, Cw, K*K, Ho, Wo) -> (B, heads*C, Ho, Wo),
    channel ``c`` aggregated with map ``c % Cw``. Kept as a module (same name as the official
    ``self.local_conv``) so that profilers and hooks can see it. Its forward is one call of the
    registered operator ``torch.ops.cotviz.local_aggregation`` (:func:`cotviz.ops.local_aggregation`):
    torch.compile, torch.export and fx record it as one node, ``FlopCounterMode`` counts it.
    """

    def __init__(self, channels: int, kernel_size: int, stride: int = 1, padding: int | None = None,
                 dilation: int = 1) -> None:
        super().__init__()
        self.channels = channels
        self.kernel_size = kernel_size
        self.stride = stride
        self.padding = dilation * (kernel_size - 1) // 2 if padding is None else padding
        self.dilation = dilation

    def forward(self, x: Tensor, weight: Tensor) -> Tensor:
        return local_aggregation(x, weight, self.kernel_size, self.stride, self.padding, self.dilation)

    def extra_repr(self) -> str:
        return (f"{self.channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}")
