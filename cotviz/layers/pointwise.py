"""1x1 convolutions through oneDNN on CPU, where PyTorch's dispatcher would not pick it.

``torch.nn.functional.conv2d`` on a CPU float32 tensor chooses between oneDNN (``aten::mkldnn_convolution``) and
its native GEMM path (``aten::_slow_conv2d_forward``) by a fixed rule (``ConvParams::use_mkldnn`` in ATen's
``Convolution.cpp``): a 1x1, stride-1, undilated convolution of a batch under 16 takes the native path whenever
torch runs one thread, on the old finding that it was faster there. With channels-last inputs it is now 2-2.7x
slower on this project's CPUs (cotnet50's 1x1 shapes at batch 8, one thread: e.g. 64 -> 256 channels at 56x56,
9.6 vs 3.6 ms), and copies its input to NCHW first. :class:`PointwiseConv2d` calls oneDNN directly in that case;
:func:`cotviz.prepare_for_inference` puts it in place of every plain 1x1 ``nn.Conv2d``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["PointwiseConv2d", "pointwise_eligible"]


def pointwise_eligible(conv: nn.Module) -> bool:
    """A plain ``nn.Conv2d`` (not a subclass) with a 1x1 kernel and zero padding mode."""
    return type(conv) is nn.Conv2d and tuple(conv.kernel_size) == (1, 1) and conv.padding_mode == "zeros"


class PointwiseConv2d(nn.Conv2d):
    """An ``nn.Conv2d`` with a 1x1 kernel that runs through oneDNN for CPU float32 channels-last inputs.

    The same module otherwise (parameters, ``state_dict``, hooks, ``repr``); only the kernel chosen differs, so
    outputs equal ``nn.Conv2d``'s up to float rounding. oneDNN is used only in eager inference: a plain CPU
    float32 (B, C, H, W) tensor in channels-last layout, oneDNN enabled, no gradient wanted
    (``torch.no_grad``/``inference_mode``, or nothing requiring one), and not under ``torch.compile``/``export``
    or ``torch.jit.trace``, not inside ``torch.func`` transforms -- those see ``nn.Conv2d``'s forward and choose their own kernels.
    """

    def forward(self, x: Tensor) -> Tensor:
        padding = self.padding
        if isinstance(padding, str) or not self._onednn(x):  # "same"/"valid": left to nn.Conv2d
            return super().forward(x)
        return torch.mkldnn_convolution(x, self.weight, self.bias, padding, self.stride, self.dilation,
                                        self.groups)  # (B, C_out, H', W'), channels-last like x

    def _onednn(self, x: Tensor) -> bool:
        return (type(x) is Tensor and not torch.compiler.is_compiling() and not torch.jit.is_tracing()
                and not torch._C._functorch.is_functorch_wrapped_tensor(x)  # vmap / torch.func transforms
                and x.device.type == "cpu" and x.dtype == torch.float32 and self.weight.dtype == torch.float32
                and x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)
                and not (torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad))
                and torch.backends.mkldnn.is_available() and bool(torch.backends.mkldnn.enabled))
