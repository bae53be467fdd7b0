"""``cotviz profile`` through ``typer.testing.CliRunner``: parsing, exit codes, messages, one end-to-end run per
feature. The counting, reports, renderers and bounds are tested as a library in ``tests/profile``."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from cotviz import resources
from cotviz.cli.app import app
from cotviz.profile import estimate_forward_memory

WIDE = {"COLUMNS": "200"}


def _ok(result: Any) -> None:
    assert result.exit_code == 0, result.output


def _one_line_error(result: Any, code: int, *needles: str) -> None:
    assert result.exit_code == code, result.output
    err = result.stderr
    assert err.startswith("error: ") and err.count("\n") == 1, err
    for needle in needles:
        assert needle in err


def test_json_official_reproduces_the_table(runner: CliRunner, reference_dir: Path) -> None:
    ref = json.loads((reference_dir / "flops_reference.json").read_text())["totals"]["cotnet50"]["224"]
    result = runner.invoke(app, ["profile", "cotnet_50", "--convention", "official", "--format", "json"])
    _ok(result)
    data = json.loads(result.stdout)
    assert (data["model"], data["size"], data["batch"], data["convention"]) == ("cotnet50", 224, 1, "official")
    assert (data["macs"], data["params"]) == (ref["macs"], ref["params_counted"]) and "measure" not in data


def test_csv_and_markdown(runner: CliRunner) -> None:
    result = runner.invoke(app, ["profile", "cotnext50", "--format", "CSV", "--batch", "2", "--size", "64"])
    _ok(result)
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    total = {r["quantity"]: int(r["value"]) for r in rows if r["section"] == "total"}
    assert {r["batch"] for r in rows} == {"2"} and {r["size"] for r in rows} == {"64"}
    md = runner.invoke(app, ["profile", "cotnext50", "--format", "markdown", "--batch", "2", "--size", "64"])
    _ok(md)
    macs_row = next(line for line in md.stdout.splitlines() if line.startswith("| MACs |"))
    assert int(macs_row.split("|")[2].split("(")[0].replace(",", "")) == total["macs"]


def test_table_with_depth(runner: CliRunner) -> None:
    result = runner.invoke(app, ["profile", "se_cotnetd_50", "--depth", "2", "--size", "64"], env=WIDE)
    _ok(result)
    assert "Modules (depth 2)" in result.stdout and "layer3.0" in result.stdout and "local aggregation" in result.stdout


def test_several_models_to_a_file(runner: CliRunner, tmp_path: Path) -> None:
    out = tmp_path / "profile.json"
    result = runner.invoke(app, ["profile", "cotnet50", "resnet50", "CoTNet-50", "--size", "64", "--format", "json",
                                 "--out", str(out)])
    _ok(result)
    assert result.stdout == "" and f"wrote {out}" in result.stderr
    assert [d["model"] for d in json.loads(out.read_text())] == ["cotnet50", "resnet50"]  # aliases de-duplicated
    # --all selects every registered model (profile_models(None), tested as a library); checked before any count
    _one_line_error(runner.invoke(app, ["profile", "--all", "--size", "16"]), 2, "--size must be at least 32")


def test_measure_block(runner: CliRunner) -> None:
    result = runner.invoke(app, ["profile", "resnet50", "--measure", "--size", "32", "--warmup", "0", "--repeats",
                                 "2", "--threads", "1", "--format", "json"])
    _ok(result)
    m = json.loads(result.stdout)["measure"]
    assert (m["device"], m["threads"], m["repeats"], len(m["times_ms"])) == ("cpu", 1, 2, 2)


def test_plot(runner: CliRunner, tmp_path: Path) -> None:
    png = tmp_path / "latency.png"
    result = runner.invoke(app, ["profile", "cotnet50", "resnet50", "--plot", str(png), "--size", "32", "--warmup",
                                 "0", "--repeats", "1", "--format", "csv"])
    _ok(result)
    assert png.read_bytes()[:4] == b"\x89PNG" and f"wrote {png}" in result.stderr
    assert "plot: no published top-1 for resnet50; not plotted" in result.stderr
    assert any(r["section"] == "measure" for r in csv.DictReader(io.StringIO(result.stdout)))


def test_memory_check_refuses_and_can_be_turned_off(runner: CliRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    _one_line_error(runner.invoke(app, ["profile", "resnet50", "--size", "100000", "--measure"]), 2,
                    "resnet50 at 100000 px, batch 1 needs about", "TiB", "is available", "--no-memory-check")
    needed = estimate_forward_memory("resnet50", 32)
    monkeypatch.setattr(resources, "available_memory", lambda: needed - 1)  # room for the weights, not the forward
    args = ["profile", "resnet50", "--measure", "--size", "32", "--warmup", "0", "--repeats", "1", "--format", "json"]
    _one_line_error(runner.invoke(app, args), 2, f"needs about {resources.format_bytes(needed)} of memory")
    _ok(result := runner.invoke(app, [*args, "--no-memory-check"]))
    assert json.loads(result.stdout)["measure"]["repeats"] == 1


@pytest.mark.parametrize("args, code, needles", [
    (["cotnet5"], 1, ["unknown model 'cotnet5'", "did you mean cotnet50"]),
    (["cotnet50", "--size", "0"], 2, ["--size must be at least 32"]),
    (["cotnet50", "--size", "16"], 2, ["--size must be at least 32"]),
    (["cotnet50", "--batch", "0"], 2, ["--batch"]),
    (["cotnet50", "--measure", "--device", "tpu"], 2, ["unknown device"]),
    (["cotnet50", "--measure", "--threads", "100000"], 2, ["--threads must be between 1 and", "may use"]),
    (["cotnet50", "--measure", "--repeats", "0"], 2, ["--repeats >= 1"]),
    (["cotnet50", "--depth", "0"], 2, ["--depth"]),
    ([], 2, ["--all"]),
])
def test_errors_are_one_line(runner: CliRunner, args: list[str], code: int, needles: list[str]) -> None:
    _one_line_error(runner.invoke(app, ["profile", *args]), code, *needles)


@pytest.mark.parametrize("option, value", [("--format", "xml"), ("--convention", "fvcore"), ("--dtype", "float8")])
def test_bad_choices_are_usage_errors(runner: CliRunner, option: str, value: str) -> None:
    result = runner.invoke(app, ["profile", "cotnet50", option, value])
    assert result.exit_code == 2 and f"'{value}' is not one of" in result.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_unavailable_is_one_line(runner: CliRunner) -> None:
    _one_line_error(runner.invoke(app, ["profile", "cotnet50", "--measure", "--device", "cuda"]), 2,
                    "CUDA is not available", "--device cpu")


def test_unwritable_outputs_fail_before_any_work(runner: CliRunner, tmp_path: Path) -> None:
    _one_line_error(runner.invoke(app, ["profile", "cotnet50", "--out", str(tmp_path / "no" / "x.json")]), 1,
                    "--out", "does not exist")
    _one_line_error(runner.invoke(app, ["profile", "cotnet50", "--plot", str(tmp_path / "x.gif")]), 1,
                    "--plot", "unsupported format")


def test_help_lists_choices_from_the_registries(runner: CliRunner) -> None:
    result = runner.invoke(app, ["profile", "--help"], env={"COLUMNS": "80"})
    _ok(result)
    text = result.stdout
    flat = " ".join(text.replace("│", " ").split())
    assert "table, json, csv, markdown" in flat and "float32, float16, bfloat16" in flat
    assert "<str>" not in text and "--no-memory-check" in text
    flags = [line for line in text.splitlines() if line.startswith(("│ --all", "│ --measure", "│ --channels-last"))]
    assert len(flags) == 3 and not any("<bool>" in line for line in flags)
