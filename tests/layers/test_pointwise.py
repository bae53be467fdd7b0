"""PointwiseConv2d: oneDNN for eager channels-last CPU inference, nn.Conv2d everywhere else; same numbers."""

from __future__ import annotations

import copy
import io
from collections.abc import Callable
from typing import Any

import pytest
import torch
from _helpers import randomize_norms
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode

from cotviz import create_model, prepare_for_inference
from cotviz.capture import capture
from cotviz.layers import TAP_NAMES
from cotviz.layers.pointwise import PointwiseConv2d, pointwise_eligible

TINY: dict[str, Any] = dict(layers=[1, 1, 1, 1], base_width=16, num_classes=10, zero_init_last_bn=False)
CL = torch.channels_last


class Ops(TorchDispatchMode):
    """The aten ops a call dispatches (by overload packet name)."""

    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        self.names.append(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


def ops_of(fn: Callable[[], Any]) -> list[str]:
    with Ops() as ops:
        fn()
    return ops.names


def pointwise(cin: int = 8, cout: int = 12, **kwargs: Any) -> tuple[nn.Conv2d, PointwiseConv2d]:
    torch.manual_seed(0)
    plain = nn.Conv2d(cin, cout, 1, **kwargs)
    fast = copy.deepcopy(plain)
    fast.__class__ = PointwiseConv2d
    return plain, fast


@pytest.mark.parametrize("kwargs", [{}, dict(bias=False), dict(groups=2), dict(stride=2)], ids=str)
def test_same_numbers_as_conv2d_through_onednn(kwargs: dict[str, Any]) -> None:
    plain, fast = pointwise(**kwargs)
    x = torch.randn(3, 8, 9, 7).contiguous(memory_format=CL)
    with torch.inference_mode():
        ref = plain(x)
        names = ops_of(lambda: fast(x))
        got = fast(x)
    assert names == ["mkldnn_convolution"]
    assert got.is_contiguous(memory_format=CL) and got.shape == ref.shape
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)


def test_everything_else_is_conv2d() -> None:
    """NCHW, float64, autograd, torch.func, tracing and compiling all see nn.Conv2d's forward."""
    plain, fast = pointwise()
    x = torch.randn(2, 8, 5, 5).contiguous(memory_format=CL)
    with torch.no_grad():
        assert ops_of(lambda: fast(x)) == ["mkldnn_convolution"]  # no_grad counts as inference too
        assert "mkldnn_convolution" not in ops_of(lambda: fast(x.contiguous()))  # NCHW: oneDNN is slower there
        assert "mkldnn_convolution" not in ops_of(lambda: fast.double()(x.double()))
    fast.float()
    assert "mkldnn_convolution" not in ops_of(lambda: fast(x))  # grad mode with parameters requiring grad
    y = fast(x.requires_grad_())
    y.sum().backward()
    assert x.grad is not None and fast.weight.grad is not None
    x = x.detach()
    with torch.no_grad():
        batched = torch.func.vmap(fast)(torch.stack([x, x]))  # functorch wrappers go to nn.Conv2d
        torch.testing.assert_close(batched[0], plain(x), rtol=1e-5, atol=1e-6)
        traced = torch.jit.trace(fast, (x,))
    assert "mkldnn_convolution" not in str(traced.graph)
    exported = torch.export.export(fast.eval(), (x,))
    assert "mkldnn_convolution" not in str(exported.graph) and "conv2d" in str(exported.graph)
    compiled = torch.compile(fast, backend="aot_eager", fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), plain(x), rtol=1e-5, atol=1e-6)


def test_prepare_swaps_every_plain_1x1_conv_and_keeps_names_and_state() -> None:
    model = randomize_norms(create_model("cotnet50", **TINY), seed=1).eval()
    kept = prepare_for_inference(copy.deepcopy(model), pointwise=False)
    fast = prepare_for_inference(model)
    swapped = {n for n, m in fast.named_modules() if isinstance(m, PointwiseConv2d)}
    expected = {n for n, m in kept.named_modules() if pointwise_eligible(m)}
    assert swapped == expected and len(expected) > 20  # bottleneck, CoT embed/values/fusion, shortcut convs
    assert not any(isinstance(m, PointwiseConv2d) for m in kept.modules())
    assert all(m.kernel_size != (1, 1) for m in fast.modules() if type(m) is nn.Conv2d)  # every 1x1 swapped
    assert fast.state_dict().keys() == kept.state_dict().keys()
    buf = io.BytesIO()
    torch.save(fast.state_dict(), buf)
    buf.seek(0)
    kept.load_state_dict(torch.load(buf, weights_only=True))
    assert isinstance(copy.deepcopy(fast).layer1[0].conv1, PointwiseConv2d)


@pytest.mark.parametrize("name", ["cotnet50", "cotnext50_2x48d", "resnet50"])
def test_prepared_channels_last_network_keeps_outputs_and_taps(name: str) -> None:
    """The whole preparation (folds + oneDNN 1x1s) on a channels-last network with live residual branches."""
    model = randomize_norms(create_model(name, **TINY), seed=1).eval().to(memory_format=CL)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3)).contiguous(memory_format=CL)
    taps = list(TAP_NAMES) if name != "resnet50" else ["output"]

    def run(m: nn.Module) -> tuple[Tensor, dict[str, Any]]:
        with torch.inference_mode(), capture(m, taps=taps) as cap:
            y = m(x)
        return y, {(b, t): getattr(r, t) for b, r in cap.items() for t in taps}

    y0, rec0 = run(model)
    prepared = prepare_for_inference(model)
    with torch.inference_mode():
        assert "mkldnn_convolution" in ops_of(lambda: prepared(x))
    y1, rec1 = run(prepared)
    scale = y0.abs().max()
    assert float((y0 - y1).abs().max() / scale) <= 1e-5
    assert rec0.keys() == rec1.keys() and rec0
    for key, value in rec0.items():
        if value is not None:
            assert float((value - rec1[key]).abs().max() / value.abs().max().clamp_min(1e-12)) <= 1e-5, key
