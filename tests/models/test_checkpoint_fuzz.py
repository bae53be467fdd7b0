"""Property-based fuzzing of the checkpoint reader, one of the two doors strangers' files come through.

Three generators: real checkpoints (``torch.save`` of a tiny state_dict and of an official-layout dict, zip
and legacy) with mutated bytes -- of the whole file or of the zip's ``data.pkl`` re-packed --, random pickle
opcode streams, and well-formed hostile programs (calls, ``BUILD``, ``SETITEM``, ``APPEND`` on globals from
the allowlist, code-executing names and a canary). The invariant for every file:

* :func:`read_checkpoint` loads it or raises :class:`CheckpointError` with one line -- never another exception;
* nothing runs: the canary (``cotviz_fuzz_canary.touch`` on ``sys.path``, and ``builtins.open``, both aimed at
  a file) never creates its file and the canary module is never imported;
* nothing process-wide changes (:func:`hostile_checkpoints.process_snapshot`);
* the load's peak resident memory stays within 256 MiB of what the process had (Linux ``/proc``).

Examples per property: ``COTVIZ_FUZZ_EXAMPLES`` (default 25, a fixed sequence for CI; when set, e.g.
``COTVIZ_FUZZ_EXAMPLES=20000 pytest tests/models/test_checkpoint_fuzz.py``, each run draws new examples).
"""

from __future__ import annotations

import argparse
import io
import os
import pickle
import struct
import sys
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cotviz.errors import CheckpointError
from cotviz.models.checkpoint import CheckpointSafetyWarning, read_checkpoint

from . import hostile_checkpoints as hc

EXAMPLES = int(os.environ.get("COTVIZ_FUZZ_EXAMPLES", "25"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize="COTVIZ_FUZZ_EXAMPLES" not in os.environ,
                database=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                      HealthCheck.function_scoped_fixture])
MEMORY_MIB = 256
CANARY_MODULE = "cotviz_fuzz_canary"


# -------------------------------------------------------------------------------------------- harness


class Reader:
    """Writes each fuzzed file and reads it with the invariants checked."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.canary = folder / "CANARY"
        self.path = folder / "fuzzed.pth"

    def check(self, data: bytes) -> None:
        self.path.write_bytes(data)
        before = hc.process_snapshot()
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS, so the peak below is this load's
        base = _status("VmRSS")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", CheckpointSafetyWarning)
                read_checkpoint(self.path)
        except CheckpointError as err:
            message = str(err)
            assert message and "\n" not in message, message
        peak = _status("VmHWM") - base
        assert not self.canary.exists(), "a pickled call ran"
        assert CANARY_MODULE not in sys.modules, "a module the file named was imported"
        assert hc.snapshot_changes(before, hc.process_snapshot()) == []
        assert peak < MEMORY_MIB, f"the load took {peak:.0f} MiB"


def _status(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


@pytest.fixture(scope="module")
def reader(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Reader]:
    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("needs Linux /proc to measure the peak memory of each load")
    folder = tmp_path_factory.mktemp("fuzz")
    site = folder / "site"
    site.mkdir()
    (site / f"{CANARY_MODULE}.py").write_text("def touch(path, mode='w'):\n    open(path, mode).close()\n")
    sys.path.insert(0, str(site))
    out = Reader(folder)
    for base in BASES.values():  # warm up lazy imports and caches of legitimate loads
        out.check(base)
    try:
        yield out
    finally:
        sys.path.remove(str(site))


# ------------------------------------------------------------------------------------------ real files


def _bases() -> dict[str, bytes]:
    tiny = {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3), "n": torch.tensor(3), "h": torch.ones(2).half(),
            "sparse": torch.eye(2).to_sparse()}
    official = {"epoch": 3, "arch": "tiny", "state_dict": tiny, "state_dict_ema": dict(tiny), "metric": np.float64(1.5),
                "args": argparse.Namespace(lr=0.1, model="tiny"), "version": 2}
    out = {}
    for name, obj in (("tiny", tiny), ("official", official)):
        for legacy in (False, True):
            buf = io.BytesIO()
            torch.save(obj, buf, _use_new_zipfile_serialization=not legacy)
            out[f"{name}-{'legacy' if legacy else 'zip'}"] = buf.getvalue()
    return out


BASES = _bases()


def _zip_parts(data: bytes) -> tuple[bytes, dict[str, bytes]]:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        names = zf.namelist()
        pkl = zf.read(next(n for n in names if n.endswith("data.pkl")))
        storages = {n.rsplit("/", 1)[1]: zf.read(n) for n in names if "/data/" in n}
    return pkl, storages


@st.composite
def mutated(draw: st.DrawFn, data: bytes) -> bytes:
    """``data`` with 1-4 mutations: byte flips, overwritten or duplicated spans, insertions, a truncation."""
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "overwrite", "insert", "duplicate", "truncate", "interesting"]))
        at = draw(st.integers(0, max(len(out) - 1, 0)))
        if kind == "flip" and out:
            out[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "overwrite":
            chunk = draw(st.binary(min_size=1, max_size=16))
            out[at:at + len(chunk)] = chunk
        elif kind == "insert":
            out[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "duplicate":
            out[at:at] = out[at:at + draw(st.integers(1, 64))]
        elif kind == "truncate":
            del out[at:]
        else:  # a boundary value where a length or an index may sit
            value = draw(st.sampled_from([0, 1, 0x7F, 0xFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, 2 ** 63 - 1]))
            out[at:at + 8] = struct.pack("<Q", value)[:draw(st.sampled_from([1, 2, 4, 8]))]
    return bytes(out)


@FUZZ
@given(data=st.sampled_from(sorted(BASES)).flatmap(lambda name: mutated(BASES[name])))
def test_mutated_checkpoint_files(reader: Reader, data: bytes) -> None:
    reader.check(data)


@FUZZ
@given(parts=st.sampled_from([k for k in sorted(BASES) if k.endswith("zip")]).flatmap(
    lambda name: st.tuples(mutated(_zip_parts(BASES[name])[0]), st.just(_zip_parts(BASES[name])[1]))))
def test_mutated_pickles_in_intact_zips(reader: Reader, parts: tuple[bytes, dict[str, bytes]]) -> None:
    reader.check(hc.torch_zip(*parts))


# --------------------------------------------------------------------------------- opcode streams

GLOBALS = [
    # allowlisted data types and tensor rebuilds
    ("builtins", "list"), ("builtins", "dict"), ("builtins", "set"), ("builtins", "frozenset"), ("builtins", "tuple"),
    ("builtins", "bytearray"), ("builtins", "range"), ("builtins", "complex"), ("builtins", "slice"),
    ("builtins", "object"), ("collections", "OrderedDict"), ("collections", "Counter"), ("collections", "defaultdict"),
    ("copyreg", "_reconstructor"), ("copyreg", "__newobj__"), ("copyreg", "__newobj_ex__"), ("_codecs", "encode"),
    ("torch", "Size"), ("torch", "Tensor"), ("torch", "device"), ("torch", "float32"), ("torch", "FloatStorage"),
    ("torch", "sparse_coo"), ("torch.nn.parameter", "Parameter"), ("torch.serialization", "_get_layout"),
    ("torch._tensor", "_rebuild_from_type_v2"), ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_parameter"), ("torch._utils", "_rebuild_sparse_tensor"),
    ("torch._utils", "_rebuild_qtensor"), ("torch._utils", "_rebuild_meta_tensor_no_storage"),
    ("torch.storage", "TypedStorage"), ("torch.storage", "UntypedStorage"), ("numpy", "dtype"),
    ("numpy._core.multiarray", "scalar"), ("__builtin__", "set"),
    # code, and the canary
    ("builtins", "eval"), ("builtins", "exec"), ("builtins", "getattr"), ("builtins", "__import__"),
    ("builtins", "open"), ("os", "system"), ("posix", "system"), ("subprocess", "call"), ("functools", "partial"),
    ("torch.serialization", "load"), ("yacs.config", "CfgNode"), (CANARY_MODULE, "touch"),
]
STRINGS = ["storage", "cpu", "0", "w", "state_dict", "touch CANARY", "__class__", "most_common", "f8", "latin1",
           "torch.strided", "_backward_hooks", "", "x" * 300]


def _canary_strings(reader_folder: Path) -> list[str]:
    return [str(reader_folder / "CANARY")]


def _glob(module: str, name: str) -> bytes:
    return hc.global_(module, name)


ARGLESS = [pickle.MARK, pickle.POP, pickle.POP_MARK, pickle.DUP, pickle.NONE, pickle.NEWTRUE, pickle.NEWFALSE,
           pickle.EMPTY_TUPLE, pickle.EMPTY_LIST, pickle.EMPTY_DICT, pickle.EMPTY_SET, pickle.TUPLE, pickle.TUPLE1,
           pickle.TUPLE2, pickle.TUPLE3, pickle.LIST, pickle.DICT, pickle.FROZENSET, pickle.APPEND, pickle.APPENDS,
           pickle.SETITEM, pickle.SETITEMS, pickle.ADDITEMS, pickle.BUILD, pickle.REDUCE, pickle.NEWOBJ,
           pickle.NEWOBJ_EX, pickle.OBJ, pickle.STACK_GLOBAL, pickle.MEMOIZE, pickle.BINPERSID]


def opcode(folder: Path) -> st.SearchStrategy[bytes]:
    strings = st.sampled_from(STRINGS + _canary_strings(folder))
    sizes = st.sampled_from([0, 1, 4, 255, 60_000_000, 5 << 30, 2 ** 62])
    return st.one_of(
        st.sampled_from(ARGLESS),
        st.integers(0, 255).map(lambda v: pickle.BININT1 + bytes([v])),
        st.integers(-(2 ** 31), 2 ** 31 - 1).map(lambda v: pickle.BININT + struct.pack("<i", v)),
        st.one_of(sizes, st.integers(-(2 ** 80), 2 ** 80)).map(hc.integer),
        st.floats(allow_nan=True).map(lambda v: pickle.BINFLOAT + struct.pack(">d", v)),
        st.integers(0, 5).map(lambda i: pickle.BINGET + bytes([i])),
        st.integers(0, 5).map(lambda i: pickle.BINPUT + bytes([i])),
        strings.map(hc.string),
        strings.map(lambda s: pickle.SHORT_BINBYTES + bytes([len(s.encode()[:255])]) + s.encode()[:255]),
        sizes.map(lambda n: pickle.BYTEARRAY8 + struct.pack("<Q", n % 2 ** 64)),
        sizes.map(lambda n: pickle.FRAME + struct.pack("<Q", n % 2 ** 64)),
        st.sampled_from(GLOBALS).map(lambda g: _glob(*g)),
        st.sampled_from(GLOBALS).map(lambda g: pickle.INST + f"{g[0]}\n{g[1]}\n".encode()),
        st.sampled_from([pickle.EXT1 + b"\x01", pickle.PERSID + b"0\n", pickle.PROTO + b"\x05", b"\xff",
                         pickle.UNICODE + b"caf\\u00e9\n", pickle.STRING + b"'a\\x00'\n", pickle.INT + b"10\n"]),
    )


@FUZZ
@given(data=st.data())
def test_random_opcode_streams(reader: Reader, data: st.DataObject) -> None:
    ops = data.draw(st.lists(opcode(reader.folder), max_size=40))
    stream = hc.P2 + b"".join(ops) + pickle.STOP
    wrap = data.draw(st.sampled_from(["zip", "legacy"]))
    reader.check(hc.torch_zip(stream, hc.WEIGHTS_STORAGE) if wrap == "zip" else hc.legacy_file(stream))


# ------------------------------------------------------------------------------------ hostile programs


def expressions(folder: Path) -> st.SearchStrategy[bytes]:
    """Opcode streams that each push exactly one object: literals, globals, and calls / BUILD / SETITEM /
    APPEND / containers of other expressions (a well-formed program, so the interesting opcodes run)."""
    strings = st.sampled_from(STRINGS + _canary_strings(folder))
    leaves = st.one_of(
        st.sampled_from([0, 1, 4, 3000, 60_000_000, 5 << 30, 10 ** 20, -1]).map(hc.integer),
        strings.map(hc.string),
        st.sampled_from([pickle.NONE, pickle.NEWTRUE, pickle.EMPTY_TUPLE, pickle.EMPTY_DICT, pickle.EMPTY_LIST]),
        st.sampled_from(GLOBALS).map(lambda g: _glob(*g)),
    )

    def extend(inner: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
        args = st.lists(inner, max_size=4)
        return st.one_of(
            st.tuples(inner, args).map(lambda fa: hc.call(fa[0], *fa[1])),
            st.tuples(inner, args).map(lambda ca: ca[0] + pickle.MARK + b"".join(ca[1]) + pickle.TUPLE
                                       + pickle.NEWOBJ),
            st.tuples(inner, inner).map(lambda os_: os_[0] + os_[1] + pickle.BUILD),
            st.tuples(inner, inner, inner).map(lambda t: t[0] + t[1] + t[2] + pickle.SETITEM),
            st.tuples(inner, inner).map(lambda t: t[0] + t[1] + pickle.APPEND),
            st.tuples(inner, inner).map(lambda t: t[0] + pickle.NONE + t[1] + pickle.TUPLE2 + pickle.BUILD),
            args.map(lambda xs: pickle.MARK + b"".join(xs) + pickle.TUPLE),
            args.map(lambda xs: pickle.MARK + b"".join(xs) + pickle.LIST),
            st.lists(st.tuples(inner, inner), max_size=3).map(lambda kv: hc.dict_(*kv)),
            inner.map(lambda x: x + pickle.BINPUT + b"\x07" + pickle.POP + pickle.BINGET + b"\x07"),
        )

    return st.recursive(leaves, extend, max_leaves=12)


@FUZZ
@given(data=st.data())
def test_hostile_programs(reader: Reader, data: st.DataObject) -> None:
    program = data.draw(expressions(reader.folder))
    reader.check(hc.torch_zip(hc.with_weights((hc.string("payload"), program)), hc.WEIGHTS_STORAGE))


def test_codecs_a_file_could_make_the_reader_import_are_imported_up_front() -> None:
    """Found by these tests: zipfile decodes non-UTF-8 entry names with cp437 and the pure-Python unpickler
    decodes protocol-0 UNICODE with raw-unicode-escape, each importing its codec on first use; the reader
    imports them itself, so a file decides no import (in a fresh interpreter both are absent before)."""
    import subprocess

    code = ("import sys; before = {m for m in sys.modules if m.startswith('encodings.')}; "
            "import cotviz.models.checkpoint; "
            "print(sorted({m for m in sys.modules if m.startswith('encodings.')} - before))")
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=root,
                         env={**os.environ, "PYTHONPATH": str(root)}).stdout
    assert "'encodings.cp437'" in out and "'encodings.raw_unicode_escape'" in out, out


def test_the_canary_would_show_a_call(reader: Reader, tmp_path: Path) -> None:
    """The harness can fail: the same canary GLOBAL through the stock unpickler creates the file."""
    payload = hc.P2 + hc.call(hc.global_(CANARY_MODULE, "touch"), hc.string(str(reader.canary))) + pickle.STOP
    try:
        pickle.loads(payload)
        assert reader.canary.exists()
    finally:
        reader.canary.unlink(missing_ok=True)
        sys.modules.pop(CANARY_MODULE, None)
    reader.check(hc.torch_zip(hc.with_weights((hc.string("x"), payload[2:-1])), hc.WEIGHTS_STORAGE))


def _unused(*_: Any) -> None:  # pragma: no cover - keeps type checkers quiet about helper signatures
    return None
