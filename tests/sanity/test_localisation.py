"""cotviz.sanity.localisation: masks carried into model-input pixels, metrics per stage and map, CLI and errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from cotviz.cli.app import app
from cotviz.data import ShapesDataset
from cotviz.errors import ImageError, InvalidArgumentError
from cotviz.explain import Explainer
from cotviz.models.untrained import load_model
from cotviz.sanity.localisation import _mask_in_input, localisation, masked_inputs, render_localisation


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("masked")
    ShapesDataset(2, seed=4, size=96).write_folder(out)
    return out


def test_inputs_pair_images_with_masks_and_refuse_a_missing_one(folder: Path, tmp_path: Path) -> None:
    pairs = masked_inputs([folder])
    assert [(p.name, m.name) for p, m in pairs] == [(p.name, p.stem + ".mask.png") for p in sorted(folder.glob(
        "*.png")) if not p.stem.endswith(".mask")]
    Image.new("RGB", (96, 96)).save(tmp_path / "lonely.png")
    with pytest.raises(ImageError, match="missing mask lonely.mask.png"):
        masked_inputs([tmp_path])


def test_mask_follows_the_crop_box(tmp_path: Path) -> None:
    """A 192 x 96 image, centre-cropped to 96 x 96 (crop_pct 1, shorter side already 96): crop box (48, 0, 144, 96),
    so the mask's left half (x < 96 in original pixels) covers model-input columns 0..47."""
    Image.new("RGB", (192, 96), (200, 50, 50)).save(tmp_path / "wide.png")
    mask = np.zeros((96, 192), np.uint8)
    mask[:, :96] = 255
    Image.fromarray(mask).save(tmp_path / "wide.mask.png")
    loaded = load_model("cotnet_demo")
    ex = Explainer(loaded, maps=["attention_energy"]).explain(tmp_path / "wide.png")
    inside = _mask_in_input(tmp_path / "wide.mask.png", ex)
    assert ex.crop_box == (48.0, 0.0, 144.0, 96.0) and inside.shape == (96, 96)
    assert inside[:, :48].all() and not inside[:, 48:].any()
    Image.fromarray(mask[:, :100]).save(tmp_path / "wide.mask.png")
    with pytest.raises(ImageError, match="must have the image's size"):
        _mask_in_input(tmp_path / "wide.mask.png", ex)


def test_metrics_per_network_stage_and_map(folder: Path) -> None:
    net = load_model("cotnet_demo")
    r = localisation({"a": net, "b": net}, [folder], stages=(2, 3), maps=["static_energy"])
    assert r.networks == ["a", "b"] and r.stages == [2, 3] and r.maps == ["static_energy", "gradcam"]
    assert r.values["a"] == r.values["b"]  # same network, same numbers
    assert 0 < r.area_share < 0.5 and r.images == 2
    for s in (2, 3):
        mass, point, auc = (r.values["a"][s]["static_energy"][k] for k in ("mass_ratio", "pointing", "auc"))
        assert mass[2] == point[2] == auc[2] == 2 and 0 <= auc[0] <= 1 and point[0] in (0, 0.5, 1)
    data = json.loads(render_localisation(r, "json"))
    assert len(data["values"]) == 2 * 2 * 2 * 3
    assert render_localisation(r, "csv").splitlines()[0] == "network,stage,map,metric,mean,std,images"
    assert render_localisation(r, "markdown").startswith("| stage | map | a mass | a point | a AUC |")
    with pytest.raises(InvalidArgumentError, match="a: "):
        localisation({"a": net}, [folder], stages=(7,))


def test_cli_localisation_errors(folder: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    Image.new("RGB", (96, 96)).save(tmp_path / "lonely.png")
    res = runner.invoke(app, ["sanity", str(tmp_path / "lonely.png"), "--localisation"])
    assert res.exit_code == 1 and "missing mask" in res.stderr
    res = runner.invoke(app, ["sanity", str(folder), "--localisation", "--map", "bogus"])
    assert res.exit_code == 2 and "bogus" in res.stderr
