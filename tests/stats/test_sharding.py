"""Shards: every item in exactly one shard (no padding, no gap), whole batches, balanced, for any size."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cotviz.errors import InvalidArgumentError
from cotviz.stats.sharding import shard


@settings(max_examples=120, deadline=None)
@given(n=st.integers(0, 2000), world=st.integers(1, 17), batch=st.integers(1, 64))
def test_shards_partition_the_items_in_whole_batches(n: int, world: int, batch: int) -> None:
    shards = [shard(n, world, r, batch) for r in range(world)]
    covered = [i for s in shards for i in range(s.start, s.stop)]
    assert covered == list(range(n))  # in order: no duplicate, no gap, no padding
    batches = [g for s in shards for g in range(s.first_batch, s.first_batch + s.batches)]
    assert batches == list(range(-(-n // batch)))
    for s in shards:
        assert s.start == min(s.first_batch * batch, n) and len(s) == sum(len(s.batch_items(g)) for g in
                                                                            range(s.first_batch, s.first_batch + s.batches))
    counts = [s.batches for s in shards]
    assert max(counts) - min(counts) <= 1


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(InvalidArgumentError):
        shard(10, 2, 2, 4)
    with pytest.raises(InvalidArgumentError):
        shard(10, 0, 0, 4)
    with pytest.raises(IndexError):
        shard(10, 2, 0, 4).batch_items(2)
