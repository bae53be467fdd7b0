"""Local attention rollout: which stage-input cells (and image pixels) feed one feature cell of a stage.

CoT attention is local (a k x k window per cell), so the rollout here is the composition of the
stage's windows back to the stage input, in the spirit of Abnar & Zuidema's attention rollout
("Quantifying Attention Flow in Transformers", ACL 2020) but along the attention path only.

Definition (what :func:`local_rollout` computes, exactly)
--------------------------------------------------------
A stage is a chain of operators on 2-D grids, in forward order (one :class:`KernelStep` per block, with
the block's pooling around it)::

    x_0 (stage input) -> [AvgPool(3, 2, 1)] -> CoT window of block 1 -> [BlurPool] -> x_1 -> ... -> block n

1. **Kernel of a block.** ``A`` is the attention of the block at one image, ``(M, K*K, H, W)`` (M heads,
   window positions numbered ``kh*K + kw`` as in the aggregation). It is signed (a GroupNorm output), so
   it is first turned into non-negative window weights per head and cell:

   * ``"abs"`` (default): ``W[m, :, p] = |A[m, :, p]| / sum_j |A[m, j, p]|``  (0 where that sum is 0);
   * ``"softmax"``: ``W[m, :, p] = softmax_j(A[m, j, p])``.

   Then the heads are averaged, ``W[:, p] = mean_m W[m, :, p]``, so every window sums to 1. Window
   position ``j = (kh, kw)`` of cell ``p = (r, c)`` is the grid cell ``(r + kh - K//2, c + kw - K//2)``
   (the aggregation's zero padding): weight that falls outside the grid goes to zero padding and is dropped.
2. **Backward composition.** Start from the one-hot map ``m`` at the query cell on the grid of the LAST
   kernel. Walk the steps from last to first; each replaces ``m`` by its transpose applied to ``m``:

   * kernel: ``m'[q] = sum_p m[p] * W[j(p -> q), p]`` -- cell ``p`` spreads its mass to its K x K
     neighbours with its window weights (``F.fold`` of the weighted windows, the exact transpose of the
     unfold the aggregation uses);
   * ``AvgPool2d(3, 2, padding=1, count_include_pad=True)`` (the ``avd`` of a strided CoTNet block):
     pooled cell ``p`` gives ``1/9`` of its mass to each of the 3 x 3 input cells ``2p - 1 .. 2p + 1``
     that lie inside the input grid (the padded ones are zeros, their share is dropped). The windows
     overlap: an odd input row/column lies in two windows, an even one in one, so a smooth pooled map
     comes back as a checkerboard -- a property of the pooling, not an artefact;
   * ``BlurPool2d`` (SE-CoTNetD-152+, after the operator): the exact transpose of reflect-pad + the
     ``[1, 2, 1]^T [1, 2, 1] / 16`` stride-2 filter (computed as the vector-Jacobian product of the op).

   The result lives on the stage-input grid ``x_0``. It is returned as is (mass lost to padding is not
   put back); :func:`normalize_mass` divides by its sum for display.
3. **To image pixels.** Stage-input cell ``(i, j)`` covers model-input pixel rows ``[i*s, (i+1)*s)`` and
   columns ``[j*s, (j+1)*s)`` with ``s`` the stage-input stride (4 for stage 1 and 2 of CoTNet, 8 for stage 3,
   16 for stage 4); :func:`to_input_pixels` spreads each cell's mass uniformly over its ``s x s`` pixels
   (value / s^2) and crops to the input size. This is the same tiling convention the figures use.

Residual connections, the 1x1 convolutions, the static-context k x k conv and the fusion are not
part of this composition: it answers "through the attention windows alone, where can this cell look?".
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from cotviz.capture.records import Record

__all__ = [
    "KernelStep",
    "PoolStep",
    "Normalization",
    "Step",
    "local_rollout",
    "normalize_mass",
    "cell_at",
    "plan_stage",
    "stage_input_geometry",
    "stage_plan",
    "stage_rollout",
    "to_input_pixels",
    "window_weights",
]

Normalization = Literal["abs", "softmax"]


@dataclass(frozen=True)
class KernelStep:
    """The attention windows of one block at one image: ``attention`` (M, K*K, H, W), signed."""

    attention: Tensor
    kernel_size: int

    @property
    def grid(self) -> tuple[int, int]:
        return int(self.attention.shape[-2]), int(self.attention.shape[-1])


@dataclass(frozen=True)
class PoolStep:
    """A parameter-free stride-2 pooling ``kind`` ("avgpool" or "blur") from ``in_size`` to ``out_size``."""

    kind: Literal["avgpool", "blur"]
    in_size: tuple[int, int]
    out_size: tuple[int, int]


Step = KernelStep | PoolStep


def window_weights(attention: Tensor, normalization: Normalization = "abs") -> Tensor:
    """Head-averaged non-negative window weights: (M, K*K, H, W) -> (K*K, H, W), each window summing to 1.

    See the module docstring, step 1. ``"abs"`` gives 0 weights where a head's window is all zero.
    """
    if attention.ndim != 4:
        raise ValueError(f"attention must be (M, K*K, H, W), got {tuple(attention.shape)}")
    if normalization == "abs":
        mag = attention.abs()  # (M, KK, H, W)
        total = mag.sum(dim=1, keepdim=True)  # (M, 1, H, W)
        w = torch.where(total > 0, mag / total.clamp_min(torch.finfo(mag.dtype).tiny), torch.zeros_like(mag))
    elif normalization == "softmax":
        w = attention.softmax(dim=1)  # (M, KK, H, W)
    else:
        raise ValueError(f"normalization must be 'abs' or 'softmax', got {normalization!r}")
    return w.mean(dim=0)  # (KK, H, W)


def _kernel_transpose(m: Tensor, step: KernelStep, normalization: Normalization) -> Tensor:
    """m (H, W) on the block's grid -> (H, W): every cell spreads its mass over its window."""
    k = step.kernel_size
    h, w = step.grid
    if tuple(m.shape) != (h, w):
        raise ValueError(f"rollout map {tuple(m.shape)} does not match the kernel grid {(h, w)}")
    weights = window_weights(step.attention.to(m.dtype), normalization)  # (KK, H, W)
    spread = (weights * m).reshape(1, k * k, h * w)  # (1, KK, H*W): mass sent to window position j
    # fold = transpose of unfold(kernel k, padding k//2): position j of cell p lands on p + offset(j)
    out = F.fold(spread, output_size=(h, w), kernel_size=k, padding=k // 2)  # (1, 1, H, W)
    return out[0, 0]


def _pool_op(kind: str) -> Callable[[Tensor], Tensor]:
    if kind == "avgpool":
        return lambda x: F.avg_pool2d(x, 3, 2, padding=1, count_include_pad=True)
    if kind == "blur":
        from cotviz.layers.blur import BlurPool2d

        blur = BlurPool2d(1)
        return lambda x: blur(x)
    raise ValueError(f"unknown pooling {kind!r}")


def _pool_transpose(m: Tensor, step: PoolStep) -> Tensor:
    """m (Ho, Wo) -> (Hi, Wi): the transpose of the (linear) pooling, as a vector-Jacobian product."""
    op = _pool_op(step.kind)
    with torch.inference_mode(False), torch.enable_grad():
        x = torch.zeros((1, 1, *step.in_size), dtype=m.dtype, device=m.device, requires_grad=True)
        y = op(x)  # (1, 1, Ho, Wo)
        if tuple(y.shape[-2:]) != tuple(m.shape):
            raise ValueError(f"{step.kind} maps {step.in_size} to {tuple(y.shape[-2:])}, not {tuple(m.shape)}")
        (grad,) = torch.autograd.grad(y, x, m.clone()[None, None])  # (1, 1, Hi, Wi)
    return grad[0, 0].detach()


def local_rollout(steps: Sequence[Step], cell: tuple[int, int], *,
                  normalization: Normalization = "abs", dtype: torch.dtype = torch.float64) -> Tensor:
    """Compose the steps of a stage backwards from one cell of the last kernel's grid.

    Args:
        steps: the stage's operators in forward order (see :func:`plan_stage`); the last one is a
            :class:`KernelStep` and the query cell lives on its grid.
        cell: ``(row, col)`` on the last kernel's grid.
        normalization: how signed windows become weights (module docstring, step 1).
        dtype: computation dtype (float64 keeps hand-checked cases exact).

    Returns:
        (H0, W0) on the grid of the first step's input (the stage input): non-negative, sum <= 1.
    """
    if not steps or not isinstance(steps[-1], KernelStep):
        raise ValueError("the last step of a rollout must be a KernelStep (the query cell lives on its grid)")
    h, w = steps[-1].grid
    r, c = cell
    if not (0 <= r < h and 0 <= c < w):
        raise ValueError(f"cell {cell} lies outside the {h}x{w} grid")
    device = steps[-1].attention.device
    m = torch.zeros((h, w), dtype=dtype, device=device)  # (H, W) one-hot at the query cell
    m[r, c] = 1.0
    for step in reversed(steps):
        if isinstance(step, KernelStep):
            m = _kernel_transpose(m, step, normalization)
        else:
            if tuple(m.shape) != step.out_size:
                raise ValueError(f"rollout map {tuple(m.shape)} does not match the {step.kind} output {step.out_size}")
            m = _pool_transpose(m, step)
    return m


def plan_stage(attention: Mapping[int, Tensor], *, kernel_size: int, pooled_before: Mapping[int, bool],
               blurred_after: Mapping[int, bool], stage_input_size: tuple[int, int]) -> list[Step]:
    """The forward-ordered steps of blocks ``1..max(attention)`` of a stage, ending with the last block's window.

    The query cell lives on the last block's CoT grid, so a BlurPool after the last block is not a step (blocks
    before it keep theirs).

    Args:
        attention: block number (1-based, consecutive from 1) -> (M, K*K, H, W) attention at one image.
        kernel_size: K.
        pooled_before / blurred_after: per block, as in :class:`cotviz.capture.Record`.
        stage_input_size: (H0, W0) of the stage input grid (``ceil(input / stage-input stride)``).
    """
    blocks = sorted(attention)
    if blocks != list(range(1, len(blocks) + 1)):
        raise ValueError(f"a rollout needs the attention of blocks 1..n of the stage, got blocks {blocks}")
    steps: list[Step] = []
    size = stage_input_size
    for b in blocks:
        grid = (int(attention[b].shape[-2]), int(attention[b].shape[-1]))
        if pooled_before.get(b, False):
            steps.append(PoolStep("avgpool", size, grid))
        elif size != grid:
            raise ValueError(f"block {b}: grid {grid} does not follow from the previous grid {size} without pooling")
        steps.append(KernelStep(attention[b], kernel_size))
        size = grid
        if blurred_after.get(b, False) and b != blocks[-1]:
            out = ((grid[0] + 1) // 2, (grid[1] + 1) // 2)  # BlurPool2d(3, stride 2): ceil(H / 2)
            steps.append(PoolStep("blur", grid, out))
            size = out
    return steps


def normalize_mass(m: Tensor) -> Tensor:
    """``m / m.sum()`` (unchanged if the sum is 0)."""
    total = m.sum()
    return m / total if total > 0 else m


def to_input_pixels(m: Tensor, stride: int, input_size: tuple[int, int]) -> Tensor:
    """Spread each cell of (H0, W0) uniformly over its ``stride x stride`` pixels -> (S_h, S_w).

    Cell ``(i, j)`` covers pixels ``[i*s, (i+1)*s) x [j*s, (j+1)*s)``, pixel value = cell value / s^2;
    the result is cropped to ``input_size`` (the last cells may be partial when s does not divide it).
    """
    pixels = m.repeat_interleave(stride, dim=0).repeat_interleave(stride, dim=1) / (stride * stride)  # (H0*s, W0*s)
    return pixels[: input_size[0], : input_size[1]]


def cell_at(u: float, v: float, stride: int, grid: tuple[int, int]) -> tuple[int, int]:
    """The cell ``(row, col)`` of an (H, W) grid of stride ``s`` under model-input point ``(u, v)``.

    ``(floor(v / s), floor(u / s))`` (the tiling convention), clamped to the grid for points on the far border.
    """
    row = min(max(int(math.floor(v / stride)), 0), grid[0] - 1)
    col = min(max(int(math.floor(u / stride)), 0), grid[1] - 1)
    return row, col


def stage_input_geometry(first: Record) -> tuple[int, tuple[int, int]]:
    """``(stride, (H0, W0))`` of a stage's input grid, from the record of the stage's first block.

    The stride is the CoT map stride, halved when the block average-pools before its CoT layer. Every
    stride-2 step of these networks maps H to ceil(H / 2), so ``H0 = ceil(H_in / stride)``.
    """
    if first.feature_stride is None or first.input_size is None:
        raise ValueError(f"{first.name} has no geometry (the model's own forward did not run)")
    stride = first.feature_stride // 2 if first.pooled_before else first.feature_stride
    size = (-(-first.input_size[0] // stride), -(-first.input_size[1] // stride))
    return stride, size


def stage_rollout(records: Sequence[Record], index: int, cell: tuple[int, int], *,
                  normalization: Normalization = "abs") -> tuple[Tensor, int]:
    """Rollout of image ``index`` from ``cell`` of the last record's grid back to the stage input.

    Args:
        records: blocks 1..n of ONE stage, in order, each with its attention captured.
        index: the image within the batch.
        cell: (row, col) on block n's CoT grid.

    Returns:
        ``(m, stride)``: ``m`` (H0, W0) float64 on the stage-input grid (see the module docstring) and the
        stage-input stride in model-input pixels.
    """
    steps, stride, _ = stage_plan(records, index)
    return local_rollout(steps, cell, normalization=normalization), stride


def stage_plan(records: Sequence[Record], index: int) -> tuple[list[Step], int, tuple[int, int]]:
    """The rollout steps of image ``index`` through blocks 1..n of one stage (:func:`plan_stage` from records).

    Returns:
        ``(steps, stride, (H0, W0))``: the forward-ordered steps (one :class:`KernelStep` per record, in block
        order), and the stage-input grid's stride in model-input pixels and size.
    """
    if not records:
        raise ValueError("no records to roll out")
    stride, size = stage_input_geometry(records[0])
    attention = {r.block: r.heads("attention")[index] for r in records}  # block -> (M, KK, H, W)
    k = records[-1].kernel_size
    if k is None:
        raise ValueError(f"{records[-1].name} has no kernel size")
    steps = plan_stage(attention, kernel_size=k, pooled_before={r.block: r.pooled_before for r in records},
                       blurred_after={r.block: r.blurred_after for r in records}, stage_input_size=size)
    return steps, stride, size
