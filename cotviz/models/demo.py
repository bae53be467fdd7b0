"""The demo weights shipped inside the package: ``create_model("cotnet_demo", weights="demo")``.

The checkpoints in ``cotviz/models/weights/`` were trained by ``python -m cotviz.data.train`` on
``cotviz.data.ShapesDataset`` (the command, the held-out accuracy and the training curve are in each file's
``meta``). They are ordinary checkpoints: ``create_model`` loads them through the same safe, strict loader as
any other; this module only says where each one is and checks that it is the file that was shipped.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from cotviz.errors import CheckpointError

__all__ = ["DEMO_ACCURACY", "DEMO_WEIGHTS", "WEIGHTS_DIR", "demo_weights"]

#: The spelling of ``weights=`` that selects the shipped demo checkpoint.
DEMO = "demo"
WEIGHTS_DIR = Path(__file__).with_name("weights")
#: model name -> (file in :data:`WEIGHTS_DIR`, sha256 of the file).
DEMO_WEIGHTS: dict[str, tuple[str, str]] = {
    "cotnet_demo": ("cotnet_demo.pth", "cbae77dba97ce0c87f386dd8895b1742c7c916952419fe46ae440c7effe38805"),
    "resnet_demo": ("resnet_demo.pth", "5683a266ba6f09ee9e3c5be53c3e830340becceb8db62ce99c7834543a6e3d79"),
    "sa_demo": ("sa_demo.pth", "cae45e6826f2a1200898181efe7549ce8a031dc410f55266e9fe32eac9e0ceaf"),
}


#: model name -> held-out top-1 (%) of its shipped weights, as recorded in the checkpoint's ``meta["heldout_acc"]``
#: (a test checks them equal), for ``cotviz models`` without loading the files.
DEMO_ACCURACY: dict[str, float] = {"cotnet_demo": 98.7, "resnet_demo": 94.3, "sa_demo": 90.1}


def demo_weights(model_name: str) -> Path:
    """The shipped demo checkpoint of ``model_name`` (a canonical registry name), its sha256 checked.

    Raises:
        CheckpointError: no demo weights are shipped for this model, or the file is missing or altered.
    """
    if model_name not in DEMO_WEIGHTS:
        shipped = ", ".join(sorted(DEMO_WEIGHTS)) or "none"
        raise CheckpointError(f"weights='demo' exists only for the shipped demo models ({shipped}), not "
                              f"{model_name}; pass a checkpoint file instead")
    file, sha256 = DEMO_WEIGHTS[model_name]
    path = WEIGHTS_DIR / file
    try:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as err:
        raise CheckpointError(f"the shipped demo weights {path} cannot be read ({err.strerror or err}); "
                              "reinstall cotviz") from None
    if digest != sha256:
        raise CheckpointError(f"the shipped demo weights {path} were altered (sha256 {digest[:12]}..., expected "
                              f"{sha256[:12]}...); reinstall cotviz")
    return path
