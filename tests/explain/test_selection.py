"""The request, validated in the library: every message ``cotviz attention`` prints for a bad stage, block, head,
map, point, target, size or crop, raised by :func:`cotviz.explain.select` / :class:`cotviz.explain.Explainer`.

The layouts come from meta-device builds (no memory, no arithmetic): the full-size networks' block and head
counts, which the messages name, at the cost of a module walk.
"""

from __future__ import annotations

import re
import warnings
from typing import Any

import pytest
import torch
from torch import nn

import cotviz
from cotviz.errors import CotvizError, InvalidArgumentError
from cotviz.explain import (
    Explainer,
    Selection,
    UntrainedModelWarning,
    explain,
    explain_many,
    parse_point,
    select,
)
from cotviz.models.meta import build_meta_model


@pytest.fixture(scope="module")
def meta() -> dict[str, nn.Module]:
    """Meta-device cotnet50, se_cotnetd_50 (stages 1-2 without CoT, stage 3 CoT in blocks 1, 3, 5), resnet50, and a
    small SE-CoTNetD whose stage 3 has CoT in block 2 only."""
    return {"cotnet50": build_meta_model("cotnet50"), "se_cotnetd_50": build_meta_model("se_cotnetd_50"),
            "resnet50": build_meta_model("resnet50"),
            "late": build_meta_model("se_cotnetd_50", layers=[1, 1, 2, 1], base_width=16, num_classes=10,
                                     block_args=dict(conv_dim={16, 32}, c4_dim=64, c4_idx={1}))}


def raises(message: str) -> Any:
    """``pytest.raises`` of an InvalidArgumentError whose whole message is ``message``."""
    return pytest.raises(InvalidArgumentError, match=f"^{re.escape(message)}$")


# ------------------------------------------------------------------------------------- select()


def test_a_valid_request_and_its_defaults(meta: dict[str, nn.Module]) -> None:
    sel = select(meta["cotnet50"])
    assert sel == Selection(stage=3, blocks=(1, 2, 3, 4, 5, 6), capture_blocks=(1, 2, 3, 4, 5, 6), head=None,
                            num_heads=32, maps=("attention_entropy", "static_energy", "dynamic_energy", "dynamic_share"),
                            taps=("static_context", "attention", "dynamic_context", "fusion_weights"), point=None)
    assert sel.block_names == [f"stage3.block{b}" for b in range(1, 7)]
    assert sel.head_reduction.startswith("mean over heads")


def test_blocks_and_maps_are_deduplicated_and_ordered_and_a_point_records_blocks_up_to_the_last(
        meta: dict[str, nn.Module]) -> None:
    sel = select(meta["cotnet50"], stage=2, blocks=[3, 1, 3], maps=["output_energy", "static_energy",
                                                                    "output_energy"], point="10, 20", head=15)
    assert sel.blocks == (1, 3) and sel.capture_blocks == (1, 2, 3) and sel.point == (10, 20)
    assert sel.maps == ("static_energy", "output_energy")  # registry order
    assert sel.taps == ("static_context", "attention", "output")  # the point needs the attention
    assert sel.capture_names == ["stage2.block1", "stage2.block2", "stage2.block3"]
    assert sel.num_heads == 16 and sel.head == 15
    assert select(meta["cotnet50"], stage=2, blocks=[3]).capture_blocks == (3,)  # no point: the drawn block only


def test_se_cotnetd_draws_its_cot_blocks_only(meta: dict[str, nn.Module]) -> None:
    sel = select(meta["se_cotnetd_50"], stage=3)
    assert sel.blocks == (1, 3, 5) and sel.num_heads == 32


@pytest.mark.parametrize(("model", "request_", "message"), [
    ("cotnet50", dict(stage=5), "stage 5 out of range: cotnet50 has stages 1..4"),
    ("cotnet50", dict(stage=0), "stage 0 out of range: cotnet50 has stages 1..4"),
    ("cotnet50", dict(stage="3"), "stage must be an integer, got '3'"),
    ("cotnet50", dict(stage=True), "stage must be an integer, got True"),
    ("cotnet50", dict(block=[7]), "block 7 out of range: stage 3 of cotnet50 has blocks 1..6"),
    ("cotnet50", dict(block=[0]), "block 0 out of range: stage 3 of cotnet50 has blocks 1..6"),
    ("cotnet50", dict(block=[True]), "block True out of range: stage 3 of cotnet50 has blocks 1..6"),
    ("cotnet50", dict(head=32), "head 32 out of range: stage 3 of cotnet50 has heads 0..31 (C/8 attention maps per "
                                "position)"),
    ("cotnet50", dict(stage=1, head=8), "head 8 out of range: stage 1 of cotnet50 has heads 0..7 (C/8 attention "
                                        "maps per position)"),
    ("cotnet50", dict(head=-1), "head -1 out of range: stage 3 of cotnet50 has heads 0..31 (C/8 attention maps per "
                                "position)"),
    ("cotnet50", dict(head=1.0), "head must be an integer, got 1.0"),
    ("cotnet50", dict(maps=["attention_energy", "entropy"]),
     "unknown map 'entropy'; choose from attention_energy, attention_entropy, center_weight, static_energy, "
     "dynamic_energy, dynamic_share, output_energy"),
    ("se_cotnetd_50", dict(stage=1), "stage 1 of se_cotnetd_50 has no CoT layers (its blocks use SplitAttnConv2d); "
                                     "stages with CoT layers: 3, 4"),
    ("resnet50", dict(stage=3), "stage 3 of resnet50 has no CoT layers (its blocks use ConvBnAct)"),
    ("se_cotnetd_50", dict(stage=3, block=[2]), "block 2 of stage 3 (se_cotnetd_50) is a SplitAttnConv2d block "
                                                "without a CoT layer; CoT blocks: 1, 3, 5"),
    ("se_cotnetd_50", dict(stage=3, block=[3], point=(5, 5)),
     "--point composes blocks 1..3 of stage 3, but block 2 (se_cotnetd_50) has no CoT layer; use --block 1"),
    ("late", dict(stage=3, point=(5, 5)), "--point composes blocks 1..2 of stage 3, but block 1 (se_cotnetd_50) has "
                                          "no CoT layer; use a stage whose first block uses CoT"),
])
def test_every_selection_error_names_the_valid_range(meta: dict[str, nn.Module], model: str,
                                                     request_: dict[str, Any], message: str) -> None:
    kwargs = dict(request_)
    if "block" in kwargs:
        kwargs["blocks"] = kwargs.pop("block")
    with raises(message):
        select(meta[model], **kwargs)


@pytest.mark.parametrize(("point", "message"), [
    ("3;4", "--point must be X,Y in whole pixels of the original image, e.g. 320,180; got '3;4'"),
    ("1.5,2", "--point must be X,Y in whole pixels of the original image, e.g. 320,180; got '1.5,2'"),
    ((1, 2, 3), "--point must be X,Y in whole pixels of the original image, e.g. 320,180; got '1,2,3'"),
    ((True, 2), "--point must be X,Y in whole pixels of the original image, e.g. 320,180; got 'True,2'"),
    ("-1,5", "--point -1,5 lies outside the image: coordinates start at 0,0 (top left)"),
])
def test_point_rules(point: Any, message: str) -> None:
    with raises(message):
        parse_point(point)


def test_points_that_parse() -> None:
    assert parse_point(" 320 , 180 ") == (320, 180) and parse_point((0, 0)) == (0, 0)
    assert parse_point([7, 8]) == (7, 8) and parse_point(None) is None


# ------------------------------------------------------------------------------------- Explainer()


@pytest.mark.parametrize(("request_", "message"), [
    (dict(target=1000), "--target 1000 out of range: cotnet50 has classes 0..999"),
    (dict(target=-1), "--target must be a class index >= 0, got -1"),
    (dict(preprocess={"size": 8}), "--size must be at least 32 pixels (the network's total stride), got 8"),
    (dict(preprocess={"crop_pct": 1.5}), "--crop-pct must be in (0, 1], got 1.5"),
    (dict(preprocess={"crop_pct": 0.0}), "--crop-pct must be in (0, 1], got 0.0"),
    (dict(num_classes=10), "weights= and num_classes= apply to a model name; load the checkpoint into your network "
                           "yourself (cotviz.load_checkpoint)"),
    (dict(num_classes=0), "--num-classes must be at least 1, got 0"),
    (dict(stage=9, target=5), "stage 9 out of range: cotnet50 has stages 1..4"),  # the selection comes first
])
def test_explainer_errors(meta: dict[str, nn.Module], request_: dict[str, Any], message: str) -> None:
    with raises(message):
        Explainer(meta["cotnet50"], **request_)


def test_a_bad_request_is_refused_before_the_network_is_made_untrained_or_an_image_is_read() -> None:
    """With a model name the request is checked against the seeded build, before the calibration (which would
    warn); explain_many refuses at the call, not at the first image."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", UntrainedModelWarning)
        with raises("head 99 out of range: stage 3 of cotnet50 has heads 0..31 (C/8 attention maps per position)"):
            Explainer("CoTNet-50", head=99)  # spelled loosely: the message names the canonical model
    tiny = cotviz.create_model("cotnet50", layers=[1, 1, 1, 1], base_width=16, num_classes=10)
    with raises("stage 9 out of range: cotnet50 has stages 1..4"):
        explain_many(tiny, ["/no/such/dir/*.png"], stage=9)
    with raises("--batch-size must be at least 1, got 0"):
        explain_many(tiny, ["/no/such/dir/*.png"], batch_size=0)
    with raises("--target 10 out of range: cotnet50 has classes 0..9"):
        explain(tiny, torch.zeros(3, 64, 64), target=10)


def test_every_library_error_is_a_cotviz_error_with_a_one_line_message(meta: dict[str, nn.Module]) -> None:
    for kwargs in (dict(stage=5), dict(head=40), dict(maps=["x"]), dict(point="a,b")):
        with pytest.raises(CotvizError) as info:
            select(meta["cotnet50"], **kwargs)  # type: ignore[arg-type]
        assert "\n" not in str(info.value) and info.value.exit_code == 2


def test_a_network_in_training_mode_is_refused_not_switched() -> None:
    """In training mode BatchNorm would normalise with the batch's statistics (maps that depend on the batch) and
    update the running ones (explaining would change the network)."""
    tiny = cotviz.create_model("cotnet50", layers=[1, 1, 1, 1], base_width=16, num_classes=10).train()
    before = {k: v.clone() for k, v in tiny.state_dict().items()}
    with raises("cotnet50 is in training mode: its maps would depend on the batch and explaining would change its "
                "BatchNorm statistics; call model.eval() first"):
        explain(tiny, torch.zeros(3, 64, 64))
    assert tiny.training and all(torch.equal(before[k], v) for k, v in tiny.state_dict().items())
    assert explain(tiny.eval(), torch.zeros(3, 64, 64)).ok
