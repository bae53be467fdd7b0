"""Text metrics of the Agg renderer, cached across figures.

Laying out the attention figure measures ~20 short texts (colour-bar tick labels, title lines) through
``RendererAgg.get_text_width_height_descent``: a FreeType layout each (~0.25 ms). matplotlib caches those metrics
per renderer, i.e. per figure, so a folder run measured the same "0.5", "1.0", ... again for every image. Here they
are cached by what they depend on: the text, the font properties, the dpi and the hinting settings (a bounded LRU).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable

import matplotlib as mpl
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties

__all__ = ["text_size_px"]

_CACHE: OrderedDict[Hashable, tuple[float, float, float]] = OrderedDict()
_MAX_ENTRIES = 4096
_LOCK = threading.Lock()


def text_size_px(fig: Figure, text: str, prop: FontProperties) -> tuple[float, float, float]:
    """``(width, height, descent)`` in pixels of one line of plain (non-math) ``text`` in ``prop`` at ``fig``'s dpi,
    as ``fig``'s Agg renderer measures it."""
    key = (text, prop.copy(), float(fig.dpi), mpl.rcParams["text.hinting"], mpl.rcParams["text.hinting_factor"],
           mpl.rcParams["text.kerning_factor"])
    with _LOCK:
        hit = _CACHE.get(key)
        if hit is not None:
            _CACHE.move_to_end(key)
            return hit
    renderer = fig.canvas.get_renderer()  # type: ignore[attr-defined]  # an Agg canvas (cotviz.viz.overlay.new_figure)
    w, h, d = renderer.get_text_width_height_descent(text, prop, ismath=False)
    size = (float(w), float(h), float(d))
    with _LOCK:
        _CACHE[key] = size
        while len(_CACHE) > _MAX_ENTRIES:
            _CACHE.popitem(last=False)
    return size
