"""``cotviz attention`` writes what it wrote before the pipeline moved into the library.

``tests/data/attention_v0/`` holds the npz, JSON and ``--json`` summary of two runs made with the CLI as it was
before ``cotviz.explain`` existed (commit 751b457); the same commands today must give equal arrays and JSON equal
apart from fields added since (``schema_version``, ``prediction.top5``, ``nonfinite``) and run-specific paths.
Refresh only on purpose: ``COTVIZ_ACCEPT_GOLDEN=1 pytest tests/explain/test_compat.py`` rewrites the files.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from cotviz.cli.app import app

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "tests" / "data" / "attention_v0"
COFFEE = "examples/coffee.png"

RUNS = {
    "a": (["--stage", "3", "--size", "64", "--point", "290,140", "--gradcam"], "coffee_cotnet50_stage3", "png"),
    "b": (["--stage", "2", "--block", "1", "--block", "3", "--head", "1", "--map", "attention_energy",
           "--map", "center_weight", "--map", "output_energy", "--map", "dynamic_share", "--no-crop", "--size", "96",
           "--format", "svg", "--scale", "per-panel"], "coffee_cotnet50_stage2", "svg"),
}
ADDED = {"schema_version", "nonfinite"}  # top-level fields added since v0
NESTED_ADDED = {"top5", "formula_by_attention"}  # fields added inside sections since v0
PATHS = {"outputs", "out_dir", "figure", "npz", "json"}  # where a run wrote its files


def _strip(obj: Any) -> Any:
    """``obj`` without the added fields and the run's own output paths."""
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items() if k not in ADDED | PATHS | NESTED_ADDED}
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    return obj


def _close(a: Any, b: Any, path: str = "") -> None:
    """JSON values equal, floats within 1e-4 relative, Grad-CAM's 1e-2 (float32 through a dozen layers; see below)."""
    if isinstance(a, float) or isinstance(b, float):
        assert a == pytest.approx(b, rel=1e-2 if "gradcam" in path else 1e-4, abs=1e-7), path
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), f"{path}: {sorted(set(a) ^ set(b))}"
        for k in a:
            _close(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _close(x, y, f"{path}[{i}]")
    else:
        assert a == b, path


@pytest.mark.parametrize("run", sorted(RUNS))
def test_outputs_equal_the_pre_library_cli(run: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    args, base, fmt = RUNS[run]
    monkeypatch.chdir(REPO)
    result = CliRunner().invoke(app, ["attention", COFFEE, *args, "--out", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / f"{base}.{fmt}").stat().st_size > 0
    if os.environ.get("COTVIZ_ACCEPT_GOLDEN"):
        shutil.copy(tmp_path / f"{base}.npz", DATA / f"{run}.npz")
        shutil.copy(tmp_path / f"{base}.json", DATA / f"{run}.json")
        (DATA / f"{run}.stdout.json").write_text(result.stdout)
    old, new = np.load(DATA / f"{run}.npz"), np.load(tmp_path / f"{base}.npz")
    assert list(new.keys()) == list(old.keys())
    for key in old:
        # float32 through a dozen layers: since these files were written, the fusion became one lerp and the
        # narrow channels-last aggregation runs channels-first, which reorders the arithmetic (relative changes
        # ~1e-5 that grow with depth; the goldens in ../shared/reference pin the exact numbers per layer), so the
        # check is 1e-4 of each array's scale: a wrong map, block or crop differs by far more. Grad-CAM of this
        # untrained network is a sum of cancelling terms (measured: 0.5% of its scale moves with the thread count
        # used to calibrate the network's BatchNorms), so it is checked to 1e-2 of its scale
        scale = float(np.abs(old[key]).max()) if old[key].size else 0.0
        tol = 1e-2 if "gradcam" in key else 1e-4
        np.testing.assert_allclose(new[key], old[key], rtol=tol, atol=max(1e-6, tol * scale), err_msg=key)
    meta = json.loads((tmp_path / f"{base}.json").read_text())
    assert meta["schema_version"] == 1 and meta["nonfinite"] == []
    assert meta["prediction"]["top5"][0]["class"] == meta["prediction"]["class"]
    assert meta["outputs"] == {"figure": str(tmp_path / f"{base}.{fmt}"), "npz": str(tmp_path / f"{base}.npz")}
    old_meta = json.loads((DATA / f"{run}.json").read_text())
    _close(_strip(meta), _strip(old_meta))
    _close(_strip(json.loads(result.stdout)), _strip(json.loads((DATA / f"{run}.stdout.json").read_text())))
