"""Model registry: ``@register_model`` entrypoints, aliases, ``list_models`` and ``create_model``.

A variant is a few lines (timm ``resnet.py`` style): a function that builds its argument dict and calls
one builder. Aliases live here, not in if-chains; duplicate names are refused.
"""

from __future__ import annotations

import difflib
import fnmatch
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cotviz.errors import InvalidArgumentError, UnknownModelError
from cotviz.models.configs import PaperResult, PretrainedCfg

__all__ = ["ModelEntry", "create_model", "list_models", "model_entry", "register_model", "resolve_name"]

ModelBuilder = Callable[..., nn.Module]


@dataclass(frozen=True)
class ModelEntry:
    """One registered variant."""

    name: str
    builder: ModelBuilder
    aliases: tuple[str, ...]
    pretrained_cfg: PretrainedCfg
    paper: PaperResult | None = None
    description: str = ""
    tags: tuple[str, ...] = field(default_factory=tuple)


_ENTRIES: dict[str, ModelEntry] = {}
_LOOKUP: dict[str, str] = {}  # normalised name or alias -> canonical name


def _norm(name: str) -> str:
    """Lookup key: case, ``-`` and ``_`` do not matter (``SE-CoTNetD-50`` == ``se_cotnetd50``)."""
    return name.strip().lower().replace("-", "").replace("_", "")


def register_model(*, aliases: tuple[str, ...] = (), pretrained_cfg: PretrainedCfg | None = None,
                   paper: PaperResult | None = None, description: str = "",
                   tags: tuple[str, ...] = ()) -> Callable[[ModelBuilder], ModelBuilder]:
    """Register the decorated builder under its function name (plus ``aliases``)."""

    def deco(fn: ModelBuilder) -> ModelBuilder:
        name = fn.__name__
        entry = ModelEntry(name, fn, tuple(aliases), pretrained_cfg or PretrainedCfg(), paper, description, tags)
        for key in (name, *aliases):
            k = _norm(key)
            if _LOOKUP.get(k, name) != name:
                raise ValueError(f"model name or alias {key!r} is already registered (by {_LOOKUP[k]!r})")
            _LOOKUP[k] = name
        _ENTRIES[name] = entry
        return fn

    return deco


def _ensure_loaded() -> None:
    import cotviz.models.zoo  # noqa: F401  (registers the variants)


def list_models(pattern: str = "*", *, include_aliases: bool = False) -> list[str]:
    """Registered model names matching a shell-style ``pattern`` (case-insensitive), in registry order."""
    _ensure_loaded()
    names = list(_ENTRIES)
    if include_aliases:
        names += [a for e in _ENTRIES.values() for a in e.aliases]
    pat = _norm(pattern)
    return [n for n in names if fnmatch.fnmatchcase(_norm(n), pat)]


def resolve_name(name: str) -> str:
    """Canonical name of a model name or alias; unknown names suggest the closest ones."""
    _ensure_loaded()
    try:
        return _LOOKUP[_norm(name)]
    except KeyError:
        close = difflib.get_close_matches(_norm(name), list(_LOOKUP), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(dict.fromkeys(_LOOKUP[c] for c in close))}?" if close else ""
        raise UnknownModelError(f"unknown model {name!r}{hint} (see `cotviz models`)") from None


def model_entry(name: str) -> ModelEntry:
    """The registry entry of a model name or alias."""
    return _ENTRIES[resolve_name(name)]


def _build(entry: ModelEntry, overrides: dict[str, Any]) -> nn.Module:
    """Build on the meta device, then allocate and initialise once (no default init thrown away).

    Under ``with torch.device("meta")`` the model stays on meta (shapes only)."""
    device = torch.empty(()).device  # the default device, also inside a ``with torch.device(...)`` block
    if device.type == "meta":
        return entry.builder(**overrides)
    with torch.device("meta"):
        model = entry.builder(**overrides)
    init = getattr(model, "init_weights", None)
    if not callable(init):  # a builder without a full re-initialiser: build it directly
        return entry.builder(**overrides)
    _allocate(model, device)
    init()
    return model


def _allocate(model: nn.Module, device: torch.device) -> None:
    """Replace every meta parameter and buffer by uninitialised storage on ``device``, in place.

    ``Module.to_empty`` does the same through ``empty_like`` on meta tensors, which runs torch's Python
    reference kernels (and imports sympy): ~0.6 s in a fresh process; ``torch.empty`` does not.
    Tied tensors stay tied."""
    new: dict[int, torch.Tensor] = {}
    for module in model.modules():
        tables: tuple[dict[str, Any], ...] = (module._parameters, module._buffers)
        for table in tables:
            for key, t in table.items():
                if t is None or t.device.type != "meta":
                    continue
                if id(t) not in new:
                    data = torch.empty(t.shape, dtype=t.dtype, device=device)
                    new[id(t)] = nn.Parameter(data, t.requires_grad) if isinstance(t, nn.Parameter) else data
                table[key] = new[id(t)]


def create_model(name: str, *, weights: str | Path | None = None, seed: int | None = 0,
                 **overrides: Any) -> nn.Module:
    """Build a registered model by name or alias.

    Args:
        name: e.g. ``"cotnet50"``, ``"cotnext50"`` (alias), ``"se_cotnetd_152"``.
        weights: a checkpoint to load (official training checkpoint, state_dict or ``.safetensors``);
            loaded safely (no pickled code runs), strictly.
        seed: seed of the random initialisation, isolated from the global RNG (``None``: use the global RNG).
            The same name and seed give the same weights.
        **overrides: official constructor arguments (``layers``, ``num_classes``, ``base_width``,
            ``stem_width``, ``cardinality``, ``drop_path_rate``, ``block_args``, ...) and cotviz's own
            (``spatial_layer``, ``downsample_mode``).

    Returns the model in eval mode, with ``pretrained_cfg`` (:class:`PretrainedCfg`) and ``model_name`` set.
    """
    entry = model_entry(name)
    try:
        if seed is None:
            model = _build(entry, overrides)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                model = _build(entry, overrides)
    except TypeError as err:
        match = re.search(r"unexpected keyword argument '(\w+)'", str(err))
        if match:
            raise InvalidArgumentError(f"{entry.name} does not take the argument {match.group(1)!r}") from None
        raise
    except ValueError as err:
        raise InvalidArgumentError(f"{entry.name}: {err}") from None
    cfg = entry.pretrained_cfg
    num_classes = getattr(model, "num_classes", cfg.num_classes)
    if num_classes != cfg.num_classes:
        from dataclasses import replace

        cfg = replace(cfg, num_classes=num_classes)
    model.pretrained_cfg = cfg  # type: ignore[assignment]
    model.model_name = entry.name  # type: ignore[assignment]
    if weights is not None:
        from cotviz.models.checkpoint import load_checkpoint

        load_checkpoint(model, weights)
    return model.eval()
