"""The one way a run gets its network: a checkpoint loaded safely, or the deterministic untrained demo network.

* :func:`new_model` -- the seeded build (before weights), so a caller can validate a request against the
  layout before paying for a checkpoint load or the calibration pass.
* :func:`finish_model` -- load ``weights`` (strictly, safely) or turn the build into the untrained demo
  network (:func:`make_untrained`): a :class:`LoadedModel` that says how its weights came about.
* :func:`load_model` -- both steps.
* :func:`describe_model` -- a :class:`LoadedModel` for a network the caller built (weights unknown to cotviz).

Why the untrained demo network is not the official initialisation as is: the official init zero-initialises
the last BN of every block (``zero_init_last_bn``), so every residual branch is a no-op and every block of a
stage sees the same input. With live branches and the init's identity BN statistics, a random CoTNet blows
activations up instead (cotnet50 on examples/coffee.png: RMS ~1e5 at stage 3, ~1e11 at stage 4), so every
map would show that blow-up. The demo therefore (1) keeps the branches live (``zero_init_last_bn=False``),
(2) scales them by setting every block's last BN weight to :data:`RESIDUAL_SCALE` (SkipInit-style, De & Smith
2020: between the official 0 and 1), and (3) calibrates every BN's statistics on seeded smooth noise
(:func:`calibrate_batchnorm`). All of it is stated in the warning, the figure and the JSON metadata.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from cotviz.models.configs import PretrainedCfg

if TYPE_CHECKING:
    from cotviz.models.checkpoint import CheckpointInfo

__all__ = [
    "CALIBRATION_BATCH",
    "CALIBRATION_DATA",
    "CALIBRATION_SIDE",
    "LoadedModel",
    "RANDOM_INIT_SEED",
    "RESIDUAL_SCALE",
    "UNTRAINED_NOTE",
    "calibrate_batchnorm",
    "describe_model",
    "finish_model",
    "load_model",
    "make_untrained",
    "new_model",
    "pretrained_cfg_of",
    "scale_residual_branches",
]

#: Seed of the random initialisation used when no weights are given.
RANDOM_INIT_SEED = 0
#: The untrained demo network: calibration batch, image side (pixels), residual scale.
CALIBRATION_BATCH, CALIBRATION_SIDE, RESIDUAL_SCALE = 4, 64, 0.25
CALIBRATION_DATA = ("seeded Gaussian noise at side/16 + 0.5 x noise at side/4 (bilinear upsampling), squashed to "
                    "(0, 1) by a sigmoid, normalised with the model's mean/std")
UNTRAINED_NOTE = (f"random weights (seed {RANDOM_INIT_SEED}; zero_init_last_bn=False with every block's last BN "
                  f"weight set to {RESIDUAL_SCALE}; BatchNorm statistics calibrated on seeded noise)")


def calibrate_batchnorm(model: nn.Module, *, mean_std: tuple[Sequence[float], Sequence[float]],
                        seed: int = RANDOM_INIT_SEED, batch: int = CALIBRATION_BATCH,
                        side: int = CALIBRATION_SIDE,
                        norms: Sequence[nn.modules.batchnorm._BatchNorm] | None = None) -> None:
    """Set every BatchNorm's running statistics from one train-mode pass over fixed smooth random images.

    Data-dependent initialisation (cf. Mishkin & Matas, "All you need is a good init", ICLR 2016). The
    images are seeded Gaussian noise at two scales (side/16 and side/4, bilinearly upsampled), squashed to
    (0, 1) like photographs and normalised with ``mean_std``: (``batch``, 3, side, side), independent of the
    user's inputs, so the same seed gives the same network. Only the running statistics change; the model's
    train/eval flag and every BN's momentum are restored.

    ``norms``: calibrate only these BatchNorms (the rest of the network runs in eval mode, its statistics
    untouched: what ``cotviz sanity`` does after re-initialising some blocks of a trained network).
    """
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.randn(batch, 3, max(1, side // 16), max(1, side // 16), generator=gen)  # (B, 3, s/16, s/16)
    fine = torch.randn(batch, 3, max(1, side // 4), max(1, side // 4), generator=gen)  # (B, 3, s/4, s/4)
    noise = (F.interpolate(coarse, size=(side, side), mode="bilinear", align_corners=False)
             + 0.5 * F.interpolate(fine, size=(side, side), mode="bilinear", align_corners=False))  # (B, 3, s, s)
    pixels = torch.sigmoid(3.0 * noise / noise.std())  # (B, 3, s, s) in (0, 1), saturating like photographs
    mean = torch.tensor(mean_std[0]).view(1, 3, 1, 1)  # (1, 3, 1, 1)
    std = torch.tensor(mean_std[1]).view(1, 3, 1, 1)  # (1, 3, 1, 1)
    x = (pixels - mean) / std  # (B, 3, s, s), normalised like a model input
    device = next(model.parameters()).device
    every = norms is None
    if norms is None:
        norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    modes = [m.training for m in model.modules()]
    try:
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # cumulative average: after one batch, running stats = that batch's stats
        model.train(every)
        for m in norms:
            m.train()
        with torch.no_grad():
            model(x.to(device))
    finally:
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum
        for module, mode in zip(model.modules(), modes, strict=True):
            module.training = mode


def pretrained_cfg_of(model: nn.Module) -> PretrainedCfg:
    """``model.pretrained_cfg`` as set by ``create_model`` (TypeError for a network built otherwise)."""
    cfg = getattr(model, "pretrained_cfg", None)
    if not isinstance(cfg, PretrainedCfg):
        raise TypeError(f"{type(model).__name__} has no pretrained_cfg; build it with cotviz.create_model")
    return cfg


def scale_residual_branches(model: nn.Module, scale: float = RESIDUAL_SCALE) -> None:
    """Set the last BN weight of every bottleneck of ``model`` to ``scale`` (live residual branches, neither off
    as the official zero init nor full strength): the untrained demo network's and the sanity randomisation's step."""
    from cotviz.models.resnet import Bottleneck

    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, Bottleneck):
                m.bn3.weight.fill_(scale)


def make_untrained(model: nn.Module) -> nn.Module:
    """Turn ``model`` (built with ``zero_init_last_bn=False``) into the untrained demo network, in eval mode.

    Every bottleneck's last BN weight is set to :data:`RESIDUAL_SCALE`, then :func:`calibrate_batchnorm`
    sets the BN statistics (see the module docstring for why). Modifies and returns ``model``.
    """
    scale_residual_branches(model)
    cfg = pretrained_cfg_of(model)
    calibrate_batchnorm(model, mean_std=(cfg.mean, cfg.std))
    return model.eval()


@dataclass
class LoadedModel:
    """A network and how its weights came about.

    Attributes:
        model: the network, in eval mode.
        name: its registry name (``"cotnet50"``), or the class name of a network the caller built.
        weights: the checkpoint loaded into it, or None.
        untrained: True for the untrained demo network; None when cotviz does not know (a caller's network).
        init: one sentence for titles and metadata.
    """

    model: nn.Module
    name: str
    weights: CheckpointInfo | None
    untrained: bool | None
    init: str

    @property
    def weights_label(self) -> str:
        """Short name of the weights for figure titles."""
        if self.weights is not None:
            return self.weights.path.name
        return "random init (untrained)" if self.untrained else "weights given by the caller"

    def provenance(self) -> dict[str, Any]:
        """The JSON ``model`` section: name, init, the untrained recipe or the checkpoint."""
        demo = bool(self.untrained)
        info = self.weights
        return {
            "name": self.name, "init": self.init, "untrained": self.untrained,
            "zero_init_last_bn": False if demo else None,
            "residual_scale": RESIDUAL_SCALE if demo else None,
            "batchnorm_calibration": {"images": CALIBRATION_BATCH, "side": CALIBRATION_SIDE,
                                      "seed": RANDOM_INIT_SEED, "data": CALIBRATION_DATA} if demo else None,
            "weights": None if info is None else {"path": str(info.path), "sha256": info.sha256,
                                                  "source": info.source, "used_ema": info.used_ema},
        }


def new_model(name: str, *, untrained: bool, num_classes: int | None = None, **overrides: Any) -> nn.Module:
    """The registered network ``name`` with its seeded initialisation, before weights or the demo steps.

    ``untrained=True`` builds it with live residual branches (``zero_init_last_bn=False``) for
    :func:`make_untrained`. ``overrides``: further ``create_model`` arguments (e.g. ``spatial_layer="sa"``).
    """
    from cotviz.models.registry import create_model

    if num_classes is not None:
        overrides["num_classes"] = num_classes
    if untrained:
        overrides["zero_init_last_bn"] = False
    return create_model(name, seed=RANDOM_INIT_SEED, **overrides)


def finish_model(model: nn.Module, name: str, weights: str | os.PathLike[str] | None, *,
                 allow_nonfinite: bool = False) -> LoadedModel:
    """Load ``weights`` into ``model`` (safely, strictly: ``CheckpointError`` when it does not fit or holds NaN/Inf
    unless ``allow_nonfinite``; ``"demo"``: the shipped demo checkpoint, :mod:`cotviz.models.demo`), or turn it into
    the untrained demo network when ``weights`` is None."""
    if weights is None:
        init = (f"{UNTRAINED_NOTE}: calibration over {CALIBRATION_BATCH} smooth-noise images of "
                f"{CALIBRATION_SIDE} px; the network is UNTRAINED")
        return LoadedModel(make_untrained(model), name, None, True, init)
    from cotviz.models.registry import load_weights

    info = load_weights(model, str(getattr(model, "model_name", name)), weights, allow_nonfinite=allow_nonfinite)
    model.eval()
    return LoadedModel(model, name, info, False,
                       f"checkpoint {info.path.name} ({info.source}{', EMA' if info.used_ema else ''})")


def load_model(name: str, weights: str | os.PathLike[str] | None = None, *, num_classes: int | None = None,
               label: str | None = None, **overrides: Any) -> LoadedModel:
    """:func:`new_model` then :func:`finish_model`: the network a run uses for ``name`` (and ``weights``).

    ``overrides``: further ``create_model`` arguments; ``label``: the name results carry (default: ``name``).
    """
    from cotviz.models.registry import resolve_name

    canonical = resolve_name(name)
    model = new_model(canonical, untrained=weights is None, num_classes=num_classes, **overrides)
    return finish_model(model, label or canonical, weights)


def describe_model(model: nn.Module) -> LoadedModel:
    """A :class:`LoadedModel` for a network the caller built: cotviz does not know where its weights came from."""
    name = str(getattr(model, "model_name", None) or type(model).__name__)
    return LoadedModel(model, name, None, None, "a network passed by the caller (its weights are not known to cotviz)")
