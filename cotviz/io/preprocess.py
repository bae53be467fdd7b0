"""Model-input preprocessing identical to timm's eval transform, with the crop box kept in original pixels.

The transform (timm ``transforms_imagenet_eval`` with ``crop_mode="center"``, i.e. torchvision
``Resize(scale_size, interpolation) -> CenterCrop(S) -> ToTensor() -> Normalize(mean, std)``):

1. ``scale_size = math.floor(S / crop_pct)``.
2. Resize so the *shorter* side is ``scale_size`` and the longer side is ``int(scale_size * long / short)``
   (torchvision's truncating rule), with Pillow ``Image.resize`` and the configured filter (bicubic for CoTNet).
3. Centre crop ``S x S`` at ``left = int(round((w_r - S) / 2.0))``, ``top = int(round((h_r - S) / 2.0))``
   (Python's round: halves go to the even integer, exactly as torchvision's ``center_crop``).
4. ``tensor = (uint8 / 255 - mean) / std`` in float32, channels first.

With ``crop=False`` step 2 resizes the whole image to ``S x S`` (aspect ratio not kept) and step 3 is skipped.

Bounded work: steps 2-3 run literally (bit for bit as timm) whenever resizing the whole image stays small
(64 Mi intermediate pixels, at most a 32-fold shrink: every ordinary photo, at any ``S``). Otherwise (an absurd
aspect ratio: a 100000 x 1 strip would resize to 25.6 million x 256 pixels) the crop box -- the same numbers --
is computed first and only it is resampled onto ``S x S``, a side shrinking more than 32-fold being first
box-averaged (Pillow's ``reducing_gap`` scheme), so memory and time depend on ``S``, not on the image's shape;
the pixels are then within Pillow's 8-bit rounding of the literal steps (see ``_resample_box``).

Geometry: coordinates are continuous pixel coordinates (pixel ``i`` covers ``[i, i + 1)``). Pillow's resize maps
``[0, w)`` of the source linearly onto ``[0, w_r)``, the crop is a translation and :func:`cotviz.io.load_image`'s
draft/reduce is ``decoded = original / f + offset``, so original -> model input is one affine map per axis,
fully described by ``crop_box``: ``u = (x - left) * S / (right - left)``, ``v = (y - top) * S / (bottom - top)``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image

from cotviz.errors import ImageError, InvalidArgumentError
from cotviz.io.images import Coord, LoadedImage, to_rgb

__all__ = [
    "IMAGENET_DEFAULT_MEAN",
    "IMAGENET_DEFAULT_STD",
    "DEFAULT_CROP_PCT",
    "Interpolation",
    "PreprocessConfig",
    "Preprocessed",
    "preprocess",
]

#: timm's ``IMAGENET_DEFAULT_MEAN`` / ``IMAGENET_DEFAULT_STD`` / ``DEFAULT_CROP_PCT``: what a pretrained cfg
#: without those fields means. io owns these defaults (io does not import models); ``cotviz.models.configs``
#: keeps the official per-variant values, whose defaults are the same numbers (tests/io/test_preprocess.py).
IMAGENET_DEFAULT_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_DEFAULT_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
DEFAULT_CROP_PCT: float = 0.875

Interpolation = Literal["bicubic", "bilinear"]
#: Whole-image resizes up to this many intermediate pixels (64 MiB) run as timm does (resize, then crop).
_EXACT_RESIZE_PIXELS = 1 << 24
#: Largest per-axis shrink factor resampled directly; beyond it see :func:`_resample_box`.
_MAX_RESAMPLE_RATIO = 32.0
#: After that first integer reduction a side still shrinks at least this much (16..32-fold) in the resample.
_REDUCING_GAP = 16.0
#: Filter support radius in source pixels at scale 1 (Pillow's bicubic: 2, bilinear: 1).
_SUPPORT: dict[str, float] = {"bicubic": 2.0, "bilinear": 1.0}
_RESAMPLE: dict[str, Image.Resampling] = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
}


def _triple(name: str, value: Sequence[float]) -> tuple[float, float, float]:
    """Validate a per-channel (R, G, B) triple of floats."""
    values = tuple(float(v) for v in value)
    if len(values) != 3 or not all(math.isfinite(v) for v in values):
        raise InvalidArgumentError(f"{name} must be three finite numbers (R, G, B), got {list(value)}")
    return values  # type: ignore[return-value]


@dataclass(frozen=True)
class PreprocessConfig:
    """How an image becomes a model input (square ``S x S``), as in a timm pretrained cfg.

    Attributes:
        input_size: ``S``, side of the square model input in pixels.
        crop_pct: fraction of the resized shorter side that the centre crop keeps, in ``(0, 1]``;
            the shorter side is resized to ``floor(S / crop_pct)``. Ignored when ``crop`` is False.
        interpolation: Pillow filter for the resize, ``"bicubic"`` or ``"bilinear"``.
        mean, std: per-channel normalisation on ``[0, 1]`` values (R, G, B).
        crop: True = resize shorter side + centre crop (timm eval); False = resize the whole image to ``S x S``.
    """

    input_size: int
    crop_pct: float = DEFAULT_CROP_PCT
    interpolation: Interpolation = "bicubic"
    mean: tuple[float, float, float] = IMAGENET_DEFAULT_MEAN
    std: tuple[float, float, float] = IMAGENET_DEFAULT_STD
    crop: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.input_size, bool) or not isinstance(self.input_size, int) or self.input_size < 1:
            raise InvalidArgumentError(f"input size must be a positive integer, got {self.input_size!r}")
        if not (0.0 < self.crop_pct <= 1.0):
            raise InvalidArgumentError(f"crop_pct must be in (0, 1], got {self.crop_pct}")
        if self.interpolation not in _RESAMPLE:
            raise InvalidArgumentError(
                f"interpolation must be one of {sorted(_RESAMPLE)}, got {self.interpolation!r}"
            )
        object.__setattr__(self, "mean", _triple("mean", self.mean))
        object.__setattr__(self, "std", _triple("std", self.std))
        if min(self.std) <= 0:
            raise InvalidArgumentError(f"std must be positive, got {list(self.std)}")

    @classmethod
    def from_pretrained_cfg(
        cls,
        pretrained_cfg: Mapping[str, Any],
        *,
        size: int | None = None,
        crop_pct: float | None = None,
        no_crop: bool = False,
    ) -> PreprocessConfig:
        """Build from a timm-style ``default_cfg`` dict, then apply overrides.

        Reads ``input_size`` (``[3, H, W]`` with ``H == W``), ``crop_pct``, ``interpolation``, ``mean``, ``std``;
        a missing key falls back to timm's defaults (224, 0.875, bicubic, ImageNet mean/std).

        Args:
            pretrained_cfg: e.g. cotnet50's ``{"input_size": [3, 224, 224], "crop_pct": 0.875,
                "interpolation": "bicubic", "mean": [...], "std": [...]}``.
            size: override ``S`` (the model's ``crop_pct`` is kept, as timm does).
            crop_pct: override ``crop_pct``.
            no_crop: resize the whole image to ``S x S`` instead of resize + centre crop.

        Raises:
            InvalidArgumentError: non-square or non-RGB ``input_size``, or any value out of range.
        """
        input_size = pretrained_cfg.get("input_size", (3, 224, 224))
        if len(input_size) != 3 or int(input_size[0]) != 3 or int(input_size[1]) != int(input_size[2]):
            raise InvalidArgumentError(
                f"pretrained cfg input_size must be [3, S, S] (RGB, square), got {list(input_size)}"
            )
        return cls(
            input_size=int(input_size[1]) if size is None else size,
            crop_pct=float(pretrained_cfg.get("crop_pct", DEFAULT_CROP_PCT))
            if crop_pct is None
            else crop_pct,
            interpolation=pretrained_cfg.get("interpolation", "bicubic"),
            mean=tuple(pretrained_cfg.get("mean", IMAGENET_DEFAULT_MEAN)),  # type: ignore[arg-type]
            std=tuple(pretrained_cfg.get("std", IMAGENET_DEFAULT_STD)),  # type: ignore[arg-type]
            crop=not no_crop,
        )

    @property
    def scale_size(self) -> int:
        """Target of the resize: the shorter side, ``floor(S / crop_pct)`` (crop), or ``S`` (no crop)."""
        return math.floor(self.input_size / self.crop_pct) if self.crop else self.input_size

    def decode_side(self, oversample: int = 2) -> int:
        """``max_side`` to pass to :func:`cotviz.io.load_image`: ``oversample * scale_size``.

        Decoding at least twice the resize target keeps the final bicubic resize a genuine downscale, so the
        reduced decode changes the model input only at the level of resampling noise.
        """
        if oversample < 1:
            raise InvalidArgumentError(f"oversample must be at least 1, got {oversample}")
        return oversample * self.scale_size


@dataclass(frozen=True, eq=False)
class Preprocessed:
    """A model input and where it lies in the original image.

    Attributes:
        tensor: (3, S, S) float32, normalised; add the batch axis with ``tensor[None]`` -> (1, 3, S, S).
        display: (S, S, 3) uint8 RGB, exactly the pixels the model saw, before ``/ 255`` and normalisation.
        crop_box: ``(left, top, right, bottom)`` of the model input in continuous ORIGINAL pixel coordinates
            (floats). With ``crop=False`` it is the whole image (up to the partial edge pixel of a reduced
            decode, so it may exceed the image size by less than the reduction factor).
        original_size: ``(W, H)`` of the original upright full-resolution image.
        input_size: ``S``.
    """

    tensor: torch.Tensor
    display: np.ndarray
    crop_box: tuple[float, float, float, float]
    original_size: tuple[int, int]
    input_size: int

    @property
    def model_per_original(self) -> tuple[float, float]:
        """Model-input pixels per original pixel along x and y: ``S / (right - left)``, ``S / (bottom - top)``."""
        left, top, right, bottom = self.crop_box
        return self.input_size / (right - left), self.input_size / (bottom - top)

    def to_model(self, x: Coord, y: Coord) -> tuple[Coord, Coord]:
        """Original continuous pixel coordinates -> model-input coordinates (may fall outside ``[0, S]``).

        Pass ``x + 0.5`` for the centre of original pixel column ``x``; ``floor(u)`` of the result is then the
        model-input pixel it falls in. Works elementwise on numpy arrays.
        """
        left, top, _, _ = self.crop_box
        sx, sy = self.model_per_original
        return (x - left) * sx, (y - top) * sy

    def to_original(self, u: Coord, v: Coord) -> tuple[Coord, Coord]:
        """Inverse of :meth:`to_model`: model-input coordinates -> original continuous pixel coordinates."""
        left, top, _, _ = self.crop_box
        sx, sy = self.model_per_original
        return left + u / sx, top + v / sy


def _resized_size(width: int, height: int, cfg: PreprocessConfig) -> tuple[int, int]:
    """``(w_r, h_r)`` after the resize step (torchvision ``_compute_resized_output_size`` for an int size)."""
    if not cfg.crop:
        return cfg.input_size, cfg.input_size
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = cfg.scale_size, int(cfg.scale_size * long / short)
    return (new_short, new_long) if width <= height else (new_long, new_short)


def _exact_is_bounded(width: int, height: int, resized_w: int, resized_h: int) -> bool:
    """Whether resizing the whole ``width x height`` image to ``resized_w x resized_h`` stays small.

    Pillow resizes horizontally (a ``resized_w x height`` intermediate), then vertically, with about
    ``4 * shrink`` filter weights per output pixel and axis; both are bounded here (64 MiB of intermediates,
    shrink <= :data:`_MAX_RESAMPLE_RATIO`). True for every ordinary photo at any ``--size``.
    """
    shrink = max(width / resized_w, height / resized_h)
    return resized_w * (height + resized_h) <= _EXACT_RESIZE_PIXELS and shrink <= _MAX_RESAMPLE_RATIO


def _resample_box(
    rgb: Image.Image, box: tuple[float, float, float, float], size: int, interpolation: Interpolation
) -> Image.Image:
    """The ``size x size`` model input resampled from ``box`` of ``rgb`` alone (continuous coordinates).

    What resizing the whole image and cropping gives, but the work and memory depend on ``size`` and the box
    only: a 100000 x 1 strip would be 25.6 million x 256 pixels resized whole. Steps: cut the box plus the
    filter's reach out of the image, then Pillow's two passes (horizontal, then vertical) with the box shifted
    into the cut. Close to, not bit-identical with, the whole-image resize: Pillow takes box corners as
    float32, and it picks the order of its two 8-bit passes by the image's shape (tested: within 2 grey levels,
    mean below 0.5, on smooth images). A side that shrinks more than :data:`_MAX_RESAMPLE_RATIO` times
    (``crop=False`` on an absurd strip: Pillow would keep ``4 * shrink`` filter weights per output pixel,
    gigabytes for a 10^6-fold shrink) is first box-averaged by the integer factor that leaves a shrink of
    :data:`_REDUCING_GAP` to twice that (Pillow's own ``reducing_gap`` scheme).
    """
    resample = _RESAMPLE[interpolation]
    width, height = rgb.size
    x0, y0, x1, y1 = box
    shrink_x, shrink_y = (x1 - x0) / size, (y1 - y0) / size
    fx = int(shrink_x / _REDUCING_GAP) if shrink_x > _MAX_RESAMPLE_RATIO else 1
    fy = int(shrink_y / _REDUCING_GAP) if shrink_y > _MAX_RESAMPLE_RATIO else 1
    # Source pixels a filter tap can reach beyond the box: support * max(1, shrink), plus a reduced pixel.
    reach_x = _SUPPORT[interpolation] * max(1.0, shrink_x) + fx
    reach_y = _SUPPORT[interpolation] * max(1.0, shrink_y) + fy
    xa, xb = max(0, math.floor(x0 - reach_x)), min(width, math.ceil(x1 + reach_x))
    ya, yb = max(0, math.floor(y0 - reach_y)), min(height, math.ceil(y1 + reach_y))
    cut = rgb.reduce((fx, fy), box=(xa, ya, xb, yb)) if fx > 1 or fy > 1 else rgb.crop((xa, ya, xb, yb))
    u0, v0, u1, v1 = (x0 - xa) / fx, (y0 - ya) / fy, (x1 - xa) / fx, (y1 - ya) / fy  # box in the cut
    rows = cut.resize((size, cut.height), resample=resample, box=(u0, 0, u1, cut.height))  # horizontal pass
    return rows.resize((size, size), resample=resample, box=(0, v0, size, v1))  # vertical pass


def preprocess(image: Image.Image | LoadedImage, cfg: PreprocessConfig) -> Preprocessed:
    """Turn an image into the model input of ``cfg`` and record its crop box in original pixels.

    Args:
        image: a :class:`LoadedImage` (its draft/reduce factor and offset are folded into the crop box, so the
            box refers to the original full-resolution upright image), or a PIL image, whose own pixel grid is
            then the "original" (non-RGB modes are converted with :func:`cotviz.io.images.to_rgb`; no EXIF
            orientation is applied to a bare PIL image).
        cfg: the preprocessing of the model.

    Returns:
        :class:`Preprocessed` with ``tensor`` (3, S, S) float32, ``display`` (S, S, 3) uint8 and ``crop_box``.

    The input image is not modified.
    """
    if isinstance(image, LoadedImage):
        rgb, loaded = image.image, image
        original_size = image.original_size
    else:
        rgb = image if image.mode == "RGB" else to_rgb(image)[0]
        loaded = None
        original_size = image.size

    width, height = rgb.size
    if width < 1 or height < 1:
        raise ImageError(f"cannot preprocess an image without pixels ({width}x{height})")
    size = cfg.input_size
    resized_w, resized_h = _resized_size(width, height, cfg)
    if cfg.crop:
        left = int(round((resized_w - size) / 2.0))  # torchvision center_crop offsets
        top = int(round((resized_h - size) / 2.0))
    else:
        left = top = 0
    # Model-input box in decoded coordinates: resized = decoded * (w_r / w), model = resized - (left, top).
    # Integer products first, so that e.g. (left + size) == resized_w gives exactly ``width``.
    box_decoded = (
        left * width / resized_w,
        top * height / resized_h,
        (left + size) * width / resized_w,
        (top + size) * height / resized_h,
    )
    if _exact_is_bounded(width, height, resized_w, resized_h):  # timm's own steps, bit for bit
        resized = rgb.resize((resized_w, resized_h), resample=_RESAMPLE[cfg.interpolation])
        model_img = resized.crop((left, top, left + size, top + size)) if cfg.crop else resized
    else:  # an absurd aspect ratio or shrink: resample only what the model sees
        model_img = _resample_box(rgb, box_decoded, size, cfg.interpolation)
    display = np.array(model_img, dtype=np.uint8)  # (S, S, 3), own memory

    if loaded is not None:  # decoded -> original: undo load_image's draft/reduce (and flipped-axis offset)
        x0, y0 = loaded.to_original(box_decoded[0], box_decoded[1])
        x1, y1 = loaded.to_original(box_decoded[2], box_decoded[3])
    else:
        x0, y0, x1, y1 = box_decoded
    crop_box = (float(x0), float(y0), float(x1), float(y1))

    # ToTensor + Normalize, in torchvision's order of float32 operations.
    chw = torch.from_numpy(display).permute(2, 0, 1).contiguous()  # (S, S, 3) -> (3, S, S) uint8
    tensor = chw.to(torch.float32).div(255)  # (3, S, S) in [0, 1]
    mean = torch.tensor(cfg.mean, dtype=torch.float32).view(3, 1, 1)  # (3, 1, 1)
    std = torch.tensor(cfg.std, dtype=torch.float32).view(3, 1, 1)  # (3, 1, 1)
    tensor = tensor.sub(mean).div(std)  # (3, S, S)
    return Preprocessed(
        tensor=tensor,
        display=display,
        crop_box=crop_box,
        original_size=original_size,
        input_size=size,
    )
