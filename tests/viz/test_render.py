"""render_rgba: the cached static layer gives the same pixels as a full canvas.draw()."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from cotviz.viz import attention_figure
from cotviz.viz import render as render_module
from cotviz.viz.overlay import new_figure
from cotviz.viz.render import render_rgba

from .test_figures import make_data


def full_draw(fig: object) -> np.ndarray:
    fig.canvas.draw()  # type: ignore[attr-defined]
    return np.array(fig.canvas.buffer_rgba())  # type: ignore[attr-defined]


@pytest.mark.parametrize(("scale", "extras"), [("shared", False), ("per-panel", True)])
def test_cached_static_layer_gives_the_pixels_of_a_full_draw(scale: str, extras: bool) -> None:
    render_module._LAYERS.clear()
    data = make_data(point=extras, gradcam=extras, notes=("a note",))
    expected = full_draw(attention_figure(data, scale=scale))  # type: ignore[arg-type]
    first = np.array(render_rgba(attention_figure(data, scale=scale)))  # type: ignore[arg-type]  # draws the layer
    assert len(render_module._LAYERS) == 1
    other = replace(data, display=np.full_like(data.display, 200), maps={
        n: {b: m * 2 + 1 for b, m in row.items()} for n, row in data.maps.items()}, source="other.jpg")
    second = np.array(render_rgba(attention_figure(other, scale=scale)))  # type: ignore[arg-type]  # from the cache
    assert len(render_module._LAYERS) == 1  # same titles and labels: the layer was reused
    np.testing.assert_array_equal(first, expected)
    np.testing.assert_array_equal(second, full_draw(attention_figure(other, scale=scale)))  # type: ignore[arg-type]
    assert not np.array_equal(second, first)


def test_other_labels_get_their_own_layer() -> None:
    render_module._LAYERS.clear()
    data = make_data()
    render_rgba(attention_figure(data))
    renamed = replace(data, blocks=["stage3.block1", "stage3.block2", "stage3.block9"],
                      maps={n: {b.replace("block3", "block9"): m for b, m in row.items()}
                            for n, row in data.maps.items()},
                      strides={b.replace("block3", "block9"): s for b, s in data.strides.items()})
    got = np.array(render_rgba(attention_figure(renamed)))
    assert len(render_module._LAYERS) == 2
    np.testing.assert_array_equal(got, full_draw(attention_figure(renamed)))


def test_a_figure_without_static_texts_is_drawn_in_full() -> None:
    fig = new_figure((2.0, 1.0), dpi=50)
    fig.add_subplot().plot([0, 1], [1, 0])
    expected = full_draw(fig)
    np.testing.assert_array_equal(render_rgba(fig), expected)


def test_title_lines_sit_where_one_multiline_text_puts_them() -> None:
    """The title is one Text per line (the first lines join the static layer); drawn as before: one Text."""
    fig = attention_figure(make_data())
    lines = [t for t in fig.texts if t.get_position()[0] == 0.5]
    assert len(lines) >= 2
    split = full_draw(fig)
    for t in lines:
        t.remove()
    fig.text(0.5, 1.0 - 0.1 / fig.get_size_inches()[1], "\n".join(t.get_text() for t in lines), fontsize=8.0,
             ha="center", va="top")
    np.testing.assert_array_equal(split, full_draw(fig))


def test_a_drawn_figure_with_static_texts_is_freed() -> None:
    """Marking texts static must not keep the figure alive (a folder run draws one figure per image: a
    registry holding them would grow without bound)."""
    import gc
    import weakref

    fig = attention_figure(make_data(notes=("a note",)))
    render_rgba(fig)
    ref = weakref.ref(fig)
    del fig
    gc.collect()
    assert ref() is None
