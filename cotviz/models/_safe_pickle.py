"""A bounded, restricted ``pickle_module`` for ``torch.load``: an untrusted checkpoint never runs code, never
changes an object it did not create, and never builds more Python data than its size justifies.

Why: the official CoTNet training checkpoints (timm ``CheckpointSaver``) pickle ``args`` -- a yacs
``CfgNode`` (a ``dict`` subclass) -- next to the weights. ``torch.load(weights_only=True)`` refuses such a
file; ``weights_only=False`` with the stock ``pickle`` would import and call whatever the file names
(``os.system``); and torch's own allowlisting loader still builds whatever the allowed types can build: a
925-byte file asking for ``bytearray(5 GiB)`` reached 5.3 GiB inside it. Every torch-format checkpoint is
therefore read by :class:`RestrictedUnpickler` -- torch still parses the zip/legacy container and reads the
tensor storages -- a subclass of the pure-Python ``pickle._Unpickler`` whose risky opcodes are replaced:

* **Names** (``GLOBAL``/``STACK_GLOBAL``, :meth:`~RestrictedUnpickler.find_class`): only the allowlist
  (inert data types, torch dtypes/sizes/devices/layouts, tensor-rebuild functions); any other name becomes
  a fresh subclass of :class:`InertObject`. Nothing is imported.
* **Calls** (``REDUCE``, ``NEWOBJ(_EX)``, ``OBJ``, ``INST``): only allowlisted callables, each through a
  checked implementation that validates its arguments and charges what it builds to the budget. Calling a
  placeholder class only records the arguments (the file's ``posix.system(...)`` is neutralised and
  reported). Calling anything else -- the result of a neutralised call (``getattr(__import__('os'),
  'system')(...)``, ``functools.partial(os.system, ...)()``), ``eval`` smuggled into
  ``_rebuild_from_type_v2``, ``torch.Tensor(10**9)`` -- is refused: :class:`RefusedPickle` ("tries to call
  os.system; nothing ran").
* **Mutations** (``BUILD``, ``SETITEM(S)``, ``APPEND(S)``, ``ADDITEMS``): only on containers and objects
  this load created. A class, function, singleton or anything else obtained by name is never modified
  (``BUILD`` on ``collections.Counter`` setting ``most_common`` is refused as tampering); dunder attributes
  are never set and tensor hooks never restored.
* **Storages** (``BINPERSID``): a zip storage must exist in the archive with the size the pickle claims; a
  legacy storage may not claim more bytes than the file has (torch allocates it before reading).
* **Budget**: every opcode (64-256 bytes, an upper estimate of the object it makes), literal (its length)
  and every object a call builds is charged, as estimated bytes, against :func:`budget_for` the file size (32 MiB plus 1/16 of the file): a small
  file cannot make ``list(range(60_000_000))``, and a large pickle of Python lists stops within a second.
* **Hashing**: tuples/frozensets used as dict keys or set members nest at most 100 levels and their
  unfolded size is charged to a work budget (CPython's ``hash`` recurses on the C stack and does not cache:
  a million nested 1-tuples crash the interpreter, 60 levels of ``(t, t)`` shared through the memo never end).

Usage (``torch.load`` subclasses ``pickle_module.Unpickler`` and sets ``persistent_load`` itself)::

    pm = RestrictedPickleModule(file_size, records={"data.pkl": ..., "data/0": 16, ...})
    obj = torch.load(path, map_location="cpu", weights_only=False, pickle_module=pm)
    pm.neutralized  # {"yacs.config.CfgNode", ...}: globals that were replaced by inert placeholders
"""

from __future__ import annotations

import _compat_pickle
import collections
import copyreg
import encodings.ascii  # noqa: F401  the codecs the unpickler may use (protocol-0 UNICODE, latin-1 bytes):
import encodings.latin_1  # noqa: F401  imported here, so that no file is what imports a module
import encodings.raw_unicode_escape  # noqa: F401  (the pure-Python pickle looks them up lazily)
import encodings.utf_8  # noqa: F401
import functools
import io
import math
import pickle
import re
import struct
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import IO, Any, NoReturn

import torch

from cotviz.resources import format_bytes

__all__ = [
    "InertObject",
    "RefusedPickle",
    "RestrictedPickleModule",
    "RestrictedUnpickler",
    "allowed_globals",
    "budget_for",
    "is_code_execution_global",
]

# Modules/names whose appearance in a checkpoint means "this file tries to run code". Used only to
# REPORT (the allowlist is what keeps loading safe: these are neutralized like any unknown global).
_CODE_EXECUTION_MODULES = frozenset({
    "os", "posix", "nt", "subprocess", "sys", "shutil", "importlib", "runpy", "pty", "socket", "code",
    "codeop", "ctypes", "pickle", "_pickle", "marshal", "types", "webbrowser", "multiprocessing",
    "threading", "asyncio", "signal", "pdb", "timeit", "platform", "operator", "io", "_io", "tempfile",
    "functools", "dill", "cloudpickle", "joblib", "shelve", "yaml",
    "torch.storage", "torch.serialization", "torch.jit", "torch.hub", "torch._C", "torch.ops", "torch.fx",
    "torch.package", "torch.utils.cpp_extension", "numpy.lib.npyio", "numpy.f2py", "numpy.distutils",
})
_CODE_EXECUTION_BUILTINS = frozenset({
    "eval", "exec", "compile", "getattr", "setattr", "delattr", "__import__", "open", "input",
    "breakpoint", "globals", "locals", "vars", "memoryview", "apply", "execfile", "reload", "file",
})

_BUDGET_FLOOR = 32 << 20  # bytes of Python objects any checkpoint may build (a real one needs < 10 MiB)
_OPCODE_COST = 64  # estimated bytes per executed opcode (an int/float/tuple object + its stack slot)
_HASH_DEPTH = 100  # nesting of a tuple/frozenset that is hashed (dict key, set member)
_HASH_WORK = 20_000_000  # steps all hashing of tuple keys in one load may take (~1 s)
_READ_CHUNK = 1 << 16  # reads above this are capped at what the file still has
_MAX_LINE = 1 << 16  # text opcodes (GLOBAL, INT, PERSID, ...) read at most this many bytes
_HOOK_ATTRS = frozenset({"_backward_hooks", "_post_accumulate_grad_hooks", "_forward_hooks",
                         "_forward_pre_hooks", "_state_dict_hooks", "_load_state_dict_pre_hooks"})
_CODECS = frozenset({"latin1", "latin-1", "iso-8859-1", "ascii", "utf-8", "utf8"})


def is_code_execution_global(qualified: str) -> bool:
    """Whether ``module.name`` is a global that pickle payloads use to run code (``posix.system``, ...)."""
    module, _, name = qualified.rpartition(".")
    if module in ("builtins", "__builtin__"):
        return name in _CODE_EXECUTION_BUILTINS
    parts = module.split(".")
    return any(".".join(parts[:i]) in _CODE_EXECUTION_MODULES for i in range(1, len(parts) + 1))


def budget_for(file_size: int) -> int:
    """Estimated bytes of Python objects a checkpoint of ``file_size`` bytes may build.

    32 MiB plus 1/16 of the file: a real checkpoint's Python structure is small (cotnet50's state_dict
    pickle: 29k opcodes, ~3 MiB) and grows with the number of tensors, not their size.
    """
    return _BUDGET_FLOOR + max(int(file_size), 0) // 16


class RefusedPickle(pickle.UnpicklingError):
    """The pickle asked for something a weights file never needs; it was refused and nothing ran.

    ``kind``: ``"code"`` (a call of something that is not allowlisted), ``"tamper"`` (a change to an object
    the file did not create), ``"budget"`` (more Python data than the file size justifies), ``"corrupt"``
    (storages inconsistent with the pickle) or ``"unsupported"`` (an opcode use torch.save never writes).
    ``str(err)`` is a phrase to follow the file name ("tries to call os.system; nothing ran").
    """

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class InertObject(dict):  # type: ignore[type-arg]
    """Stands in for a class or function that a checkpoint names but cotviz does not trust.

    A ``dict`` subclass so that a pickled ``dict`` subclass (yacs ``CfgNode``) rebuilds through
    ``SETITEMS``; every entry point pickle uses stores data and does nothing else. Subclasses made by
    :class:`RestrictedUnpickler` carry the original name in ``cotviz_global``.

    Attributes:
        pickled_args: positional arguments the pickle passed to the constructor/callable (data only).
        pickled_state: the ``BUILD`` state (for a pickled object: its ``__dict__``), or ``None``.
        pickled_items: items added through ``APPEND(S)``/``ADDITEMS`` (list/set subclasses).
    """

    cotviz_global: str = "<unknown>"
    pickled_args: tuple[Any, ...]
    pickled_state: Any
    pickled_items: list[Any]

    def __new__(cls, *args: Any, **kwargs: Any) -> InertObject:
        obj = super().__new__(cls)
        obj.__dict__.update(pickled_args=args, pickled_state=None, pickled_items=[])
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # accepts anything, runs nothing
        pass

    def __setstate__(self, state: Any) -> None:
        self.__dict__["pickled_state"] = state

    def append(self, item: Any) -> None:
        self.__dict__["pickled_items"].append(item)

    def extend(self, items: Any) -> None:
        self.__dict__["pickled_items"].extend(items)

    def add(self, item: Any) -> None:
        self.append(item)

    # Identity semantics: placeholders may be used as dict keys / set members in the pickled data.
    def __hash__(self) -> int:  # type: ignore[override]
        return id(self)

    def __eq__(self, other: object) -> bool:
        return self is other

    def __ne__(self, other: object) -> bool:
        return self is not other

    def __repr__(self) -> str:
        return f"<inert {self.cotviz_global}>"


def _is_placeholder_class(obj: Any) -> bool:
    return isinstance(obj, type) and issubclass(obj, InertObject)


# ------------------------------------------------------------------------------------------ allowlist

Args = tuple[Any, ...]
Kwargs = dict[str, Any]
CheckedCall = Callable[["RestrictedUnpickler", Args, Kwargs], Any]


def _latin1_encode(obj: str, encoding: str = "latin1") -> bytes:
    """``_codecs.encode`` as used by protocol-2 pickles for ``bytes``; only the latin-1 codec."""
    if not isinstance(obj, str) or not isinstance(encoding, str):
        raise pickle.UnpicklingError("_codecs.encode of a non-string")
    if encoding.lower().replace("_", "-") not in ("latin1", "latin-1", "iso-8859-1"):
        raise pickle.UnpicklingError(f"refusing codec {encoding[:40]!r} in a checkpoint")
    return obj.encode("latin-1")


def _numpy() -> Any:
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy is a dependency
        return None
    return np


def _numpy_globals() -> dict[str, Any]:
    """numpy scalars (metrics are sometimes ``np.float64``): scalar rebuild + dtype, nothing else."""
    np = _numpy()
    if np is None:  # pragma: no cover
        return {}
    core = getattr(np, "_core", None) or np.core
    scalar = core.multiarray.scalar
    return {"numpy.core.multiarray.scalar": scalar, "numpy._core.multiarray.scalar": scalar, "numpy.dtype": np.dtype}


_REBUILDERS = ("_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_tensor_v3", "_rebuild_parameter",
               "_rebuild_parameter_with_state", "_rebuild_qtensor", "_rebuild_sparse_tensor",
               "_rebuild_meta_tensor_no_storage", "_rebuild_device_tensor_from_cpu_tensor")


@functools.lru_cache(maxsize=1)
def allowed_globals() -> dict[str, Any]:
    """The allowlist: ``"module.name"`` -> object that ``find_class`` may return.

    Inert data types, torch dtypes/sizes/devices/layouts, legacy storage-type markers and the
    tensor-rebuild functions of torch's own ``weights_only`` allowlist that rebuild from storages in the file
    (not wrapper subclasses, nested tensors or numpy arrays). Being named is not being callable: only the
    names in :data:`_CHECKED_CALLS` can be called, through checked implementations.
    """
    allowed: dict[str, Any] = {
        "collections.OrderedDict": collections.OrderedDict,
        "collections.Counter": collections.Counter,
        "collections.defaultdict": collections.defaultdict,
        "builtins.set": set,
        "builtins.frozenset": frozenset,
        "builtins.bytearray": bytearray,
        "builtins.complex": complex,
        "builtins.slice": slice,
        "builtins.range": range,
        "builtins.object": object,
        "builtins.dict": dict,
        "builtins.list": list,
        "builtins.tuple": tuple,
        "copyreg._reconstructor": copyreg._reconstructor,  # type: ignore[attr-defined]
        "copyreg.__newobj__": copyreg.__newobj__,  # type: ignore[attr-defined]
        "copyreg.__newobj_ex__": copyreg.__newobj_ex__,  # type: ignore[attr-defined]
        "_codecs.encode": _latin1_encode,
        "torch.Size": torch.Size,
        "torch.Tensor": torch.Tensor,
        "torch.device": torch.device,
        "torch.nn.parameter.Parameter": torch.nn.Parameter,
        "torch.serialization._get_layout": torch.serialization._get_layout,  # type: ignore[attr-defined]
        "torch._tensor._rebuild_from_type_v2": torch._tensor._rebuild_from_type_v2,  # type: ignore[attr-defined]
    }
    for name in _REBUILDERS:
        if hasattr(torch._utils, name):
            allowed[f"torch._utils.{name}"] = getattr(torch._utils, name)
    for name in dir(torch):  # torch.float32, torch.bfloat16, torch.strided, torch.per_tensor_affine, ...
        value = getattr(torch, name, None)
        if isinstance(value, (torch.dtype, torch.layout, torch.qscheme)):
            allowed[f"torch.{name}"] = value
    for cls in (*torch._tensor_classes, torch.storage.TypedStorage, torch.storage.UntypedStorage):
        allowed[f"{cls.__module__}.{cls.__name__}"] = cls
    for cls in torch._storage_classes:  # legacy torch.FloatStorage & co: torch's own dtype marker
        if cls not in (torch.storage.TypedStorage, torch.storage.UntypedStorage):
            allowed[f"{cls.__module__}.{cls.__name__}"] = torch.serialization.StorageType(cls.__name__)
    allowed.update(_numpy_globals())
    return allowed


@functools.lru_cache(maxsize=1)
def _names() -> dict[int, str]:
    """``id(allowlisted object) -> "module.name"`` (for messages)."""
    return {id(obj): name for name, obj in allowed_globals().items()}


@functools.lru_cache(maxsize=1)
def _layouts() -> dict[str, torch.layout]:
    """``"torch.sparse_coo" -> torch.sparse_coo``: torch's ``_get_layout`` without its process-wide cache."""
    return {str(v): v for v in vars(torch).values() if isinstance(v, torch.layout)}


@functools.lru_cache(maxsize=1)
def _checked_calls() -> dict[int, tuple[Any, CheckedCall]]:
    """``id(callable) -> (callable, checked implementation)`` for every allowlisted name that may be called."""
    allowed = allowed_globals()
    return {id(allowed[name]): (allowed[name], impl) for name, impl in _CHECKED_CALLS.items() if name in allowed}


@functools.lru_cache(maxsize=1)
def _containers() -> dict[int, type]:
    """The container classes a ``defaultdict`` may call or ``copyreg._reconstructor`` may fill."""
    classes: tuple[type, ...] = (dict, list, set, frozenset, tuple, collections.OrderedDict, collections.Counter)
    return {id(c): c for c in classes}


@functools.lru_cache(maxsize=1)
def _newable() -> dict[int, type]:
    """Classes ``NEWOBJ``/``copyreg.__newobj__`` may instantiate (besides placeholders)."""
    classes: tuple[type, ...] = (dict, list, set, frozenset, tuple, object, complex, collections.OrderedDict,
                                 collections.Counter, collections.defaultdict, torch.nn.Parameter)
    return {id(c): c for c in classes}


# -------------------------------------------------------------------------------------- per-load state


@dataclass
class _Context:
    """What one load has built and may still build (shared by every pickle of the file)."""

    file_size: int
    records: Mapping[str, int] | None
    limit: int
    used: int = 0
    placeholders: dict[str, type[InertObject]] = field(default_factory=dict)
    fresh: dict[int, Any] = field(default_factory=dict)  # id -> object this load created (kept alive)
    hash_ok: dict[int, Any] = field(default_factory=dict)  # id -> (tuple/frozenset, height, unfolded size)
    hash_work: int = 0  # steps the hashing of tuple keys will take
    legacy_roots: dict[Any, int] = field(default_factory=dict)  # legacy storage key -> bytes
    sparse: list[torch.Tensor] = field(default_factory=list)  # to validate once the storages hold their data

    def charge(self, nbytes: int, what: str) -> None:
        self.used += nbytes
        if self.used > self.limit:
            self.exceeded(what)

    def exceeded(self, what: str) -> NoReturn:
        raise RefusedPickle("budget", f"would build more than {format_bytes(self.limit)} of Python objects "
                                      f"({what}) from a {format_bytes(self.file_size)} file")


class _CappedReader:
    """The file as pickle sees it: large reads are capped at what the file still holds (a claimed
    length of 4 GiB allocates 4 GiB in ``BufferedReader.read`` before reading), lines at 64 KiB."""

    def __init__(self, file: IO[bytes], file_size: int) -> None:
        self._file = file
        self._size = file_size

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0 or n > _READ_CHUNK:
            left = max(self._size - self._file.tell(), 0)
            n = left if n is None or n < 0 else min(n, left)
        return self._file.read(n)

    def readline(self) -> bytes:
        return self._file.readline(_MAX_LINE)


def _sized(u: RestrictedUnpickler, obj: Any, per_item: int, what: str) -> int:
    """Charge ``len(obj) * per_item`` for an iterable handed to an allowed constructor; returns the length."""
    if isinstance(obj, range):
        try:
            n = len(obj)
        except OverflowError:
            n = sys.maxsize
    elif isinstance(obj, (list, tuple, dict, set, frozenset, str, bytes, bytearray)):
        n = len(obj)
    else:
        raise pickle.UnpicklingError(f"{what} of a {type(obj).__name__}")
    u._ctx.charge(n * per_item, f"{what} of {n:,} items")
    return n


def _check_args(args: Args, kwargs: Kwargs, what: str, most: int, least: int = 0) -> None:
    if kwargs or not least <= len(args) <= most:
        raise pickle.UnpicklingError(f"{what} called with {len(args)} arguments")


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


# ------------------------------------------------------------------------------- checked constructors


def _mapping_call(cls: type, per_item: int = 112) -> CheckedCall:
    """``dict``/``OrderedDict``/``Counter`` from nothing, a mapping or a sequence of pairs (or, for
    ``Counter``, of elements): keys are checked for hashing and the entries charged."""

    def call(u: RestrictedUnpickler, args: Args, kwargs: Kwargs) -> Any:
        _check_args(args, kwargs, cls.__name__, 1)
        if not args:
            return u._fresh(cls())
        source = args[0]
        _sized(u, source, per_item, cls.__name__)
        if not isinstance(source, dict):
            for item in source:
                if cls is collections.Counter:
                    u._check_hashable(item)
                elif isinstance(item, (tuple, list)) and len(item) == 2:
                    u._check_hashable(item[0])
                else:
                    raise pickle.UnpicklingError(f"{cls.__name__}() of a sequence that is not of pairs")
        return u._fresh(cls(source))

    return call


def _sequence_call(cls: type, per_item: int, hashed: bool) -> CheckedCall:
    """``list``/``tuple``/``set``/``frozenset`` of an iterable (charged; members checked for hashing)."""

    def call(u: RestrictedUnpickler, args: Args, kwargs: Kwargs) -> Any:
        _check_args(args, kwargs, cls.__name__, 1)
        if not args:
            return u._fresh(cls())
        _sized(u, args[0], per_item, cls.__name__)
        if hashed:
            for item in args[0]:
                u._check_hashable(item)
        return u._fresh(cls(args[0]))

    return call


def _call_defaultdict(u: RestrictedUnpickler, args: Args, kwargs: Kwargs) -> Any:
    _check_args(args, kwargs, "defaultdict", 2)
    factory = args[0] if args else None
    if factory is not None and id(factory) not in _containers():
        what, _ = u._describe(factory)
        raise RefusedPickle("code", f"tries to make a defaultdict that calls {what} for missing keys; nothing ran")
    table = _mapping_call(dict)(u, args[1:], {}) if len(args) > 1 else {}
    return u._fresh(collections.defaultdict(factory, table))


def _call_bytearray(u: RestrictedUnpickler, args: Args, kwargs: Kwargs) -> Any:
    _check_args(args, kwargs, "bytearray", 3)
    if not args:
        return u._fresh(bytearray())
    source = args[0]
    if isinstance(source, int):
        if source < 0:
            raise pickle.UnpicklingError("bytearray of a negative size")
        u._ctx.charge(int(source), f"a bytearray of {format_bytes(int(source))}")
        return u._fresh(bytearray(source))
    if isinstance(source, str):
        encoding = args[1] if len(args) > 1 else None
        if not isinstance(encoding, str) or encoding.lower().replace("_", "-") not in _CODECS:
            raise pickle.UnpicklingError("bytearray of a string with an unsupported codec")
        u._ctx.charge(4 * len(source), "a bytearray")
        return u._fresh(bytearray(source, encoding))
    if len(args) > 1:
        raise pickle.UnpicklingError("bytearray with an encoding of a non-string")
    _sized(u, source, 1 if isinstance(source, (bytes, bytearray)) else 8, "bytearray")
    return u._fresh(bytearray(source))


def _call_complex(u: RestrictedUnpickler, args: Args, kwargs: Kwargs) -> Any:
    _check_args(args, kwargs, "complex", 2)
    if not all(isinstance(a, (int, float)) or (isinstance(a, str) and len(a) <= 64) for a in args):
        raise pickle.UnpicklingError("complex() of a non-number")
    return complex(*args)


def _call_slice(u: RestrictedUnpickler, args: Args, kwargs: Kwargs) -> Any:
    _check_args(args, kwargs, "slice", 3, 1)
    return slice(*args)


def _call_range(u: RestrictedUnpickler, args: Args, kwargs: Kwargs) -> Any:
    _check_args(args, kwargs, "range", 3, 1)
    if not all(isinstance(a, int) for a in args):
        raise pickle.UnpicklingError("range() of a non-integer")
    return range(*args)  # lazy: its size is charged where it is iterated


def _call_object(u: RestrictedUnpickler, args: Args, kwargs: Kwargs) -> Any:
    _check_args(args, kwargs, "object", 0)
    return u._fresh(object())


def _call_encode(u: RestrictedUnpickler, args: Args, kwargs: Kwargs) -> Any:
    _check_args(args, kwargs, "_codecs.encode", 2, 1)
    return _latin1_encode(*args)


def _call_size(u: RestrictedUnpickler, args: Args, kwargs: Kwargs) -> Any:
    _check_args(args, kwargs, "torch.Size", 1)
    if args:
        _sized(u, args[0], 16, "torch.Size")
        if not all(_is_int(s) for s in args[0]):
            raise pickle.UnpicklingError("torch.Size of a non-integer")
    return torch.Size(*args)


def _call_device(u: RestrictedUnpickler, args: Args, kwargs: Kwargs) -> Any:
    _check_args(args, kwargs, "torch.device", 2, 1)
    if not all(_is_int(a) or (isinstance(a, str) and len(a) <= 64) for a in args):
        raise pickle.UnpicklingError("torch.device of a non-string")
    return torch.device(*args)


def _call_layout(u: RestrictedUnpickler, args: Args, kwargs: Kwargs) -> Any:
    _check_args(args, kwargs, "torch.serialization._get_layout", 1, 1)
    layout = _layouts().get(args[0]) if isinstance(args[0], str) else None
    if layout is None:
        raise pickle.UnpicklingError("unknown tensor layout")
    return layout


def _call_parameter(u: RestrictedUnpickler, args: Args, kwargs: Kwargs) -> Any:
    _check_args(args, kwargs, "Parameter", 2)
    data = args[0] if args else torch.empty(0)
    requires_grad = args[1] if len(args) > 1 else True
    if not isinstance(data, torch.Tensor) or not isinstance(requires_grad, bool):
        raise pickle.UnpicklingError("Parameter of a non-tensor")
    return u._fresh(torch.nn.Parameter(data, requires_grad))


def _call_newobj(u: RestrictedUnpickler, args: Args, kwargs: Kwargs) -> Any:
    if not args:
        raise pickle.UnpicklingError("copyreg.__newobj__ without a class")
    return u._new(args[0], args[1:], kwargs)


def _call_newobj_ex(u: RestrictedUnpickler, args: Args, kwargs: Kwargs) -> Any:
    _check_args(args, kwargs, "copyreg.__newobj_ex__", 3, 3)
    cls, cargs, ckwargs = args
    if not isinstance(cargs, tuple) or not isinstance(ckwargs, dict):
        raise pickle.UnpicklingError("copyreg.__newobj_ex__ of non-tuple arguments")
    return u._new(cls, cargs, ckwargs)


def _call_reconstructor(u: RestrictedUnpickler, args: Args, kwargs: Kwargs) -> Any:
    """``copyreg._reconstructor(cls, base, state)`` (protocol 0/1 objects): a placeholder or a plain
    container, filled from ``state`` when ``base`` is a container."""
    _check_args(args, kwargs, "copyreg._reconstructor", 3, 3)
    cls, base, state = args
    if base is object and state is None:
        return u._new(cls, (), {})
    if id(base) not in _containers() or not (_is_placeholder_class(cls) or cls is base):
        what, _ = u._describe(cls)
        raise RefusedPickle("code", f"tries to create {what} through copyreg._reconstructor; nothing ran")
    obj = u._new(cls, (), {})
    if state is not None:
        filled = _CHECKED_CALLS[_names()[id(base)]](u, (state,), {})
        if isinstance(filled, dict):
            dict.update(obj, filled)
        elif isinstance(obj, InertObject):
            InertObject.extend(obj, list(filled))
        else:
            obj.extend(filled) if isinstance(obj, list) else obj.update(filled)
    return obj


def _call_numpy_scalar(u: RestrictedUnpickler, args: Args, kwargs: Kwargs) -> Any:
    """A numpy bool/int/float/complex scalar (metrics are sometimes ``np.float64``); any other numpy scalar
    becomes an inert placeholder holding its arguments (the load goes on, nothing of numpy runs)."""
    np = _numpy()
    dtype, data = (args + (None, None))[:2]
    if (kwargs or len(args) != 2 or not isinstance(dtype, np.dtype) or dtype.kind not in "biufc?" or dtype.fields
            or dtype.subdtype or not isinstance(data, bytes) or len(data) != dtype.itemsize):
        return u._inert("numpy.core.multiarray.scalar", args)
    return _numpy_globals()["numpy.core.multiarray.scalar"](dtype, data)


def _call_numpy_dtype(u: RestrictedUnpickler, args: Args, kwargs: Kwargs) -> Any:
    """A simple numpy dtype, always a fresh copy (``np.dtype("f8")`` is a process-wide singleton that the
    ``BUILD`` after it would modify); structured, object and other dtypes become inert placeholders."""
    np = _numpy()
    spec = args[0] if args else None
    if kwargs or not 1 <= len(args) <= 3 or not isinstance(spec, str) or not re.fullmatch(
            r"[<>|=]?[biuf?c][0-9]{0,2}", spec):
        return u._inert("numpy.dtype", args)
    dtype = np.dtype(spec, align=bool(args[1]) if len(args) > 1 else False, copy=True)
    if dtype.kind not in "biufc?":
        return u._inert("numpy.dtype", args)
    return u._fresh(dtype)


# -- tensors


def _storage(u: RestrictedUnpickler, storage: Any) -> torch.storage.TypedStorage:
    if not isinstance(storage, torch.storage.TypedStorage):
        raise pickle.UnpicklingError(f"tensor rebuilt from a {type(storage).__name__}, not a storage")
    return storage


def _geometry(size: Any, stride: Any | None, offset: Any = 0) -> tuple[tuple[int, ...], tuple[int, ...] | None]:
    """``size``/``stride`` as int tuples of equal length (at most 64 dims), ``offset`` >= 0."""
    def dims(x: Any) -> tuple[int, ...]:
        if not isinstance(x, (tuple, list)) or len(x) > 64 or not all(_is_int(d) and d >= 0 for d in x):
            raise pickle.UnpicklingError("tensor with an invalid size or stride")
        return tuple(x)

    shape = dims(size)
    strides = None if stride is None else dims(stride)
    if (strides is not None and len(strides) != len(shape)) or not _is_int(offset) or offset < 0:
        raise pickle.UnpicklingError("tensor with an invalid size, stride or offset")
    return shape, strides


def _no_hooks(u: RestrictedUnpickler, hooks: Any) -> None:
    """Backward hooks are never restored: ``torch.save`` has written an empty ``OrderedDict`` since PyTorch
    1.0 (Note [Don't serialize hooks]), and an older file's hooks could only be inert placeholders here."""


def _metadata(metadata: Any) -> dict[str, bool] | None:
    if metadata is None:
        return None
    if not isinstance(metadata, dict) or not all(k in ("conj", "neg") and isinstance(v, bool)
                                                 for k, v in metadata.items()):
        raise pickle.UnpicklingError("tensor with invalid metadata")
    return metadata


def _requires_grad(flag: Any) -> bool:
    if not isinstance(flag, bool):
        raise pickle.UnpicklingError("tensor with a non-boolean requires_grad")
    return flag


def _call_rebuild_tensor(u: RestrictedUnpickler, args: Args, kwargs: Kwargs) -> Any:
    _check_args(args, kwargs, "_rebuild_tensor", 4, 4)
    storage = _storage(u, args[0])
    shape, stride = _geometry(args[2], args[3], args[1])
    u._ctx.charge(512, "tensors")
    return u._fresh(torch._utils._rebuild_tensor(storage, args[1], shape, stride))  # type: ignore[attr-defined]


def _call_rebuild_tensor_v2(u: RestrictedUnpickler, args: Args, kwargs: Kwargs) -> Any:
    _check_args(args, kwargs, "_rebuild_tensor_v2", 7, 6)
    storage = _storage(u, args[0])
    shape, stride = _geometry(args[2], args[3], args[1])
    _no_hooks(u, args[5])
    u._ctx.charge(512, "tensors")
    return u._fresh(torch._utils._rebuild_tensor_v2(  # type: ignore[attr-defined]
        storage, args[1], shape, stride, _requires_grad(args[4]), collections.OrderedDict(),
        _metadata(args[6] if len(args) > 6 else None)))


def _call_rebuild_tensor_v3(u: RestrictedUnpickler, args: Args, kwargs: Kwargs) -> Any:
    _check_args(args, kwargs, "_rebuild_tensor_v3", 8, 7)
    storage = _storage(u, args[0])
    shape, stride = _geometry(args[2], args[3], args[1])
    _no_hooks(u, args[5])
    if not isinstance(args[6], torch.dtype):
        raise pickle.UnpicklingError("tensor with an invalid dtype")
    u._ctx.charge(512, "tensors")
    return u._fresh(torch._utils._rebuild_tensor_v3(  # type: ignore[attr-defined]
        storage, args[1], shape, stride, _requires_grad(args[4]), collections.OrderedDict(), args[6],
        _metadata(args[7] if len(args) > 7 else None)))


def _call_rebuild_parameter(u: RestrictedUnpickler, args: Args, kwargs: Kwargs) -> Any:
    _check_args(args, kwargs, "_rebuild_parameter", 4, 3)
    data = args[0]
    if not isinstance(data, torch.Tensor):
        raise pickle.UnpicklingError("Parameter of a non-tensor")
    _no_hooks(u, args[2])
    param = u._fresh(torch.nn.Parameter(data, _requires_grad(args[1])))
    if len(args) > 3:
        u._set_state(param, args[3])
    return param


def _call_rebuild_qtensor(u: RestrictedUnpickler, args: Args, kwargs: Kwargs) -> Any:
    _check_args(args, kwargs, "_rebuild_qtensor", 7, 7)
    storage = _storage(u, args[0])
    shape, stride = _geometry(args[2], args[3], args[1])
    _no_hooks(u, args[6])
    # torch allocates the full size before pointing the tensor at the storage: bound it by the storage.
    nbytes = storage._untyped_storage.nbytes()
    if math.prod(shape) * torch._utils._element_size(storage.dtype) > nbytes:  # type: ignore[attr-defined]
        raise RefusedPickle("corrupt", f"a quantized tensor of size {list(shape)} does not fit its storage")
    params = args[4]
    if not isinstance(params, tuple) or not params or not isinstance(params[0], torch.qscheme):
        raise pickle.UnpicklingError("quantized tensor with invalid parameters")
    for p in params[1:]:
        if isinstance(p, (list, tuple)):
            _sized(u, p, 16, "quantizer parameters")
            if not all(isinstance(v, (int, float)) for v in p):
                raise pickle.UnpicklingError("quantized tensor with invalid parameters")
        elif not isinstance(p, (int, float, torch.Tensor)):
            raise pickle.UnpicklingError("quantized tensor with invalid parameters")
    u._ctx.charge(512, "tensors")
    return u._fresh(torch._utils._rebuild_qtensor(  # type: ignore[attr-defined]
        storage, args[1], shape, stride, params, _requires_grad(args[5]), collections.OrderedDict()))


def _call_rebuild_sparse(u: RestrictedUnpickler, args: Args, kwargs: Kwargs) -> Any:
    """Sparse tensors, validated by :meth:`RestrictedPickleModule.validate_sparse` once the storages hold their
    data (a legacy file's storages are read after the pickle). torch defers the same check through a
    process-wide list and skips it unless asked: out-of-range indices would crash ``to_dense`` later."""
    _check_args(args, kwargs, "_rebuild_sparse_tensor", 2, 2)
    layout, data = args
    parts = data[:2] if layout is torch.sparse_coo else data[:3]
    if not isinstance(data, tuple) or not all(isinstance(t, torch.Tensor) for t in parts):
        # tensors only: torch would convert nested lists itself (exponential for lists shared in the memo)
        raise pickle.UnpicklingError("sparse tensor with invalid data")
    u._ctx.charge(512, "tensors")
    try:
        if layout is torch.sparse_coo and len(data) in (3, 4):
            indices, values, size = data[:3]
            coalesced = data[3] if len(data) == 4 else None
            if coalesced is not None and not isinstance(coalesced, bool):
                raise pickle.UnpicklingError("sparse tensor with invalid data")
            result = torch.sparse_coo_tensor(indices, values, _geometry(size, None)[0], check_invariants=False,
                                             is_coalesced=coalesced)
        elif layout in (torch.sparse_csr, torch.sparse_csc, torch.sparse_bsr, torch.sparse_bsc) and len(data) == 4:
            compressed, plain, values, size = data
            result = torch.sparse_compressed_tensor(compressed, plain, values, _geometry(size, None)[0],
                                                    layout=layout, check_invariants=False)
        else:
            raise pickle.UnpicklingError("sparse tensor of an unsupported layout")
    except (RuntimeError, ValueError, TypeError) as err:
        raise _invalid_sparse(err) from None
    u._ctx.sparse.append(result)
    return u._fresh(result)


def _invalid_sparse(err: BaseException) -> RefusedPickle:
    first = (str(err).strip().splitlines() or [""])[0][:160]
    return RefusedPickle("corrupt", f"a sparse tensor is invalid ({first})")


def _validate_sparse(t: torch.Tensor) -> None:
    """torch's own invariant checks of a sparse tensor (indices within the size, compressed indices sorted)."""
    if t.layout is torch.sparse_coo:
        torch._validate_sparse_coo_tensor_args(t._indices(), t._values(), t.size(), t.is_coalesced(),
                                               check_pinning=False)
        return
    if t.layout in (torch.sparse_csr, torch.sparse_bsr):
        compressed, plain = t.crow_indices(), t.col_indices()
    else:
        compressed, plain = t.ccol_indices(), t.row_indices()
    torch._validate_sparse_compressed_tensor_args(compressed, plain, t.values(), t.size(), t.layout,
                                                  check_pinning=False)


def _call_rebuild_meta(u: RestrictedUnpickler, args: Args, kwargs: Kwargs) -> Any:
    _check_args(args, kwargs, "_rebuild_meta_tensor_no_storage", 4, 4)
    shape, stride = _geometry(args[1], args[2])
    if not isinstance(args[0], torch.dtype):
        raise pickle.UnpicklingError("tensor with an invalid dtype")
    u._ctx.charge(512, "tensors")
    return u._fresh(torch.empty_strided(shape, stride or (), dtype=args[0], device="meta",
                                        requires_grad=_requires_grad(args[3])))


def _call_rebuild_from_cpu(u: RestrictedUnpickler, args: Args, kwargs: Kwargs) -> Any:
    """A device tensor saved through a CPU copy: kept on the CPU (the dtype conversion is charged)."""
    _check_args(args, kwargs, "_rebuild_device_tensor_from_cpu_tensor", 4, 4)
    data, dtype, _device, requires_grad = args
    if not isinstance(data, torch.Tensor) or not isinstance(dtype, torch.dtype):
        raise pickle.UnpicklingError("device tensor of a non-tensor")
    if dtype != data.dtype:
        u._ctx.charge(data.numel() * torch.empty((), dtype=dtype).element_size(), "a tensor conversion")
    tensor = data.to(dtype=dtype)
    tensor.requires_grad = _requires_grad(requires_grad)
    return u._fresh(tensor)


def _call_rebuild_from_type_v2(u: RestrictedUnpickler, args: Args, kwargs: Kwargs) -> Any:
    """A tensor subclass or a tensor with attributes: ``func(*args)`` must be a tensor rebuild, ``new_type``
    torch's tensor or Parameter (an unknown subclass stays a plain tensor), the state only plain attributes."""
    _check_args(args, kwargs, "_rebuild_from_type_v2", 4, 4)
    func, new_type, fargs, state = args
    entry = _checked_calls().get(id(func))
    if entry is None or entry[0] is not func or not _allowed_name(func).startswith("torch._utils._rebuild_"):
        what, via = u._describe(func)
        raise RefusedPickle("code", f"tries to call {what} (through torch._tensor._rebuild_from_type_v2"
                                    f"{''.join(', ' + v for v in via)}); nothing ran")
    if not isinstance(fargs, tuple):
        raise pickle.UnpicklingError("_rebuild_from_type_v2 of non-tuple arguments")
    ret = entry[1](u, fargs, {})
    if new_type is torch.nn.Parameter and type(ret) is not torch.nn.Parameter:
        ret = u._fresh(ret.as_subclass(torch.nn.Parameter))
    elif new_type is not torch.Tensor and new_type is not torch.nn.Parameter and not _is_placeholder_class(new_type):
        what, _ = u._describe(new_type)
        raise pickle.UnpicklingError(f"tensor of type {what}")
    u._set_state(ret, state)
    return ret


def _allowed_name(obj: Any) -> str:
    return _names().get(id(obj), "")


_CHECKED_CALLS: dict[str, CheckedCall] = {
    "collections.OrderedDict": _mapping_call(collections.OrderedDict),
    "collections.Counter": _mapping_call(collections.Counter),
    "collections.defaultdict": _call_defaultdict,
    "builtins.dict": _mapping_call(dict),
    "builtins.set": _sequence_call(set, 64, hashed=True),
    "builtins.frozenset": _sequence_call(frozenset, 64, hashed=True),
    "builtins.list": _sequence_call(list, 16, hashed=False),
    "builtins.tuple": _sequence_call(tuple, 16, hashed=False),
    "builtins.bytearray": _call_bytearray,
    "builtins.complex": _call_complex,
    "builtins.slice": _call_slice,
    "builtins.range": _call_range,
    "builtins.object": _call_object,
    "copyreg._reconstructor": _call_reconstructor,
    "copyreg.__newobj__": _call_newobj,
    "copyreg.__newobj_ex__": _call_newobj_ex,
    "_codecs.encode": _call_encode,
    "torch.Size": _call_size,
    "torch.device": _call_device,
    "torch.nn.parameter.Parameter": _call_parameter,
    "torch.serialization._get_layout": _call_layout,
    "torch._tensor._rebuild_from_type_v2": _call_rebuild_from_type_v2,
    "torch._utils._rebuild_tensor": _call_rebuild_tensor,
    "torch._utils._rebuild_tensor_v2": _call_rebuild_tensor_v2,
    "torch._utils._rebuild_tensor_v3": _call_rebuild_tensor_v3,
    "torch._utils._rebuild_parameter": _call_rebuild_parameter,
    "torch._utils._rebuild_parameter_with_state": _call_rebuild_parameter,
    "torch._utils._rebuild_qtensor": _call_rebuild_qtensor,
    "torch._utils._rebuild_sparse_tensor": _call_rebuild_sparse,
    "torch._utils._rebuild_meta_tensor_no_storage": _call_rebuild_meta,
    "torch._utils._rebuild_device_tensor_from_cpu_tensor": _call_rebuild_from_cpu,
    "numpy.core.multiarray.scalar": _call_numpy_scalar,
    "numpy._core.multiarray.scalar": _call_numpy_scalar,
    "numpy.dtype": _call_numpy_dtype,
}


# ------------------------------------------------------------------------------------------ unpickler

_Base: Any = pickle._Unpickler  # type: ignore[attr-defined]  # the pure-Python unpickler (its opcodes are methods)


class RestrictedUnpickler(_Base):  # type: ignore[misc]
    """Pure-Python unpickler whose names, calls, mutations, storages and size are restricted (module docstring).

    Not used directly: :class:`RestrictedPickleModule` makes a subclass bound to one load's context.
    """

    _ctx: _Context  # set by RestrictedPickleModule on its bound subclass

    def __init__(self, file: IO[bytes], **kwargs: Any) -> None:
        # An in-memory pickle (zip's data.pkl) is read directly; a file is read through the cap.
        super().__init__(file if isinstance(file, io.BytesIO) else _CappedReader(file, self._ctx.file_size),
                         **kwargs)

    # -- the loop: every opcode is charged before it runs

    def load(self) -> Any:  # noqa: D102
        # Reads go straight to the file until a FRAME opcode (protocol 4+) switches them to the unframer.
        self._unframer = pickle._Unframer(self._file_read, self._file_readline)  # type: ignore[attr-defined]
        self.read = self._file_read
        self.readinto = self._unframer.readinto
        self.readline = self._file_readline
        self.metastack: list[list[Any]] = []
        self.stack: list[Any] = []
        self.append = self.stack.append
        self.proto = 0
        dispatch, costs, ctx = _DISPATCH, _COSTS, self._ctx
        try:
            while True:
                key = self.read(1)
                if not key:
                    raise EOFError
                op = key[0]
                ctx.used += costs[op]
                if ctx.used > ctx.limit:
                    ctx.exceeded("its pickle opcodes")
                dispatch[op](self)
        except pickle._Stop as stop:  # type: ignore[attr-defined]
            return stop.value

    # -- names

    def find_class(self, module: str, name: str) -> Any:  # noqa: D102
        # Protocol <= 2 pickles written by Python 3 use Python 2 names (__builtin__.set, copy_reg...).
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        qualified = f"{module}.{name}"
        allowed = allowed_globals()
        if qualified in allowed:
            return allowed[qualified]
        return self._placeholder(qualified)

    # -- what this load made

    def _fresh(self, obj: Any) -> Any:
        """Record ``obj`` as created by this load (so BUILD/SETITEMS/APPENDS may fill it); returns it."""
        self._ctx.fresh[id(obj)] = obj
        return obj

    def _own(self, target: Any, kinds: tuple[type, ...], op: str) -> None:
        """Refuse a mutation of anything this load did not create, or of a type the opcode never targets."""
        if id(target) not in self._ctx.fresh:
            what, _ = self._describe(target)
            raise RefusedPickle("tamper", f"tries to modify {what} ({op}), an object it did not create; "
                                          "nothing was changed")
        if not isinstance(target, kinds):
            raise RefusedPickle("unsupported", f"uses {op} on a {type(target).__name__}, which torch.save never "
                                               "writes")

    def _check_hashable(self, obj: Any) -> None:
        """Bound what hashing ``obj`` costs before anything hashes it (a dict key, a set member).

        CPython hashes a tuple by recursing into it on the C stack and does not cache the result: a million
        nested 1-tuples crash the interpreter, and ``t_k = (t_{k-1}, t_{k-1})`` built through the memo costs
        ``2**k`` steps per hash (and per equality check of two equal keys). So tuples/frozensets may nest at
        most :data:`_HASH_DEPTH` levels, and the unfolded size of every key hashed is charged, twice, to a
        work budget of :data:`_HASH_WORK` steps per load."""
        if not isinstance(obj, (tuple, frozenset)):
            return
        ctx = self._ctx
        ctx.hash_work += 2 * self._unfolded_size(obj)
        if ctx.hash_work > _HASH_WORK:
            raise RefusedPickle("budget", f"would spend more than {_HASH_WORK:,} steps hashing its dict keys and "
                                          "set members (tuples shared through the pickle memo)")

    def _unfolded_size(self, obj: tuple[Any, ...] | frozenset[Any]) -> int:
        """Items a recursive hash of ``obj`` visits, each distinct tuple measured once (memoised by id)."""
        known = self._ctx.hash_ok  # id -> (object, height, unfolded size)
        if id(obj) in known:
            return int(known[id(obj)][2])
        stack: list[tuple[Any, Any, list[int]]] = [(obj, iter(obj), [0, 1])]  # node, children, [height, size]
        while stack:
            node, children, acc = stack[-1]
            for child in children:
                if not isinstance(child, (tuple, frozenset)):
                    acc[1] += 1
                elif id(child) in known:
                    acc[0] = max(acc[0], known[id(child)][1])
                    acc[1] += known[id(child)][2]
                elif len(stack) >= _HASH_DEPTH:
                    raise RefusedPickle("unsupported", f"nests tuples more than {_HASH_DEPTH} levels deep in a "
                                                       "dict key or set member")
                else:
                    stack.append((child, iter(child), [0, 1]))
                    break
            else:
                stack.pop()
                height = acc[0] + 1
                if height > _HASH_DEPTH:
                    raise RefusedPickle("unsupported", f"nests tuples more than {_HASH_DEPTH} levels deep in a "
                                                       "dict key or set member")
                known[id(node)] = (node, height, acc[1])
                if stack:
                    parent = stack[-1][2]
                    parent[0] = max(parent[0], height)
                    parent[1] += acc[1]
        return int(known[id(obj)][2])

    # -- describing what the file tried

    def _describe(self, obj: Any, depth: int = 0) -> tuple[str, list[str]]:
        """``(what, via)``: a readable name for ``obj`` and the neutralised calls it came through."""
        if _is_placeholder_class(obj):
            return obj.cotviz_global, []
        if isinstance(obj, InertObject) and depth < 8:
            qualified, args = type(obj).cotviz_global, obj.pickled_args
            short = qualified.rpartition(".")[2]
            if short == "getattr" and len(args) >= 2 and isinstance(args[1], str):
                base, via = self._describe(args[0], depth + 1)
                return f"{base}.{args[1][:60]}", [qualified, *via]
            if short in ("__import__", "import_module") and args and isinstance(args[0], str):
                return args[0][:60], [qualified]
            if qualified == "functools.partial" and args:
                inner, via = self._describe(args[0], depth + 1)
                return inner, [qualified, *via]
            return f"the result of {qualified}(...)", []
        name = _allowed_name(obj)
        if name:
            return name, []
        return f"a {type(obj).__name__} object", []

    def _inert(self, qualified: str, args: Args) -> InertObject:
        """A placeholder instance for a call of ``qualified`` that is not rebuilt (reported as neutralized)."""
        return self._fresh(self._placeholder(qualified)(*args))

    def _placeholder(self, qualified: str) -> type[InertObject]:
        """The placeholder class of ``qualified`` for this load (made once, charged to the budget)."""
        placeholders = self._ctx.placeholders
        placeholder = placeholders.get(qualified)
        if placeholder is None:
            self._ctx.charge(4096, "placeholder classes")
            label = re.sub(r"\W", "_", qualified.rpartition(".")[2])[:64] or "global"
            placeholder = type(f"Inert_{label}", (InertObject,), {"cotviz_global": qualified[:300]})
            placeholders[qualified] = placeholder
        return placeholder

    def _refuse_call(self, func: Any, how: str = "call") -> NoReturn:
        what, via = self._describe(func)
        through = f" (through {', '.join(via)})" if via else ""
        raise RefusedPickle("code", f"tries to {how} {what}{through}; nothing ran")

    # -- calls

    def _call(self, func: Any, args: Any, kwargs: Kwargs) -> Any:
        if not isinstance(args, tuple):
            raise pickle.UnpicklingError("call arguments are not a tuple")
        if _is_placeholder_class(func):
            return self._fresh(func(*args, **kwargs))  # InertObject.__new__ only stores the arguments
        entry = _checked_calls().get(id(func))
        if entry is None or entry[0] is not func:
            self._refuse_call(func)
        return entry[1](self, args, kwargs)

    def _new(self, cls: Any, args: Any, kwargs: Any) -> Any:
        """``cls.__new__(cls, *args, **kwargs)`` (``NEWOBJ``) for placeholders and plain containers only."""
        if not isinstance(args, tuple) or not isinstance(kwargs, dict):
            raise pickle.UnpicklingError("NEWOBJ arguments are not a tuple")
        if _is_placeholder_class(cls):
            return self._fresh(cls.__new__(cls, *args, **kwargs))
        known = _newable().get(id(cls))
        if known is None or known is not cls:
            self._refuse_call(cls, "create")
        if cls is torch.nn.Parameter:
            return _call_parameter(self, args, kwargs)
        for arg in args:  # tuple/frozenset/complex build in __new__; the others ignore the arguments
            if isinstance(arg, (list, tuple, dict, set, frozenset, range, str, bytes, bytearray)):
                _sized(self, arg, 64, cls.__name__)
                if cls is frozenset:
                    for item in arg:
                        self._check_hashable(item)
        if kwargs:
            raise pickle.UnpicklingError(f"NEWOBJ of {cls.__name__} with keyword arguments")
        return self._fresh(cls.__new__(cls, *args))

    def _instantiate(self, klass: Any, args: list[Any]) -> None:  # OBJ / INST (protocol 0/1)
        if args or not isinstance(klass, type):
            self.append(self._call(klass, tuple(args), {}))
        else:
            self.append(self._new(klass, (), {}))

    # -- states

    def _set_state(self, obj: Any, state: Any) -> None:
        """Apply a pickled ``__dict__``/slot state to an object this load created: plain attribute names only."""
        if state is None:
            return
        parts = state if isinstance(state, tuple) and len(state) == 2 else (state, None)
        for i, part in enumerate(parts):
            if not part:
                continue
            if not isinstance(part, dict):
                raise pickle.UnpicklingError("invalid object state")
            for key, value in part.items():
                if not isinstance(key, str) or not key.isidentifier():
                    raise pickle.UnpicklingError("invalid attribute name in an object state")
                if key in _HOOK_ATTRS:
                    continue  # hooks are never restored (see _no_hooks)
                if key.startswith("__") and key.endswith("__"):
                    what, _ = self._describe(obj)
                    raise RefusedPickle("tamper", f"tries to set the attribute {key[:60]!r} of {what}; nothing "
                                                  "was changed")
                if i == 0 and not isinstance(obj, torch.Tensor) and hasattr(obj, "__dict__"):
                    obj.__dict__[key] = value
                else:
                    setattr(obj, key, value)


# ---------------------------------------------------------------------------------- opcode handlers

_U = RestrictedUnpickler
_P = pickle


def _load_reduce(self: _U) -> None:
    args = self.stack.pop()
    self.stack[-1] = self._call(self.stack[-1], args, {})


def _load_newobj(self: _U) -> None:
    args = self.stack.pop()
    cls = self.stack.pop()
    self.append(self._new(cls, args, {}))


def _load_newobj_ex(self: _U) -> None:
    kwargs = self.stack.pop()
    args = self.stack.pop()
    cls = self.stack.pop()
    self.append(self._new(cls, args, kwargs))


def _load_build(self: _U) -> None:
    state = self.stack.pop()
    inst = self.stack[-1]
    np = _numpy()
    self._own(inst, (object,), "BUILD: set its state")
    if isinstance(inst, InertObject):
        InertObject.__setstate__(inst, state)
    elif np is not None and isinstance(inst, np.dtype):
        canonical = inst.__reduce__()[2]
        if not (isinstance(state, tuple) and len(state) == len(canonical) and state[0] == canonical[0]
                and state[2:] == canonical[2:] and state[1] in ("<", ">", "|", "=")):
            raise pickle.UnpicklingError("numpy dtype with an unsupported state")
        inst.__setstate__(state)
    else:
        self._set_state(inst, state)


def _load_setitem(self: _U) -> None:
    value = self.stack.pop()
    key = self.stack.pop()
    target = self.stack[-1]
    self._own(target, (dict,), "SETITEM")
    self._check_hashable(key)
    target[key] = value


def _load_setitems(self: _U) -> None:
    items = self.pop_mark()
    target = self.stack[-1]
    self._own(target, (dict,), "SETITEMS")
    for i in range(0, len(items) - 1, 2):
        self._check_hashable(items[i])
        target[items[i]] = items[i + 1]


def _load_append(self: _U) -> None:
    value = self.stack.pop()
    target = self.stack[-1]
    self._own(target, (list, InertObject), "APPEND")
    (InertObject.append if isinstance(target, InertObject) else list.append)(target, value)


def _load_appends(self: _U) -> None:
    items = self.pop_mark()
    target = self.stack[-1]
    self._own(target, (list, InertObject), "APPENDS")
    (InertObject.extend if isinstance(target, InertObject) else list.extend)(target, items)


def _load_additems(self: _U) -> None:
    items = self.pop_mark()
    target = self.stack[-1]
    self._own(target, (set, InertObject), "ADDITEMS")
    for item in items:
        self._check_hashable(item)
    if isinstance(target, InertObject):
        InertObject.extend(target, items)
    else:
        set.update(target, items)


def _load_dict(self: _U) -> None:
    items = self.pop_mark()
    for i in range(0, len(items) - 1, 2):
        self._check_hashable(items[i])
    self.append(self._fresh({items[i]: items[i + 1] for i in range(0, len(items) - 1, 2)}))


def _load_frozenset(self: _U) -> None:
    items = self.pop_mark()
    for item in items:
        self._check_hashable(item)
    self.append(frozenset(items))


def _fresh_result(handler: Callable[[_U], None]) -> Callable[[_U], None]:
    """EMPTY_LIST/EMPTY_DICT/EMPTY_SET/LIST: the new container is this load's own."""

    def run(self: _U) -> None:
        handler(self)
        self._fresh(self.stack[-1])

    return run


def _literal(handler: Callable[[_U], None]) -> Callable[[_U], None]:
    """String/bytes/long opcodes: charge the length of the value they pushed."""

    def run(self: _U) -> None:
        handler(self)
        value = self.stack[-1]
        self._ctx.charge(value.bit_length() // 8 if isinstance(value, int) else len(value), "literals")

    return run


def _load_bytearray8(self: _U) -> None:
    (size,) = struct.unpack("<Q", self.read(8))
    self._ctx.charge(size, f"a bytearray of {format_bytes(size)}")
    data = self.read(size)
    if len(data) != size:
        raise pickle.UnpicklingError("BYTEARRAY8 longer than the file")
    self.append(self._fresh(bytearray(data)))


def _load_frame(self: _U) -> None:
    self.read, self.readline = self._unframer.read, self._unframer.readline
    _Base.load_frame(self)


def _load_binpersid(self: _U) -> None:
    pid = self.stack.pop()
    self.append(_persistent(self, pid))


def _load_persid(self: _U) -> None:
    raise RefusedPickle("unsupported", "uses a text persistent id, which torch.save never writes")


def _load_ext(self: _U) -> None:
    raise RefusedPickle("unsupported", "uses pickle extension codes (copyreg), which torch.save never writes")


def _load_unknown(self: _U) -> None:
    raise pickle.UnpicklingError("invalid load key (unknown pickle opcode)")


def _storage_dtype(storage_type: Any) -> torch.dtype:
    if storage_type is torch.storage.UntypedStorage:
        return torch.uint8
    if isinstance(storage_type, torch.serialization.StorageType):
        return storage_type.dtype
    raise pickle.UnpicklingError("storage of an unknown type")


def _persistent(self: _U, pid: Any) -> Any:
    """A storage reference (``BINPERSID``), checked against the file before torch reads or allocates it."""
    if not isinstance(pid, tuple) or not pid:
        raise pickle.UnpicklingError("invalid persistent id")
    typename = pid[0].decode("ascii", "replace") if isinstance(pid[0], bytes) else pid[0]
    ctx = self._ctx
    if typename == "module" and len(pid) == 4:  # legacy whole-module files: the class, without its source check
        return pid[1]
    if typename != "storage" or len(pid) not in (5, 6):
        raise pickle.UnpicklingError("invalid persistent id")
    dtype = _storage_dtype(pid[1])
    key, location, numel = pid[2], pid[3], pid[4]
    if not isinstance(location, (str, bytes)) or len(location) > 64 or not _is_int(numel) or numel < 0:
        raise pickle.UnpicklingError("invalid storage reference")
    nbytes = numel * torch._utils._element_size(dtype)  # type: ignore[attr-defined]
    if len(pid) == 5:  # zip: the record data/<key> holds exactly the storage
        if not isinstance(key, str):
            raise pickle.UnpicklingError("invalid storage reference")
        if ctx.records is not None:
            size = ctx.records.get(f"data/{key}")
            if size is None:
                raise RefusedPickle("corrupt", f"the pickle refers to a storage data/{key[:40]} the archive lacks")
            if size != nbytes:
                raise RefusedPickle("corrupt", f"storage data/{key[:40]} holds {size} bytes, the pickle says {nbytes}")
    else:  # legacy: torch allocates the storage before reading it from the rest of the file
        view = pid[5]
        if view is not None and not (isinstance(view, tuple) and len(view) == 3 and _is_int(view[1])
                                     and _is_int(view[2]) and 0 <= view[1] and 0 <= view[2]
                                     and view[1] + view[2] <= numel):
            raise RefusedPickle("corrupt", "a storage view lies outside its storage")
        if not isinstance(key, (str, int, bytes)):
            raise pickle.UnpicklingError("invalid storage reference")
        if key not in ctx.legacy_roots:
            ctx.legacy_roots[key] = nbytes
            if sum(ctx.legacy_roots.values()) > ctx.file_size:
                raise RefusedPickle("corrupt", f"its storages claim more bytes than the file has "
                                               f"({format_bytes(ctx.file_size)})")
    return self.persistent_load(pid)


def _build_dispatch() -> tuple[list[Callable[[_U], None]], list[int]]:
    base: dict[int, Callable[[_U], None]] = dict(_Base.dispatch)
    literal_ops = (_P.STRING, _P.BINSTRING, _P.SHORT_BINSTRING, _P.UNICODE, _P.BINUNICODE, _P.SHORT_BINUNICODE,
                   _P.BINUNICODE8, _P.BINBYTES, _P.SHORT_BINBYTES, _P.BINBYTES8, _P.LONG, _P.LONG1, _P.LONG4)
    for op in literal_ops:
        base[op[0]] = _literal(base[op[0]])
    for op in (_P.EMPTY_LIST, _P.EMPTY_DICT, _P.EMPTY_SET, _P.LIST):
        base[op[0]] = _fresh_result(base[op[0]])
    base.update({
        _P.REDUCE[0]: _load_reduce, _P.NEWOBJ[0]: _load_newobj, _P.NEWOBJ_EX[0]: _load_newobj_ex,
        _P.BUILD[0]: _load_build, _P.SETITEM[0]: _load_setitem, _P.SETITEMS[0]: _load_setitems,
        _P.APPEND[0]: _load_append, _P.APPENDS[0]: _load_appends, _P.ADDITEMS[0]: _load_additems,
        _P.DICT[0]: _load_dict, _P.FROZENSET[0]: _load_frozenset, _P.BYTEARRAY8[0]: _load_bytearray8,
        _P.FRAME[0]: _load_frame, _P.BINPERSID[0]: _load_binpersid, _P.PERSID[0]: _load_persid,
        _P.EXT1[0]: _load_ext, _P.EXT2[0]: _load_ext, _P.EXT4[0]: _load_ext,
    })
    dispatch = [base.get(op, _load_unknown) for op in range(256)]
    costs = [_OPCODE_COST] * 256
    for op in (_P.EMPTY_LIST, _P.EMPTY_DICT, _P.LIST, _P.DICT, _P.MARK,  # a new list/dict: 56-64 bytes + slot
               _P.PUT, _P.BINPUT, _P.LONG_BINPUT, _P.MEMOIZE):  # a memo entry: ~100 bytes with its int key
        costs[op[0]] = 2 * _OPCODE_COST
    for op in (_P.EMPTY_SET, _P.FROZENSET):
        costs[op[0]] = 4 * _OPCODE_COST  # an empty set is 216 bytes
    return dispatch, costs


_DISPATCH, _COSTS = _build_dispatch()


class RestrictedPickleModule:
    """A ``pickle_module`` for ``torch.load`` (exposes ``Unpickler``, ``load``, ``loads``) for one file.

    Args:
        file_size: size of the checkpoint file in bytes (sets the budget, :func:`budget_for`, and caps reads).
        records: zip archives: ``{record name relative to the archive root: size}`` (``"data/0": 4096``), to
            check storage references before torch reads them; ``None`` skips that check.

    ``neutralized`` then lists the globals of that file that were replaced by :class:`InertObject`
    placeholders (e.g. ``yacs.config.CfgNode``, ``posix.system``).
    """

    __name__ = "cotviz.models._safe_pickle"  # torch.load reads pickle_module.__name__ (dill check)
    UnpicklingError = pickle.UnpicklingError

    def __init__(self, file_size: int, *, records: Mapping[str, int] | None = None) -> None:
        self._ctx = _Context(file_size=int(file_size), records=records, limit=budget_for(file_size))
        self.Unpickler: type[RestrictedUnpickler] = type("BoundRestrictedUnpickler", (RestrictedUnpickler,),
                                                          {"_ctx": self._ctx})

    @property
    def neutralized(self) -> frozenset[str]:
        """Qualified names of the globals that were replaced by inert placeholders so far."""
        return frozenset(self._ctx.placeholders)

    @property
    def budget(self) -> tuple[int, int]:
        """``(used, limit)``: estimated bytes of Python objects built so far and the most this file may build."""
        return self._ctx.used, self._ctx.limit

    def validate_sparse(self) -> None:
        """Check the invariants of the sparse tensors the load built; call it after ``torch.load`` returns
        (a legacy file's storages are read after its pickle). Raises :class:`RefusedPickle` (``"corrupt"``)."""
        try:
            for tensor in self._ctx.sparse:
                _validate_sparse(tensor)
        except (RuntimeError, ValueError, TypeError, IndexError) as err:
            raise _invalid_sparse(err) from None
        finally:
            self._ctx.sparse.clear()

    def load(self, file: IO[bytes], **kwargs: Any) -> Any:
        """``pickle.load`` with the restricted unpickler."""
        return self.Unpickler(file, **kwargs).load()

    def loads(self, data: bytes, **kwargs: Any) -> Any:
        """``pickle.loads`` with the restricted unpickler."""
        return self.load(io.BytesIO(data), **kwargs)
