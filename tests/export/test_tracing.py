"""torch.export (dynamic batch and size), fx.symbolic_trace, jit.trace with grad mode on, FlopCounterMode.

Before the registered operator: a dynamic export failed (``unhashable type: non-nested SymInt``),
``ep.module()(x)`` and jit.trace with grad mode on failed on the ``out=`` product, fx.symbolic_trace
failed inside the op's input checks, and FlopCounterMode did not see the aggregation at all.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn
from torch.export import Dim
from torch.utils.flop_counter import FlopCounterMode

from cotviz.profile.counting import count_model
from cotviz.profile.rules import LOCAL_AGG

AGG = torch.ops.cotviz.local_aggregation.default


def _eager(model: nn.Module, x: Tensor) -> Tensor:
    with torch.no_grad():
        out: Tensor = model(x)
    return out


def _input_grad(fn: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    xr = x.clone().requires_grad_()
    (g,) = torch.autograd.grad(fn(xr).pow(2).sum(), xr)
    return g


def test_export_with_dynamic_batch_and_size(live_net: Callable[..., nn.Module], images: Tensor) -> None:
    # CoT in stage 4 only (after four stride-2 steps: the most involved symbolic sizes): a CoT layer in every stage
    # made the export 3-4 times slower and tested nothing more (one registered operator, whatever the stage)
    model = live_net("cotnet50", "cot@4")
    program = torch.export.export(model, (images,), dynamic_shapes={"x": {0: Dim.DYNAMIC, 2: Dim.DYNAMIC,
                                                                           3: Dim.DYNAMIC}})
    assert sum(n.target is AGG for n in program.graph.nodes) == 1  # one opaque node per CoT layer
    exported = program.module()
    for b, h, w in ((1, 64, 64), (3, 96, 96), (2, 64, 96)):
        x = torch.randn(b, 3, h, w, generator=torch.Generator().manual_seed(h + w))
        torch.testing.assert_close(exported(x), _eager(model, x), atol=1e-5, rtol=1e-5)
    # and the exported module differentiates (the operator's autograd formula), as eager does
    torch.testing.assert_close(_input_grad(exported, images), _input_grad(model, images), atol=1e-5, rtol=1e-4)


def test_fx_symbolic_trace_keeps_the_operator_whole(live_net: Callable[[str], nn.Module], images: Tensor) -> None:
    model = live_net("cotnext50_2x48d")
    traced = torch.fx.symbolic_trace(model)
    assert sum(n.target is AGG for n in traced.graph.nodes) == 4
    torch.testing.assert_close(traced(images), _eager(model, images), atol=0, rtol=0)


def test_jit_trace_with_grad_mode_on(live_net: Callable[..., nn.Module], images: Tensor) -> None:
    model = live_net("cotnet50", "cot@4")  # one CoT layer (stage 4) is enough to catch the out= product
    traced = torch.jit.trace(model, (images,))  # grad mode on, parameters require grad
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(9))
    torch.testing.assert_close(traced(x), _eager(model, x), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(_input_grad(traced, x), _input_grad(model, x), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", ["cotnet50", "cotnext50_2x48d"])
def test_flop_counter_mode_counts_the_aggregation_as_cotviz_does(
    live_net: Callable[[str], nn.Module], images: Tensor, name: str
) -> None:
    model = live_net(name)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(images)
    flops = counter.get_flop_counts()["Global"][torch.ops.cotviz.local_aggregation]
    own = count_model(model, tuple(images.shape))  # cotviz's counter, "complete" convention, MACs
    macs = sum(op.macs for op in own.ops if op.kind == LOCAL_AGG)
    assert macs > 0 and flops == 2 * macs  # FLOPs = 2 x MACs (DESIGN.md units)
