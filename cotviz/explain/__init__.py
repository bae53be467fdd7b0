"""The attention pipeline as a library: ``explain(model, image) -> Explanation``, and the runner behind every command.

::

    import cotviz
    ex = cotviz.explain("cotnet50", "examples/coffee.png", stage=3, point=(290, 140), gradcam=True)
    ex.maps["stage3.block2"]["attention_entropy"]     # (14, 14) numpy array, nats
    ex.kernels["stage3.block2"]                       # (32, 3, 3) raw attention at the point's cell
    fig = ex.figure()                                 # the CLI's figure, a matplotlib Figure
    ex.save("out/")                                   # png + npz + json, as `cotviz attention` writes them

    for ex in cotviz.explain_many(model, ["photos/", "more/*.jpg"], batch_size=16):
        print(ex.source, ex.error or ex.prediction.top)

* :mod:`cotviz.explain.selection` -- the request, validated against the model (:func:`select`)
* :mod:`cotviz.explain.inputs` -- paths, PIL images, arrays and tensors as model inputs
* :mod:`cotviz.explain.runner` -- :class:`Explainer`, :func:`explain`, :func:`explain_many`
* :mod:`cotviz.explain.result` -- :class:`Explanation`, :class:`Metadata`, the JSON schema
"""

from __future__ import annotations

import sys
import types
from typing import Any

from cotviz.explain.result import (
    SCHEMA_VERSION,
    BlockGeometry,
    Explanation,
    FusionSummary,
    GradCam,
    InputInfo,
    Metadata,
    PointResult,
    Prediction,
    Rollout,
)
from cotviz.explain.runner import Explainer, UntrainedModelWarning, explain, explain_many, preprocess_config
from cotviz.explain.selection import Selection, parse_point, select

__all__ = [
    "SCHEMA_VERSION",
    "BlockGeometry",
    "Explainer",
    "Explanation",
    "FusionSummary",
    "GradCam",
    "InputInfo",
    "Metadata",
    "PointResult",
    "Prediction",
    "Rollout",
    "Selection",
    "UntrainedModelWarning",
    "explain",
    "explain_many",
    "parse_point",
    "preprocess_config",
    "select",
]


class _CallableModule(types.ModuleType):
    """``cotviz.explain`` is this package AND the function: ``import cotviz.explain`` (or any ``from
    cotviz.explain import ...``) binds the package to ``cotviz.explain``, so without this
    ``cotviz.explain(model, image)`` would fail with "module is not callable" depending on import order."""

    def __call__(self, *args: Any, **kwargs: Any) -> Explanation:
        return explain(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
