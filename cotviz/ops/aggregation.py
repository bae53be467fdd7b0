"""Local k x k aggregation (the official ``LocalConvolution`` / ``aggregation_zeropad`` CuPy kernel).

Semantics (official kernel index arithmetic, see ``../shared/reference/README.md``)::

    out[b, head*C + c, h, w] = sum_{kh, kw} W[b, head, c % Cw, kh*K + kw, h, w]
                               * Xpad[b, c, h*stride - pad + kh*dil, w*stride - pad + kw*dil]

with zero padding. ``x``: (B, C, H, W); ``weight``: (B, heads, Cw, K*K, Ho, Wo) with ``C % Cw == 0``;
output: (B, heads*C, Ho, Wo). Channel ``c`` uses weight map ``c % Cw`` (interleaved, not blocked).

Two implementations:

- :func:`local_aggregation_reference` unfolds the input (K*K times its size); the tests' ground truth.
- :func:`local_aggregation` never materialises the unfolded tensor (its temporaries are at most one
  copy of the input / weight / output, in another memory layout). For each of the K*K taps it computes the rectangle of output pixels whose tap falls inside the image and accumulates
  ``out[rect] += w_k[rect] * x[shifted rect]`` in place, where every operand is a strided *view*
  (zero padding is implicit: out-of-image taps are simply skipped, no padded copy is made). The
  input is viewed as (B, 1, C/Cw, Cw, H, W) and the weight as (B, heads, 1, Cw, Ho, Wo), so one weight
  map broadcasts over its C/Cw channels without a repeat. The centre tap covers the whole output for
  "same" padding and initialises it (no zero fill). The explicit backward (``torch.autograd.Function``)
  walks the same rectangles: ``grad_x`` by shifted accumulation, ``grad_w`` by per-tap products summed
  over the C/Cw channel groups. First-order only (``once_differentiable``).

Measured choices (``benchmarks/bench_aggregation.py``): a padded "wide" layout with flat contiguous
shifts was tried and lost (it needs a tap-major copy of the weight); for small maps (Ho*Wo <=
``_CHANNELS_LAST_MAX_PIXELS``) the rows are too short to stream, so the work is done channels-last
(inner loop over Cw instead of Wo) at the price of transposing copies; channels-last inputs are
always processed channels-last and give a channels-last output. Plain tensor ops only, so the same
code runs on CUDA (and meta) tensors. float16 / bfloat16 accumulate in float32 and round once.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

from cotviz.errors import CotvizError

__all__ = [
    "AggregationShapeError",
    "local_aggregation",
    "local_aggregation_reference",
    "output_size",
]

# Maps with at most this many output pixels are aggregated channels-last (rows of <= 10 pixels stream
# badly; the transposes are cheap at that size), as are channels-last inputs of any size. Measured on
# CPU with the stage shapes of CoTNet-50 (benchmarks/bench_aggregation.py).
_CHANNELS_LAST_MAX_PIXELS = 10 * 10
# grad_w: below this many elements per channel group (B*heads*Cw*Ho*Wo) the group sum is one product
# + reduction per tap instead of C/Cw in-place multiply-adds (launch overhead beats the temporary).
_GROUP_SUM_MAX_ELEMENTS = 32768


class AggregationShapeError(CotvizError, ValueError):
    """Input / weight / geometry of the local aggregation do not fit together."""


def output_size(size: int, kernel_size: int, stride: int, padding: int, dilation: int) -> int:
    """Spatial output length of the aggregation along one axis (as a convolution)."""
    return (size + 2 * padding - dilation * (kernel_size - 1) - 1) // stride + 1


@dataclass(frozen=True)
class _Geometry:
    """Shapes of one aggregation call."""

    batch: int
    channels: int
    height: int
    width: int
    heads: int
    cw: int
    kernel_size: int
    stride: int
    padding: int
    dilation: int
    out_h: int
    out_w: int
    channels_last: bool  # compute with channels innermost (channels-last input or small map)

    @property
    def groups(self) -> int:
        """Channels sharing one weight map (``C / Cw``)."""
        return self.channels // self.cw


@dataclass(frozen=True)
class _Tap:
    """One kernel tap ``k = kh*K + kw`` and the output/input rectangles where it is inside the image."""

    k: int
    out_h: slice
    out_w: slice
    in_h: slice
    in_w: slice
    covers_output: bool  # out rect == whole output
    covers_input: bool  # in rect == whole input (and stride 1)


def _axis_range(size: int, out: int, pos: int, geo: _Geometry) -> tuple[slice, slice] | None:
    """Output and input slices along one axis for kernel position ``pos`` (None if the tap never lands).

    Output index ``o`` reads input ``o*stride + offset`` with ``offset = pos*dilation - padding``; the
    output range is every ``o`` for which that index lies in ``[0, size)``.
    """
    s = geo.stride
    offset = pos * geo.dilation - geo.padding
    lo = -(offset // s) if offset < 0 else 0  # ceil(-offset / s): first o with o*s + offset >= 0
    hi = min(out, (size - 1 - offset) // s + 1)  # one past the last o with o*s + offset <= size - 1
    if hi <= lo:
        return None
    start = lo * s + offset
    return slice(lo, hi), slice(start, start + s * (hi - lo - 1) + 1, s)


@functools.lru_cache(maxsize=256)
def _taps(geo: _Geometry) -> tuple[_Tap, ...]:
    """Non-empty taps, the centre first (it covers the whole output for "same" padding); computed once per
    geometry (every forward and backward of a layer asks again)."""
    k = geo.kernel_size
    centre = (k // 2) * k + k // 2
    order = [centre] + [i for i in range(k * k) if i != centre]
    taps = []
    for i in order:
        rows = _axis_range(geo.height, geo.out_h, i // k, geo)
        cols = _axis_range(geo.width, geo.out_w, i % k, geo)
        if rows is None or cols is None:
            continue
        (oh, ih), (ow, iw) = rows, cols
        covers_out = oh == slice(0, geo.out_h) and ow == slice(0, geo.out_w)
        covers_in = geo.stride == 1 and ih == slice(0, geo.height, 1) and iw == slice(0, geo.width, 1)
        taps.append(_Tap(i, oh, ow, ih, iw, covers_out, covers_in))
    return tuple(taps)


def _check(
    x: Tensor, weight: Tensor, kernel_size: int, stride: int, padding: int | None, dilation: int
) -> _Geometry:
    """Validate the arguments and return the call geometry (raises :class:`AggregationShapeError`)."""
    if kernel_size < 1 or stride < 1 or dilation < 1 or (padding is not None and padding < 0):
        raise AggregationShapeError(
            f"local aggregation needs kernel_size, stride, dilation >= 1 and padding >= 0, got "
            f"kernel_size={kernel_size}, stride={stride}, padding={padding}, dilation={dilation}"
        )
    pad = dilation * (kernel_size - 1) // 2 if padding is None else padding
    if x.dim() != 4:
        raise AggregationShapeError(f"local aggregation input must be 4-D (B, C, H, W), got shape {tuple(x.shape)}")
    if weight.dim() != 6:
        raise AggregationShapeError(
            f"local aggregation weight must be 6-D (B, heads, Cw, K*K, Ho, Wo), got shape {tuple(weight.shape)}"
        )
    b, c, h, w = x.shape
    wb, heads, cw, kk, ho, wo = weight.shape
    exp_h = output_size(h, kernel_size, stride, pad, dilation)
    exp_w = output_size(w, kernel_size, stride, pad, dilation)
    if exp_h < 1 or exp_w < 1:
        raise AggregationShapeError(
            f"input {h}x{w} is too small for kernel_size={kernel_size}, dilation={dilation}, padding={pad}; "
            "increase the padding or the input size"
        )
    if wb != b:
        raise AggregationShapeError(f"weight batch {wb} does not match input batch {b}")
    if cw < 1 or c % cw != 0:
        raise AggregationShapeError(f"input channels {c} must be a multiple of the weight's Cw={cw} (weight dim 2)")
    if kk != kernel_size * kernel_size:
        raise AggregationShapeError(
            f"weight dim 3 is {kk}, expected kernel_size**2 = {kernel_size * kernel_size} for kernel_size={kernel_size}"
        )
    if (ho, wo) != (exp_h, exp_w):
        raise AggregationShapeError(
            f"weight spatial size {ho}x{wo} does not match the output size {exp_h}x{exp_w} of a {h}x{w} input "
            f"(kernel_size={kernel_size}, stride={stride}, padding={pad}, dilation={dilation})"
        )
    if not (x.is_floating_point() and x.dtype == weight.dtype and x.device == weight.device):
        raise AggregationShapeError(
            f"input and weight must share one floating dtype and device, got {x.dtype} on {x.device} and "
            f"{weight.dtype} on {weight.device}"
        )
    channels_last = _is_channels_last(x) or exp_h * exp_w <= _CHANNELS_LAST_MAX_PIXELS
    return _Geometry(b, c, h, w, heads, cw, kernel_size, stride, pad, dilation, exp_h, exp_w, channels_last)


def _is_channels_last(t: Tensor) -> bool:
    """True for a 4-D tensor stored channels-last (and not also plain contiguous)."""
    return t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)


def local_aggregation_reference(
    x: Tensor, weight: Tensor, kernel_size: int, stride: int = 1, padding: int | None = None, dilation: int = 1
) -> Tensor:
    """Plain unfold implementation, kept as the ground truth for tests (materialises K*K x the input).

    Args:
        x: (B, C, H, W) input.
        weight: (B, heads, Cw, K*K, Ho, Wo) per-pixel kernels, ``C % Cw == 0``.
        kernel_size, stride, padding, dilation: as for a convolution; ``padding=None`` means
            ``dilation*(K-1)//2`` ("same" for stride 1 and odd K).

    Returns:
        (B, heads*C, Ho, Wo).
    """
    geo = _check(x, weight, kernel_size, stride, padding, dilation)
    b, c, heads, cw = geo.batch, geo.channels, geo.heads, geo.cw
    kk, ho, wo = kernel_size * kernel_size, geo.out_h, geo.out_w
    cols = F.unfold(x, kernel_size, dilation=dilation, padding=geo.padding, stride=stride)  # (B, C*KK, Ho*Wo)
    cols = cols.view(b, 1, c // cw, cw, kk, ho, wo)  # channel c = g*Cw + (c % Cw)
    wts = weight.reshape(b, heads, 1, cw, kk, ho, wo)  # broadcast over the C/Cw groups
    out = (cols * wts).sum(dim=4)  # (B, heads, C/Cw, Cw, Ho, Wo)
    return out.reshape(b, heads * c, ho, wo)


# ---------------------------------------------------------------------------------------------------
# Layout helpers. All tensors below keep their *logical* (PyTorch) dim order; only their strides
# (memory layout) change with ``geo.channels_last``, so one loop body serves both layouts.


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype: float32 for half types (a product of two halves is exact in float32)."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _input_view(x: Tensor, geo: _Geometry) -> Tensor:
    """x (B, C, H, W) -> logical (B, C/Cw, Cw, H, W) view, channels-last memory if ``geo`` asks for it."""
    if geo.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)  # memory (B, H, W, C); no-op if already so
    return x.unflatten(1, (geo.groups, geo.cw))  # (B, C/Cw, Cw, H, W), channel c = g*Cw + c % Cw


def _weight_view(weight: Tensor, geo: _Geometry) -> Tensor:
    """weight (B, heads, Cw, KK, Ho, Wo), memory (B, KK, Ho, Wo, heads, Cw) if channels-last."""
    if not geo.channels_last:
        return weight
    return weight.permute(0, 3, 4, 5, 1, 2).contiguous().permute(0, 4, 5, 1, 2, 3)  # same logical shape


def _empty(shape: tuple[int, ...], perm: tuple[int, ...] | None, like: Tensor, dtype: torch.dtype) -> Tensor:
    """Uninitialised tensor of logical ``shape`` whose memory order is ``perm`` (None: contiguous)."""
    if perm is None:
        return torch.empty(shape, dtype=dtype, device=like.device)
    buf = torch.empty([shape[i] for i in perm], dtype=dtype, device=like.device)  # memory order
    inverse = [perm.index(i) for i in range(len(perm))]
    return buf.permute(inverse)  # logical order


def _result(t: Tensor, shape: tuple[int, ...], dtype: torch.dtype, channels_last: bool = False) -> Tensor:
    """Reshape to ``shape``, convert to ``dtype`` and to contiguous / channels-last memory (copy only if needed)."""
    t = t.reshape(shape)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    if t.dtype == dtype and t.is_contiguous(memory_format=fmt):
        return t
    return t.to(dtype).contiguous(memory_format=fmt)


def _multiply_into(dst: Tensor, a: Tensor, b: Tensor, accumulate: bool) -> None:
    """``dst (+)= a * b`` in place; products of half inputs are formed in ``dst``'s float32."""
    if accumulate:
        dst.addcmul_(a, b)
    elif dst.dtype == a.dtype:
        torch.mul(a, b, out=dst)
    else:
        dst.copy_(a)
        dst.mul_(b)


def _zero_outside(t: Tensor, rows: slice, cols: slice) -> None:
    """Zero the last two dims of ``t`` outside the rectangle ``rows x cols`` (four strips at most)."""
    h, w = t.shape[-2:]
    t[..., : rows.start, :].zero_()
    t[..., rows.stop : h, :].zero_()
    t[..., rows, : cols.start].zero_()
    t[..., rows, cols.stop : w].zero_()


# ---------------------------------------------------------------------------------------------------


def _working_views(x: Tensor, weight: Tensor, geo: _Geometry) -> tuple[Tensor, Tensor]:
    """x as (B, C/Cw, Cw, H, W) and weight as (B, heads, Cw, KK, Ho, Wo) in the working layout
    (views for channels-first; one transposing copy each for channels-last unless already so)."""
    return _input_view(x, geo), _weight_view(weight, geo)


def _forward(xv: Tensor, wv: Tensor, geo: _Geometry) -> Tensor:
    """In-place multiply-accumulate over the K*K tap rectangles.

    Args:
        xv: (B, C/Cw, Cw, H, W) and wv: (B, heads, Cw, KK, Ho, Wo), from :func:`_working_views`.

    Returns:
        (B, heads, C/Cw, Cw, Ho, Wo) in the working layout and the accumulation dtype.
    """
    xv = xv.unsqueeze(1)  # (B, 1, C/Cw, Cw, H, W)
    wv = wv.unsqueeze(2)  # (B, heads, 1, Cw, KK, Ho, Wo)
    shape = (geo.batch, geo.heads, geo.groups, geo.cw, geo.out_h, geo.out_w)
    perm = (0, 4, 5, 1, 2, 3) if geo.channels_last else None  # memory (B, Ho, Wo, heads, C/Cw, Cw)
    out = _empty(shape, perm, xv, _acc_dtype(xv.dtype))  # (B, heads, C/Cw, Cw, Ho, Wo)
    taps = _taps(geo)
    if not taps or not taps[0].covers_output:
        out.zero_()  # some output pixels get no tap inside the image (non-"same" padding / strides)
    for i, t in enumerate(taps):
        _multiply_into(
            out[..., t.out_h, t.out_w],  # (B, heads, C/Cw, Cw, oh, ow)
            wv[:, :, :, :, t.k, t.out_h, t.out_w],  # (B, heads, 1, Cw, oh, ow)
            xv[..., t.in_h, t.in_w],  # (B, 1, C/Cw, Cw, oh, ow)
            accumulate=i > 0 or not t.covers_output,
        )
    return out


def _aggregate(x: Tensor, weight: Tensor, geo: _Geometry) -> tuple[Tensor, Tensor, Tensor]:
    """Output (B, heads*C, Ho, Wo) in ``x``'s dtype and memory format, plus the working views."""
    xv, wv = _working_views(x, weight, geo)
    out = _forward(xv, wv, geo)  # (B, heads, C/Cw, Cw, Ho, Wo)
    shape = (geo.batch, geo.heads * geo.channels, geo.out_h, geo.out_w)
    return _result(out, shape, x.dtype, _is_channels_last(x)), xv, wv


def _grad_output_view(grad: Tensor, geo: _Geometry) -> Tensor:
    """grad_out (B, heads*C, Ho, Wo) -> (B, heads, C/Cw, Cw, Ho, Wo) in the working layout and float32
    for half types (so every product below is formed exactly in the accumulation dtype)."""
    fmt = torch.channels_last if geo.channels_last else torch.contiguous_format
    grad = grad.to(_acc_dtype(grad.dtype)).contiguous(memory_format=fmt)  # no-op in the common case
    return grad.unflatten(1, (geo.heads, geo.groups, geo.cw))  # (B, heads, C/Cw, Cw, Ho, Wo)


def _grad_input(go: Tensor, wv: Tensor, geo: _Geometry, taps: Sequence[_Tap]) -> Tensor:
    """``grad_x[shifted rect] += sum_head grad_out[rect] * w_k[rect]`` tap by tap.

    Args:
        go: (B, heads, C/Cw, Cw, Ho, Wo) from :func:`_grad_output_view`; wv: (B, heads, Cw, KK, Ho, Wo).

    Returns:
        (B, C/Cw, Cw, H, W) in the working layout and ``go``'s dtype.
    """
    shape = (geo.batch, geo.groups, geo.cw, geo.height, geo.width)
    perm = (0, 3, 4, 1, 2) if geo.channels_last else None  # memory (B, H, W, C/Cw, Cw)
    gx = _empty(shape, perm, go, go.dtype)  # (B, C/Cw, Cw, H, W)
    if not taps or not taps[0].covers_input:
        gx.zero_()  # some input pixels are read by no tap (strides) or the first tap misses some
    for i, t in enumerate(taps):
        for head in range(geo.heads):
            _multiply_into(
                gx[..., t.in_h, t.in_w],  # (B, C/Cw, Cw, oh, ow) strided view of grad_x
                go[:, head, :, :, t.out_h, t.out_w],  # (B, C/Cw, Cw, oh, ow)
                wv[:, head, None, :, t.k, t.out_h, t.out_w],  # (B, 1, Cw, oh, ow)
                accumulate=i > 0 or head > 0 or not t.covers_input,
            )
    return gx


def _grad_weight(go: Tensor, xv: Tensor, geo: _Geometry, taps: Sequence[_Tap]) -> Tensor:
    """``grad_w[:, :, :, k][rect] = sum_g grad_out[g][rect] * x_g[shifted rect]`` tap by tap.

    The sum over the C/Cw channel groups is a chain of in-place multiply-adds for large maps (no
    temporary) and one product + reduction per tap for small ones (fewer, larger kernel launches).

    Args:
        go: (B, heads, C/Cw, Cw, Ho, Wo) from :func:`_grad_output_view`; xv: (B, C/Cw, Cw, H, W).

    Returns:
        (B, heads, Cw, KK, Ho, Wo) in the working layout and ``go``'s dtype.
    """
    kk = geo.kernel_size**2
    shape = (geo.batch, geo.heads, geo.cw, kk, geo.out_h, geo.out_w)
    perm = (0, 3, 4, 5, 1, 2) if geo.channels_last else None  # memory (B, KK, Ho, Wo, heads, Cw)
    gw = _empty(shape, perm, go, go.dtype)  # (B, heads, Cw, KK, Ho, Wo)
    chain = geo.batch * geo.heads * geo.cw * geo.out_h * geo.out_w > _GROUP_SUM_MAX_ELEMENTS
    touched = {t.k for t in taps}
    for k in range(kk):
        if k not in touched:
            gw[:, :, :, k].zero_()  # tap never inside the image (tiny inputs)
    for t in taps:
        _zero_outside(gw[:, :, :, t.k], t.out_h, t.out_w)  # border pixels whose tap falls in the padding
        dst = gw[:, :, :, t.k, t.out_h, t.out_w]  # (B, heads, Cw, oh, ow)
        go_t = go[..., t.out_h, t.out_w]  # (B, heads, C/Cw, Cw, oh, ow)
        x_t = xv[:, None, :, :, t.in_h, t.in_w]  # (B, 1, C/Cw, Cw, oh, ow)
        if chain:
            for g in range(geo.groups):
                _multiply_into(dst, go_t[:, :, g], x_t[:, :, g], accumulate=g > 0)
        else:
            torch.sum(go_t * x_t, dim=2, out=dst)
    return gw


class _LocalAggregation(torch.autograd.Function):
    """Autograd wrapper: fast forward, explicit equally fast backward (first order only).

    Saves the working-layout views of x and weight (the inputs themselves for channels-first; the
    channels-last copies otherwise, so the backward does not transpose them again).
    """

    @staticmethod
    def forward(ctx: FunctionCtx, x: Tensor, weight: Tensor, geo: _Geometry) -> Tensor:  # type: ignore[override]
        out, xv, wv = _aggregate(x, weight, geo)
        ctx.save_for_backward(xv, wv)
        ctx.geo = geo  # type: ignore[attr-defined]
        ctx.x_meta = (tuple(x.shape), x.dtype, _is_channels_last(x))  # type: ignore[attr-defined]
        ctx.w_meta = (tuple(weight.shape), weight.dtype)  # type: ignore[attr-defined]
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None]:  # type: ignore[override]
        xv, wv = ctx.saved_tensors
        geo: _Geometry = ctx.geo
        go = _grad_output_view(grad, geo)  # (B, heads, C/Cw, Cw, Ho, Wo)
        taps = _taps(geo)
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = _result(_grad_input(go, wv, geo, taps), *ctx.x_meta)  # (B, C, H, W)
        if ctx.needs_input_grad[1]:
            grad_w = _result(_grad_weight(go, xv, geo, taps), *ctx.w_meta)  # (B, heads, Cw, KK, Ho, Wo)
        return grad_x, grad_w, None


def local_aggregation(
    x: Tensor, weight: Tensor, kernel_size: int, stride: int = 1, padding: int | None = None, dilation: int = 1
) -> Tensor:
    """Local k x k aggregation without unfolding (same result as :func:`local_aggregation_reference`).

    Args:
        x: (B, C, H, W) input, contiguous or channels-last.
        weight: (B, heads, Cw, K*K, Ho, Wo) per-pixel kernels; channel ``c`` uses map ``c % Cw``.
        kernel_size: K.
        stride, dilation: as for a convolution.
        padding: zero padding; ``None`` means ``dilation*(K-1)//2`` (the official CoT layer: (K-1)//2).

    Returns:
        (B, heads*C, Ho, Wo) in the dtype and memory format (contiguous / channels-last) of ``x``.
        Differentiable w.r.t. ``x`` and ``weight`` (first order; double backward is not supported).

    Raises:
        AggregationShapeError: (also a ``ValueError``) if shapes, dtypes or geometry do not fit.
    """
    geo = _check(x, weight, kernel_size, stride, padding, dilation)
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
        out: Tensor = _LocalAggregation.apply(x, weight, geo)
        return out
    return _aggregate(x, weight, geo)[0]
