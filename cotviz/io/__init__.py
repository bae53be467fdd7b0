"""Image input for cotviz: loading any Pillow-readable file and turning it into a model input.

* :func:`load_image` -> :class:`LoadedImage` (upright RGB + original size and reduction factor); bounded
  memory (:data:`DEFAULT_MAX_DECODE_BYTES`), Pillow's complaints as one :class:`ImageWarning` line
* :func:`expand_inputs` -> ``(paths, problems)`` for files, directories and glob patterns
* :class:`PreprocessConfig` + :func:`preprocess` -> :class:`Preprocessed` (tensor, display array, crop box)
"""

from __future__ import annotations

from cotviz.io.images import (
    ALPHA_BACKGROUND,
    DEFAULT_MAX_DECODE_BYTES,
    DEFAULT_MAX_PIXELS,
    ExpandedInputs,
    ImageWarning,
    InputProblem,
    LoadedImage,
    expand_inputs,
    image_extensions,
    load_image,
    to_rgb,
)
from cotviz.io.preprocess import (
    DEFAULT_CROP_PCT,
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    PreprocessConfig,
    Preprocessed,
    preprocess,
)

__all__ = [
    "ALPHA_BACKGROUND",
    "DEFAULT_CROP_PCT",
    "DEFAULT_MAX_DECODE_BYTES",
    "DEFAULT_MAX_PIXELS",
    "ExpandedInputs",
    "IMAGENET_DEFAULT_MEAN",
    "IMAGENET_DEFAULT_STD",
    "ImageWarning",
    "InputProblem",
    "LoadedImage",
    "PreprocessConfig",
    "Preprocessed",
    "expand_inputs",
    "image_extensions",
    "load_image",
    "preprocess",
    "to_rgb",
]
