"""Maps and statistics computed from capture records (see :mod:`cotviz.analysis.stats`).

* :mod:`cotviz.analysis.catalog` -- the map types by name (no torch: the CLI lists them)
* :mod:`cotviz.analysis.maps` -- their computation from records (``MAPS``)
* :mod:`cotviz.analysis.stats` -- per-position statistics of the taps
* :mod:`cotviz.analysis.rollout` -- local attention rollout; :mod:`cotviz.analysis.attribution` -- Grad-CAM

The statistics below are imported lazily (importing a submodule such as ``catalog`` does not import torch).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cotviz.analysis.stats import (
        attention_energy,
        attention_entropy,
        center_weight_share,
        context_energy,
        fused_output_energy,
        fusion_preference,
        summarize_record,
    )

__all__ = [
    "attention_energy", "attention_entropy", "center_weight_share", "context_energy", "fusion_preference",
    "fused_output_energy", "summarize_record",
]


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module 'cotviz.analysis' has no attribute {name!r}")
    value = getattr(importlib.import_module("cotviz.analysis.stats"), name)
    globals()[name] = value
    return value
