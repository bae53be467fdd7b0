"""What a capture produces: one :class:`Record` per block, and :class:`BlockInfo` to list blocks.

A record holds detached clones of the five taps of one CoT / CoXt layer (see
``cotviz.layers.cot.TAP_NAMES``), the output of the whole bottleneck, and the geometry needed to map
a feature cell back to input pixels. Heads (attention maps per position) are numbered so that every
variant looks alike after :meth:`Record.heads`:

- CoT: ``M = C / 8`` maps; channel ``c`` is aggregated with map ``c % M``.
- CoXt (CoTNeXt, ``G = 2`` groups): the official ``w`` is ``(G*B, 1, C/16, K*K, H, W)`` with group
  ``g`` of sample ``i`` at batch index ``i*G + g``; ``M = C/16`` maps per group. Heads are numbered
  group-major: ``head h = g*M + m``; the value channels of group ``g`` are ``g*C/G .. (g+1)*C/G - 1``
  and channel ``g*C/G + c'`` uses map ``m = c' % M`` of its group.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from torch import Tensor

from cotviz.errors import CaptureError
from cotviz.layers.cot import TAP_NAMES

__all__ = ["BlockInfo", "Record", "attention_heads", "channel_heads", "TAP_NAMES"]


@dataclass(frozen=True)
class BlockInfo:
    """A block that :func:`cotviz.capture.capture` can record, found without running the model.

    ``name`` is the record key (``"stage3.block2"``; prefixed with the network's module path when the model
    holds several CoT networks, ``"teacher.stage3.block2"``; ``"layer"`` / a module path for a CoT layer
    outside any ResNet-style network), ``stage`` 1..4 (0 outside a stage), ``block`` 1-based,
    ``module_path`` the block's path (``"layer3.1"``), ``layer_type`` the class name of its spatial
    operator (``conv2``), ``has_cot`` whether that operator exposes all five CoT taps, ``taps`` the taps it
    exposes (``("attention", "output")`` for local self-attention, ``()`` for a plain conv), ``heads`` its
    attention maps per position over all groups (C/8; None without an attention tap).
    """

    name: str
    stage: int
    block: int
    module_path: str
    layer_type: str
    has_cot: bool
    taps: tuple[str, ...] = ()
    heads: int | None = None


def attention_heads(attn: Tensor, groups: int = 1) -> Tensor:
    """The official ``w`` (G*B, 1, M, K*K, H, W) as (B, G*M, K*K, H, W), heads group-major (h = g*M + m).

    A 5-D tensor is taken to be in that layout already and returned as is.
    """
    if attn.ndim == 5:
        return attn
    if attn.ndim != 6 or attn.shape[1] != 1 or attn.shape[0] % groups:
        raise CaptureError(f"attention must be (G*B, 1, M, K*K, H, W) with G={groups}, got {tuple(attn.shape)}")
    gb, _, m, kk, h, w = attn.shape
    # (G*B, 1, M, KK, H, W) -> (B, G*M, KK, H, W): batch index i*G + g becomes head block g of sample i
    return attn.reshape(gb // groups, groups * m, kk, h, w)


def channel_heads(x: Tensor, heads_per_group: int, groups: int = 1) -> Tensor:
    """Group the channels of ``x`` by the attention head that aggregates them.

    ``x`` (B, C, H, W) -> (B, G*M, C/(G*M), H, W), or fusion weights (B, C, R) -> (B, G*M, C/(G*M), R):
    entry ``[:, h, s]`` is channel ``g*C/G + s*M + m`` with ``h = g*M + m`` (the ``s``-th channel that
    uses map ``m`` of group ``g``).
    """
    b, c = x.shape[:2]
    rest = tuple(x.shape[2:])
    m = heads_per_group
    if c % (groups * m):
        raise CaptureError(f"{c} channels do not split into {groups} groups of {m} heads")
    s = c // (groups * m)
    n = len(rest)
    # (B, C, *rest) -> (B, G, S, M, *rest): channel g*C/G + s*M + m
    grouped = x.reshape(b, groups, s, m, *rest)
    # (B, G, S, M, *rest) -> (B, G, M, S, *rest) -> (B, G*M, S, *rest)
    return grouped.permute(0, 1, 3, 2, *range(4, 4 + n)).reshape(b, groups * m, s, *rest)


@dataclass(frozen=True, eq=False, repr=False)
class Record:
    """The recorded internals of one block (detached clones unless ``keep_graph=True``).

    Tensors (``None`` when the tap was not selected, or the block has no CoT layer):

    - ``static_context`` (B, C, H, W): K1, key_embed output after BN + ReLU.
    - ``attention`` exactly the official ``w`` handed to the aggregation: (B, 1, C/8, K*K, H, W) for
      CoT, (2B, 1, C/16, K*K, H, W) for CoXt. GroupNorm output: signed, not softmax-normalised.
    - ``dynamic_context`` (B, C, H, W): K2, aggregation -> BN -> SiLU.
    - ``fusion_weights`` (B, C, 2): softmax over the radix; ``[..., 0]`` weights K2, ``[..., 1]`` K1.
    - ``output`` (B, C, H, W): fused output of the CoT layer; for a block without CoT (split
      attention, plain conv) the output of its spatial operator ``conv2``.
    - ``block_output`` (B, 4*planes, Ho, Wo): output of the whole block (always recorded).

    Geometry: ``input_size`` (H_in, W_in) of the input of the CoT network this block belongs to -- what
    the network itself received, after anything a wrapper did first (an ``nn.Upsample`` in front) -- or of
    the model for a stage-0 record (None if that forward did not run); ``feature_stride`` input pixels per
    cell of the operator maps, relative to that input (16 for stage 3 of cotnet50), ``feature_size`` (H, W) of those maps, ``pooled_before`` / ``blurred_after``: the block
    average-pools before the operator / blur-pools after it. ``attention_normalization``: what the attention
    tap holds, ``"groupnorm"`` (CoT: signed, not a distribution) or ``"softmax"`` (local self-attention: a
    distribution over the window); None without an attention tap.
    """

    name: str
    stage: int
    block: int
    module_path: str
    layer_path: str
    layer_type: str
    has_cot: bool
    block_output: Tensor
    static_context: Tensor | None = None
    attention: Tensor | None = None
    dynamic_context: Tensor | None = None
    fusion_weights: Tensor | None = None
    output: Tensor | None = None
    kernel_size: int | None = None
    heads_per_group: int | None = None
    groups: int = 1
    share_planes: int | None = None
    input_size: tuple[int, int] | None = None
    feature_stride: int | None = None
    feature_size: tuple[int, int] | None = None
    pooled_before: bool = False
    blurred_after: bool = False
    attention_normalization: str | None = None

    @property
    def total_heads(self) -> int | None:
        """Attention maps per position over all groups: ``groups * heads_per_group`` (= C/8)."""
        return None if self.heads_per_group is None else self.groups * self.heads_per_group

    @property
    def taps(self) -> tuple[str, ...]:
        """Names of the recorded tap tensors, in forward order."""
        return tuple(n for n in TAP_NAMES if getattr(self, n) is not None)

    def tensors(self) -> dict[str, Tensor]:
        """All recorded tensors by name (taps, then ``block_output``)."""
        out = {n: getattr(self, n) for n in self.taps}
        out["block_output"] = self.block_output
        return out

    @property
    def nbytes(self) -> int:
        """Bytes held by the recorded tensors."""
        return sum(t.numel() * t.element_size() for t in self.tensors().values())

    def tensor(self, tap: str) -> Tensor:
        """The recorded tensor of ``tap``; a clear error if the tap does not exist or was not captured."""
        if tap not in TAP_NAMES:
            raise CaptureError(f"unknown tap {tap!r}; valid taps: {', '.join(TAP_NAMES)}")
        t = getattr(self, tap)
        if t is None:
            raise CaptureError(f"{self.name}: {tap} was not captured; include it in taps=")
        return t

    def heads(self, tensor_name: str = "attention") -> Tensor:
        """A recorded tensor arranged by attention head, heads numbered group-major (h = g*M + m).

        - ``"attention"``: (B, G*M, K*K, H, W).
        - ``"static_context"``, ``"dynamic_context"``, ``"output"``: (B, G*M, S, H, W) and
          ``"fusion_weights"``: (B, G*M, S, 2), where ``[:, h]`` are the S = ``share_planes`` channels
          aggregated with head h (see :func:`channel_heads`).
        """
        if self.heads_per_group is None:
            raise CaptureError(f"{self.name} ({self.layer_type}) has no attention, so no attention heads")
        t = self.tensor(tensor_name)
        if tensor_name == "attention":
            return attention_heads(t, self.groups)
        return channel_heads(t, self.heads_per_group, self.groups)

    def __repr__(self) -> str:
        parts = [f"{f.name}={tuple(getattr(self, f.name).shape)}" if isinstance(getattr(self, f.name), Tensor)
                 else f"{f.name}={getattr(self, f.name)!r}"
                 for f in fields(self) if getattr(self, f.name) is not None]
        return f"Record({', '.join(parts)})"
