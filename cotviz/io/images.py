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
* **Memory**: before decoding, the peak memory of the call is estimated from the header (the decoded pixels,
  the decoder's buffers -- two rows for PNG/GIF/BMP/..., a strip or tile for TIFF, the coefficients of a
  progressive JPEG, a whole frame otherwise -- and the RGB result; Pillow also keeps an 8-byte pointer per row,
  which dominates for a 1-pixel-wide strip) and the file is refused above ``max_decode_bytes``
  (:data:`DEFAULT_MAX_DECODE_BYTES`, 640 MiB). The conversion to RGB runs tile by tile, so its extra memory is
  the result plus about a megabyte, and the decoded pixels are freed before the EXIF transpose copies the
  result. With that default, ``load_image`` + ``preprocess`` of any image Pillow's bomb limit accepts peaks
  below 1 GiB of process RSS (interpreter and torch included) or fails with one line, whatever its shape
  (tests/io/test_memory_bounds.py).
* **Errors**: every failure is an :class:`cotviz.errors.ImageError` with a one-line message.
* **Warnings**: what Pillow warns about while reading a file (corrupt EXIF data, odd TIFF tags, an invalid
  APNG) is collected and issued as at most one :class:`ImageWarning` per file, one line naming the file;
  ordinary files produce none.

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
import math
import os
import stat
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, NamedTuple, TypeVar

import numpy as np
from PIL import Image, UnidentifiedImageError

from cotviz.errors import ImageError, InvalidArgumentError
from cotviz.resources import format_bytes

__all__ = [
    "ALPHA_BACKGROUND",
    "Coord",
    "DEFAULT_MAX_DECODE_BYTES",
    "DEFAULT_MAX_PIXELS",
    "ExpandedInputs",
    "ImageWarning",
    "InputProblem",
    "LoadedImage",
    "expand_inputs",
    "image_extensions",
    "load_image",
    "to_rgb",
]

#: Default pixel limit, equal to Pillow's default ``Image.MAX_IMAGE_PIXELS`` (1 GiB / 4 bytes / 3 channels).
DEFAULT_MAX_PIXELS: int = 1024 * 1024 * 1024 // 4 // 3
#: Default memory limit for decoding one image (the estimate of :func:`load_image`, see "Memory" above):
#: with the interpreter, torch and Pillow (about 220 MiB) a process stays below 1 GiB for any accepted image.
DEFAULT_MAX_DECODE_BYTES: int = 640 * 1024 * 1024
#: Background colour that alpha and palette transparency are composited over.
ALPHA_BACKGROUND: tuple[int, int, int] = (255, 255, 255)
#: Pixels per tile of the conversion to RGB (1 MiB in a 4-byte mode).
_TILE_PIXELS = 1 << 18
#: Formats whose Pillow decoder holds a few rows at a time (all others: assumed to hold a whole frame).
_ROW_DECODERS = frozenset({"PNG", "GIF", "BMP", "DIB", "PPM", "PCX", "TGA", "SGI", "QOI"})


class ImageWarning(UserWarning):
    """Something in an image file was damaged or odd but the pixels decoded (e.g. corrupt EXIF metadata).

    The message is one line and names the file; :func:`load_image` issues at most one per file.
    """

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
    if isinstance(exc, MemoryError):
        return ImageError(f"cannot decode {_show(path)}: Pillow could not allocate memory for its pixels")
    return ImageError(f"cannot decode {_show(path)}: {reason} (damaged, or a variant of the format Pillow cannot read)")


def _read_orientation(im: Image.Image) -> int:
    """EXIF (or XMP) orientation as read by ``ImageOps.exif_transpose``; 1 if absent, invalid or unreadable."""
    try:
        value = im.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception:  # corrupt EXIF must not make good pixels unreadable; the image is then used as stored
        return 1
    return value if isinstance(value, int) and value in _FLIPPED_AXES else 1


def _working_mode(im: Image.Image) -> tuple[str, bool]:
    """The mode :func:`_working_image` gives ``im`` (one of L, RGB, RGBA, I, F) and whether it carries alpha."""
    mode = im.mode
    if mode in ("RGBA", "LA", "La", "RGBa", "PA") or (mode in ("P", "L", "RGB", "1") and "transparency" in im.info):
        return "RGBA", True
    if mode in ("L", "RGB", "I", "F"):
        return mode, False
    if mode == "1":
        return "L", False
    if mode.startswith("I;16"):
        return "I", False
    return "RGB", False  # P, CMYK, YCbCr, LAB, HSV, RGBX, ...


def _working_image(im: Image.Image) -> tuple[Image.Image, bool]:
    """Convert a loaded image to one of L, RGB, RGBA, I, F (modes that ``reduce`` averages correctly).

    Returns the image (``im`` itself if it is already in its working mode) and whether it carries alpha.
    Conversions here are exact (no bit-depth loss for I;16 -> I, palette lookup for P); colour-space
    conversions to RGB happen at full decoded size because they are not linear and must not be averaged first.
    """
    mode, has_alpha = _working_mode(im)
    if im.mode in ("La", "RGBa"):  # premultiplied (in-memory images only): un-premultiply first
        im = im.convert(im.mode[:-1] + "A")
    return (im if im.mode == mode else im.convert(mode)), has_alpha


def _value_range(arrays: Iterable[np.ndarray]) -> tuple[float, float]:
    """``(min, max)`` of the finite values of all the (H, W) arrays; ``(0, 0)`` if there is none."""
    lo, hi = math.inf, -math.inf
    for values in arrays:
        with np.errstate(invalid="ignore"):  # signalling NaNs in float data: handled, not worth a warning
            finite = values[np.isfinite(values)] if values.dtype.kind == "f" else values
        if finite.size:
            lo, hi = min(lo, float(finite.min())), max(hi, float(finite.max()))
    return (lo, hi) if lo <= hi else (0.0, 0.0)


def _to_uint8(values: np.ndarray, mode: str, value_range: tuple[float, float]) -> np.ndarray:
    """Map an (H, W) int32 ("I") or float32 ("F") array to (H, W) uint8 by the rules in the module docstring.

    ``value_range`` is ``(min, max)`` of the finite values of the whole image (:func:`_value_range`), so a tile
    maps exactly as it would inside the whole image; NaN and inf count as the minimum. Float64 arithmetic: exact
    for every int32, and no overflow for the widest float32 range (``-3.4e38 .. 3.4e38``).
    """
    lo, hi = value_range
    with np.errstate(invalid="ignore"):  # signalling NaNs: replaced below, not worth a warning
        a = values.astype(np.float64)  # (H, W)
    finite = np.isfinite(a)
    if not finite.all():
        a = np.where(finite, a, lo)
    if mode == "I" and lo >= 0 and hi <= 65535:
        out = np.rint(a / 257.0)  # 65535 -> 255: 16-bit data scaled, not clipped
    elif mode == "F" and lo >= 0 and hi <= 1:
        out = np.rint(a * 255.0)
    elif hi > lo:
        out = np.rint((a - lo) * (255.0 / (hi - lo)))  # linear stretch of [lo, hi] onto [0, 255]
    else:
        out = np.clip(np.rint(a), 0, 255)  # constant image outside the known ranges
    return np.clip(out, 0, 255).astype(np.uint8)


def _finish_rgb(work: Image.Image, value_range: tuple[float, float] | None = None) -> Image.Image:
    """Turn a working image (L, RGB, RGBA, I, F) into an RGB image; RGBA is composited over white.

    ``value_range``: the finite ``(min, max)`` of the whole image when ``work`` is one tile of it (I and F
    only); None = ``work``'s own.
    """
    if work.mode == "RGBA":
        background = Image.new("RGBA", work.size, (*ALPHA_BACKGROUND, 255))
        return Image.alpha_composite(background, work).convert("RGB")
    if work.mode in ("I", "F"):
        values = np.asarray(work)  # (H, W) int32 / float32
        gray = _to_uint8(values, work.mode, _value_range([values]) if value_range is None else value_range)
        return Image.fromarray(gray).convert("RGB")
    if work.mode == "L":
        return work.convert("RGB")
    return work


def _tile_shape(width: int, height: int, factor: int) -> tuple[int, int]:
    """``(tile_w, tile_h)`` of :func:`_tiles`: about :data:`_TILE_PIXELS` pixels, sides multiples of ``factor``."""
    if width * factor <= _TILE_PIXELS:
        tile_w = width
    else:
        tile_w = max(factor, _TILE_PIXELS // factor // factor * factor)
    return tile_w, min(height, max(factor, _TILE_PIXELS // tile_w // factor * factor))


def _tiles(width: int, height: int, factor: int) -> list[tuple[int, int, int, int]]:
    """Boxes ``(x0, y0, x1, y1)`` covering the image in about :data:`_TILE_PIXELS` pixels each, row-major.

    Tile sides are multiples of ``factor`` (except at the right and bottom edges), so reducing tile by tile
    averages exactly the blocks that reducing the whole image would.
    """
    tile_w, tile_h = _tile_shape(width, height, factor)
    return [(x, y, min(x + tile_w, width), min(y + tile_h, height))
            for y in range(0, height, tile_h) for x in range(0, width, tile_w)]


def _convert(im: Image.Image, factor: int) -> tuple[Image.Image, bool]:
    """Any loaded image -> (8-bit RGB image reduced by the integer ``factor``, alpha flag), tile by tile.

    Equal to converting the whole image to its working mode, ``reduce(factor)``, then to RGB (every step is
    per pixel or per ``factor x factor`` block), but the extra memory is the output plus one tile, whatever the
    image's shape: a 1 x 89-megapixel RGBA strip needs its own pixels and its RGB copy, not six full copies.

    Raises:
        ValueError: Pillow cannot convert the mode (the callers turn it into an ImageError).
    """
    width, height = im.size
    work_mode, has_alpha = _working_mode(im)
    tiles = _tiles(width, height, factor)
    if factor > 1:  # reduce first (a working image of at most 1/4 of the pixels), then convert that
        canvas = Image.new(work_mode, (-(-width // factor), -(-height // factor)))
        for box in tiles:
            canvas.paste(_working_image(im.crop(box))[0].reduce(factor), (box[0] // factor, box[1] // factor))
        return _convert(canvas, 1)[0], has_alpha
    value_range = None
    if work_mode in ("I", "F"):  # the grey mapping depends on the whole image's range: one pass to find it
        value_range = _value_range(np.asarray(_working_image(im.crop(box))[0]) for box in tiles)
    out = Image.new("RGB", (width, height))
    for box in tiles:
        out.paste(_finish_rgb(_working_image(im.crop(box))[0], value_range), box[:2])
    return out, has_alpha


def _pixel_bytes(mode: str) -> int:
    """Bytes per pixel Pillow stores for ``mode`` (1, 2 or 4)."""
    if mode in ("1", "L", "P"):
        return 1
    return 2 if mode.startswith("I;16") else 4


def _image_bytes(width: int, height: int, pixel_bytes: int) -> int:
    """Memory of a Pillow image: its pixels plus one 8-byte row pointer per row (1 GiB for a 1 x 89M strip)."""
    return height * (width * pixel_bytes + 8)


def _raw_pixel_bytes(im: Image.Image) -> int:
    """Upper bound of the bytes per pixel in the file's rows: the stored size, doubled for 16-bit samples."""
    stored = _pixel_bytes(im.mode)
    for tile in getattr(im, "tile", None) or ():
        args = tile[3] if len(tile) > 3 else None
        rawmode = args if isinstance(args, str) else args[0] if isinstance(args, tuple) and args else None
        if isinstance(rawmode, str) and "16" in rawmode:
            return 2 * stored
    return stored


def _tiff_chunk_bytes(im: Image.Image) -> int | None:
    """Bytes of the largest strip or tile a TIFF decoder holds (raw samples + compressed data), from the tags."""
    try:
        tags = im.tag_v2  # type: ignore[attr-defined]
        bits = tags.get(258, 8)
        spp = int(tags.get(277, 1))
        bits_per_pixel = sum(int(b) for b in bits) if isinstance(bits, tuple) else int(bits) * spp
        width, height = im.size
        if 322 in tags and 323 in tags:  # tiled
            raw = -(-int(tags[322]) * bits_per_pixel // 8) * int(tags[323])
            packed = tags.get(325, ())
        else:
            raw = -(-width * bits_per_pixel // 8) * min(int(tags.get(278, height)), height)
            packed = tags.get(279, ())
        packed = max((int(n) for n in (packed if isinstance(packed, tuple) else (packed,))), default=0)
        return raw + packed
    except Exception:  # odd tags: fall back to the whole-frame assumption
        return None


def _decode_estimate(im: Image.Image, stored_size: tuple[int, int], factor: int) -> int:
    """Peak bytes :func:`load_image` needs for ``im`` (header read, possibly drafted) reduced by ``factor``.

    ``stored_size`` is the size in the file (``im.size`` before a JPEG draft).

    ``decoded + max(decoder buffers, conversion)``; the EXIF transpose needs no more (see :func:`_decode`).
    Images count their row pointers (:func:`_image_bytes`). Decoder buffers: two rows for the
    row decoders (:data:`_ROW_DECODERS`), the largest strip or tile for TIFF, progressive JPEG's coefficient
    buffer (2 bytes per sample of the full image), otherwise one whole frame. Conversion: the RGB output (plus
    the reduced working image when ``factor > 1``) plus a few tiles.
    """
    width, height = im.size
    decoded = _image_bytes(width, height, _pixel_bytes(im.mode))
    bands = len(im.getbands())
    if im.format in _ROW_DECODERS:
        buffers = 2 * width * _raw_pixel_bytes(im)  # the current and the previous row (PNG filters)
    elif im.format == "JPEG":
        progressive = bool(im.info.get("progressive"))
        buffers = 2 * stored_size[0] * stored_size[1] * bands if progressive else 2 * 16 * width * bands * 2
    elif im.format == "TIFF":
        buffers = _tiff_chunk_bytes(im) or decoded
    else:
        buffers = decoded
    output = _image_bytes(-(-width // factor), -(-height // factor), 4)
    tiles = 4 * _image_bytes(*_tile_shape(width, height, factor), 4)  # a tile and its conversions
    conversion = (2 if factor > 1 else 1) * output + tiles
    return decoded + max(buffers, conversion)


def _memory_error(path: Path, im: Image.Image, needed: int, limit: int) -> ImageError:
    """The decode-memory estimate is above the limit."""
    width, height = im.size
    return ImageError(
        f"refusing {_show(path)}: decoding this {width}x{height} {im.mode} image needs about "
        f"{format_bytes(needed)} of memory, above the limit of {format_bytes(limit)} (max_decode_bytes); "
        "shrink or split the image, or raise max_decode_bytes if the machine has the memory"
    )


_PILLOW_DIR = os.path.dirname(Image.__file__)


def _issue_warnings(path: Path, caught: list[warnings.WarningMessage]) -> None:
    """Re-issue what Pillow warned about while reading ``path`` as one :class:`ImageWarning` line.

    Warnings from anywhere else (not expected: they would be cotviz's own bugs) are re-issued unchanged.
    """
    pillow = [w for w in caught if os.path.dirname(w.filename) == _PILLOW_DIR]
    for w in caught:
        if w not in pillow:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)
    messages = list(dict.fromkeys(" ".join(str(w.message).split()) for w in pillow))
    if not messages:
        return
    more = f" (and {len(messages) - 1} more)" if len(messages) > 1 else ""
    first = messages[0].rstrip(".")
    if any(k in first.lower() for k in ("exif", "tag", "metadata", "xmp")):
        text = f"{_show(path)}: damaged metadata ignored (Pillow: {first}){more}; the pixels decoded normally"
    else:
        text = f"{_show(path)}: Pillow reported a problem ({first}){more}; the image decoded anyway"
    warnings.warn(text, ImageWarning, stacklevel=3)


def to_rgb(image: Image.Image) -> tuple[Image.Image, bool]:
    """Convert any Pillow image to 8-bit RGB by the rules of this module (no orientation, no resizing).

    Returns ``(rgb, alpha_composited)``. The input is not modified; an RGB input without transparency is
    returned as a copy.

    Raises:
        ImageError: the mode cannot be converted to RGB.
    """
    if image.width < 1 or image.height < 1:
        raise ImageError(f"cannot convert an image without pixels ({image.width}x{image.height})")
    try:
        return _convert(image, 1)  # always a new image
    except ValueError as exc:
        raise ImageError(f"unsupported image mode {image.mode!r}: {_reason(exc)}") from exc


def load_image(
    path: str | os.PathLike[str],
    *,
    max_side: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_decode_bytes: int = DEFAULT_MAX_DECODE_BYTES,
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
        max_decode_bytes: refuse files whose decoding this function estimates (from the header, before
            decoding) to need more memory than this (see "Memory" in the module docstring).

    Returns:
        a :class:`LoadedImage` (RGB image + original size, reduction factor, source mode, format, orientation,
        alpha flag). Map original coordinates with :meth:`LoadedImage.to_decoded`.

    Raises:
        ImageError: missing file, directory, empty file, permission denied, not an image / unsupported format,
            truncated or corrupt data, too many pixels, too much memory. Always one line.
        InvalidArgumentError: ``max_side``, ``max_pixels`` or ``max_decode_bytes`` below 1.

    Warns:
        ImageWarning: at most one line per file when Pillow warned while reading it (e.g. corrupt EXIF data).
    """
    if max_side is not None and max_side < 1:
        raise InvalidArgumentError(f"max_side must be a positive number of pixels, got {max_side}")
    if max_pixels < 1:
        raise InvalidArgumentError(f"max_pixels must be a positive number of pixels, got {max_pixels}")
    if max_decode_bytes < 1:
        raise InvalidArgumentError(f"max_decode_bytes must be a positive number of bytes, got {max_decode_bytes}")
    path = Path(path)
    fh = _open_file(path)
    with fh, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # Pillow's warnings are collected and re-issued as one line below
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            im = Image.open(fh)  # reads the header only
        except UnidentifiedImageError:
            raise ImageError(f"not an image or an unsupported format: {_show(path)}") from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise _bomb_error(path) from exc
        except Exception as exc:  # any other failure inside Pillow's header parsers
            raise _decode_error(path, exc) from exc
        try:
            loaded = _decode(im, path, max_side, max_pixels, max_decode_bytes)
        finally:
            im.close()  # frees the decoded pixels now, not when the garbage collector gets to them
    _issue_warnings(path, caught)
    return loaded


def _decode(
    im: Image.Image, path: Path, max_side: int | None, max_pixels: int, max_decode_bytes: int
) -> LoadedImage:
    """The body of :func:`load_image` once the header is read: checks, decoding, conversion, orientation."""
    stored_w, stored_h = im.size
    if stored_w < 1 or stored_h < 1:
        raise ImageError(f"cannot decode {_show(path)}: it declares {stored_w}x{stored_h} pixels")
    if stored_w * stored_h > max_pixels:
        raise ImageError(
            f"refusing {_show(path)}: {stored_w}x{stored_h} = {stored_w * stored_h} pixels is above the limit "
            f"of {max_pixels} (possible decompression bomb); raise max_pixels only if you trust the file"
        )
    source_mode, fmt = im.mode, im.format

    draft_factor = 1
    try:
        if max_side is not None and min(stored_w, stored_h) // max_side >= 2:
            drafted = im.draft("RGB", (max_side, max_side))  # JPEG only; other formats return None
            if drafted is not None and drafted[1][2] > 0:
                draft_factor = round(stored_w / drafted[1][2])  # box = (0, 0, W / scale, H / scale)
        # What draft could not do (non-JPEG, or more than 1/8): the largest integer factor keeping both sides
        # >= max_side.
        reduce_factor = 1 if max_side is None else max(1, min(im.size) // max_side)
        needed = _decode_estimate(im, (stored_w, stored_h), reduce_factor)
        if needed > max_decode_bytes:
            raise _memory_error(path, im, needed, max_decode_bytes)
        im.load()  # the full (possibly DCT-reduced) decode happens here, inside the try
        orientation = _read_orientation(im)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _bomb_error(path) from exc
    except Exception as exc:  # truncated data, corrupt streams, missing codecs, out of memory, ...
        raise _decode_error(path, exc) from exc
    if min(im.size) < 1:
        raise ImageError(f"cannot decode {_show(path)}: it decoded to {im.width}x{im.height} pixels")
    # The EXIF transpose copies an image: at full resolution, of the decoded pixels if they are smaller than the
    # RGB result (conversions are per pixel, so the order does not matter), else of the result once the decoded
    # pixels are freed. Either way the peak stays within decoded + output, as _decode_estimate assumes.
    transpose = _ORIENTATION_TRANSPOSE.get(orientation)
    transpose_first = transpose is not None and reduce_factor == 1 and _pixel_bytes(im.mode) < 4
    try:
        source = im.transpose(transpose) if transpose is not None and transpose_first else im
        if source is not im:
            im.close()
        rgb, has_alpha = _convert(source, reduce_factor)
    except MemoryError:
        raise ImageError(f"cannot convert {_show(path)}: out of memory for its {im.width}x{im.height} pixels") from None
    except (ValueError, OSError) as exc:  # Pillow: "conversion from X to Y not supported", odd palettes
        raise ImageError(f"unsupported image mode {source_mode!r} in {_show(path)}: {_reason(exc)}") from exc
    source.close()
    im.close()  # the decoded pixels are no longer needed: free them before the transpose copies the output
    if transpose is not None and not transpose_first:
        rgb = rgb.transpose(transpose)

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
