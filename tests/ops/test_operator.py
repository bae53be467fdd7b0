"""The registered operators ``torch.ops.cotviz.local_aggregation`` (+ its two backward operators).

Registration (``torch.library.opcheck``: schema, autograd registration, fake impl == real metadata,
AOT dispatch with dynamic shapes), gradients of every order against the unfold reference (gradcheck,
gradgradcheck, Hessian-vector products), ``torch.func`` and forward-mode AD, ``FlopCounterMode``,
the meta device, empty batches and the one-line errors.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.autograd.forward_ad as fwad
from torch import Tensor
from torch.library import opcheck
from torch.utils.flop_counter import FlopCounterMode

from cotviz.ops import AggregationShapeError, local_aggregation, local_aggregation_reference

from .test_aggregation import BACKWARD_PATHS, Case, assert_close, forced_layout

OPS = torch.ops.cotviz

# (case, dtype, channels-last input): shapes, dtypes, strides 1 and 2, dilation, explicit padding,
# several heads, a map smaller than the kernel, a channels-last input and both working layouts
# (maps <= 10x10 are aggregated channels-last, larger ones channels-first).
OPCHECK_CASES = [
    (Case(2, cw=2, groups=2, heads=1, height=5, width=6, kernel_size=3, stride=1, dilation=1, padding=None,
          seed=11), torch.float64, False),
    (Case(1, cw=2, groups=3, heads=2, height=7, width=5, kernel_size=3, stride=2, dilation=2, padding=1,
          seed=12), torch.float32, False),
    (Case(2, cw=1, groups=2, heads=1, height=2, width=3, kernel_size=5, stride=1, dilation=1, padding=None,
          seed=13), torch.float64, False),
    (Case(2, cw=2, groups=2, heads=1, height=12, width=12, kernel_size=3, stride=2, dilation=1, padding=None,
          seed=14), torch.float32, True),
    (Case(1, cw=4, groups=2, heads=1, height=12, width=11, kernel_size=3, stride=1, dilation=2, padding=None,
          seed=15), torch.float64, False),
]
OPCHECK_IDS = ["k3-f64", "k3-s2-d2-pad1-heads2-f32", "k5-map-smaller-than-kernel", "channels-last-s2-f32",
               "large-map-d2-f64"]


def _inputs(case: Case, dtype: torch.dtype, channels_last: bool) -> tuple[Tensor, Tensor, Tensor]:
    """x (B, C, H, W), weight (B, heads, Cw, K*K, Ho, Wo) and an output gradient (B, heads*C, Ho, Wo)."""
    x, w = case.make(dtype)
    g = torch.randn(x.shape[0], case.heads * x.shape[1], *case.out_hw,
                    generator=torch.Generator().manual_seed(case.seed + 100), dtype=torch.float64).to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
        g = g.contiguous(memory_format=torch.channels_last)
    return x.requires_grad_(), w.requires_grad_(), g.requires_grad_()


def _geometry(case: Case) -> tuple[int, int, int, int]:
    return case.kernel_size, case.stride, case.pad, case.dilation


#: opcheck's checks but the dynamic AOT dispatch (schema, autograd registration, fake impl == real metadata): cheap,
#: and the fake impl's shapes and strides are what differ between the cases, so they run on every case.
METADATA_CHECKS = ("test_schema", "test_autograd_registration", "test_faketensor")
#: The cases that also get ``test_aot_dispatch_dynamic`` (0.5-1.7 s each; tracing with symbolic sizes through the
#: fake impl and the autograd formula): every geometry option with two heads, channels-last, the channels-first
#: working layout in float64. The other two cases add no symbolic path (their sizes go through the same formulas).
AOT_DYNAMIC_IDS = ("k3-s2-d2-pad1-heads2-f32", "channels-last-s2-f32", "large-map-d2-f64")


@pytest.mark.parametrize(("case", "dtype", "channels_last"), OPCHECK_CASES, ids=OPCHECK_IDS)
def test_opcheck_all_three_operators(case: Case, dtype: torch.dtype, channels_last: bool,
                                     request: pytest.FixtureRequest) -> None:
    x, w, g = _inputs(case, dtype, channels_last)
    geo = _geometry(case)
    checks = METADATA_CHECKS + (("test_aot_dispatch_dynamic",) if request.node.callspec.id in AOT_DYNAMIC_IDS else ())
    opcheck(OPS.local_aggregation.default, (x, w, *geo), test_utils=checks)
    opcheck(OPS.local_aggregation_grad_input.default, (g, w, case.height, case.width, *geo), test_utils=checks)
    opcheck(OPS.local_aggregation_grad_weight.default, (g, x, case.cw, *geo), test_utils=checks)


def test_opcheck_checks_are_opchecks_defaults() -> None:
    """The split above runs every check opcheck runs by default (a new default check would be missed)."""
    import inspect

    defaults = inspect.signature(opcheck).parameters["test_utils"].default
    assert set(defaults) == {*METADATA_CHECKS, "test_aot_dispatch_dynamic"}
    assert set(AOT_DYNAMIC_IDS) <= set(OPCHECK_IDS)


def test_operator_equals_reference_and_keeps_the_memory_format() -> None:
    case, dtype, _ = OPCHECK_CASES[3]
    x, w, _ = _inputs(case, dtype, channels_last=True)
    out = OPS.local_aggregation(x, w, *_geometry(case))
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert_close(out, case.run(local_aggregation_reference, x, w), 1e-5, "channels-last")


# --- gradients of every order ------------------------------------------------------------------------

# small enough for the numerical Jacobians of gradgradcheck (a few hundred elements at most)
GRAD_CASES = [
    Case(1, cw=1, groups=2, heads=1, height=3, width=4, kernel_size=3, stride=1, dilation=1, padding=None, seed=21),
    Case(1, cw=1, groups=2, heads=2, height=5, width=4, kernel_size=3, stride=2, dilation=2, padding=1, seed=22),
    Case(1, cw=1, groups=1, heads=1, height=2, width=3, kernel_size=5, stride=1, dilation=1, padding=None, seed=23),
]
GRAD_IDS = ["k3", "k3-s2-d2-pad1-heads2", "k5-map-smaller-than-kernel"]


@pytest.mark.parametrize(("layout", "chain"), BACKWARD_PATHS[:1] + BACKWARD_PATHS[-1:])
@pytest.mark.parametrize("case", GRAD_CASES, ids=GRAD_IDS)
def test_gradgradcheck(case: Case, layout: str, chain: bool) -> None:
    x, w = case.make(torch.float64)
    x.requires_grad_()
    w.requires_grad_()
    with forced_layout(layout, chain):
        assert torch.autograd.gradgradcheck(lambda a, b: case.run(local_aggregation, a, b), (x, w))


def test_backward_operators_gradcheck_and_gradgradcheck() -> None:
    case = GRAD_CASES[1]  # stride 2, dilation 2, padding 1, two heads
    x, w, g = _inputs(case, torch.float64, channels_last=False)
    geo = _geometry(case)
    assert torch.autograd.gradcheck(lambda a, b: OPS.local_aggregation_grad_input(a, b, 5, 4, *geo), (g, w))
    assert torch.autograd.gradgradcheck(lambda a, b: OPS.local_aggregation_grad_input(a, b, 5, 4, *geo), (g, w))
    assert torch.autograd.gradcheck(lambda a, b: OPS.local_aggregation_grad_weight(a, b, case.cw, *geo), (g, x))
    assert torch.autograd.gradgradcheck(lambda a, b: OPS.local_aggregation_grad_weight(a, b, case.cw, *geo), (g, x))


def _loss(fn: Callable[..., Tensor], case: Case) -> Callable[[Tensor, Tensor], Tensor]:
    """A scalar that is not bilinear in (x, weight): tanh before, squares after the aggregation."""
    return lambda x, w: case.run(fn, torch.tanh(x), w).pow(2).sum()


@pytest.mark.parametrize(("layout", "chain"), BACKWARD_PATHS)
@pytest.mark.parametrize("case", GRAD_CASES[:2], ids=GRAD_IDS[:2])
def test_hessian_vector_product_equals_reference(case: Case, layout: str, chain: bool) -> None:
    x, w = case.make(torch.float64)
    gen = torch.Generator().manual_seed(case.seed + 7)
    v = (torch.randn(x.shape, generator=gen, dtype=torch.float64), torch.randn(w.shape, generator=gen,
                                                                              dtype=torch.float64))

    def hvp(fn: Callable[..., Tensor]) -> tuple[Tensor, ...]:
        xr, wr = x.clone().requires_grad_(), w.clone().requires_grad_()
        grads = torch.autograd.grad(_loss(fn, case)(xr, wr), (xr, wr), create_graph=True)  # double backward
        return torch.autograd.grad(grads, (xr, wr), v)

    expected = hvp(local_aggregation_reference)
    with forced_layout(layout, chain):
        got = hvp(local_aggregation)
    for a, b, name in zip(got, expected, ("x", "weight"), strict=True):
        assert_close(a, b, 1e-11, f"HVP w.r.t. {name} ({layout}, chain={chain})")
    # the same through torch.autograd.functional (double backward) and torch.func (forward over reverse)
    funct = torch.autograd.functional.hvp(_loss(local_aggregation, case), (x, w), v)[1]
    fwd_rev = torch.func.jvp(torch.func.grad(_loss(local_aggregation, case), argnums=(0, 1)), (x, w), v)[1]
    for a, b in zip((*funct, *fwd_rev), expected * 2, strict=True):
        assert_close(a, b, 1e-11, "HVP through torch.autograd.functional / torch.func")


# --- torch.func and forward-mode AD ------------------------------------------------------------------


def test_torch_func_grad_vmap_jacrev_jacfwd_match_reference() -> None:
    case = GRAD_CASES[1]
    x, w = case.make(torch.float64)

    def both(transform: Callable[[Callable[..., Tensor]], object]) -> None:
        got, expected = transform(local_aggregation), transform(local_aggregation_reference)
        for a, b in zip(torch.utils._pytree.tree_leaves(got), torch.utils._pytree.tree_leaves(expected),
                        strict=True):
            assert_close(a, b, 1e-11, "torch.func")

    both(lambda fn: torch.func.grad(_loss(fn, case), argnums=(0, 1))(x, w))
    # per-sample: vmap over the batch of (B=1)-shaped calls, with both / only x / only w batched
    per_sample = lambda fn: lambda a, b: case.run(fn, a[None], b[None])[0]  # noqa: E731
    both(lambda fn: torch.func.vmap(per_sample(fn))(x, w))
    both(lambda fn: torch.func.vmap(lambda a: case.run(fn, a, w), in_dims=1)(torch.stack([x, 2 * x], dim=1)))
    both(lambda fn: torch.func.vmap(lambda b: case.run(fn, x, b))(torch.stack([w, -w])))
    both(lambda fn: torch.func.vmap(torch.func.grad(lambda a, b: _loss(fn, case)(a[None], b[None])))(x, w))
    both(lambda fn: torch.func.jacrev(lambda a: case.run(fn, a, w))(x))
    both(lambda fn: torch.func.jacfwd(lambda b: case.run(fn, x, b))(w))


def test_forward_mode_ad_matches_reference() -> None:
    case = GRAD_CASES[0]
    x, w = case.make(torch.float64)
    tx, tw = torch.ones_like(x), torch.full_like(w, 0.5)

    def tangent(fn: Callable[..., Tensor]) -> Tensor:
        with fwad.dual_level():
            out = case.run(fn, fwad.make_dual(x, tx), fwad.make_dual(w, tw))
            return fwad.unpack_dual(out).tangent.clone()

    assert_close(tangent(local_aggregation), tangent(local_aggregation_reference), 1e-12, "forward AD")


# --- FLOPs, meta, empty batch, errors ----------------------------------------------------------------


def test_flop_counter_counts_forward_and_both_backward_operators() -> None:
    case = OPCHECK_CASES[1][0]
    x, w, _ = _inputs(case, torch.float32, channels_last=False)
    out_elements = x.shape[0] * case.heads * x.shape[1] * case.out_hw[0] * case.out_hw[1]
    flops = 2 * out_elements * case.kernel_size**2  # one multiply-add per tap and output element
    with FlopCounterMode(display=False) as counter:
        out = case.run(local_aggregation, x, w)
    assert counter.get_flop_counts()["Global"] == {OPS.local_aggregation: flops}
    with FlopCounterMode(display=False) as counter:
        out.backward(torch.ones_like(out))
    assert counter.get_flop_counts()["Global"] == {
        OPS.local_aggregation_grad_input: flops, OPS.local_aggregation_grad_weight: flops}


def test_meta_device_gives_shape_and_memory_format() -> None:
    x = torch.empty(2, 16, 9, 9, device="meta").contiguous(memory_format=torch.channels_last)
    w = torch.empty(2, 1, 2, 9, 9, 9, device="meta")
    out = local_aggregation(x, w, 3)
    assert out.device.type == "meta" and out.shape == (2, 16, 9, 9)
    assert out.is_contiguous(memory_format=torch.channels_last)


def test_empty_batch() -> None:
    x = torch.zeros(0, 4, 6, 6, requires_grad=True)
    w = torch.zeros(0, 1, 2, 9, 6, 6, requires_grad=True)
    out = local_aggregation(x, w, 3)
    assert out.shape == (0, 4, 6, 6)
    gx, gw = torch.autograd.grad(out.sum(), (x, w))
    assert gx.shape == x.shape and gw.shape == w.shape


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_operator_errors_are_one_cotviz_line(device: str) -> None:
    x = torch.zeros(1, 6, 4, 4, device=device)
    w = torch.zeros(1, 1, 4, 9, 4, 4, device=device)
    with pytest.raises(AggregationShapeError, match="multiple of the weight's Cw=4") as info:
        OPS.local_aggregation(x, w, 3, 1, 1, 1)
    assert "\n" not in str(info.value)
    g = torch.zeros(1, 6, 3, 4, device=device)
    with pytest.raises(AggregationShapeError, match="does not match the aggregation output shape"):
        OPS.local_aggregation_grad_weight(g, x, 2, 3, 1, 1, 1)
    with pytest.raises(AggregationShapeError, match="does not match the output size 4x4"):
        OPS.local_aggregation_grad_input(g, torch.zeros(1, 1, 2, 9, 3, 4, device=device), 4, 4, 3, 1, 1, 1)


def test_dynamic_shape_tracing_uses_the_fake_impl() -> None:
    # FakeTensorMode prefers an entry of torch's global decomposition table over the fake impl when sizes
    # are symbolic: the plain formulation there made every dynamic trace compute K*K symbolic slices
    # (opcheck's dynamic AOT check: 20-55 s instead of 1-6 s). cotviz.ops.decompositions() is opt-in.
    from torch._decomp import decomposition_table

    from cotviz.ops import decompositions

    assert decompositions()
    assert not set(decompositions()) & set(decomposition_table)
