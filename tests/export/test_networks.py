"""Whole tiny networks: the test networks can catch a dropped aggregation; empty batches; channels-last."""

from __future__ import annotations

import copy
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


@pytest.mark.parametrize("name", ["cotnet50", "cotnext50_2x48d"])
def test_channels_last_network_matches_contiguous(live_net: Callable[[str], nn.Module], images: Tensor,
                                                  name: str) -> None:
    # CoXt merged the batch and group dimensions with .view, which a channels-last tensor refused
    model = live_net(name)
    channels_last = copy.deepcopy(model).to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    with torch.no_grad():
        got = channels_last(images.contiguous(memory_format=torch.channels_last))
        torch.testing.assert_close(got, model(images), atol=1e-5, rtol=1e-5)
