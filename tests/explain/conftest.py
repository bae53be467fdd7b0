"""Fixtures for the library tests of :mod:`cotviz.explain`: tiny networks, hand-set networks and small images.

Networks are built once per session and never modified by a test (a test that needs other weights builds its
own copy). The tiny network has one block per stage, 16 base channels and 10 classes: a forward at 64 x 64 takes
milliseconds, so the library can be tested without full-size models.
"""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from cotviz.models import create_model

REPO = Path(__file__).resolve().parents[2]
COFFEE = REPO / "examples" / "coffee.png"

#: The tiny network: cotnet50's layout with one block per stage (stage 1: 16 channels, 2 heads).
TINY_ARGS: dict[str, object] = dict(layers=[1, 1, 1, 1], base_width=16, num_classes=10)

#: Landscape test image (W, H) with a bright patch in the part the centre crop keeps and a dimmer decoy in the
#: left strip that the crop removes.
W, H = 192, 128
PATCH = (120, 10, 148, 38)  # (x0, y0, x1, y1), value 255
DECOY = (0, 0, 30, 30)  # value 160


def tiny_model(**overrides: object) -> nn.Module:
    """A fresh tiny network (seed 0, eval mode)."""
    return create_model("cotnet50", seed=0, **{**TINY_ARGS, **overrides})  # type: ignore[arg-type]


def identity_bn(sd: dict[str, torch.Tensor], prefix: str, bias: float = 0.0) -> None:
    """Make the BatchNorm ``prefix`` of state dict ``sd`` the identity in eval mode (plus ``bias``).

    ``running_var = 1 - eps`` so that ``sqrt(var + eps) = 1`` up to rounding.
    """
    sd[f"{prefix}.weight"].fill_(1.0)
    sd[f"{prefix}.bias"].fill_(bias)
    sd[f"{prefix}.running_mean"].zero_()
    sd[f"{prefix}.running_var"].fill_(1.0 - 1e-5)


#: The attention of the constant network's stage1.block1, head 1 (head 0 is all zeros): window positions
#: k = kh * 3 + kw; top-right (k = 2) 2, centre (k = 4) 1.
HEAD1 = (0.0, 0.0, 2.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0)
BETA = 0.5  # the stage input, in every channel and cell


def constant_network() -> nn.Module:
    """The tiny network with stage1.block1 set by hand, so every map of that block is known in closed form.

    * stem: conv weights 0, BN bias ``BETA``: the stage input is ``BETA`` in all 64 channels and every cell,
      whatever the image;
    * block conv1 (64 -> 16): the channel mean; its BN the identity: the CoT layer sees x = ``BETA``;
    * static context K1: the grouped 3 x 3 conv is the mean over its 4 in-channels and the window, BN the
      identity, so K1(p) = ``BETA`` * n(p) / 9 with n(p) the window positions inside the grid (zero padding);
    * attention: the last 1x1 conv of ``embed`` is 0, so GroupNorm returns its bias: A is constant over
      space, head 0 all zeros, head 1 = :data:`HEAD1`;
    * values V = the channel mean (``BETA``), BN the identity; K2 = SiLU(sum_k A_k V(p + offset_k));
    * fusion: the ``se`` output is 0, so both branches get weight 1/2: Y = (K1 + K2) / 2.
    """
    model = tiny_model()
    sd = model.state_dict()
    sd["conv1.weight"].zero_()
    identity_bn(sd, "bn1", bias=BETA)
    p = "layer1.0"
    sd[f"{p}.conv1.weight"].fill_(1.0 / 64)
    identity_bn(sd, f"{p}.bn1")
    sd[f"{p}.conv2.key_embed.0.weight"].fill_(1.0 / (4 * 9))  # 16 channels in 4 groups: 4 in-channels each
    identity_bn(sd, f"{p}.conv2.key_embed.1")
    sd[f"{p}.conv2.embed.3.weight"].zero_()
    sd[f"{p}.conv2.embed.3.bias"].zero_()
    sd[f"{p}.conv2.embed.4.bias"].copy_(torch.tensor([0.0] * 9 + list(HEAD1)))  # channel m*9 + k
    sd[f"{p}.conv2.conv1x1.0.weight"].fill_(1.0 / 16)
    identity_bn(sd, f"{p}.conv2.conv1x1.1")
    identity_bn(sd, f"{p}.conv2.bn")
    sd[f"{p}.conv2.se.3.weight"].zero_()
    sd[f"{p}.conv2.se.3.bias"].zero_()
    model.load_state_dict(sd)
    return model


def handset_network() -> nn.Module:
    """cotnet50 whose stage1.block1 CoT contexts are local averages of the input brightness.

    The stem averages brightness over 7 x 7 x 3, the first block's 1x1 conv and its static-context conv average
    over channels and space, every BatchNorm on the way is the identity. On a black image the static context,
    the dynamic context and the fused output of stage1.block1 are then zero wherever no bright pixel is within
    reach, so their energy maps peak over a bright patch.
    """
    model = create_model("cotnet50", seed=0)
    sd = model.state_dict()
    sd["conv1.weight"].fill_(1.0 / (3 * 49))  # every stem channel: mean brightness over 7x7x3
    sd["layer1.0.conv1.weight"].fill_(1.0 / 64)  # mean over channels
    sd["layer1.0.conv2.key_embed.0.weight"].fill_(1.0 / (16 * 9))  # grouped 3x3 (16 in-channels per group): mean
    for name in ("bn1", "layer1.0.bn1", "layer1.0.conv2.key_embed.1", "layer1.0.conv2.conv1x1.1", "layer1.0.conv2.bn"):
        sd[f"{name}.weight"].fill_(1.0)
        sd[f"{name}.bias"].zero_()
        sd[f"{name}.running_mean"].zero_()
        sd[f"{name}.running_var"].fill_(1.0)
    model.load_state_dict(sd)
    return model


def expected_crop_box(size: int = 64, crop_pct: float = 0.875) -> tuple[float, float, float, float]:
    """timm's eval transform on the W x H test image, computed here independently: shorter side ->
    floor(S / crop_pct), centre crop."""
    short = math.floor(size / crop_pct)  # 73
    long = int(short * W / H)  # 109
    left, top = round((long - size) / 2), round((short - size) / 2)  # 22, 4 (round half to even)
    return left * W / long, top * H / short, (left + size) * W / long, (top + size) * H / short


def cell_to_original(i: int, j: int, stride: int, box: tuple[float, ...], size: int) -> tuple[float, float]:
    """Centre of cell (i, j) in original pixels, through the crop box."""
    left, top, right, bottom = box
    u, v = (j + 0.5) * stride, (i + 0.5) * stride
    return left + u * (right - left) / size, top + v * (bottom - top) / size


def in_patch(x: float, y: float, patch: tuple[int, int, int, int], tol: float = 0.0) -> bool:
    return patch[0] - tol <= x <= patch[2] + tol and patch[1] - tol <= y <= patch[3] + tol


def corner_image() -> np.ndarray:
    """(H, W, 3) uint8: black, :data:`PATCH` at 255, :data:`DECOY` at 160."""
    img = np.zeros((H, W, 3), dtype=np.uint8)
    img[PATCH[1]:PATCH[3], PATCH[0]:PATCH[2]] = 255
    img[DECOY[1]:DECOY[3], DECOY[0]:DECOY[2]] = 160
    return img


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


@pytest.fixture(scope="session")
def tiny() -> nn.Module:
    """The shared tiny network (do not modify it)."""
    return tiny_model()


@pytest.fixture(scope="session")
def constant() -> nn.Module:
    """The shared :func:`constant_network` (do not modify it)."""
    return constant_network()


@pytest.fixture(scope="session")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Small image files: ``corner`` (the test image), four photos in ``photos/`` (a.png, b.jpg, c.png, d.png,
    crops of examples/coffee.png), a truncated PNG ``broken``, a text file ``notes``, a PNG header declaring
    10000 x 10000 pixels ``bomb``, an empty directory ``empty``."""
    d = tmp_path_factory.mktemp("images")
    Image.fromarray(corner_image()).save(d / "corner.png")
    photos = d / "photos"
    photos.mkdir()
    coffee = Image.open(COFFEE).convert("RGB")
    for name, box in (("a.png", (0, 0, 300, 200)), ("b.jpg", (300, 0, 600, 200)), ("c.png", (100, 150, 400, 400)),
                      ("d.png", (250, 100, 450, 400))):
        coffee.crop(box).resize(((box[2] - box[0]) // 2, (box[3] - box[1]) // 2)).save(photos / name)
    good = (photos / "a.png").read_bytes()
    (d / "broken.png").write_bytes(good[: len(good) // 2])
    (d / "notes.png").write_text("this is not an image\n")
    header = struct.pack(">IIBBBBB", 10000, 10000, 8, 2, 0, 0, 0)
    (d / "bomb.png").write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header)
                                 + _png_chunk(b"IDAT", zlib.compress(b"")) + _png_chunk(b"IEND", b""))
    (d / "empty").mkdir()
    return {"dir": d, "corner": d / "corner.png", "photos": photos, "broken": d / "broken.png",
            "notes": d / "notes.png", "bomb": d / "bomb.png", "empty": d / "empty",
            **{p.stem: p for p in sorted(photos.iterdir())}}


@pytest.fixture
def assert_same_maps() -> Callable[..., None]:
    """``assert_same_maps(a, b, rtol=1e-5)``: two explanations hold the same blocks, maps and values."""

    def check(a: object, b: object, rtol: float = 1e-5, atol: float = 1e-6) -> None:
        am, bm = a.maps, b.maps  # type: ignore[attr-defined]
        assert list(am) == list(bm)
        for block in am:
            assert list(am[block]) == list(bm[block])
            for name in am[block]:
                np.testing.assert_allclose(am[block][name], bm[block][name], rtol=rtol, atol=atol,
                                           err_msg=f"{block}/{name}")

    return check
