"""Safe checkpoint reading and loading: official CoTNet training checkpoints, state_dicts, safetensors.

A checkpoint from the internet is untrusted. Reading one never runs pickled code, never changes an object the
file did not create, and never builds much more than the file holds:

* the container is checked before anything is unpickled: zip archives (``torch.save`` >= 1.6) for their
  entry count, for compressed entries that expand past the file (zip bombs) and for a pickle larger than the
  file size allows; TorchScript and tar archives are refused; safetensors headers are bounded;
* every torch-format file is then unpickled by :class:`cotviz.models._safe_pickle.RestrictedPickleModule`
  (through ``torch.load(weights_only=False, pickle_module=...)``, so torch still reads the storages):
  allowlisted data types and tensor-rebuild functions only, every call checked, every mutation limited to the
  objects the load created, and a budget of Python objects proportional to the file size. Unknown globals
  (the official checkpoints pickle ``args``, a yacs ``CfgNode``) become inert placeholders; a file that calls
  code-executing globals (``os.system``, ``builtins.eval``, ...) has those calls neutralized and a
  :class:`CheckpointSafetyWarning` says so; a file that tries more (calling what a neutralized call returned,
  modifying a class, building gigabytes) is refused with one line that says what it tried. ``weights_only=False``
  with the stock ``pickle`` is never used, and torch's own ``weights_only`` loader is not either: it builds
  whatever its allowed types can build (``bytearray(5 GiB)`` from 925 bytes).

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

Loading (:func:`load_checkpoint`) also refuses tensors without data (meta device), sparse/quantized/complex
tensors where the model has dense real ones, and -- unless ``allow_nonfinite=True`` -- NaN/Inf weights.
"""

from __future__ import annotations

import encodings.cp437  # noqa: F401  (zipfile decodes non-UTF-8 entry names with it: imported here, not by a file)
import functools
import hashlib
import io
import itertools
import struct
import warnings
import zipfile
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any

import torch
from torch import Tensor, nn

from cotviz.errors import CheckpointError
from cotviz.models._safe_pickle import (
    InertObject,
    RefusedPickle,
    RestrictedPickleModule,
    budget_for,
    is_code_execution_global,
)
from cotviz.resources import format_bytes

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
_MAX_ZIP_ENTRIES = 100_000  # one per storage: se_cotnetd_270 with optimizer state and EMA has ~10k
_MAX_ZIP_RATIO = 4  # uncompressed / file size: torch.save stores; deflated weights shrink by ~10%
_MAX_MODULE_DEPTH = 64  # nesting of a pickled nn.Module's submodules
_CODE_ADVICE = "a malicious or tampered file: do not use it"


class CheckpointSafetyWarning(UserWarning):
    """The checkpoint references code-executing callables (neutralized; nothing ran)."""


@dataclass(frozen=True)
class CheckpointInfo:
    """What :func:`read_checkpoint` found and :func:`load_checkpoint` did.

    Attributes:
        path: the file read.
        sha256: hex SHA-256 of the file (to compare against a published hash), computed on first access
            (hashing is a fifth of a load, so it is done only when asked); raises :class:`CheckpointError` if
            the file changed since it was read.
        file_format: ``"torch-zip"`` (``torch.save`` >= 1.6), ``"torch-legacy"`` or ``"safetensors"``.
        loader: ``"restricted"`` (cotviz's bounded restricted unpickler, every torch-format file) or
            ``"safetensors"``.
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
        nonfinite_keys: loaded tensors holding NaN/Inf values (only with ``allow_nonfinite=True``);
            ``nonfinite_values`` counts those values.
    """

    path: Path
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
    nonfinite_keys: tuple[str, ...] = ()
    nonfinite_values: int = 0
    file_stat: tuple[int, int] = field(default=(0, 0), repr=False)  # (size, mtime_ns) when read

    @functools.cached_property
    def sha256(self) -> str:
        """Hex SHA-256 of the file, hashed now (once); the file must be the one that was read."""
        before = _file_stat(self.path)
        digest = _sha256(self.path)
        if before != self.file_stat or _file_stat(self.path) != self.file_stat:
            raise CheckpointError(f"{self.path} changed since it was read: its SHA-256 would not describe the "
                                  "weights that were loaded; load it again")
        return digest


# ----------------------------------------------------------------------------------------------- files


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _file_stat(path: Path) -> tuple[int, int]:
    try:
        st = path.stat()
    except OSError:
        return (-1, -1)
    return (st.st_size, st.st_mtime_ns)


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
    if _is_tar(head):
        return "a tar archive (extract it first)"
    try:
        head[:256].decode("utf-8")
    except UnicodeDecodeError:
        return "unrecognised binary data"
    return "unrecognised binary data" if b"\x00" in head else "a text file"


def _is_tar(head: bytes) -> bool:
    return len(head) > 262 and head[257:262] == b"ustar"


def _sniff(path: Path) -> tuple[str, int, dict[str, int] | None]:
    """``(kind, size, zip records)``: kind ``"zip"``, ``"legacy"`` or ``"safetensors"``; raises
    :class:`CheckpointError` for anything else (and for zip archives that are not bounded checkpoints)."""
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
        return "zip", size, _check_torch_zip(path, size)
    if head[8:9] == b"{":  # safetensors: u64 little-endian header length, then the JSON header
        header = int.from_bytes(head[:8], "little")
        if 8 + header <= size:
            if header > budget_for(size):
                raise CheckpointError(f"{path.name} has a {format_bytes(header)} safetensors header, more than a "
                                      f"{format_bytes(size)} file may hold: it is corrupt or malicious")
            return "safetensors", size, None
        if path.suffix == ".safetensors":
            raise CheckpointError(f"checkpoint {path} is truncated ({size} bytes, incomplete safetensors "
                                  "header): download it again")
    if path.suffix == ".safetensors":
        raise CheckpointError(f"{path} is not a valid .safetensors file (bad header; it looks like "
                              f"{_describe_non_checkpoint(head)})")
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05") and not _is_tar(head):
        return "legacy", size, None  # a pickle stream: torch.save(_use_new_zipfile_serialization=False)
    raise CheckpointError(f"{path} is not a PyTorch checkpoint or .safetensors file "
                          f"(it looks like {_describe_non_checkpoint(head)})")


def _zip_entry_count(fh: IO[bytes], size: int) -> int | None:
    """Entries the zip's end-of-central-directory record declares (zip64 included), or None if unreadable.

    Read before ``zipfile`` parses the directory: it builds a ~0.5 KiB object per entry, so a 46 MB file of
    empty entries would take ~500 MB."""
    tail_size = min(size, 22 + 0xFFFF)
    fh.seek(size - tail_size)
    tail = fh.read(tail_size)
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or at + 22 > len(tail):
        return None
    entries = struct.unpack("<H", tail[at + 10:at + 12])[0]
    if entries != 0xFFFF or at < 20 or tail[at - 20:at - 16] != b"PK\x06\x07":
        return int(entries)
    (offset,) = struct.unpack("<Q", tail[at - 12:at - 4])  # zip64 locator -> zip64 end of central directory
    if offset + 56 > size:
        return None
    fh.seek(offset)
    record = fh.read(56)
    return int(struct.unpack("<Q", record[32:40])[0]) if record[:4] == b"PK\x06\x06" else None


def _check_torch_zip(path: Path, size: int) -> dict[str, int]:
    """Refuse truncated zips, zips that are not ``torch.save`` output, TorchScript archives, and archives
    that would expand past their size; return ``{record name relative to the archive root: size}``."""
    corrupt = CheckpointError(f"checkpoint {path} is truncated or corrupt ({size} bytes, incomplete zip "
                              "archive): download it again")
    try:
        with path.open("rb") as fh:
            entries = _zip_entry_count(fh, size)
        if entries is not None and entries > _MAX_ZIP_ENTRIES:
            raise CheckpointError(f"{path.name} is a zip archive of {entries:,} entries, more than any checkpoint "
                                  f"has (at most {_MAX_ZIP_ENTRIES:,}): it is not a weights file")
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
    except CheckpointError:
        raise
    except Exception:  # noqa: BLE001 - BadZipFile, NotImplementedError (zip version), OSError, struct.error, ...
        raise corrupt from None
    names = [i.filename for i in infos]
    if len(set(names)) != len(names):  # zipfile and torch's reader may each take another copy
        raise CheckpointError(f"{path.name} is a zip archive with duplicate entries (torch.save writes each once): "
                              "a tampered or broken file")
    if any(n.endswith("constants.pkl") or "/code/" in n for n in names):
        raise CheckpointError(f"{path} is a TorchScript archive, not a checkpoint: in a trusted environment "
                              "save its weights with torch.save(torch.jit.load(path).state_dict(), 'w.pth')")
    expanded = sum(i.file_size for i in infos)
    if expanded > _MAX_ZIP_RATIO * size + (1 << 20):
        raise CheckpointError(f"{path.name} expands to {format_bytes(expanded)} from {format_bytes(size)} "
                              "(compressed entries; torch.save never compresses): a zip bomb, refused")
    root = names[0].split("/", 1)[0] + "/" if names and "/" in names[0] else None
    records = {n[len(root):]: i.file_size for n, i in zip(names, infos, strict=True)
               if root is not None and n.startswith(root)}
    if "data.pkl" not in records:
        raise CheckpointError(f"{path} is a zip archive but not a PyTorch checkpoint (no data.pkl): if it "
                              "is a zipped download, extract the .pth/.pt/.safetensors file inside first")
    if records["data.pkl"] > budget_for(size):
        raise CheckpointError(f"{path.name} holds a {format_bytes(records['data.pkl'])} pickle of Python objects, "
                              f"more than a {format_bytes(size)} checkpoint may (at most "
                              f"{format_bytes(budget_for(size))}): a weights file holds tensors, not that much "
                              "Python data (a broken or malicious file?)")
    return records


def _load_error(path: Path, err: BaseException) -> CheckpointError:
    """One-line :class:`CheckpointError` for an exception raised while unpickling ``path``."""
    if isinstance(err, RefusedPickle):
        return _refusal(path, err)
    first = (str(err).strip().splitlines() or [""])[0][:200]
    low = f"{type(err).__name__} {err}".lower()
    if isinstance(err, EOFError) or any(s in low for s in ("truncated", "ran out of input", "unexpected eof")):
        return CheckpointError(f"checkpoint {path} is truncated: download it again")
    if "wrong byte size" in low or "does not match expected size" in low:
        return CheckpointError(f"checkpoint {path} is corrupt (a tensor storage's recorded size does not match "
                               "its data): download it again")
    if "pytorchstreamreader" in low or "zip archive" in low or "central directory" in low:
        return CheckpointError(f"checkpoint {path} is corrupt ({first}): download it again")
    if "invalid magic number" in low or "invalid load key" in low:
        return CheckpointError(f"{path} is not a PyTorch checkpoint (unreadable pickle data: {first})")
    if "explicit pickle_module" in low:
        return CheckpointError(f"cannot read {path}: TORCH_FORCE_WEIGHTS_ONLY_LOAD is set, which forbids "
                               "cotviz's restricted unpickler; unset it")
    return CheckpointError(f"cannot read checkpoint {path}: {type(err).__name__}: {first}")


def _refusal(path: Path, err: RefusedPickle) -> CheckpointError:
    """The one line for a file the restricted unpickler refused (what it tried, and that nothing ran)."""
    if err.kind in ("code", "tamper"):
        return CheckpointError(f"{path.name} {err} ({_CODE_ADVICE})")
    if err.kind == "budget":
        return CheckpointError(f"{path.name} {err}: refused before building it (a weights file holds tensors, "
                               "not that much Python data: a broken or malicious file?)")
    if err.kind == "corrupt":
        return CheckpointError(f"checkpoint {path} is corrupt ({err}): download it again")
    return CheckpointError(f"{path.name} {err}: it is not a checkpoint torch.save wrote (a tampered file?)")


class _Stream:
    """A file as a plain stream (no ``fileno``): torch then reads a legacy checkpoint through Python calls,
    never tries it as a tar archive (whose loader extracts members to disk) and never reads it directly."""

    def __init__(self, fh: IO[bytes]) -> None:
        self._fh = fh

    def read(self, n: int = -1) -> bytes:
        return self._fh.read(n)

    def readline(self, limit: int = -1) -> bytes:
        return self._fh.readline(limit)

    def readinto(self, buf: Any) -> int | None:
        return self._fh.readinto(buf)  # type: ignore[attr-defined]

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._fh.seek(offset, whence)

    def tell(self) -> int:
        return self._fh.tell()

    def fileno(self) -> int:
        raise io.UnsupportedOperation("fileno")


def _torch_load(path: Path, kind: str, size: int,
                records: Mapping[str, int] | None) -> tuple[Any, str, frozenset[str]]:
    """Unpickle a ``torch.save`` file with the bounded restricted unpickler.

    Returns ``(object, loader, neutralized_globals)``.
    """
    restricted = RestrictedPickleModule(size, records=records)
    try:
        if kind == "legacy":
            with path.open("rb") as fh:
                obj = torch.load(_Stream(fh), map_location="cpu", weights_only=False,  # type: ignore[arg-type]
                                 pickle_module=restricted)
        else:
            obj = torch.load(path, map_location="cpu", weights_only=False, pickle_module=restricted)
        restricted.validate_sparse()
    except Exception as err:  # noqa: BLE001 - every failure becomes one CheckpointError line
        raise _load_error(path, err) from (None if isinstance(err, RefusedPickle) else err)
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


def _module_state_dict(module: InertObject, path: Path) -> dict[str, Tensor]:
    """Parameters and persistent buffers of a pickled ``nn.Module`` (an inert placeholder's state), in
    ``state_dict`` order; each submodule visited once (a pickled module may reference itself)."""
    out: dict[str, Tensor] = {}
    seen: set[int] = set()

    def visit(mod: InertObject, prefix: str, depth: int) -> None:
        if id(mod) in seen:
            return
        if depth > _MAX_MODULE_DEPTH:
            raise CheckpointError(f"{path.name} nests pickled modules more than {_MAX_MODULE_DEPTH} levels deep: "
                                  "it is not a model")
        seen.add(id(mod))
        state = mod.pickled_state if isinstance(mod.pickled_state, Mapping) else {}
        params, buffers, children = (state.get(k) for k in ("_parameters", "_buffers", "_modules"))
        for name, value in (params.items() if isinstance(params, Mapping) else ()):
            if isinstance(name, str) and isinstance(value, Tensor):
                out[prefix + name] = value.detach()
        non_persistent = state.get("_non_persistent_buffers_set")
        skip = non_persistent if isinstance(non_persistent, (set, frozenset)) else set()
        for name, value in (buffers.items() if isinstance(buffers, Mapping) else ()):
            if isinstance(name, str) and isinstance(value, Tensor) and name not in skip:
                out[prefix + name] = value
        for name, child in (children.items() if isinstance(children, Mapping) else ()):
            if isinstance(name, str) and isinstance(child, InertObject):
                visit(child, f"{prefix}{name}.", depth + 1)

    visit(module, "", 0)
    return out


def _is_pickled_module(obj: Any) -> bool:
    return (isinstance(obj, InertObject) and isinstance(obj.pickled_state, Mapping)
            and "_parameters" in obj.pickled_state and "_modules" in obj.pickled_state)


def _as_state_dict(obj: Any, path: Path) -> tuple[dict[str, Tensor], str] | None:
    """``obj`` as a flat state_dict (and its kind), or ``None`` if it is not one."""
    if _is_pickled_module(obj):
        sd = _module_state_dict(obj, path)
        return (sd, "pickled_module") if sd else None
    if (isinstance(obj, Mapping) and not isinstance(obj, InertObject) and obj
            and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items())):
        return {k: (v.detach() if isinstance(v, nn.Parameter) else v) for k, v in obj.items()}, "bare"
    return None


class _TensorFinder:
    """Whether pickled data holds a tensor, each object visited once over all queries (the pickle's memo can
    share one container a million times; a naive walk per key is quadratic, a deep one exponential)."""

    def __init__(self) -> None:
        self._known: dict[int, bool] = {}
        self._keep: list[Any] = []

    @staticmethod
    def _children(obj: Any) -> Iterable[Any]:
        if isinstance(obj, InertObject):
            return itertools.chain((obj.pickled_state, obj.pickled_args, obj.pickled_items), obj.values())
        if isinstance(obj, Mapping):
            return obj.values()
        if isinstance(obj, (list, tuple, set, frozenset)):
            return obj
        return ()

    def __call__(self, root: Any) -> bool:
        if isinstance(root, Tensor):
            return True
        if id(root) in self._known:
            return self._known[id(root)]
        stack: list[tuple[Any, Iterator[Any]]] = [(root, iter(self._children(root)))]
        self._known[id(root)] = False  # in progress (a cycle back to it finds nothing new)
        self._keep.append(root)
        while stack:
            obj, children = stack[-1]
            for child in children:
                if isinstance(child, Tensor):
                    found = True
                elif id(child) in self._known:
                    found = self._known[id(child)]
                else:
                    self._known[id(child)] = False
                    self._keep.append(child)
                    stack.append((child, iter(self._children(child))))
                    break
                if found:  # mark the whole path: every container on the stack holds a tensor
                    for holder, _ in stack:
                        self._known[id(holder)] = True
                    return True
            else:
                stack.pop()
        return False


def _short(key: Any, limit: int = 60) -> str:
    """A key for a message: strings clipped, anything else by its type (no repr of hostile data)."""
    if isinstance(key, str):
        return key if len(key) <= limit else key[:limit] + "..."
    return f"<{type(key).__name__}>"


def _keys_preview(keys: Iterable[Any], limit: int = 6) -> str:
    shown = [_short(k) for k in itertools.islice(keys, limit + 1)]
    return ", ".join(shown[:limit]) + (", ..." if len(shown) > limit else "")


def _select_weights(obj: Any, path: Path, use_ema: bool | None, holds: _TensorFinder,
                    depth: int = 0) -> tuple[dict[str, Tensor], str, bool, bool]:
    """Find the weights in an unpickled checkpoint.

    Returns ``(state_dict, source, has_ema, used_ema)``.
    """
    found = _as_state_dict(obj, path)
    if found is not None:
        if use_ema is True:
            raise CheckpointError(f"{path.name} has no EMA weights (it is a single state_dict): "
                                  "load it with use_ema=False")
        return found[0], found[1], False, False
    if not isinstance(obj, Mapping) or isinstance(obj, InertObject) or depth >= _MAX_NESTING:
        what = type(obj).__name__ if not isinstance(obj, InertObject) else obj.cotviz_global
        raise CheckpointError(f"{path.name} holds a {what}, not a state_dict; save model.state_dict() instead")
    present = {k for k in (*_EMA_KEYS, *_MAIN_KEYS) if k in obj and holds(obj[k])}
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
        holders = [k for k, v in obj.items() if holds(v)]
        if len(holders) != 1:
            if not holders:
                raise CheckpointError(f"{path.name} contains no tensors (keys: {_keys_preview(obj)}): "
                                      "it is not a weights file")
            raise CheckpointError(f"{path.name} has no state_dict entry (tensors under "
                                  f"{_keys_preview(holders)}): expected 'state_dict' or 'state_dict_ema'")
        key = holders[0]
    sd, inner, _, _ = _select_weights(obj[key], path, None, holds, depth + 1)
    source = _short(key) if inner == "bare" else f"{_short(key)}/{inner}"
    return sd, source, ema_key is not None, key == ema_key


def _strip_prefixes(sd: dict[str, Tensor]) -> tuple[dict[str, Tensor], tuple[str, ...]]:
    """Remove DataParallel ``module.`` and ``torch.compile`` ``_orig_mod.`` wrappers from the keys."""
    stripped: list[str] = []
    if any("_orig_mod." in k for k in sd):  # torch.compile can wrap the root or any submodule
        sd = {k.replace("._orig_mod.", ".").removeprefix("_orig_mod."): v for k, v in sd.items()}
        stripped.append("_orig_mod.")
    if sd:  # repeated wrappers: count the common leading "module." once per key (linear in the key lengths)
        def depth(key: str) -> int:
            n = 0
            while key.startswith("module.", 7 * n):
                n += 1
            return n

        common = min(depth(k) for k in sd)
        if common:
            sd = {k[7 * common:]: v for k, v in sd.items()}
            stripped.extend(["module."] * common)
    return sd, tuple(stripped)


def _scalar(value: Any, kind: type) -> Any:
    """``value`` as a plain ``int``/``float`` (numpy and 0-d tensors included), else ``None``."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        if isinstance(value, Tensor):
            value = value.item() if value.numel() == 1 else None
        return kind(value)
    except (TypeError, ValueError, OverflowError, RuntimeError):
        return None


def _no_meta(sd: Mapping[str, Tensor], path: Path) -> None:
    meta = [k for k, v in sd.items() if v.is_meta]
    if meta:
        raise CheckpointError(f"{path.name} holds {len(meta)} tensors without data (on the meta device, e.g. "
                              f"{_keys_preview(meta, _EXAMPLES)}): it was saved from a model that was never "
                              "materialised; save the state_dict of a model with real weights")


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
        and a :class:`CheckpointInfo` (``info.sha256`` hashes the file when first asked for).

    Raises:
        CheckpointError: missing, empty, truncated or non-checkpoint file; a file that tries to run code,
            to change objects it did not create or to build far more Python data than its size; tensors
            without data (meta); no tensors; EMA asked but absent.
    """
    path = Path(path).expanduser()
    stat = _file_stat(path)
    kind, size, records = _sniff(path)
    metadata: dict[str, str] = {}
    neutralized: frozenset[str] = frozenset()
    if kind == "safetensors":
        obj: Any
        obj, metadata = _read_safetensors(path)
        loader = "safetensors"
        if not obj:
            raise CheckpointError(f"{path.name} contains no tensors: it is not a weights file")
    else:
        obj, loader, neutralized = _torch_load(path, kind, size, records)
    sd, source, has_ema, used_ema = _select_weights(obj, path, use_ema, _TensorFinder())
    sd, stripped = _strip_prefixes(sd)
    _no_meta(sd, path)

    top: Mapping[str, Any] = obj if type(obj) is dict or isinstance(obj, OrderedDict) else {}
    if source in ("bare", "pickled_module"):
        top = {}
    arch = top.get("arch", metadata.get("arch"))
    code_exec = tuple(sorted(g for g in neutralized if is_code_execution_global(g)))
    if code_exec:
        warnings.warn(f"{path.name} contains pickled calls to {', '.join(code_exec)} (a tampered or malicious "
                      "file?); cotviz neutralized them and nothing ran", CheckpointSafetyWarning, stacklevel=2)
    info = CheckpointInfo(
        path=path, file_format={"zip": "torch-zip", "legacy": "torch-legacy"}.get(kind, kind),
        loader=loader, source=source, has_ema=has_ema, used_ema=used_ema, stripped_prefixes=stripped,
        num_tensors=len(sd), arch=arch if isinstance(arch, str) else None,
        epoch=_scalar(top.get("epoch", metadata.get("epoch")), int),
        metric=_scalar(top.get("metric", metadata.get("metric")), float),
        version=_scalar(top.get("version"), int), metadata=metadata,
        neutralized_globals=tuple(sorted(neutralized)), code_execution_globals=code_exec, file_stat=stat,
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


def _rank(ckpt: Shapes, candidates: Mapping[str, Shapes] | None,
          exhaustive: bool) -> list[tuple[str, float, Shapes]]:
    scored: list[tuple[str, float, Shapes]] = []
    for name, shapes in (candidates.items() if candidates is not None else ()):
        scored.append((name, _score(ckpt, shapes), shapes))
        if scored[-1][1] == 1.0 and not exhaustive:
            break
    return sorted(scored, key=lambda s: -s[1])


def rank_architectures(state_dict: Mapping[str, Tensor] | Shapes, *, candidates: Mapping[str, Shapes],
                       top: int = 3, exhaustive: bool = False) -> list[tuple[str, float]]:
    """Candidate architectures ordered by how well their ``state_dict`` layout matches ``state_dict``.

    Args:
        state_dict: ``{key: tensor}`` or ``{key: shape}``.
        candidates: ``{name: {key: shape}}``, e.g. :func:`cotviz.models.registry.registered_shapes` (every
            registered model, each built on the meta device when first looked at).
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
    return "[" + ", ".join(map(str, shape[:8])) + (", ...]" if len(shape) > 8 else "]")


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
        parts.append(f"{len(fit.missing)} missing keys (e.g. {_keys_preview(fit.missing, _EXAMPLES)})")
    if fit.unexpected:
        parts.append(f"{len(fit.unexpected)} unexpected keys (e.g. {_keys_preview(fit.unexpected, _EXAMPLES)})")
    if fit.mismatched:
        shown = ", ".join(f"{_short(k)} {_fmt_shape(a)} vs {_fmt_shape(b)}" for k, a, b in fit.mismatched[:2])
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


def _check_loadable(loadable: Mapping[str, Tensor], target: Mapping[str, Tensor], path: Path) -> None:
    """Every tensor can be copied into its model tensor as values: dense, real where the model is real."""
    for key, value in loadable.items():
        into = target[key]
        if value.layout != torch.strided or value.is_quantized:
            kind = "quantized" if value.is_quantized else str(value.layout).removeprefix("torch.")
            raise CheckpointError(f"{path.name} stores {_short(key)} as a {kind} tensor, but the model's is dense: "
                                  "save the state_dict of a dense float model")
        if value.is_complex() and not into.is_complex():
            raise CheckpointError(f"{path.name} stores {_short(key)} as complex ({value.dtype}), but the model's is "
                                  f"{into.dtype}: it is not a weights file for this model")


def _nonfinite(loadable: Mapping[str, Tensor]) -> tuple[int, tuple[str, ...]]:
    """``(values, keys)``: how many NaN/Inf values the floating-point tensors hold, and which tensors."""
    total, keys = 0, []
    for key, value in loadable.items():
        if value.is_floating_point() or value.is_complex():
            bad = int(value.numel() - torch.isfinite(value).sum().item())
            if bad:
                total += bad
                keys.append(key)
    return total, tuple(keys)


def load_checkpoint(model: nn.Module, path: str | Path, *, use_ema: bool | None = None, strict: bool = True,
                    candidates: Mapping[str, Shapes] | None = None,
                    allow_nonfinite: bool = False) -> CheckpointInfo:
    """Load a checkpoint into ``model`` in place, safely (no pickled code runs).

    Args:
        model: the model to fill; on any device, including ``meta`` (the tensors are then assigned,
            cast to the model's dtypes).
        path: see :func:`read_checkpoint`.
        use_ema: see :func:`read_checkpoint` (default: EMA weights when present, as the official eval).
        strict: ``True``: every key and shape must match. ``False``: load the tensors whose key and shape
            match and report the rest in ``info.skipped_keys`` / ``info.missing_keys`` (e.g. a checkpoint
            with another number of classes: everything but the classifier is loaded).
        candidates: ``{name: {key: shape}}`` to name the closest architecture in error messages, e.g.
            :func:`cotviz.models.registry.registered_shapes` (``create_model(weights=...)`` passes it);
            ``None``: no suggestion.
        allow_nonfinite: load weights that hold NaN/Inf values (refused by default: a diverged training run
            or a corrupt file gives maps of nothing); ``info.nonfinite_keys`` then lists them.

    Returns:
        The :class:`CheckpointInfo` of the file, with ``skipped_keys``/``missing_keys`` filled in.

    Raises:
        CheckpointError: unreadable or unsafe file (see :func:`read_checkpoint`); another architecture (names
            the closest candidate and the first differing keys); another number of classes (says how to build
            the model to match); with ``strict=False``, no tensor matching at all; sparse, quantized or complex
            tensors for dense real weights; NaN/Inf values (unless ``allow_nonfinite``). The model is left
            unchanged when an error is raised.
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
    _check_loadable(loadable, target_sd, info.path)
    bad_values, bad_keys = _nonfinite(loadable)
    if bad_values and not allow_nonfinite:
        raise CheckpointError(f"{info.path.name} holds {bad_values:,} non-finite values (NaN/Inf) in "
                              f"{len(bad_keys)} tensors (e.g. {_keys_preview(bad_keys, _EXAMPLES)}): broken weights "
                              "(a diverged training run or a corrupt file); load with allow_nonfinite=True to use "
                              "them anyway")

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
    return replace(info, skipped_keys=tuple(k for k in sd if k in skip), missing_keys=left,
                   nonfinite_keys=bad_keys, nonfinite_values=bad_values)
