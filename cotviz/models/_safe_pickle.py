"""A restricted ``pickle_module`` for ``torch.load``: untrusted checkpoints never run pickled code.

Why: the official CoTNet training checkpoints (timm ``CheckpointSaver``) pickle ``args`` -- a yacs
``CfgNode`` (a ``dict`` subclass) -- next to the weights. ``torch.load(weights_only=True)`` refuses such a
file, and ``weights_only=False`` with the stock ``pickle`` would import and call whatever the file names,
e.g. ``os.system``. This module is the third way:

* :class:`RestrictedUnpickler` resolves a global (``find_class``) ONLY from an allowlist of inert
  data types and torch's tensor-rebuild functions (the same families ``weights_only=True`` allows);
  it never imports a module the file names.
* Every other global -- a class such as ``yacs.config.CfgNode`` or ``argparse.Namespace``, or a callable
  such as ``posix.system`` / ``builtins.eval`` -- becomes a fresh subclass of :class:`InertObject`:
  calling it (pickle ``REDUCE``), ``__new__`` (``NEWOBJ``), item assignment (``SETITEMS``) and
  ``__setstate__`` (``BUILD``) only store the pickled data. No code of the checkpoint's choosing runs,
  and the tensors around it still load.

Usage (``torch.load`` subclasses ``pickle_module.Unpickler`` and sets ``persistent_load`` itself, so the
zip-format storages keep working)::

    pm = RestrictedPickleModule()
    obj = torch.load(path, map_location="cpu", weights_only=False, pickle_module=pm)
    pm.neutralized  # {"yacs.config.CfgNode", ...}: globals that were replaced by inert placeholders
"""

from __future__ import annotations

import _compat_pickle
import collections
import copyreg
import io
import pickle
from typing import IO, Any

import torch

__all__ = ["InertObject", "RestrictedPickleModule", "RestrictedUnpickler", "is_code_execution_global"]

# Modules/names whose appearance in a checkpoint means "this file tries to run code". Used only to
# REPORT (the allowlist is what keeps loading safe: these are neutralized like any unknown global).
_CODE_EXECUTION_MODULES = frozenset({
    "os", "posix", "nt", "subprocess", "sys", "shutil", "importlib", "runpy", "pty", "socket", "code",
    "codeop", "ctypes", "pickle", "_pickle", "marshal", "types", "webbrowser", "multiprocessing",
    "threading", "asyncio", "signal", "pdb", "timeit", "platform", "operator", "io", "_io", "tempfile",
    "torch.storage", "torch.jit", "torch.hub",
})
_CODE_EXECUTION_BUILTINS = frozenset({
    "eval", "exec", "compile", "getattr", "setattr", "delattr", "__import__", "open", "input",
    "breakpoint", "globals", "locals", "vars", "memoryview", "apply", "execfile", "reload", "file",
})


def is_code_execution_global(qualified: str) -> bool:
    """Whether ``module.name`` is a global that pickle payloads use to run code (``posix.system``, ...)."""
    module, _, name = qualified.rpartition(".")
    if module in ("builtins", "__builtin__"):
        return name in _CODE_EXECUTION_BUILTINS
    root = module.split(".")[0]
    return module in _CODE_EXECUTION_MODULES or root in _CODE_EXECUTION_MODULES


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


def _latin1_encode(obj: str, encoding: str = "latin1") -> bytes:
    """``_codecs.encode`` as used by protocol-2 pickles for ``bytes``; only the latin-1 codec."""
    if encoding.lower().replace("_", "-") not in ("latin1", "latin-1", "iso-8859-1"):
        raise pickle.UnpicklingError(f"refusing codec {encoding!r} in a checkpoint")
    return obj.encode("latin-1")


def _numpy_globals() -> dict[str, Any]:
    """numpy scalars (metrics are sometimes ``np.float64``): scalar rebuild + dtype, nothing else."""
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy is a dependency
        return {}
    core = getattr(np, "_core", None) or np.core
    scalar = core.multiarray.scalar
    return {
        "numpy.core.multiarray.scalar": scalar,
        "numpy._core.multiarray.scalar": scalar,
        "numpy.dtype": np.dtype,
        **{f"numpy.dtypes.{t.__name__}": t for t in (type(np.dtype(c)) for c in "?bhilqBHILQefdgFDG")},
    }


def allowed_globals() -> dict[str, Any]:
    """The allowlist: ``"module.name"`` -> object that ``find_class`` may return.

    Inert data types, torch dtypes/sizes/devices/layouts, and the tensor-rebuild functions torch itself
    allows with ``weights_only=True``. ``copyreg`` constructors are safe because every class or function
    they call also had to come through this allowlist (or is an :class:`InertObject`).
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
    for name in dir(torch._utils):  # _rebuild_tensor_v2, _rebuild_parameter, ... (whatever this torch has)
        if name.startswith("_rebuild_") and name != "_rebuild_xla_tensor":
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


class RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` whose ``find_class`` serves the allowlist and inert placeholders only.

    Not used directly: :class:`RestrictedPickleModule` makes a subclass bound to its own allowlist and
    record of neutralized globals (no module-level state).
    """

    _allowed: dict[str, Any]  # set by RestrictedPickleModule on its bound subclass
    _placeholders: dict[str, type[InertObject]]

    def find_class(self, module: str, name: str) -> Any:  # noqa: D102
        # Protocol <= 2 pickles written by Python 3 use Python 2 names (__builtin__.set, copy_reg...).
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        qualified = f"{module}.{name}"
        if qualified in self._allowed:
            return self._allowed[qualified]
        placeholder = self._placeholders.get(qualified)
        if placeholder is None:
            placeholder = type(f"Inert_{name}", (InertObject,), {"cotviz_global": qualified})
            self._placeholders[qualified] = placeholder
        return placeholder


class RestrictedPickleModule:
    """A ``pickle_module`` for ``torch.load`` (exposes ``Unpickler``, ``load``, ``loads``).

    One instance per load: ``neutralized`` then lists the globals of that file that were replaced by
    :class:`InertObject` placeholders (e.g. ``yacs.config.CfgNode``, ``posix.system``).
    """

    __name__ = "cotviz.models._safe_pickle"  # torch.load reads pickle_module.__name__ (dill check)
    UnpicklingError = pickle.UnpicklingError

    def __init__(self) -> None:
        self._placeholders: dict[str, type[InertObject]] = {}
        namespace = {"_allowed": allowed_globals(), "_placeholders": self._placeholders}
        self.Unpickler: type[RestrictedUnpickler] = type("BoundRestrictedUnpickler", (RestrictedUnpickler,),
                                                          namespace)

    @property
    def neutralized(self) -> frozenset[str]:
        """Qualified names of the globals that were replaced by inert placeholders so far."""
        return frozenset(self._placeholders)

    def load(self, file: IO[bytes], **kwargs: Any) -> Any:
        """``pickle.load`` with the restricted unpickler."""
        return self.Unpickler(file, **kwargs).load()

    def loads(self, data: bytes, **kwargs: Any) -> Any:
        """``pickle.loads`` with the restricted unpickler."""
        return self.load(io.BytesIO(data), **kwargs)
