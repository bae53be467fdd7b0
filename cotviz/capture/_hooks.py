"""The capture context manager: installs forward hooks on entry, removes them all on exit.

Per selected block, at most: one forward hook per selected tap (``Tap`` submodules of the CoT layer),
one on the spatial operator (its map size; its output for blocks without CoT taps) and one on the
block (block output; assembles the :class:`Record`). One forward-pre hook per CoT network (on the network,
not on a wrapper around it) reads the input size its blocks see; stray CoT layers use the model's input. Unselected blocks get no hooks. A hook stores ``tensor.detach().clone()`` (one copy,
optionally cast / moved in the same op) into a per-block dict: captum-style cloning, so the in-place
ReLU / SiLU and ``+=`` of the network cannot rewrite what was stored.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from types import TracebackType
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from cotviz.capture._sites import Site, model_label
from cotviz.capture.records import Record
from cotviz.errors import CaptureError

__all__ = ["Capture", "RecordNotFoundError", "count_hooks"]

Copier = Callable[[Tensor], Tensor]

#: Per-module hook dicts PyTorch keeps (forward, forward-pre, backward, with-kwargs variants).
HOOK_DICTS: tuple[str, ...] = (
    "_forward_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs", "_backward_hooks", "_backward_pre_hooks",
)


class RecordNotFoundError(CaptureError, KeyError):
    """``cap[name]`` for a block that was not captured (a ``KeyError``, so ``in`` / ``.get`` work)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


def count_hooks(model: nn.Module) -> int:
    """Number of forward / forward-pre / backward hooks installed on ``model`` and all its submodules."""
    return sum(len(getattr(m, d, None) or ()) for m in model.modules() for d in HOOK_DICTS)


def _copier(device: torch.device | None, dtype: torch.dtype | None, keep_graph: bool) -> Copier:
    """One-op copy of a tapped tensor: detached (unless ``keep_graph``), cast and moved as asked."""
    if device is None and dtype is None:
        if keep_graph:
            return torch.Tensor.clone
        return lambda t: t.detach().clone()
    if keep_graph:
        return lambda t: t.to(device=device, dtype=dtype, copy=True)
    return lambda t: t.detach().to(device=device, dtype=dtype, copy=True)


def _first_4d(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Tensor | None:
    for v in (*args, *kwargs.values()):
        if isinstance(v, Tensor) and v.ndim == 4:
            return v
    return None


class Capture(Mapping[str, Record]):
    """Records of the selected blocks, keyed ``"stage{S}.block{B}"`` in forward order.

    Build it with :func:`cotviz.capture.capture`; hooks exist only between ``__enter__`` and
    ``__exit__``. Several forwards inside one ``with``: a later forward overwrites the records of the
    same blocks (use ``on_record`` to keep every one). With ``on_record`` the mapping stays empty.
    """

    def __init__(self, model: nn.Module, sites: list[Site], taps: tuple[str, ...], *,
                 device: torch.device | None, dtype: torch.dtype | None, keep_graph: bool,
                 on_record: Callable[[Record], object] | None) -> None:
        self.model = model
        self.sites = sites
        self.taps = taps
        self.device = device
        self.dtype = dtype
        self.keep_graph = keep_graph
        self.on_record = on_record
        self._records: dict[str, Record] = {}
        self._handles: list[RemovableHandle] = []
        self._active = False
        self._input_sizes: dict[int, tuple[int, int]] = {}  # id(network or model) -> (H, W) of its last input
        self._missing: list[str] = []
        self._copy = _copier(device, dtype, keep_graph)

    # -- Mapping -------------------------------------------------------------------------------------
    def __getitem__(self, name: str) -> Record:
        try:
            return self._records[name]
        except KeyError:
            have = ", ".join(self._records) or "nothing (did the forward run inside the with block?)"
            raise RecordNotFoundError(f"no record {name!r}; captured: {have}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._records)

    def __len__(self) -> int:
        return len(self._records)

    def __repr__(self) -> str:
        state = "active" if self._active else "closed"
        return f"Capture({model_label(self.model)}, {state}, records=[{', '.join(self._records)}])"

    @property
    def nbytes(self) -> int:
        """Bytes held by all stored records."""
        return sum(r.nbytes for r in self._records.values())

    @property
    def active(self) -> bool:
        """Whether the hooks are installed (inside the ``with`` block)."""
        return self._active

    # -- hooks ---------------------------------------------------------------------------------------
    def _tap_hook(self, slot: dict[str, Tensor], name: str) -> Callable[..., None]:
        copy = self._copy

        def hook(module: nn.Module, inputs: tuple[Any, ...], output: Tensor) -> None:
            slot[name] = copy(output)

        return hook

    def _op_hook(self, slot: dict[str, Any], store_output: bool) -> Callable[..., None]:
        copy = self._copy

        def hook(module: nn.Module, inputs: tuple[Any, ...], output: Tensor) -> None:
            slot["_size"] = (int(output.shape[-2]), int(output.shape[-1]))
            if store_output:
                slot["output"] = copy(output)

        return hook

    def _block_hook(self, site: Site, slot: dict[str, Any], wanted: tuple[str, ...]) -> Callable[..., None]:
        copy = self._copy

        def hook(module: nn.Module, inputs: tuple[Any, ...], output: Tensor) -> None:
            record = self._assemble(site, slot, wanted, copy(output))
            slot.clear()
            if self.on_record is not None:
                self.on_record(record)
            else:
                self._records[record.name] = record

        return hook

    def _input_hook(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        x = _first_4d(args, kwargs)
        if x is not None:
            self._input_sizes[id(module)] = (int(x.shape[-2]), int(x.shape[-1]))

    def _assemble(self, site: Site, slot: dict[str, Any], wanted: tuple[str, ...], block_output: Tensor) -> Record:
        """Build the record of ``site`` from what its hooks stored (runs once per block per forward)."""
        info = site.info
        for name in wanted:
            if name not in slot:
                where = site.layer_path or type(site.op).__name__
                self._missing.append(f"{name} of {info.name} ({where})")
        size: tuple[int, int] | None = slot.get("_size")
        input_size = self._input_sizes.get(id(site.input_module or self.model))
        stride = site.map_stride
        if stride is None and size is not None and input_size is not None:
            stride = max(1, round(input_size[0] / size[0]))
        return Record(
            name=info.name, stage=info.stage, block=info.block, module_path=info.module_path,
            layer_path=site.layer_path, layer_type=info.layer_type, has_cot=info.has_cot,
            block_output=block_output, static_context=slot.get("static_context"),
            attention=slot.get("attention"), dynamic_context=slot.get("dynamic_context"),
            fusion_weights=slot.get("fusion_weights"), output=slot.get("output"),
            kernel_size=site.kernel_size, heads_per_group=site.heads_per_group, groups=site.groups,
            share_planes=site.share_planes, input_size=input_size, feature_stride=stride,
            feature_size=size, pooled_before=site.pooled_before, blurred_after=site.blurred_after,
            attention_normalization=site.attention_normalization,
        )

    def _install(self) -> None:
        h = self._handles
        inputs = {id(m): m for m in (site.input_module or self.model for site in self.sites)}
        for module in inputs.values():  # each CoT network (and the model, for stray CoT layers)
            h.append(module.register_forward_pre_hook(self._input_hook, with_kwargs=True))
        for site in self.sites:
            slot: dict[str, Any] = {}
            # taps this block can deliver: its CoT taps, or ``output`` from any operator
            tapped = tuple(n for n in self.taps if n in site.tap_modules)
            from_op = "output" in self.taps and "output" not in site.tap_modules and site.op is not None
            wanted = tapped + (("output",) if from_op else ())
            for name in tapped:
                h.append(site.tap_modules[name].register_forward_hook(self._tap_hook(slot, name)))
            if site.op is not None:
                h.append(site.op.register_forward_hook(self._op_hook(slot, from_op)))
            h.append(site.block.register_forward_hook(self._block_hook(site, slot, wanted)))

    def _remove(self) -> None:
        handles, self._handles = self._handles, []
        for handle in handles:
            handle.remove()

    # -- context manager -----------------------------------------------------------------------------
    def __enter__(self) -> Capture:
        if self._active:
            raise CaptureError("this capture is already active; create a new one with cotviz.capture(...)")
        self._records.clear()
        self._missing.clear()
        self._input_sizes.clear()
        try:
            self._install()
        except BaseException:
            self._remove()
            raise
        self._active = True
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        try:
            self._remove()
        finally:
            self._active = False
        missing = list(dict.fromkeys(self._missing))
        if exc_type is None and missing:
            first = missing[0]
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise CaptureError(f"requested tap {first} never fired{more}; its layer does not route that "
                               "tensor through the tap, drop it from taps=")
        # never swallow: returning None lets any exception from the with-body propagate unchanged
