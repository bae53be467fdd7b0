"""Measured latency / memory on CPU (tiny settings), the memory and thread bounds, and the latency-vs-accuracy
figure."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from cotviz import resources
from cotviz.errors import InvalidArgumentError, OutputError, ResourceLimitError
from cotviz.models import model_entry
from cotviz.profile import (
    MeasureOptions,
    ProfileReport,
    accuracy_point,
    estimate_forward_memory,
    measure_latency,
    measure_model,
    plot_latency_vs_accuracy,
    plot_reports,
    profile_model,
    save_plot,
)
from cotviz.profile.api import AccuracyPoint
from cotviz.profile.measure import parse_dtype


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


_PEAK_CHILD = """
import json
import torch
from torch import nn
from cotviz.profile import measure_latency
torch.set_num_threads(1)
big = nn.Conv2d(3, 256, 3, padding=1)  # (1, 256, 256, 256) float32 output = 64 MiB
m = measure_latency(big, size=256, warmup=0, repeats=1)
print(json.dumps([m.peak_memory_bytes, m.memory_method]))
"""


def test_peak_memory_is_reported_honestly() -> None:
    """A forward that allocates 64 MiB shows up in the peak (when the platform can measure it). Run in a fresh
    interpreter: in a long test session, memory freed by earlier tests' garbage can offset the growth."""
    proc = subprocess.run([sys.executable, "-c", _PEAK_CHILD], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    peak, method = json.loads(proc.stdout.strip().splitlines()[-1])
    if peak is None:
        assert method.startswith("unavailable")
    else:
        assert 48 * 2**20 <= peak < 2**30 and "VmHWM" in method


def test_channels_last_and_bfloat16() -> None:
    model = _tiny().to(dtype=torch.bfloat16, memory_format=torch.channels_last)
    m = measure_latency(model, size=8, warmup=0, repeats=2, channels_last=True)
    assert m.dtype == "bfloat16" and m.channels_last


def test_options_are_validated_up_front() -> None:
    assert parse_dtype(" BFloat16") is torch.bfloat16
    with pytest.raises(InvalidArgumentError, match="unknown dtype"):
        parse_dtype("float8")
    assert MeasureOptions(device="CPU", threads=1).check().threads == 1
    with pytest.raises(InvalidArgumentError, match="unknown device"):
        MeasureOptions(device="tpu").check()
    if not torch.cuda.is_available():
        with pytest.raises(InvalidArgumentError, match="CUDA is not available"):
            MeasureOptions(device="cuda").check()
    with pytest.raises(InvalidArgumentError, match="--repeats"):
        MeasureOptions(repeats=0).check()
    with pytest.raises(InvalidArgumentError):
        measure_latency(_tiny(), size=8, repeats=0)


@pytest.mark.parametrize("threads", [0, resources.usable_cpus() + 1, 100_000])
def test_threads_are_bounded_by_the_usable_cpus(threads: int) -> None:
    before = torch.get_num_threads()
    with pytest.raises(InvalidArgumentError, match="the CPUs this process may use"):
        measure_latency(_tiny(), size=8, warmup=0, repeats=1, threads=threads)
    with pytest.raises(InvalidArgumentError, match="the CPUs this process may use"):
        profile_model("resnet50", size=32, measure=MeasureOptions(threads=threads))
    assert torch.get_num_threads() == before


def test_memory_check_refuses_before_allocating() -> None:
    """100000 px: ~2 TiB counted on the meta device, refused with one line instead of torch's allocation error."""
    with pytest.raises(ResourceLimitError, match=r"resnet50 at 100000 px, batch 1 needs about .* TiB of memory, "
                                                 r"but only .* is available.*--no-memory-check"):
        profile_model("resnet50", size=100_000, measure=MeasureOptions(warmup=0, repeats=1))
    with pytest.raises(ResourceLimitError, match="needs about"):
        measure_model("resnet50", size=100_000, warmup=0, repeats=1)


def test_memory_check_can_be_overridden(monkeypatch: pytest.MonkeyPatch) -> None:
    needed = estimate_forward_memory("resnet50", 32)
    monkeypatch.setattr(resources, "available_memory", lambda: needed - 1)  # room for the weights, not the forward
    options = MeasureOptions(warmup=0, repeats=1)
    with pytest.raises(ResourceLimitError, match=f"needs about {resources.format_bytes(needed)} of memory"):
        profile_model("resnet50", size=32, measure=options)
    r = profile_model("resnet50", size=32, measure=options, memory_check=False)
    assert r.measure is not None and r.measure.repeats == 1 and r.measure.size == 32


@pytest.fixture(scope="module")
def measured() -> list[ProfileReport]:
    """cotnet50 and resnet50 (no published top-1) profiled and measured at 32 px, 2 repeats, 1 thread."""
    options = MeasureOptions(warmup=0, repeats=2, threads=1)
    return [profile_model(n, size=32, measure=options) for n in ("cotnet50", "resnet50")]


@pytest.fixture(scope="module")
def points(measured: list[ProfileReport]) -> list[AccuracyPoint]:
    """Two real (tiny-settings) measurements paired with their published top-1."""
    assert measured[0].measure is not None
    p = accuracy_point("cotnet50", measured[0].measure)
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


def test_plot_figure(points: list[AccuracyPoint], tmp_path: Path) -> None:
    fig = plot_latency_vs_accuracy(points, title="measured on test CPU, 2 threads")
    ax = fig.axes[0]
    assert "(ms)" in ax.get_xlabel() and "top-1 (%)" in ax.get_ylabel()
    assert ax.get_title() == "measured on test CPU, 2 threads"
    labels = sorted(t.get_text() for t in ax.texts)
    assert labels == ["CoTNet-50 (32px)", "SE-CoTNetD-50 (32px)"]
    out = save_plot(fig, tmp_path / "chart.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    svg = save_plot(fig, tmp_path / "chart.svg")
    assert b"<svg" in svg.read_bytes()[:500]
    with pytest.raises(OutputError, match="unsupported format"):
        save_plot(fig, tmp_path / "chart.txt")
    with pytest.raises(OutputError, match="does not exist"):
        save_plot(fig, tmp_path / "missing" / "chart.png")


def test_plot_into_given_axes(points: list[AccuracyPoint]) -> None:
    from matplotlib.figure import Figure

    fig = Figure()
    ax = fig.add_subplot()
    assert plot_latency_vs_accuracy(points[:1], title="t", ax=ax) is fig
    with pytest.raises(OutputError, match="nothing to plot"):
        plot_latency_vs_accuracy([], title="t")


def test_plot_reports_uses_the_reports_measurements(measured: list[ProfileReport]) -> None:
    fig, skipped = plot_reports(measured)
    assert skipped == ["resnet50"]  # no published top-1
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.texts] == ["CoTNet-50 (32px)"]
    assert "1 threads, batch 1, float32" in ax.get_title() and "median of 2" in ax.get_title()
    with pytest.raises(OutputError, match="no report was measured"):
        plot_reports([profile_model("cotnet50", size=32)])
