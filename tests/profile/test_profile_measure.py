"""Measured latency / memory on CPU (tiny settings) and the latency-vs-accuracy figure."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cotviz.errors import InvalidArgumentError, OutputError
from cotviz.models import model_entry
from cotviz.profile import (
    accuracy_point,
    measure_latency,
    measure_model,
    plot_latency_vs_accuracy,
    save_figure,
)
from cotviz.profile.api import AccuracyPoint
from cotviz.profile.measure import parse_device, parse_dtype


def _tiny() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1))


def test_latency_statistics_and_settings() -> None:
    model = _tiny().train()
    threads = torch.get_num_threads()
    m = measure_latency(model, size=16, batch=2, warmup=1, repeats=5, threads=1)
    assert len(m.times_ms) == 5 and m.repeats == 5 and m.warmup == 1 and m.batch == 2
    assert m.min_ms <= m.q1_ms <= m.median_ms <= m.q3_ms <= m.max_ms and m.min_ms > 0
    assert m.threads == 1 and torch.get_num_threads() == threads  # restored
    assert model.training  # the model's flag is restored too
    assert m.device == "cpu" and m.dtype == "float32" and m.memory_method
    d = m.to_dict()
    assert d["iqr_ms"] == pytest.approx(m.q3_ms - m.q1_ms) and d["images_per_s"] > 0


def test_peak_memory_is_reported_honestly() -> None:
    """A forward that allocates ~64 MiB must show up in the peak (when the platform can measure it)."""
    big = nn.Conv2d(3, 256, 3, padding=1)  # (1, 256, 256, 256) float32 output = 64 MiB
    m = measure_latency(big, size=256, warmup=0, repeats=1)
    if m.peak_memory_bytes is None:
        assert m.memory_method.startswith("unavailable")
    else:
        assert m.peak_memory_bytes >= 48 * 2**20 and "VmHWM" in m.memory_method


def test_channels_last_and_bfloat16() -> None:
    model = _tiny().to(dtype=torch.bfloat16, memory_format=torch.channels_last)
    m = measure_latency(model, size=8, warmup=0, repeats=2, channels_last=True)
    assert m.dtype == "bfloat16" and m.channels_last


def test_devices_and_dtypes_are_validated() -> None:
    assert parse_device("CPU") == torch.device("cpu")
    assert parse_dtype("bfloat16") is torch.bfloat16
    with pytest.raises(InvalidArgumentError, match="unknown device"):
        parse_device("tpu")
    with pytest.raises(InvalidArgumentError, match="unknown dtype"):
        parse_dtype("float8")
    if not torch.cuda.is_available():
        with pytest.raises(InvalidArgumentError, match="CUDA is not available"):
            parse_device("cuda")
    with pytest.raises(InvalidArgumentError):
        measure_latency(_tiny(), size=8, repeats=0)


@pytest.fixture(scope="module")
def points() -> list[AccuracyPoint]:
    """Two real (tiny-settings) measurements paired with their published top-1."""
    p = accuracy_point("cotnet50", measure_model("cotnet50", size=32, warmup=0, repeats=2))
    assert p is not None
    # a second point: the same measurement under another model's published result (label and position only)
    q = AccuracyPoint("se_cotnetd_50", "SE-CoTNetD-50", 32, 2 * p.latency_ms, 2 * p.q1_ms, 2 * p.q3_ms, 81.6, 224)
    return [p, q]


def test_accuracy_points_carry_the_readme_top1(points: list[AccuracyPoint]) -> None:
    p = points[0]
    paper = model_entry(p.model).paper
    assert paper is not None and p.top1 == paper.top1 == 81.3 and p.paper_name == paper.name == "CoTNet-50"
    assert p.q1_ms <= p.latency_ms <= p.q3_ms and p.size == 32 and p.paper_resolution == 224
    from cotviz.profile.measure import MeasureResult

    assert accuracy_point("se_cotnetd_200", MeasureResult(**{**_measured_fields(), "size": 32})) is None


def _measured_fields() -> dict[str, object]:
    m = measure_latency(_tiny(), size=8, warmup=0, repeats=1)
    return {k: getattr(m, k) for k in m.__dataclass_fields__}


def test_plot_figure(points: list[AccuracyPoint], tmp_path: object) -> None:
    fig = plot_latency_vs_accuracy(points, title="measured on test CPU, 2 threads")
    ax = fig.axes[0]
    assert "(ms)" in ax.get_xlabel() and "top-1 (%)" in ax.get_ylabel()
    assert ax.get_title() == "measured on test CPU, 2 threads"
    labels = sorted(t.get_text() for t in ax.texts)
    assert labels == ["CoTNet-50 (32px)", "SE-CoTNetD-50 (32px)"]
    from pathlib import Path

    out = save_figure(fig, Path(str(tmp_path)) / "chart.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    svg = save_figure(fig, Path(str(tmp_path)) / "chart.svg")
    assert b"<svg" in svg.read_bytes()[:500]
    with pytest.raises(OutputError, match="unsupported format"):
        save_figure(fig, Path(str(tmp_path)) / "chart.txt")
    with pytest.raises(OutputError, match="does not exist"):
        save_figure(fig, Path(str(tmp_path)) / "missing" / "chart.png")


def test_plot_into_given_axes(points: list[AccuracyPoint]) -> None:
    from matplotlib.figure import Figure

    fig = Figure()
    ax = fig.add_subplot()
    assert plot_latency_vs_accuracy(points[:1], title="t", ax=ax) is fig
    with pytest.raises(OutputError, match="nothing to plot"):
        plot_latency_vs_accuracy([], title="t")
