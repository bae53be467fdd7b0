"""Fixtures for the capture tests: small networks of every variant and a hook-leak check."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
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


def randomize_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BN / GroupNorm non-trivial affine params and running stats (as the goldens do)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
            if isinstance(m, nn.BatchNorm2d):
                assert m.running_mean is not None and m.running_var is not None
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return model


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
