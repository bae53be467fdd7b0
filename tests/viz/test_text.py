"""text_size_px: the Agg renderer's metrics, measured once per text, font, dpi and hinting across figures."""

from __future__ import annotations

import matplotlib as mpl
import pytest
from matplotlib.font_manager import FontProperties

from cotviz.viz import text as text_module
from cotviz.viz.overlay import new_figure
from cotviz.viz.text import text_size_px


def test_metrics_are_the_renderers_and_reused_by_the_next_figure(monkeypatch: pytest.MonkeyPatch) -> None:
    text_module._CACHE.clear()
    prop = FontProperties(size=7.0)
    fig = new_figure((2.0, 1.0), dpi=100)
    renderer = fig.canvas.get_renderer()  # type: ignore[attr-defined]  # Agg
    expected = renderer.get_text_width_height_descent("1.25", prop, ismath=False)
    assert text_size_px(fig, "1.25", prop) == pytest.approx(expected)
    other = new_figure((3.0, 2.0), dpi=100)  # another figure, another renderer: no new measurement

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("measured again")

    monkeypatch.setattr(type(renderer), "get_text_width_height_descent", refuse)  # every Agg renderer
    assert text_size_px(other, "1.25", FontProperties(size=7.0)) == pytest.approx(expected)
    with pytest.raises(AssertionError, match="measured again"):  # another dpi, size or text is measured
        text_size_px(new_figure((2.0, 1.0), dpi=75), "1.25", prop)
    with pytest.raises(AssertionError, match="measured again"):
        text_size_px(other, "1.25", FontProperties(size=8.0))
    with mpl.rc_context({"text.hinting": "none"}), pytest.raises(AssertionError, match="measured again"):
        text_size_px(other, "1.25", prop)


def test_the_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    text_module._CACHE.clear()
    monkeypatch.setattr(text_module, "_MAX_ENTRIES", 3)
    fig = new_figure((1.0, 1.0), dpi=50)
    for i in range(10):
        text_size_px(fig, str(i), FontProperties(size=7.0))
    assert [k[0] for k in text_module._CACHE] == ["7", "8", "9"]  # type: ignore[index]  # least recently used go first
