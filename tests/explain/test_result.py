"""``Explanation``: its arrays, statistics and JSON (the documented schema, NaN as null), its figure (no pyplot
state) and its files (png/svg/pdf + npz + json, atomic, deterministic names); a model given by name (the
untrained demo network, with its warning) and a network whose weights overflow (``nonfinite``)."""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import cotviz
from cotviz.errors import InvalidArgumentError, OutputError
from cotviz.explain import SCHEMA_VERSION, Explanation, UntrainedModelWarning, explain
from cotviz.explain import result as result_module
from cotviz.io.outputs import OutputPaths, json_text

from .conftest import tiny_model

SIZE = {"size": 64}


@pytest.fixture(scope="module")
def named(images: dict[str, Path]) -> Explanation:
    """cotnet50 by name (the untrained demo network), stage 3 blocks 1-2, a point and Grad-CAM."""
    with pytest.warns(UntrainedModelWarning) as record:
        ex = explain("cotnet50", images["a"], stage=3, blocks=[1, 2], point=(100, 50), gradcam=True,
                            preprocess=SIZE)
    (warning,) = record
    assert str(warning.message) == (
        "no weights given: the maps show an UNTRAINED cotnet50: random weights (seed 0; zero_init_last_bn=False "
        "with every block's last BN weight set to 0.25; BatchNorm statistics calibrated on seeded noise)")
    return ex


def test_a_model_name_builds_the_untrained_demo_network_and_says_so(named: Explanation) -> None:
    meta = named.metadata
    assert meta is not None and meta.model_label == "cotnet50" and meta.weights_label == "random init (untrained)"
    assert meta.model["untrained"] is True and meta.model["zero_init_last_bn"] is False
    assert meta.model["residual_scale"] == 0.25 and meta.model["weights"] is None
    assert meta.model["batchnorm_calibration"]["images"] == 4 and meta.model["batchnorm_calibration"]["seed"] == 0
    assert "UNTRAINED" in meta.model["init"]
    (note,) = meta.notes
    assert note.startswith("Untrained network, random weights (seed 0;")
    assert named.prediction is not None and len(named.prediction.classes) == 5
    assert all(0 <= c < 1000 for c in named.prediction.classes)


def test_arrays_are_the_npz_contents(named: Explanation) -> None:
    arrays = named.arrays()
    maps = ["attention_entropy", "static_energy", "dynamic_energy", "dynamic_share"]
    expected: dict[str, tuple[int, ...]] = {"input": (64, 64, 3)}
    expected |= {f"stage3.block{b}/{m}": (4, 4) for b in (1, 2) for m in maps}  # stride 16 at 64 px
    expected |= {f"stage3.block{b}/kernels": (32, 3, 3) for b in (1, 2)}  # 256 channels / 8 heads
    expected |= {"stage3/rollout": (8, 8), "stage3/gradcam": (4, 4), "stage3/gradcam_upsampled": (64, 64)}
    assert {k: v.shape for k, v in arrays.items()} == expected
    assert list(arrays) == list(expected)  # input, maps by block, kernels, rollout, Grad-CAM
    assert arrays["input"] is named.image and arrays["stage3/rollout"] is named.rollout.values  # type: ignore[union-attr]
    assert arrays["stage3.block2/static_energy"] is named.maps["stage3.block2"]["static_energy"]


def test_statistics_are_min_max_mean_of_each_map(named: Explanation) -> None:
    stats = named.statistics()
    assert list(stats) == [f"stage3.block{b}/{m}" for b in (1, 2) for m in named.maps["stage3.block1"]]
    for key, s in stats.items():
        block, name = key.split("/")
        m = named.maps[block][name].astype(np.float64)
        assert s == pytest.approx({"min": m.min(), "max": m.max(), "mean": m.mean()}, rel=1e-12)


def _schema_rows() -> list[tuple[list[str], list[str]]]:
    """The rows of the schema table in cotviz/explain/result.py's docstring: (top-level keys, documented names).

    A row starts at the left margin (``key``, two or more spaces, description); continuation lines are indented.
    """
    lines = (result_module.__doc__ or "").splitlines()
    rules = [i for i, ln in enumerate(lines) if ln.startswith("====")]
    assert len(rules) == 2, "the schema is one reST simple table without a header"
    rows: list[tuple[list[str], list[str]]] = []
    for line in lines[rules[0] + 1:rules[1]]:
        if not line.startswith(" "):
            left, right = re.split(r"\s{2,}", line, maxsplit=1)
            rows.append((re.findall(r"``(\w+)``", left), []))
            line = right
        rows[-1][1].extend(re.findall(r"``([a-z_0-9]+)``", line))
    return rows


def _keys_and_values(obj: Any) -> set[str]:
    if isinstance(obj, dict):
        return set(obj) | {k for v in obj.values() for k in _keys_and_values(v)}
    if isinstance(obj, (list, tuple)):
        return {k for v in obj for k in _keys_and_values(v)}
    return {obj} if isinstance(obj, str) else set()


def test_to_json_has_every_field_of_the_documented_schema_and_nothing_else(named: Explanation,
                                                                          tmp_path: Path) -> None:
    rows = _schema_rows()
    documented = [k for keys, _ in rows for k in keys]
    assert len(rows) == 19 and documented[:3] == ["schema_version", "cotviz_version", "command"]
    data = named.to_json()
    # what save() writes (the file equals this: test_save_writes_...), without drawing the figure
    saved = json.loads(json_text(named.to_json(outputs=OutputPaths(tmp_path, named.default_base(), "svg"))))
    mentioned = set(documented) | {n for _, names in rows for n in names}  # ``head`` is in the stage/blocks row
    assert set(documented) - {"outputs"} <= set(data) <= mentioned  # outputs: only in the files save() writes
    assert set(documented) <= set(saved) <= mentioned
    # the checkpoint's fields appear with weights only (checked in tests/models/test_untrained.py)
    checkpoint = {"path", "sha256", "source", "used_ema"}
    for keys, names in rows:
        found = _keys_and_values([saved[k] for k in keys]) | set(saved) | (checkpoint if keys == ["model"] else set())
        assert set(names) <= found, (keys, set(names) - found)
    assert data["schema_version"] == SCHEMA_VERSION == 1 and data["command"] == "attention"
    assert data["cotviz_version"] == cotviz.__version__


def test_to_json_values(named: Explanation) -> None:
    data = json.loads(json_text(named.to_json()))
    assert data["stage"] == 3 and data["blocks"] == ["stage3.block1", "stage3.block2"] and data["head"] is None
    assert data["scale"] == "shared" and named.to_json(scale="per-panel")["scale"] == "per-panel"
    assert list(data["maps"]) == list(named.maps["stage3.block1"])
    assert data["maps"]["static_energy"]["taps"] == ["static_context"]
    assert data["crop_box"] == pytest.approx(list(named.crop_box))  # type: ignore[arg-type]
    assert data["statistics"] == named.statistics()  # floats survive JSON exactly
    assert data["input"]["original_size"] == [150, 100] and data["input"]["format"] == "PNG"
    assert data["model"] == json.loads(json_text(named.metadata.model))  # type: ignore[union-attr]
    top = named.prediction
    assert top is not None and data["prediction"]["class"] == top.top == data["gradcam"]["target"]
    assert [t["class"] for t in data["prediction"]["top5"]] == list(top.classes)
    assert data["prediction"]["probability"] == pytest.approx(top.probabilities[0])
    point = data["point"]
    u, v = named.point.uv  # type: ignore[union-attr]
    assert point["xy_original"] == [100, 50] and point["uv_model_input"] == [u, v]
    cell = [int(v // 16), int(u // 16)]
    assert point["cells"] == {"stage3.block1": cell, "stage3.block2": cell}
    assert point["rollout"]["from_block"] == "stage3.block2" and point["rollout"]["stage_input_grid"] == [8, 8]
    assert point["rollout"]["mass_kept"] == pytest.approx(float(named.rollout.values.sum()))  # type: ignore[union-attr]
    assert data["fusion_weights"]["stage3.block1"]["mean_dynamic_weight"] == pytest.approx(
        named.fusion["stage3.block1"].mean_dynamic_weight)
    assert data["geometry"]["blocks"]["stage3.block1"]["pooled_before"] is True
    assert data["nonfinite"] == []


@pytest.fixture(scope="module")
def small(tiny: nn.Module, images: dict[str, Path]) -> Explanation:
    """A figure with few panels: the tiny network, stage 4, one map, a point."""
    return explain(tiny, images["c"], stage=4, maps=["static_energy"], point=(70, 60), preprocess=SIZE)


def test_figure_is_a_matplotlib_figure_outside_pyplot(small: Explanation, monkeypatch: pytest.MonkeyPatch) -> None:
    from matplotlib._pylab_helpers import Gcf
    from matplotlib.figure import Figure

    if "matplotlib.pyplot" not in sys.modules:  # (captum, for Grad-CAM, imports it)
        monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)  # type: ignore[arg-type]  # importing it fails
    managers = Gcf.get_all_fig_managers()
    fig = small.figure(dpi=50)
    assert isinstance(fig, Figure) and fig.canvas.manager is None  # not registered with pyplot
    assert Gcf.get_all_fig_managers() == managers
    assert fig.dpi == 50 and len(fig.axes) == 1  # every panel and colour bar on one canvas Axes
    gids = {a.get_gid() for ax in fig.axes for a in ax.get_images()}
    assert {"input", "map/static_energy/stage4.block1", "rollout", "kernels/stage4.block1", "colorbar/static_energy"} <= gids


def test_save_writes_figure_npz_and_json_atomically_with_deterministic_names(small: Explanation,
                                                                             tmp_path: Path) -> None:
    out = tmp_path / "new" / "dir"  # created
    first = small.save(out, "png", dpi=40)
    assert first.base == "c_cotnet50_stage4" == small.default_base()
    assert sorted(p.name for p in out.iterdir()) == ["c_cotnet50_stage4.json", "c_cotnet50_stage4.npz",
                                                     "c_cotnet50_stage4.png"]  # no temporary file left
    assert first.figure.read_bytes().startswith(b"\x89PNG")
    with np.load(first.npz) as npz:
        arrays = small.arrays()
        assert npz.files == list(arrays)
        for key, value in arrays.items():
            np.testing.assert_array_equal(npz[key], value)
    assert first.json.read_text() == json_text(small.to_json(outputs=first))
    meta = json.loads(first.json.read_text())
    assert meta["outputs"] == {"figure": str(first.figure), "npz": str(first.npz)}
    for fmt, magic in (("svg", b"<?xml"), ("pdf", b"%PDF")):
        paths = small.save(out, fmt, scale="per-panel", dpi=40, base="custom")
        assert paths.figure == out / f"custom.{fmt}" and paths.figure.read_bytes().startswith(magic)
        assert json.loads(paths.json.read_text())["scale"] == "per-panel"
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []
    with pytest.raises(InvalidArgumentError, match="unknown figure format .gif.; choose one of png, svg, pdf"):
        small.save(out, "gif")
    with pytest.raises(OutputError, match="is an existing file"):
        small.save(first.npz, "png")


def test_an_image_without_a_file_is_saved_as_image(tiny: nn.Module, tmp_path: Path) -> None:
    ex = explain(tiny, torch.zeros(3, 64, 64), stage=4, maps=["static_energy"])
    assert ex.default_base() == "image_cotnet50_stage4"
    assert Explanation("x.png", error="broken").ok is False
    with pytest.raises(ValueError, match="x.png was not explained: broken"):
        Explanation("x.png", error="broken").save(tmp_path)


def test_nonfinite_values_are_reported_and_written_as_null(images: dict[str, Path]) -> None:
    """A negative BN variance in stage 2 (sqrt < 0 = NaN) turns the dynamic context and everything after it NaN."""
    model = tiny_model()
    bn = model.get_submodule("layer2.0.conv2.bn")
    assert isinstance(bn, nn.BatchNorm2d) and bn.running_var is not None
    with torch.no_grad():
        bn.running_var[0] = -1.0
    maps = ["static_energy", "dynamic_energy", "dynamic_share", "attention_entropy"]
    ex = explain(model, images["c"], stage=2, maps=maps, preprocess=SIZE)
    assert ex.ok and {"stage2.block1/dynamic_energy", "prediction"} <= set(ex.nonfinite)
    assert "stage2.block1/static_energy" not in ex.nonfinite and "stage2.block1/attention_entropy" not in ex.nonfinite
    assert np.isfinite(ex.maps["stage2.block1"]["static_energy"]).all()
    assert np.isnan(ex.maps["stage2.block1"]["dynamic_energy"]).all()
    stats = ex.statistics()["stage2.block1/dynamic_energy"]
    assert all(math.isnan(v) for v in stats.values())
    text = json_text(ex.to_json())
    assert "NaN" not in text and "Infinity" not in text
    data = json.loads(text)
    assert data["statistics"]["stage2.block1/dynamic_energy"] == {"min": None, "max": None, "mean": None}
    assert data["nonfinite"] == list(ex.nonfinite)
    assert data["prediction"]["logit"] is None and data["fusion_weights"]["stage2.block1"]["mean_dynamic_weight"] is None
    assert ex.metadata is not None and ex.metadata.notes == ()
