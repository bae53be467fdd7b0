"""``cotviz stats`` on the command line: outputs and their formats, --json, one-line errors, help at 80 columns."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cotviz.cli.app import app
from cotviz.cli.stats import STAT_NAMES
from cotviz.stats.catalog import STAT_INFO

DEMO = ["--model", "cotnet_demo", "--weights", "demo", "--workers", "0", "--batch-size", "4"]


def test_help_fits_80_columns_and_lists_every_quantity() -> None:
    assert STAT_NAMES == tuple(STAT_INFO)
    r = CliRunner().invoke(app, ["stats", "--help"], env={"COLUMNS": "80", "TERMINAL_WIDTH": "80"})
    assert r.exit_code == 0, r.output
    assert "<bool>" not in r.stdout and max(len(line) for line in r.stdout.splitlines()) <= 80
    flat = re.sub(r"[\s│]+", " ", r.stdout)
    for name in STAT_NAMES:
        assert name in flat
    assert "--checkpoint-every" in flat and "--resume" in flat and "--by-class" in flat


def test_outputs_and_json(tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    r = CliRunner().invoke(app, ["stats", str(tree), *DEMO, "--stages", "3-4", "--maps", "dynamic_share,center_weight",
                                 "--by-class", "--out", str(out), "--json"])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert summary["run"]["images"] == 8 and summary["run"]["failed"] == 1
    assert summary["failures"][0]["input"].endswith("zz_bad.png")
    for path in summary["files"].values():
        assert Path(path).is_file() and Path(path).stat().st_size > 0
    doc = json.loads((out / "stats.json").read_text())
    assert doc["schema_version"] == 1 and doc["classes"] == ["cat", "dog"]
    with open(out / "stats.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(doc["series"])
    blocks = {row["block"] for row in rows}
    assert blocks == {"stage3.block1", "stage4.block1"} and {row["map"] for row in rows} == {"dynamic_share",
                                                                                             "center_weight"}
    first = rows[0]
    assert first["head"] == "all" and first["class"] == "" and float(first["mean"]) == doc["series"][0]["mean"]
    with np.load(out / "histograms.npz") as h:
        assert h["counts"].shape == (len(rows), 66) and h["counts"].sum(axis=1).tolist() == \
            [s["count"] for s in doc["series"]]
    text = (out / "summary.md").read_text()
    assert "dynamic share" in text and "zz_bad.png" in text
    assert (out / "heads_stage3.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(("args", "code", "message"), [
    (["{missing}"], 1, "no such file or directory"),
    (["{tree}", "--stages", "7"], 2, "stage 7 out of range"),
    (["{tree}", "--stages", "0", "--weights", "{missing}"], 2, "stage 0 out of range"),  # before the weights load
    (["{tree}", "--maps", "entropy"], 2, "unknown map 'entropy'"),
    (["{tree}", "--checkpoint-every", "0"], 2, "--checkpoint-every must be at least 1"),
    (["{tree}", "--batch-size", "0"], 2, "--batch-size must be at least 1"),
    (["{tree}", "--figure-stage", "2", "--stages", "3"], 2, "--figure-stage 2 is not among"),
])
def test_bad_input_gives_one_line_and_an_exit_code(tree: Path, tmp_path: Path, args: list[str], code: int,
                                                   message: str) -> None:
    argv = [a.format(tree=tree, missing=tmp_path / "nope") for a in args]
    r = CliRunner().invoke(app, ["stats", argv[0], *DEMO, *argv[1:], "--out", str(tmp_path / "o")])
    assert r.exit_code == code, r.output
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0] and "Traceback" not in r.output
