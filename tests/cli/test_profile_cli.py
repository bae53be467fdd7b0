"""``cotviz profile`` through ``typer.testing.CliRunner``: outputs parse back, errors are one line + exit code."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from cotviz.cli.app import app

WIDE = {"COLUMNS": "200"}


@pytest.fixture(scope="module")
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture(scope="module")
def cotnet50_official(reference_dir: Path) -> dict[str, int]:
    ref = json.loads((reference_dir / "flops_reference.json").read_text())
    return {"macs": ref["totals"]["cotnet50"]["224"]["macs"], "params": ref["totals"]["cotnet50"]["224"]["params_counted"]}


def _ok(result: object) -> None:
    assert result.exit_code == 0, result.output  # type: ignore[attr-defined]


def test_json_official_reproduces_the_table(runner: CliRunner, cotnet50_official: dict[str, int]) -> None:
    result = runner.invoke(app, ["profile", "cotnet_50", "--convention", "official", "--format", "json"])
    _ok(result)
    data = json.loads(result.stdout)
    assert (data["model"], data["size"], data["batch"], data["convention"]) == ("cotnet50", 224, 1, "official")
    assert data["macs"] == cotnet50_official["macs"] and data["params"] == cotnet50_official["params"]
    assert data["flops"] == 2 * data["macs"]
    assert [s["name"] for s in data["stages"]] == ["stem", "layer1", "layer2", "layer3", "layer4", "head"]
    assert data["operators"] and data["uncounted"] and "measure" not in data


def test_csv_and_markdown_default_convention(runner: CliRunner) -> None:
    result = runner.invoke(app, ["profile", "cotnext50", "--format", "csv", "--batch", "2", "--size", "160"])
    _ok(result)
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    total = {r["quantity"]: int(r["value"]) for r in rows if r["section"] == "total"}
    assert total["flops"] == 2 * total["macs"] and {r["batch"] for r in rows} == {"2"} and {r["size"] for r in rows} \
        == {"160"}
    md = runner.invoke(app, ["profile", "cotnext50", "--format", "markdown", "--batch", "2", "--size", "160"])
    _ok(md)
    macs_row = next(line for line in md.stdout.splitlines() if line.startswith("| MACs |"))
    assert int(macs_row.split("|")[2].split("(")[0].replace(",", "")) == total["macs"]
    assert "convention `complete`" in md.stdout and "FLOPs = 2 x MACs" in md.stdout


def test_table_with_depth_and_out_file(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(app, ["profile", "se_cotnetd_50", "--depth", "2"], env=WIDE)
    _ok(result)
    assert "Modules (depth 2)" in result.stdout and "layer3.0" in result.stdout and "local aggregation" in result.stdout
    out = tmp_path / "p.json"
    result = runner.invoke(app, ["profile", "se_cotnetd_50", "--format", "json", "--out", str(out)])
    _ok(result)
    assert result.stdout == "" and json.loads(out.read_text())["model"] == "se_cotnetd_50"


def test_several_models_overview(runner: CliRunner) -> None:
    result = runner.invoke(app, ["profile", "cotnet50", "se_cotnetd152", "cotnet50", "--size", "64", "--format",
                                 "json"])
    _ok(result)
    data = json.loads(result.stdout)
    assert [d["model"] for d in data] == ["cotnet50", "se_cotnetd_152"] and all(d["size"] == 64 for d in data)


def test_all_selects_every_registered_model() -> None:
    from cotviz.cli.profile import _names
    from cotviz.models import list_models

    assert _names(None, True) == list_models() and _names(["cotnext101"], False) == ["cotnext101_2x48d"]


def test_measure_block(runner: CliRunner) -> None:
    result = runner.invoke(app, ["profile", "resnet50", "--measure", "--size", "32", "--warmup", "0", "--repeats",
                                 "2", "--threads", "1", "--format", "json"])
    _ok(result)
    m = json.loads(result.stdout)["measure"]
    assert m["device"] == "cpu" and m["threads"] == 1 and m["repeats"] == 2 and len(m["times_ms"]) == 2
    assert m["min_ms"] <= m["median_ms"] <= m["max_ms"]


def test_plot(runner: CliRunner, tmp_path: Path) -> None:
    png = tmp_path / "latency.png"
    result = runner.invoke(app, ["profile", "cotnet50", "--plot", str(png), "--size", "32", "--warmup", "0",
                                 "--repeats", "1", "--format", "csv"])
    _ok(result)
    assert png.read_bytes()[:4] == b"\x89PNG" and f"wrote {png}" in result.stderr
    assert any(r["section"] == "measure" for r in csv.DictReader(io.StringIO(result.stdout)))


def _one_line_error(result: object, code: int, *needles: str) -> None:
    assert result.exit_code == code, result.output  # type: ignore[attr-defined]
    err = result.stderr  # type: ignore[attr-defined]
    assert err.startswith("error: ") and err.count("\n") == 1, err
    for needle in needles:
        assert needle in err


@pytest.mark.parametrize("args, code, needles", [
    (["cotnet5"], 1, ["unknown model 'cotnet5'", "did you mean cotnet50"]),
    (["cotnet50", "--size", "0"], 2, ["--size", "positive"]),
    (["cotnet50", "--size", "-32"], 2, ["--size", "positive"]),
    (["cotnet50", "--size", "16"], 2, ["smaller than the total stride 32"]),
    (["cotnet50", "--batch", "0"], 2, ["--batch"]),
    (["cotnet50", "--format", "xml"], 2, ["unknown format 'xml'", "json"]),
    (["cotnet50", "--convention", "fvcore"], 2, ["unknown convention"]),
    (["cotnet50", "--dtype", "float8"], 2, ["unknown dtype"]),
    (["cotnet50", "--measure", "--device", "tpu"], 2, ["unknown device"]),
    (["cotnet50", "--depth", "0"], 2, ["--depth"]),
    ([], 2, ["--all"]),
])
def test_errors_are_one_line(runner: CliRunner, args: list[str], code: int, needles: list[str]) -> None:
    _one_line_error(runner.invoke(app, ["profile", *args]), code, *needles)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_unavailable_is_one_line(runner: CliRunner) -> None:
    _one_line_error(runner.invoke(app, ["profile", "cotnet50", "--measure", "--device", "cuda"]), 2,
                    "CUDA is not available", "--device cpu")


def test_unwritable_outputs_fail_before_any_work(runner: CliRunner, tmp_path: Path) -> None:
    _one_line_error(runner.invoke(app, ["profile", "cotnet50", "--out", str(tmp_path / "no" / "x.json")]), 1,
                    "--out", "does not exist")
    _one_line_error(runner.invoke(app, ["profile", "cotnet50", "--plot", str(tmp_path / "x.gif")]), 1,
                    "--plot", "unsupported format")
