"""The local aggregation as registered PyTorch operators (``torch.library``).

Three functional operators in the ``cotviz`` namespace::

    cotviz::local_aggregation(Tensor x, Tensor weight, int kernel_size, int stride, int padding,
                              int dilation) -> Tensor                       # (B, heads*C, Ho, Wo)
    cotviz::local_aggregation_grad_input(Tensor grad, Tensor weight, SymInt height, SymInt width,
                                         int kernel_size, ...) -> Tensor    # grad_x (B, C, H, W)
    cotviz::local_aggregation_grad_weight(Tensor grad, Tensor x, SymInt cw,
                                          int kernel_size, ...) -> Tensor   # grad_w (B, heads, Cw, K*K, Ho, Wo)

Each has

- one kernel for every device (``CompositeExplicitAutograd``): the fast tap-rectangle kernels of
  :mod:`cotviz.ops.aggregation`, plain tensor ops, so CUDA tensors take the same algorithm;
- a fake (meta) implementation with the same checks, working on symbolic sizes (``torch._check``),
  so torch.compile / torch.export trace the operator as one node with dynamic batch and H, W;
- an autograd formula made of the three operators themselves (torch.func transforms and forward-mode
  AD run the same maps in plain differentiable torch ops). The aggregation is bilinear in
  (x, weight) and its two backward maps are bilinear too, so every derivative is one of the three:
  with ``<.,.>`` the sum of products, ``<agg(x, w), g> = <x, grad_x(g, w)> = <w, grad_w(g, x)>``, hence
  ``d grad_x(g, w) = grad_x(dg, w) + grad_x(g, dw)`` has the adjoints ``agg(., w)`` (for g) and
  ``grad_w(g, .)`` (for w), and ``grad_w(g, x)`` has ``agg(x, .)`` and ``grad_x(g, .)``. Gradients of
  any order are exact (gradgradcheck, Hessian-vector products);
- a batching rule (``register_vmap``): the vmapped dimension is folded into the batch dimension,
  which the operators treat sample by sample anyway;
- a decomposition into plain aten ops (:func:`decompositions`, for lowering an already exported program);
- a FLOP formula for ``torch.utils.flop_counter.FlopCounterMode``: ``2 * B * heads*C * K*K * Ho*Wo``
  (one multiply-add per tap and output element, fvcore's and cotviz's "2 FLOPs = 1 MAC"; the same for
  both backward operators, which form the same products).

The kernels are registered with ``torch.library.Library.impl`` rather than ``torch.library.custom_op``:
``custom_op`` wraps every kernel in ``torch._disable_dynamo``, whose first call imports ``torch._dynamo``
(2.6 s measured here) -- paid by every eager user on the first forward.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.utils.flop_counter import register_flop_formula

from cotviz.ops.aggregation import (
    _aggregation_kernel,
    _aggregation_plain,
    _grad_input_kernel,
    _grad_input_plain,
    _grad_weight_kernel,
    _grad_weight_plain,
    _is_channels_last,
    check_aggregation,
    check_grad_input,
    check_grad_weight,
)

__all__ = ["LIBRARY", "OPERATORS", "decompositions"]

#: Keeps the registrations alive (they are dropped with the Library object).
LIBRARY = torch.library.Library("cotviz", "DEF")

_GEOMETRY = "int kernel_size, int stride, int padding, int dilation"
_SCHEMAS = {
    "local_aggregation": f"(Tensor x, Tensor weight, {_GEOMETRY}) -> Tensor",
    "local_aggregation_grad_input": f"(Tensor grad, Tensor weight, SymInt height, SymInt width, {_GEOMETRY}) -> Tensor",
    "local_aggregation_grad_weight": f"(Tensor grad, Tensor x, SymInt cw, {_GEOMETRY}) -> Tensor",
}
for _name, _schema in _SCHEMAS.items():
    LIBRARY.define(_name + _schema, tags=(torch.Tag.pt2_compliant_tag,))

_ops = torch.ops.cotviz
#: Qualified names of the registered operators.
OPERATORS: tuple[str, ...] = tuple(f"cotviz::{name}" for name in _SCHEMAS)

LIBRARY.impl("local_aggregation", _aggregation_kernel, "CompositeExplicitAutograd")
LIBRARY.impl("local_aggregation_grad_input", _grad_input_kernel, "CompositeExplicitAutograd")
LIBRARY.impl("local_aggregation_grad_weight", _grad_weight_kernel, "CompositeExplicitAutograd")


# --------------------------------------------------------------------------------------------- fake


def _new(like: Tensor, shape: tuple[Any, ...], channels_last: bool) -> Tensor:
    """An uninitialised tensor of ``shape`` with ``like``'s dtype and device (channels-last if asked)."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return torch.empty(shape, dtype=like.dtype, device=like.device, memory_format=fmt)


@torch.library.register_fake("cotviz::local_aggregation", lib=LIBRARY)
def _aggregation_fake(x: Tensor, weight: Tensor, kernel_size: int, stride: int, padding: int,
                      dilation: int) -> Tensor:
    ho, wo = check_aggregation(x, weight, kernel_size, stride, padding, dilation)
    return _new(x, (x.shape[0], weight.shape[1] * x.shape[1], ho, wo), _is_channels_last(x))


@torch.library.register_fake("cotviz::local_aggregation_grad_input", lib=LIBRARY)
def _grad_input_fake(grad: Tensor, weight: Tensor, height: Any, width: Any, kernel_size: int, stride: int,
                     padding: int, dilation: int) -> Tensor:
    shape = check_grad_input(grad, weight, height, width, kernel_size, stride, padding, dilation)
    return _new(grad, shape, _is_channels_last(grad))


@torch.library.register_fake("cotviz::local_aggregation_grad_weight", lib=LIBRARY)
def _grad_weight_fake(grad: Tensor, x: Tensor, cw: Any, kernel_size: int, stride: int, padding: int,
                      dilation: int) -> Tensor:
    return _new(grad, tuple(check_grad_weight(grad, x, cw, kernel_size, stride, padding, dilation)), False)


# ----------------------------------------------------------------------------------------- autograd
# Registered on the Autograd key by hand: ``torch.library.register_autograd`` builds an
# autograd.Function without a ``setup_context`` staticmethod, which torch.func refuses
# (pytorch/pytorch#168393, #179652), and no autograd.Function can join torch.func's transforms from
# inside an operator kernel anyway (its custom_function_call finds no kernel below the functorch
# layer), so under torch.func (and forward-mode AD) the kernel runs the plain formulation instead. Backward formulas take (ctx, upstream gradient) with
# ``ctx.saved_tensors`` = the operator's two tensor arguments and ``ctx.geometry`` = its last four ints.

Backward = Callable[[Any, Tensor], tuple[Tensor | None, Tensor | None]]


def _aggregation_backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None]:
    """agg(x, w): d/dx = grad_x(g, w), d/dw = grad_w(g, x)."""
    x, weight = ctx.saved_tensors
    gx = gw = None
    if ctx.needs_input_grad[0]:
        gx = _ops.local_aggregation_grad_input(grad, weight, x.shape[2], x.shape[3], *ctx.geometry)
    if ctx.needs_input_grad[1]:
        gw = _ops.local_aggregation_grad_weight(grad, x, weight.shape[2], *ctx.geometry)
    return gx, gw


def _grad_input_backward(ctx: Any, gg: Tensor) -> tuple[Tensor | None, Tensor | None]:
    """grad_x(g, w) with upstream gg (B, C, H, W): d/dg = agg(gg, w), d/dw = grad_w(g, gg)."""
    grad, weight = ctx.saved_tensors
    d_grad = d_weight = None
    if ctx.needs_input_grad[0]:
        d_grad = _ops.local_aggregation(gg, weight, *ctx.geometry)
    if ctx.needs_input_grad[1]:
        d_weight = _ops.local_aggregation_grad_weight(grad, gg, weight.shape[2], *ctx.geometry)
    return d_grad, d_weight


def _grad_weight_backward(ctx: Any, gg: Tensor) -> tuple[Tensor | None, Tensor | None]:
    """grad_w(g, x) with upstream gg (B, heads, Cw, K*K, Ho, Wo): d/dg = agg(x, gg), d/dx = grad_x(g, gg)."""
    grad, x = ctx.saved_tensors
    d_grad = d_x = None
    if ctx.needs_input_grad[0]:
        d_grad = _ops.local_aggregation(x, gg, *ctx.geometry)
    if ctx.needs_input_grad[1]:
        d_x = _ops.local_aggregation_grad_input(grad, gg, x.shape[2], x.shape[3], *ctx.geometry)
    return d_grad, d_x


def _has_tangent(t: Tensor) -> bool:
    """Whether ``t`` carries a forward-mode tangent (``torch.autograd.forward_ad`` or ``torch.func.jvp``)."""
    return torch.autograd.forward_ad.unpack_dual(t).tangent is not None


def _register_autograd(name: str, backward: Backward, plain: Callable[..., Tensor]) -> None:
    """Autograd kernel of ``cotviz::name``.

    Reverse mode: an autograd.Function whose backward is ``backward`` (the registered operators).
    Forward-mode AD and torch.func's grad transforms (whose bookkeeping cannot enter an
    autograd.Function from inside an operator kernel) get ``plain``: the same map in plain
    differentiable torch ops, so jvp / jacfwd / hessian / grad are exact there too.
    """
    op = getattr(_ops, name).default

    def below_autograd(*args: Any) -> Tensor:
        with torch._C._AutoDispatchBelowAutograd():  # the next kernel: the device kernel or the fake impl
            out: Tensor = op(*args)
        return out

    class Function(torch.autograd.Function):
        # forward(ctx, ...) rather than a separate setup_context: Function.apply binds the arguments
        # with inspect.signature on every call when setup_context is defined (~0.1 ms measured), and
        # torch.func never reaches this class (autograd_kernel hands it ``plain``)
        @staticmethod
        def forward(ctx: Any, *args: Any) -> Tensor:  # type: ignore[override]
            ctx.save_for_backward(args[0], args[1])
            ctx.geometry = tuple(args[-4:])
            return below_autograd(*args)

        @staticmethod
        def backward(ctx: Any, *grads: Tensor) -> tuple[Tensor | None, ...]:
            n_ints = len(ctx.needs_input_grad) - 2
            return (*backward(ctx, grads[0]), *([None] * n_ints))

    Function.__name__ = Function.__qualname__ = "".join(part.title() for part in name.split("_")) + "Function"

    def autograd_kernel(*args: Any) -> Tensor:
        a, b = args[0], args[1]
        if _has_tangent(a) or _has_tangent(b):
            return plain(*args)
        if torch.is_grad_enabled() and (a.requires_grad or b.requires_grad):
            if torch._C._are_functorch_transforms_active():
                return plain(*args)
            out: Tensor = Function.apply(*args)
            return out
        return below_autograd(*args)

    LIBRARY.impl(name, autograd_kernel, "Autograd")


_register_autograd("local_aggregation", _aggregation_backward, _aggregation_plain)
_register_autograd("local_aggregation_grad_input", _grad_input_backward, _grad_input_plain)
_register_autograd("local_aggregation_grad_weight", _grad_weight_backward, _grad_weight_plain)


# --------------------------------------------------------------------------------------------- vmap


def _fold(t: Tensor, bdim: int | None, size: int) -> tuple[Tensor, int]:
    """(V, B, ...) with the vmapped dim V first -> (V*B, ...); an unbatched ``t`` is expanded. Returns B too."""
    t = t.movedim(bdim, 0) if bdim is not None else t.expand(size, *t.shape)  # (V, B, ...)
    return t.flatten(0, 1), t.shape[1]


def _batching_rule(op: Any) -> Any:
    """vmap rule of an operator whose two tensor arguments both start with the batch dimension."""

    def rule(info: Any, in_dims: tuple[int | None, ...], a: Tensor, b: Tensor, *rest: Any) -> tuple[Tensor, int]:
        fa, batch = _fold(a, in_dims[0], info.batch_size)
        fb, _ = _fold(b, in_dims[1], info.batch_size)
        out = op(fa, fb, *rest)  # (V*B, ...)
        return out.unflatten(0, (info.batch_size, batch)), 0

    return rule


for _name in _SCHEMAS:
    torch.library.register_vmap(f"cotviz::{_name}", _batching_rule(getattr(_ops, _name).default), lib=LIBRARY)


# -------------------------------------------------------------------------------------------- FLOPs



@register_flop_formula(_ops.local_aggregation)
def _aggregation_flops(x_shape: Any, w_shape: Any, kernel_size: int, *args: Any, out_shape: Any = None,
                       **kwargs: Any) -> int:
    """2 FLOPs per tap and output element: ``2 * B * heads*C * Ho*Wo * K*K``."""
    return 2 * math.prod(int(s) for s in out_shape) * kernel_size * kernel_size


@register_flop_formula([_ops.local_aggregation_grad_input, _ops.local_aggregation_grad_weight])
def _backward_flops(grad_shape: Any, other_shape: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    """The products of the forward again, one per tap and gradient element: ``2 * numel(grad) * K*K``."""
    kernel_size = args[-4]
    return 2 * math.prod(int(s) for s in grad_shape) * kernel_size * kernel_size


# ------------------------------------------------------------------------------------ decompositions
# Not registered in torch's global ``torch._decomp.decomposition_table``: FakeTensorMode prefers a
# decomposition found there over the fake impl whenever sizes are symbolic, so every dynamic-shape trace
# (torch.compile(dynamic=True), torch.export) would compute the operator's metadata through the plain
# formulation (K*K slices with symbolic arithmetic: 20x slower tracing, measured with opcheck).


def decompositions() -> dict[Any, Callable[..., Tensor]]:
    """The three operators in plain aten ops, for ``ExportedProgram.run_decompositions``.

    For a program exported with the operators in it, lowered by a consumer that does not know them
    (the dynamo ONNX exporter refuses ``cotviz.local_aggregation`` otherwise)::

        table = torch.export.default_decompositions()
        table.update(cotviz.ops.decompositions())
        onnx_program = torch.onnx.export(program.run_decompositions(table))

    (``torch.onnx.export(model, ...)`` on the module itself needs none of this: an ONNX export records
    the plain formulation directly.)
    """
    return {
        _ops.local_aggregation.default: _aggregation_plain,
        _ops.local_aggregation_grad_input.default: _grad_input_plain,
        _ops.local_aggregation_grad_weight.default: _grad_weight_plain,
    }
