"""Checkpoint reading/loading: formats, EMA choice, prefixes, safety (no pickled code runs), errors."""

from __future__ import annotations

import collections
import hashlib
import io
import os
import pickle
import struct
import subprocess
import sys
import textwrap
import warnings
import zipfile
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from cotviz.errors import CheckpointError
from cotviz.models._safe_pickle import InertObject, RestrictedPickleModule, budget_for
from cotviz.models.checkpoint import (
    CheckpointSafetyWarning,
    load_checkpoint,
    rank_architectures,
    read_checkpoint,
)

from . import hostile_checkpoints as hc

Shapes = dict[str, tuple[int, ...]]


# ------------------------------------------------------------------------------------------- helpers


class Tiny(nn.Module):
    """Conv -> BN -> global pool -> fc: enough keys (param + buffer + classifier) to exercise loading."""

    def __init__(self, num_classes: int = 5) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.bn1(self.conv1(x)).mean((2, 3)))


def random_state(model: nn.Module, seed: int) -> OrderedDict[str, Tensor]:
    """A state_dict with the model's keys/shapes/dtypes and seeded random values (ints: random counts)."""
    gen = torch.Generator().manual_seed(seed)
    out: OrderedDict[str, Tensor] = OrderedDict()
    for key, value in model.state_dict().items():
        if value.is_floating_point():
            out[key] = torch.randn(value.shape, generator=gen).abs() + 0.1  # > 0: valid running_var too
        else:
            out[key] = torch.randint(1, 1000, value.shape, generator=gen, dtype=value.dtype)
    return out


def assert_state_equal(model: nn.Module, expected: dict[str, Tensor]) -> None:
    actual = model.state_dict()
    assert list(actual) == list(expected)
    for key, value in expected.items():
        torch.testing.assert_close(actual[key], value.to(actual[key].dtype), rtol=0, atol=0, msg=key)


def assert_one_line(err: pytest.ExceptionInfo[CheckpointError]) -> str:
    message = str(err.value)
    assert message and "\n" not in message, message
    return message


def fake_state(shapes: Shapes) -> dict[str, Tensor]:
    """Tensors with the given shapes that cost one element each (stride-0 views of a scalar)."""
    return {k: torch.zeros((), dtype=torch.float16).expand(shape) for k, shape in shapes.items()}


class ShellPayload:
    """Pickles as ``func(*args)``: what a malicious checkpoint does to run code when unpickled."""

    def __init__(self, func: Callable[..., Any], *args: Any) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> tuple[Any, ...]:
        return self.func, self.args


def payloads(sentinel: Path) -> dict[str, ShellPayload]:
    """Pickled calls that, if trusted, create ``sentinel``."""
    return {
        "os.system": ShellPayload(os.system, f"touch '{sentinel}'"),
        "subprocess.call": ShellPayload(subprocess.call, ["touch", str(sentinel)]),
        "builtins.exec": ShellPayload(exec, f"open({str(sentinel)!r}, 'w').close()"),
        "builtins.eval": ShellPayload(eval, f"open({str(sentinel)!r}, 'w').close()"),
    }


def _make_dict_subclass_module(root: Path, package: str, source: str) -> None:
    pkg = root / package
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "config.py").write_text(textwrap.dedent(source))


@pytest.fixture
def cfgnode_args(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[], None]:
    """A ``yacs_fake.config.CfgNode`` (a dict subclass, like yacs) that is importable while saving.

    Returns ``make_unimportable()``: drops the module from ``sys.modules`` and ``sys.path``.
    """
    root = tmp_path / "site"
    root.mkdir()
    _make_dict_subclass_module(root, "yacs_fake", """
        class CfgNode(dict):
            IMMUTABLE = "__immutable__"

            def __init__(self, init_dict=None):
                super().__init__(init_dict or {})
                self.__dict__[CfgNode.IMMUTABLE] = False
    """)
    monkeypatch.syspath_prepend(str(root))

    def make_unimportable() -> None:
        sys.path.remove(str(root))  # monkeypatch restores sys.path afterwards
        for name in [m for m in sys.modules if m == "yacs_fake" or m.startswith("yacs_fake.")]:
            monkeypatch.delitem(sys.modules, name)

    return make_unimportable


def official_checkpoint(model: nn.Module, args: Any, *, with_ema: bool = True) -> dict[str, Any]:
    """A dict shaped like timm's ``CheckpointSaver`` output (the official CoTNet training checkpoints)."""
    sd = random_state(model, seed=1)
    params = [k for k, _ in model.named_parameters()]
    optimizer = {  # torch.optim.SGD(momentum=0.9).state_dict() layout
        "state": {i: {"momentum_buffer": torch.full_like(sd[k], 0.01)} for i, k in enumerate(params)},
        "param_groups": [{"lr": 0.1, "momentum": 0.9, "dampening": 0, "weight_decay": 1e-4,
                          "nesterov": False, "params": list(range(len(params)))}],
    }
    ckpt: dict[str, Any] = {"epoch": 299, "arch": "tiny", "state_dict": sd, "optimizer": optimizer,
                            "version": 2, "args": args}
    if with_ema:
        ckpt["state_dict_ema"] = random_state(model, seed=2)
    ckpt["metric"] = 81.25
    return ckpt


# ---------------------------------------------------------------------------------- official format


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_official_checkpoint_with_unimportable_cfgnode_loads_ema_by_default(
        tmp_path: Path, cfgnode_args: Callable[[], None], legacy: bool) -> None:
    from yacs_fake.config import CfgNode  # type: ignore[import-not-found]

    args = CfgNode({"model": "cotnet50", "lr": 0.1, "data": CfgNode({"size": 224})})
    ckpt = official_checkpoint(Tiny(), args)
    path = tmp_path / "official.pth.tar"
    torch.save(ckpt, path, _use_new_zipfile_serialization=not legacy)
    cfgnode_args()
    with pytest.raises(ModuleNotFoundError):
        __import__("yacs_fake.config")
    with pytest.raises(pickle.UnpicklingError):  # premise: torch's safe loader alone refuses the file
        torch.load(path, weights_only=True)

    model = Tiny()
    info = load_checkpoint(model, path)
    assert_state_equal(model, ckpt["state_dict_ema"])
    assert (info.source, info.has_ema, info.used_ema) == ("state_dict_ema", True, True)
    assert (info.arch, info.epoch, info.metric, info.version) == ("tiny", 299, 81.25, 2)
    assert info.loader == "restricted"
    assert info.neutralized_globals == ("yacs_fake.config.CfgNode",)
    assert info.code_execution_globals == ()
    assert info.file_format == ("torch-legacy" if legacy else "torch-zip")
    assert info.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()

    info = load_checkpoint(model, path, use_ema=False)
    assert_state_equal(model, ckpt["state_dict"])
    assert (info.source, info.used_ema) == ("state_dict", False)
    sd, info = read_checkpoint(path, use_ema=True)
    assert info.used_ema and sd.keys() == ckpt["state_dict_ema"].keys()


def test_restricted_unpickler_rebuilds_dict_subclass_as_inert_data(
        tmp_path: Path, cfgnode_args: Callable[[], None]) -> None:
    from yacs_fake.config import CfgNode

    path = tmp_path / "args.pth"
    torch.save({"args": CfgNode({"lr": 0.1, "data": CfgNode({"size": 224})}), "w": torch.ones(2)}, path)
    cfgnode_args()
    restricted = RestrictedPickleModule(path.stat().st_size)
    obj = torch.load(path, weights_only=False, pickle_module=restricted)
    args = obj["args"]
    assert isinstance(args, InertObject) and args.cotviz_global == "yacs_fake.config.CfgNode"
    assert args["lr"] == 0.1 and args["data"]["size"] == 224
    assert args.pickled_state == {"__immutable__": False}
    torch.testing.assert_close(obj["w"], torch.ones(2))
    assert restricted.neutralized == {"yacs_fake.config.CfgNode"}


def test_importable_classes_named_by_the_file_are_never_imported(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "site"
    root.mkdir()
    sentinel = tmp_path / "imported"
    _make_dict_subclass_module(root, "trap_pkg", f"""
        open({str(sentinel)!r}, "w").close()  # importing this module leaves a trace

        class Options(dict):
            def __setstate__(self, state):
                open({str(sentinel)!r}, "w").close()
    """)
    monkeypatch.syspath_prepend(str(root))
    from trap_pkg.config import Options  # type: ignore[import-not-found]

    assert sentinel.exists()  # premise: importing the module leaves the trace
    opts = Options(a=1)
    opts.__dict__["x"] = 1  # non-empty state -> BUILD -> __setstate__ if the real class were used
    path = tmp_path / "ckpt.pth"
    torch.save({"state_dict": random_state(Tiny(), 0), "args": opts}, path)
    for name in [m for m in sys.modules if m.startswith("trap_pkg")]:
        monkeypatch.delitem(sys.modules, name)
    sentinel.unlink()

    load_checkpoint(Tiny(), path)  # still importable from sys.path, but must not be imported
    assert not sentinel.exists()
    assert not any(m.startswith("trap_pkg") for m in sys.modules)


@pytest.mark.parametrize("payload", ["os.system", "subprocess.call", "builtins.exec", "builtins.eval"])
@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_malicious_pickle_runs_nothing_and_weights_still_load(tmp_path: Path, payload: str,
                                                              legacy: bool) -> None:
    control = tmp_path / "CONTROL"
    pickle.loads(pickle.dumps(payloads(control)[payload]))  # premise: a trusting unpickler runs it
    assert control.exists()

    sentinel = tmp_path / "SENTINEL"
    model = Tiny()
    ckpt = official_checkpoint(model, payloads(sentinel)[payload])
    ckpt["extra"] = [payloads(sentinel)[payload], {"nested": payloads(sentinel)[payload]}]
    path = tmp_path / "evil.pth"
    torch.save(ckpt, path, _use_new_zipfile_serialization=not legacy)

    with pytest.warns(CheckpointSafetyWarning, match="nothing ran"):
        info = load_checkpoint(model, path)
    assert not sentinel.exists()
    assert_state_equal(model, ckpt["state_dict_ema"])
    assert info.code_execution_globals and set(info.code_execution_globals) <= set(info.neutralized_globals)


def test_malicious_payload_inside_tensor_rebuild_is_neutralized(tmp_path: Path) -> None:
    """A call hidden in a tensor attribute (rebuilt by the allowlisted _rebuild_from_type_v2) stays inert."""
    sentinel = tmp_path / "SENTINEL"
    weight = torch.ones(3)
    weight.evil = payloads(sentinel)["os.system"]  # type: ignore[attr-defined]
    path = tmp_path / "hooks.pth"
    torch.save({"state_dict": {"w": weight}}, path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CheckpointSafetyWarning)
        sd, info = read_checkpoint(path)
    assert not sentinel.exists()
    torch.testing.assert_close(sd["w"], torch.ones(3))
    assert "posix.system" in info.neutralized_globals or "nt.system" in info.neutralized_globals


def test_argparse_namespace_args_become_inert(tmp_path: Path) -> None:
    import argparse

    path = tmp_path / "timm.pth"
    ckpt = official_checkpoint(Tiny(), argparse.Namespace(model="cotnet50", lr=0.1, epochs=300))
    torch.save(ckpt, path)
    with pytest.raises(pickle.UnpicklingError):  # premise: not in torch's weights_only allowlist
        torch.load(path, weights_only=True)
    model = Tiny()
    info = load_checkpoint(model, path)
    assert_state_equal(model, ckpt["state_dict_ema"])
    assert info.neutralized_globals == ("argparse.Namespace",) and info.code_execution_globals == ()


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_plain_checkpoint_loads_through_the_restricted_unpickler(tmp_path: Path, legacy: bool) -> None:
    model = Tiny()
    sd = random_state(model, 3)
    path = tmp_path / "plain.pth"
    torch.save({"state_dict": sd, "epoch": 7}, path, _use_new_zipfile_serialization=not legacy)
    info = load_checkpoint(model, path)
    assert_state_equal(model, sd)
    assert (info.loader, info.source, info.has_ema, info.epoch) == ("restricted", "state_dict", False, 7)
    assert info.neutralized_globals == ()


# ----------------------------------------------------------------------------- layouts and prefixes


def _wrap_model(kind: str, model: nn.Module) -> nn.Module:
    if kind == "dataparallel":
        return nn.DataParallel(model)
    if kind == "compile":
        return torch.compile(model)  # type: ignore[return-value]  # no compilation until called
    if kind == "compile_of_dataparallel":
        return torch.compile(nn.DataParallel(model))  # type: ignore[return-value]
    return model


@pytest.mark.filterwarnings("ignore:.*torch.jit.*:DeprecationWarning")  # emitted by torch.compile's imports
@pytest.mark.parametrize(("wrap", "layout", "source", "prefixes"), [
    ("none", "bare", "bare", ()),
    ("none", "model", "model", ()),
    ("none", "state_dict", "state_dict", ()),
    ("none", "model/state_dict", "model/state_dict", ()),
    ("dataparallel", "bare", "bare", ("module.",)),
    ("compile", "state_dict", "state_dict", ("_orig_mod.",)),
    ("compile_of_dataparallel", "model", "model", ("_orig_mod.", "module.")),
])
def test_wrappers_and_prefixes(tmp_path: Path, wrap: str, layout: str, source: str,
                               prefixes: tuple[str, ...]) -> None:
    trained = Tiny()
    trained.load_state_dict(random_state(trained, 4))
    sd = _wrap_model(wrap, trained).state_dict()
    assert wrap == "none" or not any(k in sd for k in trained.state_dict())  # premise: keys are prefixed
    obj: Any = sd
    for key in reversed(layout.split("/")) if layout != "bare" else []:
        obj = {key: obj}
    path = tmp_path / "w.pt"
    torch.save(obj, path)

    model = Tiny()
    info = load_checkpoint(model, path)
    assert_state_equal(model, trained.state_dict())
    assert (info.source, info.stripped_prefixes, info.has_ema) == (source, prefixes, False)


def test_pickled_whole_module_is_recovered_without_importing_its_class(tmp_path: Path) -> None:
    trained = Tiny()
    trained.load_state_dict(random_state(trained, 5))
    path = tmp_path / "model.pth"
    torch.save(trained, path)
    with pytest.raises(pickle.UnpicklingError):  # premise: needs more than torch's allowlist
        torch.load(path, weights_only=True)
    model = Tiny()
    info = load_checkpoint(model, path)
    assert_state_equal(model, trained.state_dict())
    assert info.source == "pickled_module"
    assert f"{Tiny.__module__}.Tiny" in info.neutralized_globals


def test_missing_num_batches_tracked_is_tolerated(tmp_path: Path) -> None:
    sd = random_state(Tiny(), 6)
    del sd["bn1.num_batches_tracked"]  # checkpoints from before PyTorch 0.4.1
    path = tmp_path / "old.pth"
    torch.save(sd, path)
    model = Tiny()
    info = load_checkpoint(model, path)
    torch.testing.assert_close(model.bn1.running_var, sd["bn1.running_var"])
    assert info.missing_keys == ()


def test_load_into_meta_model_materialises_in_model_dtype(tmp_path: Path) -> None:
    sd = random_state(Tiny(), 7)
    path = tmp_path / "half.pth"
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in sd.items()}, path)
    with torch.device("meta"):
        model = Tiny()
    load_checkpoint(model, path)
    assert all(not t.is_meta for t in model.state_dict().values())
    assert model.conv1.weight.dtype == torch.float32 and isinstance(model.conv1.weight, nn.Parameter)
    assert_state_equal(model, {k: v.half().float() if v.is_floating_point() else v for k, v in sd.items()})


# ------------------------------------------------------------------------------------------- EMA


def test_use_ema_true_without_ema_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "noema.pth"
    torch.save(official_checkpoint(Tiny(), None, with_ema=False), path)
    with pytest.raises(CheckpointError, match="no EMA weights") as err:
        load_checkpoint(Tiny(), path, use_ema=True)
    assert "use_ema=False" in assert_one_line(err)
    bare = tmp_path / "bare.pth"
    torch.save(random_state(Tiny(), 0), bare)
    with pytest.raises(CheckpointError, match="no EMA weights"):
        read_checkpoint(bare, use_ema=True)
    _, info = read_checkpoint(path)  # default falls back to the plain weights
    assert (info.source, info.used_ema) == ("state_dict", False)


def test_only_ema_weights_and_use_ema_false_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "emaonly.pth"
    torch.save({"state_dict_ema": random_state(Tiny(), 0), "epoch": 1}, path)
    with pytest.raises(CheckpointError, match="only EMA weights") as err:
        read_checkpoint(path, use_ema=False)
    assert_one_line(err)
    _, info = read_checkpoint(path)
    assert info.used_ema


# ----------------------------------------------------------------------------------- safetensors


def test_safetensors_round_trip(tmp_path: Path) -> None:
    safetensors_torch = pytest.importorskip("safetensors.torch")
    trained = Tiny()
    trained.load_state_dict(random_state(trained, 8))
    path = tmp_path / "w.safetensors"
    safetensors_torch.save_file(nn.DataParallel(trained).state_dict(), str(path), metadata={"arch": "tiny"})
    model = Tiny()
    info = load_checkpoint(model, path)
    assert_state_equal(model, trained.state_dict())
    assert (info.file_format, info.loader, info.source) == ("safetensors", "safetensors", "bare")
    assert info.stripped_prefixes == ("module.",) and info.arch == "tiny"
    with pytest.raises(CheckpointError, match="no EMA weights"):
        read_checkpoint(path, use_ema=True)


def test_safetensors_without_the_package_says_how_to_install(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    safetensors_torch = pytest.importorskip("safetensors.torch")
    path = tmp_path / "w.safetensors"
    safetensors_torch.save_file({"w": torch.ones(2)}, str(path))
    monkeypatch.setitem(sys.modules, "safetensors", None)  # what `import safetensors` sees when absent
    with pytest.raises(CheckpointError, match="pip install safetensors") as err:
        read_checkpoint(path)
    assert_one_line(err)


def test_truncated_safetensors(tmp_path: Path) -> None:
    safetensors_torch = pytest.importorskip("safetensors.torch")
    path = tmp_path / "w.safetensors"
    safetensors_torch.save_file(random_state(Tiny(), 0), str(path))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 40])
    with pytest.raises(CheckpointError, match="truncated or corrupt") as err:
        read_checkpoint(path)
    assert_one_line(err)


# ---------------------------------------------------------------------------------- broken files


def _jpeg_bytes() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(buf, format="JPEG")
    return buf.getvalue()


def _zip_bytes() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("cotnet50.pth", b"not really")
    return buf.getvalue()


@pytest.mark.parametrize(("content", "expected"), [
    (b"epoch: 3\nlr: 0.1\n", "not a PyTorch checkpoint or .safetensors file (it looks like a text file)"),
    (_jpeg_bytes(), "it looks like a JPEG image"),
    (b"<!DOCTYPE html><html><body>Google Drive - Virus scan warning</body></html>", "an HTML page"),
    (b"\x00\x01\x02\x03" * 64, "unrecognised binary data"),
    (b"", "is empty"),
    (_zip_bytes(), "zip archive but not a PyTorch checkpoint"),
], ids=["text", "jpeg", "html", "binary", "empty", "zip"])
def test_not_a_checkpoint(tmp_path: Path, content: bytes, expected: str) -> None:
    path = tmp_path / "weights.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(Tiny(), path)
    assert expected in assert_one_line(err)


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="checkpoint not found") as err:
        read_checkpoint(tmp_path / "nope.pth")
    assert_one_line(err)
    with pytest.raises(CheckpointError, match="is a directory"):
        read_checkpoint(tmp_path)


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
@pytest.mark.parametrize("fraction", [0.5, 0.9])
def test_truncated_checkpoint(tmp_path: Path, legacy: bool, fraction: float) -> None:
    path = tmp_path / "cut.pth"
    torch.save(official_checkpoint(Tiny(), None), path, _use_new_zipfile_serialization=not legacy)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(CheckpointError, match="truncated") as err:
        read_checkpoint(path)
    assert "download it again" in assert_one_line(err)


def test_no_tensors(tmp_path: Path) -> None:
    path = tmp_path / "meta.pth"
    torch.save({"epoch": 3, "arch": "cotnet50", "metric": 80.0}, path)
    with pytest.raises(CheckpointError, match="contains no tensors") as err:
        read_checkpoint(path)
    assert "epoch" in assert_one_line(err)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit.script is deprecated, still the way
def test_torchscript_archive_is_refused_without_running_it(tmp_path: Path) -> None:
    path = tmp_path / "scripted.pt"
    torch.jit.script(Tiny()).save(str(path))
    with pytest.raises(CheckpointError, match="TorchScript archive") as err:
        read_checkpoint(path)
    assert_one_line(err)


# ------------------------------------------------------------------- wrong classes / architecture


def test_wrong_number_of_classes_strict_and_non_strict(tmp_path: Path) -> None:
    trained = Tiny(num_classes=7)
    sd = random_state(trained, 9)
    path = tmp_path / "seven.pth"
    torch.save({"state_dict": sd}, path)

    model = Tiny(num_classes=5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError, match="has 7 classes") as err:
        load_checkpoint(model, path)
    message = assert_one_line(err)
    assert "num_classes=7" in message and "--num-classes 7" in message and "strict=False" in message
    assert_state_equal(model, before)  # a refused load changes nothing

    info = load_checkpoint(model, path, strict=False)
    assert info.skipped_keys == ("fc.weight", "fc.bias") and info.missing_keys == ("fc.weight", "fc.bias")
    assert_state_equal(model, {**{k: v for k, v in sd.items() if not k.startswith("fc.")},
                               "fc.weight": before["fc.weight"], "fc.bias": before["fc.bias"]})


def test_wrong_architecture_names_closest_candidate_and_keys(tmp_path: Path) -> None:
    class Wide(Tiny):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(3, 4, 5, bias=False)
            self.extra = nn.Linear(2, 2)

    candidates = {"tiny": {k: tuple(v.shape) for k, v in Tiny().state_dict().items()},
                  "wide": {k: tuple(v.shape) for k, v in Wide().state_dict().items()}}
    path = tmp_path / "wide.pth"
    torch.save(random_state(Wide(), 0), path)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(Tiny(), path, candidates=candidates)
    message = assert_one_line(err)
    assert "does not fit this Tiny" in message
    assert "2 unexpected keys (e.g. extra.weight, extra.bias)" in message
    assert "conv1.weight [4, 3, 5, 5] vs [4, 3, 3, 3]" in message
    assert "it looks like wide (100% of keys match)" in message

    model = Tiny()
    info = load_checkpoint(model, path, strict=False)
    assert set(info.skipped_keys) == {"conv1.weight", "extra.weight", "extra.bias"}
    assert info.missing_keys == ("conv1.weight",)


def test_nothing_in_common_is_an_error_even_when_not_strict(tmp_path: Path) -> None:
    path = tmp_path / "other.pth"
    torch.save({"encoder.weight": torch.ones(3)}, path)
    with pytest.raises(CheckpointError, match="1 unexpected keys") as err:
        load_checkpoint(Tiny(), path, strict=False, candidates={})
    assert_one_line(err)


# -------------------------------------------------------------- real registry (meta device only)


@pytest.fixture(scope="module")
def registry_shapes(meta_model: Callable[[str], nn.Module]) -> dict[str, Shapes]:
    from cotviz.models import registry

    return {name: {k: tuple(v.shape) for k, v in meta_model(name).state_dict().items()}
            for name in registry.list_models()}


def _meta_model(name: str, **overrides: Any) -> nn.Module:
    from cotviz.models.registry import create_model

    with torch.device("meta"):
        return create_model(name, **overrides)


def test_rank_architectures_finds_every_manifest_variant(registry_shapes: dict[str, Shapes],
                                                        manifest: dict[str, Any]) -> None:
    for variant, entry in manifest.items():
        shapes = {key: tuple(shape) for key, shape, _ in entry["keys"]}
        ranked = rank_architectures(shapes, candidates=registry_shapes, top=2, exhaustive=True)
        # Best = a variant with exactly this layout (se_cotnetd_152 and _152_L share one: they differ only in
        # input size), and the runner-up is clearly worse.
        assert ranked[0][1] == 1.0 and registry_shapes[ranked[0][0]] == shapes, (variant, ranked)
        assert ranked[1][1] < 0.9 or registry_shapes[ranked[1][0]] == shapes, (variant, ranked)


@pytest.mark.parametrize("actual", ["se_cotnetd_50", "resnet50", "cotnext50_2x48d"])
def test_real_variant_mismatch_names_the_checkpoint_architecture(
        tmp_path: Path, registry_shapes: dict[str, Shapes], actual: str) -> None:
    path = tmp_path / f"{actual}.pth"
    torch.save({"state_dict": fake_state(registry_shapes[actual]), "arch": actual}, path)
    model = _meta_model("cotnet50")
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(model, path, candidates=registry_shapes)
    message = assert_one_line(err)
    assert message.startswith(f"{actual}.pth does not fit model 'cotnet50': ")
    assert f"it looks like {actual} (100% of keys match): use create_model({actual!r}, weights=...)" in message
    assert "missing keys (e.g. " in message or "shape mismatches (checkpoint vs model, e.g. " in message


def test_create_model_weights_names_the_registered_variant(tmp_path: Path,
                                                           registry_shapes: dict[str, Shapes]) -> None:
    from cotviz.models.registry import create_model, registered_shapes

    path = tmp_path / "deep.pth"
    torch.save(fake_state(registry_shapes["cotnet101"]), path)
    with pytest.raises(CheckpointError) as err, torch.device("meta"):
        create_model("cotnet50", weights=path)  # the registry hands load_checkpoint its candidates
    message = assert_one_line(err)
    assert "unexpected keys (e.g. layer3.6." in message
    assert "it looks like cotnet101 (100% of keys match)" in message
    assert dict(registered_shapes()) == registry_shapes  # the lazy mapping is the registry's layouts
    with pytest.raises(CheckpointError) as err:  # without candidates: the same error, no guess
        load_checkpoint(_meta_model("cotnet50"), path)
    assert "looks like" not in assert_one_line(err)


def test_real_variant_with_other_classes_suggests_both_overrides(tmp_path: Path,
                                                                registry_shapes: dict[str, Shapes]) -> None:
    ten = _meta_model("resnet50", num_classes=10)
    path = tmp_path / "r50_10.pth"
    torch.save(fake_state({k: tuple(v.shape) for k, v in ten.state_dict().items()}), path)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(_meta_model("cotnet50"), path, candidates=registry_shapes)
    message = assert_one_line(err)
    assert "it looks like resnet50 (99% of keys match)" in message
    assert "create_model('resnet50', num_classes=10, weights=...) (CLI: --model resnet50 --num-classes 10)" in message


def test_real_unknown_architecture_says_no_registered_model_matches(
        tmp_path: Path, registry_shapes: dict[str, Shapes]) -> None:
    path = tmp_path / "tiny.pth"
    torch.save(random_state(Tiny(), 0), path)
    with pytest.raises(CheckpointError, match="matches no registered model") as err:
        load_checkpoint(_meta_model("cotnet50"), path, candidates=registry_shapes)
    assert_one_line(err)


def test_real_wrong_number_of_classes_says_how_to_build(tmp_path: Path) -> None:
    ten = _meta_model("cotnet50", num_classes=10)
    path = tmp_path / "ten.pth"
    torch.save({"state_dict": fake_state({k: tuple(v.shape) for k, v in ten.state_dict().items()})}, path)
    model = _meta_model("cotnet50")
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(model, path)
    message = assert_one_line(err)
    assert "has 10 classes (fc.weight [10, 2048]) but the model has 1000" in message
    assert "create_model('cotnet50', num_classes=10) (CLI: --num-classes 10)" in message
    with pytest.raises(CheckpointError, match="meta device"):  # fc would stay unmaterialised
        load_checkpoint(model, path, strict=False)


def test_reference_golden_network_loads_and_reproduces_logits(reference_dir: Path) -> None:
    path = reference_dir / "tiny_cotnet_golden.pt"
    from cotviz.models.registry import create_model

    sd, info = read_checkpoint(path)
    golden = torch.load(path, weights_only=True)
    assert (info.source, info.loader, info.num_tensors) == ("state_dict", "restricted", len(golden["state_dict"]))
    assert all(torch.equal(sd[k], v) for k, v in golden["state_dict"].items())
    kwargs = {k: v for k, v in golden["constructor_kwargs"].items() if k != "block"}
    model = create_model("cotnet50", weights=path, **kwargs)  # the registry calls load_checkpoint
    with torch.no_grad():
        logits = model(golden["input"])
    torch.testing.assert_close(logits, golden["logits"], atol=1e-4, rtol=1e-4)


# ----------------------------------------------------------- hostile files: bounded memory and time


def _memory_cases() -> dict[str, tuple[Callable[[], bytes], str | None]]:
    """File name -> (bytes, expected phrase of the one-line refusal; None: it loads)."""
    w = hc.WEIGHTS_STORAGE
    return {
        "list_range.pth": (lambda: hc.torch_zip(hc.list_of_range()),
                           "would build more than 32.0 MiB of Python objects (list of 60,000,000 items)"),
        "bytearray.pth": (lambda: hc.torch_zip(hc.big_bytearray()), "(a bytearray of 5.0 GiB)"),
        "bytearray_legacy.pth": (lambda: hc.legacy_file(hc.big_bytearray()), "(a bytearray of 5.0 GiB)"),
        "bytearray8.pth": (lambda: hc.bytearray8(5 << 30), "(a bytearray of 5.0 GiB)"),
        "lists_zip.pth": (lambda: hc.torch_zip(hc.many_list_items(16_000_000)), "(its pickle opcodes)"),
        "lists_legacy.pth": (lambda: hc.legacy_file(hc.many_list_items(20_000_000)), "(its pickle opcodes)"),
        "lists_big_pickle.pth": (lambda: hc.torch_zip(hc.many_list_items(20_000_000)),
                                 "holds a 38.1 MiB pickle of Python objects, more than a 38.1 MiB checkpoint may"),
        "deep_key.pth": (lambda: hc.torch_zip(hc.deep_tuple_key(200_000), w), "nests tuples more than 100 levels"),
        "tuple_dag_key.pth": (lambda: hc.torch_zip(hc.tuple_dag_key(60), w),
                              "would spend more than 20,000,000 steps hashing its dict keys"),
        "shared.pth": (lambda: hc.torch_zip(hc.shared_list_everywhere(20_000, 20_000)), "contains no tensors"),
        "nested_modules.pth": (lambda: hc.torch_zip(hc.nested_module_chain(3000), w),
                               "nests pickled modules more than 64 levels deep"),
        "zip_bomb.pth": (lambda: hc.zip_bomb(256 << 20), "expands to 256.0 MiB from"),
        "prefixes.pth": (lambda: hc.torch_zip(hc.repeated_prefix_key(100_000), w), None),
    }


@pytest.fixture(scope="module")
def child_loads(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Every memory case read in one fresh interpreter: per file its outcome, load time and peak memory."""
    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("needs Linux /proc to measure the peak memory of each load")
    folder = tmp_path_factory.mktemp("hostile")
    paths = [hc.write(folder / name, make()) for name, (make, _) in _memory_cases().items()]
    return hc.load_in_child(paths, address_space=3 << 30)


@pytest.mark.parametrize("name", list(_memory_cases()))
def test_hostile_file_is_refused_fast_in_bounded_memory(child_loads: dict[str, Any], name: str) -> None:
    """Tiny files asking for gigabytes, big pickles of Python lists, hash/recursion/quadratic bombs: one line
    within seconds and a bounded peak (today: 2.3-5.1 GiB, 40 s, a segfault, a RecursionError)."""
    result, expected = child_loads[name], _memory_cases()[name][1]
    if expected is None:
        assert result["outcome"] == "loaded", result
    else:
        assert result["outcome"].startswith("CheckpointError: ") and expected in result["outcome"], result
        assert "\n" not in result["outcome"]
    assert result["extra_mib"] < 100, result  # resident memory of this load above what the process had
    assert result["seconds"] < 5, result


def test_real_training_checkpoint_structure_is_far_inside_the_budget(tmp_path: Path) -> None:
    """The budget is no obstacle to real files: SE-CoTNetD-152 weights + EMA + SGD momentum + args, the
    largest structure of an official checkpoint, uses a fraction of the floor."""
    import argparse

    with torch.device("meta"):
        from cotviz.models.registry import create_model

        shapes = {k: tuple(v.shape) for k, v in create_model("se_cotnetd_152").state_dict().items()}
    sd = fake_state(shapes)
    ckpt = {"state_dict": sd, "state_dict_ema": fake_state(shapes), "epoch": 299, "arch": "se_cotnetd_152",
            "optimizer": {"state": {i: {"momentum_buffer": v} for i, v in enumerate(sd.values())},
                          "param_groups": [{"lr": 0.1, "params": list(range(len(sd)))}]},
            "args": argparse.Namespace(model="se_cotnetd_152", lr=0.1, epochs=300)}
    path = tmp_path / "official.pth.tar"
    torch.save(ckpt, path)
    restricted = RestrictedPickleModule(path.stat().st_size)
    torch.load(path, weights_only=False, pickle_module=restricted)
    used, limit = restricted.budget
    assert limit == budget_for(path.stat().st_size) and used < limit / 2, (used, limit)
    loaded, info = read_checkpoint(path)
    assert info.used_ema and list(loaded) == list(shapes)


# ----------------------------------------------------------------- hostile files: no side effects


def _tampering_cases() -> dict[str, tuple[bytes, str]]:
    """Pickles that change objects they did not create (or set what no checkpoint sets)."""
    g, s = hc.global_, hc.string
    own_dict = hc.call(g("collections", "OrderedDict"))
    return {
        "Counter.most_common": (hc.setattr_on_global("collections", "Counter", "most_common",
                                                     g("collections", "OrderedDict")),
                                "tries to modify collections.Counter (BUILD: set its state), an object it did not "
                                "create; nothing was changed"),
        "TypedStorage attribute": (hc.setattr_on_global("torch.storage", "TypedStorage", "pwned", pickle.NEWTRUE),
                                   "tries to modify torch.storage.TypedStorage"),
        "class __dict__ state": (hc.with_weights((s("t"), g("collections", "OrderedDict") + hc.dict_(
            (s("fromkeys"), pickle.NONE)) + pickle.BUILD)), "tries to modify collections.OrderedDict"),
        "SETITEM on a class": (hc.setitem_on_global("collections", "OrderedDict", s("k"), pickle.NONE), "(SETITEM)"),
        "APPEND to a class": (hc.with_weights((s("t"), g("builtins", "list") + pickle.NONE + pickle.APPEND)),
                              "tries to modify builtins.list (APPEND)"),
        "BUILD on a dtype": (hc.with_weights((s("t"), g("torch", "float32") + hc.dict_((s("x"), pickle.NONE))
                                              + pickle.BUILD)), "tries to modify torch.float32"),
        "BUILD on a layout": (hc.with_weights((s("t"), hc.call(g("torch.serialization", "_get_layout"),
                                                               s("torch.strided")) + hc.dict_((s("x"), pickle.NONE))
                                              + pickle.BUILD)), "tries to modify torch.strided"),
        "BUILD on a placeholder class": (hc.with_weights((s("t"), g("yacs.config", "CfgNode") + hc.dict_(
            (s("x"), pickle.NONE)) + pickle.BUILD)), "tries to modify yacs.config.CfgNode"),
        "__class__ of its own object": (hc.with_weights((s("t"), own_dict + pickle.NONE + hc.dict_(
            (s("__class__"), g("collections", "Counter"))) + pickle.TUPLE2 + pickle.BUILD)),
            "tries to set the attribute '__class__' of a OrderedDict object"),
    }


@pytest.mark.parametrize("case", list(_tampering_cases()))
def test_a_checkpoint_cannot_change_what_it_did_not_create(tmp_path: Path, case: str) -> None:
    data, expected = _tampering_cases()[case]
    path = hc.write(tmp_path / "tamper.pth", hc.torch_zip(data, hc.WEIGHTS_STORAGE))
    before = hc.process_snapshot()
    with pytest.raises(CheckpointError) as err:
        read_checkpoint(path)
    message = assert_one_line(err)
    assert expected in message and "malicious or tampered" in message, message
    assert hc.snapshot_changes(before, hc.process_snapshot()) == []


def test_tampering_through_create_model_changes_nothing(tmp_path: Path) -> None:
    from cotviz.models.registry import create_model

    data, _ = _tampering_cases()["Counter.most_common"]
    path = hc.write(tmp_path / "tamper.pth", hc.torch_zip(data, hc.WEIGHTS_STORAGE))
    most_common = collections.Counter.most_common
    with pytest.raises(CheckpointError, match="tries to modify collections.Counter"), torch.device("meta"):
        create_model("cotnet50", weights=path)
    assert collections.Counter.most_common is most_common


# --------------------------------------------------------------------- refusals say what was tried


def _refusal_cases() -> dict[str, tuple[bytes, str]]:
    g, s = hc.global_, hc.string
    return {
        "getattr(__import__('os'), 'system')(...)": (
            hc.getattr_import_chain("touch /nonexistent/CANARY"),
            "tries to call os.system (through builtins.getattr, builtins.__import__); nothing ran"),
        "functools.partial(os.system, ...)()": (
            hc.partial_payload("touch /nonexistent/CANARY"), "tries to call os.system (through functools.partial)"),
        "_rebuild_from_type_v2(eval, ...)": (
            hc.rebuild_from_type_eval("1 + 1"),
            "tries to call builtins.eval (through torch._tensor._rebuild_from_type_v2); nothing ran"),
        "torch.Tensor(10**6)": (hc.with_weights((s("t"), hc.call(g("torch", "Tensor"), hc.integer(10 ** 6)))),
                                "tries to call torch.Tensor; nothing ran"),
        "UntypedStorage(10**6)": (hc.with_weights((s("t"), hc.call(g("torch.storage", "UntypedStorage"),
                                                                  hc.integer(10 ** 6)))),
                                  "tries to call torch.storage.UntypedStorage; nothing ran"),
        "defaultdict(eval)": (hc.with_weights((s("t"), hc.call(g("collections", "defaultdict"), g("builtins", "eval")))),
                              "tries to make a defaultdict that calls builtins.eval for missing keys"),
    }


@pytest.mark.parametrize("case", list(_refusal_cases()))
def test_refusal_says_what_the_file_tried(tmp_path: Path, case: str) -> None:
    data, expected = _refusal_cases()[case]
    path = hc.write(tmp_path / "evil.pth", hc.torch_zip(data, hc.WEIGHTS_STORAGE))
    with pytest.raises(CheckpointError) as err:
        read_checkpoint(path)
    message = assert_one_line(err)
    assert message.startswith("evil.pth ") and expected in message, message


def test_old_backward_hooks_and_unusual_numpy_scalars_are_neutralized_not_fatal(tmp_path: Path) -> None:
    """Pre-1.0 files pickled tensor hooks; metadata may hold np.str_ or structured dtypes: the weights load,
    the hooks are dropped, the odd numpy values stay inert placeholders."""
    import numpy as np

    g, s = hc.global_, hc.string
    pid = (pickle.MARK + s("storage") + g("torch", "FloatStorage") + s("0") + s("cpu") + hc.integer(4) + pickle.TUPLE
           + pickle.BINPERSID)
    hooks = hc.call(g("collections", "OrderedDict")) + hc.integer(0) + g("builtins", "print") + pickle.SETITEM
    hooked = hc.call(g("torch._utils", "_rebuild_tensor_v2"), pid, hc.integer(0), pickle.MARK + hc.integer(4)
                     + pickle.TUPLE, pickle.MARK + hc.integer(1) + pickle.TUPLE, pickle.NEWFALSE, hooks)
    data = hc.P2 + hc.dict_((s("state_dict"), hc.dict_((s("w"), hooked))),
                            (s("note"), pickle.dumps(np.str_("fine-tuned"), protocol=2)[2:-1]),
                            (s("record"), pickle.dumps(np.dtype([("a", "f4")]), protocol=2)[2:-1])) + pickle.STOP
    path = hc.write(tmp_path / "old.pth", hc.torch_zip(data, hc.WEIGHTS_STORAGE))
    sd, info = read_checkpoint(path)
    torch.testing.assert_close(sd["w"], torch.tensor([1.0, 2.0, 3.0, 4.0]))
    assert not sd["w"]._backward_hooks  # type: ignore[attr-defined]
    assert {"builtins.print", "numpy.core.multiarray.scalar", "numpy.dtype"} <= set(info.neutralized_globals)


def test_nested_torch_load_is_neutralized_and_reported(tmp_path: Path) -> None:
    path = hc.write(tmp_path / "nested.pth", hc.torch_zip(hc.nested_torch_load(str(tmp_path / "other.pth")),
                                                          hc.WEIGHTS_STORAGE))
    with pytest.warns(CheckpointSafetyWarning, match="torch.serialization.load"):
        sd, info = read_checkpoint(path)
    assert info.code_execution_globals == ("torch.serialization.load",)
    torch.testing.assert_close(sd["w"], torch.tensor([1.0, 2.0, 3.0, 4.0]))


@pytest.mark.parametrize(("data", "expected"), [
    (hc.torch_zip(hc.with_weights(), {"0": b"\x00" * 16}), "is corrupt (storage data/0 holds 16 bytes, the pickle "
                                                          "says 4000)"),
    (hc.torch_zip(hc.with_weights(), {}), "the pickle refers to a storage data/0 the archive lacks"),
    (hc.legacy_file(hc.P2 + pickle.PERSID + b"0\n" + pickle.STOP), "uses a text persistent id"),
    (hc.legacy_file(hc.P2 + pickle.EXT1 + b"\x01" + pickle.STOP), "uses pickle extension codes"),
    (hc.claimed_entries_zip(hc.zip_state_dict({"w": torch.ones(2)}), 10_000_000),
     "is a zip archive of 10,000,000 entries"),
    (b"\x80\x02" + b"\x00" * 255 + b"ustar\x0000" + b"\x00" * 300, "it looks like a tar archive"),
    (hc.future_zip_version(hc.zip_state_dict({"w": torch.ones(2)})), "is truncated or corrupt"),
    (hc.duplicate_entry_zip(hc.with_weights(), hc.many_list_items(1000)), "a zip archive with duplicate entries"),
], ids=["storage-size", "storage-missing", "text-persid", "extension-code", "zip-entries", "tar", "zip-version",
        "duplicate-entries"])
def test_inconsistent_or_foreign_files_are_one_clean_line(tmp_path: Path, data: bytes, expected: str) -> None:
    if expected.startswith("is corrupt (storage"):  # the pickle claims 1000 floats for the 16-byte record
        data = hc.torch_zip(hc.P2 + hc.dict_((hc.string("w"), hc.tensor("0", 1000))) + pickle.STOP,
                            {"0": b"\x00" * 16})
    path = hc.write(tmp_path / "odd.pth", data)
    with pytest.raises(CheckpointError) as err:
        read_checkpoint(path)
    assert expected in assert_one_line(err)


def test_legacy_storage_with_a_wrong_recorded_size_is_one_clean_line(tmp_path: Path) -> None:
    data = hc.legacy_state_dict({"w": torch.ones(4)})
    at = data.rfind(struct.pack("<q", 4))  # the element count written before the storage bytes
    path = hc.write(tmp_path / "legacy.pth", data[:at] + struct.pack("<q", 26843545604) + data[at + 8:])
    with pytest.raises(CheckpointError) as err:
        read_checkpoint(path)
    message = assert_one_line(err)
    assert "is corrupt (a tensor storage's recorded size does not match its data): download it again" in message
    assert "%ld" not in message


# ------------------------------------------------------------ broken weights and odd tensors at load


def test_nonfinite_weights_are_refused_unless_allowed(tmp_path: Path) -> None:
    sd = random_state(Tiny(), 10)
    sd["conv1.weight"][0, 0, :2, 0] = torch.tensor([float("nan"), float("inf")])
    sd["bn1.running_var"][1:4] = float("-inf")
    path = tmp_path / "diverged.pth"
    torch.save({"state_dict": sd}, path)
    model = Tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(model, path)
    message = assert_one_line(err)
    assert ("holds 5 non-finite values (NaN/Inf) in 2 tensors (e.g. conv1.weight, bn1.running_var)" in message
            and "allow_nonfinite=True" in message), message
    assert_state_equal(model, before)
    info = load_checkpoint(model, path, allow_nonfinite=True)
    assert info.nonfinite_keys == ("conv1.weight", "bn1.running_var") and info.nonfinite_values == 5
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, sd[key], rtol=0, atol=0, equal_nan=True, msg=key)
    clean = load_checkpoint(Tiny(), tmp_path / "diverged.pth", strict=False, allow_nonfinite=True)
    assert clean.nonfinite_values == 5


def test_meta_tensors_are_one_clean_line(tmp_path: Path) -> None:
    path = tmp_path / "meta.pth"
    with torch.device("meta"):
        torch.save(nn.Linear(3, 4).state_dict(), path)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(nn.Linear(3, 4), path)
    assert "holds 2 tensors without data (on the meta device, e.g. weight, bias)" in assert_one_line(err)


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_sparse_tensor_with_out_of_range_indices_is_one_clean_line(tmp_path: Path, legacy: bool) -> None:
    bias = torch.sparse_coo_tensor(torch.tensor([[0, 99]]), torch.tensor([1.0, 2.0]), (4,), check_invariants=False)
    path = tmp_path / "sparse.pth"
    torch.save({"weight": torch.ones(4, 3), "bias": bias}, path, _use_new_zipfile_serialization=not legacy)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(nn.Linear(3, 4), path)
    message = assert_one_line(err)
    assert "is corrupt (a sparse tensor is invalid (" in message and "download it again" in message
    assert torch._utils._sparse_tensors_to_validate == []  # type: ignore[attr-defined]  # nothing left behind


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")  # torch's own note on CSR
@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_valid_sparse_tensor_for_a_dense_weight_is_one_clean_line(tmp_path: Path, legacy: bool) -> None:
    path = tmp_path / "sparse.pth"
    csr = (torch.arange(6.0).reshape(2, 3) % 2).to_sparse_csr()  # a legacy file's storages are read last:
    torch.save({"weight": torch.ones(4, 3), "bias": torch.ones(4).to_sparse(), "csr": csr}, path,  # checked after
               _use_new_zipfile_serialization=not legacy)
    sd, _ = read_checkpoint(path)  # valid sparse tensors read fine ...
    assert sd["bias"].layout == torch.sparse_coo and torch.equal(sd["csr"].to_dense(), csr.to_dense())
    with pytest.raises(CheckpointError) as err:  # ... but are no dense weights
        load_checkpoint(nn.Linear(3, 4), path, strict=False)
    assert "stores bias as a sparse_coo tensor, but the model's is dense" in assert_one_line(err)


# -------------------------------------------------------------------------------------- hashing


def test_sha256_is_computed_only_when_asked_and_only_for_the_file_read(tmp_path: Path) -> None:
    path = tmp_path / "w.pth"
    torch.save(random_state(Tiny(), 11), path)
    _, info = read_checkpoint(path)
    assert "sha256" not in vars(info)  # not hashed by the load
    assert info.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert "sha256" in vars(info)  # hashed once, then remembered
    _, stale = read_checkpoint(path)
    torch.save(random_state(Tiny(), 12), path)
    os.utime(path, ns=(stale.file_stat[1] + 10 ** 9, stale.file_stat[1] + 10 ** 9))
    with pytest.raises(CheckpointError, match="changed since it was read") as err:
        _ = stale.sha256
    assert_one_line(err)
