"""Tests for cotviz.io.images: modes, orientation, reduced decoding, refusals and input expansion.

All images are generated with Pillow in ``tmp_path``; expected pixels come from independent numpy formulas or
from Pillow itself used as an oracle (``ImageOps.exif_transpose``, ``Image.reduce``).
"""

from __future__ import annotations

import math
import os
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageFile, ImageOps, features

from cotviz.errors import ImageError, InvalidArgumentError
from cotviz.io import ImageWarning, expand_inputs, image_extensions, images, load_image, to_rgb

RNG_SEED = 1234


def _rgb_array(width: int, height: int, seed: int = RNG_SEED) -> np.ndarray:
    """(H, W, 3) uint8 random image."""
    return np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def _pixels(path: Path, **kwargs: object) -> np.ndarray:
    """(H, W, 3) uint8 pixels of ``load_image(path)``."""
    loaded = load_image(path, **kwargs)  # type: ignore[arg-type]
    assert loaded.image.mode == "RGB"
    return np.asarray(loaded.image)


def _centroid(gray: np.ndarray) -> tuple[float, float]:
    """Intensity-weighted centroid of an (H, W) array in continuous pixel coordinates (centre = index + 0.5)."""
    weights = gray.astype(np.float64)
    ys, xs = np.indices(weights.shape)  # (H, W) each
    total = weights.sum()
    return float(((xs + 0.5) * weights).sum() / total), float(((ys + 0.5) * weights).sum() / total)


# ---------------------------------------------------------------------------------------------------- modes


def test_rgb_png_is_exact_and_metadata_is_filled(tmp_path: Path) -> None:
    arr = _rgb_array(37, 23)
    path = tmp_path / "rgb.png"
    Image.fromarray(arr).save(path)
    loaded = load_image(path)
    np.testing.assert_array_equal(np.asarray(loaded.image), arr)
    assert loaded.original_size == (37, 23)
    assert loaded.size == (37, 23)
    assert (loaded.reduction, loaded.scale, loaded.offset) == (1, 1.0, (0.0, 0.0))
    assert (loaded.source_mode, loaded.format, loaded.orientation) == ("RGB", "PNG", 1)
    assert not loaded.exif_transposed and not loaded.alpha_composited
    assert loaded.path == path
    assert type(loaded.image) is Image.Image  # detached from the file object


@pytest.mark.parametrize(
    ("fmt", "ext", "kwargs"),
    [
        ("PNG", ".png", {}),
        ("BMP", ".bmp", {}),
        ("TIFF", ".tif", {}),
        ("PPM", ".ppm", {}),
        ("TGA", ".tga", {}),
        ("WEBP", ".webp", {"lossless": True}),
    ],
)
def test_lossless_formats_round_trip_exactly(tmp_path: Path, fmt: str, ext: str, kwargs: dict) -> None:
    if fmt == "WEBP" and not features.check("webp"):
        pytest.skip("Pillow built without WebP support")
    arr = _rgb_array(19, 11)
    path = tmp_path / f"img{ext}"
    Image.fromarray(arr).save(path, format=fmt, **kwargs)
    loaded = load_image(path)
    assert loaded.format == fmt
    np.testing.assert_array_equal(np.asarray(loaded.image), arr)


def test_gray_l_and_bilevel(tmp_path: Path) -> None:
    gray = _rgb_array(16, 9)[..., 0]  # (H, W)
    Image.fromarray(gray).save(tmp_path / "l.png")
    np.testing.assert_array_equal(_pixels(tmp_path / "l.png"), np.repeat(gray[..., None], 3, axis=2))
    bits = gray > 127
    Image.fromarray(bits).save(tmp_path / "one.png")
    assert Image.open(tmp_path / "one.png").mode == "1"
    expected = np.repeat(np.where(bits, 255, 0).astype(np.uint8)[..., None], 3, axis=2)
    np.testing.assert_array_equal(_pixels(tmp_path / "one.png"), expected)


def _palette_image(indices: np.ndarray, palette: np.ndarray) -> Image.Image:
    """Mode-P image from (H, W) indices and a (256, 3) palette."""
    height, width = indices.shape
    image = Image.frombytes("P", (width, height), indices.astype(np.uint8).tobytes())
    image.putpalette(palette.astype(np.uint8).ravel().tolist())
    return image


def test_palette_without_and_with_transparency(tmp_path: Path) -> None:
    rng = np.random.default_rng(RNG_SEED)
    palette = rng.integers(0, 256, size=(256, 3))
    indices = rng.integers(0, 8, size=(10, 14))
    im = _palette_image(indices, palette)
    im.save(tmp_path / "p.png")
    loaded = load_image(tmp_path / "p.png")
    assert loaded.source_mode == "P" and not loaded.alpha_composited
    np.testing.assert_array_equal(np.asarray(loaded.image), palette[indices].astype(np.uint8))

    im.save(tmp_path / "pt.png", transparency=3)  # index 3 fully transparent
    loaded = load_image(tmp_path / "pt.png")
    assert loaded.source_mode == "P" and loaded.alpha_composited
    expected = np.where((indices == 3)[..., None], 255, palette[indices]).astype(np.uint8)
    np.testing.assert_array_equal(np.asarray(loaded.image), expected)

    im.save(tmp_path / "p.gif")  # GIF: palette format, first frame
    loaded = load_image(tmp_path / "p.gif")
    assert loaded.format == "GIF"
    np.testing.assert_array_equal(np.asarray(loaded.image), palette[indices].astype(np.uint8))


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_alpha_is_composited_over_white(tmp_path: Path, mode: str) -> None:
    rng = np.random.default_rng(RNG_SEED)
    color = rng.integers(0, 256, size=(12, 20, 3)).astype(np.float64)
    if mode == "LA":
        color = np.repeat(color[..., :1], 3, axis=2)
    alpha = rng.integers(0, 256, size=(12, 20, 1)).astype(np.float64)
    alpha[0, 0] = 0  # fully transparent -> white
    alpha[0, 1] = 255  # opaque -> the colour
    channels = color[..., :1] if mode == "LA" else color
    Image.fromarray(np.concatenate([channels, alpha], axis=2).astype(np.uint8), mode=None).save(
        tmp_path / "a.png"
    )
    loaded = load_image(tmp_path / "a.png")
    assert loaded.source_mode == mode and loaded.alpha_composited
    expected = color * alpha / 255 + 255 * (1 - alpha / 255)  # (H, W, 3) float
    got = np.asarray(loaded.image).astype(np.float64)
    assert np.abs(got - expected).max() <= 1.0  # Pillow's integer rounding
    np.testing.assert_array_equal(got[0, 0], [255, 255, 255])
    np.testing.assert_array_equal(got[0, 1], color[0, 1])


def test_rgb_colour_key_transparency(tmp_path: Path) -> None:
    arr = _rgb_array(8, 8)
    arr[2, 3] = (1, 2, 3)
    Image.fromarray(arr).save(tmp_path / "key.png", transparency=(1, 2, 3))
    loaded = load_image(tmp_path / "key.png")
    assert loaded.alpha_composited
    np.testing.assert_array_equal(np.asarray(loaded.image)[2, 3], [255, 255, 255])
    keep = np.any(arr != (1, 2, 3), axis=2)
    np.testing.assert_array_equal(np.asarray(loaded.image)[keep], arr[keep])


def test_cmyk_uses_the_subtractive_formula(tmp_path: Path) -> None:
    cmyk = np.random.default_rng(RNG_SEED).integers(0, 256, size=(9, 13, 4), dtype=np.uint8)
    Image.frombytes("CMYK", (13, 9), cmyk.tobytes()).save(tmp_path / "c.tif")
    loaded = load_image(tmp_path / "c.tif")
    assert loaded.source_mode == "CMYK"
    c = cmyk.astype(np.float64)
    expected = (255 - c[..., :3]) * (255 - c[..., 3:]) / 255  # (H, W, 3)
    assert np.abs(np.asarray(loaded.image) - expected).max() <= 1.0


def test_cmyk_jpeg_loads(tmp_path: Path) -> None:
    Image.new("CMYK", (32, 16), (0, 255, 255, 0)).save(tmp_path / "c.jpg", quality=95)  # pure red ink
    loaded = load_image(tmp_path / "c.jpg")
    assert loaded.source_mode == "CMYK" and loaded.format == "JPEG"
    r, g, b = np.asarray(loaded.image).reshape(-1, 3).mean(axis=0)  # (3,) mean colour
    assert r > 240 and g < 15 and b < 15


def _expected_16_to_8(values: np.ndarray) -> np.ndarray:
    """round(v * 255 / 65535) in exact integer arithmetic."""
    v = values.astype(np.int64)
    return ((v * 255 * 2 + 65535) // (2 * 65535)).astype(np.uint8)


@pytest.mark.parametrize(
    ("raw_mode", "ext"), [("I;16", ".png"), ("I;16", ".tif"), ("I;16B", ".tif"), ("I;16", ".pgm")]
)
def test_16_bit_gray_is_scaled_not_clipped(tmp_path: Path, raw_mode: str, ext: str) -> None:
    values = np.random.default_rng(RNG_SEED).integers(0, 65536, size=(7, 11)).astype(np.uint16)
    values[0, :4] = (0, 257, 40000, 65535)
    dtype = "<u2" if raw_mode == "I;16" else ">u2"
    im = Image.frombytes(raw_mode, (11, 7), values.astype(dtype).tobytes())
    path = tmp_path / f"g16{ext}"
    im.save(path)
    loaded = load_image(path)
    assert loaded.source_mode in ("I;16", "I;16B", "I")  # PGM 16-bit opens as "I"
    expected = _expected_16_to_8(values)
    np.testing.assert_array_equal(np.asarray(loaded.image), np.repeat(expected[..., None], 3, axis=2))
    assert list(np.asarray(loaded.image)[0, :4, 0]) == [
        0,
        1,
        156,
        255,
    ]  # 40000 is mid-grey, not clipped white


def test_16_bit_gray_reduced_then_scaled(tmp_path: Path) -> None:
    values = np.random.default_rng(RNG_SEED).integers(0, 65536, size=(20, 30)).astype(np.uint16)  # (H, W)
    Image.frombytes("I;16", (30, 20), values.astype("<u2").tobytes()).save(tmp_path / "g16.png")
    loaded = load_image(tmp_path / "g16.png", max_side=10)  # 20 // 10 = 2
    assert loaded.reduction == 2 and loaded.size == (15, 10)
    block_mean = values.reshape(10, 2, 15, 2).astype(np.float64).mean(axis=(1, 3))  # (10, 15)
    assert np.abs(np.asarray(loaded.image)[..., 0] - block_mean / 257).max() <= 1.0


def test_multi_page_tiff_uses_first_page(tmp_path: Path) -> None:
    first, second = _rgb_array(9, 7, seed=1), _rgb_array(9, 7, seed=2)
    Image.fromarray(first).save(
        tmp_path / "pages.tif", save_all=True, append_images=[Image.fromarray(second)]
    )
    np.testing.assert_array_equal(_pixels(tmp_path / "pages.tif"), first)


def test_32_bit_int_outside_16_bit_range_is_stretched(tmp_path: Path) -> None:
    values = np.array([[-1000, 0], [1000, 100000]], dtype=np.int32)
    Image.fromarray(values).save(tmp_path / "i.tif")
    loaded = load_image(tmp_path / "i.tif")
    assert loaded.source_mode == "I"
    expected = np.rint((values - values.min()) * 255 / (values.max() - values.min())).astype(np.uint8)
    np.testing.assert_array_equal(np.asarray(loaded.image)[..., 0], expected)


def test_float_images(tmp_path: Path) -> None:
    unit = np.array([[0.0, 0.25], [0.5, 1.0]], dtype=np.float32)
    Image.fromarray(unit).save(tmp_path / "unit.tif")
    loaded = load_image(tmp_path / "unit.tif")
    assert loaded.source_mode == "F"
    np.testing.assert_array_equal(np.asarray(loaded.image)[..., 0], [[0, 64], [128, 255]])

    wide = np.array([[-2.0, np.nan], [0.0, 2.0]], dtype=np.float32)  # NaN counts as the minimum
    Image.fromarray(wide).save(tmp_path / "wide.tif")
    np.testing.assert_array_equal(_pixels(tmp_path / "wide.tif")[..., 0], [[0, 0], [128, 255]])


def test_to_rgb_does_not_modify_its_input() -> None:
    im = Image.new("LA", (3, 2), (10, 0))
    before = im.tobytes()
    rgb, composited = to_rgb(im)
    assert composited and rgb.mode == "RGB" and rgb.getpixel((0, 0)) == (255, 255, 255)
    assert im.mode == "LA" and im.tobytes() == before
    plain = Image.new("RGB", (2, 2), (1, 2, 3))
    copy, composited = to_rgb(plain)
    assert copy is not plain and not composited and copy.tobytes() == plain.tobytes()


# ----------------------------------------------------------------------------------------------- orientation


def test_exif_orientation_6_rotates_jpeg(tmp_path: Path) -> None:
    arr = np.zeros((48, 64, 3), dtype=np.uint8)  # stored landscape: left half red, right half blue
    arr[:, :32] = (255, 0, 0)
    arr[:, 32:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rot.jpg"
    Image.fromarray(arr).save(path, exif=exif, quality=95)
    loaded = load_image(path)
    assert loaded.orientation == 6 and loaded.exif_transposed
    assert loaded.original_size == (48, 64) and loaded.size == (48, 64)  # portrait after rotation
    with Image.open(path) as raw:
        oracle = np.asarray(ImageOps.exif_transpose(raw).convert("RGB"))
    np.testing.assert_array_equal(np.asarray(loaded.image), oracle)
    top, bottom = (
        np.asarray(loaded.image)[:24],
        np.asarray(loaded.image)[40:],
    )  # 90 deg clockwise: left -> top
    assert top[..., 0].mean() > 200 and top[..., 2].mean() < 50
    assert bottom[..., 2].mean() > 200 and bottom[..., 0].mean() < 50


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orientation_and_reduction_map_original_coordinates(tmp_path: Path, orientation: int) -> None:
    """A marker found in the upright full-resolution oracle lands where to_decoded says, for all 8 tags."""
    stored = np.zeros((149, 203), dtype=np.uint8)  # (H, W): sizes not multiples of the reduction factor
    stored[20:32, 150:162] = 255  # asymmetric marker position
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / "o.png"
    Image.fromarray(stored).save(path, exif=exif)
    with Image.open(path) as raw:
        upright = np.asarray(ImageOps.exif_transpose(raw))  # (H', W') oracle in original coordinates
    loaded = load_image(path, max_side=49)  # 149 // 49 = 3
    assert loaded.reduction == 3 and loaded.orientation == orientation
    assert loaded.original_size == (upright.shape[1], upright.shape[0])
    assert loaded.size == (math.ceil(upright.shape[1] / 3), math.ceil(upright.shape[0] / 3))
    x, y = _centroid(upright)
    u, v = _centroid(np.asarray(loaded.image)[..., 0])
    eu, ev = loaded.to_decoded(x, y)
    assert abs(eu - u) < 0.05 and abs(ev - v) < 0.05
    back = loaded.to_original(u, v)
    assert abs(back[0] - x) < 0.15 and abs(back[1] - y) < 0.15


# -------------------------------------------------------------------------------------------- reduced decode


@pytest.fixture(scope="module")
def big_jpeg(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, tuple[float, float]]:
    """A 4000x3000 smooth JPEG with a bright 64x64 square; returns the path and the square's centre."""
    small = _rgb_array(40, 30).astype(np.uint8) // 2  # dark random field, upsampled smoothly
    big = np.array(Image.fromarray(small).resize((4000, 3000), Image.Resampling.BILINEAR))  # (3000, 4000, 3)
    big[1000:1064, 2500:2564] = 255
    path = tmp_path_factory.mktemp("jpeg") / "big.jpg"
    Image.fromarray(big).save(path, quality=90)
    return path, (2532.0, 1032.0)


def test_big_jpeg_is_drafted_not_fully_decoded(big_jpeg: tuple[Path, tuple[float, float]]) -> None:
    path, (cx, cy) = big_jpeg
    full = load_image(path)
    assert full.size == (4000, 3000) and full.reduction == 1
    drafted = load_image(path, max_side=512)
    # min(4000, 3000) // 512 = 5: Image.reduce alone would give 800x600; DCT scaling (power of 2) gives 1/4.
    assert drafted.size == (1000, 750)
    assert drafted.reduction == 4 and drafted.scale == 0.25 and drafted.original_size == (4000, 3000)
    assert min(drafted.size) >= 512
    oracle = np.asarray(full.image.reduce(4)).astype(np.int16)  # box average of the full decode
    assert np.abs(np.asarray(drafted.image).astype(np.int16) - oracle).mean() < 3.0
    u, v = drafted.to_decoded(cx, cy)
    window = np.asarray(drafted.image)[240:280, 610:650, 0].astype(np.float64)  # around (632, 258)
    mu, mv = _centroid(np.where(window > 200, window, 0))
    assert abs(610 + mu - u) < 0.5 and abs(240 + mv - v) < 0.5


def test_draft_and_reduce_compose(big_jpeg: tuple[Path, tuple[float, float]]) -> None:
    path, _ = big_jpeg
    loaded = load_image(path, max_side=100)  # draft 1/8 -> 500x375, then reduce by 375 // 100 = 3
    assert loaded.reduction == 24
    assert loaded.size == (math.ceil(4000 / 24), math.ceil(3000 / 24))
    assert min(loaded.size) >= 100


def test_no_reduction_when_image_is_not_twice_as_large(tmp_path: Path) -> None:
    Image.fromarray(_rgb_array(300, 200)).save(tmp_path / "m.png")
    loaded = load_image(tmp_path / "m.png", max_side=101)  # 200 // 101 = 1
    assert loaded.reduction == 1 and loaded.size == (300, 200)
    loaded = load_image(tmp_path / "m.png", max_side=100)  # 200 // 100 = 2
    assert loaded.reduction == 2 and loaded.size == (150, 100)


def test_png_reduce_is_a_box_average(tmp_path: Path) -> None:
    arr = _rgb_array(64, 40)
    Image.fromarray(arr).save(tmp_path / "r.png")
    loaded = load_image(tmp_path / "r.png", max_side=10)  # 40 // 10 = 4
    expected = arr.reshape(10, 4, 16, 4, 3).astype(np.float64).mean(axis=(1, 3))  # (10, 16, 3) block means
    assert loaded.reduction == 4
    assert np.abs(np.asarray(loaded.image) - expected).max() <= 0.5 + 1e-9


# ----------------------------------------------------------------------------------------------------- errors


def _assert_one_line(err: pytest.ExceptionInfo[ImageError], *fragments: str) -> None:
    message = str(err.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ImageError) as err:
        load_image(tmp_path / "nope.jpg")
    assert str(err.value) == f"no such file: {tmp_path / 'nope.jpg'}"


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(ImageError) as err:
        load_image(tmp_path)
    _assert_one_line(err, str(tmp_path), "is a directory")


def test_empty_file(tmp_path: Path) -> None:
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ImageError) as err:
        load_image(tmp_path / "empty.png")
    _assert_one_line(err, "empty file", "empty.png")


def test_random_bytes_with_jpg_extension(tmp_path: Path) -> None:
    (tmp_path / "noise.jpg").write_bytes(np.random.default_rng(RNG_SEED).bytes(4096))
    with pytest.raises(ImageError) as err:
        load_image(tmp_path / "noise.jpg")
    _assert_one_line(err, "not an image", "noise.jpg")


def test_text_file_with_png_extension(tmp_path: Path) -> None:
    (tmp_path / "notes.png").write_text("hello\nworld\n")
    with pytest.raises(ImageError) as err:
        load_image(tmp_path / "notes.png")
    _assert_one_line(err, "not an image", "notes.png")


@pytest.mark.parametrize("ext", [".jpg", ".png"])
@pytest.mark.parametrize("keep", [0.3, 0.6, 0.9])
def test_truncated_files_raise(tmp_path: Path, ext: str, keep: float) -> None:
    path = tmp_path / f"cut{ext}"
    Image.fromarray(_rgb_array(120, 80)).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    with pytest.raises(ImageError) as err:
        load_image(path)
    _assert_one_line(err, "truncated", path.name)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False  # cotviz never flips Pillow's global switch


def test_bomb_refused_by_max_pixels(tmp_path: Path) -> None:
    Image.fromarray(_rgb_array(60, 50)).save(tmp_path / "bomb.png")
    with pytest.raises(ImageError) as err:
        load_image(tmp_path / "bomb.png", max_pixels=2999)
    _assert_one_line(err, "refusing", "60x50 = 3000 pixels", "2999", "decompression bomb")
    assert load_image(tmp_path / "bomb.png", max_pixels=3000).size == (60, 50)


@pytest.mark.parametrize("pillow_limit", [2000, 1000])  # warning zone (> limit) and error zone (> 2 x limit)
def test_pillow_bomb_warning_and_error_become_image_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pillow_limit: int
) -> None:
    Image.fromarray(_rgb_array(60, 50)).save(tmp_path / "bomb.png")  # 3000 pixels
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", pillow_limit)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # the warning must become the error, not a printed warning
        with pytest.raises(ImageError) as err:
            load_image(tmp_path / "bomb.png")
    _assert_one_line(err, "refusing", "decompression-bomb limit", str(pillow_limit))
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]


def test_permission_denied(tmp_path: Path) -> None:
    if os.name != "posix" or os.geteuid() == 0:
        pytest.skip("file permissions do not restrict root (or non-POSIX systems)")
    path = tmp_path / "secret.png"
    Image.fromarray(_rgb_array(4, 4)).save(path)
    path.chmod(0)
    try:
        with pytest.raises(ImageError) as err:
            load_image(path)
    finally:
        path.chmod(0o600)
    _assert_one_line(err, "permission denied", "secret.png")


def test_invalid_arguments(tmp_path: Path) -> None:
    Image.fromarray(_rgb_array(4, 4)).save(tmp_path / "x.png")
    with pytest.raises(InvalidArgumentError):
        load_image(tmp_path / "x.png", max_side=0)
    with pytest.raises(InvalidArgumentError):
        load_image(tmp_path / "x.png", max_pixels=0)
    with pytest.raises(InvalidArgumentError):
        load_image(tmp_path / "x.png", max_decode_bytes=0)


def test_decode_memory_estimate_refuses_before_decoding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "m.png"
    Image.fromarray(_rgb_array(300, 200)).save(path)
    decoded: list[int] = []
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: decoded.append(1))  # must not be reached
    with pytest.raises(ImageError) as err:
        load_image(path, max_decode_bytes=100_000)
    _assert_one_line(err, "refusing", "m.png", "300x200 RGB", "97.7 KiB", "max_decode_bytes")
    assert not decoded
    monkeypatch.undo()
    # the estimate counts the decoded image (4 bytes per pixel + a row pointer) and the RGB result
    needed = 2 * 200 * (300 * 4 + 8) + 4 * 200 * (300 * 4 + 8)  # + a tile (here the whole image) converted
    with pytest.raises(ImageError):
        load_image(path, max_decode_bytes=needed - 1)
    assert load_image(path, max_decode_bytes=needed).size == (300, 200)


def test_one_pixel_wide_strip_counts_its_row_pointers(tmp_path: Path) -> None:
    path = tmp_path / "strip.png"
    Image.new("L", (1, 100_000), 9).save(path)
    # L pixels are 1 byte but every row also costs an 8-byte pointer, in the decoded image and in the result
    tile = 4 * min(images._TILE_PIXELS, 100_000) * (4 + 8)  # a tile of the conversion, 1 px wide
    needed = 100_000 * (1 + 8) + 100_000 * (4 + 8) + tile
    with pytest.raises(ImageError, match="1x100000 L image needs about"):
        load_image(path, max_decode_bytes=needed - 1)
    assert load_image(path, max_decode_bytes=needed).size == (1, 100_000)


# ---------------------------------------------------------------------------------------------- conversion


_MODES = ["1", "L", "LA", "P", "PA", "I;16", "I", "F", "RGB", "RGBA", "CMYK", "YCbCr", "LAB", "HSV"]


def _any_image(mode: str, width: int, height: int, seed: int) -> Image.Image:
    """A random image of ``mode``; P gets a random palette and a transparent index, F/I wide value ranges."""
    rng = np.random.default_rng(seed)
    if mode in ("I", "F"):
        scale = 10.0 ** rng.integers(0, 9)
        values = rng.standard_normal((height, width)) * scale
        im = Image.fromarray(values.astype(np.int32 if mode == "I" else np.float32))
        if mode == "F" and width * height > 2:
            im.putpixel((0, 0), float("nan"))
        return im
    if mode == "I;16":
        return Image.frombytes("I;16", (width, height), rng.integers(0, 65536, width * height).astype("<u2").tobytes())
    bands = len(Image.getmodebands(mode) * "x")
    im = Image.frombytes(mode, (width, height), rng.integers(0, 256, width * height * bands, dtype=np.uint8).tobytes())
    if mode in ("P", "PA"):
        im.putpalette(rng.integers(0, 256, 768, dtype=np.uint8).tobytes())
        if mode == "P":
            im.info["transparency"] = int(rng.integers(0, 256))
    return im


@settings(max_examples=60, deadline=None)
@given(mode=st.sampled_from(_MODES), width=st.integers(1, 40), height=st.integers(1, 40),
       factor=st.integers(1, 5), tile=st.integers(1, 200), seed=st.integers(0, 2**16))
def test_tile_wise_conversion_equals_whole_image(mode: str, width: int, height: int, factor: int, tile: int,
                                                 seed: int) -> None:
    """Converting tile by tile (any tile size, any reduction) gives exactly the whole-image conversion."""
    im = _any_image(mode, width, height, seed)
    work, alpha = images._working_image(im)
    reference = images._finish_rgb(work.reduce(factor) if factor > 1 else work)  # the whole image at once
    old_tile = images._TILE_PIXELS
    images._TILE_PIXELS = tile
    try:
        rgb, has_alpha = images._convert(im, factor)
    finally:
        images._TILE_PIXELS = old_tile
    assert rgb.mode == "RGB" and rgb.size == reference.size and has_alpha == alpha
    np.testing.assert_array_equal(np.asarray(rgb), np.asarray(reference))


@pytest.mark.parametrize("mode", ["L", "P", "I;16"])
@pytest.mark.parametrize("orientation", [3, 6, 7])
def test_small_modes_are_transposed_before_conversion(tmp_path: Path, mode: str, orientation: int) -> None:
    # at full size, 1- and 2-byte images are transposed before the (per-pixel) conversion: same pixels
    im = _any_image(mode, 23, 11, seed=orientation)
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / "o.png"
    im.save(path, exif=exif, transparency=5) if mode == "P" else im.save(path, exif=exif)
    loaded = load_image(path)
    assert loaded.orientation == orientation and loaded.original_size == loaded.size
    with Image.open(path) as raw:
        upright = ImageOps.exif_transpose(raw)
        expected, _ = to_rgb(upright)
    np.testing.assert_array_equal(np.asarray(loaded.image), np.asarray(expected))


def test_premultiplied_and_empty_in_memory_images() -> None:
    rgb, alpha = to_rgb(Image.new("La", (3, 2), (10, 100)))  # premultiplied: grey 10 is 25.5 at alpha 100/255
    assert alpha and rgb.getpixel((0, 0)) == (165, 165, 165)  # 10 + 255 * (1 - 100 / 255)
    with pytest.raises(ImageError, match=r"^cannot convert an image without pixels \(0x4\)$"):
        to_rgb(Image.new("L", (0, 4)))


# ------------------------------------------------------------------------------------------------ warnings


@pytest.mark.parametrize(("fmt", "ext", "mode"), [
    ("PNG", ".png", "RGBA"), ("JPEG", ".jpg", "RGB"), ("TIFF", ".tif", "I;16"), ("GIF", ".gif", "P"),
    ("BMP", ".bmp", "RGB"), ("WEBP", ".webp", "RGB"),
])
def test_ordinary_files_issue_no_warnings(tmp_path: Path, fmt: str, ext: str, mode: str) -> None:
    if fmt == "WEBP" and not features.check("webp"):
        pytest.skip("Pillow built without WebP support")
    path = tmp_path / f"plain{ext}"
    exif = Image.Exif()
    exif[0x0112] = 6
    exif[0x010F] = "camera"  # Make
    kwargs = {"exif": exif} if fmt in ("PNG", "JPEG", "WEBP", "TIFF") else {}
    _any_image(mode, 40, 30, seed=3).save(path, format=fmt, **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning fails the test
        load_image(path, max_side=8)


def _corrupt_exif() -> bytes:
    """EXIF with a valid orientation (6) and an ImageDescription whose 64 bytes lie past the end of the block."""
    entries = struct.pack("<HHII", 0x0112, 3, 1, 6) + struct.pack("<HHII", 0x010E, 2, 64, 200)
    return b"Exif\x00\x00II*\x00" + struct.pack("<IH", 8, 2) + entries + struct.pack("<I", 0)


def test_warnings_not_from_pillow_pass_unchanged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # only Pillow's warnings are summarised; anything else (a cotviz bug) must stay visible as it is
    path = tmp_path / "plain.png"
    Image.fromarray(_rgb_array(8, 6)).save(path)
    convert = images._convert

    def noisy(im: Image.Image, factor: int) -> tuple[Image.Image, bool]:
        warnings.warn("something in cotviz", RuntimeWarning, stacklevel=1)
        return convert(im, factor)

    monkeypatch.setattr(images, "_convert", noisy)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_image(path)
    assert [(w.category, str(w.message)) for w in caught] == [(RuntimeWarning, "something in cotviz")]


@pytest.mark.parametrize("ext", [".jpg", ".png"])
def test_corrupt_exif_is_one_clear_warning(tmp_path: Path, ext: str) -> None:
    path = tmp_path / f"bad exif{ext}"
    Image.fromarray(_rgb_array(8, 6)).save(path, exif=_corrupt_exif())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = load_image(path)
    assert [w.category for w in caught] == [ImageWarning]
    text = str(caught[0].message)
    assert "\n" not in text and text.startswith(f"{path}: damaged metadata ignored (Pillow: ")
    assert "the pixels decoded normally" in text
    assert caught[0].filename == __file__  # points at the caller, not at Pillow's internals
    assert loaded.orientation == 6 and loaded.size == (6, 8)  # the readable part of the EXIF still applies


# ------------------------------------------------------------------------------------------------ expansion


def _touch_image(path: Path) -> Path:
    Image.new("RGB", (2, 2)).save(path, format="PNG")
    return path


def test_expand_directory_lists_images_sorted_non_recursive(tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    for name in ("b.png", "a.PNG", "c.jpeg", ".hidden.png", "sub/d.png"):
        _touch_image(folder / name)
    (folder / "notes.txt").write_text("x")
    paths, problems = expand_inputs([folder])
    assert problems == []
    assert [p.name for p in paths] == ["a.PNG", "b.png", "c.jpeg"]


def test_expand_glob_missing_and_order(tmp_path: Path) -> None:
    for name in ("x2.png", "x1.png", "y.png"):
        _touch_image(tmp_path / name)
    (tmp_path / "x3.txt").write_text("not an image")
    explicit = tmp_path / "y.png"
    result = expand_inputs(
        [explicit, str(tmp_path / "x*"), str(tmp_path / "missing.jpg"), str(tmp_path / "z*.png")]
    )
    assert [p.name for p in result.paths] == ["y.png", "x1.png", "x2.png"]  # entry order, then sorted matches
    assert [problem.item for problem in result.problems] == [
        str(tmp_path / "missing.jpg"),
        str(tmp_path / "z*.png"),
    ]
    assert result.problems[0].message == f"no such file: {tmp_path / 'missing.jpg'}"
    assert "no image files match" in result.problems[1].message
    assert isinstance(result.problems[0].to_error(), ImageError)


def test_expand_deduplicates_and_keeps_named_non_image_files(tmp_path: Path) -> None:
    a = _touch_image(tmp_path / "a.png")
    (tmp_path / "data.bin").write_bytes(b"\x00")
    paths, problems = expand_inputs([a, tmp_path, str(tmp_path / "*.png"), tmp_path / "data.bin"])
    assert problems == []
    assert paths == [a, tmp_path / "data.bin"]  # a.png once; the named file is kept for load_image to judge


def test_expand_empty_directory_is_a_problem(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    paths, problems = expand_inputs([tmp_path / "empty"])
    assert paths == [] and len(problems) == 1 and "no image files in directory" in problems[0].message


def test_image_extensions_cover_common_formats() -> None:
    extensions = image_extensions()
    assert {".jpg", ".jpeg", ".png", ".gif", ".bmp", ".tif", ".tiff", ".ppm"} <= extensions
    assert ".pdf" not in extensions  # Pillow writes PDF but cannot read it
