"""cotviz.sanity.sanity through the explain runner, its renderers and figure; `cotviz sanity` (formats, errors)."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cotviz import create_model
from cotviz.cli.app import app
from cotviz.data import ShapesDataset
from cotviz.errors import ImageError, InvalidArgumentError
from cotviz.models.untrained import make_untrained
from cotviz.sanity import RENDERERS, sanity, sanity_figure

MAPS = ["attention_energy", "static_energy"]


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return ShapesDataset(2, seed=5, size=96).write_folder(tmp_path_factory.mktemp("shapes"))


@pytest.fixture(scope="module")
def result(images: list[Path]):
    model = make_untrained(create_model("cotnet_demo", zero_init_last_bn=False))
    return sanity(model, [str(p) for p in images] + ["missing.png"], stage=3, maps=MAPS, batch_size=2)


def test_rows_and_what_cannot_change(result) -> None:
    assert result.units == ["fc", "layer4.0", "layer3.0", "layer2.0", "layer1.0", "stem"]
    assert result.maps == [*MAPS, "gradcam"] and result.images == 2
    assert result.errors and result.errors[0][0] == "missing.png"
    assert result.check_step == 3  # randomised down to layer3.0
    casc = [s for s in result.steps if s.mode == "cascading"]
    ind = [s for s in result.steps if s.mode == "independent"]
    assert [s.unit for s in casc] == [None, *result.units] == [s.unit for s in ind]
    for s in casc[:3]:  # nothing upstream of stage 3 randomised yet: the forward maps are exactly the trained ones
        assert all(s.mean[m] == pytest.approx(1.0) for m in MAPS)
    assert casc[1].mean["gradcam"] < 0.9  # a random classifier changes Grad-CAM at once
    for s in ind:  # independent: fc and layer4 never touch stage-3 forward maps
        if s.unit in ("fc", "layer4.0"):
            assert all(s.mean[m] == pytest.approx(1.0) for m in MAPS)
    assert casc[3].mean["attention_energy"] < 0.99
    assert all(ind[3].mean[m] == casc[3].mean[m] for m in MAPS)  # stage-3 maps: same upstream either way
    assert all(s.count[m] == 2 for s in casc for m in MAPS)


def test_flags_follow_the_threshold(images: list[Path]) -> None:
    model = make_untrained(create_model("cotnet_demo", zero_init_last_bn=False))
    r = sanity(model, images, maps=["attention_energy"], gradcam=False, modes=("cascading",), threshold=-1.0,
               examples=False)
    assert r.insensitive == ["attention_energy"] and not r.examples["cascading"]
    with pytest.raises(InvalidArgumentError, match="threshold"):
        sanity(model, images, threshold=2.0)
    with pytest.raises(ImageError, match="no image could be read"):
        sanity(model, ["nope.png"], maps=["attention_energy"], gradcam=False)


def test_renderers_and_figure(result) -> None:
    data = json.loads(RENDERERS["json"](result))
    assert data["check_unit"] == "layer3.0" and len(data["steps"]) == 14 and data["images"] == 2
    rows = list(csv.reader(io.StringIO(RENDERERS["csv"](result))))
    assert rows[0] == ["mode", "step", "unit", "map", "spearman_mean", "spearman_std", "images"]
    assert len(rows) == 1 + 14 * 3 and math.isclose(float(rows[1][4]), 1.0)
    md = RENDERERS["markdown"](result)
    assert md.startswith("| mode | step | randomised | attention_energy |") and "skipped missing.png" in md
    fig = sanity_figure(result)
    assert len(fig.axes) == 1 + 3 * 7  # the curve + a strip of 3 maps x 7 steps


def test_cli_formats_strict_and_errors(images: list[Path], tmp_path: Path) -> None:
    runner = CliRunner()
    base = ["sanity", str(images[0]), "--map", "attention_energy", "--no-gradcam", "--mode", "cascading"]
    res = runner.invoke(app, [*base, "--format", "json", "--threshold", "-1", "--strict",
                              "--figure", str(tmp_path / "s.png")])
    assert res.exit_code == 3, res.output
    assert json.loads(res.stdout)["insensitive"] == ["attention_energy"] and (tmp_path / "s.png").stat().st_size
    res = runner.invoke(app, [*base, "--format", "csv", "--out", str(tmp_path / "s.csv")])
    assert res.exit_code == 0 and (tmp_path / "s.csv").read_text().startswith("mode,step,unit,map")
    res = runner.invoke(app, ["sanity", "missing.png", "--no-gradcam", "--map", "attention_energy"])
    assert res.exit_code == 1 and "no image could be read" in res.stderr
    res = runner.invoke(app, ["sanity", str(images[0]), "--stage", "7"])
    assert res.exit_code != 0 and "stage" in res.stderr
    res = runner.invoke(app, ["sanity", str(images[0]), "--map", "nonsense"])
    assert res.exit_code == 2 and "nonsense" in res.stderr
    res = runner.invoke(app, ["sanity", str(images[0]), "--out", str(tmp_path / "no" / "x.json")])
    assert res.exit_code == 1 and "does not exist" in res.stderr
