"""Local k x k aggregation (the official ``LocalConvolution`` / ``aggregation_zeropad`` CuPy kernel).

Semantics (official kernel index arithmetic, see ``../shared/reference/README.md``)::

    out[b, head*C + c, h, w] = sum_{kh, kw} W[b, head, c % Cw, kh*K + kw, h, w]
                               * Xpad[b, c, h*stride - pad + kh*dil, w*stride - pad + kw*dil]

with zero padding. ``x``: (B, C, H, W); ``weight``: (B, heads, Cw, K*K, Ho, Wo) with ``C % Cw == 0``;
output: (B, heads*C, Ho, Wo). Channel ``c`` uses weight map ``c % Cw`` (interleaved, not blocked).

Three formulations of the same sum:

- :func:`local_aggregation_reference` unfolds the input (K*K times its size); the tests' ground truth.
- The fast kernels (``_aggregation_kernel``, ``_grad_input_kernel``, ``_grad_weight_kernel``) never
  materialise the unfolded tensor (their temporaries are at most one copy of the input / weight /
  output, in another memory layout). For each of the K*K taps they compute the rectangle of output
  pixels whose tap falls inside the image and accumulate ``out[rect] += w_k[rect] * x[shifted rect]``
  in place, where every operand is a strided *view* (zero padding is implicit: out-of-image taps are
  simply skipped, no padded copy is made). The input is viewed as (B, 1, C/Cw, Cw, H, W) and the weight
  as (B, heads, 1, Cw, Ho, Wo), so one weight map broadcasts over its C/Cw channels without a repeat.
  The centre tap covers the whole output for "same" padding and initialises it (no zero fill).
  ``grad_x`` is a shifted accumulation over the same rectangles, ``grad_w`` per-tap products summed
  over the C/Cw channel groups. They run only inside the registered operators of
  :mod:`cotviz.ops._library` (``torch.ops.cotviz.local_aggregation`` and its two backward operators),
  so no tracer (torch.compile, torch.export, fx, jit.trace) ever sees their in-place ``out=`` views.
- ``_aggregation_plain``: pad once, then K*K strided slices, multiplies and adds in plain
  differentiable torch ops -- what the ONNX exporters record (a compact graph, no ``out=``).

:func:`local_aggregation` is the entry point: it calls the registered operator, whose autograd
formula is again made of the registered operators (the backward is bilinear: every derivative of
the aggregation is an aggregation, a ``grad_x`` or a ``grad_w``), so gradients of every order are
exact, and ``torch.func`` (grad, vmap, jacrev) works through its batching rules.

Measured choices (``benchmarks/bench_aggregation.py``): a padded "wide" layout with flat contiguous
shifts was tried and lost (it needs a tap-major copy of the weight); for small maps (Ho*Wo <=
``_CHANNELS_LAST_MAX_PIXELS``) the rows are too short to stream, so the work is done channels-last
(inner loop over Cw instead of Wo) at the price of transposing copies; channels-last inputs are
processed channels-last unless their weight maps are narrow (Cw < ``_CHANNELS_LAST_MIN_CW``, where the
inner runs are too short and the transposes to channels-first pay), and always give a channels-last output. Plain tensor ops only, so the same
code runs on CUDA tensors (the meta device and tracers use the shape-only "fake" implementation).
float16 / bfloat16 accumulate in float32 and round once.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from cotviz.errors import CotvizError

__all__ = [
    "AggregationShapeError",
    "check_aggregation",
    "check_geometry",
    "check_grad_input",
    "check_grad_weight",
    "default_padding",
    "local_aggregation",
    "local_aggregation_reference",
    "output_size",
]

# Maps with at most this many output pixels are aggregated channels-last (rows of <= 10 pixels stream
# badly; the transposes are cheap at that size), as are channels-last inputs of any size whose weight
# maps have at least _CHANNELS_LAST_MIN_CW channels. Measured on CPU with the stage shapes of CoTNet-50
# (benchmarks/bench_aggregation.py).
_CHANNELS_LAST_MAX_PIXELS = 10 * 10
# Channels-last, the innermost run of every tap's multiply-add is Cw elements (the weight broadcasts over
# the C/Cw groups just outside it): with Cw = 8 (CoTNet-50 stage 1, 56x56) the per-run overhead dominates,
# and transposing x and the weight to channels-first, aggregating there and transposing the output back
# costs less: 13.9 vs 17.9 ms at B=8, C=64, 56x56, 1.9 vs 2.6 ms at B=1 (CPU time, 1 thread). From Cw = 16
# (stage 2, 28x28) channels-last wins again (5.2 vs 6.0 ms at B=8).
_CHANNELS_LAST_MIN_CW = 16
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


#: A size: a Python int in eager mode, a ``torch.SymInt`` while tracing with dynamic shapes (typed as
#: ``int``, as ``torch.Size`` is).
Size = int


def default_padding(kernel_size: int, dilation: int, padding: int | None) -> int:
    """``padding``, or ``dilation*(K-1)//2`` ("same" for stride 1 and odd K) when it is ``None``."""
    return dilation * (kernel_size - 1) // 2 if padding is None else padding


def _require(ok: bool | torch.SymBool, message: Callable[[], str]) -> None:
    """Raise :class:`AggregationShapeError` unless ``ok``.

    A symbolic condition (a tracer's dynamic size) becomes ``torch._check``: the tracer records it
    as a guard or a run-time assertion instead of branching on it.
    """
    if isinstance(ok, torch.SymBool):
        torch._check(ok, message)
    elif not ok:
        raise AggregationShapeError(message())


def check_geometry(kernel_size: int, stride: int, padding: int, dilation: int) -> None:
    """Validate the convolution-like arguments (raises :class:`AggregationShapeError`)."""
    if kernel_size < 1 or stride < 1 or dilation < 1 or padding < 0:
        raise AggregationShapeError(
            f"local aggregation needs kernel_size, stride, dilation >= 1 and padding >= 0, got "
            f"kernel_size={kernel_size}, stride={stride}, padding={padding}, dilation={dilation}"
        )


def _check_sizes(
    x_shape: Sequence[Size], w_shape: Sequence[Size], kernel_size: int, stride: int, padding: int, dilation: int
) -> tuple[Size, Size]:
    """Validate x (B, C, H, W) against weight (B, heads, Cw, K*K, Ho, Wo); returns (Ho, Wo)."""
    check_geometry(kernel_size, stride, padding, dilation)
    if len(x_shape) != 4:
        raise AggregationShapeError(f"local aggregation input must be 4-D (B, C, H, W), got shape {tuple(x_shape)}")
    if len(w_shape) != 6:
        raise AggregationShapeError(
            f"local aggregation weight must be 6-D (B, heads, Cw, K*K, Ho, Wo), got shape {tuple(w_shape)}"
        )
    b, c, h, w = x_shape
    wb, _, cw, kk, ho, wo = w_shape
    exp_h = output_size(h, kernel_size, stride, padding, dilation)
    exp_w = output_size(w, kernel_size, stride, padding, dilation)
    for exp in (exp_h, exp_w):
        _require(exp >= 1, lambda: (
            f"input {h}x{w} is too small for kernel_size={kernel_size}, dilation={dilation}, padding={padding}; "
            "increase the padding or the input size"))
    _require(wb == b, lambda: f"weight batch {wb} does not match input batch {b}")
    _require(cw >= 1, lambda: f"input channels {c} must be a multiple of the weight's Cw={cw} (weight dim 2)")
    _require(c % cw == 0, lambda: f"input channels {c} must be a multiple of the weight's Cw={cw} (weight dim 2)")
    _require(kk == kernel_size * kernel_size, lambda: (
        f"weight dim 3 is {kk}, expected kernel_size**2 = {kernel_size * kernel_size} for kernel_size={kernel_size}"))
    for got, exp in ((ho, exp_h), (wo, exp_w)):
        _require(got == exp, lambda: (
            f"weight spatial size {ho}x{wo} does not match the output size {exp_h}x{exp_w} of a {h}x{w} input "
            f"(kernel_size={kernel_size}, stride={stride}, padding={padding}, dilation={dilation})"))
    return exp_h, exp_w


def _check_pair(a: Tensor, b: Tensor, names: str) -> None:
    """Both tensors share one floating dtype and one device."""
    if not (a.is_floating_point() and a.dtype == b.dtype and a.device == b.device):
        raise AggregationShapeError(
            f"{names} must share one floating dtype and device, got {a.dtype} on {a.device} and "
            f"{b.dtype} on {b.device}"
        )


def check_aggregation(
    x: Tensor, weight: Tensor, kernel_size: int, stride: int, padding: int, dilation: int
) -> tuple[Size, Size]:
    """Validate the arguments of the aggregation; returns (Ho, Wo) (raises :class:`AggregationShapeError`).

    Works on real, meta and fake (traced, possibly symbolic-size) tensors.
    """
    ho_wo = _check_sizes(x.shape, weight.shape, kernel_size, stride, padding, dilation)
    _check_pair(x, weight, "input and weight")
    return ho_wo


def _check_grad(grad: Tensor, expected: Sequence[Size]) -> None:
    """The incoming gradient has the aggregation's output shape (B, heads*C, Ho, Wo)."""
    if grad.dim() != 4:
        raise AggregationShapeError(f"local aggregation gradient must be 4-D, got shape {tuple(grad.shape)}")
    for got, exp in zip(grad.shape, expected, strict=True):
        _require(got == exp, lambda: (
            f"gradient shape {tuple(grad.shape)} does not match the aggregation output shape {tuple(expected)}"))


def check_grad_input(
    grad: Tensor, weight: Tensor, height: Size, width: Size, kernel_size: int, stride: int, padding: int,
    dilation: int,
) -> tuple[Size, Size, Size, Size]:
    """Validate the arguments of ``grad_x``; returns the input shape (B, C, H, W)."""
    if grad.dim() != 4 or weight.dim() != 6:
        raise AggregationShapeError(f"grad_x needs a 4-D gradient and a 6-D weight, got shapes "
                                    f"{tuple(grad.shape)} and {tuple(weight.shape)}")
    heads = weight.shape[1]
    _require(heads >= 1, lambda: f"weight dim 1 (heads) must be >= 1, got {heads}")
    _require(grad.shape[1] % heads == 0, lambda: (
        f"gradient channels {grad.shape[1]} must be a multiple of the weight's heads={heads}"))
    x_shape = (grad.shape[0], grad.shape[1] // heads, height, width)
    ho, wo = _check_sizes(x_shape, weight.shape, kernel_size, stride, padding, dilation)
    _check_grad(grad, (x_shape[0], grad.shape[1], ho, wo))
    _check_pair(grad, weight, "gradient and weight")
    return x_shape


def check_grad_weight(
    grad: Tensor, x: Tensor, cw: Size, kernel_size: int, stride: int, padding: int, dilation: int
) -> tuple[Size, ...]:
    """Validate the arguments of ``grad_w``; returns the weight shape (B, heads, Cw, K*K, Ho, Wo)."""
    if grad.dim() != 4 or x.dim() != 4:
        raise AggregationShapeError(f"grad_w needs a 4-D gradient and a 4-D input, got shapes "
                                    f"{tuple(grad.shape)} and {tuple(x.shape)}")
    b, c, h, w = x.shape
    _require(c >= 1, lambda: f"input channels must be >= 1, got {c}")
    _require(grad.shape[1] % c == 0, lambda: (
        f"gradient channels {grad.shape[1]} must be a multiple of the input channels {c}"))
    ho = output_size(h, kernel_size, stride, padding, dilation)
    wo = output_size(w, kernel_size, stride, padding, dilation)
    w_shape = (b, grad.shape[1] // c, cw, kernel_size * kernel_size, ho, wo)
    _check_sizes(x.shape, w_shape, kernel_size, stride, padding, dilation)
    _check_grad(grad, (b, grad.shape[1], ho, wo))
    _check_pair(grad, x, "gradient and input")
    return w_shape


def _geometry(batch: int, channels: int, height: int, width: int, heads: int, cw: int, kernel_size: int,
              stride: int, padding: int, dilation: int, channels_last_input: bool) -> _Geometry:
    """Geometry of one kernel call (concrete sizes; the working layout chosen from the map size)."""
    out_h = output_size(height, kernel_size, stride, padding, dilation)
    out_w = output_size(width, kernel_size, stride, padding, dilation)
    channels_last = (out_h * out_w <= _CHANNELS_LAST_MAX_PIXELS
                     or (channels_last_input and cw >= _CHANNELS_LAST_MIN_CW))
    return _Geometry(batch, channels, height, width, heads, cw, kernel_size, stride, padding, dilation,
                     out_h, out_w, channels_last)


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
    pad = default_padding(kernel_size, dilation, padding)
    ho, wo = check_aggregation(x, weight, kernel_size, stride, pad, dilation)
    b, c, heads, cw = x.shape[0], x.shape[1], weight.shape[1], weight.shape[2]
    kk = kernel_size * kernel_size
    cols = F.unfold(x, kernel_size, dilation=dilation, padding=pad, stride=stride)  # (B, C*KK, Ho*Wo)
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
    # memory (B, H, W, C) or (B, C, H, W); no-op if already so
    x = x.contiguous(memory_format=torch.channels_last if geo.channels_last else torch.contiguous_format)
    return x.unflatten(1, (geo.groups, geo.cw))  # (B, C/Cw, Cw, H, W), channel c = g*Cw + c % Cw


def _weight_view(weight: Tensor, geo: _Geometry) -> Tensor:
    """weight (B, heads, Cw, KK, Ho, Wo), memory (B, KK, Ho, Wo, heads, Cw) if channels-last."""
    if not geo.channels_last:
        return weight.contiguous()  # no-op for a weight computed channels-first
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


def _aggregate(x: Tensor, weight: Tensor, geo: _Geometry) -> Tensor:
    """Output (B, heads*C, Ho, Wo) in ``x``'s dtype and memory format."""
    out = _forward(*_working_views(x, weight, geo), geo)  # (B, heads, C/Cw, Cw, Ho, Wo)
    shape = (geo.batch, geo.heads * geo.channels, geo.out_h, geo.out_w)
    return _result(out, shape, x.dtype, _is_channels_last(x))


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


# ---------------------------------------------------------------------------------------------------
# Kernels of the registered operators (cotviz.ops._library): real tensors, concrete sizes, any device.


def _aggregation_kernel(
    x: Tensor, weight: Tensor, kernel_size: int, stride: int, padding: int, dilation: int
) -> Tensor:
    """Fast forward: x (B, C, H, W), weight (B, heads, Cw, K*K, Ho, Wo) -> (B, heads*C, Ho, Wo)."""
    check_aggregation(x, weight, kernel_size, stride, padding, dilation)
    b, c, h, w = x.shape
    geo = _geometry(b, c, h, w, weight.shape[1], weight.shape[2], kernel_size, stride, padding, dilation,
                    _is_channels_last(x))
    return _aggregate(x, weight, geo)


def _grad_input_kernel(
    grad: Tensor, weight: Tensor, height: int, width: int, kernel_size: int, stride: int, padding: int,
    dilation: int,
) -> Tensor:
    """``grad_x``: grad (B, heads*C, Ho, Wo), weight (B, heads, Cw, K*K, Ho, Wo) -> (B, C, H, W).

    Contiguous or channels-last like ``grad``, in ``grad``'s dtype.
    """
    b, c, h, w = check_grad_input(grad, weight, height, width, kernel_size, stride, padding, dilation)
    grad_cl = _is_channels_last(grad)
    geo = _geometry(b, c, h, w, weight.shape[1], weight.shape[2], kernel_size, stride, padding, dilation, grad_cl)
    go = _grad_output_view(grad, geo)  # (B, heads, C/Cw, Cw, Ho, Wo)
    gx = _grad_input(go, _weight_view(weight, geo), geo, _taps(geo))  # (B, C/Cw, Cw, H, W)
    return _result(gx, (b, c, h, w), grad.dtype, grad_cl)


def _grad_weight_kernel(
    grad: Tensor, x: Tensor, cw: int, kernel_size: int, stride: int, padding: int, dilation: int
) -> Tensor:
    """``grad_w``: grad (B, heads*C, Ho, Wo), x (B, C, H, W) -> (B, heads, Cw, K*K, Ho, Wo), contiguous."""
    shape = check_grad_weight(grad, x, cw, kernel_size, stride, padding, dilation)
    b, c, h, w = x.shape
    geo = _geometry(b, c, h, w, shape[1], cw, kernel_size, stride, padding, dilation, _is_channels_last(x))
    go = _grad_output_view(grad, geo)  # (B, heads, C/Cw, Cw, Ho, Wo)
    gw = _grad_weight(go, _input_view(x, geo), geo, _taps(geo))  # (B, heads, Cw, KK, Ho, Wo)
    return _result(gw, tuple(shape), grad.dtype)


# ---------------------------------------------------------------------------------------------------


def _aggregation_plain(
    x: Tensor, weight: Tensor, kernel_size: int, stride: int, padding: int, dilation: int
) -> Tensor:
    """The aggregation in plain differentiable torch ops: what the ONNX exporters record, and what
    runs under forward-mode AD and torch.func's grad transforms (every aten op has their rules).

    One zero pad, then per tap a strided slice of the padded input (rows sliced once per kernel row),
    one slice of the weight, a multiply and an add: about 5*K*K + 5 ONNX nodes per layer, no ``out=``
    and no K*K-sized temporary. Sizes come from the tensors, so a dynamic batch (and, for the dynamo
    exporter, dynamic H and W) stays dynamic.

    Args: as :func:`local_aggregation` (``padding`` resolved). Returns (B, heads*C, Ho, Wo).
    """
    dtype = x.dtype
    acc = _acc_dtype(dtype)
    cw = weight.shape[2]
    xp = F.pad(x.to(acc), (padding, padding, padding, padding))  # (B, C, Hp, Wp) = (B, C, H + 2p, W + 2p)
    xp = xp.unflatten(1, (x.shape[1] // cw, cw)).unsqueeze(1)  # (B, 1, C/Cw, Cw, Hp, Wp)
    wv = weight.to(acc).unsqueeze(2)  # (B, heads, 1, Cw, KK, Ho, Wo)
    k, s, d = kernel_size, stride, dilation
    out: Tensor | None = None
    for kh in range(k):
        # padded rows kh*d + s*o, o < Ho: [kh*d, Hp - (K-1-kh)*d) in steps of s holds exactly Ho of them,
        # and a constant (negative) end needs no size arithmetic in the exported graph
        rows = xp[..., kh * d : -(k - 1 - kh) * d or None : s, :]  # (B, 1, C/Cw, Cw, Ho, Wp)
        for kw in range(k):
            tap = rows[..., kw * d : -(k - 1 - kw) * d or None : s]  # (B, 1, C/Cw, Cw, Ho, Wo)
            term = tap * wv[:, :, :, :, kh * k + kw]  # (B, heads, C/Cw, Cw, Ho, Wo)
            out = term if out is None else out + term
    assert out is not None  # k >= 1
    return out.flatten(1, 3).to(dtype)  # (B, heads*C, Ho, Wo)


def _grad_input_plain(
    grad: Tensor, weight: Tensor, height: int, width: int, kernel_size: int, stride: int, padding: int,
    dilation: int,
) -> Tensor:
    """``grad_x`` in plain differentiable torch ops (per-tap products, then ``F.fold``), for forward-mode AD
    and torch.func; same arguments and result as ``_grad_input_kernel``."""
    b, c, h, w = check_grad_input(grad, weight, height, width, kernel_size, stride, padding, dilation)
    heads, cw, kk, ho, wo = weight.shape[1:]
    acc = _acc_dtype(grad.dtype)
    go = grad.to(acc).unflatten(1, (heads, c // cw, cw)).unsqueeze(4)  # (B, heads, C/Cw, Cw, 1, Ho, Wo)
    cols = (go * weight.to(acc).unsqueeze(2)).sum(1)  # (B, C/Cw, Cw, KK, Ho, Wo)
    gx = F.fold(cols.reshape(b, c * kk, ho * wo), (h, w), kernel_size, dilation=dilation, padding=padding,
                stride=stride)  # (B, C, H, W)
    return gx.to(grad.dtype)


def _grad_weight_plain(
    grad: Tensor, x: Tensor, cw: int, kernel_size: int, stride: int, padding: int, dilation: int
) -> Tensor:
    """``grad_w`` in plain differentiable torch ops (``F.unfold``, product, group sum), for forward-mode AD
    and torch.func; same arguments and result as ``_grad_weight_kernel``."""
    b, heads, _, kk, ho, wo = check_grad_weight(grad, x, cw, kernel_size, stride, padding, dilation)
    acc = _acc_dtype(grad.dtype)
    groups = x.shape[1] // cw
    cols = F.unfold(x.to(acc), kernel_size, dilation=dilation, padding=padding, stride=stride)  # (B, C*KK, Ho*Wo)
    cols = cols.view(b, 1, groups, cw, kk, ho, wo)  # (B, 1, C/Cw, Cw, KK, Ho, Wo)
    go = grad.to(acc).view(b, heads, groups, cw, 1, ho, wo)  # (B, heads, C/Cw, Cw, 1, Ho, Wo)
    return (cols * go).sum(2).to(grad.dtype)  # (B, heads, Cw, KK, Ho, Wo)


def local_aggregation(
    x: Tensor, weight: Tensor, kernel_size: int, stride: int = 1, padding: int | None = None, dilation: int = 1
) -> Tensor:
    """Local k x k aggregation without unfolding (same result as :func:`local_aggregation_reference`).

    Calls the registered operator ``torch.ops.cotviz.local_aggregation`` (one opaque node for
    torch.compile, torch.export and fx; counted by ``FlopCounterMode``); during an ONNX export it
    records the plain-op formulation instead, which every ONNX runtime executes.

    Args:
        x: (B, C, H, W) input, contiguous or channels-last.
        weight: (B, heads, Cw, K*K, Ho, Wo) per-pixel kernels; channel ``c`` uses map ``c % Cw``.
        kernel_size: K.
        stride, dilation: as for a convolution.
        padding: zero padding; ``None`` means ``dilation*(K-1)//2`` (the official CoT layer: (K-1)//2).

    Returns:
        (B, heads*C, Ho, Wo) in the dtype and memory format (contiguous / channels-last) of ``x``.
        Differentiable w.r.t. ``x`` and ``weight`` to any order (double backward, Hessian-vector
        products), also under ``torch.func.grad`` / ``vmap`` / ``jacrev``.

    Raises:
        AggregationShapeError: (also a ``ValueError``) if shapes, dtypes or geometry do not fit.
    """
    pad = default_padding(kernel_size, dilation, padding)
    check_geometry(kernel_size, stride, pad, dilation)
    if torch.onnx.is_in_onnx_export():
        if not torch.jit.is_tracing():  # the legacy exporter's tracer would record the checks' size reads
            check_aggregation(x, weight, kernel_size, stride, pad, dilation)
        return _aggregation_plain(x, weight, kernel_size, stride, pad, dilation)
    out: Tensor = torch.ops.cotviz.local_aggregation.default(x, weight, kernel_size, stride, pad, dilation)
    return out
