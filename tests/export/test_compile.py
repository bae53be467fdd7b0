"""torch.compile: no graph breaks in any CoT variant, and one inductor compile of the two layer types.

Before the registered operator, tiny cotnet50 broke into 32 graphs (31 breaks: "Attempted to call op
with non-contiguous `out=` tensor" in every aggregation) and a full-size cotnet50 took 538 s to
compile. Networks are checked with the ``eager`` backend (Dynamo's graph capture alone, a few seconds);
the one inductor compile uses the smallest module holding a CoT and a CoXt layer (8 s with inductor's
cache warm, 34-55 s cold on a loaded 2-core machine, mostly C++ compilation: marked ``slow``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import torch
from _helpers import randomize_norms
from torch import Tensor, nn

from cotviz.layers.cot import CotLayer, CoXtLayer

dynamo = pytest.importorskip("torch._dynamo")


@pytest.fixture(autouse=True)
def _fresh_dynamo() -> Iterator[None]:
    dynamo.reset()
    yield
    dynamo.reset()


@pytest.mark.parametrize("name", ["cotnet50", "cotnext50_2x48d", "se_cotnetd_50"])
def test_every_variant_compiles_as_one_graph(live_net: Callable[[str], nn.Module], name: str) -> None:
    model = live_net(name)
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    compiled = torch.compile(model, fullgraph=True, backend="eager")  # fullgraph: any graph break raises
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), atol=1e-5, rtol=1e-5)


def test_compiled_training_step_matches_eager() -> None:
    # AOTAutograd traces forward and backward (fake tensors, functionalisation) through the operator
    layers = randomize_norms(nn.Sequential(CotLayer(32), CoXtLayer(32)), seed=3).eval()
    x = torch.randn(2, 32, 8, 8, generator=torch.Generator().manual_seed(4))

    def grads(fn: Callable[[Tensor], Tensor]) -> tuple[Tensor, ...]:
        xr = x.clone().requires_grad_()
        return torch.autograd.grad(fn(xr).pow(2).sum(), (xr, *layers.parameters()))

    compiled = torch.compile(layers, fullgraph=True, backend="aot_eager")
    for got, expected in zip(grads(compiled), grads(layers), strict=True):
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


@pytest.mark.slow  # 4-8 s with inductor's cache warm, 34-55 s cold on a loaded 2-core machine
def test_inductor_fullgraph_cot_and_coxt_layers() -> None:
    layers = randomize_norms(nn.Sequential(CotLayer(32), CoXtLayer(32)), seed=3).eval()
    x = torch.randn(2, 32, 8, 8, generator=torch.Generator().manual_seed(4))
    compiled = torch.compile(layers, fullgraph=True)  # inductor; the operator runs as an extern kernel
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), layers(x), atol=1e-5, rtol=1e-5)
