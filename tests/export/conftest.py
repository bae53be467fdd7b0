"""Fixtures of the export/trace tests: tiny CoT networks whose residual branches are live.

``create_model(..., zero_init_last_bn=False)`` plus :func:`randomize_norms` (non-trivial BatchNorm
statistics and affine parameters): every block's residual branch, and so every local aggregation,
reaches the logits, so an exporter that drops or freezes the aggregation cannot pass a parity test
(the default zero-init network hides that: its residual branches are exactly zero).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from _helpers import randomize_norms
from torch import Tensor, nn

from cotviz import create_model


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "slow: over 10 s on a loaded 2-core machine (inductor's C++ compilation, the dynamo ONNX exporter); "
        "deselect with -m 'not slow'")


#: The smallest network of each variant family: one block per stage, base width 16, 10 classes.
TINY = dict(layers=[1, 1, 1, 1], base_width=16, num_classes=10, zero_init_last_bn=False)


@pytest.fixture(scope="session")
def live_net() -> Callable[..., nn.Module]:
    """``live_net(name, spatial_layer=None)``: the tiny ``name`` network, live residual branches, eval mode
    (built once); ``spatial_layer="cot@4"``: CoT in stage 4 only (one CoT layer: the exporters' cost grows with it)."""
    built: dict[tuple[str, str | None], nn.Module] = {}

    def make(name: str, spatial_layer: str | None = None) -> nn.Module:
        if (name, spatial_layer) not in built:
            extra = {} if spatial_layer is None else {"spatial_layer": spatial_layer}
            built[name, spatial_layer] = randomize_norms(create_model(name, **TINY, **extra), seed=1).eval()
        return built[name, spatial_layer]

    return make


@pytest.fixture(scope="session")
def images() -> Tensor:
    """(2, 3, 64, 64) seeded input (stage 4 is 2x2: no degenerate 1x1 maps)."""
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(5))
