"""timm plugin: cotviz's variants in timm's model registry (``timm.create_model("cotnet50")``).

::

    import cotviz, timm
    cotviz.register_timm()                     # once per process; returns the timm names
    model = timm.create_model("cotnet50", num_classes=10)            # a cotviz CoTResNet
    model = timm.create_model("cotnet50", weights="cotnet50.pth.tar")  # official checkpoint, loaded safely
    feats = timm.create_model("se_cotnetd_50", features_only=True, out_indices=(2, 3, 4))
    cfg = timm.data.resolve_model_data_config(model)                 # cotviz's preprocessing, timm's transform

timm's own ResNets are never overwritten: a cotviz variant whose name timm already has (the baselines
``resnet50``, ``resnet101``) is registered as ``cotviz_<name>``. The entrypoints build through
:func:`cotviz.create_model` (same weights for the same seed, overrides checked), take timm's arguments
(``num_classes``, ``in_chans``, ``drop_rate``, ``drop_path_rate``, ``global_pool``, ``features_only``,
``out_indices``) and cotviz's (``weights``, ``seed``, ``layers``, ``spatial_layer``, ...). There are no hub
weights: ``pretrained=True`` loads the shipped weights of the demo models and refuses elsewhere (pass
``weights=``); timm's ``checkpoint_path=`` also works (timm's own, unchecked loader).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from torch import nn

from cotviz.errors import InvalidArgumentError
from cotviz.interop import timm_models
from cotviz.interop._deps import require
from cotviz.models import PretrainedCfg, create_model, list_models, model_entry

__all__ = ["TIMM_PREFIX", "create_timm_model", "register_timm", "timm_name"]

#: Prefix of a cotviz variant whose plain name timm already registers (``cotviz_resnet50``).
TIMM_PREFIX = "cotviz_"

#: cotviz name -> timm name, of the variants registered in this process.
_REGISTERED: dict[str, str] = {}


def timm_name(name: str) -> str:
    """The timm registry name of a registered cotviz variant (``"resnet50"`` -> ``"cotviz_resnet50"``)."""
    canonical = model_entry(name).name
    if canonical not in _REGISTERED:
        raise InvalidArgumentError(f"{canonical} is not registered in timm: call cotviz.register_timm() first")
    return _REGISTERED[canonical]


def register_timm() -> list[str]:
    """Register every cotviz variant in timm's model registry; returns their timm names, in cotviz's order.

    Idempotent (a second call registers nothing new). A name timm already knows for another model gets the
    :data:`TIMM_PREFIX`; timm's entries are never replaced. Raises :class:`MissingDependencyError` without
    timm."""
    timm_models_api = require("timm.models", "timm", "cotviz.register_timm()")
    for name in list_models():
        if name in _REGISTERED:
            continue
        target = name
        if timm_models_api.is_model(target):
            target = TIMM_PREFIX + name
            if timm_models_api.is_model(target):  # taken by someone else: leave it alone
                continue
        cfg = timm_models.default_cfgs[target] = _timm_cfg(name)
        fn = _entrypoint(name, target, cfg["description"])
        setattr(timm_models, target, fn)
        timm_models_api.register_model(fn)
        _REGISTERED[name] = target
    return list(_REGISTERED.values())


def _timm_cfg(name: str) -> dict[str, Any]:
    """timm ``PretrainedCfg`` fields of a cotviz variant (no weight location: none is fetched)."""
    entry = model_entry(name)
    cfg = entry.pretrained_cfg.to_dict()
    cfg.update(origin_url="https://github.com/JDAI-CV/CoTNet", paper_ids="arXiv:2107.12292",
               paper_name="Contextual Transformer Networks for Visual Recognition",
               description=entry.description or (entry.builder.__doc__ or "").strip().splitlines()[0])
    return cfg


def _entrypoint(name: str, target: str, description: str) -> Any:
    def entrypoint(pretrained: bool = False, **kwargs: Any) -> nn.Module:
        return create_timm_model(name, pretrained=pretrained, **kwargs)

    entrypoint.__name__ = entrypoint.__qualname__ = target
    entrypoint.__module__ = timm_models.__name__
    entrypoint.__doc__ = f"cotviz {name} (timm entrypoint): {description}"
    return entrypoint


def create_timm_model(name: str, *, pretrained: bool = False, pretrained_cfg: Any = None,
                      pretrained_cfg_overlay: dict[str, Any] | None = None, cache_dir: Any = None,
                      features_only: bool = False, out_indices: int | Sequence[int] | None = None,
                      feature_cls: str | None = None, output_stride: int | None = None,
                      **kwargs: Any) -> nn.Module:
    """What a timm entrypoint of cotviz's ``name`` does with the arguments ``timm.create_model`` passes.

    Args:
        name: a cotviz variant.
        pretrained: the shipped weights of a demo model (``weights="demo"``); refused for the others
            (their official weights are downloaded by the user: pass ``weights=path``).
        pretrained_cfg: timm's tag or cfg; only None (cotviz's own cfg).
        pretrained_cfg_overlay: replaces fields of the model's ``pretrained_cfg`` (e.g. ``crop_pct``).
        cache_dir: unused (nothing is downloaded).
        features_only, out_indices, feature_cls: a timm feature backbone (``FeatureGetterNet`` over
            ``forward_intermediates``; ``out_indices`` default all five positions, stem to ``layer4``).
        output_stride: 32 only (no dilated variant).
        **kwargs: :func:`cotviz.create_model` arguments (timm's ``num_classes``, ``in_chans``, ``drop_rate``,
            ``drop_path_rate``, ``global_pool``; cotviz's ``weights``, ``seed``, architecture overrides).
    """
    del cache_dir
    if pretrained_cfg not in (None, "", {}):
        raise InvalidArgumentError(f"{name}: timm pretrained_cfg / tags are not supported (got {pretrained_cfg!r}); "
                                   "cotviz models carry their own pretrained_cfg")
    if output_stride not in (None, 32):
        raise InvalidArgumentError(f"{name}: output_stride must be 32 (no dilated variant), got {output_stride}")
    if pretrained:
        if "demo" not in model_entry(name).tags:
            raise InvalidArgumentError(
                f"{name}: no weights can be fetched here; download the official checkpoint and pass "
                f"weights='path/to/{name}.pth.tar' (pretrained=True loads the shipped weights of the demo models)")
        kwargs.setdefault("weights", "demo")
    model = create_model(name, **kwargs)
    if pretrained_cfg_overlay:
        cfg: PretrainedCfg = model.pretrained_cfg  # type: ignore[assignment]
        unknown = sorted(set(pretrained_cfg_overlay) - set(cfg))
        if unknown:
            raise InvalidArgumentError(f"{name}: pretrained_cfg_overlay has unknown fields {unknown}; known: "
                                       f"{', '.join(cfg)}")
        model.pretrained_cfg = replace(cfg, **pretrained_cfg_overlay)  # type: ignore[assignment]
    if not features_only:
        return model
    if feature_cls not in (None, "getter"):
        raise InvalidArgumentError(f"{name}: feature_cls must be 'getter' (forward_intermediates), got {feature_cls!r}")
    features = require("timm.models._features", "timm", "features_only")
    indices = tuple(range(len(model.feature_info))) if out_indices is None else out_indices  # type: ignore[arg-type]
    net: nn.Module = features.FeatureGetterNet(model, out_indices=indices)
    return net
