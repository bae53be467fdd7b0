"""Hand-assembled hostile checkpoints (raw pickle opcodes), shared by the checkpoint tests and fuzz tests.

Each builder returns the bytes of a complete file: :func:`torch_zip` wraps a pickle stream in the zip layout
``torch.save`` writes (``archive/data.pkl`` + ``archive/data/<key>`` storages), :func:`legacy_file` in the
legacy (pre-1.6) layout. The pickles are written opcode by opcode (``pickle`` module constants), because
the interesting files are the ones ``pickle.dumps`` would never produce: ``list(range(60_000_000))`` in
30 bytes, ``BUILD`` on a class, a call of the result of ``getattr(__import__('os'), 'system')``.
"""

from __future__ import annotations

import io
import pickle
import struct
import zipfile
from pathlib import Path
from typing import Any

import torch

P2 = pickle.PROTO + b"\x02"


def global_(module: str, name: str) -> bytes:
    """``GLOBAL module name`` (pushes the named object)."""
    return pickle.GLOBAL + module.encode() + b"\n" + name.encode() + b"\n"


def string(text: str) -> bytes:
    """``BINUNICODE`` text."""
    data = text.encode("utf-8", "surrogatepass")
    return pickle.BINUNICODE + struct.pack("<I", len(data)) + data


def integer(value: int) -> bytes:
    """The shortest integer opcode for ``value``."""
    if 0 <= value < 256:
        return pickle.BININT1 + bytes([value])
    if -(2 ** 31) <= value < 2 ** 31:
        return pickle.BININT + struct.pack("<i", value)
    data = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
    return pickle.LONG1 + bytes([len(data)]) + data


def call(func: bytes, *args: bytes) -> bytes:
    """``func(*args)`` through ``REDUCE`` (``func`` and each arg are opcode streams pushing one object)."""
    return func + pickle.MARK + b"".join(args) + pickle.TUPLE + pickle.REDUCE


def dict_(*items: tuple[bytes, bytes]) -> bytes:
    """A ``dict`` of ``(key, value)`` opcode streams."""
    body = b"".join(k + v for k, v in items)
    return pickle.EMPTY_DICT + (pickle.MARK + body + pickle.SETITEMS if items else b"")


def tensor(key: str, numel: int, dtype: str = "FloatStorage", shape: tuple[int, ...] | None = None,
           stride: tuple[int, ...] | None = None) -> bytes:
    """``_rebuild_tensor_v2`` of zip storage ``key`` (what ``torch.save`` writes for a contiguous tensor)."""
    shape = (numel,) if shape is None else shape
    stride = (1,) if stride is None else stride
    pid = pickle.MARK + string("storage") + global_("torch", dtype) + string(key) + string("cpu") + integer(
        numel) + pickle.TUPLE + pickle.BINPERSID
    size = pickle.MARK + b"".join(integer(s) for s in shape) + pickle.TUPLE
    strides = pickle.MARK + b"".join(integer(s) for s in stride) + pickle.TUPLE
    hooks = call(global_("collections", "OrderedDict"))
    return call(global_("torch._utils", "_rebuild_tensor_v2"), pid, integer(0), size, strides,
                pickle.NEWFALSE, hooks)


def with_weights(*items: tuple[bytes, bytes]) -> bytes:
    """A pickle of ``{"state_dict": {"w": tensor of storage '0' (4 floats)}, **items}``: weights plus a payload."""
    return P2 + dict_((string("state_dict"), dict_((string("w"), tensor("0", 4)))), *items) + pickle.STOP


WEIGHTS_STORAGE = {"0": struct.pack("<4f", 1.0, 2.0, 3.0, 4.0)}


def torch_zip(data_pkl: bytes, storages: dict[str, bytes] | None = None, *,
              compression: int = zipfile.ZIP_STORED) -> bytes:
    """The zip layout of ``torch.save`` around a pickle stream and raw storages."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=compression) as zf:
        zf.writestr("archive/data.pkl", data_pkl)
        zf.writestr("archive/byteorder", b"little")
        for key, data in (storages or {}).items():
            zf.writestr(f"archive/data/{key}", data)
        zf.writestr("archive/version", b"3\n")
    return buf.getvalue()


def legacy_file(data_pkl: bytes, storage_keys: tuple[str, ...] = (), storages: bytes = b"") -> bytes:
    """The legacy layout: magic number, protocol version, sys info, the pickle, storage keys, raw storages."""
    head = pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2) + pickle.dumps(1001, protocol=2) + pickle.dumps(
        {"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 4}},
        protocol=2)
    return head + data_pkl + pickle.dumps(list(storage_keys), protocol=2) + storages


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# ------------------------------------------------------------------------------------- hostile pickles


def list_of_range(n: int = 60_000_000) -> bytes:
    """``list(range(n))``: a few bytes that ask for ``n`` list slots and ints (2.6 GiB for 60M)."""
    rng = call(global_("builtins", "range"), integer(n))
    return P2 + call(global_("builtins", "list"), rng) + pickle.STOP


def big_bytearray(n: int = 5 << 30) -> bytes:
    """``bytearray(n)``: 5 GiB from a ~30-byte pickle."""
    return P2 + call(global_("builtins", "bytearray"), integer(n)) + pickle.STOP


def many_list_items(n: int) -> bytes:
    """A list of ``n`` small ints, two bytes per item (``BININT1``): a pickle of Python lists."""
    return P2 + pickle.EMPTY_LIST + pickle.MARK + b"K\x00" * n + pickle.APPENDS + pickle.STOP


def setattr_on_global(module: str, name: str, attr: str, value: bytes) -> bytes:
    """``BUILD`` with a slot state on a class the file names: ``setattr(module.name, attr, value)``."""
    build = global_(module, name) + pickle.NONE + dict_((string(attr), value)) + pickle.TUPLE2 + pickle.BUILD
    return with_weights((string("tamper"), build))


def setitem_on_global(module: str, name: str, key: bytes, value: bytes) -> bytes:
    """``SETITEM`` on an object the file names (``module.name[key] = value``)."""
    return with_weights((string("tamper"), global_(module, name) + key + value + pickle.SETITEM))


def getattr_import_chain(command: str) -> bytes:
    """``getattr(__import__('os'), 'system')(command)``: the classic chain through builtins."""
    os_mod = call(global_("builtins", "__import__"), string("os"))
    system = call(global_("builtins", "getattr"), os_mod, string("system"))
    return with_weights((string("args"), call(system, string(command))))


def partial_payload(command: str) -> bytes:
    """``functools.partial(os.system, command)()``."""
    partial = call(global_("functools", "partial"), global_("os", "system"), string(command))
    return with_weights((string("args"), call(partial)))


def rebuild_from_type_eval(code: str) -> bytes:
    """``torch._tensor._rebuild_from_type_v2(eval, torch.Tensor, (code,), {})``: eval through an allowed function."""
    payload = call(global_("torch._tensor", "_rebuild_from_type_v2"), global_("builtins", "eval"),
                   global_("torch", "Tensor"), pickle.MARK + string(code) + pickle.TUPLE, pickle.EMPTY_DICT)
    return with_weights((string("args"), payload))


def nested_torch_load(path: str) -> bytes:
    """``torch.serialization.load(path)``: a checkpoint that loads another file (with torch's trusting default)."""
    return with_weights((string("args"), call(global_("torch.serialization", "load"), string(path))))


def canary_call(module: str, name: str, path: Path) -> bytes:
    """``module.name(path, 'w')``: a GLOBAL to a function that would create ``path`` if it ran."""
    return with_weights((string("args"), call(global_(module, name), string(str(path)), string("w"))))


def legacy_state_dict(tensors: dict[str, torch.Tensor]) -> bytes:
    buf = io.BytesIO()
    torch.save(tensors, buf, _use_new_zipfile_serialization=False)
    return buf.getvalue()


def zip_state_dict(tensors: dict[str, torch.Tensor]) -> bytes:
    buf = io.BytesIO()
    torch.save(tensors, buf)
    return buf.getvalue()


def deep_tuple_key(depth: int) -> bytes:
    """A dict whose key is ``depth`` nested 1-tuples: hashing it recurses ``depth`` C frames (a crash at ~10^5)."""
    key = pickle.EMPTY_TUPLE + pickle.TUPLE1 * depth
    return with_weights((key, pickle.NONE))


def tuple_dag_key(levels: int) -> bytes:
    """A dict key ``t_levels`` with ``t_k = (t_{k-1}, t_{k-1})`` shared through the memo: 7 bytes per level,
    ``2**levels`` steps for each hash of it."""
    key = pickle.EMPTY_TUPLE + pickle.BINPUT + b"\x05"
    key += (pickle.BINGET + b"\x05" + pickle.BINGET + b"\x05" + pickle.TUPLE2 + pickle.BINPUT + b"\x05") * levels
    return with_weights((key, pickle.NONE))


def shared_list_everywhere(keys: int, items: int) -> bytes:
    """``{"k0": L, "k1": L, ...}`` with one list ``L`` of ``items`` ints shared through the memo: small to
    store, quadratic for a reader that walks every value."""
    shared = pickle.EMPTY_LIST + pickle.MARK + b"K\x00" * items + pickle.APPENDS + pickle.BINPUT + b"\x00"
    body = pickle.EMPTY_DICT + pickle.MARK + string("k0") + shared
    body += b"".join(string(f"k{i}") + pickle.BINGET + b"\x00" for i in range(1, keys)) + pickle.SETITEMS
    return P2 + body + pickle.STOP


def nested_module_chain(depth: int) -> bytes:
    """A pickled ``nn.Module`` whose ``_modules`` nest ``depth`` levels (built bottom-up through the memo)."""
    def module(child: bytes | None) -> bytes:
        modules = dict_((string("m"), child)) if child is not None else pickle.EMPTY_DICT
        state = dict_((string("_parameters"), dict_((string("w"), tensor("0", 4)))) if child is None else
                      (string("_parameters"), pickle.EMPTY_DICT),
                      (string("_buffers"), pickle.EMPTY_DICT), (string("_modules"), modules))
        return global_("fake_models", "Block") + pickle.EMPTY_TUPLE + pickle.NEWOBJ + state + pickle.BUILD

    out = P2 + module(None) + pickle.BINPUT + b"\x00" + pickle.POP
    for _ in range(depth):
        out += module(pickle.BINGET + b"\x00") + pickle.BINPUT + b"\x00" + pickle.POP
    return out + pickle.BINGET + b"\x00" + pickle.STOP


def repeated_prefix_key(repeats: int) -> bytes:
    """A state_dict whose one key is ``"module." * repeats + "w"`` (stripping it one level at a time is
    quadratic)."""
    return P2 + dict_((string("module." * repeats + "w"), tensor("0", 4))) + pickle.STOP


def zip_bomb(expanded: int) -> bytes:
    """A deflated storage record of ``expanded`` zero bytes (a few hundred KiB in the file)."""
    data = P2 + dict_((string("w"), tensor("0", expanded // 4))) + pickle.STOP
    return torch_zip(data, {"0": bytes(expanded)}, compression=zipfile.ZIP_DEFLATED)


# ------------------------------------------------------------------------------- process-wide state


_WARM: list[bool] = []


def _warm_up() -> None:
    """One legitimate load of each format per process: torch.load's own first-call imports
    (``torch.utils.serialization``) are not a file's doing."""
    import tempfile

    from cotviz.models.checkpoint import read_checkpoint

    if _WARM:
        return
    with tempfile.TemporaryDirectory() as folder:
        for i, data in enumerate((zip_state_dict({"w": torch.ones(2)}), legacy_state_dict({"w": torch.ones(2)}))):
            read_checkpoint(write(Path(folder) / f"warm{i}.pth", data))
    _WARM.append(True)


def process_snapshot() -> dict[str, Any]:
    """References to everything a checkpoint could reach by name, to compare after a load with
    :func:`snapshot_changes`: the ``vars()`` of every allowlisted object (and of its type), of the modules
    they live in and of :class:`InertObject`; imported modules; pickle's extension cache; torch's
    pending sparse-tensor list and layout cache. The first call makes one legitimate load of each format."""
    _warm_up()
    import builtins
    import collections
    import copyreg
    import sys

    from cotviz.models._safe_pickle import InertObject, allowed_globals

    objects: dict[str, Any] = {}
    for name, obj in allowed_globals().items():
        objects[name] = obj
        objects[f"type({name})"] = type(obj)
    for module in (builtins, collections, copyreg, torch, torch._utils, torch.serialization, torch.storage,
                   torch._tensor, torch.nn.parameter):
        objects[module.__name__] = module
    objects["InertObject"] = InertObject
    snap: dict[str, Any] = {}
    for name, obj in objects.items():
        try:
            snap[name] = dict(vars(obj))
        except TypeError:  # no __dict__ (dtypes, layouts): immutable C objects
            continue
    snap["<sys.modules>"] = set(sys.modules)
    snap["<copyreg._extension_cache>"] = dict(copyreg._extension_cache)  # type: ignore[attr-defined]
    snap["<torch sparse tensors to validate>"] = list(torch._utils._sparse_tensors_to_validate)
    snap["<torch layout cache>"] = dict(torch.serialization._get_layout.cache)  # type: ignore[attr-defined]
    return snap


def snapshot_changes(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """What differs between two :func:`process_snapshot` results (attribute values compared by identity)."""
    changes = []
    for name, old in before.items():
        new = after.get(name)
        if isinstance(old, set):
            changes += [f"imported {m}" for m in sorted(new - old)]
        elif isinstance(old, list):
            if len(new) != len(old) or any(a is not b for a, b in zip(old, new, strict=False)):
                changes.append(f"{name} changed")
        else:
            changes += [f"{name}.{k} {'added' if k not in old else 'changed'}" for k in new
                        if k not in old or new[k] is not old[k]]
            changes += [f"{name}.{k} deleted" for k in old if k not in new]
    return changes


# -------------------------------------------------------------------------------- memory, in a child

_CHILD = r'''
import json, resource, sys, time, warnings
from pathlib import Path
resource.setrlimit(resource.RLIMIT_AS, (int(sys.argv[2]), int(sys.argv[2])))  # today's code hits this, not swap
from cotviz.errors import CheckpointError
from cotviz.models.checkpoint import read_checkpoint

def status(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024  # kB -> MiB
    raise KeyError(field)

warnings.simplefilter("ignore")
results = {}
for path in json.loads(sys.argv[1]):
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM: the peak below is this file's
    base = status("VmRSS")
    start = time.perf_counter()
    try:
        read_checkpoint(path)
        outcome = "loaded"
    except CheckpointError as err:
        outcome = "CheckpointError: " + str(err)
    except BaseException as err:
        outcome = type(err).__name__ + ": " + str(err)[:300]
    results[Path(path).name] = {"outcome": outcome, "seconds": time.perf_counter() - start,
                                "peak_mib": status("VmHWM"), "extra_mib": status("VmHWM") - base}
print(json.dumps(results))
'''


def load_in_child(paths: list[Path], *, timeout: float = 240, address_space: int = 6 << 30) -> dict[str, Any]:
    """``read_checkpoint`` of each file in one fresh interpreter (the tree of this test file first on
    ``sys.path``): ``{file name: {"outcome", "seconds", "peak_mib", "extra_mib"}}``, ``extra_mib`` being the
    peak resident memory of that one load above the resident memory before it (Linux ``/proc``)."""
    import json
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.run([sys.executable, "-c", _CHILD, json.dumps([str(p) for p in paths]), str(address_space)],
                          capture_output=True, text=True, timeout=timeout, env=env, cwd=root)
    if proc.returncode != 0 or not proc.stdout.strip():
        raise AssertionError(f"the child died (exit {proc.returncode}): {proc.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def claimed_entries_zip(data: bytes, entries: int) -> bytes:
    """``data`` (a zip) with a zip64 end-of-central-directory record that claims ``entries`` entries."""
    at = data.rfind(b"PK\x05\x06")
    cd_size, cd_offset = struct.unpack("<LL", data[at + 12:at + 20])
    body = data[:at]
    record = struct.pack("<4sQHHIIQQQQ", b"PK\x06\x06", 44, 45, 45, 0, 0, entries, entries, cd_size, cd_offset)
    locator = struct.pack("<4sIQI", b"PK\x06\x07", 0, len(body), 1)
    eocd = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, cd_size, cd_offset, 0)
    return body + record + locator + eocd


def bytearray8(size: int) -> bytes:
    """Protocol 5 ``BYTEARRAY8`` claiming ``size`` bytes (the stock unpickler allocates them first)."""
    return pickle.PROTO + b"\x05" + pickle.BYTEARRAY8 + struct.pack("<Q", size) + pickle.STOP


def future_zip_version(data: bytes) -> bytes:
    """``data`` (a zip) whose first central-directory entry needs zip version 6.4 to extract (found by the
    fuzz tests: ``zipfile`` raises ``NotImplementedError`` for it)."""
    at = data.find(b"PK\x01\x02")
    return data[:at + 6] + struct.pack("<H", 64) + data[at + 8:]


def duplicate_entry_zip(data_pkl: bytes, bigger: bytes) -> bytes:
    """A torch zip with two ``archive/data.pkl`` entries (``zipfile`` reads the last, another reader may not)."""
    import warnings

    buf = io.BytesIO()
    with warnings.catch_warnings(), zipfile.ZipFile(buf, "w") as zf:
        warnings.simplefilter("ignore", UserWarning)  # "Duplicate name"
        zf.writestr("archive/data.pkl", bigger)
        zf.writestr("archive/data.pkl", data_pkl)
        zf.writestr("archive/version", b"3\n")
    return buf.getvalue()
