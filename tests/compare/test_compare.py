"""``cotviz.compare``: rows counted exactly, published figures only where the paper has them, every format."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from cotviz.cli.app import app
from cotviz.cli.compare import split_specs
from cotviz.compare import PAPER_TABLES, compare, published, resolve_specs, table_specs
from cotviz.compare.render import render_csv, render_json, render_markdown
from cotviz.errors import InvalidArgumentError
from cotviz.models.meta import model_figures


@pytest.fixture(scope="module")
def table7() -> Any:
    return compare(paper="table7", size=64)


def test_every_row_is_the_skeleton_with_that_operator(table7: Any) -> None:
    rows = {r.spec: r for r in table7.rows}
    assert list(rows) == ["conv", "cot@4", "cot@3-4", "cot@2-4", "cot"]
    assert rows["cot"].params == model_figures("cotnet50").params  # the 3x3 slot is all that changes
    assert rows["conv"].params == model_figures("resnet50").params
    # more CoT stages, fewer parameters and MACs (the CoT layer is lighter than a 3x3 conv)
    params = [rows[s].params for s in rows]
    macs = [rows[s].complete.macs for s in rows]
    assert params == sorted(params, reverse=True) and macs == sorted(macs, reverse=True)
    assert rows["cot"].has_attention and not rows["conv"].has_attention


def test_official_convention_reproduces_the_official_counter(reference_dir: Path) -> None:
    ref = json.loads((reference_dir / "flops_reference.json").read_text())["totals"]["cotnet50"]["224"]
    (row,) = compare(["cot"]).rows
    assert row.official.macs == ref["macs"] and row.params == ref["params_counted"]


def test_published_figures_only_where_the_paper_has_them(table7: Any) -> None:
    rows = {r.spec: r for r in table7.rows}
    assert rows["cot@4"].paper.top1 == 78.5 and rows["cot@4"].paper.throughput == 491.0
    assert rows["conv"].paper.throughput == 508.0
    assert published("sa") is None and published("cot:kernel=7") is None
    assert published("cot", "table6").label == "3x3" and published("cot").throughput == 331.0
    assert [r.top1 for r in PAPER_TABLES["table5"]] == [77.3, 77.1, 78.5, 78.7, 78.9, 79.2]
    assert [r.top1 for r in PAPER_TABLES["table6"]] == [78.6, 79.2, 79.3]
    assert table_specs("table6") == ["cot:key_kernel=1", "cot", "cot:kernel=5"]


@pytest.mark.parametrize(("values", "expected"), [
    (["cot,sa,conv"], ["cot", "sa", "conv"]),
    (["cot:kernel=5,key_kernel=3,sa"], ["cot:kernel=5,key_kernel=3", "sa"]),
    (["cot@4", "cot@3-4,cot"], ["cot@4", "cot@3-4", "cot"]),
    ([" cot , ,conv"], ["cot", "conv"]),
])
def test_split_specs(values: list[str], expected: list[str]) -> None:
    assert split_specs(values) == expected


@pytest.mark.parametrize(("specs", "table", "message"), [
    (["nope"], None, "nope"),
    (["cot:window=3"], None, "window"),
    (["cot@5"], None, "5"),
    ([], None, "give the operators"),
    ([], "table9", "unknown paper table 'table9'"),
])
def test_bad_requests_are_one_clear_line(specs: list[str], table: str | None, message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        resolve_specs(specs, table)


def test_unknown_skeleton() -> None:
    with pytest.raises(InvalidArgumentError, match="choose one of cotnet50"):
        compare(["cot"], skeleton="se_cotnetd_50")


def test_measure_interleaves_every_row_and_gives_ratios_to_the_first() -> None:
    c = compare(["conv", "cot"], size=64, measure=True, batches=(1, 2), repeats=3, warmup=0, threads=1)
    for r in c.rows:
        assert [t.batch for t in r.timings] == [1, 2]
        assert all(len(t.times_ms) == 3 and t.q1_ms <= t.median_ms <= t.q3_ms for t in r.timings)
    assert [t.ratio for t in c.rows[0].timings] == [1.0, 1.0]
    assert c.measure is not None and c.measure["threads"] == 1


def test_renderers(table7: Any) -> None:
    data = json.loads(render_json(table7))
    assert data["paper_table"] == "table7" and [r["spec"] for r in data["rows"]][-1] == "cot"
    assert data["rows"][0]["macs"]["complete"] == table7.rows[0].complete.macs
    assert "aten.native_group_norm" in data["rows"][-1]["official_skips"]
    md = render_markdown(table7)
    assert md.splitlines()[0].startswith("| operator |") and "| `cot@4` |" in md and "491" in md
    lines = render_csv(table7).splitlines()
    assert lines[0] == "operator,quantity,value,unit" and "cot@4,paper_top1,78.5,%" in lines


def test_cli_formats_and_errors(tmp_path: Path) -> None:
    runner = CliRunner()
    r = runner.invoke(app, ["compare", "--blocks", "cot,conv", "--size", "64", "--format", "json"])
    assert r.exit_code == 0, r.output
    assert [row["spec"] for row in json.loads(r.stdout)["rows"]] == ["cot", "conv"]
    out = tmp_path / "t.md"
    r = runner.invoke(app, ["compare", "--paper", "table6", "--size", "64", "--format", "markdown", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "`cot:key_kernel=1`" in out.read_text()
    r = runner.invoke(app, ["compare", "--blocks", "cot,bogus"])
    assert r.exit_code == 2 and r.stderr.strip().startswith("error:") and "bogus" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_cli_table_and_csv() -> None:
    runner = CliRunner()
    r = runner.invoke(app, ["compare", "--blocks", "cot,sa", "--size", "64"], env={"COLUMNS": "120"})
    assert r.exit_code == 0, r.output
    assert "cotviz compare · cotnet50 @ 64 px" in r.stdout and "│ sa " in r.stdout
    r = runner.invoke(app, ["compare", "--blocks", "sa", "--size", "64", "--format", "csv"])
    assert r.exit_code == 0 and "sa,macs_complete[local relation]," in r.stdout
