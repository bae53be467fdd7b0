"""Counting rules of the two conventions: ``complete`` (per aten op) and ``official`` (per module).

Units: one MAC = one multiply-accumulate; FLOPs = 2 x MACs (fvcore: "one fused multiply-add = one
flop" is *our* MAC). Operations that are not multiply-adds (a comparison, an exp, a lone add) count one
MAC-equivalent per element, as the official counter does for BN/ReLU/pools.

``complete`` (the default) counts every aten op a forward runs, attributed to the innermost module:

============================  =====================================================================
conv                          ``N*Cout*Ho*Wo * Cin/groups * kh*kw`` (+ ``N*Cout*Ho*Wo`` for the bias)
linear                        ``M*N*K`` (+ ``M*N`` bias) for addmm / mm / bmm
local aggregation             ``C*k*k*Ho*Wo`` per sample, once (the module, not its internal kernels)
local relation                ``heads*k*k*H*W * C/heads`` per sample (local self-attention's K ⊛ Q), once
normalisation                 BatchNorm ``2*numel`` (folded scale+shift); Group/LayerNorm ``4*numel``
                              (``sum x``, ``sum x^2``, then one folded multiply-add per element)
activation                    ReLU/SiLU/sigmoid/GELU ``numel``; softmax ``3*numel`` (exp, sum, divide)
pooling                       max/avg pool ``numel(out)*kh*kw``; adaptive avg pool and ``mean`` ``numel(in)``;
                              BlurPool2d (a depthwise conv inside) is counted here
elementwise                   add/sub/mul/div ``numel(out)``; addcmul ``2*numel``; ``sum`` ``numel(in)``;
                              lerp ``3*numel`` (``start + weight * (end - start)``)
data movement                 views, cat/stack, pads, copies, allocations: 0 MACs (memory still counted)
============================  =====================================================================

Any aten op not in these tables is reported as *uncounted*, never silently zero.

``official`` reproduces ``utils/flops_counter.py`` of JDAI-CV/CoTNet (ptflops-derived), as recorded in
``../shared/reference/flops_reference.json`` (``_conventions``, ``counter_quirks``): leaf modules only,
Conv2d ``K*K*Cin/groups*Cout*Ho*Wo`` (+ ``Cout*Ho*Wo`` bias), BatchNorm2d ``2*numel(in)``, ReLU/SiLU/Sigmoid
``numel(out)``, pools ``numel(in)``, Linear ``in*out`` (no bias), LocalConvolution
``input.shape[0] * in_channels * K*K*Ho*Wo`` with the official ``in_channels = C`` -- which double counts
CoXt layers, whose aggregation runs on a (2B, C/2, H, W) view. Everything else (GroupNorm, softmax, cat,
fusion arithmetic, residual add, BlurPool2d, pads, Identity) is zero there.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from cotviz.layers.aggregation import LocalAggregation
from cotviz.layers.blur import BlurPool2d
from cotviz.layers.self_attention import LocalRelation

__all__ = [
    "KINDS", "CONV", "LINEAR", "LOCAL_AGG", "LOCAL_REL", "NORM", "ACT", "POOL", "ELEMENTWISE", "DATA",
    "OpRule", "ModuleRule", "OfficialRule", "complete_rule", "is_zero_cost", "official_count", "is_officially_counted", "opaque_rule",
    "module_kind_override",
]

CONV = "conv"
LINEAR = "linear"
LOCAL_AGG = "local aggregation"
LOCAL_REL = "local relation"
NORM = "normalisation"
ACT = "activation"
POOL = "pooling"
ELEMENTWISE = "elementwise"
DATA = "data movement"
#: Operator types in report order.
KINDS: tuple[str, ...] = (CONV, LINEAR, LOCAL_AGG, LOCAL_REL, NORM, ACT, POOL, ELEMENTWISE, DATA)

aten = torch.ops.aten

#: (kind, macs(args, kwargs, out)) for one aten op call; ``out`` is the op's first tensor result.
OpRule = tuple[str, Callable[[tuple[Any, ...], dict[str, Any], Tensor], int]]
#: (kind, macs(module, inputs, output)) for one module call.
ModuleRule = tuple[str, Callable[[nn.Module, tuple[Any, ...], Any], int]]
#: (kind, macs(module, inputs, output, batch)) for one module call under the official convention; ``batch``
#: is the network input's batch size.
OfficialRule = tuple[str, Callable[[nn.Module, tuple[Any, ...], Any, int], int]]


def _numel(args: tuple[Any, ...], kwargs: dict[str, Any], out: Tensor) -> int:
    return out.numel()


def _numel_in(args: tuple[Any, ...], kwargs: dict[str, Any], out: Tensor) -> int:
    return int(args[0].numel())


def _times(k: int, fn: Callable[[tuple[Any, ...], dict[str, Any], Tensor], int]) -> Callable[..., int]:
    return lambda args, kwargs, out: k * fn(args, kwargs, out)


def _conv(args: tuple[Any, ...], kwargs: dict[str, Any], out: Tensor) -> int:
    # aten.convolution(input, weight, bias, stride, padding, dilation, transposed, output_padding, groups)
    x, w, bias, transposed = args[0], args[1], args[2], bool(args[6])
    kernel = math.prod(w.shape[2:])
    if transposed:  # weight (Cin, Cout/groups, k...): every input element feeds Cout/groups * k outputs
        macs = x.numel() * w.shape[1] * kernel
    else:  # weight (Cout, Cin/groups, k...): every output element is Cin/groups * k MACs
        macs = out.numel() * w.shape[1] * kernel
    return int(macs + (out.numel() if bias is not None else 0))


def _addmm(args: tuple[Any, ...], kwargs: dict[str, Any], out: Tensor) -> int:
    # addmm(bias, a (M, K), b (K, N)) -> (M, N)
    return int(out.numel() * args[1].shape[-1] + out.numel())


def _mm(args: tuple[Any, ...], kwargs: dict[str, Any], out: Tensor) -> int:
    # mm (M, K) @ (K, N) / bmm (B, M, K) @ (B, K, N): every output element is K MACs
    return int(out.numel() * args[0].shape[-1])


def _pool_window(args: tuple[Any, ...], kwargs: dict[str, Any], out: Tensor) -> int:
    # avg_pool2d / max_pool2d_with_indices(input, kernel_size, ...): every output reads kh*kw inputs
    kernel = args[1]
    kh, kw = (kernel[0], kernel[-1]) if len(kernel) else (1, 1)
    return int(out.numel() * kh * kw)


_COMPLETE: dict[Any, OpRule] = {
    aten.convolution: (CONV, _conv),
    aten.addmm: (LINEAR, _addmm),
    aten.mm: (LINEAR, _mm),
    aten.bmm: (LINEAR, _mm),
    aten.native_batch_norm: (NORM, _times(2, _numel_in)),
    aten._native_batch_norm_legit_no_training: (NORM, _times(2, _numel_in)),
    aten._native_batch_norm_legit: (NORM, _times(2, _numel_in)),
    aten.native_group_norm: (NORM, _times(4, _numel_in)),
    aten.native_layer_norm: (NORM, _times(4, _numel_in)),
    aten._softmax: (ACT, _times(3, _numel_in)),
    aten._log_softmax: (ACT, _times(3, _numel_in)),
    aten.max_pool2d_with_indices: (POOL, _pool_window),
    aten.max_pool2d: (POOL, _pool_window),
    aten.avg_pool2d: (POOL, _pool_window),
    aten._adaptive_avg_pool2d: (POOL, _numel_in),
    aten.adaptive_max_pool2d: (POOL, _numel_in),
    aten.mean: (POOL, _numel_in),
    aten.sum: (ELEMENTWISE, _numel_in),
    aten.addcmul: (ELEMENTWISE, _times(2, _numel)),
    aten.addcmul_: (ELEMENTWISE, _times(2, _numel)),
    aten.addcdiv: (ELEMENTWISE, _times(2, _numel)),
    aten.addcdiv_: (ELEMENTWISE, _times(2, _numel)),
    aten.lerp: (ELEMENTWISE, _times(3, _numel)),  # start + weight * (end - start)
    aten.lerp_: (ELEMENTWISE, _times(3, _numel)),
}
for _name in ("relu", "silu", "sigmoid", "gelu", "tanh", "hardtanh", "hardswish", "hardsigmoid", "leaky_relu",
              "elu", "mish", "softplus"):
    for _suffix in ("", "_"):
        _packet = getattr(aten, _name + _suffix, None)
        if _packet is not None:
            _COMPLETE[_packet] = (ACT, _numel)
for _name in ("add", "sub", "rsub", "mul", "div", "neg", "exp", "log", "sqrt", "rsqrt", "pow", "reciprocal",
              "abs", "clamp", "clamp_min", "clamp_max", "maximum", "minimum", "where"):
    for _suffix in ("", "_"):
        _packet = getattr(aten, _name + _suffix, None)
        if _packet is not None:
            _COMPLETE[_packet] = (ELEMENTWISE, _numel)

#: Ops that move or allocate memory but do no arithmetic: 0 MACs by definition, not "uncounted".
_ZERO_COST: frozenset[Any] = frozenset(
    getattr(aten, n) for n in (
        "view", "_unsafe_view", "reshape", "_reshape_alias", "permute", "transpose", "t", "unsqueeze", "squeeze",
        "select", "slice", "expand", "alias", "as_strided", "detach", "clone", "contiguous", "copy_", "copy",
        "cat", "stack", "constant_pad_nd", "reflection_pad1d", "reflection_pad2d", "replication_pad2d",
        "empty", "empty_strided", "empty_like", "empty_permuted", "new_empty", "new_empty_strided", "zeros",
        "zeros_like", "ones", "ones_like", "full", "full_like", "new_zeros", "new_ones", "new_full", "fill_",
        "zero_", "split", "split_with_sizes", "chunk", "unbind", "flatten", "_to_copy", "lift_fresh",
        "lift_fresh_copy", "im2col", "col2im", "unfold", "narrow", "index_select", "gather", "roll", "flip",
        "repeat", "_unsafe_split", "masked_fill", "masked_fill_", "dropout", "native_dropout", "bernoulli_",
        "scalar_tensor", "_local_scalar_dense", "arange",
    ) if hasattr(aten, n)
)


def complete_rule(func: Any) -> OpRule | None:
    """The ``complete``-convention rule of an aten op overload (``None``: unknown -> uncounted)."""
    return _COMPLETE.get(func.overloadpacket)


def is_zero_cost(func: Any) -> bool:
    """Whether an aten op is pure data movement / allocation (0 MACs by definition)."""
    return func.overloadpacket in _ZERO_COST


def _local_agg(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> int:
    # output (B', heads*C', Ho, Wo): every output element is a K*K-term weighted sum
    assert isinstance(module, LocalAggregation)
    return int(output.numel() * module.kernel_size * module.kernel_size)


def _local_rel(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> int:
    # output (B, heads, K*K, H, W): every element is a dot product over the head's C/heads channels
    assert isinstance(module, LocalRelation)
    return int(output.numel() * (inputs[0].shape[1] // module.heads))


def _by_type(table: dict[type[nn.Module], Any], module: nn.Module) -> Any:
    """The entry of the nearest class of ``module`` (its own, else a base class) in ``table``."""
    for cls in type(module).__mro__:
        entry = table.get(cls)
        if entry is not None:
            return entry
    return None


#: Modules whose internals are one operator: counted once at module level, whatever runs inside (aten
#: kernels or a registered custom op), their own ops not at all. Subclasses share their base's rule.
_OPAQUE: dict[type[nn.Module], ModuleRule] = {LocalAggregation: (LOCAL_AGG, _local_agg),
                                              LocalRelation: (LOCAL_REL, _local_rel)}
#: Modules whose arithmetic ops all belong to one operator type (e.g. BlurPool's conv is pooling).
_KIND_OVERRIDE: dict[type[nn.Module], str] = {BlurPool2d: POOL}


def opaque_rule(module: nn.Module) -> ModuleRule | None:
    """The module-level rule of a module counted as one operator (the local aggregation)."""
    rule: ModuleRule | None = _by_type(_OPAQUE, module)
    return rule


def module_kind_override(module: nn.Module) -> str | None:
    """The operator type forced on the arithmetic inside ``module`` (BlurPool2d -> pooling)."""
    kind: str | None = _by_type(_KIND_OVERRIDE, module)
    return kind


# ----------------------------------------------------------------------------------------------- official

def _o_conv(m: nn.Module, inputs: tuple[Any, ...], out: Tensor, batch: int) -> int:
    assert isinstance(m, nn.Conv2d | nn.Conv1d | nn.Conv3d)
    per_position = math.prod(m.kernel_size) * m.in_channels * (m.out_channels // m.groups)
    active = out.shape[0] * math.prod(out.shape[2:])  # batch * output positions
    return int(per_position * active + (m.out_channels * active if m.bias is not None else 0))


def _o_bn(m: nn.Module, inputs: tuple[Any, ...], out: Tensor, batch: int) -> int:
    return int(inputs[0].numel() * (2 if getattr(m, "affine", False) else 1))


def _o_act(m: nn.Module, inputs: tuple[Any, ...], out: Tensor, batch: int) -> int:
    return int(out.numel())


def _o_pool(m: nn.Module, inputs: tuple[Any, ...], out: Tensor, batch: int) -> int:
    return int(inputs[0].numel())


def _o_linear(m: nn.Module, inputs: tuple[Any, ...], out: Tensor, batch: int) -> int:
    assert isinstance(m, nn.Linear)
    return int(inputs[0].numel() * m.out_features)  # the official hook ignores the bias


def _o_local(m: nn.Module, inputs: tuple[Any, ...], out: Tensor, batch: int) -> int:
    # official LocalConvolution hook: input.shape[0] * in_channels * K*K * Ho*Wo, where the official layer
    # declares in_channels = C, the layer width. A CoXt layer (cardinality g) runs the aggregation on a
    # (g*B, C/g, H, W) view and our module holds the C/g channels it sees; the groups folded into the batch
    # are x.shape[0] // B (B: the network's batch), so in_channels = channels * g -- the CoXt double count.
    assert isinstance(m, LocalAggregation)
    x = inputs[0]  # (g*B, C/g, H, W)
    groups = x.shape[0] // batch if batch else 1
    in_channels = m.channels * groups
    return int(x.shape[0] * in_channels * m.kernel_size * m.kernel_size * out.shape[-2] * out.shape[-1])


_OFFICIAL: dict[type[nn.Module], OfficialRule] = {
    nn.Conv1d: (CONV, _o_conv), nn.Conv2d: (CONV, _o_conv), nn.Conv3d: (CONV, _o_conv),
    nn.BatchNorm1d: (NORM, _o_bn), nn.BatchNorm2d: (NORM, _o_bn), nn.BatchNorm3d: (NORM, _o_bn),
    nn.ReLU: (ACT, _o_act), nn.ReLU6: (ACT, _o_act), nn.SiLU: (ACT, _o_act), nn.Sigmoid: (ACT, _o_act),
    nn.LeakyReLU: (ACT, _o_act), nn.PReLU: (ACT, _o_act), nn.ELU: (ACT, _o_act),
    nn.MaxPool1d: (POOL, _o_pool), nn.MaxPool2d: (POOL, _o_pool), nn.MaxPool3d: (POOL, _o_pool),
    nn.AvgPool1d: (POOL, _o_pool), nn.AvgPool2d: (POOL, _o_pool), nn.AvgPool3d: (POOL, _o_pool),
    nn.AdaptiveAvgPool1d: (POOL, _o_pool), nn.AdaptiveAvgPool2d: (POOL, _o_pool),
    nn.AdaptiveAvgPool3d: (POOL, _o_pool), nn.AdaptiveMaxPool2d: (POOL, _o_pool),
    nn.Linear: (LINEAR, _o_linear),
    LocalAggregation: (LOCAL_AGG, _o_local),
}


def is_officially_counted(module: nn.Module) -> bool:
    """Whether the official counter has a hook for this module's exact type."""
    return type(module) in _OFFICIAL


def official_count(module: nn.Module, inputs: tuple[Any, ...], output: Any, batch: int) -> tuple[str, int] | None:
    """(kind, MACs) the official counter adds for one call of ``module``; ``None`` if it has no hook.

    Hooks match the exact module type (subclasses are not matched, as in ptflops); rules read only the
    module's own attributes, its inputs and output, and ``batch``: the network input's batch size.
    """
    rule = _OFFICIAL.get(type(module))
    if rule is None:
        return None
    kind, fn = rule
    return kind, fn(module, inputs, output, batch)
