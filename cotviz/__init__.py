"""cotviz: see inside Contextual Transformer Networks (CoTNet).

Public API (imported lazily, so ``import cotviz`` and ``cotviz --help`` do not wait for torch)::

    import cotviz
    model = cotviz.create_model("cotnet50", weights="cotnet50.pth.tar")
    with cotviz.capture(model, stages=[3]) as cap:
        model(x)
    cap["stage3.block1"].attention        # (B, 1, C/8, 9, H, W)
    ex = cotviz.explain(model, "photo.jpg", stage=3)   # maps, kernels, rollout, Grad-CAM; .figure(), .save()
"""

from __future__ import annotations

import importlib
from typing import Any

from cotviz._version import __version__

__all__ = [
    "__version__",
    "create_model",
    "list_models",
    "load_checkpoint",
    "prepare_for_inference",
    "capture",
    "explain",
    "explain_many",
    "Explanation",
    "CotvizError",
    "register_timm",
    "backbone_with_fpn",
]

_LAZY: dict[str, str] = {
    "create_model": "cotviz.models.registry",
    "list_models": "cotviz.models.registry",
    "load_checkpoint": "cotviz.models.checkpoint",
    "prepare_for_inference": "cotviz.models.inference",
    "capture": "cotviz.capture",
    "explain": "cotviz.explain",
    "explain_many": "cotviz.explain",
    "Explanation": "cotviz.explain",
    "CotvizError": "cotviz.errors",
    "register_timm": "cotviz.interop.timm",
    "backbone_with_fpn": "cotviz.interop.torchvision",
}


def __getattr__(name: str) -> Any:
    try:
        module = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'cotviz' has no attribute {name!r}") from None
    mod = importlib.import_module(module)
    # cotviz.explain is the callable package itself (importing it binds the package to that name anyway)
    value = mod if module == f"cotviz.{name}" else getattr(mod, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
