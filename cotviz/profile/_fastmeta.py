"""Fast output shapes for the hot aten ops on the meta device.

PyTorch's meta kernels for convolution, pooling, batch/group norm, cat, addmm, the pointwise ops and
``mean`` are Python code (``torch/_meta_registrations``, ``torch/_refs``, ``torch/_decomp``) that costs
1-10 ms per call and, on first use, imports ``torch._dynamo`` and sympy (~5 s). A CoTNeXt-101 forward
makes ~1000 such calls. Counting needs only each output's *shape, dtype and allocation*, so
:func:`fast_meta_result` builds those outputs directly (one ``empty`` each) for a whitelist of ops and
returns ``NotImplemented`` for anything else or any argument it does not fully understand (the caller
then runs the real meta kernel, which also raises the real errors). Fast outputs are contiguous: strides
do not matter for counting, and a contiguous tensor accepts every later view.
``tests/profile/test_profile_counting.py`` checks that counts and memory are identical without it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["fast_meta_result"]

aten = torch.ops.aten

#: In-place pointwise ops: the result is ``self`` (shape validated against the broadcast).
_INPLACE = {
    aten.relu_.default, aten.silu_.default, aten.sigmoid_.default, aten.hardtanh_.default,
    aten.add_.Tensor, aten.sub_.Tensor, aten.mul_.Tensor, aten.div_.Tensor, aten.addcmul_.default,
}
#: ``out=`` pointwise ops: the result is ``out`` when it already has the broadcast shape.
_OUT = {aten.add.out, aten.sub.out, aten.mul.out, aten.div.out}
#: Functional unary pointwise ops: result like ``self``.
_UNARY = {aten.relu.default, aten.silu.default, aten.sigmoid.default, aten.gelu.default}
#: Functional binary pointwise ops: broadcast shape, promoted dtype.
_BINARY = {aten.add.Tensor, aten.sub.Tensor, aten.mul.Tensor, aten.div.Tensor}


def _broadcast(args: tuple[Any, ...]) -> tuple[int, ...] | None:
    """NumPy broadcast of the tensor arguments' shapes; ``None`` if they do not broadcast.

    (``torch.broadcast_shapes`` goes through ``torch._refs`` and imports sympy on first use: ~2 s.)
    """
    shapes = [tuple(a.shape) for a in args if isinstance(a, Tensor)]
    ndim = max(len(s) for s in shapes)
    out = [1] * ndim
    for shape in shapes:
        for i, n in enumerate(shape, start=ndim - len(shape)):
            if n != 1:
                if out[i] not in (1, n):
                    return None
                out[i] = n
    return tuple(out)


def _like(t: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """A new contiguous meta tensor shaped like ``t`` (``empty_like`` on meta is a slow Python ref)."""
    return torch.empty(t.shape, dtype=dtype or t.dtype, device=t.device)


def _binary(args: tuple[Any, ...]) -> Any:
    a, b = args[0], args[1]
    shape = _broadcast(args[:2])
    if shape is None:
        return NotImplemented  # let the real kernel raise its error
    dtype = torch.result_type(a, b)
    return torch.empty(shape, dtype=dtype, device=a.device)


def _mean_dim(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Tensor:
    x: Tensor = args[0]
    dims = args[1] if len(args) > 1 else kwargs.get("dim")
    keepdim = bool(args[2] if len(args) > 2 else kwargs.get("keepdim", False))
    dtype = kwargs.get("dtype") or x.dtype
    reduce = set(range(x.dim())) if not dims else {d % x.dim() for d in dims}
    shape = [1 if i in reduce else s for i, s in enumerate(x.shape) if keepdim or i not in reduce]
    return torch.empty(shape, dtype=dtype, device=x.device)


def _cat(args: tuple[Any, ...], kwargs: dict[str, Any], stack: bool) -> Tensor | Any:
    tensors = [t for t in args[0] if not (t.dim() == 1 and t.numel() == 0)]  # legacy: empty 1-D skipped
    dim = args[1] if len(args) > 1 else kwargs.get("dim", 0)
    if not tensors or any(not t.is_meta for t in tensors):
        return NotImplemented
    first = tensors[0]
    dtype = first.dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    if stack:
        if any(t.shape != first.shape for t in tensors):
            return NotImplemented
        d = dim % (first.dim() + 1)
        shape = [*first.shape[:d], len(tensors), *first.shape[d:]]  # new axis of length n at dim
    else:
        d = dim % first.dim()
        if any(t.dim() != first.dim() or t.shape[:d] != first.shape[:d] or t.shape[d + 1:] != first.shape[d + 1:]
               for t in tensors):
            return NotImplemented
        shape = [*first.shape[:d], sum(t.shape[d] for t in tensors), *first.shape[d + 1:]]
    return torch.empty(shape, dtype=dtype, device=first.device)


def _pair(v: Any, n: int, default: Any = None) -> list[int]:
    """An int or 1-/n-element list as n ints (``[]`` -> ``default``)."""
    if isinstance(v, int):
        return [v] * n
    v = list(v) if v is not None else []
    if not v:
        return _pair(default, n) if default is not None else []
    return v * n if len(v) == 1 else v


def _conv(args: tuple[Any, ...]) -> Any:
    # convolution(input, weight, bias, stride, padding, dilation, transposed, output_padding, groups)
    x, w, _, stride, padding, dilation, transposed, _, groups = args
    n = x.dim() - 2
    if transposed or n < 1 or x.shape[1] != w.shape[1] * groups:
        return NotImplemented
    stride, padding, dilation = _pair(stride, n), _pair(padding, n), _pair(dilation, n)
    spatial = [(size + 2 * p - d * (k - 1) - 1) // s + 1
               for size, k, s, p, d in zip(x.shape[2:], w.shape[2:], stride, padding, dilation, strict=True)]
    if any(o < 1 for o in spatial):
        return NotImplemented
    return torch.empty((x.shape[0], w.shape[0], *spatial), dtype=x.dtype, device=x.device)  # (N, Cout, *out)


def _pool_len(size: int, k: int, s: int, p: int, d: int, ceil: bool) -> int:
    """Output length of a pooling window (PyTorch ``pooling_output_shape``)."""
    out = (size + 2 * p - d * (k - 1) - 1 + (s - 1 if ceil else 0)) // s + 1
    if ceil and (out - 1) * s >= size + p:  # the last window must start inside the (left-padded) input
        out -= 1
    return out


def _pool2d(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    # avg_pool2d(x, kernel, stride, padding, ceil_mode, ...); max_pool2d_with_indices(x, kernel, stride,
    # padding, dilation, ceil_mode)
    if kwargs or not isinstance(args[0], Tensor) or args[0].dim() not in (3, 4):
        return NotImplemented
    x = args[0]
    is_max = func is aten.max_pool2d_with_indices.default
    kernel = _pair(args[1], 2)
    stride = _pair(args[2] if len(args) > 2 else [], 2, default=kernel)
    padding = _pair(args[3] if len(args) > 3 else 0, 2)
    dilation = _pair(args[4] if is_max and len(args) > 4 else 1, 2)
    ceil = bool(args[5] if is_max and len(args) > 5 else (args[4] if not is_max and len(args) > 4 else False))
    spatial = [_pool_len(x.shape[-2 + i], kernel[i], stride[i], padding[i], dilation[i], ceil) for i in range(2)]
    if any(o < 1 for o in spatial):
        return NotImplemented
    shape = (*x.shape[:-2], *spatial)
    out = torch.empty(shape, dtype=x.dtype, device=x.device)
    return (out, torch.empty(shape, dtype=torch.int64, device=x.device)) if is_max else out


def _repeat(args: tuple[Any, ...]) -> Any:
    x, repeats = args[0], list(args[1])
    if len(repeats) < x.dim() or any(r < 0 for r in repeats):
        return NotImplemented
    padded = [1] * (len(repeats) - x.dim()) + list(x.shape)  # leading new axes of size 1
    return torch.empty([s * r for s, r in zip(padded, repeats, strict=True)], dtype=x.dtype, device=x.device)


def _reflection_pad2d(args: tuple[Any, ...]) -> Any:
    x, (left, right, top, bottom) = args[0], args[1]
    h, w = x.shape[-2], x.shape[-1]
    if x.dim() not in (3, 4) or max(left, right) >= w or max(top, bottom) >= h:
        return NotImplemented
    return torch.empty((*x.shape[:-2], h + top + bottom, w + left + right), dtype=x.dtype, device=x.device)


def fast_meta_result(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """The result of ``func(*args, **kwargs)`` on meta tensors, or ``NotImplemented`` if not covered."""
    if func is aten.cat.default or func is aten.stack.default:
        return _cat(args, kwargs, stack=func is aten.stack.default)
    first = args[0] if args else None
    if not isinstance(first, Tensor) or not first.is_meta:
        return NotImplemented
    if func in _INPLACE:
        return first if _broadcast(args) == tuple(first.shape) else NotImplemented
    if func in _OUT:
        out = kwargs.get("out")
        if isinstance(out, Tensor) and _broadcast(args[:2]) == tuple(out.shape):
            return out
        return NotImplemented
    if func in _UNARY:
        return _like(first)
    if func in _BINARY:
        return _binary(args)
    if func is aten.native_batch_norm.default and not args[5]:  # eval mode
        c = first.shape[1]
        acc = torch.float32 if first.dtype in (torch.float16, torch.bfloat16) else first.dtype
        # (out like input, save_mean (C,), save_invstd (C,)) exactly as the meta kernel
        return (_like(first), torch.empty(c, dtype=acc, device=first.device),
                torch.empty(c, dtype=acc, device=first.device))
    if func is aten.native_group_norm.default:
        n, groups = int(args[3]), int(args[6])
        # (out like input, mean (N, G), rstd (N, G))
        return (_like(first), torch.empty(n, groups, dtype=first.dtype, device=first.device),
                torch.empty(n, groups, dtype=first.dtype, device=first.device))
    if func is aten.mean.dim:
        return _mean_dim(args, kwargs)
    if func is aten.convolution.default:
        return _conv(args)
    if func is aten.avg_pool2d.default or func is aten.max_pool2d_with_indices.default:
        return _pool2d(func, args, kwargs)
    if func is aten.repeat.default:
        return _repeat(args)
    if func is aten.reflection_pad2d.default:
        return _reflection_pad2d(args)
    if func is aten._softmax.default:
        return torch.empty(first.shape, dtype=first.dtype, device=first.device)
    if func is aten.addmm.default or func is aten.mm.default or func is aten.bmm.default:
        a, b = (args[1], args[2]) if func is aten.addmm.default else (args[0], args[1])
        if a.shape[-1] != b.shape[-2] or a.dim() != b.dim():
            return NotImplemented
        # (M, K) @ (K, N) -> (M, N); (B, M, K) @ (B, K, N) -> (B, M, N)
        return torch.empty((*a.shape[:-1], b.shape[-1]), dtype=a.dtype, device=a.device)
    return NotImplemented
