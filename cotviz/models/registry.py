"""Model registry: ``@register_model`` entrypoints, aliases, ``list_models`` and ``create_model``.

A variant is a few lines (timm ``resnet.py`` style): a function that builds its argument dict and calls
one builder. Aliases live here, not in if-chains; duplicate names are refused. The variants register
themselves when ``cotviz.models.zoo`` is imported (the package ``cotviz.models`` does it); the registry never
imports them, and checkpoint loading never imports the registry: ``create_model(weights=...)`` hands it
:func:`registered_shapes` for its "it looks like <variant>" messages.
"""

from __future__ import annotations

import difflib
import fnmatch
import os
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cotviz.errors import InvalidArgumentError, UnknownModelError
from cotviz.models.checkpoint import CheckpointInfo, load_checkpoint
from cotviz.models.configs import PaperResult, PretrainedCfg
from cotviz.models.demo import DEMO, demo_weights
from cotviz.resources import check_memory, format_bytes

__all__ = ["ModelEntry", "create_model", "list_models", "load_weights", "model_entry", "register_model",
           "registered_shapes", "resolve_name"]

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


def list_models(pattern: str = "*", *, include_aliases: bool = False) -> list[str]:
    """Registered model names matching a shell-style ``pattern`` (case-insensitive), in registry order."""
    names = list(_ENTRIES)
    if include_aliases:
        names += [a for e in _ENTRIES.values() for a in e.aliases]
    pat = _norm(pattern)
    return [n for n in names if fnmatch.fnmatchcase(_norm(n), pat)]


def resolve_name(name: str) -> str:
    """Canonical name of a model name or alias; unknown names suggest the closest ones."""
    try:
        return _LOOKUP[_norm(name)]
    except KeyError:
        close = difflib.get_close_matches(_norm(name), list(_LOOKUP), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(dict.fromkeys(_LOOKUP[c] for c in close))}?" if close else ""
        raise UnknownModelError(f"unknown model {name!r}{hint} (see `cotviz models`)") from None


def model_entry(name: str) -> ModelEntry:
    """The registry entry of a model name or alias."""
    return _ENTRIES[resolve_name(name)]


class _RegisteredShapes(Mapping[str, dict[str, tuple[int, ...]]]):
    """``{name: {state_dict key: shape}}`` of every registered variant in registry order, each built on the
    meta device (no memory) the first time it is looked at and remembered."""

    def __init__(self) -> None:
        self._shapes: dict[str, dict[str, tuple[int, ...]]] = {}

    def __getitem__(self, name: str) -> dict[str, tuple[int, ...]]:
        if name not in _ENTRIES:
            raise KeyError(name)
        if name not in self._shapes:
            with torch.device("meta"):
                model = _ENTRIES[name].builder()
            self._shapes[name] = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        return self._shapes[name]

    def __iter__(self) -> Iterator[str]:
        return iter(list(_ENTRIES))

    def __len__(self) -> int:
        return len(_ENTRIES)


_SHAPES = _RegisteredShapes()


def registered_shapes() -> Mapping[str, dict[str, tuple[int, ...]]]:
    """Every registered variant's ``state_dict`` layout, ``{name: {key: shape}}``, built lazily on the meta
    device: the ``candidates=`` of :func:`cotviz.models.checkpoint.load_checkpoint` for its
    "it looks like <variant>" messages (a search stops at the first perfect match)."""
    return _SHAPES


# ------------------------------------------------------------------------------------------ overrides


_MAX_BLOCKS = 128  # per stage: the deepest variant (se_cotnetd_270) has 53; builds take time per block


def _integer(low: int, high: int, note: str = "") -> Callable[[str, Any], str | None]:
    def check(name: str, value: Any) -> str | None:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            return f"{name} must be an integer from {low} to {high}{note}, got {value!r}"
        return None

    return check


def _fraction(name: str, value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        return f"{name} must be a number in [0, 1), got {value!r}"
    return None


def _flag(name: str, value: Any) -> str | None:
    return None if isinstance(value, bool) else f"{name} must be True or False, got {value!r}"


def _layers(name: str, value: Any) -> str | None:
    if (not isinstance(value, (list, tuple)) or len(value) != 4
            or any(isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= _MAX_BLOCKS for n in value)):
        return f"{name} must be 4 integer block counts from 1 to {_MAX_BLOCKS} (one per stage), got {value!r}"
    return None


def _activation(name: str, value: Any) -> str | None:
    if isinstance(value, str) or (isinstance(value, type) and issubclass(value, nn.Module)):
        return None
    return f"{name} must be an activation name (relu, silu, gelu) or an nn.Module class, got {value!r}"


#: The numeric and switch overrides of the registered builders, with their valid ranges. Names and specs
#: (``stem_type``, ``spatial_layer``, ``downsample_mode``, ``block_args``, ``aa_layer``) are checked by the
#: skeleton, the layer factory and the zoo, which know their choices.
_OVERRIDES: dict[str, Callable[[str, Any], str | None]] = {
    "layers": _layers,
    "num_classes": _integer(0, 1_000_000, " (0: no classifier, the model returns pooled features)"),
    "in_chans": _integer(1, 1024),
    "cardinality": _integer(1, 256),
    "base_width": _integer(1, 4096),
    "stem_width": _integer(1, 4096),
    "stem_pool": _flag,
    "avg_down": _flag,
    "zero_init_last_bn": _flag,
    "drop_rate": _fraction,
    "drop_path_rate": _fraction,
    "act_layer": _activation,
    "spatial_act_layer": _activation,
}


def _validate_overrides(entry: ModelEntry, overrides: Mapping[str, Any]) -> None:
    """One :class:`InvalidArgumentError` naming the valid range of the first bad override (unknown names are
    left to the builder, which says which arguments it takes)."""
    for name, value in overrides.items():
        check = _OVERRIDES.get(name)
        if check is None:
            continue
        problem = check(name, value)
        if problem:
            raise InvalidArgumentError(f"{entry.name}: {problem}")
    if overrides.get("stem_type") == "deep_tiered" and overrides.get("stem_width", 64) < 4:
        raise InvalidArgumentError(f"{entry.name}: stem_width must be at least 4 with stem_type='deep_tiered', got "
                                   f"{overrides['stem_width']}")


def _build_error(entry: ModelEntry, overrides: Mapping[str, Any], err: Exception) -> InvalidArgumentError:
    """A builder's refusal (a layer that cannot take the channel counts asked for) as one line."""
    first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
    widths = {k: overrides[k] for k in ("base_width", "cardinality", "stem_width") if k in overrides}
    if widths and not isinstance(err, TypeError):
        given = ", ".join(f"{k}={v}" for k, v in widths.items())
        return InvalidArgumentError(f"{entry.name}: {given} give channel counts its layers cannot split ({first}); "
                                    "a base_width that is a multiple of 8 fits every operator")
    return InvalidArgumentError(f"{entry.name}: {first}")


# ------------------------------------------------------------------------------------------- building


def _build(entry: ModelEntry, overrides: dict[str, Any]) -> nn.Module:
    """Build on the meta device, then allocate and initialise once (no default init thrown away).

    Under ``with torch.device("meta")`` the model stays on meta (shapes only)."""
    device = torch.empty(()).device  # the default device, also inside a ``with torch.device(...)`` block
    if device.type == "meta":
        return entry.builder(**overrides)
    with torch.device("meta"):
        model = entry.builder(**overrides)
    tensors = {id(t): t for t in (*model.parameters(), *model.buffers())}.values()
    needed = sum(t.numel() * t.element_size() for t in tensors)
    check_memory(needed, f"{entry.name} ({format_bytes(needed)} of weights)",
                 override="build it on the meta device: with torch.device('meta'): create_model(...)")
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


def create_model(name: str, *, weights: str | os.PathLike[str] | None = None, seed: int | None = 0,
                 allow_nonfinite: bool = False, **overrides: Any) -> nn.Module:
    """Build a registered model by name or alias.

    Args:
        name: e.g. ``"cotnet50"``, ``"cotnext50"`` (alias), ``"se_cotnetd_152"``.
        weights: a checkpoint to load (official training checkpoint, state_dict or ``.safetensors``);
            loaded safely (no pickled code runs), strictly; a checkpoint of another registered variant is
            named in the error.
        seed: seed of the random initialisation, isolated from the global RNG (``None``: use the global RNG).
            The same name and seed give the same weights.
        allow_nonfinite: load ``weights`` even if they hold NaN/Inf values (refused by default).
        **overrides: official constructor arguments (``layers``, ``num_classes``, ``base_width``,
            ``stem_width``, ``cardinality``, ``drop_path_rate``, ``block_args``, ...) and cotviz's own
            (``spatial_layer``, ``downsample_mode``); each is checked against its valid range first.

    Returns the model in eval mode, with ``pretrained_cfg`` (:class:`PretrainedCfg`) and ``model_name`` set.

    Raises:
        UnknownModelError: ``name`` is not registered. InvalidArgumentError: an override outside its range,
        or one the variant does not take. ResourceLimitError: the weights would not fit in the memory
        available. CheckpointError: see :func:`cotviz.models.checkpoint.load_checkpoint`.
    """
    entry = model_entry(name)
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise InvalidArgumentError(f"seed must be an integer or None, got {seed!r}")
    if weights is not None and not isinstance(weights, (str, os.PathLike)):
        raise InvalidArgumentError(f"weights must be a path, got {type(weights).__name__}")
    _validate_overrides(entry, overrides)
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
        raise _build_error(entry, overrides, err) from err
    except (ValueError, ZeroDivisionError, RuntimeError) as err:
        raise _build_error(entry, overrides, err) from None
    cfg = entry.pretrained_cfg
    num_classes = getattr(model, "num_classes", cfg.num_classes)
    if num_classes != cfg.num_classes:
        cfg = replace(cfg, num_classes=num_classes)
    model.pretrained_cfg = cfg  # type: ignore[assignment]
    model.model_name = entry.name  # type: ignore[assignment]
    if weights is not None:
        load_weights(model, entry.name, weights, allow_nonfinite=allow_nonfinite)
    return model.eval()


def load_weights(model: nn.Module, name: str, weights: str | os.PathLike[str], *,
                 allow_nonfinite: bool = False) -> CheckpointInfo:
    """Load ``weights`` into ``model`` (variant ``name``): ``"demo"`` is the variant's shipped checkpoint
    (:mod:`cotviz.models.demo`), anything else a path, loaded by :func:`cotviz.models.checkpoint.load_checkpoint`
    with the registered layouts as ``candidates`` (a checkpoint of another variant is named in the error)."""
    path = demo_weights(name) if os.fspath(weights) == DEMO else Path(weights)
    return load_checkpoint(model, path, candidates=registered_shapes(), allow_nonfinite=allow_nonfinite)
