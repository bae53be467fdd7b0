"""Named, parameter-free observation points inside layers.

A :class:`Tap` returns its input unchanged. It exists so that every tensor worth looking at flows
through a named submodule that a forward hook can observe (lucidrains' ``Recorder`` pattern), without
``return_attention=True`` flags. It adds no state_dict keys; with no hook attached PyTorch's module
call takes its hook-free fast path.
"""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["Tap"]


class Tap(nn.Module):
    """Identity module marking a tensor that :func:`cotviz.capture` can record."""

    def forward(self, x: Tensor) -> Tensor:
        return x
