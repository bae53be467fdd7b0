"""Load any image Pillow can read as an RGB ``PIL.Image.Image`` plus the geometry needed to map coordinates.

What :func:`load_image` guarantees
----------------------------------
* **Formats**: every format Pillow can *open* (JPEG, PNG, GIF, TIFF, BMP, WebP, PPM/PGM, ICO, ...). Multi-frame
  files (GIF, APNG, multi-page TIFF) contribute their first frame.
* **Orientation**: the EXIF orientation tag (or its XMP copy, exactly what :func:`PIL.ImageOps.exif_transpose`
  reads) is applied, so the result is upright as an image viewer shows it. All coordinates called
  *original* below are pixel coordinates of that upright, full-resolution image.
* **Modes -> RGB** (8 bit per channel):

  ========================  ==================================================================================
  ``1``, ``L``              replicated to three channels
  ``P``                     palette looked up; palette transparency (``tRNS``) is composited like alpha
  ``RGBA``, ``LA``, ``PA``  alpha composited over **white** (:data:`ALPHA_BACKGROUND`), see below
  ``RGB``/``L`` + tRNS      the transparent colour becomes alpha 0, then composited over white
  ``CMYK``                  Pillow's conversion ``R = (255 - C)(255 - K) / 255`` (per channel; inverted Adobe
                            CMYK JPEGs are un-inverted by Pillow's decoder). Embedded ICC profiles are *not*
                            applied, here or for any other mode.
  ``YCbCr``, ``LAB``,       Pillow's own conversion to RGB
  ``HSV``, ``RGBX``
  ``I;16`` (``I;16B``,      unsigned 16 bit: ``round(v * 255 / 65535)`` (= ``round(v / 257)``), i.e. scaled, never
  ``I;16L``, ``I;16N``)     clipped (Pillow's own ``convert("L")`` clips everything above 255 to white)
  ``I`` (32-bit int)        if all values lie in ``[0, 65535]`` (16-bit PNG/PGM/TIFF data) the 16-bit rule
                            above; otherwise a linear stretch of ``[min, max]`` onto ``[0, 255]``
  ``F`` (32-bit float)      if all finite values lie in ``[0, 1]``: ``round(v * 255)``; otherwise a linear stretch
                            of ``[min, max]``; NaN/inf count as the minimum finite value
  ========================  ==================================================================================

  16-bit RGB(A) PNGs are decoded by Pillow to 8 bit per channel (high byte), which is already a scaling.
* **Alpha**: composited as ``out = a * c + (1 - a) * 255`` (Pillow's ``alpha_composite`` over opaque white).
  White, not black, because CoTNet was trained on photographs and a white page is the usual backdrop of
  transparent product shots and logos; ``LoadedImage.alpha_composited`` says when this happened.
* **Reduced decoding** (``max_side``): when both sides are at least twice ``max_side``, the image is decoded at
  a reduced size so that *both* decoded sides stay ``>= max_side``. JPEG uses DCT-domain scaling
  (``Image.draft``, factors 2/4/8, never a full-size decode); every format then uses ``Image.reduce(f)`` (box
  average, integer ``f``) for any remaining factor of 2 or more. Pass the size the model needs (e.g.
  :meth:`cotviz.io.preprocess.PreprocessConfig.decode_side`, twice the resize target).
* **Safety**: images with more than ``max_pixels`` pixels (from the header, before any decoding) are refused, as
  is anything Pillow flags as a decompression bomb (``DecompressionBombWarning`` is treated as an error), so the
  effective limit is ``min(max_pixels, PIL.Image.MAX_IMAGE_PIXELS)``; cotviz never changes Pillow's global
  settings (``MAX_IMAGE_PIXELS``, ``ImageFile.LOAD_TRUNCATED_IMAGES``). The pixel data is fully decoded inside
  the call, so a truncated file raises here and not later.
* **Errors**: every failure is an :class:`cotviz.errors.ImageError` with a one-line message.

Coordinate convention
---------------------
Coordinates are *continuous* pixel coordinates: pixel ``(i, j)`` covers ``[i, i + 1) x [j, j + 1)``, its centre
is ``(i + 0.5, j + 0.5)``, and the image spans ``[0, W] x [0, H]``. With a reduction factor ``f`` the decoded
image maps as ``decoded = original / f + offset`` per axis (``offset`` is 0 unless the EXIF orientation flips an
axis whose size is not a multiple of ``f``: a decoded edge pixel then covers fewer than ``f`` original pixels).
"""

from __future__ import annotations

import functools
import glob
import os
import stat
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, NamedTuple, TypeVar

import numpy as np
from PIL import Image, UnidentifiedImageError

from cotviz.errors import ImageError, InvalidArgumentError

__all__ = [
    "ALPHA_BACKGROUND",
    "Coord",
    "DEFAULT_MAX_PIXELS",
    "ExpandedInputs",
    "InputProblem",
    "LoadedImage",
    "expand_inputs",
    "image_extensions",
    "load_image",
    "to_rgb",
]

#: Default pixel limit, equal to Pillow's default ``Image.MAX_IMAGE_PIXELS`` (1 GiB / 4 bytes / 3 channels).
DEFAULT_MAX_PIXELS: int = 1024 * 1024 * 1024 // 4 // 3
#: Background colour that alpha and palette transparency are composited over.
ALPHA_BACKGROUND: tuple[int, int, int] = (255, 255, 255)

#: A coordinate: a float, or a numpy array of them (the mapping helpers work elementwise).
Coord = TypeVar("Coord", float, np.ndarray)

_EXIF_ORIENTATION = 0x0112
# The table of PIL.ImageOps.exif_transpose (EXIF orientation value -> transpose that makes the image upright).
_ORIENTATION_TRANSPOSE: dict[int, Image.Transpose] = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
# Orientations whose transpose swaps width and height.
_SWAPS_AXES = frozenset({5, 6, 7, 8})
# For each orientation: is the upright x axis / y axis a *reversed* stored axis? Derived from where the transpose
# sends a stored point (x, y) of a w x h image: 2 -> (w-x, y), 3 -> (w-x, h-y), 4 -> (x, h-y), 5 -> (y, x),
# 6 -> (h-y, x), 7 -> (h-y, w-x), 8 -> (y, w-x).
_FLIPPED_AXES: dict[int, tuple[bool, bool]] = {
    1: (False, False),
    2: (True, False),
    3: (True, True),
    4: (False, True),
    5: (False, False),
    6: (True, False),
    7: (True, True),
    8: (False, True),
}
_GLOB_CHARS = frozenset("*?[")


@dataclass(frozen=True, eq=False)
class LoadedImage:
    """An upright RGB image and how its pixel grid relates to the original (full-resolution, upright) image.

    Attributes:
        image: the decoded image, mode ``RGB``, upright; size ``(w, h)`` = ``ceil(W / reduction)`` etc.
        path: the file it came from.
        original_size: ``(W, H)`` of the full-resolution upright image (EXIF rotation applied, no reduction).
            User coordinates such as ``--point X,Y`` refer to this grid.
        reduction: integer factor ``f`` by which draft/reduce shrank the image (1 = full resolution).
        offset: ``(ox, oy)`` in decoded pixels, see :meth:`to_decoded` (both 0 unless a flipped axis is not a
            multiple of ``f``).
        source_mode: Pillow mode of the file (e.g. ``"I;16"``, ``"P"``, ``"CMYK"``), before any conversion.
        format: Pillow format name (``"JPEG"``, ``"PNG"``, ...), or ``None`` if Pillow did not say.
        orientation: the EXIF orientation value that was applied (1 = none, 2..8 see the EXIF spec).
        alpha_composited: True if the file had alpha or palette/colour-key transparency, composited over
            :data:`ALPHA_BACKGROUND`.
    """

    image: Image.Image
    path: Path
    original_size: tuple[int, int]
    reduction: int
    offset: tuple[float, float]
    source_mode: str
    format: str | None
    orientation: int
    alpha_composited: bool

    @property
    def size(self) -> tuple[int, int]:
        """``(w, h)`` of the decoded image."""
        return self.image.size

    @property
    def scale(self) -> float:
        """Decoded pixels per original pixel, ``1 / reduction`` (same for both axes)."""
        return 1.0 / self.reduction

    @property
    def exif_transposed(self) -> bool:
        """True if an EXIF orientation other than 1 was applied."""
        return self.orientation != 1

    def to_decoded(self, x: Coord, y: Coord) -> tuple[Coord, Coord]:
        """Map continuous original coordinates to continuous decoded coordinates.

        ``u = x / reduction + offset[0]``, ``v = y / reduction + offset[1]``. Works elementwise on numpy arrays.
        """
        return x / self.reduction + self.offset[0], y / self.reduction + self.offset[1]

    def to_original(self, u: Coord, v: Coord) -> tuple[Coord, Coord]:
        """Inverse of :meth:`to_decoded`: ``x = (u - offset[0]) * reduction`` (same for y)."""
        return (u - self.offset[0]) * self.reduction, (v - self.offset[1]) * self.reduction


class InputProblem(NamedTuple):
    """One input entry that produced no image: the entry as given and a one-line message."""

    item: str
    message: str

    def to_error(self) -> ImageError:
        """The same problem as an exception, for callers that stop at the first bad entry."""
        return ImageError(self.message)


class ExpandedInputs(NamedTuple):
    """Result of :func:`expand_inputs`: the image paths in order, and the entries that yielded none."""

    paths: list[Path]
    problems: list[InputProblem]


def _show(path: Path | str) -> str:
    """A path as printed in one-line messages (newlines escaped so the message stays one line)."""
    return str(path).replace("\n", "\\n")


def _reason(exc: BaseException) -> str:
    """First line of an exception message, or its type name if it has none."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _os_reason(exc: OSError) -> str:
    """Short reason of a file-system error ("Permission denied", "Too many levels of symbolic links")."""
    return exc.strerror or _reason(exc)


def _open_file(path: Path) -> BinaryIO:
    """Open ``path`` for binary reading, turning file-system failures into one-line ImageErrors."""
    try:
        info = path.stat()
    except (FileNotFoundError, NotADirectoryError):
        raise ImageError(f"no such file: {_show(path)}") from None
    except PermissionError:
        raise ImageError(
            f"permission denied: {_show(path)} (check the permissions of the file and its folders)"
        ) from None
    except OSError as exc:
        raise ImageError(f"cannot open {_show(path)}: {_os_reason(exc)}") from exc
    if stat.S_ISDIR(info.st_mode):
        raise ImageError(
            f"{_show(path)} is a directory, not an image file (use expand_inputs to list its images)"
        )
    if not stat.S_ISREG(info.st_mode):
        raise ImageError(f"{_show(path)} is not a regular file (device, socket or pipe)")
    if info.st_size == 0:
        raise ImageError(f"empty file: {_show(path)}")
    try:
        return path.open("rb")
    except PermissionError:
        raise ImageError(f"permission denied: {_show(path)} (check the file's read permission)") from None
    except OSError as exc:
        raise ImageError(f"cannot open {_show(path)}: {_os_reason(exc)}") from exc


def _bomb_error(path: Path) -> ImageError:
    """Pillow's decompression-bomb check fired (its warning or its error)."""
    return ImageError(
        f"refusing {_show(path)}: larger than Pillow's decompression-bomb limit of {Image.MAX_IMAGE_PIXELS} "
        f"pixels (PIL.Image.MAX_IMAGE_PIXELS); raise that limit only if you trust the file"
    )


def _decode_error(path: Path, exc: BaseException) -> ImageError:
    """A failure inside Pillow's parsers/decoders; truncation gets its own message."""
    reason = _reason(exc)
    if isinstance(exc, EOFError) or "truncated" in reason.lower():
        return ImageError(
            f"truncated image file: {_show(path)} is incomplete ({reason}); re-download or re-export it"
        )
    return ImageError(f"cannot decode {_show(path)}: {reason}")


def _read_orientation(im: Image.Image) -> int:
    """EXIF (or XMP) orientation as read by ``ImageOps.exif_transpose``; 1 if absent, invalid or unreadable."""
    try:
        value = im.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception:  # corrupt EXIF must not make good pixels unreadable; the image is then used as stored
        return 1
    return value if isinstance(value, int) and value in _FLIPPED_AXES else 1


def _working_image(im: Image.Image) -> tuple[Image.Image, bool]:
    """Convert a loaded image to one of L, RGB, RGBA, I, F (modes that ``reduce`` averages correctly).

    Returns the image and whether it carries alpha (mode RGBA). Conversions here are exact (no bit-depth loss
    for I;16 -> I, palette lookup for P); colour-space conversions to RGB happen at full decoded size because
    they are not linear and must not be averaged first.
    """
    mode = im.mode
    transparent = "transparency" in im.info
    if mode in ("RGBA", "LA", "La", "RGBa", "PA") or (mode in ("P", "L", "RGB", "1") and transparent):
        return im.convert("RGBA"), True
    if mode in ("L", "RGB", "I", "F"):
        return im, False
    if mode == "1":
        return im.convert("L"), False
    if mode.startswith("I;16"):
        return im.convert("I"), False
    return im.convert("RGB"), False  # P, CMYK, YCbCr, LAB, HSV, RGBX, ...


def _to_uint8(values: np.ndarray, mode: str) -> np.ndarray:
    """Map an (H, W) int32 ("I") or float32 ("F") array to (H, W) uint8 by the rules in the module docstring."""
    a = values.astype(np.float32)  # (H, W); exact for integers below 2**24, ample for an 8-bit result
    finite = np.isfinite(a)
    if not finite.all():
        a = np.where(finite, a, a[finite].min() if finite.any() else 0.0)
    lo, hi = float(a.min()), float(a.max())
    if mode == "I" and lo >= 0 and hi <= 65535:
        out = np.rint(a / np.float32(257.0))  # 65535 -> 255: 16-bit data scaled, not clipped
    elif mode == "F" and lo >= 0 and hi <= 1:
        out = np.rint(a * np.float32(255.0))
    elif hi > lo:
        out = np.rint((a - lo) * np.float32(255.0 / (hi - lo)))  # linear stretch of [lo, hi] onto [0, 255]
    else:
        out = np.clip(np.rint(a), 0, 255)  # constant image outside the known ranges
    return np.clip(out, 0, 255).astype(np.uint8)


def _finish_rgb(work: Image.Image) -> Image.Image:
    """Turn a working image (L, RGB, RGBA, I, F) into an RGB image; RGBA is composited over white."""
    if work.mode == "RGBA":
        background = Image.new("RGBA", work.size, (*ALPHA_BACKGROUND, 255))
        return Image.alpha_composite(background, work).convert("RGB")
    if work.mode in ("I", "F"):
        gray = _to_uint8(np.asarray(work), work.mode)  # (H, W) uint8
        return Image.fromarray(gray).convert("RGB")
    if work.mode == "L":
        return work.convert("RGB")
    return work


def to_rgb(image: Image.Image) -> tuple[Image.Image, bool]:
    """Convert any Pillow image to 8-bit RGB by the rules of this module (no orientation, no resizing).

    Returns ``(rgb, alpha_composited)``. The input is not modified; an RGB input without transparency is
    returned as a copy.

    Raises:
        ImageError: the mode cannot be converted to RGB.
    """
    try:
        work, has_alpha = _working_image(image)
        rgb = _finish_rgb(work)
    except ValueError as exc:
        raise ImageError(f"unsupported image mode {image.mode!r}: {_reason(exc)}") from exc
    return (rgb.copy() if rgb is image else rgb), has_alpha


def load_image(
    path: str | os.PathLike[str],
    *,
    max_side: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> LoadedImage:
    """Load an image file as an upright RGB image, decoding at reduced size when allowed.

    Args:
        path: image file (any format Pillow opens).
        max_side: smallest side length the caller needs. If both sides of the file are at least
            ``2 * max_side``, the image is decoded reduced by the largest integer factor ``f`` with
            ``min(W, H) // f >= max_side`` (JPEG: DCT scaling by 2/4/8 first, then ``Image.reduce`` for the rest;
            other formats: ``Image.reduce``), so both decoded sides stay ``>= max_side``. ``None``: full size.
        max_pixels: refuse files whose header declares more than this many pixels (before decoding anything).
            Pillow's own decompression-bomb limit (``PIL.Image.MAX_IMAGE_PIXELS``) applies as well.

    Returns:
        a :class:`LoadedImage` (RGB image + original size, reduction factor, source mode, format, orientation,
        alpha flag). Map original coordinates with :meth:`LoadedImage.to_decoded`.

    Raises:
        ImageError: missing file, directory, empty file, permission denied, not an image / unsupported format,
            truncated or corrupt data, too many pixels. Always one line.
        InvalidArgumentError: ``max_side`` or ``max_pixels`` below 1.
    """
    if max_side is not None and max_side < 1:
        raise InvalidArgumentError(f"max_side must be a positive number of pixels, got {max_side}")
    if max_pixels < 1:
        raise InvalidArgumentError(f"max_pixels must be a positive number of pixels, got {max_pixels}")
    path = Path(path)
    fh = _open_file(path)
    with fh, warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            im = Image.open(fh)  # reads the header only
        except UnidentifiedImageError:
            raise ImageError(f"not an image or an unsupported format: {_show(path)}") from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise _bomb_error(path) from exc
        except Exception as exc:  # any other failure inside Pillow's header parsers
            raise _decode_error(path, exc) from exc

        stored_w, stored_h = im.size
        if stored_w * stored_h > max_pixels:
            raise ImageError(
                f"refusing {_show(path)}: {stored_w}x{stored_h} = {stored_w * stored_h} pixels is above the limit "
                f"of {max_pixels} (possible decompression bomb); raise max_pixels only if you trust the file"
            )
        source_mode, fmt = im.mode, im.format

        draft_factor = 1
        if max_side is not None and min(stored_w, stored_h) // max_side >= 2:
            drafted = im.draft("RGB", (max_side, max_side))  # JPEG only; other formats return None
            if drafted is not None and drafted[1][2] > 0:
                draft_factor = round(stored_w / drafted[1][2])  # box = (0, 0, W / scale, H / scale)
        try:
            im.load()  # the full (possibly DCT-reduced) decode happens here, inside the try
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise _bomb_error(path) from exc
        except Exception as exc:  # truncated data, corrupt streams, missing codecs, ...
            raise _decode_error(path, exc) from exc
        orientation = _read_orientation(im)

    try:
        work, has_alpha = _working_image(im)
    except ValueError as exc:
        raise ImageError(f"unsupported image mode {source_mode!r} in {_show(path)}: {_reason(exc)}") from exc

    # What draft could not do (non-JPEG, or more than 1/8): the largest integer factor keeping both sides >= max_side.
    reduce_factor = 1 if max_side is None else max(1, min(work.width, work.height) // max_side)
    if reduce_factor >= 2:
        work = work.reduce(reduce_factor)  # box average (premultiplied for RGBA); size = ceil(size / factor)
    rgb = _finish_rgb(work)
    if orientation in _ORIENTATION_TRANSPOSE:
        rgb = rgb.transpose(_ORIENTATION_TRANSPOSE[orientation])
    if rgb is im:
        rgb = rgb.copy()  # a plain Image, detached from the (closed) file object

    reduction = draft_factor * reduce_factor
    original_size = (stored_h, stored_w) if orientation in _SWAPS_AXES else (stored_w, stored_h)
    flip_x, flip_y = _FLIPPED_AXES[orientation]
    # A reversed axis starts at the (possibly partial) last decoded pixel: decoded = W' - (W - x) / f.
    offset = (
        rgb.width - original_size[0] / reduction if flip_x else 0.0,
        rgb.height - original_size[1] / reduction if flip_y else 0.0,
    )
    return LoadedImage(
        image=rgb,
        path=path,
        original_size=original_size,
        reduction=reduction,
        offset=offset,
        source_mode=source_mode,
        format=fmt,
        orientation=orientation,
        alpha_composited=has_alpha,
    )


def image_extensions() -> frozenset[str]:
    """Lower-case file extensions (with the dot) of every format Pillow can open, e.g. ``".jpg"``."""
    registered = Image.registered_extensions()  # extension -> format, includes write-only formats
    return frozenset(ext.lower() for ext, fmt in registered.items() if fmt in Image.OPEN)


def _is_file(path: Path) -> bool:
    """``path.is_file()`` that answers False instead of raising (e.g. permission denied)."""
    try:
        return stat.S_ISREG(path.stat().st_mode)
    except OSError:
        return False


def _list_directory(directory: Path, extensions: frozenset[str]) -> list[Path]:
    """Image files directly inside ``directory`` (not recursive, no hidden files), sorted by name."""
    return sorted(
        p
        for p in directory.iterdir()
        if not p.name.startswith(".") and p.suffix.lower() in extensions and _is_file(p)
    )


def _expand_one(text: str, extensions: Callable[[], frozenset[str]]) -> list[Path] | str:
    """Image paths for one entry (already ``~``-expanded), or a one-line problem message.

    ``extensions()`` is called only for directories and patterns: building Pillow's table imports every
    format plugin, which a list of plain files does not need."""
    candidate = Path(text)
    try:
        info: os.stat_result | None = candidate.stat()
    except (FileNotFoundError, NotADirectoryError):
        info = None
    except OSError as exc:
        return f"cannot access {_show(text)}: {_os_reason(exc)}"
    if info is not None and stat.S_ISDIR(info.st_mode):
        try:
            found = _list_directory(candidate, extensions())
        except OSError as exc:
            return f"cannot list directory {_show(text)}: {_os_reason(exc)}"
        return found or f"no image files in directory: {_show(text)}"
    if info is not None:
        return [candidate]
    if _GLOB_CHARS.intersection(text):
        matches = sorted(Path(m) for m in glob.glob(text, recursive=True))
        exts = extensions()
        found = [m for m in matches if m.suffix.lower() in exts and _is_file(m)]
        return found or f"no image files match the pattern: {_show(text)}"
    return f"no such file: {_show(text)}"


def expand_inputs(items: Sequence[str | os.PathLike[str]]) -> ExpandedInputs:
    """Expand files, directories and glob patterns into a deterministic list of image paths.

    Each entry, in the given order, contributes:

    * an existing **file**: itself, whatever its extension (the caller named it; :func:`load_image` decides);
    * an existing **directory**: its image files (extensions of :func:`image_extensions`, case-insensitive),
      not recursive, hidden (dot) files skipped, sorted by name;
    * otherwise, if it contains ``*``, ``?`` or ``[``: a **glob pattern** (``**`` recurses); the matching files
      with image extensions, sorted;
    * otherwise: a problem ``"no such file: ENTRY"``.

    A file reached more than once (same real path) is kept at its first position. ``~`` is expanded. Entries
    that yield no image (missing, empty directory, pattern without matches, unreadable) are reported in
    ``problems`` with the entry as given and a one-line message, and the rest is still returned, so a batch can
    report a bad entry and continue.

    Returns:
        ``ExpandedInputs(paths, problems)`` (a named tuple, so ``paths, problems = expand_inputs(...)`` works).
    """
    extensions = functools.cache(image_extensions)  # built on first need
    paths: list[Path] = []
    problems: list[InputProblem] = []
    seen: set[str] = set()
    for item in items:
        given = os.fspath(item)
        result = _expand_one(os.path.expanduser(given), extensions)
        if isinstance(result, str):
            problems.append(InputProblem(given, result))
            continue
        for p in result:
            key = os.path.realpath(p)  # never raises, unlike Path.resolve on symlink loops
            if key not in seen:
                seen.add(key)
                paths.append(p)
    return ExpandedInputs(paths, problems)
