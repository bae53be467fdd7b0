"""The inference-time-vs-accuracy chart (object-oriented matplotlib, no pyplot state).

x: median latency per batch measured on this machine (ms), with the interquartile range as error bar;
y: published ImageNet-1k top-1 from the official README results table (github.com/JDAI-CV/CoTNet).
Saved through :func:`cotviz.io.outputs.save_figure` (atomic, no timestamps) by :func:`save_plot`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from cotviz.errors import OutputError
from cotviz.formats import FigureFormat
from cotviz.io.outputs import save_figure
from cotviz.profile.api import AccuracyPoint, accuracy_point

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from cotviz.profile.measure import MeasureResult
    from cotviz.profile.report import ProfileReport

__all__ = ["check_figure_path", "measure_title", "plot_latency_vs_accuracy", "plot_reports", "save_plot"]

_FORMATS = tuple(f".{f.value}" for f in FigureFormat)


def plot_latency_vs_accuracy(points: Sequence[AccuracyPoint], *, title: str, ax: Axes | None = None) -> Figure:
    """One labelled point per model; returns the Figure (the caller saves and closes it).

    Args:
        points: measured models with their published top-1.
        title: says what was measured and where (device, threads, batch, dtype).
        ax: draw into these axes (default: a new 7 x 4.5 inch Figure).
    """
    from matplotlib.figure import Figure

    if not points:
        raise OutputError("nothing to plot: none of the measured models has a published top-1 accuracy")
    if ax is None:
        fig = Figure(figsize=(7.0, 4.5), layout="constrained")
        ax = fig.add_subplot()
    else:
        fig = ax.get_figure()  # type: ignore[assignment]
    for p in points:
        err = [[max(p.latency_ms - p.q1_ms, 0.0)], [max(p.q3_ms - p.latency_ms, 0.0)]]
        ax.errorbar([p.latency_ms], [p.top1], xerr=err, fmt="o", capsize=3, color="tab:blue")
        ax.annotate(f"{p.paper_name} ({p.size}px)", (p.latency_ms, p.top1), textcoords="offset points",
                    xytext=(5, 4), fontsize=8)
    ax.set_xlabel("median inference latency per batch on this machine (ms); bars: interquartile range")
    ax.set_ylabel("ImageNet-1k top-1 (%), official README")
    ax.set_title(title, fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.margins(x=0.2, y=0.15)
    return fig


def check_figure_path(path: str | Path) -> Path:
    """The path as a :class:`Path` if a figure can be saved there (suffix png/svg/pdf, existing directory)."""
    out = Path(path)
    if out.suffix.lower() not in _FORMATS:
        raise OutputError(f"--plot {out}: unsupported format {out.suffix or '(none)'}; use {', '.join(_FORMATS)}")
    if not out.parent.is_dir():
        raise OutputError(f"--plot {out}: directory {out.parent} does not exist")
    return out


def save_plot(fig: Figure, path: str | Path) -> Path:
    """Save as PNG/SVG/PDF (by suffix) at 150 dpi through :func:`cotviz.io.outputs.save_figure` (atomic, no
    timestamps); unwritable or unsupported paths raise one clear error."""
    out = check_figure_path(path)
    save_figure(fig, out, out.suffix[1:].lower(), dpi=150)
    return out


def measure_title(m: MeasureResult) -> str:
    """The chart title: what was measured, where and how."""
    return (f"CoTNet variants: measured latency vs published ImageNet top-1\n{m.device_name}, {m.device}, "
            f"{m.threads} threads, batch {m.batch}, {m.dtype}{', channels-last' if m.channels_last else ''}, "
            f"median of {m.repeats}")


def plot_reports(reports: Sequence[ProfileReport]) -> tuple[Figure, list[str]]:
    """The chart of measured reports, and the models left out (no published top-1).

    Raises ``OutputError`` if no report was measured or none of them has a published top-1.
    """
    measures = [(r.model, r.measure) for r in reports if r.measure is not None]
    if not measures:
        raise OutputError("nothing to plot: no report was measured (profile with measure=...)")
    points = [p for name, m in measures if (p := accuracy_point(name, m)) is not None]
    plotted = {p.model for p in points}
    skipped = [r.model for r in reports if r.model not in plotted]
    return plot_latency_vs_accuracy(points, title=measure_title(measures[0][1])), skipped
