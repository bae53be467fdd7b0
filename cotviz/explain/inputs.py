"""What ``explain`` accepts as an image, turned into one model input and where it lies in the original.

An image is a path, a ``PIL.Image``, an (H, W, 3) uint8 numpy array, or an already-preprocessed (3, S, S) /
(1, 3, S, S) float tensor. Files are decoded with :func:`cotviz.io.load_image` (EXIF orientation, reduced
decoding of large files, decompression-bomb refusal) and preprocessed with the model's pretrained config.
A tensor has no original image: its crop box is None and a point is taken in model-input pixels.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
from PIL import Image

from cotviz.errors import ImageError, InvalidArgumentError
from cotviz.io import PreprocessConfig, load_image, preprocess

__all__ = ["ImageInput", "Prepared", "describe_source", "prepare"]

#: Anything :func:`prepare` accepts.
ImageInput = Union[str, "os.PathLike[str]", Image.Image, np.ndarray, torch.Tensor]


@dataclass(eq=False)
class Prepared:
    """One image ready for the model.

    Attributes:
        source: the path as given, or ``"<PIL.Image>"`` / ``"<array>"`` / ``"<tensor>"``.
        path: the file, if the image came from one.
        tensor: (3, S, S) float32 model input.
        display: (S, S, 3) uint8, the pixels the model saw (for a tensor input: un-normalised with the
            model's mean/std and rounded).
        crop_box: (left, top, right, bottom) of the model input in original pixels; None for a tensor.
        original_size: (W, H) of the original image; None for a tensor.
        input_format, input_mode: the file's (or PIL image's) format and mode; ``orientation``: the EXIF
            orientation applied; ``reduction``: the decode reduction factor (None where it does not apply).
            Only these facts of the decoded file are kept, not its pixels.
        uv: the point in model-input coordinates (pixel centre), when one was asked for.
    """

    source: str
    path: Path | None
    tensor: torch.Tensor
    display: np.ndarray
    crop_box: tuple[float, float, float, float] | None
    original_size: tuple[int, int] | None
    input_format: str | None = None
    input_mode: str | None = None
    orientation: int | None = None
    reduction: int | None = None
    uv: tuple[float, float] | None = None

    @property
    def name(self) -> str:
        """The file name (or the source label) for titles and messages."""
        return self.path.name if self.path is not None else self.source


def describe_source(image: Any) -> str:
    """How an image argument is named in results and messages."""
    if isinstance(image, (str, os.PathLike)):
        return str(image)
    if isinstance(image, Image.Image):
        return "<PIL.Image>"
    if isinstance(image, np.ndarray):
        return "<array>"
    if isinstance(image, torch.Tensor):
        return "<tensor>"
    return f"<{type(image).__name__}>"


def _from_tensor(t: torch.Tensor, cfg: PreprocessConfig) -> tuple[torch.Tensor, np.ndarray]:
    """A preprocessed (3, S, S) or (1, 3, S, S) tensor -> (the tensor, its display pixels)."""
    if t.ndim == 4 and t.shape[0] == 1:
        t = t[0]
    if t.ndim != 3 or t.shape[0] != 3 or t.shape[1] != t.shape[2] or not t.is_floating_point():
        raise InvalidArgumentError(f"a tensor image must be a preprocessed float (3, S, S) or (1, 3, S, S) tensor, "
                                   f"got {tuple(t.shape)} {t.dtype}")
    if t.shape[1] < 32:
        raise InvalidArgumentError(f"a tensor image must be at least 32 x 32 (the network's total stride), "
                                   f"got {t.shape[1]} x {t.shape[2]}")
    x = t.detach().to("cpu", torch.float32)
    mean = torch.tensor(cfg.mean).view(3, 1, 1)  # (3, 1, 1)
    std = torch.tensor(cfg.std).view(3, 1, 1)  # (3, 1, 1)
    pixels = (x * std + mean).clamp(0, 1).mul(255).round().to(torch.uint8)  # (3, S, S)
    return x.contiguous(), pixels.permute(1, 2, 0).numpy().copy()  # (S, S, 3)


def prepare(image: ImageInput, cfg: PreprocessConfig, point: tuple[int, int] | None = None) -> Prepared:
    """Decode (if needed) and preprocess one image; check that ``point`` lies inside it and inside the model's view.

    Raises:
        ImageError: the file cannot be read as an image; an array that is not (H, W, 3) uint8.
        InvalidArgumentError: the point lies outside the image or outside the centre crop.
    """
    source = describe_source(image)
    if isinstance(image, torch.Tensor):
        tensor, display = _from_tensor(image, cfg)
        prep = Prepared(source, None, tensor, display, None, None)
        if point is not None:
            s = tensor.shape[-1]
            x, y = point
            if not (0 <= x < s and 0 <= y < s):
                raise InvalidArgumentError(f"--point {x},{y} lies outside the {s}x{s} model input (a tensor image "
                                           f"has no original image: the point is in model-input pixels)")
            prep.uv = (x + 0.5, y + 0.5)
        return prep
    path: Path | None = None
    fmt = mode = None
    orientation = reduction = None
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        loaded = load_image(path, max_side=cfg.decode_side())
        pre = preprocess(loaded, cfg)
        # keep the file's facts, not its decoded pixels
        fmt, mode, orientation, reduction = loaded.format, loaded.source_mode, loaded.orientation, loaded.reduction
        del loaded
    elif isinstance(image, Image.Image):
        fmt, mode = image.format, image.mode
        pre = preprocess(image, cfg)
    elif isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ImageError(f"an array image must be (H, W, 3) uint8 RGB, got {image.shape} {image.dtype}")
        mode = "RGB"
        pre = preprocess(Image.fromarray(np.ascontiguousarray(image), mode="RGB"), cfg)
    else:
        raise ImageError(f"cannot explain a {type(image).__name__}: pass a path, a PIL.Image, an (H, W, 3) uint8 "
                         "array or a preprocessed (3, S, S) tensor")
    prep = Prepared(source, path, pre.tensor, pre.display, pre.crop_box, pre.original_size, fmt, mode, orientation,
                    reduction)
    if point is not None:
        x, y = point
        w, h = pre.original_size
        name = prep.name
        if not (0 <= x < w and 0 <= y < h):
            raise InvalidArgumentError(f"--point {x},{y} lies outside {name} ({w}x{h} px: x in 0..{w - 1}, "
                                       f"y in 0..{h - 1})")
        u, v = pre.to_model(x + 0.5, y + 0.5)  # pixel centre
        s = pre.input_size
        if not (0 <= u < s and 0 <= v < s):
            box = ", ".join(f"{b:.1f}" for b in pre.crop_box)
            raise InvalidArgumentError(f"--point {x},{y} lies outside the centre crop the model saw in {name} "
                                       f"(box {box}); pick a point inside it or use --no-crop")
        prep.uv = (float(u), float(v))
    return prep
