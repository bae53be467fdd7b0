"""Bounds on what one request may allocate: sizes and batches that cannot fit are refused before allocating."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from cotviz.cli.app import app
from cotviz.errors import ResourceLimitError
from cotviz.explain import Explainer
from cotviz.models import create_model
from cotviz.resources import available_memory

COFFEE = str(Path(__file__).resolve().parents[2] / "examples" / "coffee.png")
TINY = {"layers": [1, 1, 1, 1], "base_width": 16, "num_classes": 10}


def test_a_size_that_cannot_fit_is_refused_before_any_image_is_read() -> None:
    model = create_model("cotnet50", **TINY)
    with pytest.raises(ResourceLimitError, match=r"at 100000 px, batch 1 needs about .* TiB of memory, but only"):
        Explainer(model, stage=3, preprocess={"size": 100000})


def test_a_batch_that_cannot_fit_is_refused_when_the_stream_starts() -> None:
    avail = available_memory()
    assert avail is not None
    model = create_model("cotnet50", **TINY)
    ex = Explainer(model, stage=3, preprocess={"size": 4096})  # batch 1 fits
    stream = ex.stream(["never-read.png"], batch_size=100_000)
    with pytest.raises(ResourceLimitError, match="batch 100000"):
        next(stream)


def test_the_check_can_be_turned_off_and_costs_nothing_for_ordinary_sizes(monkeypatch: pytest.MonkeyPatch) -> None:
    import cotviz.profile.api as api

    calls: list[int] = []
    real = api.estimate_forward_memory
    monkeypatch.setattr(api, "estimate_forward_memory", lambda *a, **k: calls.append(1) or real(*a, **k))
    model = create_model("cotnet50", **TINY)
    Explainer(model, stage=3, preprocess={"size": 224})
    assert calls == []  # the cheap bound was enough: no meta-device count
    Explainer(model, stage=3, preprocess={"size": 100000}, memory_check=False)  # not refused, nothing allocated
    assert calls == []


def test_cli_refuses_in_one_line_and_exit_2(tmp_path: Path) -> None:
    r = CliRunner().invoke(app, ["attention", COFFEE, "--size", "100000", "--out", str(tmp_path)])
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: cotnet50 at 100000 px") and "--no-memory-check" in lines[0]
