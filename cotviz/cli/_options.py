"""Options that several commands share, declared once (the same flag, metavar and help everywhere).

Each name is an ``Annotated`` type for a Typer parameter; a command writes ``model: ModelOpt = "cotnet50"``.
Torch-free, like every CLI module at import time.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from cotviz.analysis.catalog import MAP_INFO
from cotviz.cli._common import FLAG

__all__ = ["BlocksOpt", "CropPctOpt", "Device", "DeviceOpt", "JsonOpt", "MapName", "ModelOpt", "NoCropOpt",
           "NumClassesOpt", "SizeOpt", "StageOpt", "WeightsOpt"]

#: ``--map`` choices, from the map registry.
MapName = Enum("MapName", {n: n for n in MAP_INFO}, type=str)  # type: ignore[misc]


class Device(str, Enum):
    cpu = "cpu"
    cuda = "cuda"


StageOpt = Annotated[int, typer.Option("--stage", "-s", metavar="N",
                                       help="Stage 1..4 (layer1..layer4; 3 = 14x14 at 224).")]
BlocksOpt = Annotated[list[int] | None, typer.Option(
    "--block", "-b", metavar="B", help="Block of the stage, 1-based; repeat for several. Default: every CoT block.",
    show_default=False)]
ModelOpt = Annotated[str, typer.Option("--model", metavar="NAME", help="Model name or alias (see `cotviz models`).")]
NumClassesOpt = Annotated[int | None, typer.Option(
    "--num-classes", metavar="N", help="Classifier outputs, for checkpoints fine-tuned on another label set. "
                                       "Default: the model's (1000).", show_default=False)]
WeightsOpt = Annotated[Path | None, typer.Option(
    "--weights", metavar="FILE", help="Checkpoint to load (official .pth.tar, state_dict or .safetensors; loaded "
                                      "safely). Without it: untrained random weights.", show_default=False)]
DeviceOpt = Annotated[Device, typer.Option("--device", help="Where the model runs.")]
SizeOpt = Annotated[int | None, typer.Option(
    "--size", metavar="S", help="Model input side S in pixels. Default: the model's pretrained size.",
    show_default=False)]
CropPctOpt = Annotated[float | None, typer.Option(
    "--crop-pct", metavar="P", help="Centre-crop fraction: the shorter side is resized to S / crop_pct. "
                                    "Default: the model's.", show_default=False)]
NoCropOpt = Annotated[bool, typer.Option("--no-crop", metavar=FLAG,
                                         help="Resize the whole image to S x S instead of cropping.")]
JsonOpt = Annotated[bool, typer.Option("--json", metavar=FLAG, help="Print a machine-readable summary on stdout.")]
