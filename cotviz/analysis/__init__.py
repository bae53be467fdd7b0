"""Maps and statistics computed from capture records (see :mod:`cotviz.analysis.stats`)."""

from __future__ import annotations

from cotviz.analysis.stats import (
    attention_energy,
    attention_entropy,
    center_weight_share,
    context_energy,
    dynamic_share,
    fused_output_energy,
    summarize,
)

__all__ = [
    "attention_energy", "attention_entropy", "center_weight_share", "context_energy", "dynamic_share",
    "fused_output_energy", "summarize",
]
