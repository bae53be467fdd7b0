"""Property-based fuzzing of the image door: ``load_image`` + ``preprocess`` on strangers' files.

Every file is made by Pillow (PNG, JPEG, TIFF, GIF, WebP, BMP; every mode each format stores: 1, L, LA, P with
transparency, I;16, I, F, CMYK, YCbCr, LAB, RGB, RGBA; tiny to extreme sizes; EXIF orientation; progressive JPEG,
compressed TIFF strips and tiles) and then possibly damaged: bytes flipped, inserted or deleted, the file cut
short, or the PNG header's size rewritten (with a valid CRC, so Pillow believes it). The property: the pair
either returns a finite ``(3, S, S)`` tensor and ``(S, S, 3)`` uint8 pixels, or raises :class:`ImageError` with
a one-line message -- never another exception -- and any warning is one :class:`ImageWarning` line. The whole
run stays within a memory bound (peak RSS, when Linux lets the test reset its high-water mark).

Examples per test: ``COTVIZ_FUZZ_EXAMPLES`` (default 100, the whole file in about 10 s). Long runs:
``COTVIZ_FUZZ_EXAMPLES=20000 pytest -q tests/io/test_fuzz_images.py``.
"""

from __future__ import annotations

import io
import os
import struct
import warnings
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image, features

from cotviz.errors import ImageError
from cotviz.io import ImageWarning, PreprocessConfig, load_image, preprocess

EXAMPLES = int(os.environ.get("COTVIZ_FUZZ_EXAMPLES", "100"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                           HealthCheck.too_slow])
#: Peak RSS the whole fuzz run may add to the test process (the loader's own bound is 640 MiB per image).
RSS_BUDGET = 1024 * 1024 * 1024

#: Modes each format can store (Pillow's writers), so every (format, mode) pair is a real file.
FORMAT_MODES: dict[str, tuple[str, ...]] = {
    "PNG": ("1", "L", "LA", "P", "I;16", "RGB", "RGBA"),
    "JPEG": ("L", "RGB", "CMYK", "YCbCr"),
    "TIFF": ("1", "L", "LA", "P", "I;16", "I", "F", "RGB", "RGBA", "CMYK", "YCbCr", "LAB"),
    "GIF": ("L", "P", "RGB"),
    "BMP": ("1", "L", "P", "RGB", "RGBA"),
    "WEBP": ("RGB", "RGBA"),
}
if not features.check("webp"):
    del FORMAT_MODES["WEBP"]


def _pixels(mode: str, width: int, height: int, seed: int) -> Image.Image:
    """A random image of ``mode``: noise plus a gradient (so compressors see both), wide value ranges for I/F."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0.0, 1.0, width * height).reshape(height, width)  # (H, W)
    if mode in ("I", "F"):
        scale = float(10.0 ** rng.integers(-3, 10))
        values = (ramp + rng.standard_normal((height, width))) * scale
        if mode == "F" and rng.random() < 0.3:
            values.flat[rng.integers(0, values.size)] = rng.choice([np.nan, np.inf, -np.inf])
        if mode == "I":
            return Image.fromarray(np.clip(values, -(2.0**31), 2.0**31 - 1).astype(np.int32))
        return Image.fromarray(values.astype(np.float32))
    if mode == "I;16":
        values = (ramp * 65535 * rng.random()).astype("<u2")
        return Image.frombytes("I;16", (width, height), values.tobytes())
    bands = len(Image.getmodebands(mode) * "x")
    noise = rng.integers(0, 256, size=(height, width, bands))
    data = ((noise + ramp[..., None] * 255) % 256).astype(np.uint8)  # (H, W, bands)
    im = Image.frombytes(mode if mode != "1" else "L", (width, height), data.tobytes())
    if mode == "1":
        im = im.convert("1")
    if mode == "P":
        im.putpalette(rng.integers(0, 256, 768, dtype=np.uint8).tobytes())
        im.info["transparency"] = int(rng.integers(0, 256))
    return im


@st.composite
def encoded_images(draw: st.DrawFn) -> bytes:
    """Bytes of a real image file: a format, one of its modes, a size (tiny to extreme), and writer options."""
    fmt = draw(st.sampled_from(sorted(FORMAT_MODES)))
    mode = draw(st.sampled_from(FORMAT_MODES[fmt]))
    shape = draw(st.sampled_from(["small", "small", "small", "thin", "one"]))
    if shape == "small":
        width, height = draw(st.integers(1, 48)), draw(st.integers(1, 48))
    elif shape == "thin":  # extreme aspect ratios, both ways
        long, short = draw(st.integers(200, 6000)), draw(st.integers(1, 3))
        width, height = (long, short) if draw(st.booleans()) else (short, long)
    else:
        width = height = 1
    im = _pixels(mode, width, height, draw(st.integers(0, 2**16)))
    options: dict[str, object] = {}
    if fmt in ("PNG", "JPEG", "TIFF", "WEBP") and draw(st.booleans()):
        exif = Image.Exif()
        exif[0x0112] = draw(st.integers(0, 9))  # 0 and 9 are invalid orientations
        options["exif"] = exif
    if fmt == "JPEG":
        options.update(quality=draw(st.integers(5, 95)), progressive=draw(st.booleans()))
    elif fmt == "TIFF":
        compression = draw(st.sampled_from([None, "packbits", "tiff_lzw", "tiff_adobe_deflate"]))
        if compression is not None and mode not in ("I;16", "F", "I") or compression == "packbits":
            options["compression"] = compression
        if draw(st.booleans()) and features.check("libtiff") and width >= 16 and height >= 16:
            options.update(tile=(16, 16), compression=options.get("compression") or "tiff_adobe_deflate")
    elif fmt == "WEBP":
        options.update(lossless=draw(st.booleans()), quality=draw(st.integers(1, 100)))
    elif fmt == "PNG" and mode == "P" and draw(st.booleans()):
        options["transparency"] = bytes(draw(st.lists(st.integers(0, 255), min_size=1, max_size=16)))
    buf = io.BytesIO()
    try:
        im.save(buf, format=fmt, **options)
    except (OSError, ValueError, TypeError, KeyError, RuntimeError):  # a writer refusing these options
        buf = io.BytesIO()
        im.save(buf, format=fmt)
    return buf.getvalue()


def _png_with_size(data: bytes, width: int, height: int) -> bytes:
    """``data`` (a PNG) with the IHDR size rewritten and its CRC fixed, so Pillow trusts the new size."""
    if data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        return data
    ihdr = struct.pack(">II", width, height) + data[24:29]
    return data[:16] + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr)) + data[33:]


@st.composite
def damaged(draw: st.DrawFn, original: bytes) -> bytes:
    """``original`` with up to 6 random edits (flip, insert, delete, truncate, PNG size), or unchanged."""
    data = bytearray(original)
    for _ in range(draw(st.integers(0, 6))):
        kind = draw(st.sampled_from(["flip", "flip", "insert", "delete", "truncate", "png_size"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if kind == "flip" and data:
            data[at] = draw(st.integers(0, 255))
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete":
            del data[at: at + draw(st.integers(1, 64))]
        elif kind == "truncate":
            del data[at:]
        elif kind == "png_size":
            side = st.sampled_from([0, 1, 3, 255, 65_535, 100_000, 1_000_000, 2**31 - 1, 2**32 - 1])
            data = bytearray(_png_with_size(bytes(data), draw(side), draw(side)))
    return bytes(data)


def _check(path: Path, size: int, crop: bool) -> None:
    """The property for one file (see the module docstring)."""
    cfg = PreprocessConfig(input_size=size, crop=crop)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            pre = preprocess(load_image(path, max_side=cfg.decode_side()), cfg)
        except ImageError as err:
            message = str(err)
            assert message and "\n" not in message, repr(message)
            event(f"ImageError: {message.split(':')[0].split(' ')[0]}")  # --hypothesis-show-statistics
            pre = None
    assert all(issubclass(w.category, ImageWarning) for w in caught), [str(w.message) for w in caught]
    assert len(caught) <= 1 and all("\n" not in str(w.message) for w in caught)
    if caught:
        event("ImageWarning")
    if pre is not None:
        event("loaded")
        assert pre.tensor.shape == (3, size, size) and pre.tensor.dtype == torch.float32
        assert bool(torch.isfinite(pre.tensor).all())
        assert pre.display.shape == (size, size, 3) and pre.display.dtype == np.uint8
        assert all(np.isfinite(pre.crop_box))


@pytest.fixture(scope="module")
def rss_bound() -> Iterator[None]:
    """Fail the module if the fuzzing raised the process's peak RSS by more than :data:`RSS_BUDGET`."""

    def status(key: str) -> int:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key))

    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # VmHWM := current RSS
        start = status("VmRSS")
    except OSError:
        yield  # no way to measure a peak here; the per-image bound is tested in test_memory_bounds.py
        return
    yield
    assert status("VmHWM") - start < RSS_BUDGET


@FUZZ
@given(data=st.data(), size=st.sampled_from([1, 7, 32]), crop=st.booleans())
def test_damaged_files_load_or_fail_with_one_line(rss_bound: None, tmp_path: Path, data: st.DataObject,
                                                  size: int, crop: bool) -> None:
    original = data.draw(encoded_images())
    path = tmp_path / "fuzz.img"
    path.write_bytes(data.draw(damaged(original)))
    _check(path, size, crop)


@FUZZ
@given(blob=st.binary(max_size=512), prefix=st.sampled_from(
    [b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF89a", b"II*\x00", b"MM\x00*", b"BM", b"RIFF"]))
def test_random_bytes_behind_a_magic_number(rss_bound: None, tmp_path: Path, blob: bytes, prefix: bytes) -> None:
    path = tmp_path / "fuzz.bin"
    path.write_bytes(prefix + blob)
    if not (prefix + blob):
        with pytest.raises(ImageError, match="empty file"):
            load_image(path)
        return
    _check(path, 7, True)


#: Every mode Pillow can hold in memory (``preprocess`` also takes a PIL image).
ALL_MODES = ("1", "L", "LA", "La", "P", "PA", "I", "I;16", "I;16L", "I;16B", "I;16N", "F", "RGB", "RGBA", "RGBa",
             "RGBX", "CMYK", "YCbCr", "LAB", "HSV")


@FUZZ
@given(mode=st.sampled_from(ALL_MODES), width=st.integers(0, 300), height=st.integers(0, 300),
       fill=st.integers(0, 2**31 - 1), size=st.sampled_from([1, 7, 32]), crop=st.booleans())
def test_in_memory_images_of_every_mode(mode: str, width: int, height: int, fill: int, size: int,
                                        crop: bool) -> None:
    """A PIL image of any mode and size (0 included) preprocesses to a finite tensor or one ImageError line."""
    im = Image.new(mode, (width, height))
    if width and height:
        rng = np.random.default_rng(fill)
        im.frombytes(rng.integers(0, 256, len(im.tobytes()), dtype=np.uint8).tobytes())  # any bit pattern
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # e.g. numpy's "invalid value" on signalling NaNs
            pre = preprocess(im, PreprocessConfig(input_size=size, crop=crop))
    except ImageError as err:
        assert "\n" not in str(err) and not (width and height), str(err)  # only an empty image is refused
        return
    assert pre.tensor.shape == (3, size, size) and bool(torch.isfinite(pre.tensor).all())


_WRITER_OPTIONS: dict[str, list[dict[str, object]]] = {
    "JPEG": [{}, {"progressive": True, "quality": 30}],
    "TIFF": [{}, {"compression": "tiff_lzw"}, {"compression": "tiff_adobe_deflate", "tile": (16, 16)},
             {"compression": "packbits"}],
    "WEBP": [{"lossless": True}, {"quality": 40}],
}


@pytest.mark.parametrize(("fmt", "mode", "options"), [
    (f, m, o) for f, modes in FORMAT_MODES.items() for m in modes for o in _WRITER_OPTIONS.get(f, [{}])])
def test_every_format_and_mode_loads_intact(tmp_path: Path, capfd: pytest.CaptureFixture[str], fmt: str,
                                            mode: str, options: dict[str, object]) -> None:
    """Undamaged files of every (format, mode, writer option) load and preprocess, silently."""
    path = tmp_path / f"intact.{fmt.lower()}"
    image = _pixels(mode, 37, 23, seed=1)
    try:
        image.save(path, format=fmt, **options)
    except (OSError, ValueError, RuntimeError):
        pytest.skip(f"Pillow cannot write {mode} as {fmt} with {options}")
    capfd.readouterr()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pre = preprocess(load_image(path, max_side=64), PreprocessConfig(input_size=16))
    assert pre.tensor.shape == (3, 16, 16) and bool(torch.isfinite(pre.tensor).all())
    assert capfd.readouterr() == ("", "")  # nothing printed, not even by C libraries (libtiff, libjpeg)
