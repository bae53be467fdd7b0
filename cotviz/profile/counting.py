"""Count parameters, MACs and activation memory of one forward pass on the meta device.

One forward of a meta-device model (no weights in memory, no arithmetic) runs under

- forward pre/post hooks on every module, which keep the stack of modules being executed (so every
  aten op is attributed to the innermost module), apply the official counter's per-module rules and
  count opaque operators (the local aggregation) once;
- a :class:`~torch.utils._python_dispatch.TorchDispatchMode`, which sees every aten op -- including the
  functional ones a module hook cannot see (softmax, cat/stack, mean, the fusion multiply-adds, the
  residual ``+=``) -- applies the ``complete`` rules of :mod:`cotviz.profile.rules`, lists unknown ops as
  uncounted, and tracks every tensor an op allocates until its last reference dies (activation memory).

Both conventions come out of the same pass. Hooks and the mode are removed in ``finally``.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode

from cotviz.errors import InvalidArgumentError
from cotviz.models.meta import meta_copy
from cotviz.profile._fastmeta import fast_meta_result
from cotviz.profile.rules import (
    DATA,
    OpRule,
    complete_rule,
    is_officially_counted,
    is_zero_cost,
    module_kind_override,
    official_count,
    opaque_rule,
)

__all__ = ["CountResult", "ModuleCall", "OpCall", "count_model"]

aten = torch.ops.aten
_INIT_OPS = frozenset({aten.normal_.default, aten.uniform_.default, aten.fill_.Scalar, aten.zero_.default,
                       aten.random_.default, aten.bernoulli_.float, aten.exponential_.default})


@dataclass(frozen=True)
class OpCall:
    """One counted operation under the ``complete`` convention.

    ``module``: path of the innermost module executing it (``""``: the model's own forward);
    ``op``: aten op name (``aten.convolution``) or, for an opaque module, its class name;
    ``kind``: operator type, ``None`` if no rule knows the op (uncounted); ``macs``: MACs of this call;
    ``official``: whether the official counter counts this call (through a hooked module).
    """

    module: str
    op: str
    kind: str | None
    macs: int
    official: bool


@dataclass(frozen=True)
class ModuleCall:
    """One module call the official counter counts: path, class name, operator type, MACs."""

    module: str
    module_type: str
    kind: str
    macs: int


@dataclass
class CountResult:
    """Raw per-call counts of one forward (aggregate with :mod:`cotviz.profile.report`)."""

    input_shape: tuple[int, ...]
    dtype: torch.dtype
    ops: list[OpCall] = field(default_factory=list)
    official: list[ModuleCall] = field(default_factory=list)
    allocations: list[tuple[str, int]] = field(default_factory=list)  # (module path, bytes) per new tensor
    module_params: dict[str, int] = field(default_factory=dict)  # path -> parameters owned directly
    module_types: dict[str, str] = field(default_factory=dict)  # path -> class name
    params: int = 0
    buffer_bytes: int = 0
    buffer_elements: int = 0
    input_bytes: int = 0
    output_bytes: int = 0
    peak_bytes: int = 0
    peak_module: str = ""


class _MemoryTracker:
    """Live bytes of the tensors allocated during the forward (views and in-place results excluded)."""

    def __init__(self) -> None:
        self.live = 0
        self.peak = 0
        self.peak_module = ""
        self.closed = False

    def allocate(self, t: Tensor, module: str) -> int:
        nbytes = int(t.untyped_storage().nbytes())
        self.live += nbytes
        if self.live > self.peak:
            self.peak, self.peak_module = self.live, module
        fin = weakref.finalize(t, self._free, nbytes)  # fires when the last view of the storage dies
        fin.atexit = False
        return nbytes

    def _free(self, nbytes: int) -> None:
        if not self.closed:
            self.live -= nbytes


class _EagerDispatchMode(TorchDispatchMode):
    """A dispatch mode that is never traced by ``torch.compile``.

    By default PyTorch wraps ``__torch_dispatch__`` of every mode subclass in ``torch._disable_dynamo``,
    whose first call imports ``torch._dynamo`` (~4 s). Counting never runs under ``torch.compile``, so we
    opt out (the switch ``TorchDispatchMode._should_skip_dynamo`` documents).
    """

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        return False


class _Counter(_EagerDispatchMode):
    """Dispatch mode + module hooks of one counting pass."""

    def __init__(self, result: CountResult, fast: bool) -> None:
        super().__init__()
        self.result = result
        self.batch = int(result.input_shape[0])  # the network's batch (the official local rule reads it)
        self.fast = fast
        self.memory = _MemoryTracker()
        self.stack: list[tuple[str, nn.Module]] = []
        self.op_info: dict[Any, _OpInfo] = {}
        self.opaque_depth = 0
        self.official_depth = 0  # > 0 inside a module the official counter hooks

    # ---------------------------------------------------------------- module hooks
    def pre_hook(self, path: str, module: nn.Module) -> Any:
        opaque, official = opaque_rule(module) is not None, is_officially_counted(module)

        def hook(module: nn.Module, inputs: tuple[Any, ...]) -> None:
            self.stack.append((path, module))
            self.opaque_depth += opaque
            self.official_depth += official

        return hook

    def post_hook(self, path: str, module: nn.Module) -> Any:
        rule, official = opaque_rule(module), is_officially_counted(module)
        name = type(module).__name__

        def hook(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
            self.stack.pop()
            self.official_depth -= official
            if rule is not None:
                self.opaque_depth -= 1
                if self.opaque_depth == 0:
                    kind, fn = rule
                    self.result.ops.append(OpCall(path, name, kind, fn(module, inputs, output),
                                                  official or self.official_depth > 0))
            if official:
                counted = official_count(module, inputs, output, self.batch)
                if counted is not None:
                    self.result.official.append(ModuleCall(path, name, *counted))

        return hook

    # ---------------------------------------------------------------- aten ops
    def __torch_dispatch__(self, func: Any, types: Any, args: tuple[Any, ...] = (),
                           kwargs: dict[str, Any] | None = None) -> Any:
        kwargs = kwargs or {}
        if func in _INIT_OPS and isinstance(args[0], Tensor) and args[0].is_meta:
            return args[0]  # random init of a meta tensor: nothing to fill
        out = fast_meta_result(func, args, kwargs) if self.fast else NotImplemented
        if out is NotImplemented:
            out = func(*args, **kwargs)
        if self.stack:
            self._record(func, args, kwargs, out)
        return out

    def _op_info(self, func: Any) -> _OpInfo:
        info = self.op_info.get(func)
        if info is None:
            rule = complete_rule(func)
            info = self.op_info[func] = _OpInfo(
                name=f"{func.namespace}.{func.overloadpacket.__name__}",  # aten.convolution, cotviz.<op>
                new_outputs=tuple(ret.alias_info is None for ret in func._schema.returns),
                rule=rule, zero_cost=rule is None and is_zero_cost(func))
        return info

    def _record(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
        path, module = self.stack[-1]
        info = self._op_info(func)
        outs = out if isinstance(out, tuple | list) else (out,)
        for new, t in zip(info.new_outputs, outs, strict=False):
            if new and isinstance(t, Tensor):  # a new tensor, not a view / in-place result
                self.result.allocations.append((path, self.memory.allocate(t, path)))
        if self.opaque_depth > 0:
            return  # counted once by the opaque module's own rule
        official = self.official_depth > 0
        first = next((t for t in outs if isinstance(t, Tensor)), None)
        if info.rule is not None and first is not None:
            kind, fn = info.rule
            macs = fn(args, kwargs, first)
            if macs:
                kind = module_kind_override(module) or kind
            self.result.ops.append(OpCall(path, info.name, kind, macs, official))
        else:
            self.result.ops.append(OpCall(path, info.name, DATA if info.zero_cost else None, 0, official))


@dataclass(frozen=True)
class _OpInfo:
    """What the counter needs to know about one aten overload (computed once per counting pass)."""

    name: str
    new_outputs: tuple[bool, ...]  # per return: a fresh allocation (not a view / in-place alias)
    rule: OpRule | None
    zero_cost: bool


def _is_meta(modules: list[tuple[str, nn.Module]]) -> bool:
    """Whether every parameter and buffer lives on the meta device (direct members, one pass)."""
    return all(t is None or t.is_meta for _, m in modules for t in (*m._parameters.values(), *m._buffers.values()))


def _model_dtype(model: nn.Module) -> torch.dtype:
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.get_default_dtype()


def _param_table(model: nn.Module, modules: list[tuple[str, nn.Module]], result: CountResult) -> None:
    """Parameters owned directly by each module (shared tensors counted once), buffers, class names."""
    seen: set[int] = set()
    for path, module in modules:
        result.module_types[path] = type(module).__name__
        own = 0
        for p in module._parameters.values():  # direct parameters (``parameters(recurse=False)``, but faster)
            if p is not None and id(p) not in seen:
                seen.add(id(p))
                own += p.numel()
        if own:
            result.module_params[path] = own
    result.params = sum(result.module_params.values())
    expected = sum(p.numel() for p in model.parameters())
    if result.params != expected:  # internal consistency check: the table must add up to sum(numel)
        raise RuntimeError(f"parameter table sums to {result.params}, model.parameters() to {expected}")
    buffers = list(model.buffers())
    result.buffer_elements = sum(b.numel() for b in buffers)
    result.buffer_bytes = sum(b.numel() * b.element_size() for b in buffers)


def count_model(model: nn.Module, input_shape: tuple[int, ...], *, fast: bool = True) -> CountResult:
    """Count one inference forward of ``model`` on a meta input of ``input_shape`` (e.g. (B, 3, H, W)).

    Args:
        model: any module; counted on the meta device (a meta copy is made if it holds real tensors).
        input_shape: shape of the single input tensor; its dtype is the model's parameter dtype.
        fast: use the fast meta shape rules (:mod:`cotviz.profile._fastmeta`); ``False`` runs PyTorch's
            own meta kernels everywhere (slower, same result).

    Returns:
        :class:`CountResult` with every counted call under both conventions and the memory trace.
    """
    if any(int(s) < 1 for s in input_shape):
        raise InvalidArgumentError(f"input shape must be positive, got {tuple(input_shape)}")
    modules = list(model.named_modules())
    if not _is_meta(modules):  # count a meta copy; the caller's model is untouched
        model = meta_copy(model)
        modules = list(model.named_modules())
    dtype = _model_dtype(model)
    result = CountResult(tuple(int(s) for s in input_shape), dtype)
    _param_table(model, modules, result)
    counter = _Counter(result, fast)
    handles = []
    training = [(m, m.training) for _, m in modules]
    try:
        for path, module in modules:
            handles.append(module.register_forward_pre_hook(counter.pre_hook(path, module)))
            handles.append(module.register_forward_hook(counter.post_hook(path, module)))
            module.training = False  # eval mode (what model.eval() does, without another traversal)
        with torch.no_grad():
            x = torch.empty(result.input_shape, dtype=dtype, device="meta")
            result.input_bytes = counter.memory.allocate(x, "")
            with counter:
                y = model(x)
            outs = [t for t in (y if isinstance(y, tuple | list) else (y,)) if isinstance(t, Tensor)]
            result.output_bytes = sum(int(t.untyped_storage().nbytes()) for t in outs)
            result.peak_bytes, result.peak_module = counter.memory.peak, counter.memory.peak_module
    finally:
        counter.memory.closed = True
        for h in handles:
            h.remove()
        for module, flag in training:  # restore every module's own flag (eval() set them all)
            module.training = flag
    return result
