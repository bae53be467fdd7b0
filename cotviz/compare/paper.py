"""The paper's ablation tables: which rows they have and only the figures they publish.

Li, Yao, Pan, Mei, "Contextual Transformer Networks for Visual Recognition" (TPAMI 2023, arXiv 2107.12292),
ImageNet top-1 (%) of the CoTNet-50 skeleton with the default training setting:

* Table 5 -- ways of exploiting the context: static only, dynamic only, linear fusion, concatenation, CoT
  (and ResNet-50 as the reference row).
* Table 6 -- the kernel size of the static-context conv (and of the aggregation window): 1x1, 3x3, 5x5.
* Table 7 -- which stages get CoT blocks (the others keep ResNet-50's 3x3 convs), with the published GPU
  inference throughput at batch 64 (images/s).

Only published figures appear here; a row the paper does not report has no number (never invented).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

__all__ = ["PAPER_TABLES", "PaperRow", "published", "table_specs"]


@dataclass(frozen=True)
class PaperRow:
    """One published row: the operator spec it corresponds to, its label in the paper, top-1 (%) and, where
    published, GPU inference throughput at batch 64 (images/s)."""

    spec: str
    label: str
    top1: float
    throughput: float | None = None


_TABLES: dict[str, tuple[PaperRow, ...]] = {
    "table5": (
        PaperRow("conv", "ResNet-50", 77.3),
        PaperRow("static", "Static Context", 77.1),
        PaperRow("dynamic", "Dynamic Context", 78.5),
        PaperRow("linear", "Linear Fusion", 78.7),
        PaperRow("concat", "Concatenation", 78.9),
        PaperRow("cot", "CoT", 79.2),
    ),
    "table6": (
        PaperRow("cot:key_kernel=1", "1x1", 78.6),
        PaperRow("cot", "3x3", 79.2),
        PaperRow("cot:kernel=5", "5x5", 79.3),
    ),
    "table7": (
        PaperRow("conv", "ResNet-50", 77.3, 508.0),
        PaperRow("cot@4", "res5", 78.5, 491.0),
        PaperRow("cot@3-4", "res4+5", 79.0, 443.0),
        PaperRow("cot@2-4", "res3-5", 79.0, 390.0),
        PaperRow("cot", "res2-5 (all)", 79.2, 331.0),
    ),
}

#: Table name -> its rows, in the paper's order (read-only).
PAPER_TABLES: Mapping[str, tuple[PaperRow, ...]] = MappingProxyType(_TABLES)


def table_specs(table: str) -> list[str]:
    """The operator specs of a paper table's rows (``"table7"`` -> ``["conv", "cot@4", ...]``)."""
    return [row.spec for row in PAPER_TABLES[table]]


def published(spec: str, table: str | None = None) -> PaperRow | None:
    """The published row of ``spec`` in ``table``, or (no table) its first row in any table with the throughput
    of Table 7 where that table has the row (the tables agree on the top-1 of the rows they share), or None."""
    tables = [PAPER_TABLES[table]] if table is not None else list(PAPER_TABLES.values())
    rows = [row for t in tables for row in t if row.spec == spec]
    if not rows:
        return None
    throughput = next((r.throughput for r in rows if r.throughput is not None), None)
    first = rows[0]
    return PaperRow(first.spec, first.label, first.top1, throughput)
