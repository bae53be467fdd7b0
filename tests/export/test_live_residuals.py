"""The test networks can catch a dropped aggregation, and an empty batch gives an empty output."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn

from cotviz.layers.aggregation import LocalAggregation


def test_a_frozen_aggregation_would_change_the_logits(live_net: Callable[[str], nn.Module], images: Tensor) -> None:
    # what the legacy ONNX exporter did before: the aggregation became a constant (here: zeros)
    model = live_net("cotnet50")
    with torch.no_grad():
        expected = model(images)
        handles = [m.register_forward_hook(lambda mod, args, out: torch.zeros_like(out))
                   for m in model.modules() if isinstance(m, LocalAggregation)]
        try:
            frozen = model(images)
        finally:
            for h in handles:
                h.remove()
    assert len(handles) == 4
    assert (frozen - expected).abs().max() > 1e-2 * expected.abs().max()  # far beyond the 1e-4 parity bound


@pytest.mark.parametrize("name", ["cotnet50", "cotnext50_2x48d"])
def test_empty_batch_gives_empty_output(live_net: Callable[[str], nn.Module], name: str) -> None:
    with torch.no_grad():
        out = live_net(name)(torch.zeros(0, 3, 64, 64))
    assert out.shape == (0, 10)
