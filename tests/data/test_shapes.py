"""cotviz.data.ShapesDataset: determinism per seed, exact masks, balance, preprocessing, workers, PNG folders."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from cotviz.data import CLASS_NAMES, ShapesDataset, render
from cotviz.data.shapes import _shape_mask
from cotviz.errors import InvalidArgumentError
from cotviz.io import PreprocessConfig, load_image, preprocess
from cotviz.models import model_entry


def test_same_seed_same_items_other_seed_other_items() -> None:
    a, b, c = ShapesDataset(6, seed=3, size=64), ShapesDataset(6, seed=3, size=64), ShapesDataset(6, seed=4, size=64)
    for i in range(6):
        xa, la, ma = a[i]
        xb, lb, mb = b[i]
        assert torch.equal(xa, xb) and la == lb and torch.equal(ma, mb)
    assert not torch.equal(a[0][0], c[0][0])
    assert list(a.labels) != list(c.labels) or not torch.equal(a[1][2], c[1][2])


def test_item_is_independent_of_access_order_and_dataset_length() -> None:
    short, long = ShapesDataset(12, seed=5, size=48), ShapesDataset(12, seed=5, size=48)
    late = long[11]
    assert torch.equal(short[11][0], late[0])
    s1, s2 = render(5, 7, 48, label=2), render(5, 7, 48, label=2)
    assert np.array_equal(s1.image, s2.image) and np.array_equal(s1.mask, s2.mask)


def test_items_types_and_shapes() -> None:
    ds = ShapesDataset(3, seed=0, size=64)
    x, label, mask = ds[0]
    assert x.dtype == torch.float32 and x.shape == (3, 64, 64)
    assert isinstance(label, int) and 0 <= label < len(CLASS_NAMES)
    assert mask.dtype == torch.bool and mask.shape == (64, 64) and 0 < int(mask.sum()) < 64 * 64
    assert ds.class_names == CLASS_NAMES and ds[-1][1] == ds[2][1]
    with pytest.raises(IndexError):
        ds[3]


@pytest.mark.parametrize("label", range(len(CLASS_NAMES)))
def test_mask_is_exactly_the_object_pixels(label: int) -> None:
    """Repainting the mask's pixels changes exactly those pixels: the image outside the mask is the background
    and distractors alone, inside it the object's colour field (the mask is the drawn shape, not an estimate)."""
    s = render(11, label, 96, label=label)
    mask = _shape_mask(label, 96, s.center[0], s.center[1], s.radius, s.angle)
    assert np.array_equal(mask, s.mask)
    without = render(11, label, 96, label=label, with_object=False)
    changed = (without.image != s.image).any(axis=-1)  # (S, S): pixels the object painted
    assert np.array_equal(without.mask, s.mask)
    assert not changed[~s.mask].any()  # nothing outside the mask was drawn
    assert changed[s.mask].mean() > 0.99  # and the object differs from what it covers (contrast >= 0.25)
    inside = s.image[s.mask].astype(float)
    # the object is a shaded single colour: its pixels vary smoothly (<= 21% shading) around one colour
    assert np.ptp(inside / np.maximum(inside.mean(axis=0), 1), axis=0).max() < 0.5
    # the object fully inside the frame
    ys, xs = np.nonzero(s.mask)
    assert ys.min() > 0 and xs.min() > 0 and ys.max() < 95 and xs.max() < 95


def test_mask_shapes_differ_in_outline() -> None:
    """Same pose, different class: different masks (each class its own outline), areas in a plausible order."""
    masks = [_shape_mask(k, 128, 64, 64, 40, 0.3) for k in range(len(CLASS_NAMES))]
    areas = {CLASS_NAMES[k]: int(m.sum()) for k, m in enumerate(masks)}
    assert len({m.tobytes() for m in masks}) == len(CLASS_NAMES)
    assert areas["circle"] == pytest.approx(np.pi * 40**2, rel=0.03)
    assert areas["square"] == pytest.approx(2 * 40**2, rel=0.04)  # corners at the radius: side 40*sqrt(2)
    assert areas["triangle"] == pytest.approx(3 * np.sqrt(3) / 4 * 40**2, rel=0.05)
    assert areas["star"] == pytest.approx(10 * 0.5 * 0.42 * np.sin(np.pi / 5) * 40**2, rel=0.06)
    d, r1, r2 = 0.45, 1.0, 0.8  # crescent: unit disk minus the disk (0.45, 0.8); lens area by the circle formula
    lens = (r1**2 * np.arccos((d**2 + r1**2 - r2**2) / (2 * d * r1)) + r2**2 * np.arccos((d**2 + r2**2 - r1**2)
            / (2 * d * r2)) - 0.5 * np.sqrt((-d + r1 + r2) * (d + r1 - r2) * (d - r1 + r2) * (d + r1 + r2)))
    assert areas["crescent"] == pytest.approx((np.pi - lens) * 40**2, rel=0.06)


def test_classes_exactly_balanced() -> None:
    ds = ShapesDataset(601, seed=2, size=32)
    counts = np.bincount(ds.labels, minlength=len(CLASS_NAMES))
    assert counts.max() - counts.min() <= 1 and counts.sum() == 601
    assert np.array_equal(ds.labels, ShapesDataset(601, seed=2, size=32).labels)
    assert [ds[i][1] for i in range(12)] == list(ds.labels[:12])


def test_dataloader_with_workers_gives_the_same_batches() -> None:
    ds = ShapesDataset(8, seed=9, size=32)
    serial = list(DataLoader(ds, batch_size=4))
    parallel = list(DataLoader(ds, batch_size=4, num_workers=2))
    for (x0, y0, m0), (x1, y1, m1) in zip(serial, parallel, strict=True):
        assert torch.equal(x0, x1) and torch.equal(y0, y1) and torch.equal(m0, m1)


def test_written_png_preprocesses_to_the_dataset_tensor(tmp_path) -> None:
    """The demo cfg reads a written PNG back into exactly the tensor the dataset yields (no resize, no crop)."""
    ds = ShapesDataset(2, seed=1, size=model_entry("cotnet_demo").pretrained_cfg.image_size)
    paths = ds.write_folder(tmp_path)
    assert [p.name for p in paths] == [f"0000{i}_{CLASS_NAMES[ds.labels[i]]}.png" for i in range(2)]
    cfg = PreprocessConfig.from_pretrained_cfg(model_entry("cotnet_demo").pretrained_cfg.to_dict())
    for i, path in enumerate(paths):
        x, label, mask = ds[i]
        pre = preprocess(load_image(path), cfg)
        torch.testing.assert_close(pre.tensor, x, rtol=0, atol=1e-6)
        written = np.asarray(Image.open(path.with_suffix(".mask.png"))) > 127
        assert np.array_equal(written, mask.numpy())


def test_demo_model_matches_dataset() -> None:
    entry = model_entry("cotnet_demo")
    assert entry.pretrained_cfg.num_classes == len(CLASS_NAMES)
    assert entry.pretrained_cfg.crop_pct == 1.0 and ShapesDataset(1, seed=0).size == 128  # the default


@pytest.mark.parametrize("kwargs, message", [
    (dict(length=-1, seed=0), "length must be an integer"),
    (dict(length=2, seed=0, size=8), "size must be an integer from 16"),
    (dict(length=2, seed=0, num_classes=1), "num_classes must be an integer from 2"),
    (dict(length=2, seed=1.5), "seed must be an integer"),
])
def test_bad_arguments(kwargs, message) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        ShapesDataset(**kwargs)
