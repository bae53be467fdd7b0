"""Every output format parses back (json.loads, the csv module, markdown table rows) to the report's numbers."""

from __future__ import annotations

import csv
import io
import json

import pytest
from torch import nn

from cotviz.models.meta import build_meta_model
from cotviz.profile import (
    RENDERERS,
    ProfileReport,
    build_report,
    count_model,
    measure_latency,
    render_csv,
    render_json,
    render_markdown,
    render_reports,
    render_text,
)
from cotviz.profile.render import CSV_HEADER

TINY = {"layers": [1, 1, 1, 1], "num_classes": 10}


@pytest.fixture(scope="module")
def reports() -> list[ProfileReport]:
    a = build_report(count_model(build_meta_model("cotnext50_2x48d", **TINY), (1, 3, 64, 64)), model="tiny_cotnext",
                  depth=2)
    b = build_report(count_model(build_meta_model("se_cotnetd_50", **TINY), (2, 3, 64, 64)), model="tiny_se",
                  convention="official")
    b.measure = measure_latency(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()), size=16, warmup=0, repeats=3)
    return [a, b]


def _md_rows(text: str, first_header: str) -> list[list[str]]:
    """Body rows of the markdown table whose header starts with ``| first_header |``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header} |"))
    assert set(lines[start + 1].replace("|", "")) == {"-"}  # the separator row
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip().strip("|").split("|")])
    return rows


def _int(cell: str) -> int:
    return int(cell.replace(",", ""))


def test_json_single_and_many(reports: list[ProfileReport]) -> None:
    one = json.loads(render_json(reports[:1]))
    assert one["model"] == "tiny_cotnext" and one["macs"] == reports[0].macs and one["flops"] == 2 * one["macs"]
    assert one["size"] == 64 and one["batch"] == 1 and one["convention"] == "complete"
    assert sum(s["macs"] for s in one["stages"]) == one["macs"] and one["uncounted"] == []
    assert {o["type"] for o in one["operators"]} >= {"conv", "local aggregation", "normalisation"}
    many = json.loads(render_json(reports))
    assert [r["model"] for r in many] == ["tiny_cotnext", "tiny_se"]
    assert many[1]["measure"]["median_ms"] > 0 and many[1]["uncounted"]


def test_csv_parses_and_matches(reports: list[ProfileReport]) -> None:
    rows = list(csv.DictReader(io.StringIO(render_csv(reports))))
    assert tuple(rows[0]) == CSV_HEADER
    for r in reports:
        mine = [row for row in rows if row["model"] == r.model]
        total = {row["quantity"]: int(row["value"]) for row in mine if row["section"] == "total"}
        assert total == {"params": r.params, "buffers": r.buffers, "macs": r.macs, "flops": r.flops}
        stage_macs = [int(row["value"]) for row in mine if row["section"] == "stage" and row["quantity"] == "macs"]
        assert sum(stage_macs) == r.macs
        assert all(row["unit"] for row in mine) and {row["convention"] for row in mine} == {r.convention}
    latency = [row for row in rows if row["section"] == "measure" and row["name"] == "median"]
    assert len(latency) == 1 and latency[0]["unit"] == "ms" and float(latency[0]["value"]) > 0


def test_markdown_single_report_tables(reports: list[ProfileReport]) -> None:
    r = reports[0]
    text = render_markdown([r])
    summary = dict((k, v) for k, v in _md_rows(text, "quantity"))
    assert _int(summary["MACs"].split(" (")[0]) == r.macs
    assert _int(summary["FLOPs (= 2 x MACs)"].split(" (")[0]) == r.flops
    stages = _md_rows(text, "stage")
    assert [s[0] for s in stages] == [s.name for s in r.stages]
    assert sum(_int(s[3]) for s in stages) == r.macs
    ops = _md_rows(text, "operator")
    assert sum(_int(o[1]) for o in ops) == r.macs
    modules = _md_rows(text, "module")
    assert sum(_int(m[3]) for m in modules) == r.macs  # depth 2
    assert _md_rows(text, "op")[0][0] == "(none)"  # nothing uncounted under the complete convention


def test_markdown_overview_of_many(reports: list[ProfileReport]) -> None:
    rows = _md_rows(render_markdown(reports), "model")
    assert [row[0] for row in rows] == ["tiny_cotnext", "tiny_se"]
    assert [_int(row[5]) for row in rows] == [r.macs for r in reports]
    assert rows[0][-1] == "-" and float(rows[1][-1]) > 0  # latency column: only the measured model


def test_text_table(reports: list[ProfileReport]) -> None:
    text = render_text(reports[1:])
    assert "tiny_se" in text and f"{reports[1].macs:,}" in text and "FLOPs (= 2 x MACs)" in text
    assert "Uncounted" in text and "GroupNorm" in text and "latency" in text
    overview = render_text(reports)
    assert "tiny_cotnext" in overview and "tiny_se" in overview and "GMACs" in overview
    assert f"{reports[0].macs:,}" in overview and "Stages" not in overview
    # terminal tables format the exact counts compactly at the edge (G = 1e9, M = 1e6, exact below a million)
    stage = reports[1].stages[1]
    assert f"{stage.macs / 1e6:.2f} M" in text if stage.macs >= 10**6 else f"{stage.macs:,}" in text


def test_registry_of_formats() -> None:
    assert tuple(RENDERERS) == ("table", "json", "csv", "markdown")
    from cotviz.errors import InvalidArgumentError

    with pytest.raises(InvalidArgumentError, match="unknown format 'xml'"):
        render_reports([], "xml")


def test_measure_is_kept_once(reports: list[ProfileReport]) -> None:
    """The measurement lives on the report as a MeasureResult; every format reads it from there."""
    r = reports[1]
    assert r.measure is not None and r.to_dict()["measure"] == r.measure.to_dict()
    assert json.loads(render_reports(reports[1:], "JSON"))["measure"]["median_ms"] == r.measure.median_ms
    rows = list(csv.DictReader(io.StringIO(render_csv(reports[1:]))))
    assert float(next(x["value"] for x in rows if x["name"] == "median")) == r.measure.median_ms
