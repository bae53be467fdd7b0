"""The HTML explorer: hover a cell, see every head's k x k kernel there, each map's value and the local rollout.

::

    ex = cotviz.explain("cotnet50", "examples/coffee.png", stage=3, cells=True)
    ex.explore().save("page.html")      # one self-contained file (inline JS/CSS/data, works offline)
    ex                                  # in a notebook: the same explorer inline (Explanation._repr_html_)

* :mod:`cotviz.explore.cells` -- every cell's kernels, each head's maps and the rollout plan of one image
  (``Explainer(cells=True)`` stores them as ``Explanation.cells``)
* :mod:`cotviz.explore.page` -- the page: :class:`ExplorerData` in, :class:`Explorer` (the HTML) out

Layer: below :mod:`cotviz.explain` (the runner fills ``cells``, the Explanation builds its page) and above
:mod:`cotviz.viz`; the ``cotviz explore`` command lives in :mod:`cotviz.cli.explore`.
"""

from __future__ import annotations

from cotviz.explore.cells import CellData, RolloutPlan, cell_data
from cotviz.explore.page import BUDGET_BYTES, BlockView, Explorer, ExplorerData, build_page, encode_array

__all__ = ["BUDGET_BYTES", "BlockView", "CellData", "Explorer", "ExplorerData", "RolloutPlan", "build_page",
           "cell_data", "encode_array"]
