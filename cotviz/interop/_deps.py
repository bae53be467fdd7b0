"""Importing an optional tool: one clear line when it is missing or does not load with this torch."""

from __future__ import annotations

import importlib
from types import ModuleType

from cotviz.errors import CotvizError

__all__ = ["INSTALL_HINT", "MissingDependencyError", "require"]

#: The install line that keeps a CPU torch (README "Using cotviz with timm / torchvision / grad-cam / captum").
INSTALL_HINT = "pip install -c constraints-cpu.txt -e '.[interop]' (a torchvision build matching your torch)"


class MissingDependencyError(CotvizError, ImportError):
    """An optional tool (timm, torchvision, grad-cam, Quantus) that is not installed or does not load."""


def require(module: str, package: str, purpose: str) -> ModuleType:
    """Import ``module`` (of the PyPI ``package``) for ``purpose``, or raise :class:`MissingDependencyError`.

    A torchvision whose compiled operators do not fit the installed torch (a CUDA build of torchvision on a
    CPU torch fails at import with ``operator torchvision::nms does not exist``) is reported as such."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise MissingDependencyError(f"{purpose} needs {package}, which is not installed: {INSTALL_HINT}") from err
    except RuntimeError as err:  # torchvision's import registering kernels for operators its library lacks
        import torch

        raise MissingDependencyError(
            f"{purpose} needs {package}, which is installed but does not load with torch {torch.__version__} "
            f"({str(err).splitlines()[0][:120]}): install the {package} build made for this torch (CPU torch: "
            "the PyTorch CPU wheel index)") from err
