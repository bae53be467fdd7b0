"""compute_stats on a tiny network and images made here: faithful numbers, bad files, classes, resume, layout."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from _stats_data import make_tree
from torch import nn

from cotviz.analysis.maps import MAPS, block_maps
from cotviz.capture import capture
from cotviz.errors import CheckpointError, InvalidArgumentError
from cotviz.explain import preprocess_config
from cotviz.explain.inputs import prepare
from cotviz.models import create_model
from cotviz.stats import compute_stats, list_dataset
from cotviz.stats.catalog import STAT_INFO
from cotviz.stats.checkpoint import checkpoint_path, load_checkpoint
from cotviz.stats.layout import block_layout, record_values

#: Tiny images: the tiny network at 64 px.
SMALL = {"size": 64}


@pytest.mark.parametrize("variant", ["cot", "coxt", "sa"])
def test_per_head_samples_equal_the_attention_commands_maps(net: nn.Module, variant: str) -> None:
    if variant == "coxt":  # 2 groups: heads numbered group-major
        net = create_model("cotnext50_2x48d", seed=0, layers=[1, 1, 1, 1], num_classes=10).eval()
    elif variant == "sa":  # local self-attention: the attention is already a softmax; no contexts
        net = create_model("cotnet50", seed=0, layers=[1, 1, 1, 1], base_width=16, num_classes=10,
                           spatial_layer="sa").eval()
    records = []
    with torch.inference_mode(), capture(net, stages=[1, 3], on_record=records.append):
        net(torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)))
    for rec in records:
        values = record_values(rec, block_layout(rec, list(STAT_INFO)).maps)
        for name in (n for n in MAPS if n in values):
            smp = values[name]
            torch.testing.assert_close(smp.all, block_maps(rec, [name])[name].reshape(2, -1), rtol=1e-5, atol=1e-6)
            assert smp.rows is not None and torch.equal(smp.rows[0], smp.all)
            for h in range(int(rec.total_heads or 0)):
                ref = block_maps(rec, [name], head=h)[name].reshape(2, -1)
                torch.testing.assert_close(smp.heads[h], ref, rtol=1e-5, atol=1e-6)
        a = rec.fusion_weights
        if a is None:
            assert variant == "sa" and set(values) == {"attention_energy", "attention_entropy", "center_weight",
                                                       "output_energy"}
            continue
        torch.testing.assert_close(values["fusion_dynamic_weight"].all, a[..., 0])
        frac = (a[..., 0] > a[..., 1]).float().mean(dim=1)
        torch.testing.assert_close(values["fusion_dynamic_fraction"].all[:, 0], frac)


def _reference(net: nn.Module, paths: list[Path], block: str, name: str) -> np.ndarray:
    """Every cell of every image's head-"all" map, computed one image at a time through the attention pipeline."""
    cfg = preprocess_config(net, **SMALL)
    cells = []
    for p in paths:
        x = prepare(p, cfg).tensor[None]
        with torch.inference_mode(), capture(net, stages=[int(block[5])]) as cap:
            net(x)
        cells.append(block_maps(cap[block], [name])[name].double().numpy().ravel())
    return np.concatenate(cells)


def test_numbers_bad_files_and_classes(net: nn.Module, tree: Path) -> None:
    res = compute_stats(net, list_dataset(tree, by_class=True), by_class=True, stages="1,3", batch_size=3,
                        workers=0, preprocess=SMALL, maps=["dynamic_share", "attention_entropy", "fusion_dynamic_fraction",
                                                       "fusion_dynamic_weight"])
    assert res.images == 8 and res.run["failed"] == 1
    assert res.failures[0]["input"].endswith("zz_bad.png") and "not an image" in res.failures[0]["error"]
    good = sorted(p for p in tree.rglob("*.png") if p.name != "zz_bad.png")
    for block in ("stage1.block1", "stage3.block1"):
        ref = _reference(net, good, block, "dynamic_share")
        (row,) = [r for r in res.select(map="dynamic_share", head=None) if r["block"] == block]
        assert row["count"] == ref.size and row["nonfinite"] == 0
        assert row["mean"] == pytest.approx(ref.mean(), rel=1e-6)
        assert row["std"] == pytest.approx(ref.std(), rel=1e-5)
        assert row["min"] == pytest.approx(ref.min(), rel=1e-6) and row["max"] == pytest.approx(ref.max(), rel=1e-6)
        assert abs(row["q50"] - np.median(ref)) <= 1 / 64  # one bin of [0, 1]
    heads = res.select(map="attention_entropy", stage=1)
    assert [r["head"] for r in heads] == [None, 0, 1]  # 16 channels at stage 1 of the tiny net: 2 heads
    assert all(r["max"] <= math.log(9) + 1e-6 for r in heads)
    per_class = [r for r in res.rows() if r["class"] is not None and r["map"] == "fusion_dynamic_fraction"
                 and r["block"] == "stage3.block1"]
    assert [(r["class"], r["count"]) for r in per_class] == [("cat", 4), ("dog", 4)]  # one sample per image
    whole = res.select(map="fusion_dynamic_fraction", head=None, stage=3)[0]
    pooled = sum(r["mean"] * r["count"] for r in per_class) / 8
    assert pooled == pytest.approx(whole["mean"], rel=1e-12)
    weights = res.select(map="fusion_dynamic_weight", stage=1)  # 16 channels, 2 heads of 8: per image and channel
    assert [r["count"] for r in weights] == [8 * 16, 8 * 8, 8 * 8]
    doc = json.loads(json.dumps(res.to_dict()))
    assert doc["schema_version"] == 1 and len(doc["series"]) == len(res.layout)


class Boom(RuntimeError):
    pass


def test_resume_after_an_injected_failure_gives_the_same_bits(net: nn.Module, tmp_path: Path) -> None:
    data = make_tree(tmp_path / "d", per_class=5)
    opts = dict(stages=[2, 4], batch_size=2, workers=0, maps=["attention_energy", "output_energy"], preprocess=SMALL)
    whole = compute_stats(net, data, **opts)  # type: ignore[arg-type]
    ckpts = tmp_path / "ckpts"
    seen = []

    def fail_at_third(p: object) -> None:
        seen.append(p)
        if len(seen) == 3:
            raise Boom("injected")

    with pytest.raises(Boom):
        compute_stats(net, data, checkpoint_dir=ckpts, checkpoint_every=4, progress=fail_at_third,
                      **opts)  # type: ignore[arg-type]
    ckpt = load_checkpoint(checkpoint_path(ckpts, 0, 1))
    assert ckpt.next_batch == 3 and not ckpt.complete  # saved at the failure, at a batch boundary
    resumed = compute_stats(net, data, checkpoint_dir=ckpts, checkpoint_every=4, resume=True,
                            **opts)  # type: ignore[arg-type]
    assert resumed.run["resumed"] and resumed.images == whole.images == 10
    assert resumed.accumulator.equal(whole.accumulator)
    assert resumed.failures == whole.failures and len(whole.failures) == 1
    with pytest.raises(CheckpointError, match="different run"):
        compute_stats(net, data, checkpoint_dir=ckpts, resume=True, **{**opts, "batch_size": 4})  # type: ignore[arg-type]


def test_requests_are_checked_before_the_run(net: nn.Module, tree: Path, tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentError, match="stage 5 out of range"):
        compute_stats(net, tree, stages="5", workers=0, preprocess=SMALL)
    with pytest.raises(InvalidArgumentError, match="unknown map"):
        compute_stats(net, tree, maps=["nope"], workers=0, preprocess=SMALL)
    with pytest.raises(InvalidArgumentError, match="out="):
        compute_stats(net, tree, resume=True, workers=0, preprocess=SMALL)
    with pytest.raises(InvalidArgumentError, match="training mode"):
        compute_stats(nn.Sequential(nn.Conv2d(3, 3, 1)), tree, workers=0)


def test_list_files_globs_and_class_folders(tree: Path, tmp_path: Path) -> None:
    lst = tmp_path / "files.txt"
    lst.write_text("# two images and a missing one\ndata/cat/1.png\n\ndata/cat/0.png\ndata/cat/missing.png\n")
    d = list_dataset(lst)
    assert [p.name for p in d.items] == ["0.png", "1.png"] and d.kind == "list" and len(d.problems) == 1
    g = list_dataset(str(tree / "*" / "*.png"), by_class=True)
    assert g.kind == "glob" and g.classes == ("cat", "dog") and len(g.items) == 9
    t = list_dataset(tree, by_class=True)
    assert t.kind == "tree" and t.labels == (0,) * 4 + (1,) * 5 and t.digest() == g.digest()
    with pytest.raises(InvalidArgumentError, match="class folder"):
        list_dataset(tree / "cat", by_class=True)
