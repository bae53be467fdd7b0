"""Tensor operators of CoTNet that PyTorch does not ship: the local k x k aggregation.

Importing this package registers ``torch.ops.cotviz.local_aggregation`` and its two backward
operators (:mod:`cotviz.ops._library`).
"""

from cotviz.ops._library import decompositions  # importing it registers the torch.ops.cotviz operators
from cotviz.ops.aggregation import (
    AggregationShapeError,
    local_aggregation,
    local_aggregation_reference,
    output_size,
)

__all__ = ["AggregationShapeError", "decompositions", "local_aggregation", "local_aggregation_reference",
           "output_size"]
