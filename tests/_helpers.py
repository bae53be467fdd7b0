"""One source for what several test packages share: the official variants, the tiny golden networks
(their registry names and overrides) and ``randomize_norms``.

Imported as ``from _helpers import ...`` (``tests/`` is on ``sys.path`` through its rootdir
``conftest.py``). The reference files themselves are read through the ``load_reference`` fixture of
``tests/conftest.py``.
"""

from __future__ import annotations

from typing import Any, TypeVar

import torch
from torch import nn

__all__ = ["OFFICIAL_VARIANTS", "TINY_GOLDEN_NETS", "randomize_norms"]

#: The variants the official repository registers (``../shared/reference/README.md``).
OFFICIAL_VARIANTS: tuple[str, ...] = (
    "cotnet50", "cotnet101", "cotnext50_2x48d", "cotnext101_2x48d", "se_cotnetd_50", "se_cotnetd_101",
    "se_cotnetd_152", "se_cotnetd_152_L", "se_cotnetd_200", "se_cotnetd_270",
)

#: The two whole networks of the reference (file -> registry name and ``create_model`` overrides).
TINY_GOLDEN_NETS: dict[str, tuple[str, dict[str, Any]]] = {
    "tiny_cotnet_golden.pt": ("cotnet50", dict(layers=[1, 1, 1, 1], num_classes=10, base_width=16)),
    "tiny_se_cotnetd_golden.pt": ("se_cotnetd_50", dict(
        layers=[1, 1, 2, 1], num_classes=10, base_width=16,
        block_args=dict(conv_dim={16, 32}, c4_dim=64, c4_idx={0}))),
}

M = TypeVar("M", bound=nn.Module)


def randomize_norms(module: M, seed: int | torch.Generator = 0) -> M:
    """Give every BatchNorm / GroupNorm non-trivial affine parameters and running statistics, as the goldens
    do: weight ~U(0.5, 1.5), bias ~0.1 N(0, 1), running_mean ~0.1 N(0, 1), running_var ~U(0.5, 1.5).

    ``seed``: a seed or a generator to draw from (then the caller's stream continues after it). Returns ``module``.
    """
    gen = seed if isinstance(seed, torch.Generator) else torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d | nn.GroupNorm):
                m.weight.uniform_(0.5, 1.5, generator=gen)
                m.bias.normal_(0.0, 0.1, generator=gen)
            if isinstance(m, nn.BatchNorm2d):
                assert m.running_mean is not None and m.running_var is not None
                m.running_mean.normal_(0.0, 0.1, generator=gen)
                m.running_var.uniform_(0.5, 1.5, generator=gen)
    return module
