"""Every kind of image ``cotviz.explain`` accepts (path, PIL image, uint8 array, preprocessed tensor), what each
records about its origin, and one clear error for everything else."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from cotviz.errors import CotvizError, ImageError, InvalidArgumentError
from cotviz.explain import Explanation, InputInfo, explain, preprocess_config
from cotviz.explain.inputs import prepare

SIZE = {"size": 64}


def run(model: nn.Module, image: Any, **kwargs: Any) -> Explanation:
    return explain(model, image, **{"stage": 2, "preprocess": SIZE, **kwargs})


@pytest.fixture(scope="module")
def by_path(tiny: nn.Module, images: dict[str, Path]) -> Explanation:
    return run(tiny, images["a"], point=(100, 50))


def test_a_path(by_path: Explanation, images: dict[str, Path]) -> None:
    ex = by_path
    assert ex.source == str(images["a"]) and ex.ok and ex.original_size == (150, 100)
    # 150 x 100 -> shorter side floor(64 / 0.875) = 73, 109 x 73, centre crop at round(22.5) = 22, round(4.5) = 4
    assert ex.crop_box == pytest.approx((22 * 150 / 109, 4 * 100 / 73, 86 * 150 / 109, 68 * 100 / 73))
    assert ex.image is not None and ex.image.shape == (64, 64, 3) and ex.image.dtype == np.uint8
    assert ex.metadata is not None
    assert ex.metadata.input == InputInfo(str(images["a"]), (150, 100), "PNG", "RGB", 1, 1)
    assert ex.metadata.preprocessing is not None and ex.metadata.preprocessing.input_size == 64
    assert ex.point is not None and ex.point.xy == (100, 50)
    js = ex.to_json()
    assert js["input"] == {"path": str(images["a"]), "original_size": (150, 100), "format": "PNG", "mode": "RGB",
                           "exif_orientation": 1, "decode_reduction": 1}
    assert ex.crop_box is not None and js["preprocessing"]["input_size"] == 64 and js["crop_box"] == list(ex.crop_box)


def test_a_pil_image_and_an_array_give_the_maps_of_the_file(tiny: nn.Module, images: dict[str, Path],
                                                            by_path: Explanation,
                                                            assert_same_maps: Callable[..., None]) -> None:
    pil = Image.open(images["a"])
    ex = run(tiny, pil, point=(100, 50))
    assert ex.source == "<PIL.Image>" and ex.crop_box == pytest.approx(by_path.crop_box)
    assert ex.original_size == (150, 100)
    assert ex.metadata is not None and ex.metadata.input == InputInfo(None, (150, 100), "PNG", "RGB", None, None)
    assert_same_maps(ex, by_path, rtol=0, atol=0)
    assert ex.point is not None and by_path.point is not None and ex.point.cells == by_path.point.cells
    array = np.asarray(pil.convert("RGB")).copy()
    before = array.copy()
    ex = run(tiny, array)
    assert ex.source == "<array>" and ex.crop_box == pytest.approx(by_path.crop_box)
    assert ex.metadata is not None and ex.metadata.input == InputInfo(None, (150, 100), None, "RGB", None, None)
    assert_same_maps(ex, by_path, rtol=0, atol=0)
    np.testing.assert_array_equal(array, before)  # inputs are never modified


@pytest.mark.parametrize("mode", ["L", "P", "RGBA"])
def test_a_non_rgb_pil_image_is_converted_like_a_file(tiny: nn.Module, images: dict[str, Path], mode: str,
                                                      assert_same_maps: Callable[..., None]) -> None:
    """Grey replicated to three channels, a palette looked up, alpha composited over white -- as load_image does."""
    rgb = Image.open(images["c"]).convert("RGB")
    img = rgb.convert(mode)
    if mode == "RGBA":
        alpha = np.zeros((img.height, img.width), dtype=np.uint8)
        alpha[:, img.width // 2:] = 255  # left half transparent
        img.putalpha(Image.fromarray(alpha))
    ex = run(tiny, img)
    assert ex.metadata is not None and ex.metadata.input is not None and ex.metadata.input.mode == mode
    assert ex.to_json()["input"]["mode"] == mode
    expected = np.asarray(img.convert("RGB")).copy()
    if mode == "RGBA":
        expected[:, : img.width // 2] = 255  # white
    assert_same_maps(ex, run(tiny, expected), rtol=0, atol=0)
    assert img.mode == mode  # not converted in place


@pytest.mark.parametrize("batch_axis", [False, True])
def test_a_preprocessed_tensor_has_no_original_image(tiny: nn.Module, images: dict[str, Path],
                                                     by_path: Explanation, batch_axis: bool,
                                                     assert_same_maps: Callable[..., None]) -> None:
    cfg = preprocess_config(tiny, size=64)
    x = prepare(images["a"], cfg).tensor  # (3, 64, 64): exactly what the file became
    x = x[None] if batch_axis else x
    before = x.clone()
    ex = run(tiny, x, point=(40, 10))  # model-input pixels
    assert torch.equal(x, before)
    assert ex.source == "<tensor>" and ex.crop_box is None and ex.original_size is None
    assert ex.metadata is not None and ex.metadata.input is None and ex.metadata.preprocessing is None
    assert_same_maps(ex, by_path, rtol=0, atol=0)
    # what the model saw: the tensor un-normalised with the model's mean/std
    assert ex.image is not None and by_path.image is not None
    assert np.abs(ex.image.astype(int) - by_path.image.astype(int)).max() <= 1
    assert ex.point is not None and ex.point.xy == (40, 10) and ex.point.uv == (40.5, 10.5)
    assert ex.point.cells == {"stage2.block1": (10 // 8, 40 // 8)}
    js = ex.to_json()
    assert js["input"] is None and js["preprocessing"] is None and js["crop_box"] is None
    assert js["point"]["xy_original"] == (40, 10)
    assert ex.default_base() == "image_cotnet50_stage2"


@pytest.mark.parametrize(("image", "error", "message"), [
    ([1, 2, 3], ImageError, "cannot explain a list: pass a path, a PIL.Image, an (H, W, 3) uint8 array or a "
                            "preprocessed (3, S, S) tensor"),
    (None, ImageError, "cannot explain a NoneType: pass a path"),
    (b"\x89PNG", ImageError, "cannot explain a bytes: pass a path"),
    (np.zeros((64, 64), np.uint8), ImageError, "an array image must be (H, W, 3) uint8 RGB, got (64, 64) uint8"),
    (np.zeros((64, 64, 4), np.uint8), ImageError, "an array image must be (H, W, 3) uint8 RGB, got (64, 64, 4) uint8"),
    (np.zeros((64, 64, 3), np.float32), ImageError, "an array image must be (H, W, 3) uint8 RGB, got (64, 64, 3) "
                                                    "float32"),
    (torch.zeros(3, 64, 48), InvalidArgumentError, "a tensor image must be a preprocessed float (3, S, S) or "
                                                   "(1, 3, S, S) tensor, got (3, 64, 48) torch.float32"),
    (torch.zeros(2, 3, 64, 64), InvalidArgumentError, "got (2, 3, 64, 64) torch.float32"),
    (torch.zeros(64, 64, 3), InvalidArgumentError, "got (64, 64, 3) torch.float32"),
    (torch.zeros(3, 64, 64, dtype=torch.uint8), InvalidArgumentError, "got (3, 64, 64) torch.uint8"),
    (torch.zeros(3, 16, 16), InvalidArgumentError, "a tensor image must be at least 32 x 32 (the network's total "
                                                   "stride), got 16 x 16"),
])
def test_bad_kinds_and_shapes_give_one_clear_error(tiny: nn.Module, image: Any, error: type[CotvizError],
                                                   message: str) -> None:
    with pytest.raises(error, match=re.escape(message)) as info:
        run(tiny, image)
    assert "\n" not in str(info.value)


def test_files_that_cannot_be_read(tiny: nn.Module, images: dict[str, Path]) -> None:
    for name, message in (("broken", "truncated"), ("notes", "not an image"), ("bomb", "decompression"),
                          ("empty", "directory")):
        with pytest.raises(ImageError, match=message):
            run(tiny, images[name])
    with pytest.raises(ImageError, match="no such file"):
        run(tiny, images["dir"] / "missing.png")


@pytest.mark.parametrize(("point", "message"), [
    ((150, 10), "--point 150,10 lies outside a.png (150x100 px: x in 0..149, y in 0..99)"),
    ((10, 100), "--point 10,100 lies outside a.png (150x100 px: x in 0..149, y in 0..99)"),
    ((5, 50), "--point 5,50 lies outside the centre crop the model saw in a.png (box 30.3, 5.5, 118.3, 93.2); pick a "
              "point inside it or use --no-crop"),
])
def test_a_point_outside_the_image_or_the_crop(tiny: nn.Module, images: dict[str, Path], point: tuple[int, int],
                                               message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=f"^{re.escape(message)}$"):
        run(tiny, images["a"], point=point)


def test_without_the_crop_the_model_sees_the_whole_image(tiny: nn.Module, images: dict[str, Path]) -> None:
    ex = run(tiny, images["a"], point=(5, 50), preprocess={"size": 64, "no_crop": True})
    assert ex.crop_box == (0.0, 0.0, 150.0, 100.0)
    assert ex.point is not None and ex.point.uv == pytest.approx((5.5 * 64 / 150, 50.5 * 64 / 100))


def test_a_point_outside_a_tensor_image(tiny: nn.Module) -> None:
    with pytest.raises(InvalidArgumentError, match=re.escape(
            "--point 64,3 lies outside the 64x64 model input (a tensor image has no original image: the point is "
            "in model-input pixels)")):
        run(tiny, torch.zeros(3, 64, 64), point=(64, 3))
