"""The one way a run gets its network (``cotviz.models.untrained``): the untrained demo policy (residual scale,
BatchNorm calibration on seeded noise), checkpoints, and the provenance that goes into every JSON."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from cotviz.errors import CheckpointError
from cotviz.models import create_model
from cotviz.models.resnet import Bottleneck
from cotviz.models.untrained import (
    CALIBRATION_BATCH,
    CALIBRATION_DATA,
    CALIBRATION_SIDE,
    RANDOM_INIT_SEED,
    RESIDUAL_SCALE,
    LoadedModel,
    calibrate_batchnorm,
    describe_model,
    finish_model,
    make_untrained,
    new_model,
    pretrained_cfg_of,
)

TINY: dict[str, Any] = dict(layers=[1, 1, 1, 1], base_width=16, num_classes=10)
STATS = ("running_mean", "running_var", "num_batches_tracked")


def tiny(**overrides: Any) -> nn.Module:
    """The tiny network as ``new_model(untrained=True)`` builds it: seed 0, live residual branches."""
    return create_model("cotnet50", seed=RANDOM_INIT_SEED, zero_init_last_bn=False, **{**TINY, **overrides})


def norms(model: nn.Module) -> list[tuple[str, nn.BatchNorm2d]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]


def bn(model: nn.Module, name: str) -> nn.BatchNorm2d:
    m = model.get_submodule(name)
    assert isinstance(m, nn.BatchNorm2d)
    return m


def test_calibration_sets_the_running_stats_to_the_batch_stats_of_its_noise() -> None:
    model = tiny()
    seen: dict[str, torch.Tensor] = {}
    handles = [m.register_forward_pre_hook(lambda mod, args, n=n: seen.setdefault(n, args[0].detach().clone()))
               for n, m in norms(model)]
    try:
        calibrate_batchnorm(model, mean_std=((0.5, 0.5, 0.5), (0.25, 0.25, 0.25)))
    finally:
        for h in handles:
            h.remove()
    assert set(seen) == {n for n, _ in norms(model)}
    assert seen["bn1"].shape == (CALIBRATION_BATCH, 64, CALIBRATION_SIDE // 2, CALIBRATION_SIDE // 2)  # stem: stride 2
    for name, bn in norms(model):
        x = seen[name].double()  # (B, C, H, W): what this BN saw
        assert bn.running_mean is not None and bn.running_var is not None
        torch.testing.assert_close(bn.running_mean.double(), x.mean(dim=(0, 2, 3)), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(bn.running_var.double(), x.var(dim=(0, 2, 3), unbiased=True), rtol=1e-4, atol=1e-5)
        assert bn.num_batches_tracked is not None and int(bn.num_batches_tracked) == 1  # one batch, from reset


@pytest.mark.parametrize("training", [False, True])
def test_calibration_changes_only_the_statistics_and_restores_flags_and_momentum(training: bool) -> None:
    model = tiny()
    model.train(training)
    bn(model, "bn1").momentum = 0.3
    before = {k: v.clone() for k, v in model.state_dict().items()}
    calibrate_batchnorm(model, mean_std=((0.5, 0.5, 0.5), (0.25, 0.25, 0.25)))
    assert model.training is training and all(m.training is training for m in model.modules())
    assert bn(model, "bn1").momentum == 0.3 and all(m.momentum == 0.1 for n, m in norms(model) if n != "bn1")
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.endswith(STATS) for k in changed)  # parameters untouched


def test_calibration_depends_on_the_seed_only() -> None:
    a, b, c = tiny(), tiny(), tiny()
    cfg = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    calibrate_batchnorm(a, mean_std=cfg)
    calibrate_batchnorm(b, mean_std=cfg)
    calibrate_batchnorm(c, mean_std=cfg, seed=1)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["bn1.running_mean"], sc["bn1.running_mean"])


def test_make_untrained_scales_the_residual_branches_and_is_deterministic() -> None:
    a = tiny()
    a.train()
    assert make_untrained(a) is a and not a.training
    blocks = [m for m in a.modules() if isinstance(m, Bottleneck)]
    assert len(blocks) == 4
    for blk in blocks:
        w = bn(blk, "bn3").weight
        assert torch.equal(w, torch.full_like(w, RESIDUAL_SCALE))
    # calibrated: not the init's identity statistics
    var = bn(a, "bn1").running_var
    assert var is not None and not torch.equal(var, torch.ones_like(var))
    b = make_untrained(tiny())
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)  # same seed, same network


def test_new_then_finish_model_is_the_untrained_demo_network() -> None:
    """The one full-size build of this module: new_model (live branches, bn3 = 1, seeded) -> finish_model without
    weights (bn3 = RESIDUAL_SCALE, calibrated) -> the provenance every JSON carries."""
    net = new_model("cotnet50", untrained=True, num_classes=10)
    assert net.num_classes == 10 and not net.training
    bottlenecks = [blk for blk in net.modules() if isinstance(blk, Bottleneck)]
    assert len(bottlenecks) == 16 and all(bool((bn(blk, "bn3").weight == 1).all()) for blk in bottlenecks)
    conv1 = net.state_dict()["conv1.weight"].clone()
    loaded = finish_model(net, "cotnet50", None)
    assert isinstance(loaded, LoadedModel) and loaded.model is net and loaded.name == "cotnet50"
    assert loaded.untrained is True and loaded.weights is None and loaded.weights_label == "random init (untrained)"
    assert not net.training and "UNTRAINED" in loaded.init
    assert all(bool((bn(blk, "bn3").weight == RESIDUAL_SCALE).all()) for blk in bottlenecks)
    assert torch.equal(net.state_dict()["conv1.weight"], conv1)  # only the BN weights and statistics change
    assert loaded.provenance() == {
        "name": "cotnet50", "init": loaded.init, "untrained": True, "zero_init_last_bn": False,
        "residual_scale": RESIDUAL_SCALE,
        "batchnorm_calibration": {"images": CALIBRATION_BATCH, "side": CALIBRATION_SIDE, "seed": RANDOM_INIT_SEED,
                                  "data": CALIBRATION_DATA},
        "weights": None}


def test_finish_model_with_a_checkpoint(tmp_path: Path) -> None:
    trained = make_untrained(tiny())  # stands in for trained weights: anything but the seeded init
    path = tmp_path / "tiny.pt"
    torch.save(trained.state_dict(), path)
    model = tiny()
    model.train()
    loaded = finish_model(model, "cotnet50", path)
    assert loaded.model is model and not model.training and loaded.untrained is False
    sd, ref = model.state_dict(), trained.state_dict()
    assert all(torch.equal(sd[k], ref[k]) for k in ref)
    assert loaded.weights is not None and loaded.weights_label == "tiny.pt"
    assert loaded.init == "checkpoint tiny.pt (bare)"
    assert loaded.provenance() == {
        "name": "cotnet50", "init": "checkpoint tiny.pt (bare)", "untrained": False, "zero_init_last_bn": None,
        "residual_scale": None, "batchnorm_calibration": None,
        "weights": {"path": str(path), "sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "source": "bare",
                    "used_ema": False}}
    with pytest.raises(CheckpointError):
        finish_model(tiny(num_classes=5), "cotnet50", path)  # another class count: refused
    with pytest.raises(CheckpointError):
        finish_model(tiny(), "cotnet50", tmp_path / "missing.pt")


def test_a_network_the_caller_built_is_described_not_changed() -> None:
    model = tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loaded = describe_model(model)
    assert loaded.model is model and loaded.name == "cotnet50" and loaded.untrained is None
    assert loaded.weights is None and loaded.weights_label == "weights given by the caller"
    assert loaded.provenance()["untrained"] is None and loaded.provenance()["batchnorm_calibration"] is None
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    plain = nn.Sequential(nn.Conv2d(3, 3, 1))
    assert describe_model(plain).name == "Sequential"
    with pytest.raises(TypeError, match="Sequential has no pretrained_cfg; build it with cotviz.create_model"):
        pretrained_cfg_of(plain)
    assert pretrained_cfg_of(model).input_size == (3, 224, 224)
