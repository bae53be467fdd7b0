"""Safe checkpoint reading and loading: official CoTNet training checkpoints, state_dicts, safetensors.

A checkpoint from the internet is untrusted, so loading never runs pickled code:

1. ``torch.load(weights_only=True)`` -- torch's own allowlisting unpickler -- is tried first;
2. if the file names a global that torch does not allow (the official checkpoints pickle ``args``, a
   yacs ``CfgNode``), it is read again with :class:`cotviz.models._safe_pickle.RestrictedPickleModule`:
   allowlisted data types and tensor-rebuild functions only, everything else becomes an inert placeholder
   (nothing is imported, nothing the file names is called). ``weights_only=False`` with the stock
   ``pickle`` is never used. If the file tries to call code (``os.system``, ``builtins.eval``, ...) the
   call is neutralized and a :class:`CheckpointSafetyWarning` says so.

Accepted layouts (``read_checkpoint`` flattens all of them to one ``{key: tensor}`` dict):

* official / timm ``CheckpointSaver`` dicts: ``state_dict``, ``state_dict_ema``, ``optimizer``, ``args``,
  ``epoch``, ``arch``, ``version``, ``metric``. **EMA choice**: ``use_ema=None`` takes ``state_dict_ema``
  when present, because the official evaluation (and the README accuracies) use the EMA weights;
  ``use_ema=False`` takes ``state_dict``; ``use_ema=True`` requires EMA weights.
* wrappers ``{"model": sd}``, ``{"state_dict": sd}`` (also ``model_state_dict``, ``net``, ``model_ema``,
  ``ema``), bare state_dicts, and a whole pickled ``nn.Module`` (its parameters and persistent buffers are
  recovered from the pickled data; the module class itself is never imported);
* ``module.`` (DataParallel/DDP) and ``_orig_mod.`` (``torch.compile``) prefixes are stripped;
* ``.safetensors`` files (needs the optional ``safetensors`` package).
"""

from __future__ import annotations

import hashlib
import pickle
import warnings
import zipfile
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from cotviz.errors import CheckpointError
from cotviz.models._safe_pickle import InertObject, RestrictedPickleModule, is_code_execution_global

__all__ = [
    "CheckpointInfo",
    "CheckpointSafetyWarning",
    "load_checkpoint",
    "rank_architectures",
    "read_checkpoint",
]

Shapes = Mapping[str, tuple[int, ...]]

# Keys under which checkpoints keep their weights, in order of preference.
_EMA_KEYS = ("state_dict_ema", "model_ema", "ema_state_dict", "ema")
_MAIN_KEYS = ("state_dict", "model", "model_state_dict", "net", "network")
_MAX_NESTING = 3  # {"model": {"state_dict": sd}} is 2 levels; deeper wrappers are not guessed
_EXAMPLES = 3  # keys quoted in an error message


class CheckpointSafetyWarning(UserWarning):
    """The checkpoint references code-executing callables (neutralized; nothing ran)."""


@dataclass(frozen=True)
class CheckpointInfo:
    """What :func:`read_checkpoint` found and :func:`load_checkpoint` did.

    Attributes:
        path: the file read.
        sha256: hex SHA-256 of the file (to compare against a published hash).
        file_format: ``"torch-zip"`` (``torch.save`` >= 1.6), ``"torch-legacy"`` or ``"safetensors"``.
        loader: ``"weights_only"`` (torch's allowlist sufficed), ``"restricted"`` (cotviz's restricted
            unpickler was needed, e.g. for the official ``args``) or ``"safetensors"``.
        source: where the weights came from: ``"state_dict_ema"``, ``"state_dict"``, ``"model"``,
            ``"model/state_dict"`` (nested), ``"bare"`` (the file is a state_dict) or ``"pickled_module"``.
        has_ema: the file holds EMA weights; ``used_ema``: they are the ones returned/loaded.
        stripped_prefixes: wrapper prefixes removed from the keys (``"module."``, ``"_orig_mod."``).
        num_tensors: entries in the flat state_dict.
        arch, epoch, metric, version: training metadata when the file records it.
        metadata: string metadata of a ``.safetensors`` file.
        neutralized_globals: globals the file names that were replaced by inert placeholders
            (e.g. ``yacs.config.CfgNode``); ``code_execution_globals`` is the subset that runs code.
        skipped_keys: checkpoint keys NOT loaded (``strict=False``: unexpected or shape-mismatched).
        missing_keys: model keys left at their previous values (``strict=False``).
    """

    path: Path
    sha256: str
    file_format: str
    loader: str
    source: str
    has_ema: bool
    used_ema: bool
    stripped_prefixes: tuple[str, ...]
    num_tensors: int
    arch: str | None = None
    epoch: int | None = None
    metric: float | None = None
    version: int | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    neutralized_globals: tuple[str, ...] = ()
    code_execution_globals: tuple[str, ...] = ()
    skipped_keys: tuple[str, ...] = ()
    missing_keys: tuple[str, ...] = ()


# ----------------------------------------------------------------------------------------------- files


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _describe_non_checkpoint(head: bytes) -> str:
    """A human guess of what a file that is not a checkpoint is, with a hint."""
    text = head.lstrip().lower()
    if head.startswith(b"\xff\xd8\xff"):
        return "a JPEG image"
    if head.startswith(b"\x89PNG"):
        return "a PNG image"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "a GIF image"
    if head.startswith(b"%PDF"):
        return "a PDF document"
    if text.startswith((b"<!doctype html", b"<html")):
        return "an HTML page (a failed download? Google Drive serves a confirmation page for large files)"
    if head.startswith(b"\x1f\x8b"):
        return "a gzip archive (decompress it first)"
    if len(head) > 262 and head[257:262] == b"ustar":
        return "a tar archive (extract it first)"
    try:
        head[:256].decode("utf-8")
    except UnicodeDecodeError:
        return "unrecognised binary data"
    return "unrecognised binary data" if b"\x00" in head else "a text file"


def _sniff(path: Path) -> str:
    """``"zip"``, ``"legacy"`` or ``"safetensors"``; raises :class:`CheckpointError` otherwise."""
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.is_dir():
        raise CheckpointError(f"checkpoint path is a directory, not a file: {path}")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes): download it again")
    with path.open("rb") as fh:
        head = fh.read(512)
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        _check_torch_zip(path, size)
        return "zip"
    if head[8:9] == b"{":  # safetensors: u64 little-endian header length, then the JSON header
        if 8 + int.from_bytes(head[:8], "little") <= size:
            return "safetensors"
        if path.suffix == ".safetensors":
            raise CheckpointError(f"checkpoint {path} is truncated ({size} bytes, incomplete safetensors "
                                  "header): download it again")
    if path.suffix == ".safetensors":
        raise CheckpointError(f"{path} is not a valid .safetensors file (bad header; it looks like "
                              f"{_describe_non_checkpoint(head)})")
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "legacy"  # a pickle stream: torch.save(_use_new_zipfile_serialization=False)
    raise CheckpointError(f"{path} is not a PyTorch checkpoint or .safetensors file "
                          f"(it looks like {_describe_non_checkpoint(head)})")


def _check_torch_zip(path: Path, size: int) -> None:
    """Reject truncated zips, zips that are not ``torch.save`` output, and TorchScript archives."""
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError):
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt ({size} bytes, incomplete zip "
                              "archive): download it again") from None
    if any(n.endswith("constants.pkl") or "/code/" in n for n in names):
        raise CheckpointError(f"{path} is a TorchScript archive, not a checkpoint: in a trusted environment "
                              "save its weights with torch.save(torch.jit.load(path).state_dict(), 'w.pth')")
    if not any(n.endswith("data.pkl") for n in names):
        raise CheckpointError(f"{path} is a zip archive but not a PyTorch checkpoint (no data.pkl): if it "
                              "is a zipped download, extract the .pth/.pt/.safetensors file inside first")


def _load_error(path: Path, err: BaseException) -> CheckpointError:
    """One-line :class:`CheckpointError` for an exception raised while unpickling ``path``."""
    first = (str(err).strip().splitlines() or [""])[0][:200]
    low = f"{type(err).__name__} {err}".lower()
    if isinstance(err, EOFError) or any(s in low for s in ("truncated", "ran out of input", "unexpected eof")):
        return CheckpointError(f"checkpoint {path} is truncated: download it again")
    if "pytorchstreamreader" in low or "zip archive" in low or "central directory" in low:
        return CheckpointError(f"checkpoint {path} is corrupt ({first}): download it again")
    if "invalid magic number" in low or "invalid load key" in low:
        return CheckpointError(f"{path} is not a PyTorch checkpoint (unreadable pickle data: {first})")
    if "explicit pickle_module" in low:
        return CheckpointError(f"cannot read {path}: TORCH_FORCE_WEIGHTS_ONLY_LOAD is set, which forbids "
                               "cotviz's restricted unpickler; unset it")
    return CheckpointError(f"cannot read checkpoint {path}: {type(err).__name__}: {first}")


def _torch_load(path: Path) -> tuple[Any, str, frozenset[str]]:
    """Unpickle a ``torch.save`` file without running its code.

    Returns ``(object, loader, neutralized_globals)``.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True), "weights_only", frozenset()
    except pickle.UnpicklingError:
        pass  # a global torch does not allow (official `args`: yacs CfgNode) -> restricted unpickler
    except Exception as err:  # noqa: BLE001 - every failure becomes one CheckpointError line
        raise _load_error(path, err) from err
    restricted = RestrictedPickleModule()
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False, pickle_module=restricted)
    except Exception as err:  # noqa: BLE001
        raise _load_error(path, err) from err
    return obj, "restricted", restricted.neutralized


def _read_safetensors(path: Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    try:
        from safetensors import safe_open
    except ImportError:
        raise CheckpointError(f"reading {path.name} needs the safetensors package: "
                              "pip install safetensors") from None
    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            metadata = dict(fh.metadata() or {})
            tensors = {key: fh.get_tensor(key) for key in fh.keys()}  # noqa: SIM118 - not a dict
    except Exception as err:  # noqa: BLE001 - SafetensorError is not importable by a stable name
        first = (str(err).strip().splitlines() or [""])[0][:200]
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt ({first}): download it again") from err
    return tensors, metadata


# ------------------------------------------------------------------------------------ finding weights


def _module_state_dict(module: InertObject, prefix: str = "") -> dict[str, Tensor]:
    """Parameters and persistent buffers of a pickled ``nn.Module`` (an inert placeholder's state)."""
    state = module.pickled_state if isinstance(module.pickled_state, Mapping) else {}
    out: dict[str, Tensor] = {}
    for name, value in (state.get("_parameters") or {}).items():
        if isinstance(value, Tensor):
            out[prefix + name] = value.detach()
    non_persistent = state.get("_non_persistent_buffers_set") or set()
    for name, value in (state.get("_buffers") or {}).items():
        if isinstance(value, Tensor) and name not in non_persistent:
            out[prefix + name] = value
    for name, child in (state.get("_modules") or {}).items():
        if isinstance(child, InertObject):
            out.update(_module_state_dict(child, f"{prefix}{name}."))
    return out


def _is_pickled_module(obj: Any) -> bool:
    return (isinstance(obj, InertObject) and isinstance(obj.pickled_state, Mapping)
            and "_parameters" in obj.pickled_state and "_modules" in obj.pickled_state)


def _as_state_dict(obj: Any) -> tuple[dict[str, Tensor], str] | None:
    """``obj`` as a flat state_dict (and its kind), or ``None`` if it is not one."""
    if _is_pickled_module(obj):
        sd = _module_state_dict(obj)
        return (sd, "pickled_module") if sd else None
    if (isinstance(obj, Mapping) and not isinstance(obj, InertObject) and obj
            and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items())):
        return {k: (v.detach() if isinstance(v, nn.Parameter) else v) for k, v in obj.items()}, "bare"
    return None


def _count_tensors(obj: Any, depth: int = 0) -> int:
    if isinstance(obj, Tensor):
        return 1
    if depth > 4:
        return 0
    if isinstance(obj, InertObject):
        return _count_tensors(obj.pickled_state, depth + 1) + _count_tensors(dict(obj), depth + 1)
    if isinstance(obj, Mapping):
        return sum(_count_tensors(v, depth + 1) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_count_tensors(v, depth + 1) for v in obj)
    return 0


def _keys_preview(keys: Iterable[Any], limit: int = 6) -> str:
    keys = [str(k) for k in keys]
    return ", ".join(keys[:limit]) + (", ..." if len(keys) > limit else "")


def _select_weights(obj: Any, path: Path, use_ema: bool | None,
                    depth: int = 0) -> tuple[dict[str, Tensor], str, bool, bool]:
    """Find the weights in an unpickled checkpoint.

    Returns ``(state_dict, source, has_ema, used_ema)``.
    """
    found = _as_state_dict(obj)
    if found is not None:
        if use_ema and depth == 0:
            raise CheckpointError(f"{path.name} has no EMA weights (it is a plain state_dict): "
                                  "load it with use_ema=False")
        return found[0], found[1], False, False
    if not isinstance(obj, Mapping) or isinstance(obj, InertObject) or depth >= _MAX_NESTING:
        what = type(obj).__name__ if not isinstance(obj, InertObject) else obj.cotviz_global
        raise CheckpointError(f"{path.name} holds a {what}, not a state_dict; save model.state_dict() instead")
    present = {k for k in (*_EMA_KEYS, *_MAIN_KEYS) if k in obj and _count_tensors(obj[k]) > 0}
    ema_key = next((k for k in _EMA_KEYS if k in present), None)
    main_key = next((k for k in _MAIN_KEYS if k in present), None)
    if use_ema is True and ema_key is None:
        raise CheckpointError(f"{path.name} has no EMA weights (no state_dict_ema; keys: "
                              f"{_keys_preview(obj)}): load it with use_ema=False")
    if use_ema is False and main_key is None and ema_key is not None:
        raise CheckpointError(f"{path.name} holds only EMA weights ({ema_key!r}): load it with use_ema=True "
                              "or leave use_ema unset")
    key = ema_key if (ema_key is not None and use_ema is not False) else main_key
    if key is None:  # an unknown wrapper: accept it only if exactly one entry holds tensors
        holders = [k for k, v in obj.items() if _count_tensors(v) > 0]
        if len(holders) != 1:
            if not holders:
                raise CheckpointError(f"{path.name} contains no tensors (keys: {_keys_preview(obj)}): "
                                      "it is not a weights file")
            raise CheckpointError(f"{path.name} has no state_dict entry (tensors under "
                                  f"{_keys_preview(holders)}): expected 'state_dict' or 'state_dict_ema'")
        key = holders[0]
    sd, inner, _, _ = _select_weights(obj[key], path, None, depth + 1)
    source = str(key) if inner == "bare" else f"{key}/{inner}"
    return sd, source, ema_key is not None, key == ema_key


def _strip_prefixes(sd: dict[str, Tensor]) -> tuple[dict[str, Tensor], tuple[str, ...]]:
    """Remove DataParallel ``module.`` and ``torch.compile`` ``_orig_mod.`` wrappers from the keys."""
    stripped: list[str] = []
    if any("_orig_mod." in k for k in sd):  # torch.compile can wrap the root or any submodule
        sd = {k.replace("._orig_mod.", ".").removeprefix("_orig_mod."): v for k, v in sd.items()}
        stripped.append("_orig_mod.")
    while sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
        stripped.append("module.")
    return sd, tuple(stripped)


def _scalar(value: Any, kind: type) -> Any:
    """``value`` as a plain ``int``/``float`` (numpy and 0-d tensors included), else ``None``."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, Tensor):
        value = value.item() if value.numel() == 1 else None
    try:
        return kind(value)
    except (TypeError, ValueError):
        return None


def read_checkpoint(path: str | Path, *,
                    use_ema: bool | None = None) -> tuple[dict[str, Tensor], CheckpointInfo]:
    """Read a checkpoint file into a flat state_dict, without running any pickled code.

    Args:
        path: ``.pth``/``.pt``/``.pth.tar`` written by ``torch.save`` (zip or legacy format), or a
            ``.safetensors`` file.
        use_ema: ``None`` (default) takes the EMA weights when the file has them -- the official CoTNet
            evaluation uses them -- else the plain ones; ``True`` requires EMA weights; ``False`` takes
            the plain ``state_dict``.

    Returns:
        ``(state_dict, info)``: ``{key: tensor}`` on the CPU with wrapper prefixes stripped, in file order,
        and a :class:`CheckpointInfo`.

    Raises:
        CheckpointError: missing, empty, truncated or non-checkpoint file; no tensors; EMA asked but absent.
    """
    path = Path(path).expanduser()
    kind = _sniff(path)
    metadata: dict[str, str] = {}
    neutralized: frozenset[str] = frozenset()
    if kind == "safetensors":
        obj: Any
        obj, metadata = _read_safetensors(path)
        loader = "safetensors"
        if not obj:
            raise CheckpointError(f"{path.name} contains no tensors: it is not a weights file")
    else:
        obj, loader, neutralized = _torch_load(path)
    sd, source, has_ema, used_ema = _select_weights(obj, path, use_ema)
    sd, stripped = _strip_prefixes(sd)

    top: Mapping[str, Any] = obj if type(obj) is dict or isinstance(obj, OrderedDict) else {}
    if source in ("bare", "pickled_module"):
        top = {}
    arch = top.get("arch", metadata.get("arch"))
    code_exec = tuple(sorted(g for g in neutralized if is_code_execution_global(g)))
    if code_exec:
        warnings.warn(f"{path.name} contains pickled calls to {', '.join(code_exec)} (a tampered or malicious "
                      "file?); cotviz neutralized them and nothing ran", CheckpointSafetyWarning, stacklevel=2)
    info = CheckpointInfo(
        path=path, sha256=_sha256(path), file_format={"zip": "torch-zip", "legacy": "torch-legacy"}.get(kind, kind),
        loader=loader, source=source, has_ema=has_ema, used_ema=used_ema, stripped_prefixes=stripped,
        num_tensors=len(sd), arch=arch if isinstance(arch, str) else None,
        epoch=_scalar(top.get("epoch", metadata.get("epoch")), int),
        metric=_scalar(top.get("metric", metadata.get("metric")), float),
        version=_scalar(top.get("version"), int), metadata=metadata,
        neutralized_globals=tuple(sorted(neutralized)), code_execution_globals=code_exec,
    )
    return sd, info


# ------------------------------------------------------------------------------ matching architectures


@dataclass(frozen=True)
class _Fit:
    """How a checkpoint's keys/shapes compare with a model's."""

    missing: list[str]
    unexpected: list[str]
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]]  # (key, checkpoint shape, model shape)

    @property
    def problem_keys(self) -> set[str]:
        return {*self.missing, *self.unexpected, *(k for k, _, _ in self.mismatched)}


def _compare(ckpt: Shapes, model: Shapes) -> _Fit:
    # Checkpoints from before PyTorch 0.4.1 lack BatchNorm's num_batches_tracked; BN fills it in itself.
    missing = [k for k in model if k not in ckpt and not (
        k.endswith(".num_batches_tracked") and k.removesuffix("num_batches_tracked") + "running_mean" in ckpt)]
    unexpected = [k for k in ckpt if k not in model]
    mismatched = [(k, ckpt[k], model[k]) for k in model if k in ckpt and ckpt[k] != model[k]]
    return _Fit(missing, unexpected, mismatched)


def _shapes(sd: Mapping[str, Tensor]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in sd.items()}


def _score(ckpt: Shapes, model: Shapes) -> float:
    """Fraction of the union of keys present in both with the same shape (1.0 = identical layout)."""
    same = sum(1 for k, shape in ckpt.items() if model.get(k) == shape)
    union = len(ckpt.keys() | model.keys())
    return same / union if union else 0.0


def _registry_shapes() -> Iterator[tuple[str, dict[str, tuple[int, ...]]]]:
    """``(name, key -> shape)`` of every registered variant, built on the meta device (no memory)."""
    try:
        from cotviz.models.registry import create_model, list_models
    except ImportError:  # pragma: no cover - the registry is part of the package
        return
    for name in list_models():
        with torch.device("meta"):
            model = create_model(name)
        yield name, _shapes(model.state_dict())


def _rank(ckpt: Shapes, candidates: Mapping[str, Shapes] | None,
          exhaustive: bool) -> list[tuple[str, float, Shapes]]:
    items = candidates.items() if candidates is not None else _registry_shapes()
    scored: list[tuple[str, float, Shapes]] = []
    for name, shapes in items:
        scored.append((name, _score(ckpt, shapes), shapes))
        if scored[-1][1] == 1.0 and not exhaustive:
            break
    return sorted(scored, key=lambda s: -s[1])


def rank_architectures(state_dict: Mapping[str, Tensor] | Shapes, *, candidates: Mapping[str, Shapes] | None = None,
                       top: int = 3, exhaustive: bool = False) -> list[tuple[str, float]]:
    """Registered variants ordered by how well their ``state_dict`` layout matches ``state_dict``.

    Args:
        state_dict: ``{key: tensor}`` or ``{key: shape}``.
        candidates: ``{name: {key: shape}}``; default: every registered model, built on the meta device.
        top: how many to return.
        exhaustive: score every candidate; by default the search stops at the first perfect match
            (building the registered models is the slow part).

    Returns:
        ``[(name, score), ...]``, best first; ``score`` is the fraction of the union of keys that exist in
        both with equal shapes.
    """
    ckpt = {k: (tuple(v.shape) if isinstance(v, Tensor) else tuple(v)) for k, v in state_dict.items()}
    return [(name, score) for name, score, _ in _rank(ckpt, candidates, exhaustive)[:top]]


def _fmt_shape(shape: tuple[int, ...]) -> str:
    return "[" + ", ".join(map(str, shape)) + "]"


def _classifier_name(model: nn.Module) -> str:
    cfg = getattr(model, "pretrained_cfg", None)
    name = getattr(cfg, "classifier", None)
    if isinstance(name, str):
        return name
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    return linears[-1] if linears else "fc"


def _is_classifier_key(key: str, classifier: str) -> bool:
    return key.startswith(classifier + ".")


def _num_classes(shapes: Shapes, classifier: str) -> int:
    shape = shapes.get(f"{classifier}.weight")
    return shape[0] if shape else 0


def _classes_error(path: Path, model: nn.Module, ckpt: Shapes, target: Shapes, classifier: str) -> CheckpointError:
    n_ckpt, n_model = _num_classes(ckpt, classifier), _num_classes(target, classifier)
    name = getattr(model, "model_name", None)
    call = f"create_model({name!r}, num_classes={n_ckpt})" if name else f"num_classes={n_ckpt}"
    shape = ckpt.get(f"{classifier}.weight")
    where = f" ({classifier}.weight {_fmt_shape(shape)})" if shape else f" (no {classifier} weights)"
    return CheckpointError(
        f"{path.name} has {n_ckpt} classes{where} but the model has {n_model}: build it with {call} "
        f"(CLI: --num-classes {n_ckpt}), or load with strict=False to keep the model's own classifier")


def _architecture_error(path: Path, model: nn.Module, fit: _Fit, ckpt: Shapes, classifier: str,
                        candidates: Mapping[str, Shapes] | None) -> CheckpointError:
    name = getattr(model, "model_name", None)
    what = f"model {name!r}" if name else f"this {type(model).__name__}"
    parts = []
    if fit.missing:
        parts.append(f"{len(fit.missing)} missing keys (e.g. {', '.join(fit.missing[:_EXAMPLES])})")
    if fit.unexpected:
        parts.append(f"{len(fit.unexpected)} unexpected keys (e.g. {', '.join(fit.unexpected[:_EXAMPLES])})")
    if fit.mismatched:
        shown = ", ".join(f"{k} {_fmt_shape(a)} vs {_fmt_shape(b)}" for k, a, b in fit.mismatched[:2])
        parts.append(f"{len(fit.mismatched)} shape mismatches (checkpoint vs model, e.g. {shown})")
    ranked = _rank(ckpt, candidates, exhaustive=False)
    if ranked and ranked[0][1] >= 0.5 and ranked[0][0] != name:
        best, score, shapes = ranked[0]
        n_ckpt = _num_classes(ckpt, classifier)
        classes, flag = ("", "") if n_ckpt == _num_classes(shapes, classifier) else (
            f"num_classes={n_ckpt}, ", f" --num-classes {n_ckpt}")
        hint = (f"; it looks like {best} ({score:.0%} of keys match): use create_model({best!r}, {classes}"
                f"weights=...) (CLI: --model {best}{flag})")
    elif ranked and ranked[0][0] != name:
        hint = f"; it matches no registered model (closest: {ranked[0][0]}, {ranked[0][1]:.0%} of keys)"
    else:
        hint = ""
    return CheckpointError(f"{path.name} does not fit {what}: {'; '.join(parts)}{hint}")


def load_checkpoint(model: nn.Module, path: str | Path, *, use_ema: bool | None = None, strict: bool = True,
                    candidates: Mapping[str, Shapes] | None = None) -> CheckpointInfo:
    """Load a checkpoint into ``model`` in place, safely (no pickled code runs).

    Args:
        model: the model to fill; on any device, including ``meta`` (the tensors are then assigned,
            cast to the model's dtypes).
        path: see :func:`read_checkpoint`.
        use_ema: see :func:`read_checkpoint` (default: EMA weights when present, as the official eval).
        strict: ``True``: every key and shape must match. ``False``: load the tensors whose key and shape
            match and report the rest in ``info.skipped_keys`` / ``info.missing_keys`` (e.g. a checkpoint
            with another number of classes: everything but the classifier is loaded).
        candidates: ``{name: {key: shape}}`` to look up the closest architecture in error messages;
            default: the registered models (built on the meta device, only when an error is raised).

    Returns:
        The :class:`CheckpointInfo` of the file, with ``skipped_keys``/``missing_keys`` filled in.

    Raises:
        CheckpointError: unreadable file (see :func:`read_checkpoint`); another architecture (names the
            closest registered variant and the first differing keys); another number of classes (says
            how to build the model to match); with ``strict=False``, no tensor matching at all.
    """
    sd, info = read_checkpoint(path, use_ema=use_ema)
    target_sd = model.state_dict()
    ckpt, target = _shapes(sd), _shapes(target_sd)
    fit = _compare(ckpt, target)
    classifier = _classifier_name(model)
    # "Another number of classes": only classifier keys differ, and only in their first (class) dimension.
    only_classifier = all(_is_classifier_key(k, classifier) for k in fit.problem_keys) and all(
        a[1:] == b[1:] for _, a, b in fit.mismatched)
    if fit.problem_keys and strict:
        if only_classifier:
            raise _classes_error(info.path, model, ckpt, target, classifier)
        raise _architecture_error(info.path, model, fit, ckpt, classifier, candidates)
    skip = set(fit.unexpected) | {k for k, _, _ in fit.mismatched}
    loadable = {k: v for k, v in sd.items() if k not in skip}
    if not loadable:
        raise _architecture_error(info.path, model, fit, ckpt, classifier, candidates)

    left = tuple(k for k in target if k not in loadable and (k in fit.missing or k in skip))
    on_meta = any(t.is_meta for t in target_sd.values())
    if on_meta:
        if left:
            raise CheckpointError(f"cannot partially load {info.path.name} into a model on the meta device "
                                  f"({len(left)} tensors would stay unmaterialised, e.g. {left[0]}): build it "
                                  "on the CPU first")
        # assign=True keeps the checkpoint's dtypes: cast to the model's first.
        loadable = {k: v.to(dtype=target_sd[k].dtype) for k, v in loadable.items()}
    model.load_state_dict(loadable, strict=False, assign=on_meta)  # keys/shapes were checked above
    return replace(info, skipped_keys=tuple(k for k in sd if k in skip), missing_keys=left)
