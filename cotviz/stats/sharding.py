"""Exact, batch-aligned shards of a sorted item list: every item in exactly one shard, no padding.

``torch.utils.data.DistributedSampler`` pads the list by repeating items so that every rank gets the same count;
for statistics that would count some images twice. Here rank ``r`` of ``W`` gets a contiguous run of whole
*batches* of the global batch sequence (batch ``g`` = items ``[g*B, (g+1)*B)``): the shards partition the list,
differ by at most one batch, and every batch holds exactly the images it holds in a one-process run -- which is
what lets the distributed statistics equal the single-process ones bit for bit (the accumulators merge per batch).
"""

from __future__ import annotations

from dataclasses import dataclass

from cotviz.errors import InvalidArgumentError

__all__ = ["Shard", "shard"]


@dataclass(frozen=True)
class Shard:
    """Rank ``rank``'s part: items ``[start, stop)`` = global batches ``[first_batch, first_batch + batches)``."""

    rank: int
    world_size: int
    start: int
    stop: int
    first_batch: int
    batches: int
    batch_size: int

    def __len__(self) -> int:
        return self.stop - self.start

    def batch_items(self, g: int) -> range:
        """Item indices of global batch ``g`` (which must belong to this shard)."""
        if not self.first_batch <= g < self.first_batch + self.batches:
            raise IndexError(f"batch {g} is not in shard {self.rank} (batches {self.first_batch}.."
                             f"{self.first_batch + self.batches - 1})")
        return range(g * self.batch_size, min((g + 1) * self.batch_size, self.stop))


def shard(n_items: int, world_size: int, rank: int, batch_size: int) -> Shard:
    """The shard of ``rank`` among ``world_size`` for ``n_items`` items in batches of ``batch_size``.

    The ``ceil(n_items / batch_size)`` global batches are split into ``world_size`` contiguous runs whose lengths
    differ by at most one (the first ``batches % world_size`` ranks get one more). A rank may get nothing (more
    ranks than batches): ``start == stop``.
    """
    for value, what in ((n_items, "n_items"), (world_size, "world_size"), (rank, "rank"), (batch_size, "batch_size")):
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidArgumentError(f"{what} must be an integer, got {value!r}")
    if n_items < 0 or world_size < 1 or batch_size < 1 or not 0 <= rank < world_size:
        raise InvalidArgumentError(f"no shard {rank} of {world_size} for {n_items} items in batches of {batch_size}")
    total = -(-n_items // batch_size)
    per, extra = divmod(total, world_size)
    first = rank * per + min(rank, extra)
    count = per + (1 if rank < extra else 0)
    start = min(first * batch_size, n_items)
    stop = min((first + count) * batch_size, n_items)
    return Shard(rank, world_size, start, stop, first, count, batch_size)
