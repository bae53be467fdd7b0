"""The page as a file: self-contained, honest about float16, within its budget; the notebook display."""

from __future__ import annotations

import base64
import html
import json
import re
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cotviz.cli.app import app
from cotviz.errors import OutputError
from cotviz.explain import Explanation
from cotviz.explore import BUDGET_BYTES, encode_array

from .conftest import COFFEE


def page_json(text: str) -> dict:
    m = re.search(r'<script type="application/json" id="cvx-data">(.*?)</script>', text, re.S)
    assert m is not None
    return json.loads(m.group(1))


def decode(a: dict) -> np.ndarray:
    return np.frombuffer(base64.b64decode(a["data"]), dtype="<f2" if a["dtype"] == "float16" else "<f4") \
        .reshape(a["shape"])


def test_the_page_is_self_contained(explained: Explanation) -> None:
    text = explained.explore().html
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", text, re.I)  # nothing to fetch
    assert "<link" not in text and "@import" not in text and "fetch(" not in text and "XMLHttpRequest" not in text
    assert "default-src 'none'" in text  # the page's own policy forbids any request
    assert text.count("</script>") == 2  # the data block cannot close early


def test_embedded_numbers_are_the_explanations(explained: Explanation) -> None:
    data = page_json(explained.explore().html)
    cells = explained.cells
    assert cells is not None
    for block, a in cells.attention.items():
        assert data["arrays"][f"{block}/attention"]["dtype"] == "float32"
        np.testing.assert_array_equal(decode(data["arrays"][f"{block}/attention"]), a)
    for block, maps in explained.maps.items():
        for name, m in maps.items():
            np.testing.assert_array_equal(decode(data["arrays"][f"{block}/{name}"]), m)
            heads = data["arrays"][f"{block}/{name}/heads"]
            ref = cells.head_maps[block][name]
            np.testing.assert_array_equal(decode(heads), ref.astype(np.float16) if heads["dtype"] == "float16" else ref)
    assert data["maps"][0]["units"] and data["blocks"][0]["stride"] == 16


def test_float16_only_where_the_colour_scale_stays_honest() -> None:
    rng = np.random.default_rng(0)
    spread = rng.normal(size=(2, 6, 6)).astype(np.float32)
    assert encode_array(spread, allow_float16=True)["dtype"] == "float16"
    assert encode_array(spread)["dtype"] == "float32"  # never unless allowed
    narrow = (1000 + 0.01 * spread).astype(np.float32)  # float16's step at 1000 is 0.5: the scale would collapse
    assert encode_array(narrow, allow_float16=True)["dtype"] == "float32"
    flat_head = spread.copy()
    flat_head[1] = 2.0  # a constant head: no range to keep, keep the exact value
    assert encode_array(flat_head, allow_float16=True)["dtype"] == "float32"
    huge = spread * 1e6
    assert encode_array(huge, allow_float16=True)["dtype"] == "float32"
    with_nan = spread.copy()
    with_nan[0, 0, 0] = np.nan
    enc = encode_array(with_nan, allow_float16=True)
    assert enc["dtype"] == "float16" and np.isnan(decode(enc)[0, 0, 0])


def test_repr_html_shows_the_same_page_in_an_iframe(explained: Explanation) -> None:
    out = explained._repr_html_()
    assert out is not None and out.startswith('<iframe class="cotviz-explore" sandbox="allow-scripts"')
    srcdoc = re.search(r'srcdoc="([^"]*)"', out, re.S)
    assert srcdoc is not None and html.unescape(srcdoc.group(1)) == explained.explore().html


def test_save_refuses_a_directory(explained: Explanation, tmp_path: Path) -> None:
    with pytest.raises(OutputError, match="is a directory"):
        explained.explore().save(tmp_path)
    with pytest.raises(OutputError, match="does not exist"):
        explained.explore().save(tmp_path / "missing" / "page.html")


def test_cli_cotnet50_stage3_at_224_every_block_within_budget(tmp_path: Path) -> None:
    """The budget, measured on the real page: untrained cotnet50, stage 3 at 224, all 6 blocks, every map."""
    out = tmp_path / "page.html"
    r = CliRunner().invoke(app, ["explore", str(COFFEE), "--out", str(out), "--json"])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert summary["bytes"] == out.stat().st_size <= BUDGET_BYTES
    assert summary["blocks"] == [f"stage3.block{b}" for b in range(1, 7)] and len(summary["maps"]) == 7
    data = page_json(out.read_text(encoding="utf-8"))
    assert data["blocks"][0]["grid"] == [14, 14] and data["blocks"][0]["heads"] == 32
    assert sorted(summary["float32"] + summary["float16"]) == sorted(data["arrays"])


def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    r = CliRunner().invoke(app, ["explore", str(COFFEE), "--out", str(tmp_path)])
    assert r.exit_code == 1 and r.output.strip().splitlines()[-1].startswith("error: --out")
    r = CliRunner().invoke(app, ["explore", str(tmp_path / "nope.png"), "--out", str(tmp_path / "p.html")])
    assert r.exit_code == 1 and "error:" in r.output
    r = CliRunner().invoke(app, ["explore", str(COFFEE), "--model", "cotnet_demo", "--weights", "demo",
                                 "--stage", "5", "--out", str(tmp_path / "p.html")])
    assert r.exit_code == 2 and "error: stage 5 out of range" in r.output  # a usage error
    r = CliRunner().invoke(app, ["explore", str(COFFEE), "--model", "cotnet_demo", "--weights", "demo",
                                 "--head", "99", "--out", str(tmp_path / "p.html")])
    assert r.exit_code == 2 and "error: head 99 out of range" in r.output and not (tmp_path / "p.html").exists()


def test_cli_help_fits_80_columns() -> None:
    r = CliRunner().invoke(app, ["explore", "--help"], env={"COLUMNS": "80", "TERMINAL_WIDTH": "80"})
    assert r.exit_code == 0 and "<bool>" not in r.stdout
    assert max(len(line) for line in r.stdout.splitlines()) <= 80


def test_a_page_too_large_for_a_browser_is_refused_before_encoding(explained: Explanation,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from cotviz.errors import ResourceLimitError
    from cotviz.explore import page

    bound = page.check_page_size(explained.explorer_data())
    assert explained.explore().nbytes <= bound  # an upper bound of the real page
    monkeypatch.setattr(page, "MAX_PAGE_BYTES", bound - 1)
    with pytest.raises(ResourceLimitError, match="fewer blocks"):
        explained.explore()

