"""``cotviz.explain_many``: inputs expanded like the CLI, bad files as results (never raised), input order kept,
batch boundaries invisible in the numbers, and nothing kept between batches."""

from __future__ import annotations

import gc
import tracemalloc
import weakref
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from cotviz.analysis.maps import MAPS
from cotviz.explain import Explanation, explain, explain_many

SIZE = {"size": 64}


def many(model: nn.Module, images: object, **kwargs: object) -> list[Explanation]:
    return list(explain_many(model, images, **{"stage": 2, "preprocess": SIZE, **kwargs}))  # type: ignore[arg-type]


def test_directories_globs_and_paths_are_expanded_like_the_cli(tiny: nn.Module, images: dict[str, Path]) -> None:
    photos = images["photos"]
    assert [ex.source for ex in many(tiny, photos)] == [str(photos / n) for n in ("a.png", "b.jpg", "c.png", "d.png")]
    assert [ex.source for ex in many(tiny, str(photos / "*.png"))] == [str(photos / n) for n in ("a.png", "c.png",
                                                                                                 "d.png")]
    out = many(tiny, [images["d"], str(photos / "[ab].*")], batch_size=3)
    assert [ex.source for ex in out] == [str(images["d"]), str(photos / "a.png"), str(photos / "b.jpg")]
    assert all(ex.ok and ex.prediction is not None for ex in out)


def test_a_bad_input_yields_an_explanation_with_an_error_and_the_rest_still_come_out_in_order(
        tiny: nn.Module, images: dict[str, Path]) -> None:
    missing = images["dir"] / "missing.png"
    pattern = str(images["dir"] / "nothing-*.png")
    inputs = [images["a"], images["broken"], images["notes"], missing, pattern, images["empty"],
              np.zeros((8, 8), np.uint8), images["b"]]
    out = many(tiny, inputs, batch_size=2)
    assert [ex.source for ex in out] == [str(images["a"]), str(images["broken"]), str(images["notes"]), str(missing),
                                         pattern, str(images["empty"]), "<array>", str(images["b"])]
    assert [ex.ok for ex in out] == [True, False, False, False, False, False, False, True]
    errors = [ex.error or "" for ex in out if not ex.ok]
    assert "truncated" in errors[0] and "not an image" in errors[1]
    assert errors[2] == f"no such file: {missing}" and errors[3] == f"no image files match the pattern: {pattern}"
    assert errors[4] == f"no image files in directory: {images['empty']}"
    assert errors[5] == "an array image must be (H, W, 3) uint8 RGB, got (8, 8) uint8"
    bad = out[1]
    assert bad.maps == {} and bad.metadata is None and bad.prediction is None and bad.image is None
    assert repr(bad) == f"Explanation(source={str(images['broken'])!r}, error={bad.error!r})"
    with pytest.raises(ValueError, match="was not explained"):
        bad.to_json()
    with pytest.raises(ValueError, match="was not explained"):
        bad.arrays()
    # the bad file in the middle of a batch changes nothing for the good ones
    np.testing.assert_array_equal(out[7].maps["stage2.block1"]["static_energy"],
                                  many(tiny, [images["b"]])[0].maps["stage2.block1"]["static_energy"])


def test_a_point_outside_one_image_is_that_images_error(tiny: nn.Module, images: dict[str, Path]) -> None:
    out = many(tiny, [images["a"], images["c"]], point=(100, 110))  # a.png is 150 x 100, c.png 150 x 125
    assert out[0].error == "--point 100,110 lies outside a.png (150x100 px: x in 0..149, y in 0..99)"
    assert out[1].ok and out[1].point is not None and out[1].point.xy == (100, 110)


def test_mixed_kinds_in_one_batch(tiny: nn.Module, images: dict[str, Path],
                                  assert_same_maps: Callable[..., None]) -> None:
    pil = Image.open(images["c"])
    out = many(tiny, [pil, np.asarray(pil.convert("RGB")), images["c"]], batch_size=3)
    assert [ex.source for ex in out] == ["<PIL.Image>", "<array>", str(images["c"])]
    assert_same_maps(out[0], out[2])
    assert_same_maps(out[1], out[2])


REQUEST: dict[str, object] = dict(stage=1, maps=list(MAPS), point=(60, 40), gradcam=True)


@pytest.fixture(scope="module")
def one_by_one(tiny: nn.Module, images: dict[str, Path]) -> list[Explanation]:
    return [explain(tiny, images[k], preprocess=SIZE, **REQUEST) for k in "abcd"]  # type: ignore[arg-type]


@pytest.mark.parametrize("batch_size", [1, 2, 3])
def test_batch_boundaries_give_the_maps_of_one_image_at_a_time(tiny: nn.Module, images: dict[str, Path],
                                                               batch_size: int, one_by_one: list[Explanation],
                                                               assert_same_maps: Callable[..., None]) -> None:
    paths = [images[k] for k in "abcd"]
    one = one_by_one
    out = list(explain_many(tiny, paths, batch_size=batch_size, preprocess=SIZE, **REQUEST))
    assert [ex.source for ex in out] == [str(p) for p in paths]
    for a, b in zip(one, out, strict=True):
        assert_same_maps(a, b)  # float32 rounding: a batch may take another convolution path
        assert a.kernels is not None and b.kernels is not None and a.rollout is not None and b.rollout is not None
        np.testing.assert_allclose(a.kernels["stage1.block1"], b.kernels["stage1.block1"], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(a.rollout.values, b.rollout.values, rtol=1e-5, atol=1e-7)
        assert a.gradcam is not None and b.gradcam is not None and a.gradcam.target == b.gradcam.target
        np.testing.assert_allclose(a.gradcam.cam, b.gradcam.cam, rtol=1e-4, atol=1e-6)
        assert a.prediction is not None and b.prediction is not None and a.prediction.top == b.prediction.top
        assert a.crop_box == b.crop_box


def _arrays(n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for _ in range(n)]


def test_nothing_is_kept_between_batches(tiny: nn.Module) -> None:
    """Once the stream has moved past a batch, the explanations of that batch are freed as soon as the caller
    drops them (no reference cycle, no list kept): the generator holds at most the batch it is yielding."""
    refs: list[weakref.ref] = []
    for i, ex in enumerate(explain_many(tiny, _arrays(7), batch_size=2, stage=1, maps=["static_energy"],
                                               preprocess=SIZE)):
        refs.append(weakref.ref(ex))
        refs.append(weakref.ref(ex.image))  # type: ignore[arg-type]
        del ex
        done = 2 * (i // 2) * 2  # refs of the images of the batches before this one (two refs per image)
        assert [r() for r in refs[:done]] == [None] * done, i
    gc.collect()
    assert all(r() is None for r in refs)


def test_memory_is_flat_in_the_number_of_images(tiny: nn.Module) -> None:
    """Peak traced (Python + numpy) memory of 12 images is that of 3 (batch size 2): keeping the results would add
    at least the 9 extra (64, 64, 3) input arrays."""
    arrays = _arrays(12)

    def peak(n: int) -> int:
        gc.collect()
        tracemalloc.start()
        try:
            for _ in explain_many(tiny, arrays[:n], batch_size=2, stage=1, maps=["static_energy"],
                                         preprocess=SIZE):
                pass
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    peak(2)  # first-use caches
    small, large = peak(3), peak(12)
    image = 64 * 64 * 3
    assert large - small < 4 * image, (small, large)


def test_one_image_is_not_mistaken_for_a_sequence(tiny: nn.Module, images: dict[str, Path]) -> None:
    """A single path, PIL image, array or tensor is one input (a string or an array is not iterated)."""
    x = torch.zeros(3, 64, 64)
    for image in (str(images["a"]), images["a"], Image.open(images["a"]), np.zeros((40, 40, 3), np.uint8), x):
        (ex,) = many(tiny, image)
        assert ex.ok, ex.error


def test_plain_files_are_listed_without_pillows_extension_table(images: dict[str, Path],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Files named directly are taken as they are (first of several entries for one file kept); only a
    directory or a pattern needs the extension table (which imports every Pillow plugin)."""
    import cotviz.io.images as io_images
    from cotviz.io import expand_inputs

    photos = images["photos"]
    entries = [str(photos / "a.png"), str(photos / "b.jpg"), str(photos / "." / "a.png"), str(images["notes"])]
    expected = expand_inputs(entries)
    built: list[int] = []
    table = io_images.image_extensions

    def counted() -> frozenset[str]:
        built.append(1)
        return table()

    monkeypatch.setattr(io_images, "image_extensions", counted)
    paths, problems = expand_inputs(entries)
    assert (paths, problems) == (expected.paths, expected.problems) and not built
    assert list(paths) == [photos / "a.png", photos / "b.jpg", images["notes"]] and not problems
    mixed = [str(photos), str(images["dir"] / "missing.png"), str(photos / "*.jpg")]
    paths, problems = expand_inputs(mixed)
    assert len(built) == 1  # one table for the directory and the pattern
    assert photos / "a.png" in paths and [p.item for p in problems] == [mixed[1]]
