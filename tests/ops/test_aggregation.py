"""Local k x k aggregation: fast path == unfold reference, exact hand-made cases, gradients, goldens.

The semantics are the official ``aggregation_zeropad`` kernel's (see ``cotviz/ops/aggregation.py``):
``out[b, head*C + c, h, w] = sum_k W[b, head, c % Cw, k, h, w] * Xpad[b, c, h*s - p + kh*d, w*s - p + kw*d]``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from unittest import mock

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

from cotviz.errors import CotvizError
from cotviz.ops import aggregation, local_aggregation, local_aggregation_reference
from cotviz.ops.aggregation import AggregationShapeError, output_size

LAYOUTS = ("channels_first", "channels_last")
# (working layout, grad_w group sum as an in-place multiply-add chain?)
BACKWARD_PATHS = tuple((layout, chain) for layout in LAYOUTS for chain in (False, True))


@contextmanager
def forced_layout(layout: str, chain: bool | None = None) -> Iterator[None]:
    """Force the fast path's size-based choices (working layout; grad_w group-sum strategy) so that
    every code path is exercised on the small shapes the tests can afford."""
    limit = 10**9 if layout == "channels_last" else -1
    with mock.patch.object(aggregation, "_CHANNELS_LAST_MAX_PIXELS", limit):
        if chain is None:
            yield
            return
        with mock.patch.object(aggregation, "_GROUP_SUM_MAX_ELEMENTS", -1 if chain else 10**12):
            yield


@dataclass(frozen=True)
class Case:
    """One aggregation configuration; ``make`` draws x (B, C, H, W) and weight (B, heads, Cw, K*K, Ho, Wo)."""

    batch: int
    cw: int
    groups: int
    heads: int
    height: int
    width: int
    kernel_size: int
    stride: int
    dilation: int
    padding: int | None
    seed: int

    @property
    def pad(self) -> int:
        return self.dilation * (self.kernel_size - 1) // 2 if self.padding is None else self.padding

    @property
    def out_hw(self) -> tuple[int, int]:
        k, s, p, d = self.kernel_size, self.stride, self.pad, self.dilation
        return output_size(self.height, k, s, p, d), output_size(self.width, k, s, p, d)

    def make(self, dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor]:
        gen = torch.Generator().manual_seed(self.seed)
        ho, wo = self.out_hw
        x = torch.randn(self.batch, self.cw * self.groups, self.height, self.width, generator=gen,
                        dtype=torch.float64)  # (B, C, H, W)
        w = torch.randn(self.batch, self.heads, self.cw, self.kernel_size**2, ho, wo, generator=gen,
                        dtype=torch.float64)  # (B, heads, Cw, K*K, Ho, Wo)
        return x.to(dtype), w.to(dtype)

    def run(self, fn: Callable[..., Tensor], x: Tensor, w: Tensor) -> Tensor:
        """``fn(x, w, K, stride, padding, dilation)`` for this case's geometry."""
        return fn(x, w, self.kernel_size, self.stride, self.padding, self.dilation)


@st.composite
def cases(draw: st.DrawFn, max_batch: int = 2, max_side: int = 9) -> Case:
    """Random geometry, including non-square maps, maps smaller than the kernel and explicit padding."""
    k = draw(st.sampled_from([1, 3, 5, 7]))
    padding = draw(st.one_of(st.none(), st.integers(0, 4)))
    case = Case(
        batch=draw(st.integers(1, max_batch)),
        cw=draw(st.integers(1, 3)),
        groups=draw(st.integers(1, 3)),
        heads=draw(st.integers(1, 2)),
        height=draw(st.integers(1, max_side)),
        width=draw(st.integers(1, max_side)),
        kernel_size=k,
        stride=draw(st.sampled_from([1, 2])),
        dilation=draw(st.sampled_from([1, 2])),
        padding=padding,
        seed=draw(st.integers(0, 2**31 - 1)),
    )
    ho, wo = case.out_hw
    if ho < 1 or wo < 1:  # explicit padding too small for this map: fall back to "same" padding
        case = replace(case, padding=None)
    return case


def assert_close(got: Tensor, expected: Tensor, tol: float, label: str) -> None:
    """``torch.testing.assert_close`` with atol = rtol = ``tol`` and the code path in the message."""
    torch.testing.assert_close(got, expected, atol=tol, rtol=tol, msg=lambda m: f"{label}: {m}")


FAST_SETTINGS = settings(max_examples=60, deadline=None, database=None)


# --- fast path == reference -------------------------------------------------------------------------


@FAST_SETTINGS
@given(case=cases())
def test_fast_matches_reference_float64(case: Case) -> None:
    x, w = case.make(torch.float64)
    expected = case.run(local_aggregation_reference, x, w)
    for layout in LAYOUTS:
        with forced_layout(layout):
            got = case.run(local_aggregation, x, w)
        assert got.shape == (case.batch, case.heads * case.cw * case.groups, *case.out_hw)
        assert_close(got, expected, 1e-12, layout)


@settings(max_examples=25, deadline=None, database=None)
@given(case=cases(), dtype=st.sampled_from([torch.float32, torch.bfloat16]))
def test_fast_low_precision_close_to_float64(case: Case, dtype: torch.dtype) -> None:
    x, w = case.make(dtype)
    exact = case.run(local_aggregation_reference, x.double(), w.double())  # same (rounded) inputs, float64
    # float32: summation rounding only; bfloat16: products and sums in float32, one final rounding
    tol = {torch.float32: 1e-5, torch.bfloat16: 2**-8}[dtype]
    for layout in LAYOUTS:
        with forced_layout(layout):
            got = case.run(local_aggregation, x, w)
        assert got.dtype == dtype
        assert_close(got.double(), exact, tol, layout)


@settings(max_examples=30, deadline=None, database=None)
@given(case=cases(max_side=7))
def test_fast_gradients_match_reference_float64(case: Case) -> None:
    x, w = case.make(torch.float64)
    go = torch.randn(case.batch, case.heads * case.cw * case.groups, *case.out_hw, dtype=torch.float64,
                     generator=torch.Generator().manual_seed(case.seed + 1))

    def grads(fn: Callable[..., Tensor]) -> tuple[Tensor, ...]:
        xr, wr = x.clone().requires_grad_(), w.clone().requires_grad_()
        return torch.autograd.grad(case.run(fn, xr, wr), (xr, wr), go)

    rx, rw = grads(local_aggregation_reference)
    for layout, chain in BACKWARD_PATHS:
        with forced_layout(layout, chain):
            gx, gw = grads(local_aggregation)
        assert_close(gx, rx, 1e-12, f"{layout}, chain={chain}, grad_x")
        assert_close(gw, rw, 1e-12, f"{layout}, chain={chain}, grad_w")


@pytest.mark.parametrize(("layout", "chain"), BACKWARD_PATHS[:1] + BACKWARD_PATHS[-1:])
@pytest.mark.parametrize(
    "case",
    [
        Case(2, cw=2, groups=2, heads=1, height=4, width=3, kernel_size=3, stride=1, dilation=1, padding=None, seed=1),
        Case(1, cw=1, groups=3, heads=2, height=5, width=4, kernel_size=3, stride=2, dilation=2, padding=1, seed=2),
        Case(1, cw=2, groups=1, heads=1, height=2, width=3, kernel_size=5, stride=1, dilation=1, padding=None, seed=3),
    ],
    ids=["k3", "k3-s2-d2-heads2-pad1", "k5-map-smaller-than-kernel"],
)
def test_gradcheck(case: Case, layout: str, chain: bool) -> None:
    x, w = case.make(torch.float64)
    x.requires_grad_()
    w.requires_grad_()
    with forced_layout(layout, chain):
        assert torch.autograd.gradcheck(lambda a, b: case.run(local_aggregation, a, b), (x, w))


def test_gradient_for_one_input_only() -> None:
    case = Case(1, cw=2, groups=2, heads=1, height=4, width=4, kernel_size=3, stride=1, dilation=1,
                padding=None, seed=5)
    x, w = case.make()
    w.requires_grad_()
    (gw,) = torch.autograd.grad(case.run(local_aggregation, x, w).sum(), (w,))
    wr = w.detach().clone().requires_grad_()
    (rw,) = torch.autograd.grad(case.run(local_aggregation_reference, x, wr).sum(), (wr,))
    torch.testing.assert_close(gw, rw, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize(("layout", "chain"), BACKWARD_PATHS)
def test_bfloat16_gradients_close_to_float64(layout: str, chain: bool) -> None:
    case = Case(2, cw=2, groups=4, heads=1, height=6, width=5, kernel_size=3, stride=1, dilation=1,
                padding=None, seed=6)
    x, w = case.make(torch.bfloat16)
    xr, wr = x.clone().requires_grad_(), w.clone().requires_grad_()
    with forced_layout(layout, chain):
        gx, gw = torch.autograd.grad(case.run(local_aggregation, xr, wr).sum(), (xr, wr))
    assert gx.dtype == gw.dtype == torch.bfloat16
    xd, wd = x.double().requires_grad_(), w.double().requires_grad_()
    rx, rw = torch.autograd.grad(case.run(local_aggregation_reference, xd, wd).sum(), (xd, wd))
    # products and sums in float32, one rounding to bfloat16 at the end
    torch.testing.assert_close(gx.double(), rx, atol=2**-8, rtol=2**-8)
    torch.testing.assert_close(gw.double(), rw, atol=2**-8, rtol=2**-8)


@pytest.mark.parametrize("side", [5, 16], ids=["small-map", "large-map"])  # both working layouts
def test_memory_formats_and_strided_weight(side: int) -> None:
    case = Case(2, cw=4, groups=2, heads=1, height=side, width=side, kernel_size=3, stride=1, dilation=1,
                padding=None, seed=7)
    x, w = case.make()
    expected = case.run(local_aggregation_reference, x, w)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    w_strided = w.transpose(2, 3).contiguous().transpose(2, 3)  # same values, (B, heads, KK, Cw, ...) memory
    out_cl = case.run(local_aggregation, x_cl, w_strided)
    torch.testing.assert_close(out_cl, expected, atol=1e-12, rtol=1e-12)
    assert out_cl.is_contiguous(memory_format=torch.channels_last)  # follows the input, like conv2d
    out = case.run(local_aggregation, x, w_strided)
    assert out.is_contiguous()
    xr, wr = x_cl.clone().requires_grad_(), w_strided.clone().requires_grad_()
    gx, gw = torch.autograd.grad(case.run(local_aggregation, xr, wr).sum(), (xr, wr))
    xd, wd = x.clone().requires_grad_(), w.clone().requires_grad_()
    rx, rw = torch.autograd.grad(case.run(local_aggregation_reference, xd, wd).sum(), (xd, wd))
    torch.testing.assert_close(gx, rx, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(gw, rw, atol=1e-12, rtol=1e-12)


def test_inputs_not_mutated_and_grad_mode_agnostic() -> None:
    case = Case(1, cw=2, groups=2, heads=2, height=6, width=6, kernel_size=3, stride=1, dilation=1,
                padding=None, seed=8)
    x, w = case.make()
    x0, w0 = x.clone(), w.clone()
    with torch.no_grad():
        a = case.run(local_aggregation, x, w)
    b = case.run(local_aggregation, x.requires_grad_(), w)
    assert b.requires_grad
    torch.testing.assert_close(a, b.detach(), atol=0, rtol=0)
    assert torch.equal(x.detach(), x0) and torch.equal(w, w0)


# --- exact hand-made cases --------------------------------------------------------------------------

IMAGE = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]])


def _one_hot_weight(k: int, kernel_size: int, ho: int, wo: int) -> Tensor:
    """(1, 1, 1, K*K, Ho, Wo) weight that picks tap ``k`` at every output pixel."""
    w = torch.zeros(1, 1, 1, kernel_size**2, ho, wo)
    w[:, :, :, k] = 1.0
    return w


@pytest.mark.parametrize(
    ("tap", "expected"),
    [
        (1, [[0, 0, 0], [1, 2, 3], [4, 5, 6]]),  # (kh, kw) = (0, 1): the pixel above
        (3, [[0, 1, 2], [0, 4, 5], [0, 7, 8]]),  # (1, 0): the pixel to the left
        (4, [[1, 2, 3], [4, 5, 6], [7, 8, 9]]),  # centre: identity
        (8, [[5, 6, 0], [8, 9, 0], [0, 0, 0]]),  # (2, 2): below-right
    ],
    ids=["up", "left", "centre", "down-right"],
)
def test_one_hot_weight_shifts_image_with_zero_border(tap: int, expected: list[list[float]]) -> None:
    x = IMAGE.view(1, 1, 3, 3)  # (B, C, H, W) = (1, 1, 3, 3)
    out = local_aggregation(x, _one_hot_weight(tap, 3, 3, 3), 3)
    assert torch.equal(out, torch.tensor(expected, dtype=torch.float32).view(1, 1, 3, 3))


def test_one_hot_weight_with_stride_and_dilation() -> None:
    x = torch.arange(1.0, 26.0).view(1, 1, 5, 5)  # x[i, j] = 5*i + j + 1
    # K=3, dilation 2, padding 2 (same), stride 2 -> 3x3 output; tap 0 reads x[2h - 2, 2w - 2]
    out = local_aggregation(x, _one_hot_weight(0, 3, 3, 3), 3, stride=2, dilation=2)
    assert torch.equal(out, torch.tensor([[0.0, 0.0, 0.0], [0.0, 1.0, 3.0], [0.0, 11.0, 13.0]]).view(1, 1, 3, 3))


def test_taps_that_never_land_give_zeros() -> None:
    # K=1, padding 1, stride 2 on a 1x1 image: outputs read Xpad[2h - 1, 2w - 1], i.e. only the padding
    x = torch.tensor([[[[3.0]]]], requires_grad=True)  # (1, 1, 1, 1)
    w = torch.ones(1, 1, 1, 1, 2, 2, requires_grad=True)  # (1, 1, 1, 1, Ho=2, Wo=2)
    out = local_aggregation(x, w, 1, stride=2, padding=1)
    assert torch.equal(out, torch.zeros(1, 1, 2, 2))
    gx, gw = torch.autograd.grad(out.sum(), (x, w))
    assert torch.equal(gx, torch.zeros(1, 1, 1, 1)) and torch.equal(gw, torch.zeros(1, 1, 1, 1, 2, 2))


def test_channel_interleaving_and_heads_by_hand() -> None:
    # C = 4 constant channels (1, 2, 3, 4); Cw = 2 maps; K = 1 so each map is one scalar per pixel
    x = torch.tensor([1.0, 2.0, 3.0, 4.0]).view(1, 4, 1, 1).expand(1, 4, 2, 2)  # (1, 4, 2, 2)
    w = torch.tensor([[10.0, 100.0], [1000.0, 10000.0]]).view(1, 2, 2, 1, 1, 1).expand(1, 2, 2, 1, 2, 2)
    out = local_aggregation(x, w, 1)  # (1, heads*C = 8, 2, 2)
    # channel c uses map c % 2 (interleaved: 0,1,0,1), head h fills output channels h*4 .. h*4 + 3
    expected = torch.tensor([10.0, 200.0, 30.0, 400.0, 1000.0, 20000.0, 3000.0, 40000.0])
    assert torch.equal(out[0, :, 0, 0], expected)
    assert torch.equal(out, expected.view(1, 8, 1, 1).expand(1, 8, 2, 2))


# --- official golden --------------------------------------------------------------------------------


def test_reproduces_official_golden(reference_dir: Path) -> None:
    entry = torch.load(reference_dir / "cot_block_golden_extra.pt", weights_only=True)[
        "cot_dim64_k3_s1_debug_all_intermediates"]
    x, w, aggregated = entry["local_conv_input"], entry["attention"], entry["aggregated"]
    assert w.shape == (x.shape[0], 1, x.shape[1] // 8, 9, *x.shape[2:])  # (B, 1, C/8, 9, H, W)
    torch.testing.assert_close(local_aggregation(x, w, 3), aggregated, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(local_aggregation_reference(x, w, 3), aggregated, atol=1e-5, rtol=1e-5)


# --- validation -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("x_shape", "w_shape", "kwargs", "message"),
    [
        ((1, 6, 4, 4), (1, 1, 4, 9, 4, 4), {}, "multiple of the weight's Cw=4"),
        ((1, 4, 4, 4), (1, 1, 2, 9, 5, 4), {}, "weight spatial size 5x4 does not match the output size 4x4"),
        ((1, 4, 4, 4), (1, 1, 2, 9, 4, 4), {"stride": 2}, "does not match the output size 2x2"),
        ((4, 4, 4), (1, 1, 2, 9, 4, 4), {}, "input must be 4-D"),
        ((1, 4, 4, 4), (1, 2, 9, 4, 4), {}, "weight must be 6-D"),
        ((1, 4, 4, 4), (1, 1, 2, 8, 4, 4), {}, "expected kernel_size**2 = 9"),
        ((2, 4, 4, 4), (1, 1, 2, 9, 4, 4), {}, "weight batch 1 does not match input batch 2"),
        ((1, 4, 2, 2), (1, 1, 2, 9, 1, 1), {"padding": 0}, "too small"),
        ((1, 4, 4, 4), (1, 1, 2, 9, 4, 4), {"dilation": 0}, "dilation >= 1"),
    ],
)
def test_invalid_shapes_raise(x_shape: tuple[int, ...], w_shape: tuple[int, ...], kwargs: dict[str, int],
                              message: str) -> None:
    x, w = torch.zeros(x_shape), torch.zeros(w_shape)
    for fn in (local_aggregation, local_aggregation_reference):
        with pytest.raises(ValueError, match=message.replace("*", r"\*")) as info:
            fn(x, w, 3, **kwargs)
        assert isinstance(info.value, AggregationShapeError) and isinstance(info.value, CotvizError)
        assert "\n" not in str(info.value)


def test_dtype_mismatch_raises() -> None:
    with pytest.raises(AggregationShapeError, match="share one floating dtype"):
        local_aggregation(torch.zeros(1, 2, 3, 3), torch.zeros(1, 1, 2, 9, 3, 3, dtype=torch.float64), 3)
