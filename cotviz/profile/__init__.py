"""Profiling: exact parameters, MACs/FLOPs and activation memory (meta device), measured latency.

::

    from cotviz.profile import profile_model
    report = profile_model("cotnext101", size=224, convention="official")
    report.macs, report.flops            # FLOPs = 2 x MACs; the README "FLOPs" column is GMACs
    report.to_dict()["operators"]        # per operator type, incl. the local aggregation

Counting builds the model on the meta device and runs one forward under module hooks and a
``TorchDispatchMode`` (:mod:`cotviz.profile.counting`); the counting rules of both conventions are in
:mod:`cotviz.profile.rules`.
"""

from cotviz.profile.api import AccuracyPoint, accuracy_point, default_size, profile_model, total_stride
from cotviz.profile.counting import CountResult, build_meta_model, count_model
from cotviz.profile.measure import MeasureResult, measure_latency, measure_model
from cotviz.profile.plot import plot_latency_vs_accuracy, save_figure
from cotviz.profile.render import render_csv, render_json, render_markdown, render_table, render_text
from cotviz.profile.report import CONVENTIONS, ProfileReport, summarize

__all__ = [
    "CONVENTIONS", "AccuracyPoint", "CountResult", "MeasureResult", "ProfileReport", "accuracy_point",
    "build_meta_model", "count_model", "default_size", "measure_latency", "measure_model",
    "plot_latency_vs_accuracy", "profile_model", "render_csv", "render_json", "render_markdown",
    "render_table", "render_text", "save_figure", "summarize", "total_stride",
]
