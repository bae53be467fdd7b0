"""Fixtures of the interop tests: tiny live networks, and the optional tools, each skipped with its reason.

The tools (timm, torchvision, grad-cam, Quantus) are installed by ``.ci/run`` from ``constraints-cpu.txt``
(``pip install -c constraints-cpu.txt -e '.[interop]'``); without them their tests skip and say why.

torchvision on a CPU torch: the package index holds only CUDA builds of torchvision for Linux x86-64, whose
compiled operators need the CUDA torch libraries. torchvision then runs its pure-Python code without them
(``torchvision.extension._has_ops()`` False: ``roi_align`` falls back to its Python version), except that
its import registers fake kernels for ``torchvision::nms`` / ``qnms`` unconditionally and fails (``operator
torchvision::nms does not exist``). :func:`_load_torchvision` declares those two schemas so the import
completes, and gives ``torchvision.ops.boxes.nms`` a plain-torch greedy NMS, the one compiled kernel
the detection tests reach. Everything cotviz touches (fx feature extraction, ``BackboneWithFPN``, FPN,
RPN, RoI heads, transforms) is torchvision's own code. With a torchvision built for this torch (the
PyTorch CPU index) none of this happens.
"""

from __future__ import annotations

import functools
import importlib
import sys
from types import ModuleType

import pytest
import torch
from torch import Tensor, nn

import cotviz

_KEEP: list[object] = []  # the schema library stays alive as long as the process


def _nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy non-maximum suppression (what ``torchvision::nms`` computes): indices of the kept boxes by
    decreasing score; a box is dropped when its IoU with a kept, higher-scoring box exceeds the threshold."""
    from torchvision.ops.boxes import box_iou

    order = scores.argsort(descending=True)
    iou = box_iou(boxes[order], boxes[order])  # (N, N) in score order
    keep: list[int] = []
    removed = torch.zeros(len(order), dtype=torch.bool)
    for i in range(len(order)):
        if removed[i]:
            continue
        keep.append(i)
        removed |= iou[i] > iou_threshold
    return order[torch.tensor(keep, dtype=torch.long)]


@functools.cache
def _load_torchvision() -> tuple[ModuleType | None, str]:
    """torchvision (or None) and how it loaded: "" (its own build), "compat" (see module docstring), or why not."""
    try:
        return importlib.import_module("torchvision"), ""
    except ImportError as err:
        return None, f"torchvision is not installed ({err})"
    except RuntimeError as err:
        if "torchvision::" not in str(err):
            return None, f"torchvision does not import: {err}"
    for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
        del sys.modules[name]  # the half-imported package
    lib = torch.library.Library("torchvision", "FRAGMENT")
    for op in ("nms", "qnms"):
        lib.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _KEEP.append(lib)
    tv = importlib.import_module("torchvision")
    import torchvision.ops.boxes as boxes

    boxes.nms = _nms  # batched_nms (RPN, RoI heads) calls this module's nms
    return tv, "compat"


def need(module: str) -> ModuleType:
    """Import an optional tool or skip the test saying why (torchvision is loaded on the first call, not when
    the tests are collected: the other test packages of a whole-suite run do not see it before)."""
    if module.split(".")[0] == "torchvision" or module in ("timm", "pytorch_grad_cam"):
        torchvision, how = _load_torchvision()
        if torchvision is None:
            pytest.skip(f"{module} needs torchvision: {how}; install with "
                        "pip install -c constraints-cpu.txt -e '.[interop]'")
    try:
        return importlib.import_module(module)
    except ImportError as err:
        pytest.skip(f"{module} is not installed ({err}); install with pip install -c constraints-cpu.txt -e "
                    "'.[interop]'")


def tiny(name: str = "cotnet50", **overrides: object) -> nn.Module:
    """A tiny network with live residual branches and non-trivial norms, in eval mode."""
    from _helpers import randomize_norms

    args: dict[str, object] = dict(layers=[1, 1, 1, 1], base_width=16, num_classes=10, zero_init_last_bn=False)
    args.update(overrides)
    return randomize_norms(cotviz.create_model(name, **args)).eval()


@pytest.fixture()
def cot() -> nn.Module:
    return tiny()


@pytest.fixture()
def images() -> Tensor:
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
