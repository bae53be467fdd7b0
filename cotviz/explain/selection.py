"""What a run computes -- stage, blocks, head, maps, point -- checked against the model before any image is read.

Messages state the valid ranges; they are the lines the CLI prints (it only maps errors to exit codes).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from torch import nn

from cotviz.analysis.maps import parse_map_names, taps_for
from cotviz.capture import cot_blocks, stage_range
from cotviz.errors import InvalidArgumentError

__all__ = ["Point", "Selection", "parse_point", "select"]

#: A pixel of the ORIGINAL image: (x, y) = (column, row), 0-based from the top left.
Point = tuple[int, int]


def parse_point(point: str | Sequence[int] | None) -> Point | None:
    """``"X,Y"`` or ``(X, Y)`` (integer pixel column and row of the ORIGINAL image) -> ``(X, Y)``."""
    if point is None:
        return None
    text = point if isinstance(point, str) else ",".join(str(p) for p in point)
    parts = [p.strip() for p in text.split(",")]
    try:
        if len(parts) != 2 or any(isinstance(p, bool) for p in ([] if isinstance(point, str) else point)):
            raise ValueError
        x, y = int(parts[0]), int(parts[1])
    except ValueError:
        raise InvalidArgumentError(f"--point must be X,Y in whole pixels of the original image, e.g. 320,180; "
                                   f"got {text!r}") from None
    if x < 0 or y < 0:
        raise InvalidArgumentError(f"--point {x},{y} lies outside the image: coordinates start at 0,0 (top left)")
    return x, y


@dataclass(frozen=True)
class Selection:
    """A validated request.

    Attributes:
        stage: 1..4.
        blocks: 1-based blocks drawn (sorted, each with a CoT layer).
        capture_blocks: 1-based blocks recorded: ``blocks``, or 1..max(blocks) with a point (the rollout
            composes every block from the stage input).
        head: 0-based attention head, or None (mean over heads / all channels).
        num_heads: attention maps per position over all groups (C/8), the smallest over ``blocks``.
        maps: map names (registry order).
        taps: the capture taps the maps (and the point) need.
        point: the point, in original-image pixels.
    """

    stage: int
    blocks: tuple[int, ...]
    capture_blocks: tuple[int, ...]
    head: int | None
    num_heads: int
    maps: tuple[str, ...]
    taps: tuple[str, ...]
    point: Point | None = None

    @property
    def block_names(self) -> list[str]:
        """Record names of the drawn blocks: ``["stage3.block1", ...]``."""
        return [f"stage{self.stage}.block{b}" for b in self.blocks]

    @property
    def capture_names(self) -> list[str]:
        """Record names of the recorded blocks."""
        return [f"stage{self.stage}.block{b}" for b in self.capture_blocks]

    @property
    def head_reduction(self) -> str:
        """How heads are reduced, in words (for the JSON)."""
        if self.head is None:
            return "mean over heads (attention maps); all channels (context maps)"
        return (f"head {self.head} (attention maps); the channels that head aggregates (context maps, "
                "Record.heads numbering)")


def select(model: nn.Module, *, stage: int = 3, blocks: Iterable[int] | None = None, head: int | None = None,
           maps: Iterable[str] | None = None, point: str | Sequence[int] | None = None,
           model_name: str | None = None, every_cell: bool = False) -> Selection:
    """Check ``stage``, ``blocks``, ``head``, ``maps`` and ``point`` against ``model``.

    ``every_cell``: the rollout of every cell is wanted (the explorer): blocks 1..max(blocks) are captured with
    their attention, as for a point.

    Raises:
        InvalidArgumentError: anything out of range (the message names the valid range).
    """
    name = model_name or str(getattr(model, "model_name", None) or type(model).__name__)
    map_names = parse_map_names(maps)
    xy = parse_point(point)
    for value, what in ((stage, "stage"), (head, "head")):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise InvalidArgumentError(f"{what} must be an integer, got {value!r}")
    stages = stage_range(model)
    if stage not in stages:
        raise InvalidArgumentError(f"stage {stage} out of range: {name} has stages {stages.start}..{stages.stop - 1}")
    rolls_out = xy is not None or every_cell  # a rollout composes blocks 1..max(chosen)
    needed = taps_for(map_names, attention=rolls_out)
    every = cot_blocks(model)
    networks = {b.name[: -len(f"stage{b.stage}.block{b.block}")] for b in every if b.stage}
    if len(networks) > 1:
        names = ", ".join(sorted(n.rstrip(".") for n in networks))
        raise InvalidArgumentError(f"{name} holds {len(networks)} CoT networks ({names}); explain one of them "
                                   "(pass that submodule)")
    infos = [b for b in every if b.stage == stage]
    usable = [b.block for b in infos if set(needed) <= set(b.taps)]
    if not usable:
        kinds = ", ".join(dict.fromkeys(b.layer_type for b in infos))
        if not any(b.taps for b in infos):
            with_cot = sorted({b.stage for b in every if b.has_cot})
            hint = f"; stages with CoT layers: {', '.join(map(str, with_cot))}" if with_cot else ""
            raise InvalidArgumentError(f"stage {stage} of {name} has no CoT layers (its blocks use {kinds}){hint}")
        have = sorted({t for b in infos for t in b.taps})
        raise InvalidArgumentError(f"the maps {', '.join(map_names)} need the taps {', '.join(needed)}; the blocks of "
                                   f"stage {stage} of {name} ({kinds}) have {', '.join(have)}: choose maps from "
                                   "those taps (see cotviz.analysis.catalog)")
    requested = list(blocks) if blocks is not None else []
    chosen = tuple(dict.fromkeys(requested)) if requested else tuple(usable)
    for b in chosen:
        if isinstance(b, bool) or not isinstance(b, int) or not 1 <= b <= len(infos):
            raise InvalidArgumentError(f"block {b} out of range: stage {stage} of {name} has blocks 1..{len(infos)}")
        if b not in usable:
            info = next(i for i in infos if i.block == b)
            if not info.taps:
                raise InvalidArgumentError(f"block {b} of stage {stage} ({name}) is a {info.layer_type} block without "
                                           f"a CoT layer; CoT blocks: {', '.join(map(str, usable))}")
            missing = [t for t in needed if t not in info.taps]
            raise InvalidArgumentError(f"block {b} of stage {stage} ({name}, {info.layer_type}) has no "
                                       f"{'/'.join(missing)}, which the maps need; usable blocks: "
                                       f"{', '.join(map(str, usable))}")
    chosen = tuple(sorted(chosen))
    num_heads = min(int(i.heads or 0) for i in infos if i.block in chosen)
    if head is not None and not 0 <= head < num_heads:
        raise InvalidArgumentError(f"head {head} out of range: stage {stage} of {name} has heads "
                                   f"0..{num_heads - 1} (C/8 attention maps per position)")
    capture_blocks = chosen
    if rolls_out:
        attending = [b.block for b in infos if "attention" in b.taps]
        missing_blocks = [b for b in range(1, max(chosen) + 1) if b not in attending]
        if missing_blocks:
            usable_to = missing_blocks[0] - 1  # blocks 1..usable_to all have attention
            hint = f"--block {usable_to}" if usable_to else "a stage whose first block uses CoT"
            raise InvalidArgumentError(f"--point composes blocks 1..{max(chosen)} of stage {stage}, but block "
                                       f"{missing_blocks[0]} ({name}) has no CoT layer; use {hint}")
        capture_blocks = tuple(range(1, max(chosen) + 1))
    return Selection(stage, chosen, capture_blocks, head, num_heads, map_names, needed, xy)
