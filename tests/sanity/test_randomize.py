"""cotviz.sanity.randomize: units in reverse execution order, each step changes exactly its units, BN finite."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cotviz import create_model
from cotviz.errors import InvalidArgumentError
from cotviz.sanity import Randomizer, randomization_units


def _trained_like(**kw) -> nn.Module:
    """A tiny demo-shaped network whose every parameter and BN statistic differs from any fresh init."""
    model = create_model("cotnet_demo", **kw)
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for t in (*model.parameters(), *(b for n, b in model.named_buffers() if "running" in n)):
            t.add_(0.1 + 0.05 * torch.rand(t.shape, generator=gen))
    return model.eval()


def test_units_are_logits_first_in_reverse_execution_order() -> None:
    model = create_model("cotnet_demo", layers=[1, 2, 1, 1])
    units = randomization_units(model)
    assert [u.name for u in units] == ["fc", "layer4.0", "layer3.0", "layer2.1", "layer2.0", "layer1.0", "stem"]
    stem = next(u for u in units if u.name == "stem")
    assert stem.modules == ("conv1.0", "conv1.1", "conv1.3", "conv1.4", "conv1.6", "bn1")
    assert model.training is False  # mode restored


def _changed(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> set[str]:
    return {k for k in a if not torch.equal(a[k], b[k])}


@pytest.mark.parametrize("mode", ["cascading", "independent"])
def test_each_step_changes_exactly_its_units(mode: str) -> None:
    model = _trained_like()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rnd = Randomizer(model)
    names = [u.name for u in rnd.units]
    seen = []
    for step in rnd.steps(mode):  # type: ignore[arg-type]
        sd = step.model.state_dict()
        expected = step.randomized
        assert expected == (tuple(names[:step.index]) if mode == "cascading" else
                            ((names[step.index - 1],) if step.index else ()))
        want = {k for u in expected for k in rnd.keys(u)}
        assert _changed(before, sd) == want, step.unit
        assert step.model is model if step.index == 0 else step.model is not model
        seen.append(step.unit)
        for v in sd.values():
            assert torch.isfinite(v.float()).all()
    assert seen == [None, *names]
    assert not _changed(before, model.state_dict())  # the trained network is never modified


def test_reinitialised_values_come_from_the_models_initialiser() -> None:
    """The randomised fc is exactly what init_weights draws under the seed (no other random source)."""
    model = _trained_like()
    a = Randomizer(model, seed=3).randomized(("fc",)).state_dict()
    b = Randomizer(model, seed=3).randomized(("fc",)).state_dict()
    c = Randomizer(model, seed=4).randomized(("fc",)).state_dict()
    assert torch.equal(a["fc.weight"], b["fc.weight"]) and not torch.equal(a["fc.weight"], c["fc.weight"])
    fresh = create_model("cotnet_demo")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        fresh.init_weights()
    assert torch.equal(a["fc.weight"], fresh.fc.weight)


def test_batchnorm_stays_finite_where_trained_statistics_would_explode() -> None:
    """Trained statistics that do not fit random weights (running_var 1e-12) would blow activations up; the
    randomised BNs are recalibrated and the fully randomised network's logits are finite and moderate."""
    model = _trained_like()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_var.fill_(1e-12)
    rnd = Randomizer(model)
    net = rnd.randomized(tuple(u.name for u in rnd.units))
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        out = net(x)
    assert torch.isfinite(out).all() and out.abs().max() < 1e3
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert torch.isfinite(m.running_var).all() and (m.running_var > 1e-8).all()
    assert not net.training


def test_refusals() -> None:
    with pytest.raises(InvalidArgumentError, match="init_weights"):
        Randomizer(nn.Sequential(nn.Conv2d(3, 3, 1)))
    with pytest.raises(InvalidArgumentError, match="mode must be"):
        next(iter(Randomizer(create_model("cotnet_demo")).steps("sideways")))  # type: ignore[arg-type]
