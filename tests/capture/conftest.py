"""Fixtures for the capture tests: small networks of every variant and a hook-leak check."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from _helpers import randomize_norms
from torch import nn

from cotviz.models import create_model

#: Every per-module hook dict PyTorch keeps, read off a fresh module (not copied from cotviz's own list, so
#: a hook kind cotviz forgets to count still shows up as a leak here).
HOOK_DICTS: tuple[str, ...] = tuple(k for k, v in vars(nn.Module()).items() if "hook" in k and isinstance(v, dict))

#: Small versions of each variant: (registry name, overrides); stage 3 has 2 blocks.
TINY: dict[str, tuple[str, dict[str, Any]]] = {
    "cotnet": ("cotnet50", dict(layers=[1, 1, 2, 1], num_classes=10, base_width=16)),
    "cotnext": ("cotnext50", dict(layers=[1, 1, 2, 1], num_classes=10, base_width=16)),
    "se_cotnetd": ("se_cotnetd_50", dict(layers=[1, 1, 2, 1], num_classes=10, base_width=16,
                                         block_args=dict(conv_dim={16, 32}, c4_dim=64, c4_idx={0}))),
    "se_cotnetd_blur": ("se_cotnetd_152", dict(layers=[1, 1, 2, 1], num_classes=10, base_width=16,
                                               block_args=dict(conv_dim={16, 32}, c4_dim=64, c4_idx={0}))),
    "resnet": ("resnet50", dict(layers=[1, 1, 2, 1], num_classes=10, base_width=16)),
}


@pytest.fixture
def make_tiny() -> Callable[[str], nn.Module]:
    """Factory: ``make_tiny("cotnet")`` -> a small eval-mode network with randomised norms."""

    def make(kind: str) -> nn.Module:
        name, kwargs = TINY[kind]
        return randomize_norms(create_model(name, **kwargs))

    return make


@pytest.fixture
def image() -> torch.Tensor:
    """A (2, 3, 64, 64) input batch."""
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))


def leftover_hooks(model: nn.Module) -> list[str]:
    """``"<module path>.<hook dict>"`` for every non-empty hook dict, plus PyTorch's global hook dicts."""
    left = [f"{name or '<root>'}.{d}" for name, m in model.named_modules() for d in HOOK_DICTS if getattr(m, d)]
    from torch.nn.modules import module as torch_module

    for d in ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks",
              "_global_backward_pre_hooks", "_global_forward_hooks_always_called"):
        if getattr(torch_module, d, None):
            left.append(f"torch.nn.modules.module.{d}")
    return left
