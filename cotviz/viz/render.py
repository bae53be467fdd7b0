"""Raster drawing of figures whose chrome repeats: the static layer is drawn once and reused.

A folder run draws the same layout for every image: the same column titles, row labels and panel titles at the
same places. :func:`mark_static` registers such artists of a figure (texts that overlap nothing else: they sit
outside every panel); :func:`render_rgba` then draws the figure's Agg canvas as the figure patch plus those
artists (taken from a small cache keyed by the figure's size, dpi and the static artists' exact text, place and
style) followed by every other artist, in the order ``Figure.draw`` uses (z-order, then insertion order).
The pixels equal a plain ``canvas.draw()`` wherever the static artists overlap nothing drawn later, which is what
:func:`mark_static` asks for. A figure without static artists is drawn with ``canvas.draw()``.

Vector output (SVG/PDF) never goes through here: ``savefig`` draws every artist.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable, Iterable

import numpy as np
from matplotlib.artist import Artist
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.text import Text

__all__ = ["mark_static", "render_rgba"]

# The static texts live on their figure (an attribute), not in a module-level WeakKeyDictionary: its values
# (texts, which reference their figure) would keep every key alive, so no figure would ever be freed.
_STATIC_ATTR = "_cotviz_static_texts"
_LAYERS: OrderedDict[Hashable, np.ndarray] = OrderedDict()  # key -> (H_px, W_px, 4) uint8, read-only
_MAX_LAYERS = 4  # ~4 MB each at 1279 x 788 px
_LOCK = threading.Lock()


def mark_static(fig: Figure, artists: Iterable[Text]) -> None:
    """Declare texts of ``fig`` (figure texts, or texts of an Axes without axis decorations) that overlap no
    other artist of the figure.

    :func:`render_rgba` may take them from a layer drawn for an earlier figure with the same texts, places,
    styles, size and dpi."""
    setattr(fig, _STATIC_ATTR, _static_texts(fig) + tuple(artists))


def _static_texts(fig: Figure) -> tuple[Text, ...]:
    texts: tuple[Text, ...] = getattr(fig, _STATIC_ATTR, ())
    return texts


def _text_key(t: Text) -> Hashable:
    ax = t.axes
    return (t.get_text(), tuple(t.get_position()), hash(t.get_fontproperties()), t.get_rotation(),
            t.get_horizontalalignment(), t.get_verticalalignment(), getattr(t, "_multialignment", None), str(t.get_color()), t.get_alpha(), t.get_zorder(), t.get_visible(),
            t.get_linespacing(), t.get_transform().get_matrix().tobytes(),
            None if ax is None else (tuple(ax.get_position().bounds), ax.get_xlim(), ax.get_ylim()))


def _draw_order(fig: Figure, static: set[int]) -> list[Artist]:
    """The figure's artists in ``Figure.draw`` order, with each Axes' children flattened in ``Axes.draw`` order
    (the static ones dropped). Axes with static children must not show axis decorations (a canvas Axes)."""
    out: list[Artist] = []
    for a in sorted((c for c in fig.get_children() if c is not fig.patch), key=lambda c: c.get_zorder()):
        if id(a) in static:
            continue
        if isinstance(a, Axes) and any(id(c) in static for c in a.get_children()):
            if not a.get_visible():
                continue
            deco = (*a._axis_map.values(), *a.spines.values())  # not drawn when the axis is off
            kids = [c for c in a.get_children()
                    if c is not a.patch and id(c) not in static and all(c is not d for d in deco)]
            out.extend(sorted(kids, key=lambda c: c.get_zorder()))
        else:
            out.append(a)
    return out


def render_rgba(fig: Figure) -> np.ndarray:
    """Draw ``fig`` on its Agg canvas (static layer reused, see the module docstring); returns the canvas'
    (H_px, W_px, 4) uint8 RGBA buffer (a view: copy it before drawing the figure again)."""
    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    texts = _static_texts(fig)
    ok = bool(texts) and all(t in fig.texts if t.axes is None else (t in t.axes.texts and not t.axes.axison)
                             for t in texts)
    if not ok or fig.suppressComposite is not True:
        canvas.draw()
        return np.asarray(canvas.buffer_rgba())
    w, h = (int(v) for v in canvas.get_width_height(physical=True))
    key = (w, h, fig.dpi, str(fig.patch.get_facecolor()), tuple(_text_key(t) for t in texts))
    with _LOCK:
        layer = _LAYERS.get(key)
        if layer is not None:
            _LAYERS.move_to_end(key)
    if layer is None:
        layer = _static_layer(fig, canvas, texts)
        with _LOCK:
            _LAYERS[key] = layer
            while len(_LAYERS) > _MAX_LAYERS:
                _LAYERS.popitem(last=False)
    renderer = canvas.get_renderer()
    buf = np.asarray(renderer.buffer_rgba())
    buf[...] = layer
    for artist in _draw_order(fig, {id(t) for t in texts}):
        artist.draw(renderer)
    return np.asarray(canvas.buffer_rgba())


def _static_layer(fig: Figure, canvas: FigureCanvasAgg, texts: tuple[Text, ...]) -> np.ndarray:
    """The figure patch and ``texts`` alone, drawn on ``canvas``: (H_px, W_px, 4) uint8 (a read-only copy)."""
    keep = {id(t) for t in texts}
    owners = {id(t.axes) for t in texts if t.axes is not None}
    hidden: list[Artist] = []
    for a in fig.get_children():
        if a is fig.patch or id(a) in keep or not a.get_visible():
            continue
        if isinstance(a, Axes) and id(a) in owners:
            hidden += [c for c in a.get_children() if id(c) not in keep and c.get_visible()]
        else:
            hidden.append(a)
    try:
        for a in hidden:
            a.set_visible(False)
        canvas.draw()
        layer = np.array(canvas.buffer_rgba(), copy=True)
    finally:
        for a in hidden:
            a.set_visible(True)
    layer.setflags(write=False)
    return layer
