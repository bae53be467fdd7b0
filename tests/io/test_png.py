"""cotviz.io.png: any PNG reader gives back exactly the pixels written, with the dpi recorded."""

from __future__ import annotations

import io
import zlib

import numpy as np
import pytest
from PIL import Image

from cotviz.io.png import encode_png


@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (5, 1), (33, 47)])
def test_round_trip_is_exact_for_any_bytes(shape: tuple[int, int]) -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (*shape, 3), dtype=np.uint8)  # every wrap-around of the filter
    data = encode_png(rgb, dpi=150)
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        assert im.mode == "RGB" and im.size == (shape[1], shape[0])
        np.testing.assert_array_equal(np.asarray(im), rgb)
        assert im.info["dpi"] == pytest.approx((150, 150), abs=0.02)  # whole pixels per metre, as Pillow writes


def test_a_strided_view_of_rgba_is_written_as_its_rgb() -> None:
    rgba = np.random.default_rng(1).integers(0, 256, (20, 30, 4), dtype=np.uint8)
    with Image.open(io.BytesIO(encode_png(rgba[..., :3]))) as im:
        np.testing.assert_array_equal(np.asarray(im), rgba[..., :3])
        assert "dpi" not in im.info


def test_every_row_uses_the_up_filter_and_flat_colour_compresses_to_little() -> None:
    flat = np.full((200, 300, 3), 17, dtype=np.uint8)
    data = encode_png(flat)
    assert len(data) < 2000  # 180 kB of pixels: zero runs after the first row
    idat = data[data.index(b"IDAT") + 4:data.index(b"IEND") - 8]
    rows = np.frombuffer(zlib.decompress(idat), dtype=np.uint8).reshape(200, 1 + 900)
    assert (rows[:, 0] == 2).all() and (rows[1:, 1:] == 0).all()


@pytest.mark.parametrize("bad", [np.zeros((4, 4), np.uint8), np.zeros((4, 4, 4), np.uint8),
                                 np.zeros((4, 4, 3), np.float32), np.zeros((0, 4, 3), np.uint8)])
def test_anything_but_rgb_uint8_is_refused(bad: np.ndarray) -> None:
    with pytest.raises(ValueError, match="uint8"):
        encode_png(bad)
