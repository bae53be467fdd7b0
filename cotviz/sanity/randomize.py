"""Model parameter randomisation (Adebayo et al. 2018, "Sanity Checks for Saliency Maps", Sec. 3.1).

The network is cut into *units* -- the classifier, every residual block, the stem (every parameter before the
first block) -- ordered from the logits down (the reverse of forward execution, observed with hooks on one
small forward pass). :class:`Randomizer` gives, for each step,

* ``cascading``: the network with the first ``k`` units of that order re-initialised (logits first, then the
  last block, ... down to the stem), and
* ``independent``: the network with only unit ``k`` re-initialised,

always as a copy (the trained network is never modified).

Re-initialisation uses the model's own initialiser: a copy of the network runs ``init_weights()`` under a
fixed seed (Kaiming-normal convs, PyTorch-default BN/Linear/GroupNorm), and the unit's parameters are taken
from it. Two adjustments, both those of cotviz's untrained demo network (:mod:`cotviz.models.untrained`), keep a
randomised network meaningful and finite: a randomised block's last BN weight is :data:`RESIDUAL_SCALE` rather
than the official zero (a zeroed branch would make "randomising" a block switch it off), and the running
statistics of every randomised BatchNorm are recalibrated on seeded smooth noise (the trained statistics do not
fit random weights: activations would grow by orders of magnitude per block, the NaNs other toolkits hit).
Buffers and parameters of the units not randomised are never touched.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from cotviz.errors import InvalidArgumentError
from cotviz.models.untrained import (
    calibrate_batchnorm,
    pretrained_cfg_of,
    scale_residual_branches,
)

__all__ = ["SEED", "Mode", "RandomizationStep", "Randomizer", "Unit", "randomization_units"]

Mode = Literal["cascading", "independent"]
#: Default seed of the re-initialisation (``create_model`` builds with seed 0).
SEED = 1
#: Side of the input of the forward pass that observes the execution order (every cotviz skeleton takes it).
_ORDER_SIDE = 64


@dataclass(frozen=True)
class Unit:
    """A group of parameters randomised together: ``name`` (``"fc"``, ``"layer4.0"``, ``"stem"``) and the module
    paths it covers (``("conv1", "bn1")`` for the stem)."""

    name: str
    modules: tuple[str, ...]


@dataclass(frozen=True)
class RandomizationStep:
    """One network of a randomisation run.

    Attributes:
        index: 0 = the trained network, 1.. = after randomising.
        unit: the unit randomised last (cascading) or alone (independent); None at step 0.
        randomized: every unit randomised in this network, logits first.
        model: the network (a copy, eval mode).
    """

    index: int
    unit: str | None
    randomized: tuple[str, ...]
    model: nn.Module


def _is_block(module: nn.Module) -> bool:
    from cotviz.models.resnet import Bottleneck

    return isinstance(module, Bottleneck)


def randomization_units(model: nn.Module) -> list[Unit]:
    """The units of ``model`` from the logits down: the classifier, then every residual block in reverse order of
    execution, then the stem (the parameterised modules outside every block and the classifier).

    The order is observed: forward-pre hooks on the blocks and the classifier record their first call during one
    (1, 3, 64, 64) forward (the model's train/eval mode is restored; the hooks are removed in ``finally``).
    """
    cfg = pretrained_cfg_of(model)
    classifier = cfg.classifier
    named = dict(model.named_modules())
    blocks = [name for name, m in named.items() if name and _is_block(m)]
    heads = [classifier] if classifier in named and any(True for _ in named[classifier].parameters()) else []
    order: list[str] = []
    handles = []
    try:
        for name in (*blocks, *heads):
            handles.append(named[name].register_forward_pre_hook(
                lambda _m, _x, name=name: order.append(name) if name not in order else None))
        param = next(model.parameters())
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                model(torch.zeros(1, 3, _ORDER_SIDE, _ORDER_SIDE, device=param.device, dtype=param.dtype))
        finally:
            model.train(was_training)
    finally:
        for h in handles:
            h.remove()
    missing = [n for n in (*blocks, *heads) if n not in order]
    if missing:
        raise InvalidArgumentError(f"{', '.join(missing)} never ran in a forward pass: cannot order the units")
    covered = set(order)
    stem = tuple(name for name, m in named.items() if name and any(True for _ in m.parameters(recurse=False))
                 and not any(name == c or name.startswith(c + ".") for c in covered))
    units = [Unit(name, (name,)) for name in reversed(order)]
    if stem:
        units.append(Unit("stem", stem))
    return units


def _unit_state_keys(model: nn.Module, unit: Unit) -> list[str]:
    keys = []
    for key in model.state_dict():
        if any(key == m or key.startswith(m + ".") for m in unit.modules):
            keys.append(key)
    return keys


class Randomizer:
    """The randomised copies of a trained network, step by step.

    Args:
        model: a cotviz network (with ``init_weights`` and ``pretrained_cfg``: built by ``create_model``); not
            modified.
        seed: seed of the re-initialisation (the same seed gives the same randomised networks). The default,
            :data:`SEED`, differs from ``create_model``'s, so an untrained network is re-drawn, not rebuilt.
    """

    def __init__(self, model: nn.Module, *, seed: int = SEED) -> None:
        init = getattr(model, "init_weights", None)
        if not callable(init):
            raise InvalidArgumentError(f"{type(model).__name__} has no init_weights(): cotviz can only re-initialise "
                                       "its own networks with their initialiser (build it with cotviz.create_model)")
        self.model = model
        self.units = randomization_units(model)
        fresh = copy.deepcopy(model)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            fresh.init_weights()  # type: ignore[operator]
        scale_residual_branches(fresh)  # live residual branches, as the untrained demo network
        self._fresh = fresh.state_dict()
        self._keys = {u.name: _unit_state_keys(model, u) for u in self.units}

    def keys(self, unit: str) -> list[str]:
        """The ``state_dict`` keys a unit covers."""
        return list(self._keys[unit])

    def randomized(self, units: tuple[str, ...]) -> nn.Module:
        """A copy of the network with ``units`` re-initialised and their BatchNorms recalibrated (eval mode)."""
        net = copy.deepcopy(self.model)
        state = net.state_dict()
        with torch.no_grad():
            for unit in units:
                for key in self._keys[unit]:
                    state[key].copy_(self._fresh[key])
        modules = dict(net.named_modules())
        norms: list[nn.modules.batchnorm._BatchNorm] = [m for u in self.units if u.name in units for path in u.modules
                 for m in modules[path].modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if norms:
            cfg = pretrained_cfg_of(net)
            calibrate_batchnorm(net, mean_std=(cfg.mean, cfg.std), norms=norms)
        return net.eval()

    def steps(self, mode: Mode) -> Iterator[RandomizationStep]:
        """Step 0 (the trained network as given) then one step per unit, logits first; each network is built when
        its step is reached (one copy alive at a time if the caller drops the previous one)."""
        if mode not in ("cascading", "independent"):
            raise InvalidArgumentError(f"mode must be 'cascading' or 'independent', got {mode!r}")
        yield RandomizationStep(0, None, (), self.model)
        names = [u.name for u in self.units]
        for k, name in enumerate(names, start=1):
            chosen = tuple(names[:k]) if mode == "cascading" else (name,)
            yield RandomizationStep(k, name, chosen, self.randomized(chosen))
