"""Tensor operators of CoTNet that PyTorch does not ship: the local k x k aggregation."""

from cotviz.ops.aggregation import (
    AggregationShapeError,
    local_aggregation,
    local_aggregation_reference,
    output_size,
)

__all__ = ["AggregationShapeError", "local_aggregation", "local_aggregation_reference", "output_size"]
