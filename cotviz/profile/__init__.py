"""Profiling: exact parameters, MACs/FLOPs and activation memory (meta device), measured latency.

::

    from cotviz.profile import MeasureOptions, profile_model
    report = profile_model("cotnext101", size=224, convention="official")
    report.macs, report.flops            # FLOPs = 2 x MACs; the README "FLOPs" column is GMACs
    report.to_dict()["operators"]        # per operator type, incl. the local aggregation
    profile_model("cotnet50", measure=MeasureOptions(repeats=5, threads=2)).measure.median_ms
    estimate_forward_memory("cotnet50", size=224, batch=8)   # bytes, counted on the meta device

Counting builds the model on the meta device and runs one forward under module hooks and a
``TorchDispatchMode`` (:mod:`cotviz.profile.counting`); the counting rules of both conventions are in
:mod:`cotviz.profile.rules`. Names are imported lazily: ``cotviz.profile.choices`` and
``cotviz.profile.render`` (the CLI's choices) load without torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the real names, for type checkers and IDEs
    from cotviz.profile.api import (
        AccuracyPoint,
        accuracy_point,
        check_forward_memory,
        default_size,
        estimate_forward_memory,
        profile_model,
        profile_models,
        total_stride,
    )
    from cotviz.profile.choices import CONVENTIONS, DTYPES
    from cotviz.profile.counting import CountResult, count_model
    from cotviz.profile.measure import MeasureOptions, MeasureResult, measure_latency, measure_model
    from cotviz.profile.plot import plot_latency_vs_accuracy, plot_reports, save_plot
    from cotviz.profile.render import (
        RENDERERS,
        render_csv,
        render_json,
        render_markdown,
        render_reports,
        render_table,
        render_text,
    )
    from cotviz.profile.report import ProfileReport, build_report

__all__ = [
    "CONVENTIONS", "DTYPES", "RENDERERS", "AccuracyPoint", "CountResult", "MeasureOptions", "MeasureResult",
    "ProfileReport", "accuracy_point", "build_report", "check_forward_memory", "count_model", "default_size",
    "estimate_forward_memory", "measure_latency", "measure_model", "plot_latency_vs_accuracy", "plot_reports",
    "profile_model", "profile_models", "render_csv", "render_json", "render_markdown", "render_reports",
    "render_table", "render_text", "save_plot", "total_stride",
]

_LAZY: dict[str, str] = {
    **dict.fromkeys(("CONVENTIONS", "DTYPES"), "cotviz.profile.choices"),
    **dict.fromkeys(("AccuracyPoint", "accuracy_point", "check_forward_memory", "default_size",
                     "estimate_forward_memory", "profile_model", "profile_models", "total_stride"),
                    "cotviz.profile.api"),
    **dict.fromkeys(("CountResult", "count_model"), "cotviz.profile.counting"),
    **dict.fromkeys(("MeasureOptions", "MeasureResult", "measure_latency", "measure_model"), "cotviz.profile.measure"),
    **dict.fromkeys(("plot_latency_vs_accuracy", "plot_reports", "save_plot"), "cotviz.profile.plot"),
    **dict.fromkeys(("RENDERERS", "render_csv", "render_json", "render_markdown", "render_reports",
                     "render_table", "render_text"), "cotviz.profile.render"),
    **dict.fromkeys(("ProfileReport", "build_report"), "cotviz.profile.report"),
}


def __getattr__(name: str) -> Any:
    try:
        module = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'cotviz.profile' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
