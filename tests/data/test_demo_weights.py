"""The shipped demo weights: safe loading by name, recorded metadata, held-out accuracy recomputed."""

from __future__ import annotations

import hashlib

import pytest
import torch

from cotviz import create_model
from cotviz.data import ShapesDataset
from cotviz.data.train import evaluate, state_dict_sha256
from cotviz.errors import CheckpointError
from cotviz.models.checkpoint import read_checkpoint
from cotviz.models.demo import DEMO_WEIGHTS, demo_weights
from cotviz.resources import torch_threads

#: The accuracy each training run reported on ShapesDataset(2000, seed=1) (float16 weights); same data, recipe and
#: budget for all three (python -m cotviz.data.train --model NAME: 32000 images, batch 32, AdamW + OneCycle).
REPORTED = {"cotnet_demo": 0.987, "resnet_demo": 0.943, "sa_demo": 0.901}


@pytest.mark.parametrize("name", sorted(DEMO_WEIGHTS))
def test_checkpoint_metadata_and_size(name: str) -> None:
    path = demo_weights(name)
    assert path.stat().st_size <= 5 * 2**20
    sd, info = read_checkpoint(path)
    assert info.arch == name and info.metric == pytest.approx(REPORTED[name])
    assert {t.dtype for t in sd.values() if t.is_floating_point()} == {torch.float16}
    raw = torch.load(path, weights_only=True)
    meta = raw["meta"]
    assert meta["command"].startswith("python -m cotviz.data.train --model " + name)
    assert meta["weights_sha256"] == state_dict_sha256(raw["state_dict"])
    assert meta["heldout_acc"] == pytest.approx(REPORTED[name]) and "seed=1" in meta["heldout"]
    assert hashlib.sha256(path.read_bytes()).hexdigest() == DEMO_WEIGHTS[name][1]


@pytest.mark.parametrize("name", sorted(DEMO_WEIGHTS))
def test_heldout_accuracy(name: str) -> None:
    """Recomputed on 300 images of a split no training run used (seed 2): a little below the reported figure
    (binomial std of 300 draws at 0.9: 1.7 points)."""
    model = create_model(name, weights="demo")
    with torch_threads(1):
        acc = evaluate(model, ShapesDataset(300, seed=2, size=model.pretrained_cfg.image_size))
    assert acc >= REPORTED[name] - 0.04, acc


def test_demo_weights_refusals(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(CheckpointError, match="exists only for the shipped demo models"):
        create_model("cotnet50", layers=[1, 1, 1, 1], base_width=16, weights="demo")
    import cotviz.models.demo as demo

    (tmp_path / "cotnet_demo.pth").write_bytes(b"tampered")
    monkeypatch.setattr(demo, "WEIGHTS_DIR", tmp_path)
    with pytest.raises(CheckpointError, match="were altered"):
        demo_weights("cotnet_demo")


def test_demo_spelling_through_the_runner_policy() -> None:
    """``--weights demo`` reaches finish_model as a Path: the shipped checkpoint, recorded in the provenance."""
    from pathlib import Path

    from cotviz.models.untrained import load_model

    loaded = load_model("cotnet_demo", Path("demo"))
    assert loaded.untrained is False and loaded.weights is not None
    assert loaded.weights.path == demo_weights("cotnet_demo")


@pytest.mark.parametrize("name", ["cotnet_demo", "resnet_demo", "sa_demo"])
def test_listed_accuracy_is_the_recorded_one(name: str) -> None:
    from cotviz.models.demo import DEMO_ACCURACY, demo_weights

    meta = torch.load(demo_weights(name), weights_only=True)["meta"]
    assert DEMO_ACCURACY[name] == round(100 * meta["heldout_acc"], 1)
