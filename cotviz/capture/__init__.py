"""Record the internals of every CoT block of a forward pass.

::

    from cotviz.capture import capture
    with capture(model, stages=[3]) as cap:       # or cotviz.capture(model, stages=[3])
        logits = model(x)
    rec = cap["stage3.block2"]
    rec.attention          # (B, 1, C/8, K*K, H, W), exactly the official ``w``
    rec.heads()            # (B, C/8, K*K, H, W), heads group-major for CoXt

Hooks exist only inside the ``with`` block (also removed when the forward raises); captured tensors
are detached clones; nothing about the model (training mode, ``requires_grad``, state_dict) changes.
See :class:`cotviz.capture.records.Record` for every field and shape.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from cotviz.capture._hooks import Capture, RecordNotFoundError, count_hooks
from cotviz.capture._sites import (
    block_range,
    cot_blocks,
    find_sites,
    model_label,
    select_sites,
    stage_range,
    validate_taps,
)
from cotviz.capture.records import TAP_NAMES, BlockInfo, Record, attention_heads, channel_heads
from cotviz.errors import CaptureError

__all__ = [
    "TAP_NAMES", "BlockInfo", "Capture", "Record", "RecordNotFoundError", "attention_heads", "block_range",
    "capture", "channel_heads", "cot_blocks", "count_hooks", "stage_range",
]


def capture(model: nn.Module, *, stages: Iterable[int] | int | None = None, blocks: Iterable[int] | int | None = None,
            taps: Iterable[str] | str | None = None, device: str | torch.device | None = "cpu",
            dtype: torch.dtype | None = None, keep_graph: bool = False,
            on_record: Callable[[Record], object] | None = None) -> Capture:
    """A context manager recording the selected blocks of ``model`` during the forwards run inside it.

    Args:
        model: a cotviz network (``create_model(...)``, possibly wrapped), or any module containing
            CoT networks or CoT layers (e.g. a bare ``CotLayer``: one record named ``"layer"``, stage 0).
            Several CoT networks in one model (an ensemble): all are recorded, each name prefixed with
            the network's module path (``"teacher.stage3.block2"``).
        stages: stage numbers 1..4 (``layer1..layer4``, the paper's res2..res5); None = all. With several
            networks, the stage of each.
        blocks: 1-based block numbers within each selected stage (each must exist in every selected
            stage, of every network); None = all.
        taps: subset of :data:`TAP_NAMES`; None = all. The block output and geometry are always
            recorded. For blocks without CoT (SE-CoTNetD's split-attention blocks, ResNet) only
            ``output`` (the operator's output) can be recorded; their other taps stay None.
        device: where stored tensors go (None: stay where they were computed).
        dtype: storage dtype, e.g. ``torch.float16`` to halve memory (None: unchanged).
        keep_graph: keep the stored tensors in the autograd graph (for attributions); default detached.
        on_record: streaming mode: called with each :class:`Record` as soon as its block finished;
            nothing is kept in the returned mapping, so memory stays flat over many batches.

    Returns:
        :class:`Capture`, a ``Mapping[str, Record]`` filled during the ``with`` block, keys
        ``"stage{S}.block{B}"`` (``"{network path}.stage{S}.block{B}"`` with several networks) in forward order. Only blocks that ran are present; a later forward
        in the same ``with`` overwrites earlier records.

    Raises:
        CaptureError: unknown stage, block or tap; CoT taps on a model without CoT layers (e.g.
            ``resnet50``); a model with nothing to capture; at exit, a requested tap that never fired.
    """
    sites = find_sites(model)
    if not sites:
        raise CaptureError(f"{model_label(model)} has no CoT layers and no layer1..layer4 stages; nothing to capture")
    wanted_taps = validate_taps(model, sites, taps)
    selected = select_sites(model, sites, stages, blocks)
    dev = None if device is None else torch.device(device)
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise CaptureError(f"dtype must be a floating torch.dtype such as torch.float16, got {dtype!r}")
    return Capture(model, selected, wanted_taps, device=dev, dtype=dtype, keep_graph=keep_graph,
                   on_record=on_record)


class _CallableModule(types.ModuleType):
    """Lets ``cotviz.capture(model, ...)`` work even when ``cotviz.capture`` is this subpackage.

    Importing ``cotviz.capture`` binds the subpackage as the attribute ``cotviz.capture``, shadowing
    the lazily exported function of the same name; calling the module forwards to :func:`capture`.
    """

    def __call__(self, model: nn.Module, **kwargs: Any) -> Capture:
        return capture(model, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
