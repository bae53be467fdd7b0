"""Operators compared in one skeleton: ``compare(specs) -> Comparison`` (counts, latency, published top-1) and
``compare_maps(specs, image)`` (the attention maps of every operator side by side).

* :mod:`cotviz.compare.runner` -- counting (meta device) and interleaved measurement
* :mod:`cotviz.compare.paper` -- the paper's Tables 5, 6 and 7 (published figures only)
* :mod:`cotviz.compare.render` -- table, JSON, CSV, markdown
* :mod:`cotviz.compare.maps` -- the side-by-side figure through the explain runner
"""

from __future__ import annotations

from cotviz.compare.maps import COMPARE_MAPS, compare_maps, explain_operators
from cotviz.compare.paper import PAPER_TABLES, PaperRow, published, table_specs
from cotviz.compare.runner import SKELETONS, CompareRow, Comparison, Timing, compare, resolve_specs

__all__ = [
    "COMPARE_MAPS", "PAPER_TABLES", "SKELETONS", "Comparison", "CompareRow", "PaperRow", "Timing", "compare",
    "compare_maps", "explain_operators", "published", "resolve_specs", "table_specs",
]
